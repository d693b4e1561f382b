"""The table of layer knowledge: for each torch.nn layer class, its parameters (names and shapes
from constructor attributes) and, for Keras/TensorFlow and Flax, how that framework stores the
same layer (variable names in save order, TF1 slim names, the layout op that makes each variable
PyTorch's, and how to read the layer's attributes from the stored shapes alone; Flax: see its
section below); for ONNX, which input of each layer op is which torch tensor and in what layout
(``ONNX_INPUTS``, ``ONNX``).

Everything else reads this table: ``layers`` (readings for inspect/diff/explain and parameter
counts), ``match``/``suggest`` (target-driven matching), the ``keras-to-torch`` and
``flax-to-torch`` presets (tests check they agree), the Keras HDF5 reader (variable names of
unnamed ``vars/<i>``), the Flax reader (classes from module names and variables).

Conventions checked against the real frameworks by ``tools/zoo_oracle.py`` and the zoo tests:

* Conv ``kernel`` (*K, I/g, O) -> ``weight`` (O, I/g, *K)  (HWIO->OIHW and its 1-D/3-D forms).
* Conv*Transpose ``kernel`` (*K, O, I) -> ``weight`` (I, O, *K) (HWOI->IOHW).
* DepthwiseConv ``kernel`` (*K, C, M) -> Conv(groups=C) ``weight`` (C*M, 1, *K); output channel
  ``c*M + m`` is Keras' ``kernel[..., c, m]`` (Keras reshapes (C, M) to C*M in C order).
* SeparableConv = depthwise (bias-free) then pointwise 1x1 carrying the bias: two torch convs.
* Dense ``kernel`` (I, O) -> Linear ``weight`` (O, I).
* PReLU ``alpha`` [..., C] (shared axes of size 1) -> ``weight`` [C].
* LSTM: ``kernel`` (I, 4U), ``recurrent_kernel`` (U, 4U), gates i, f, c, o = torch's i, f, g, o:
  ``weight_ih`` = kernel.T, ``weight_hh`` = recurrent_kernel.T, ``bias_ih`` = bias, ``bias_hh`` = 0.
* GRU (``reset_after=True``, Keras' default): gates z, r, h; torch's r, z, n: transposed, blocks
  reordered [1, 0, 2]; ``bias`` (2, 3U): row 0 is the input bias, row 1 the recurrent bias.
  ``reset_after=False`` computes another function: no torch GRU holds it.
* BatchNormalization: gamma, beta, moving_mean, moving_variance; eps 1e-3 by default (torch 1e-5):
  folded into running_var (see ``bn_eps``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

Shape = tuple[int, ...]

# ---------------------------------------------------------------------------------------------
# torch.nn side: parameters from attributes, attributes from shapes


@dataclass(frozen=True)
class TorchLayer:
    """One torch.nn layer class (or family of classes)."""

    kinds: tuple[str, ...]
    attrs: tuple[str, ...]                       # the module attributes that fix its shapes
    params: Callable[[dict], dict[str, Shape]]   # attrs -> {local name: shape} (buffers too)
    buffers: frozenset[str] = frozenset()
    spatial: int | None = None                   # spatial rank (Conv2d: 2), None if not a conv

    def shapes(self, attrs: dict) -> dict[str, Shape]:
        return self.params(attrs)


def _conv(n: int, transposed: bool):
    def params(a: dict) -> dict[str, Shape]:
        cin, cout, g, k = a["in_channels"], a["out_channels"], a.get("groups") or 1, tuple(a["kernel_size"])
        w = (cin, cout // g, *k) if transposed else (cout, cin // g, *k)
        out = {"weight": w}
        if a.get("bias", True):
            out["bias"] = (cout,)
        return out
    return params


def _linear(a: dict) -> dict[str, Shape]:
    out = {"weight": (a["out_features"], a["in_features"])}
    if a.get("bias", True):
        out["bias"] = (a["out_features"],)
    return out


def _batchnorm(a: dict) -> dict[str, Shape]:
    c = a["num_features"]
    out: dict[str, Shape] = {}
    if a.get("affine", True):
        out.update(weight=(c,), bias=(c,))
    if a.get("track_running_stats", True):
        out.update(running_mean=(c,), running_var=(c,), num_batches_tracked=())
    return out


def _layernorm(a: dict) -> dict[str, Shape]:
    s = tuple(a["normalized_shape"])
    out: dict[str, Shape] = {}
    if a.get("elementwise_affine", True):
        out["weight"] = s
        if a.get("bias", True):
            out["bias"] = s
    return out


def _instancenorm(a: dict) -> dict[str, Shape]:
    c = a["num_features"]
    out: dict[str, Shape] = {}
    if a.get("affine", False):  # torch's defaults: affine=False, track_running_stats=False
        out.update(weight=(c,), bias=(c,))
    if a.get("track_running_stats", False):
        out.update(running_mean=(c,), running_var=(c,), num_batches_tracked=())
    return out


def _groupnorm(a: dict) -> dict[str, Shape]:
    c = a["num_channels"]
    return {"weight": (c,), "bias": (c,)} if a.get("affine", True) else {}


def _rnn(gates: int):
    def params(a: dict) -> dict[str, Shape]:
        h, n, dirs = a["hidden_size"], a.get("num_layers", 1), 2 if a.get("bidirectional") else 1
        out: dict[str, Shape] = {}
        for layer in range(n):
            for suffix in ("", "_reverse")[:dirs]:
                cin = a["input_size"] if layer == 0 else h * dirs
                out[f"weight_ih_l{layer}{suffix}"] = (gates * h, cin)
                out[f"weight_hh_l{layer}{suffix}"] = (gates * h, h)
                if a.get("bias", True):
                    out[f"bias_ih_l{layer}{suffix}"] = (gates * h,)
                    out[f"bias_hh_l{layer}{suffix}"] = (gates * h,)
        return out
    return params


_CONV_ATTRS = ("in_channels", "out_channels", "kernel_size", "groups", "bias")
TORCH: dict[str, TorchLayer] = {}
for _n in (1, 2, 3):
    TORCH[f"Conv{_n}d"] = TorchLayer((f"Conv{_n}d",), _CONV_ATTRS, _conv(_n, False), spatial=_n)
    TORCH[f"ConvTranspose{_n}d"] = TorchLayer((f"ConvTranspose{_n}d",), _CONV_ATTRS, _conv(_n, True), spatial=_n)
    TORCH[f"BatchNorm{_n}d"] = TorchLayer((f"BatchNorm{_n}d",), ("num_features", "affine", "track_running_stats"),
                                          _batchnorm, frozenset({"running_mean", "running_var", "num_batches_tracked"}))
    TORCH[f"InstanceNorm{_n}d"] = TorchLayer(
        (f"InstanceNorm{_n}d",), ("num_features", "affine", "track_running_stats"), _instancenorm,
        frozenset({"running_mean", "running_var", "num_batches_tracked"}))
TORCH.update({
    "Linear": TorchLayer(("Linear",), ("in_features", "out_features", "bias"), _linear),
    "LayerNorm": TorchLayer(("LayerNorm",), ("normalized_shape", "elementwise_affine", "bias"), _layernorm),
    "GroupNorm": TorchLayer(("GroupNorm",), ("num_groups", "num_channels", "affine"), _groupnorm),
    "PReLU": TorchLayer(("PReLU",), ("num_parameters",), lambda a: {"weight": (a["num_parameters"],)}),
    "Embedding": TorchLayer(("Embedding",), ("num_embeddings", "embedding_dim"),
                            lambda a: {"weight": (a["num_embeddings"], a["embedding_dim"])}),
    "LSTM": TorchLayer(("LSTM",), ("input_size", "hidden_size", "num_layers", "bias", "bidirectional"), _rnn(4)),
    "GRU": TorchLayer(("GRU",), ("input_size", "hidden_size", "num_layers", "bias", "bidirectional"), _rnn(3)),
    "RNN": TorchLayer(("RNN",), ("input_size", "hidden_size", "num_layers", "bias", "bidirectional"), _rnn(1)),
})
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_RNN_NAME = re.compile(r"_l(\d+)(?=$|_reverse$)")


def rnn_layer_of(name: str) -> int | None:
    """``weight_ih_l1`` -> 1 (the layer of a torch RNN tensor), None for other names."""
    m = _RNN_NAME.search(name)
    return int(m.group(1)) if m else None


def rnn_rename(name: str, layer: int | None, to: int | None) -> str:
    """``weight_ih_l{layer}`` -> ``weight_ih_l{to}`` (names of other tensors unchanged)."""
    if layer is None or to is None:
        return name
    return re.sub(rf"_l{layer}(?=$|_)", f"_l{to}", name)

# torch.nn constructor signatures (positional order), for layer specs like ``Conv2d(3, 15, 5)``,
# and how many leading arguments are required
_CONV_SIG = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "bias"]
_CONVT_SIG = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "output_padding", "groups",
              "bias", "dilation"]
_RNN_SIG = ["input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional"]
SIGNATURES: dict[str, list[str]] = {
    **{f"Conv{n}d": _CONV_SIG for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": _CONVT_SIG for n in (1, 2, 3)},
    "Linear": ["in_features", "out_features", "bias"],
    **{f"BatchNorm{n}d": ["num_features", "eps", "momentum", "affine", "track_running_stats"] for n in (1, 2, 3)},
    **{f"InstanceNorm{n}d": ["num_features", "eps", "momentum", "affine", "track_running_stats"] for n in (1, 2, 3)},
    "LayerNorm": ["normalized_shape", "eps", "elementwise_affine", "bias"],
    "GroupNorm": ["num_groups", "num_channels", "eps", "affine"],
    "PReLU": ["num_parameters", "init"],
    "Embedding": ["num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type",
                  "scale_grad_by_freq", "sparse"],
    "LSTM": _RNN_SIG + ["proj_size"], "GRU": _RNN_SIG, "RNN": ["input_size", "hidden_size", "num_layers",
                                                               "nonlinearity", "bias", "batch_first", "dropout",
                                                               "bidirectional"],
}
REQUIRED_ARGS = {k: (0 if k == "PReLU" else 3 if k.startswith("Conv") else 2 if k in ("Linear", "Embedding", "GroupNorm")
                     or k in RNN_GATES else 1) for k in SIGNATURES}


def torch_attrs(module) -> dict:
    """The table's attributes of a live torch module (``{}`` for classes the table lacks)."""
    spec = TORCH.get(type(module).__name__)
    if spec is None:
        return {}
    out = {}
    for a in spec.attrs:
        v = getattr(module, a, None)
        if a == "bias" and not isinstance(v, bool):
            v = v is not None if not isinstance(module, _rnn_types()) else bool(v)
        if isinstance(v, (list, tuple)):
            v = tuple(v)
        out[a] = v
    if "affine" in spec.attrs and out.get("affine") is None:
        out["affine"] = not spec.kinds[0].startswith("InstanceNorm")
    eps = getattr(module, "eps", None)
    if isinstance(eps, float):
        out["eps"] = eps
    return out


def _rnn_types():
    import torch

    return (torch.nn.RNNBase,)


# ---------------------------------------------------------------------------------------------
# Keras / TensorFlow side


@dataclass(frozen=True)
class Convert:
    """How one stored variable becomes one torch tensor: ops applied in this order."""

    var: str                                   # Keras variable name (save order name)
    layout: str | None = None                  # transpose layout ("HWIO->OIHW", depthwise "HWCM->OIHW")
    row: int | None = None                     # take row ``row`` of axis 0 (GRU bias (2, 3U))
    blocks: tuple[int, ...] | None = None      # reorder equal blocks of axis 0 (GRU gates)
    squeeze: bool = False                      # drop size-1 axes (PReLU alpha [1, 1, C] -> [C])
    flip: tuple[int, ...] = ()                 # reverse these axes after the layout (Flax ConvTranspose)

    @property
    def converts(self) -> bool:
        """Whether the stored values change on the way (not a rename alone)."""
        return self.layout is not None or self.row is not None or self.blocks is not None or self.squeeze


@dataclass(frozen=True)
class Fill:
    """A torch tensor the framework does not store: a constant (LSTM's bias_hh: zeros)."""

    value: float = 0.0


@dataclass(frozen=True)
class Unit:
    """One torch module a stored layer becomes: its class, attributes and tensors."""

    kind: str                                  # torch class (a family member: "Conv2d")
    attrs: dict
    tensors: dict[str, Convert | Fill]         # torch local name -> where it comes from
    rnn_layer: int | None = None               # an LSTM/GRU: which of the torch module's layers

    def shapes(self) -> dict[str, Shape]:
        if self.kind not in TORCH:  # a layer the table does not know: its stored shapes, as they are
            return dict(self.attrs["shapes"])
        shapes = TORCH[self.kind].shapes(self.attrs)
        if self.rnn_layer is not None:
            return {rnn_rename(k, 0, self.rnn_layer): v for k, v in shapes.items()}
        return shapes


@dataclass(frozen=True)
class KerasLayer:
    """How a framework stores a layer class (``classes``) and what torch modules it is: Keras
    (``KERAS``), Flax (``FLAX``: Keras' Conv/Dense rows and its own, ``framework="Flax"``), or ONNX
    (``ONNX``, read from the graph's nodes; ``framework="ONNX"``)."""

    classes: tuple[str, ...]
    variables: tuple[str, ...]                  # names in Keras' save order (``vars/0``, ``vars/1``...)
    optional: frozenset[str]                    # variables that may be absent (use_bias=False, ...)
    units: Callable[[dict[str, Shape], dict], list[Unit] | None]   # shapes (by var), config -> units
    note: str = ""
    framework: str = "Keras"


SLIM = {"kernel": "weights", "bias": "biases", "depthwise_kernel": "depthwise_weights",
        "pointwise_kernel": "pointwise_weights"}
UNSLIM = {v: k for k, v in SLIM.items()}
# Variable names that older Keras / tf.keras write for the same variable
ALIASES = {"depthwise_kernel": "kernel", "embeddings": "embeddings"}

_LETTERS = {1: "W", 2: "HW", 3: "DHW"}


def conv_layout(n: int, transposed: bool = False) -> str:
    s = _LETTERS[n]
    return f"{s}OI->IO{s}" if transposed else f"{s}IO->OI{s}"


def depthwise_layout(n: int) -> str:
    s = _LETTERS[n]
    return f"{s}CM->OI{s}"


def _bias(shapes, name="bias") -> dict:
    return {"bias": Convert(name)} if name in shapes else {}


def _keras_conv(n: int, transposed: bool):
    def units(s: dict[str, Shape], cfg: dict) -> list[Unit] | None:
        k = s.get("kernel")
        if k is None or len(k) != n + 2:
            return None
        # groups: from the config; without one it is unknown (None) and the target decides: a grouped
        # kernel (*K, I/g, O) is already torch's (O, I/g, *K) after the layout, whatever g is
        groups = cfg.get("groups", 1 if cfg else None)
        groups = groups if isinstance(groups, int) and groups >= 1 else (None if not cfg else 1)
        if transposed:
            attrs = {"in_channels": k[-1], "out_channels": k[-2] * (groups or 1), "kernel_size": k[:n], "groups": groups}
        else:
            attrs = {"in_channels": k[-2] * (groups or 1), "out_channels": k[-1], "kernel_size": k[:n], "groups": groups}
        attrs["bias"] = "bias" in s
        if "bias" in s and s["bias"] != (attrs["out_channels"],):
            return None
        kind = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
        return [Unit(kind, attrs, {"weight": Convert("kernel", conv_layout(n, transposed)), **_bias(s)})]
    return units


def _keras_depthwise(n: int):
    def units(s, cfg):
        k = s.get("kernel")
        if k is None or len(k) != n + 2:
            return None
        c, m = k[-2], k[-1]
        if "bias" in s and s["bias"] != (c * m,):
            return None
        return [Unit(f"Conv{n}d", {"in_channels": c, "out_channels": c * m, "kernel_size": k[:n], "groups": c,
                                   "bias": "bias" in s},
                     {"weight": Convert("kernel", depthwise_layout(n)), **_bias(s)})]
    return units


def _keras_separable(n: int):
    def units(s, cfg):
        d, p = s.get("depthwise_kernel"), s.get("pointwise_kernel")
        if d is None or p is None or len(d) != n + 2 or len(p) != n + 2:
            return None
        c, m = d[-2], d[-1]
        if p[-2] != c * m or any(x != 1 for x in p[:n]):
            return None
        out = p[-1]
        if "bias" in s and s["bias"] != (out,):
            return None
        return [Unit(f"Conv{n}d", {"in_channels": c, "out_channels": c * m, "kernel_size": d[:n], "groups": c,
                                   "bias": False}, {"weight": Convert("depthwise_kernel", depthwise_layout(n))}),
                Unit(f"Conv{n}d", {"in_channels": c * m, "out_channels": out, "kernel_size": (1,) * n, "groups": 1,
                                   "bias": "bias" in s},
                     {"weight": Convert("pointwise_kernel", conv_layout(n)), **_bias(s)})]
    return units


def _keras_dense(s, cfg):
    k = s.get("kernel")
    if k is None or len(k) != 2 or ("bias" in s and s["bias"] != (k[1],)):
        return None
    return [Unit("Linear", {"in_features": k[0], "out_features": k[1], "bias": "bias" in s},
                 {"weight": Convert("kernel", "IO->OI"), **_bias(s)})]


def _batchnorm(scale: str, shift: str, mean: str, var: str):
    """BatchNorm stored as ``scale, shift, mean, var`` (Keras: gamma, beta, moving_mean,
    moving_variance; Flax: scale, bias, mean, var): torch's weight, bias, running_mean, running_var."""
    def units(s, cfg):
        c = next((s[v] for v in (scale, shift, mean, var) if v in s), None)
        if c is None or len(c) != 1 or any(v != c for v in s.values()):
            return None
        if mean not in s or var not in s:
            return None
        t: dict[str, Convert | Fill] = {"weight": Convert(scale) if scale in s else Fill(1.0),
                                        "bias": Convert(shift) if shift in s else Fill(0.0),
                                        "running_mean": Convert(mean), "running_var": Convert(var),
                                        "num_batches_tracked": Fill(0)}
        return [Unit("BatchNorm2d", {"num_features": c[0]}, t)]  # the matcher takes any BatchNorm{1,2,3}d
    return units


_keras_batchnorm = _batchnorm("gamma", "beta", "moving_mean", "moving_variance")


def _norm(kind: str, scale: str = "gamma", shift: str = "beta"):
    def units(s, cfg):
        g = s.get(scale) or s.get(shift)
        if g is None or any(v != g for v in s.values()):
            return None
        t = {"weight": Convert(scale) if scale in s else Fill(1.0),
             "bias": Convert(shift) if shift in s else Fill(0.0)}
        if kind == "LayerNorm":
            return [Unit("LayerNorm", {"normalized_shape": g}, t)]
        if len(g) != 1:
            return None
        return [Unit("GroupNorm", {"num_channels": g[0], "num_groups": cfg.get("groups")}, t)]
    return units


_keras_norm = _norm


def _keras_prelu(s, cfg):
    a = s.get("alpha")
    if a is None:
        return None
    big = [d for d in a if d != 1]
    if len(big) > 1:
        return None  # a slope per position: torch's PReLU holds one per channel
    c = big[0] if big else 1
    return [Unit("PReLU", {"num_parameters": c}, {"weight": Convert("alpha", squeeze=len(a) != 1)})]


def _embedding(var: str):
    def units(s, cfg):
        e = s.get(var)
        if e is None or len(e) != 2:
            return None
        return [Unit("Embedding", {"num_embeddings": e[0], "embedding_dim": e[1]}, {"weight": Convert(var)})]
    return units


_keras_embedding = _embedding("embeddings")


def _keras_rnn(kind: str):
    gates = RNN_GATES[kind]
    order = (1, 0, 2) if kind == "GRU" else None

    def units(s, cfg):
        k, r = s.get("kernel"), s.get("recurrent_kernel")
        if k is None or r is None or len(k) != 2 or len(r) != 2 or k[1] % gates or r[1] != k[1]:
            return None
        h = k[1] // gates
        if r[0] != h:
            return None
        b = s.get("bias")
        t: dict[str, Convert | Fill] = {"weight_ih_l0": Convert("kernel", "IO->OI", blocks=order),
                                        "weight_hh_l0": Convert("recurrent_kernel", "IO->OI", blocks=order)}
        if kind == "GRU":
            if b is not None and b != (2, gates * h):
                return None  # reset_after=False: another function than torch's GRU
            if b is not None:
                t["bias_ih_l0"] = Convert("bias", row=0, blocks=order)
                t["bias_hh_l0"] = Convert("bias", row=1, blocks=order)
        elif b is not None:
            if b != (gates * h,):
                return None
            t["bias_ih_l0"] = Convert("bias")
            t["bias_hh_l0"] = Fill(0.0)
        attrs = {"input_size": k[0], "hidden_size": h, "num_layers": 1, "bias": b is not None,
                 "bidirectional": False}
        return [Unit(kind, attrs, t, rnn_layer=0)]
    return units


_KB = ("kernel", "bias")
KERAS: list[KerasLayer] = []
for _n in (1, 2, 3):
    KERAS += [
        KerasLayer((f"Conv{_n}D", f"Convolution{_n}D"), _KB, frozenset({"bias"}), _keras_conv(_n, False)),
        KerasLayer((f"Conv{_n}DTranspose", f"Convolution{_n}DTranspose"), _KB, frozenset({"bias"}),
                   _keras_conv(_n, True)),
    ]
KERAS += [
    KerasLayer(("DepthwiseConv1D",), _KB, frozenset({"bias"}), _keras_depthwise(1)),
    KerasLayer(("DepthwiseConv2D",), _KB, frozenset({"bias"}), _keras_depthwise(2)),
    KerasLayer(("SeparableConv1D",), ("depthwise_kernel", "pointwise_kernel", "bias"), frozenset({"bias"}),
               _keras_separable(1)),
    KerasLayer(("SeparableConv2D",), ("depthwise_kernel", "pointwise_kernel", "bias"), frozenset({"bias"}),
               _keras_separable(2)),
    KerasLayer(("Dense",), _KB, frozenset({"bias"}), _keras_dense),
    KerasLayer(("BatchNormalization",), ("gamma", "beta", "moving_mean", "moving_variance"),
               frozenset({"gamma", "beta"}), _keras_batchnorm),
    KerasLayer(("LayerNormalization",), ("gamma", "beta"), frozenset({"gamma", "beta"}), _keras_norm("LayerNorm")),
    KerasLayer(("GroupNormalization",), ("gamma", "beta"), frozenset({"gamma", "beta"}), _keras_norm("GroupNorm")),
    KerasLayer(("PReLU",), ("alpha",), frozenset(), _keras_prelu),
    KerasLayer(("Embedding",), ("embeddings",), frozenset(), _keras_embedding),
    KerasLayer(("LSTM",), ("kernel", "recurrent_kernel", "bias"), frozenset({"bias"}), _keras_rnn("LSTM")),
    KerasLayer(("GRU",), ("kernel", "recurrent_kernel", "bias"), frozenset({"bias"}), _keras_rnn("GRU")),
    KerasLayer(("SimpleRNN",), ("kernel", "recurrent_kernel", "bias"), frozenset({"bias"}), _keras_rnn("RNN")),
]
KERAS_BY_CLASS: dict[str, KerasLayer] = {c: k for k in KERAS for c in k.classes}
KERAS_CONV_CLASSES = frozenset(c for c in KERAS_BY_CLASS if "Conv" in c)  # padding facts apply to these
# tensors that are statistics, not parameters: torch's buffers and Keras' moving statistics
BUFFERS = frozenset(b for spec in TORCH.values() for b in spec.buffers) | {"moving_mean", "moving_variance",
                                                                          "mean", "var"}  # (Flax batch_stats)
# Keras' BatchNormalization / LayerNormalization / GroupNormalization default epsilon
KERAS_EPS = {"BatchNormalization": 1e-3, "LayerNormalization": 1e-3, "GroupNormalization": 1e-3}
# the variables of the cell of an RNN layer (Keras 3 stores them under ``<layer>/cell``)
RNN_CELL_VARIABLES = ("kernel", "recurrent_kernel", "bias")
RNN_CLASSES = {"LSTM": "LSTM", "GRU": "GRU", "SimpleRNN": "RNN"}


# Keras classes with weights but no torch layer here: their variable names, for naming files' ``vars/<i>``
KERAS_ONLY_VARIABLES = {"EinsumDense": ("kernel", "bias"), "RMSNormalization": ("scale",),
                        "Normalization": ("mean", "variance", "count")}


# ---------------------------------------------------------------------------------------------
# Flax (flax.linen) side: variables by module, in collections (checked end to end by test_flax)
#
# * Conv ``kernel`` (*K, I/g, O), ``bias`` (O,): stored exactly as Keras' Conv{n}D (HWIO->OIHW);
#   ``feature_group_count`` g is torch's groups (depthwise: g = I, kernel (*K, 1, I*M)); the file
#   does not record g: the target decides (a grouped kernel is torch's grouped weight after the
#   layout, whatever g is). Named ``Conv{n}D`` here, so Keras' row and preset rule serve both.
# * Dense ``kernel`` (I, O) -> Linear ``weight`` (O, I): Keras' Dense.
# * ConvTranspose, ``transpose_kernel=False`` (Flax's default): ``kernel`` (*K, I, O) is applied
#   as stored to the stride-dilated input (lax.conv_transpose), torch's ConvTranspose applies its
#   weight (I, O, *K) flipped: HWIO->IOHW, then every spatial axis reversed.
#   ``transpose_kernel=True``: ``kernel`` (*K, O, I), flipped by lax itself: HWOI->IOHW, as
#   Keras' Conv2DTranspose. The file does not say which; when I = O both read, and the default is
#   taken first. Padding: VALID is torch's padding=0; SAME is padding=(k-s)/2 where k-s is even
#   (lax pads ceil((k+s-2)/2) before, the rest after; torch pads k-1-p on both sides).
# * BatchNorm: params ``scale``/``bias``, batch_stats ``mean``/``var``; eps 1e-5 (torch's).
# * LayerNorm, GroupNorm: ``scale``/``bias``; eps 1e-6 (torch: 1e-5, set eps=1e-6 in the target:
#   eps inside the square root of a per-sample variance cannot be folded into the weights).
#   GroupNorm's groups are contiguous runs of channels, as torch's; the file does not record how many.
# * Embed ``embedding`` (N, D) -> Embedding ``weight`` (N, D).
# * Names: Flax names a submodule ``<Class>_<i>`` unless given a name; that is the class. Other
#   names are read from the variables and shapes (``flax_classes``).

FLAX_COLLECTIONS = ("params", "batch_stats")   # one module's variables, side by side in these
FLAX_EPS = {"BatchNorm": 1e-5, "LayerNorm": 1e-6, "GroupNorm": 1e-6}
NORM_EPS = {**{c: ("Keras", e) for c, e in KERAS_EPS.items()}, **{c: ("Flax", e) for c, e in FLAX_EPS.items()}}


def _flax_conv_transpose(n: int, transpose_kernel: bool):
    def units(s, cfg):
        k = s.get("kernel")
        if k is None or len(k) != n + 2:
            return None
        cin, cout = (k[-1], k[-2]) if transpose_kernel else (k[-2], k[-1])
        if "bias" in s and s["bias"] != (cout,):
            return None
        sp = _LETTERS[n]
        conv = (Convert("kernel", conv_layout(n, transposed=True)) if transpose_kernel else
                Convert("kernel", f"{sp}IO->IO{sp}", flip=tuple(range(2, n + 2))))
        return [Unit(f"ConvTranspose{n}d", {"in_channels": cin, "out_channels": cout, "kernel_size": k[:n],
                                             "groups": 1, "bias": "bias" in s}, {"weight": conv, **_bias(s)})]
    return units


def _any_rank(make):
    """One Flax class for every spatial rank (1-3): the kernel's rank says which."""
    def units(s, cfg):
        k = s.get("kernel")
        n = len(k) - 2 if k is not None else 0
        return make(n)(s, cfg) if n in _LETTERS else None
    return units


_FLAX_NOTE_TK = "transpose_kernel=False, Flax's default: kernel flipped for torch"
FLAX_OWN: list[KerasLayer] = [
    KerasLayer(("ConvTranspose",), _KB, frozenset({"bias"}), _any_rank(lambda n: _flax_conv_transpose(n, False)),
               note=_FLAX_NOTE_TK, framework="Flax"),
    KerasLayer(("ConvTranspose",), _KB, frozenset({"bias"}), _any_rank(lambda n: _flax_conv_transpose(n, True)),
               note="transpose_kernel=True", framework="Flax"),
    KerasLayer(("BatchNorm",), ("scale", "bias", "mean", "var"), frozenset({"scale", "bias"}),
               _batchnorm("scale", "bias", "mean", "var"), framework="Flax"),
    KerasLayer(("LayerNorm",), ("scale", "bias"), frozenset({"scale", "bias"}), _norm("LayerNorm", "scale", "bias"),
               framework="Flax"),
    KerasLayer(("GroupNorm",), ("scale", "bias"), frozenset({"scale", "bias"}), _norm("GroupNorm", "scale", "bias"),
               framework="Flax"),
    KerasLayer(("Embed",), ("embedding",), frozenset(), _embedding("embedding"), framework="Flax"),
]
# what a Flax layer may be when its name does not say (tried in this order: the first reading is
# the one shown; the matcher tries all of them against the target)
FLAX: list[KerasLayer] = ([KERAS_BY_CLASS[f"Conv{n}D"] for n in (1, 2, 3)] + FLAX_OWN[:2]
                          + [KERAS_BY_CLASS["Dense"]] + FLAX_OWN[2:])
# Flax's default module names: ``<Class>_<i>`` -> the class as the table names it
_FLAX_DEFAULT_NAME = re.compile(r"(?P<cls>[A-Z][A-Za-z0-9]*)_\d+")
_FLAX_AS = {"ConvTranspose": "ConvTranspose", "Dense": "Dense", "BatchNorm": "BatchNorm",
            "LayerNorm": "LayerNorm", "GroupNorm": "GroupNorm", "Embed": "Embed"}
# flax.linen classes with variables and no torch layer here: their modules are said to be them
FLAX_ONLY = frozenset({"DenseGeneral", "Einsum", "RMSNorm", "InstanceNorm", "SpectralNorm", "WeightNorm",
                       "ConvLocal", "PReLU", "LSTMCell", "OptimizedLSTMCell", "GRUCell", "MGUCell",
                       "SimpleCell", "ConvLSTMCell", "MultiHeadDotProductAttention", "MultiHeadAttention",
                       "SelfAttention"})
_FLAX_ATTENTION = frozenset({"MultiHeadDotProductAttention", "MultiHeadAttention", "SelfAttention"})
# the submodules flax.linen's attention modules always name so, whatever the attention module is called
_FLAX_ATTENTION_PARTS = frozenset({"query", "key", "value", "out"})


def flax_split(name: str) -> tuple[str, str]:
    """``params/Conv_0/kernel`` -> ``('params', 'Conv_0/kernel')``: the collection (``''`` for a
    file of one collection's contents, as Hugging Face saves ``params``) and the rest."""
    head, sep, rest = name.partition("/")
    return (head, rest) if sep and head in FLAX_COLLECTIONS else ("", name)


def flax_default_class(module: str, shapes: dict[str, Shape]) -> str | None:
    """The class a Flax default name (``Conv_0``, ``Dense_3``) says, in the table's names
    (``Conv_0`` with a rank-4 kernel: ``Conv2D``); a module inside an attention module is a
    DenseGeneral; None for other names."""
    parts = module.split("/")
    m = _FLAX_DEFAULT_NAME.fullmatch(parts[-1])
    if m is None:
        up = _FLAX_DEFAULT_NAME.fullmatch(parts[-2]) if len(parts) > 1 else None
        return "DenseGeneral" if up is not None and up.group("cls") in _FLAX_ATTENTION else None
    cls = m.group("cls")
    k, b = shapes.get("kernel"), shapes.get("bias")
    if cls in ("Conv", "Dense", "ConvTranspose") and k is not None and b is not None and len(b) != 1:
        return None  # stacked by nn.scan / nn.vmap (bias (L, O)): not one layer (``flax_stacked``)
    if cls == "Dense" and k is not None and len(k) != 2:
        return None
    if cls == "Conv":
        return f"Conv{len(k) - 2}D" if k is not None and len(k) - 2 in _LETTERS else None
    return _FLAX_AS.get(cls) or (cls if cls in FLAX_ONLY else None)


def flax_classes(shapes: dict[str, dict[str, Shape]]) -> tuple[dict[str, str], dict[str, str]]:
    """``(named, inferred)``: layer name -> class for the layers of a Flax file (``shapes``:
    layer name, collection included, -> its variables' shapes). ``named``: what Flax's default
    names say; ``inferred``: for other names, the first reading of the module's variables in every
    collection together (BatchNorm's params and batch_stats), as for a Keras layer of no class."""
    modules: dict[str, dict[str, Shape]] = {}
    layers: dict[str, list[str]] = {}
    for layer, local in shapes.items():
        module = flax_split(layer + "/")[1].rstrip("/") if layer else ""
        modules.setdefault(module, {}).update(local)
        layers.setdefault(module, []).append(layer)
    named: dict[str, str] = {}
    inferred: dict[str, str] = {}
    children: dict[str, set[str]] = {}
    for module in modules:
        parent, _, last = module.rpartition("/")
        children.setdefault(parent, set()).add(last)
    for module, local in modules.items():
        cls = flax_default_class(module, local)
        parent, _, last = module.rpartition("/")
        k = local.get("kernel")
        if (cls is None and last in _FLAX_ATTENTION_PARTS and children[parent] >= _FLAX_ATTENTION_PARTS
                and k is not None and len(k) >= 3):
            cls = "DenseGeneral"  # a custom-named attention's heads (its out kernel (H, hd, D) reads as a Conv1D)
        out = named
        if cls is None and not any(v.isdigit() for v in local):  # list positions are no variable names
            found = keras_readings(local, None, forms=FLAX)
            cls, out = (found[0][0].classes[0] if found else None), inferred
        if cls is not None:
            out.update({layer: cls for layer in layers[module]})
    return named, inferred


def refusal(shapes: dict[str, Shape], cls: str | None, name: str = "") -> str | None:
    """Why a stored layer that looks like a known one has no torch counterpart (None if it is not
    one of the known cases): said to the user instead of a bare "no counterpart"."""
    names = {normalize_var(n) for n in shapes}
    if {"kernel", "recurrent_kernel"} <= names and re.search(r"(^|/)(forward|backward)_", name):
        return ("one direction of a Keras Bidirectional RNN: not supported yet (torch keeps both directions in "
                "one module, *_reverse); convert each direction by hand, or save the layers unwrapped")
    if {"kernel", "recurrent_kernel", "bias"} <= names and cls in (None, "GRU"):
        k, b = shapes.get("kernel") or shapes.get("weights"), shapes.get("bias") or shapes.get("biases")
        if k is not None and b is not None and len(b) == 1 and len(k) == 2 and k[1] % 3 == 0 and b[0] == k[1]:
            return ("a Keras GRU with reset_after=False (one bias of 3U): it computes another function than "
                    "torch's GRU (reset gate before the recurrent matmul); no rule converts it")
    a = shapes.get("alpha")
    if a is not None and sum(d != 1 for d in a) > 1:
        return (f"a PReLU with a slope per position (alpha {list(a)}, no shared axes): torch's PReLU holds one "
                "slope per channel")
    return None


def variable_names(cls: str | None) -> tuple[str, ...] | None:
    """A Keras class's variable names in save order (None if the table does not know it)."""
    k = KERAS_BY_CLASS.get(cls or "")
    return k.variables if k is not None else KERAS_ONLY_VARIABLES.get(cls or "")


_VARIABLES = frozenset(v for k in KERAS for v in k.variables)


def normalize_var(name: str) -> str:
    """TF1 slim, legacy and TF2 object-graph names to Keras 3's: ``weights`` -> ``kernel``,
    ``_kernel`` -> ``kernel`` (a Keras 3 layer's attribute in a tf.train.Checkpoint)."""
    name = UNSLIM.get(name, name)
    if name.startswith("_") and name[1:] in _VARIABLES:
        return name[1:]
    return name


def keras_readings(shapes: dict[str, Shape], cls: str | None, cfg: dict | None = None,
                   forms: list[KerasLayer] | None = None) -> list[tuple[KerasLayer, dict[str, str], list[Unit]]]:
    """Every way a stored layer can be read: (form, {stored var -> form var}, units).

    ``shapes``: the layer's stored variables by name (any of Keras 3, legacy or slim names; or
    indices ``0``, ``1``, ... as subclassed models store them). ``cls``: the Keras (or Flax)
    class if the file records it (then only that class is tried); without one, every form in
    ``forms`` (Keras' by default; ``FLAX`` for a Flax file).
    """
    cfg = cfg or {}
    if cls:
        forms = FORMS_BY_CLASS.get(cls, [])
    elif forms is None:
        forms = KERAS
    out = []
    names = list(shapes)
    for form in forms:
        for naming in _namings(names, form, cls is not None):
            s = {naming[n]: shapes[n] for n in names}
            if set(s) - set(form.variables) or set(form.variables) - set(s) - form.optional:
                continue
            units = form.units(s, cfg)
            if units:
                out.append((form, naming, units))
    return out


def _namings(names: list[str], form: KerasLayer, known_class: bool) -> list[dict[str, str]]:
    """Ways to name stored variables as the form's: by name, or by save order for indices."""
    if all(n.isdigit() for n in names):
        idx = sorted(names, key=int)
        if len(idx) > len(form.variables):
            return []
        if len(idx) == len(form.variables):
            return [dict(zip(idx, form.variables))]
        # fewer: optional variables absent (a missing trailing bias is the common case)
        required = [v for v in form.variables if v not in form.optional]
        if len(idx) < len(required):
            return []
        from itertools import combinations

        outs = []
        for keep in combinations(form.variables, len(idx)):
            if set(required) <= set(keep):
                outs.append(dict(zip(idx, keep)))
        return outs
    naming = {}
    for n in names:
        v = normalize_var(n)
        if v not in form.variables and ALIASES.get(v) in form.variables:
            v = ALIASES[v]
        if v == "kernel" and "depthwise_kernel" in form.variables and form.classes[0].startswith("Separable"):
            return []
        naming[n] = v
    return [naming]


# ---------------------------------------------------------------------------------------------
# ONNX side: which input of a node is which torch tensor, and how the node's layout reads
#
# An ONNX model stores a layer as a node whose constant inputs (initializers, ``Constant``
# nodes) are its weights; the reader (``formats/onnx_io``) names them ``<layer>.<role>`` with the
# roles below and gives the node's op type as the layer's class and its attributes as the config.
# Layouts, from the ONNX operator specs:
#
# * Conv ``W`` (M, C/group, *k) = torch's (out, in/g, *k); ConvTranspose ``W`` (C, M/group, *k) =
#   torch's (in, out/g, *k): no transpose.
# * Gemm ``Y = alpha * A' @ B' + beta * C`` with B the weight: ``transB=1`` stores (N, K) = a
#   Linear's (out, in); ``transB=0`` (ONNX's default) stores (K, N): a Linear weight is its
#   transpose (``IO->OI``). ``transA=1``, a constant A, ``alpha``/``beta`` other than 1: no Linear.
# * MatMul with a constant B (K, N): ``x @ B`` is a Linear whose weight is B transposed; an
#   ``Add`` of a constant (N,) to its output is the bias (the torch exporter's Linear without a
#   2-D input). A B that is ``Transpose(W)`` of a constant (out, in) W reads as ``transB=1``.
# * BatchNormalization scale, B, input_mean, input_var = weight, bias, running_mean,
#   running_var (num_batches_tracked is not stored: 0); ``epsilon`` (default 1e-5) in the config.
# * LayerNormalization Scale, B; InstanceNormalization scale, B (an InstanceNorm with
#   affine=True, no running statistics).
# * Gather of a constant 2-D table on axis 0 with graph data as indices: an Embedding.
# LSTM/GRU nodes are not read as layers (gate orders iofc/zrh and the (1, 8H) bias would need a
# reshape the rules do not have yet): their weights are listed under their own names.

ONNX_INPUTS: dict[str, tuple[str | None, ...]] = {
    "Conv": (None, "weight", "bias"),
    "ConvTranspose": (None, "weight", "bias"),
    "Gemm": (None, "weight", "bias"),
    "MatMul": (None, "weight"),
    "BatchNormalization": (None, "weight", "bias", "running_mean", "running_var"),
    "LayerNormalization": (None, "weight", "bias"),
    "InstanceNormalization": (None, "weight", "bias"),
    "Gather": ("weight", None),
}
# attributes each op's reading depends on, with ONNX's defaults (the config the reader gives)
ONNX_ATTRS: dict[str, dict] = {
    "Conv": {"group": 1}, "ConvTranspose": {"group": 1},
    "Gemm": {"transA": 0, "transB": 0, "alpha": 1.0, "beta": 1.0}, "MatMul": {"transB": 0},
    "BatchNormalization": {"epsilon": 1e-5}, "LayerNormalization": {"epsilon": 1e-5, "axis": -1},
    "InstanceNormalization": {"epsilon": 1e-5}, "Gather": {"axis": 0},
}


def _onnx_conv(transposed: bool):
    def units(s, cfg):
        w = s.get("weight")
        if w is None or not 3 <= len(w) <= 5:
            return None
        n, g = len(w) - 2, cfg.get("group", 1)
        if not isinstance(g, int) or g < 1:
            return None
        cin, cout = (w[0], w[1] * g) if transposed else (w[1] * g, w[0])
        if "bias" in s and s["bias"] != (cout,):
            return None
        kind = f"ConvTranspose{n}d" if transposed else f"Conv{n}d"
        return [Unit(kind, {"in_channels": cin, "out_channels": cout, "kernel_size": tuple(w[2:]), "groups": g,
                            "bias": "bias" in s}, {"weight": Convert("weight"), **_bias(s)})]
    return units


def _onnx_linear(s, cfg):
    w = s.get("weight")
    if w is None or len(w) != 2 or cfg.get("transA", 0) or cfg.get("alpha", 1.0) != 1.0:
        return None
    if "bias" in s and cfg.get("beta", 1.0) != 1.0:
        return None
    stored_torch = bool(cfg.get("transB", 0))
    out_f, in_f = (w[0], w[1]) if stored_torch else (w[1], w[0])
    if "bias" in s and s["bias"] != (out_f,):
        return None
    return [Unit("Linear", {"in_features": in_f, "out_features": out_f, "bias": "bias" in s},
                 {"weight": Convert("weight", None if stored_torch else "IO->OI"), **_bias(s)})]


def _onnx_batchnorm(s, cfg):
    c = s.get("running_mean")
    if c is None or len(c) != 1 or any(v != c for v in s.values()):
        return None
    t = {v: Convert(v) for v in s}
    return [Unit("BatchNorm2d", {"num_features": c[0]}, {**t, "num_batches_tracked": Fill(0)})]


def _onnx_layernorm(s, cfg):
    w = s.get("weight")
    if w is None or ("bias" in s and s["bias"] != w):
        return None
    return [Unit("LayerNorm", {"normalized_shape": w, "bias": "bias" in s},
                 {"weight": Convert("weight"), **_bias(s)})]


def _onnx_instancenorm(s, cfg):
    w = s.get("weight")
    if w is None or len(w) != 1 or s.get("bias") != w:
        return None
    return [Unit("InstanceNorm2d", {"num_features": w[0], "affine": True},
                 {"weight": Convert("weight"), "bias": Convert("bias")})]


def _onnx_embedding(s, cfg):
    w = s.get("weight")
    if w is None or len(w) != 2 or cfg.get("axis", 0) != 0:
        return None
    return [Unit("Embedding", {"num_embeddings": w[0], "embedding_dim": w[1]}, {"weight": Convert("weight")})]


_WB = ("weight", "bias")
ONNX: list[KerasLayer] = [
    KerasLayer(("Conv",), _WB, frozenset({"bias"}), _onnx_conv(False), framework="ONNX"),
    KerasLayer(("ConvTranspose",), _WB, frozenset({"bias"}), _onnx_conv(True), framework="ONNX"),
    KerasLayer(("Gemm",), _WB, frozenset({"bias"}), _onnx_linear, framework="ONNX"),
    KerasLayer(("MatMul",), _WB, frozenset({"bias"}), _onnx_linear, framework="ONNX"),
    KerasLayer(("BatchNormalization",), ("weight", "bias", "running_mean", "running_var"), frozenset(),
               _onnx_batchnorm, framework="ONNX"),
    KerasLayer(("LayerNormalization",), _WB, frozenset({"bias"}), _onnx_layernorm, framework="ONNX"),
    KerasLayer(("InstanceNormalization",), _WB, frozenset(), _onnx_instancenorm, framework="ONNX"),
    KerasLayer(("Gather",), ("weight",), frozenset(), _onnx_embedding, framework="ONNX"),
]
# every stored form of a class name: Keras' and ONNX's BatchNormalization share a name and differ in
# their variables (gamma/moving_mean vs weight/running_mean), which ``keras_readings`` tells apart
FORMS_BY_CLASS: dict[str, list[KerasLayer]] = {}
for _form in KERAS + FLAX_OWN + ONNX:
    for _c in _form.classes:
        FORMS_BY_CLASS.setdefault(_c, []).append(_form)


# ---------------------------------------------------------------------------------------------
# reading torch layers from their state-dict shapes (a checkpoint without classes)


def torch_readings(shapes: dict[str, Shape]) -> list[Unit]:
    """Torch layers whose state dict this is, read from names and shapes (identity conversions)."""
    names = set(shapes)
    same = {n: Convert(n) for n in names}
    w = shapes.get("weight")
    out: list[Unit] = []
    if "weight_ih_l0" in names:
        return _torch_rnn(shapes)
    if w is None:
        return []
    if {"running_mean", "running_var"} <= names:
        bn = dict(same)
        if "num_batches_tracked" not in names:  # saved before torch 0.4.1, or by another tool
            bn["num_batches_tracked"] = Fill(0)
        return _consistent([Unit("BatchNorm2d", {"num_features": w[0], "affine": True,  # any BatchNorm{1,2,3}d
                                                 "track_running_stats": True}, bn)], shapes)
    if len(w) >= 3:
        n = len(w) - 2
        k = w[2:]
        b = shapes.get("bias")
        tg = b[0] // w[1] if b and b[0] and w[1] and b[0] % w[1] == 0 and w[0] % (b[0] // w[1]) == 0 else 1  # bias: out
        cands = [Unit(f"Conv{n}d", {"in_channels": w[1], "out_channels": w[0], "kernel_size": k, "groups": 1,
                                    "bias": "bias" in names}, same),
                 Unit(f"ConvTranspose{n}d", {"in_channels": w[0], "out_channels": w[1] * tg, "kernel_size": k,
                                             "groups": tg, "bias": "bias" in names}, same)]
        if n in _LETTERS and w[1] == 1 and w[0] > 1:  # depthwise: groups = C for any multiplier dividing out
            for c in range(1, w[0] + 1):
                if w[0] % c == 0 and c > 1:
                    cands.append(Unit(f"Conv{n}d", {"in_channels": c, "out_channels": w[0], "kernel_size": k,
                                                    "groups": c, "bias": "bias" in names}, same))
        return _consistent(cands, shapes)
    if len(w) >= 2 and shapes.get("bias") == w and len(names) == 2:
        return _consistent([Unit("LayerNorm", {"normalized_shape": w}, same)], shapes)
    if len(w) == 2:
        return _consistent([Unit("Linear", {"in_features": w[1], "out_features": w[0], "bias": "bias" in names}, same),
                            Unit("Embedding", {"num_embeddings": w[0], "embedding_dim": w[1]}, same)], shapes)
    if len(w) == 1:
        return _consistent([Unit("LayerNorm", {"normalized_shape": w}, same),
                            Unit("GroupNorm", {"num_channels": w[0], "num_groups": None}, same),
                            Unit("PReLU", {"num_parameters": w[0]}, same),
                            Unit("InstanceNorm2d", {"num_features": w[0], "affine": True}, same)], shapes)
    return []


def _torch_rnn(shapes: dict[str, Shape]) -> list[Unit]:
    """A torch LSTM/GRU/RNN read as one unit per layer (``rnn_layer``), as the matcher pairs them."""
    layers = sorted({x for n in shapes if (x := rnn_layer_of(n)) is not None})
    if "weight_hh_l0" not in shapes or any(n.endswith("_reverse") for n in shapes):
        return []
    h = shapes["weight_hh_l0"][1]
    out = []
    for kind, g in RNN_GATES.items():
        if shapes["weight_ih_l0"][0] != g * h:
            continue
        for layer in layers:
            local = {n: s for n, s in shapes.items() if n.endswith(f"_l{layer}")}
            w = local.get(f"weight_ih_l{layer}")
            if w is None:
                return []
            attrs = {"input_size": w[1], "hidden_size": h, "num_layers": 1, "bias": f"bias_ih_l{layer}" in local,
                     "bidirectional": False}
            u = Unit(kind, attrs, {rnn_rename(n, layer, 0): Convert(n) for n in local}, rnn_layer=layer)
            if u.shapes() != local:
                return []
            out.append(u)
    return out


def opaque(shapes: dict[str, Shape]) -> Unit:
    """A layer the table does not know, carried as its tensors (matched by names and shapes only)."""
    return Unit("?", {"shapes": dict(shapes)}, {n: Convert(n) for n in shapes})


def _consistent(units: list[Unit], shapes: dict[str, Shape]) -> list[Unit]:
    """The units whose stored tensors (not the ones they fill in) have exactly these shapes."""
    out = []
    for u in units:
        want = u.shapes()
        stored = {n: want.get(n) for n, c in u.tensors.items() if isinstance(c, Convert)}
        if stored == shapes and set(u.tensors) == set(want):
            out.append(u)
    return out


def params_of(kind: str, attrs: dict) -> int:
    """Parameter count (buffers excluded) of a torch layer."""
    spec = TORCH[kind]
    return sum(math.prod(s) for n, s in spec.shapes(attrs).items() if n not in spec.buffers)


__all__ = ["TORCH", "KERAS", "KERAS_BY_CLASS", "FLAX", "flax_classes", "ONNX", "ONNX_INPUTS", "FORMS_BY_CLASS",
           "Unit", "Convert", "Fill", "keras_readings", "torch_readings", "variable_names", "conv_layout",
           "depthwise_layout", "params_of", "torch_attrs"]

