"""TorchScript fixtures for tests/test_torchscript.py: writes tests/data/torchscript/.

Runs with the project's own environment (torch 2.13.0 CPU), from the repository root:

    /work/main/.venv/bin/python tools/make_torchscript_fixtures.py

The models are tests/torchscript_nets.py's (seeded weights, ``make(name)``), each saved with
``torch.jit.save`` as TorchScript users hold them:

| file | what it is |
|---|---|
| `convbn_scripted.pt` | `torch.jit.script(ConvBNNet)`: Conv2d + BatchNorm2d (running stats, `num_batches_tracked` = 3) in nested Sequentials, a Linear, a parameter `scale` on the top module, a plain tensor attribute `offset`, a buffer `mask` registered with `persistent=False` |
| `convbn_traced.pt` | `torch.jit.trace` of the same model (mangled class names; the plain attribute is traced away) |
| `convbn_frozen.pt` | `torch.jit.freeze` of the scripted model: no parameters or buffers, its weights are constants (`constants.pkl`) |
| `containers_scripted.pt`, `containers_traced.pt` | ContainersNet: ModuleList of Sequentials, ModuleDict (one Linear without bias), LayerNorm |
| `seq_scripted.pt`, `seq_traced.pt` | SeqNet: Embedding (padding_idx) -> 2-layer LSTM -> Linear |
| `NAME_io.npz` | `x`: an input batch (`torch.Generator().manual_seed(1)`), `y`: the scripted module's output for it, from the saved file (`torch.jit.load(NAME_scripted.pt)(x)`) |

``torch.jit.save`` writes the same bytes for the same module, except that a class's constants
(``__constants__``, a set) print in string-hash order: the script runs itself with
``PYTHONHASHSEED=0``, so running it again reproduces the files byte for byte, from the same
checkout and environment: the archives' ``*.debug_pkl`` records (source ranges, for torch's error
messages; ckptfix never reads them) hold the source text and paths of tests/torchscript_nets.py
and of torch's modules. The tensors and code files do not depend on either.

The files are the tests' input; the reference each test compares ckptfix to is
``torch.jit.load(file).state_dict()``.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

if os.environ.get("PYTHONHASHSEED") != "0":  # the constants' order in the code files (see above)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torchscript_nets as nets  # noqa: E402

OUT = ROOT / "tests" / "data" / "torchscript"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated; its files live on
    for name in nets.NETS:
        x = nets.example_input(name)
        scripted = torch.jit.script(nets.make(name))
        torch.jit.save(scripted, OUT / f"{name}_scripted.pt")
        traced = torch.jit.trace(nets.make(name), x)
        torch.jit.save(traced, OUT / f"{name}_traced.pt")
        if name == "convbn":
            torch.jit.save(torch.jit.freeze(torch.jit.script(nets.make(name))), OUT / f"{name}_frozen.pt")
        with torch.no_grad():
            y = torch.jit.load(OUT / f"{name}_scripted.pt")(x)
            y_traced = torch.jit.load(OUT / f"{name}_traced.pt")(x)
        torch.testing.assert_close(y_traced, y)
        np.savez(OUT / f"{name}_io.npz", x=x.numpy(), y=y.numpy())
    for p in sorted(OUT.iterdir()):
        print(f"{p.relative_to(ROOT)}  {p.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
