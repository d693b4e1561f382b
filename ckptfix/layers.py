"""Layers as the tools show them: tensor names grouped into layers, each read through the layer
table (``layer_table``: the one place for layer facts), described ("Conv2d(in=3, out=10,
kernel=5x5)"), counted and compared (typed ``Difference``), and the state-dict shapes of the
torch.nn layers a YAML layer spec may name.

Used by inspect, diff, explain, targets and the planner's parameter checks. No torch import
here: shapes come from constructor arguments (tests/test_layer_table.py checks them against
torch.nn).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import layer_table as T
from .tensors import TensorMeta

BUFFER_NAMES = T.BUFFERS
BATCHNORM_STATS = frozenset({"running_mean", "running_var", "moving_mean", "moving_variance"})


def split_key(key: str) -> tuple[str, str]:
    """``'features.0.weight' -> ('features.0', 'weight')``; TF ``'conv1/kernel' -> ('conv1', 'kernel')``."""
    cut = max(key.rfind("."), key.rfind("/"))
    if cut < 0:
        return "", key
    return key[:cut], key[cut + 1:]


def natural_key(s: str):
    """Sort key: numbers by value (``conv2d_2`` before ``conv2d_10``), comparable for any two names."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", s)]


def join_key(layer: str, var: str, sep: str = ".") -> str:
    return f"{layer}{sep}{var}" if layer else var


@dataclass
class Layer:
    name: str                     # module path ("" for a bare module's own state dict)
    kind: str                     # Conv2d, Linear, BatchNorm2d, ... or a TF class (Conv2D, Dense) or "?"
    attrs: dict = field(default_factory=dict)
    tensors: dict[str, TensorMeta] = field(default_factory=dict)  # local name -> meta
    buffers: frozenset[str] = BUFFER_NAMES
    torch_kind: str | None = None  # the torch class a Keras reading becomes (Conv2d for a DepthwiseConv2D)

    @property
    def params(self) -> int:
        return sum(m.numel for n, m in self.tensors.items() if n not in self.buffers)

    @property
    def full_params(self) -> int:
        """Parameters of the whole layer as torch builds it (the bias counted even when only the
        weight is known, as in a pasted size-mismatch line); the stored count if the table has
        no such torch layer."""
        torch_kind = self.torch_kind or self.kind
        if torch_kind in T.TORCH and all(a in self.attrs for a in _REQUIRED.get(torch_kind, ())):
            try:
                return T.params_of(torch_kind, self.attrs)
            except (KeyError, TypeError):
                pass
        return self.params

    def describe(self) -> str:
        a = self.attrs
        if not a:
            return self.kind
        parts = []
        for key, label in _LABELS:
            if key in a and a[key] is not None:
                v = a[key]
                if key in ("kernel_size", "normalized_shape"):
                    v = "x".join(str(k) for k in v)
                if (key == "groups" and v == 1) or (key == "num_layers" and v == 1):
                    continue
                parts.append(f"{label}={v}")
        return f"{self.kind}({', '.join(parts)})"


_LABELS = [("in_channels", "in"), ("out_channels", "out"), ("kernel_size", "kernel"),
           ("groups", "groups"), ("multiplier", "multiplier"),
           ("in_features", "in"), ("out_features", "out"),
           ("num_features", "features"), ("num_channels", "channels"), ("num_groups", "groups"),
           ("normalized_shape", "shape"), ("num_parameters", "params"),
           ("num_embeddings", "num"), ("embedding_dim", "dim"),
           ("input_size", "in"), ("hidden_size", "hidden"), ("num_layers", "layers")]
_REQUIRED = {k: tuple(a for a in spec.attrs if a not in ("bias", "groups", "affine", "track_running_stats",
                                                           "elementwise_affine", "num_layers", "bidirectional",
                                                           "num_groups"))
             for k, spec in T.TORCH.items()}

# Attributes as people say them when two layers differ ("out_channels 10 -> 15").
COMPARED = ["in_channels", "out_channels", "kernel_size", "groups", "in_features", "out_features",
            "num_features", "num_channels", "normalized_shape", "num_parameters", "num_embeddings",
            "embedding_dim", "input_size", "hidden_size", "num_layers"]
OUT_ATTRS = frozenset({"out_channels", "out_features", "num_features", "num_channels", "num_parameters",
                       "num_embeddings", "hidden_size", "normalized_shape"})
IN_ATTRS = frozenset({"in_channels", "in_features", "input_size", "embedding_dim"})


@dataclass(frozen=True)
class Difference:
    """One attribute that differs between two readings of a layer."""

    attr: str
    have: object
    want: object

    def __str__(self) -> str:
        f = (lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
        return f"{self.attr} {f(self.have)} -> {f(self.want)}"


def differences(a: Layer, b: Layer) -> list[Difference]:
    """What differs between two readings of the same layer, in layer terms."""
    out = []
    for k in COMPARED:
        va, vb = a.attrs.get(k), b.attrs.get(k)
        if va is not None and vb is not None and va != vb:
            out.append(Difference(k, va, vb))
    return out


# ---------------------------------------------------------------------------------------------
# Reading layers from tensor shapes: the layer table's readings


_TORCH_VAR = re.compile(r"^(weight|bias|running_mean|running_var|num_batches_tracked|"
                        r"(weight|bias)_(ih|hh)_l\d+(_reverse)?)$")


def torch_named(names) -> bool:
    """Whether a layer's variable names are torch's (weight, bias, running_mean, weight_ih_l0, ...)."""
    return all(_TORCH_VAR.match(n) for n in names)


def _attrs_of(units: list, keras_class: str | None) -> dict:
    """One description of a reading (a SeparableConv2D's two units: its input, output, kernel)."""
    first, last = units[0], units[-1]
    a = {k: v for k, v in first.attrs.items() if k not in ("shapes", "bias")}
    if first.rnn_layer is not None:
        a["num_layers"] = len(units)
    if keras_class and ("Depthwise" in keras_class or "Separable" in keras_class):
        a["multiplier"] = first.attrs["out_channels"] // first.attrs["in_channels"]
        a["out_channels"] = last.attrs["out_channels"]
        a.pop("groups", None)
    return a


def infer_layer(name: str, tensors: dict[str, TensorMeta], kind: str | None = None,
                attrs: dict | None = None) -> Layer:
    """Read one layer from its tensors' names and shapes (``kind`` if the file names the class),
    through the layer table: the first reading it allows (a Keras kernel with no class and a bias
    of its last axis reads as a Conv; the matcher, which knows the target, tries them all)."""
    layer = Layer(name=name, kind=kind or "?", tensors=dict(tensors))
    if attrs is not None:
        layer.attrs = dict(attrs)
        return layer
    shapes = {v: tuple(m.shape) for v, m in tensors.items()}
    if not shapes:
        return layer
    if torch_named(shapes) and (kind is None or kind in T.TORCH):
        units = T.torch_readings(shapes)
        if kind is not None:
            units = [u for u in units if u.kind == kind] or units
        if kind is None and "emb" in name.lower():
            units = [u for u in units if u.kind == "Embedding"] or units
        if units:
            rnn = [u for u in units if u.rnn_layer is not None and u.kind == units[0].kind]
            chosen = rnn if rnn else [units[0]]
            layer.kind = kind or chosen[0].kind
            layer.attrs = _attrs_of(chosen, None)
            layer.torch_kind = chosen[0].kind
        else:
            _partial(layer, shapes, kind)
        return layer
    readings = T.keras_readings(shapes, kind if kind in T.STORED_CLASSES else None)
    if readings:
        form, _, units = readings[0]
        layer.kind = kind or form.classes[0]
        layer.attrs = _attrs_of(units, form.classes[0])
        layer.torch_kind = units[0].kind
    return layer


def _partial(layer: Layer, shapes: dict[str, tuple[int, ...]], kind: str | None) -> None:
    """A layer only part of whose tensors are known (a pasted error names one tensor; a
    BatchNorm without its biases): what its names and ranks say."""
    w = shapes.get("weight")
    stats = [shapes[n] for n in BATCHNORM_STATS if n in shapes]
    if stats and (w is None or len(w) == 1):
        layer.kind = kind or "BatchNorm"
        layer.attrs = {"num_features": (w or stats[0])[0] if (w or stats[0]) else None}
    elif w is not None and len(w) == 1:
        layer.kind = kind or "Norm"
        layer.attrs = {"num_features": w[0]}


def group_layers(metas: dict[str, TensorMeta]) -> dict[str, dict[str, TensorMeta]]:
    """Group flat tensor names into layers, keeping first-seen order."""
    groups: dict[str, dict[str, TensorMeta]] = {}
    for key, meta in metas.items():
        layer, var = split_key(key)
        groups.setdefault(layer, {})[var] = meta
    return groups


def read_layers(metas: dict[str, TensorMeta], classes: dict[str, str] | None = None) -> dict[str, Layer]:
    """Every layer of a flat state dict, read from shapes (and classes where the file has them)."""
    classes = classes or {}
    return {name: infer_layer(name, ts, classes.get(name)) for name, ts in group_layers(metas).items()}


def layer_of(key: str) -> str:
    return split_key(key)[0]


_MAIN_VARS = frozenset({"weight", "kernel", "weights", "depthwise_kernel", "depthwise_weights", "gamma", "alpha",
                        "embeddings", "weight_ih_l0", "0"})


def reads_as(key: str, layers: dict[str, Layer]) -> str:
    """How a weight reads as a layer, e.g. ``Conv2d(in=3, out=10, kernel=5x5)`` ('' for other tensors)."""
    layer, var = split_key(key)
    ly = layers.get(layer)
    if var not in _MAIN_VARS or ly is None or not ly.attrs:
        return ""
    return ly.describe()


# ---------------------------------------------------------------------------------------------
# torch.nn layers a YAML layer spec may name: constructor signature -> state-dict shapes


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


def spec_layer(name: str, cls: str, args: list, kwargs: dict) -> Layer:
    """The Layer (with state-dict shapes) that ``torch.nn.<cls>(*args, **kwargs)`` would have."""
    if cls not in T.SIGNATURES:
        raise ValueError(f"unknown layer class {cls!r} (known: {', '.join(T.SIGNATURES)})")
    sig = T.SIGNATURES[cls]
    if len(args) > len(sig):
        raise ValueError(f"{cls} takes at most {len(sig)} positional arguments")
    a = dict(zip(sig, args))
    for k, v in kwargs.items():
        if k not in sig:
            raise ValueError(f"{cls} has no argument {k!r}")
        if k in a:
            raise ValueError(f"{cls} got {k!r} twice")
        a[k] = v
    spec = T.TORCH[cls]
    required = [x for x in spec.attrs if x in sig[:T.REQUIRED_ARGS[cls]]]
    for req in required:
        if req not in a:
            raise ValueError(f"{cls} needs {req}")
    if spec.spatial is not None:
        n = spec.spatial
        ks = _tuple(a["kernel_size"], n)
        if len(ks) != n or not all(isinstance(k, int) and k > 0 for k in ks):
            raise ValueError(f"{cls}: kernel_size must be a positive int or {n} of them")
        a["kernel_size"] = ks
        groups = a.get("groups", 1)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{cls}: groups must be a positive integer")
        if a["in_channels"] % groups or a["out_channels"] % groups:
            raise ValueError(f"{cls}: in_channels and out_channels must be divisible by groups")
    if cls == "LayerNorm":
        a["normalized_shape"] = _tuple(a["normalized_shape"], 1)
    if cls == "PReLU":
        a.setdefault("num_parameters", 1)
    for k, v in a.items():
        if k in ("bias", "affine", "track_running_stats", "elementwise_affine", "bidirectional", "batch_first",
                 "sparse", "scale_grad_by_freq") and not isinstance(v, bool):
            raise ValueError(f"{cls}: {k} must be true or false")
    try:
        shapes = spec.shapes(a)
    except (TypeError, KeyError) as e:
        raise ValueError(f"{cls}: {e}") from None
    dtypes_ = {n: ("int64" if n == "num_batches_tracked" else "float32") for n in shapes}
    t = {}
    for k, shape in shapes.items():
        if any((not isinstance(d, int)) or isinstance(d, bool) or d < 0 for d in shape):
            raise ValueError(f"{cls}: sizes must be non-negative integers")
        t[k] = TensorMeta(tuple(shape), dtypes_[k])
    attrs = {k: v for k, v in a.items() if k in spec.attrs or k == "eps"}
    if cls.startswith("BatchNorm") or cls in ("LayerNorm", "GroupNorm"):
        attrs.setdefault("eps", 1e-5)
    return Layer(name=name, kind=cls, attrs=attrs, tensors=t, buffers=spec.buffers)


def module_attrs(module) -> dict:
    """The attributes of a real torch module that ``differences``/``describe`` use."""
    out = {}
    for k in COMPARED + ["eps"]:
        v = getattr(module, k, None)
        if v is not None and isinstance(v, (int, float, tuple)):
            out[k] = tuple(v) if isinstance(v, tuple) else v
    if "num_channels" in dir(module) and "num_features" not in out:
        out["num_features"] = module.num_channels
    return out


def fan_in(weight_shape: tuple[int, ...]) -> int:
    """fan_in as torch.nn.init computes it for a weight of this shape (dim 1 x receptive field,
    for transposed convolutions too)."""
    if len(weight_shape) < 2:
        return weight_shape[0] if weight_shape else 1
    return weight_shape[1] * math.prod(weight_shape[2:])
