"""Layer knowledge, in one place: which tensor shapes make which layer, how many parameters a
layer holds, how to describe it ("Conv2d(in=3, out=10, kernel=5x5)"), and the state-dict shapes of
the torch.nn layers a YAML layer spec may name.

Used by inspect, diff, targets, the planner's parameter checks (and explain/suggest).
No torch import here: shapes are computed from constructor arguments, and a test checks them
against real torch modules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .tensors import TensorMeta

BUFFER_NAMES = frozenset({"running_mean", "running_var", "num_batches_tracked",
                          "moving_mean", "moving_variance"})
BATCHNORM_STATS = frozenset({"running_mean", "running_var", "moving_mean", "moving_variance"})


def split_key(key: str) -> tuple[str, str]:
    """``'features.0.weight' -> ('features.0', 'weight')``; TF ``'conv1/kernel' -> ('conv1', 'kernel')``."""
    cut = max(key.rfind("."), key.rfind("/"))
    if cut < 0:
        return "", key
    return key[:cut], key[cut + 1:]


def join_key(layer: str, var: str, sep: str = ".") -> str:
    return f"{layer}{sep}{var}" if layer else var


@dataclass
class Layer:
    name: str                     # module path ("" for a bare module's own state dict)
    kind: str                     # Conv2d, Linear, BatchNorm2d, ... or a TF class (Conv2D, Dense) or "?"
    attrs: dict = field(default_factory=dict)
    tensors: dict[str, TensorMeta] = field(default_factory=dict)  # local name -> meta
    buffers: frozenset[str] = BUFFER_NAMES

    @property
    def params(self) -> int:
        return sum(m.numel for n, m in self.tensors.items() if n not in self.buffers)

    def describe(self) -> str:
        a = self.attrs
        if not a:
            return self.kind
        parts = []
        for key, label in _LABELS:
            if key in a and a[key] is not None:
                v = a[key]
                if key == "kernel_size":
                    v = "x".join(str(k) for k in v)
                if key == "groups" and v == 1:
                    continue
                parts.append(f"{label}={v}")
        return f"{self.kind}({', '.join(parts)})"


_LABELS = [("in_channels", "in"), ("out_channels", "out"), ("kernel_size", "kernel"),
           ("groups", "groups"), ("multiplier", "multiplier"),
           ("in_features", "in"), ("out_features", "out"),
           ("num_features", "features"), ("normalized_shape", "shape"),
           ("num_embeddings", "num"), ("embedding_dim", "dim")]

# Attribute names as people say them when two layers differ ("out_channels 10 -> 15").
COMPARED = ["in_channels", "out_channels", "kernel_size", "groups", "in_features", "out_features",
            "num_features", "normalized_shape", "num_embeddings", "embedding_dim"]


def differences(a: Layer, b: Layer) -> list[str]:
    """What differs between two readings of the same layer, in layer terms."""
    out = []
    for k in COMPARED:
        va, vb = a.attrs.get(k), b.attrs.get(k)
        if va is not None and vb is not None and va != vb:
            if k == "kernel_size":
                va, vb = "x".join(map(str, va)), "x".join(map(str, vb))
            out.append(f"{k} {va} -> {vb}")
    return out


# ---------------------------------------------------------------------------------------------
# Reading layers from tensor shapes


def _conv_attrs(kind: str, w: tuple[int, ...], groups: int = 1, transposed: bool = False) -> dict:
    if transposed:
        return {"in_channels": w[0], "out_channels": w[1] * groups, "kernel_size": tuple(w[2:]), "groups": groups}
    return {"in_channels": w[1] * groups, "out_channels": w[0], "kernel_size": tuple(w[2:]), "groups": groups}


def _tf_attrs(kind: str, k: tuple[int, ...]) -> dict:
    if kind == "Dense":
        return {"in_features": k[0], "out_features": k[1]}
    if kind == "Conv2DTranspose":  # (kh, kw, out, in)
        return {"in_channels": k[-1], "out_channels": k[-2], "kernel_size": tuple(k[:-2])}
    return {"in_channels": k[-2], "out_channels": k[-1], "kernel_size": tuple(k[:-2])}


_TF_CONV_BY_RANK = {3: "Conv1D", 4: "Conv2D", 5: "Conv3D"}
_TORCH_CONV_BY_RANK = {3: "Conv1d", 4: "Conv2d", 5: "Conv3d"}


def infer_layer(name: str, tensors: dict[str, TensorMeta], kind: str | None = None,
                attrs: dict | None = None) -> Layer:
    """Read one layer from its tensors' names and shapes (``kind`` if the file names the class)."""
    layer = Layer(name=name, kind=kind or "?", tensors=dict(tensors))
    if attrs is not None:
        layer.attrs = dict(attrs)
        return layer
    w = tensors.get("weight")
    k = tensors.get("kernel") or (tensors.get("weights") if w is None else None)  # TF1 slim: weights
    if "depthwise_kernel" in tensors:  # Keras DepthwiseConv2D / SeparableConv2D
        d = tensors["depthwise_kernel"].shape
        if len(d) == 4:
            layer.kind = kind or ("SeparableConv2D" if "pointwise_kernel" in tensors else "DepthwiseConv2D")
            layer.attrs = {"in_channels": d[2], "multiplier": d[3], "kernel_size": tuple(d[:2])}
            if "pointwise_kernel" in tensors:
                layer.attrs["out_channels"] = tensors["pointwise_kernel"].shape[-1]
            else:
                layer.attrs["out_channels"] = d[2] * d[3]
    elif k is not None:  # Keras/TF naming
        tf_kind = kind or ("Dense" if k.rank == 2 else _TF_CONV_BY_RANK.get(k.rank))
        if tf_kind and k.rank in (2, 3, 4, 5):
            layer.kind = tf_kind
            layer.attrs = _tf_attrs(tf_kind, k.shape)
    elif "gamma" in tensors or "moving_mean" in tensors:
        c = (tensors.get("gamma") or tensors.get("moving_mean")).shape
        layer.kind = kind or "BatchNormalization"
        layer.attrs = {"num_features": c[0] if c else None}
    elif w is not None:
        if BATCHNORM_STATS & tensors.keys() and w.rank == 1:
            layer.kind = kind or "BatchNorm"
            layer.attrs = {"num_features": w.shape[0]}
        elif kind and kind.startswith("ConvTranspose") and w.rank >= 3:
            layer.attrs = _conv_attrs(kind, w.shape, transposed=True)
        elif w.rank in _TORCH_CONV_BY_RANK:
            layer.kind = kind or _TORCH_CONV_BY_RANK[w.rank]
            layer.attrs = _conv_attrs(layer.kind, w.shape)
        elif w.rank == 2:
            if (kind or "").startswith("Embedding") or (kind is None and "emb" in name.lower() and "bias" not in tensors):
                layer.kind = kind or "Embedding"
                layer.attrs = {"num_embeddings": w.shape[0], "embedding_dim": w.shape[1]}
            else:
                layer.kind = kind or "Linear"
                layer.attrs = {"in_features": w.shape[1], "out_features": w.shape[0]}
        elif w.rank == 1:
            layer.kind = kind or "Norm"
            layer.attrs = {"num_features": w.shape[0]}
    elif BATCHNORM_STATS & tensors.keys():
        c = next(tensors[n].shape for n in BATCHNORM_STATS if n in tensors)
        layer.kind = kind or "BatchNorm"
        layer.attrs = {"num_features": c[0] if c else None}
    return layer


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


def reads_as(key: str, layers: dict[str, Layer]) -> str:
    """How a weight reads as a layer, e.g. ``Conv2d(in=3, out=10, kernel=5x5)`` ('' for other tensors)."""
    layer, var = split_key(key)
    ly = layers.get(layer)
    if var not in ("weight", "kernel", "weights", "depthwise_kernel", "gamma") or ly is None or not ly.attrs:
        return ""
    return ly.describe()


# ---------------------------------------------------------------------------------------------
# torch.nn layers a YAML layer spec may name: constructor signature -> state-dict shapes


def _tuple(v, n: int) -> tuple[int, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,) * n


_CONV = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"]
_CONVT = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
          "bias", "dilation"]
SIGNATURES: dict[str, list[str]] = {
    **{f"Conv{n}d": _CONV for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": _CONVT for n in (1, 2, 3)},
    "Linear": ["in_features", "out_features", "bias"],
    **{f"BatchNorm{n}d": ["num_features", "eps", "momentum", "affine", "track_running_stats"] for n in (1, 2, 3)},
    "LayerNorm": ["normalized_shape", "eps", "elementwise_affine", "bias"],
    "GroupNorm": ["num_groups", "num_channels", "eps", "affine"],
    "Embedding": ["num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"],
}


def spec_layer(name: str, cls: str, args: list, kwargs: dict) -> Layer:
    """The Layer (with state-dict shapes) that ``torch.nn.<cls>(*args, **kwargs)`` would have."""
    if cls not in SIGNATURES:
        raise ValueError(f"unknown layer class {cls!r} (known: {', '.join(SIGNATURES)})")
    sig = SIGNATURES[cls]
    if len(args) > len(sig):
        raise ValueError(f"{cls} takes at most {len(sig)} positional arguments")
    a = dict(zip(sig, args))
    for k, v in kwargs.items():
        if k not in sig:
            raise ValueError(f"{cls} has no argument {k!r}")
        if k in a:
            raise ValueError(f"{cls} got {k!r} twice")
        a[k] = v
    f32 = "float32"
    t: dict[str, TensorMeta] = {}
    if cls.startswith("Conv"):
        n = int(cls[-2])
        for req in ("in_channels", "out_channels", "kernel_size"):
            if req not in a:
                raise ValueError(f"{cls} needs {req}")
        cin, cout, groups = a["in_channels"], a["out_channels"], a.get("groups", 1)
        ks = _tuple(a["kernel_size"], n)
        if len(ks) != n or not all(isinstance(k, int) and k > 0 for k in ks):
            raise ValueError(f"{cls}: kernel_size must be a positive int or {n} of them")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{cls}: groups must be a positive integer")
        if cin % groups or cout % groups:
            raise ValueError(f"{cls}: in_channels and out_channels must be divisible by groups")
        if cls.startswith("ConvTranspose"):
            t["weight"] = TensorMeta((cin, cout // groups, *ks), f32)
        else:
            t["weight"] = TensorMeta((cout, cin // groups, *ks), f32)
        if a.get("bias", True):
            t["bias"] = TensorMeta((cout,), f32)
        attrs = {"in_channels": cin, "out_channels": cout, "kernel_size": ks, "groups": groups}
    elif cls == "Linear":
        t["weight"] = TensorMeta((a["out_features"], a["in_features"]), f32)
        if a.get("bias", True):
            t["bias"] = TensorMeta((a["out_features"],), f32)
        attrs = {"in_features": a["in_features"], "out_features": a["out_features"]}
    elif cls.startswith("BatchNorm"):
        c = a["num_features"]
        if a.get("affine", True):
            t["weight"] = TensorMeta((c,), f32)
            t["bias"] = TensorMeta((c,), f32)
        if a.get("track_running_stats", True):
            t["running_mean"] = TensorMeta((c,), f32)
            t["running_var"] = TensorMeta((c,), f32)
            t["num_batches_tracked"] = TensorMeta((), "int64")
        attrs = {"num_features": c, "eps": a.get("eps", 1e-5)}
    elif cls == "LayerNorm":
        shape = _tuple(a["normalized_shape"], 1)
        if a.get("elementwise_affine", True):
            t["weight"] = TensorMeta(shape, f32)
            if a.get("bias", True):
                t["bias"] = TensorMeta(shape, f32)
        attrs = {"normalized_shape": shape, "eps": a.get("eps", 1e-5)}
    elif cls == "GroupNorm":
        c = a["num_channels"]
        if a.get("affine", True):
            t["weight"] = TensorMeta((c,), f32)
            t["bias"] = TensorMeta((c,), f32)
        attrs = {"num_features": c, "num_groups": a["num_groups"], "eps": a.get("eps", 1e-5)}
    else:  # Embedding
        t["weight"] = TensorMeta((a["num_embeddings"], a["embedding_dim"]), f32)
        attrs = {"num_embeddings": a["num_embeddings"], "embedding_dim": a["embedding_dim"]}
    for k, v in t.items():
        if any((not isinstance(d, int)) or d < 0 for d in v.shape):
            raise ValueError(f"{cls}: sizes must be non-negative integers")
    return Layer(name=name, kind=cls, attrs=attrs, tensors=t)


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
