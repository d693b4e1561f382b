"""Reference tensors computed by timm's own functions, so ckptfix's tests can check against timm
without timm: writes tests/data/timm_ref/refs.safetensors and tests/data/timm_ref/cases.json.

timm 1.0.31 (installed with --no-deps), torch 2.13.0 (CPU). Runs in a throwaway venv outside the
project, from the repository root:

    python3 -m venv /work/timmvenv
    /work/timmvenv/bin/pip install torch==2.13.0 numpy safetensors
    /work/timmvenv/bin/pip install --no-deps timm==1.0.31
    /work/timmvenv/bin/python tools/make_timm_refs.py

``import timm`` fails without torchvision (timm/layers/create_norm.py imports it at module level;
torchvision from PyPI does not load against this CPU torch). The three functions are pure torch,
so their modules are loaded without running any timm ``__init__.py``: empty package modules
``timm``, ``timm.layers`` and ``timm.models`` are put in ``sys.modules`` with ``__path__`` set to
the installed folders, then the installed, unmodified files are imported as modules of them:

* ``timm/layers/pos_embed.py`` -> ``resample_abs_pos_embed`` (its imports: ``timm/layers/_fx.py``,
  whose torchvision import is already inside try/except, and ``timm/layers/helpers.py``);
* ``timm/layers/patch_embed.py`` -> ``resample_patch_embed`` (imports ``format.py``, ``helpers.py``,
  ``trace_utils.py``);
* ``timm/models/_manipulate.py`` -> ``adapt_input_conv``. Its one timm import,
  ``from timm.layers import use_reentrant_ckpt``, is served by importing the real
  ``timm/layers/config.py`` and setting ``timm.layers.use_reentrant_ckpt`` from it, as
  ``timm/layers/__init__.py`` would.

So every function is timm's own object, decorators included, from the file named in cases.json
(with its sha256). Each case: safetensors keys ``<case>.input`` (the tensor argument, float32,
``torch.randn`` with ``torch.Generator().manual_seed(seed)``) and ``<case>.output`` (what timm
returned). Nothing here is part of ckptfix.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

TIMM_VERSION = "1.0.31"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "timm_ref"


def load_timm_functions() -> tuple[dict[str, object], Path]:
    """timm's three functions, from its installed files, without running timm's __init__.py."""
    if "timm" in sys.modules:
        raise RuntimeError("timm is already imported; run this script in a fresh interpreter")
    spec = importlib.util.find_spec("timm")  # locates the package; does not execute it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("timm is not installed in this interpreter")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    for name, sub in (("timm", pkg_dir), ("timm.layers", pkg_dir / "layers"), ("timm.models", pkg_dir / "models")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(sub)]
        mod.__package__ = name
        mod.__file__ = None
        sys.modules[name] = mod
    sys.modules["timm"].layers = sys.modules["timm.layers"]
    sys.modules["timm"].models = sys.modules["timm.models"]
    config = importlib.import_module("timm.layers.config")
    sys.modules["timm.layers"].use_reentrant_ckpt = config.use_reentrant_ckpt

    pos_embed = importlib.import_module("timm.layers.pos_embed")
    patch_embed = importlib.import_module("timm.layers.patch_embed")
    manipulate = importlib.import_module("timm.models._manipulate")
    return {
        "timm.models._manipulate.adapt_input_conv": manipulate.adapt_input_conv,
        "timm.layers.resample_abs_pos_embed": pos_embed.resample_abs_pos_embed,
        "timm.layers.resample_patch_embed": patch_embed.resample_patch_embed,
    }, pkg_dir


ADAPT = "timm.models._manipulate.adapt_input_conv"
POS = "timm.layers.resample_abs_pos_embed"
PATCH = "timm.layers.resample_patch_embed"

# (case, function, seed, input shape, keyword arguments other than the tensor)
CASES = [
    ("adapt_1", ADAPT, 101, (8, 3, 5, 5), {"in_chans": 1}),
    ("adapt_2", ADAPT, 102, (8, 3, 5, 5), {"in_chans": 2}),
    ("adapt_4", ADAPT, 103, (8, 3, 5, 5), {"in_chans": 4}),
    ("adapt_13", ADAPT, 104, (8, 3, 5, 5), {"in_chans": 13}),
    ("adapt_7x7_1", ADAPT, 105, (6, 3, 7, 7), {"in_chans": 1}),
    ("adapt_7x7_5", ADAPT, 106, (6, 3, 7, 7), {"in_chans": 5}),
    ("pos_14_24", POS, 201, (1, 1 + 14 * 14, 32), {"new_size": [24, 24]}),
    ("pos_nonsquare", POS, 202, (1, 1 + 12 * 16, 32), {"new_size": [20, 10], "old_size": [12, 16]}),
    ("pos_14_10", POS, 203, (1, 1 + 14 * 14, 32), {"new_size": [10, 10]}),
    ("pos_noprefix", POS, 204, (1, 7 * 7, 16), {"new_size": [9, 9], "num_prefix_tokens": 0}),
    ("pos_prefix2", POS, 205, (1, 2 + 8 * 8, 16), {"new_size": [12, 12], "num_prefix_tokens": 2}),
    ("pos_bilinear", POS, 206, (1, 1 + 14 * 14, 32), {"new_size": [24, 24], "interpolation": "bilinear"}),
    ("pos_noaa", POS, 207, (1, 1 + 14 * 14, 32), {"new_size": [10, 10], "antialias": False}),
    ("patch_16_14", PATCH, 301, (16, 3, 16, 16), {"new_size": [14, 14]}),
    ("patch_16_8", PATCH, 302, (16, 3, 16, 16), {"new_size": [8, 8]}),
    ("patch_16_20", PATCH, 303, (8, 3, 16, 16), {"new_size": [20, 20]}),
    ("patch_bilinear", PATCH, 304, (16, 3, 16, 16), {"new_size": [14, 14], "interpolation": "bilinear"}),
]


def main() -> None:
    version = importlib.metadata.version("timm")
    if version != TIMM_VERSION:
        raise SystemExit(f"timm {version} installed; these references are pinned to timm {TIMM_VERSION}")
    fns, pkg_dir = load_timm_functions()

    sources = {}
    for name, fn in fns.items():
        path = Path(inspect.getsourcefile(fn))
        lines, start = inspect.getsourcelines(fn)
        sources[name] = {
            "file": "timm/" + path.relative_to(pkg_dir).as_posix(),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "lines": [start, start + len(lines) - 1],  # decorators included
        }

    tensors, listed = {}, []
    for case, fname, seed, shape, kwargs in CASES:
        fn = fns[fname]
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        xin = x.clone()
        y = fn(xin, **kwargs) if fname != ADAPT else fn(kwargs["in_chans"], xin)
        assert torch.equal(xin, x), f"{case}: timm changed its input in place"
        assert y is not xin and y.dtype == torch.float32, case
        tensors[f"{case}.input"] = x.contiguous()
        tensors[f"{case}.output"] = y.detach().contiguous()
        if fname == ADAPT:
            args = {"in_chans": kwargs["in_chans"], "conv_weight": f"{case}.input"}
            call = f"adapt_input_conv({kwargs['in_chans']}, <{case}.input>)"
        else:
            tensor_arg = "posemb" if fname == POS else "patch_embed"
            args = {tensor_arg: f"{case}.input", **kwargs}
            call = f"{fname.rsplit('.', 1)[1]}(<{case}.input>, " + ", ".join(
                f"{k}={v!r}" for k, v in kwargs.items()) + ")"
        bound = inspect.signature(fn).bind(*([kwargs["in_chans"], x] if fname == ADAPT else [x]),
                                            **({} if fname == ADAPT else kwargs))
        bound.apply_defaults()
        resolved = {k: (f"{case}.input" if isinstance(v, torch.Tensor) else
                        list(v) if isinstance(v, tuple) else v) for k, v in bound.arguments.items()}
        listed.append({
            "case": case,
            "function": fname,
            "args": args,
            "resolved_args": resolved,
            "call": call,
            "seed": seed,
            "input_shape": list(x.shape),
            "output_shape": list(y.shape),
        })

    OUT.mkdir(parents=True, exist_ok=True)
    meta = {"timm_version": version, "torch_version": torch.__version__}
    save_file(tensors, str(OUT / "refs.safetensors"), metadata=meta)
    doc = {
        "about": "Outputs of timm's own functions on seeded float32 inputs; written by tools/make_timm_refs.py. "
                 "safetensors keys: <case>.input (the tensor argument), <case>.output (timm's result).",
        **meta,
        "input": "torch.randn(input_shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)",
        "sources": sources,
        "cases": listed,
    }
    (OUT / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    size = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {len(listed)} cases, {len(tensors)} tensors to {OUT.relative_to(ROOT)} ({size} bytes)")


if __name__ == "__main__":
    main()
