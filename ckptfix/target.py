"""Targets: what a checkpoint must fit. A target is tensor metadata plus layers, from

- another checkpoint (metadata only),
- a model factory ``module:callable`` or ``path/to/file.py:callable`` built on the meta device,
- a layer spec: ``Conv2d(3, 15, 5)`` (the whole model is that layer), or a mapping / YAML file
  ``conv_layer: Conv2d(3, 15, 5)`` (nested mappings nest names), parsed without eval.

Building a model factory imports and runs that (your own) code; a checkpoint never runs code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from . import layers as L
from .errors import CkptfixError, TargetError
from .tensors import TensorMeta

LAYER_EXPR = re.compile(r"^\s*[A-Za-z_]\w*\s*\(.*\)\s*$", re.S)


@dataclass
class Target:
    description: str
    tensors: dict[str, TensorMeta]
    layers: dict[str, L.Layer] = field(default_factory=dict)
    #: the file it was read from (a checkpoint, a layer-spec YAML, a factory .py), if any
    files: list[Path] = field(default_factory=list)
    #: the model itself (built on the meta device) when the target is a model: traced by suggest
    module: object | None = None

    @property
    def params(self) -> int:
        return sum(ly.params for ly in self.layers.values())

    def layer(self, name: str) -> L.Layer | None:
        return self.layers.get(name)


def parse_layer_expr(expr: str, name: str = "") -> L.Layer:
    """``'Conv2d(3, 15, 5, stride=2)'`` -> Layer, with literals only (no eval)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError:
        raise TargetError(f"layer spec {expr!r} is not of the form Conv2d(3, 15, 5)") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise TargetError(f"layer spec {expr!r} is not of the form Conv2d(3, 15, 5)")
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
        if any(k.arg is None for k in call.keywords):
            raise ValueError
    except ValueError:
        raise TargetError(f"layer spec {expr!r}: arguments must be literals (numbers, tuples, True/False)") from None
    cls = call.func.id.removeprefix("nn.")
    try:
        return L.spec_layer(name, cls, args, kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise TargetError(f"layer spec {expr!r}: {e}") from None


def from_layer_spec(spec, description: str) -> Target:
    """A mapping name -> layer expression (nested mappings nest names) or one expression."""
    found: dict[str, L.Layer] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, str):
            found[prefix] = parse_layer_expr(node, prefix)
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            raise TargetError(f"layer spec for {prefix or 'the model'!r} must be a layer expression "
                              "like 'Conv2d(3, 15, 5)' or a mapping")

    walk(spec, "")
    tensors = {L.join_key(ly.name, v): m for ly in found.values() for v, m in ly.tensors.items()}
    return Target(description, tensors, found)


def from_checkpoint(path: str | Path, opener=None, **open_kwargs) -> Target:
    """``opener(path)`` opens it (``api.Options.open_target``: isolated like an input); by default
    ``open_checkpoint(path, **open_kwargs)``."""
    from .formats import open_checkpoint

    with (opener(path) if opener is not None else open_checkpoint(path, **open_kwargs)) as r:
        metas = r.metas()
        classes = r.layer_classes()
    return Target(f"checkpoint {path}", metas, L.read_layers(metas, classes))


def _near(spec: str, base_dir: Path | None) -> Path:
    """A relative path in a rules file is relative to that file, then to the working directory."""
    p = Path(spec)
    if not p.is_absolute() and base_dir is not None and (base_dir / p).exists():
        return base_dir / p
    return p


def _check_code_target(ref: str, base_dir: Path) -> None:
    """A rules file may run model code from a .py file beside it or in the current project, never an
    arbitrary installed module (a downloaded rules file must not be able to call subprocess.run)."""
    mod_ref = ref.rpartition(":")[0]
    if not mod_ref.endswith(".py"):
        raise TargetError(f"target {ref}: a rules file may name a model only as path/to/file.py:callable; "
                          "pass a module:callable on the command line with --target")
    p = _near(mod_ref, base_dir).resolve()
    roots = [base_dir.resolve(), Path.cwd().resolve()]
    if not any(p == r or r in p.parents for r in roots):
        raise TargetError(f"target {ref}: {p} is outside the rules file's directory and the current directory; "
                          "pass it on the command line with --target if you mean it")


def _import_callable(ref: str, base_dir: Path | None):
    mod_ref, _, attr = ref.rpartition(":")
    if mod_ref.endswith(".py"):
        p = _near(mod_ref, base_dir)
        if not p.is_file():
            raise TargetError(f"target {ref}: no such file {p}")
        name = f"_ckptfix_target_{abs(hash(str(p.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, p)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(p.parent.resolve()))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.pop(0)
    else:
        try:
            module = importlib.import_module(mod_ref)
        except ImportError as e:
            raise TargetError(f"target {ref}: cannot import {mod_ref}: {e}") from None
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise TargetError(f"target {ref}: {mod_ref} has no {attr!r}")
    return obj


def from_factory(ref: str, kwargs: dict | None, base_dir: Path | None = None) -> Target:
    import torch

    try:
        fn = _import_callable(ref, base_dir)
        with torch.device("meta"):
            model = fn(**(kwargs or {}))
    except CkptfixError:
        raise
    except Exception as e:
        raise TargetError(f"target {ref}: building the model failed: {type(e).__name__}: {e}") from None
    if not isinstance(model, torch.nn.Module):
        raise TargetError(f"target {ref}: returned {type(model).__name__}, not a torch.nn.Module")
    return from_module(model, f"model {ref}")


def from_module(model, description: str) -> Target:
    """Target from a live module (any device; only shapes are used)."""
    from . import dtypes
    from .layer_table import torch_attrs

    tensors = {k: TensorMeta(tuple(v.shape), dtypes.from_torch(v.dtype)) for k, v in model.state_dict().items()}
    found: dict[str, L.Layer] = {}
    for mname, mod in model.named_modules():
        local = {}
        bufs = set()
        for pname, p in mod._parameters.items():
            if p is not None:
                local[pname] = tensors.get(L.join_key(mname, pname))
        for bname, b in mod._buffers.items():
            if b is not None and bname not in mod._non_persistent_buffers_set:
                local[bname] = tensors.get(L.join_key(mname, bname))
                bufs.add(bname)
        local = {k: v for k, v in local.items() if v is not None}
        if local:
            found[mname] = L.Layer(name=mname, kind=type(mod).__name__,
                                   attrs={**L.module_attrs(mod), **torch_attrs(mod)},
                                   tensors=local, buffers=frozenset(bufs))
    return Target(description, tensors, found, module=model)


def resolve(spec, kwargs: dict | None = None, base_dir: Path | None = None, opener=None,
            **open_kwargs) -> Target:
    """Resolve anything the command line or a rules file may give as a target. ``base_dir`` is the
    rules file's directory when the target comes from one (relative paths start there; code
    targets are restricted, see ``_check_code_target``)."""
    t = _resolve(spec, kwargs, base_dir, opener, **open_kwargs)
    named = named_file(spec, base_dir)
    t.files = [named] if named is not None else []
    return t


def named_file(spec, base_dir: Path | None = None) -> Path | None:
    """The file (or checkpoint directory) a target spec names, as ``resolve`` reads it: a
    checkpoint, a layer-spec YAML, the .py of ``file.py:callable``; None for a layer expression,
    a mapping or an installed ``module:callable``. An input of the command: never an output."""
    if not isinstance(spec, str) or not spec.strip():
        return None
    p = _near(spec, base_dir)
    if p.exists():
        return p
    mod_ref = spec.rpartition(":")[0]
    if ":" in spec and mod_ref.endswith(".py") and _near(mod_ref, base_dir).exists():
        return _near(mod_ref, base_dir)
    return None


def _resolve(spec, kwargs: dict | None, base_dir: Path | None, opener=None, **open_kwargs) -> Target:
    if isinstance(spec, dict):
        return from_layer_spec(spec, "layer spec")
    if not isinstance(spec, str) or not spec.strip():
        raise TargetError(f"target must be a string or a mapping, got {spec!r}")
    p = _near(spec, base_dir)
    if p.exists() and p.suffix in (".yaml", ".yml"):
        from .rules.schema import load_yaml

        try:
            data, _ = load_yaml(p.read_text("utf-8"), str(p))
        except CkptfixError as e:
            raise TargetError(f"target {e}") from None
        return from_layer_spec(data, f"layer spec {p}")
    if p.exists():
        return from_checkpoint(p, opener, **open_kwargs)
    if LAYER_EXPR.match(spec):
        return from_layer_spec(spec, f"layer {spec.strip()}")
    if ":" in spec:
        if base_dir is not None:
            _check_code_target(spec, base_dir)
        return from_factory(spec, kwargs, base_dir)
    raise TargetError(f"target {spec!r}: not a file, a module:callable, or a layer like Conv2d(3, 15, 5)")
