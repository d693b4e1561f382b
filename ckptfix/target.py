"""Targets: what a checkpoint must fit. A target is tensor metadata plus layers, from

- another checkpoint (metadata only),
- a model factory ``module:callable`` or ``path/to/file.py:callable`` built on the meta device (no
  memory), or, when its constructor needs real tensors (``self.to(device)``, ``.item()``), built
  again on the CPU within ``limits.build_budget()``,
- a layer spec: ``Conv2d(3, 15, 5)`` (the whole model is that layer), or a mapping / YAML file
  ``conv_layer: Conv2d(3, 15, 5)`` (nested mappings nest names), parsed without eval.

Building a model factory imports and runs that (your own) code; a checkpoint never runs code.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from . import layers as L
from .errors import CkptfixError, TargetError
from .limits import fmt_bytes
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
    except CkptfixError:
        raise
    except Exception as e:
        raise TargetError(f"target {ref}: building the model failed: {_cause(e)}") from None
    model = _build(fn, ref, kwargs or {})
    if not isinstance(model, torch.nn.Module):
        raise TargetError(f"target {ref}: returned {type(model).__name__}, not a torch.nn.Module")
    return from_module(model, f"model {ref}")


def _build(fn, ref: str, kwargs: dict):
    """Run the factory on the meta device: no memory, whatever the model's size. A constructor
    that needs real tensors fails there (``self.to(device)``: "Cannot copy out of meta tensor";
    ``.item()``, ``if t.any():``): it is then built again on the CPU, the tensors it makes held to
    ``limits.build_budget()``. A module with some real tensors among meta ones (an explicit
    ``device="cpu"``) is kept: only shapes and dtypes are read. Warnings are silenced during the
    build: torch's about meta tensors, and each build would repeat the model's own."""
    import torch

    from .limits import build_budget

    budget = build_budget()
    on_meta = _allocation_mode(budget, real_by_default=False)
    try:
        with _quiet(), torch.device("meta"), on_meta:
            return fn(**kwargs)
    except CkptfixError:
        raise
    except Exception as e:
        meta_cause = _cause(e, first_sentence=True)
    over = f"its constructor fails on the meta device ({meta_cause}), and on the CPU it needs"
    if on_meta.total > budget:  # what it made before it failed is already too much
        raise TargetError(f"target {ref}: {over} at least {fmt_bytes(on_meta.total)}, more than the "
                          f"{fmt_bytes(budget)} ckptfix lets a model build take; {_INSTEAD}")
    on_cpu = _allocation_mode(budget, real_by_default=True)
    try:
        with _quiet(), torch.device("cpu"), on_cpu:
            model = fn(**kwargs)
    except CkptfixError:
        raise
    except Exception as e:
        if not on_cpu.refused:
            raise TargetError(f"target {ref}: building the model failed: {_cause(e)}") from None
        model = None
    if on_cpu.refused:
        need = fmt_bytes(on_cpu.real + on_cpu.refused)
        raise TargetError(f"target {ref}: {over} {'' if model is not None else 'at least '}{need}, more than the "
                          f"{fmt_bytes(budget)} ckptfix lets a model build take; {_INSTEAD}")
    return model


_INSTEAD = ("if the constructor takes a device argument, pass --target-kwargs '{device: meta}' (or "
            "target_kwargs in the rules file); else save its state_dict() and pass that file as --target")


def _cause(e: BaseException, *, first_sentence: bool = False) -> str:
    """``Type: message``, on one line (the message's first line, or first sentence)."""
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else ""
    if first_sentence:
        text = re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0]
    text = text if len(text) <= 200 else text[:200] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _factories():
    import torch

    return frozenset([torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                      torch.randperm, torch.arange, torch.linspace, torch.logspace, torch.eye,
                      torch.empty_strided, torch.Tensor.new_empty, torch.Tensor.new_zeros,
                      torch.Tensor.new_ones, torch.Tensor.new_full])


def _allocation_mode(limit: int, real_by_default: bool):
    """A torch function mode that holds a model build to ``limit`` bytes of real tensors. It
    watches the tensor factories (torch.empty, zeros, randn, ..., Tensor.new_*: what every layer's
    parameters and buffers start from) and sizes each call on the meta device first; a call that
    would take real memory beyond ``limit`` is made on the meta device instead and counted in
    ``refused`` (the build goes on, so the error can say what the whole model needs).
    ``real_by_default``: a call without a device makes real tensors (the CPU build), else meta
    ones (under ``torch.device("meta")``, only an explicit device is real)."""
    import torch
    from torch.overrides import TorchFunctionMode

    factories = _factories()

    class Allocations(TorchFunctionMode):
        total = 0    # bytes the factories were asked for, real or meta
        real = 0     # of them, made in real memory
        refused = 0  # asked for in real memory beyond the limit, made on the meta device instead

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in factories and "out" not in kwargs:
                try:
                    probe = func(*args, **{**kwargs, "device": "meta"})
                except Exception:  # the real call raises the same
                    probe = None
                if probe is not None:
                    n = probe.numel() * probe.element_size()
                    self.total += n
                    if self._real(func, args, kwargs.get("device")):
                        if self.real + n > limit:
                            self.refused += n
                            return probe
                        self.real += n
            return func(*args, **kwargs)

        @staticmethod
        def _real(func, args, device) -> bool:
            if device is not None:
                return torch.device(device).type != "meta"
            if func.__name__.startswith("new_") and args and isinstance(args[0], torch.Tensor):
                return args[0].device.type != "meta"
            return real_by_default

    return Allocations()


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
