"""What a target model's forward pass shows: its layers in execution order, and which Linear layers
read a flattened feature map (and in which order the map's axes were flattened).

Traced with torch.fx on the meta device (no data, no memory); a model fx cannot trace falls back
to registration order, and the facts it could not see are reported as assumptions by the caller.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass, field


_SPATIAL = {1: "W", 2: "HW", 3: "DHW"}
INPUT = "<input>"  # what the first layers read (in ``Trace.feeds``)
_PASS_METHODS = {"contiguous", "float", "clone", "detach", "to"}
_PASS_FUNCS = {"dropout", "contiguous", "identity"}
# shape-preserving ops a flattened map may pass through after a permute (a channels-last LayerNorm
# between permute(0, 2, 3, 1) and permute(0, 3, 1, 2), as ConvNeXt and Flax twins do): the walk
# goes on through them, so the permutes before them are composed too (stopping there took the
# LayerNorm's NHWC output for NCHW)
_ELEMENTWISE_FUNCS = {"relu", "relu6", "gelu", "silu", "sigmoid", "tanh", "leaky_relu", "elu", "hardswish",
                      "layer_norm", "rms_norm"}


@dataclass
class Flatten:
    """A Linear fed by a flattened (C, *S) feature map."""

    linear: str
    producer: str | None          # the module whose output map was flattened
    channels: int | None          # C
    spatial_rank: int | None      # len(S)
    order: str                    # the target's flatten order, in letters ("CHW"; "HWC" if it permutes first)
    map_shape: tuple[int, ...] | None = None   # (C, *S) when the input shape was known

    def spatial(self, in_features: int) -> tuple[tuple[int, ...] | None, str]:
        """(S, how it was found): from the traced map shape, else the only S with prod = in/C (1-D),
        a square / cube (2-D / 3-D), else None."""
        if self.map_shape is not None:
            return tuple(self.map_shape[1:]), "traced"
        if not self.channels or not self.spatial_rank or in_features % self.channels:
            return None, "unknown; give --input-shape"
        area = in_features // self.channels
        n = self.spatial_rank
        if n == 1:
            return (area,), "from in_features / channels"
        side = round(area ** (1 / n))
        for s in (side - 1, side, side + 1):
            if s > 0 and s ** n == area:
                return (s,) * n, "assumed square"
        return None, f"{area} positions do not form a square; give --input-shape"


@dataclass
class Trace:
    order: list[str]                               # module names, execution order
    traced: bool                                   # False: registration order (fx could not trace it)
    flattens: dict[str, Flatten] = field(default_factory=dict)
    note: str = ""
    feeds: dict[str, str] = field(default_factory=dict)   # layer -> the layer whose output it reads


def symbolic(model):
    """``(torch.fx.symbolic_trace(model), None)``, or ``(None, the exception's class name)``."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.fx.symbolic_trace(model), None
    except Exception as e:  # noqa: BLE001 - any model code can fail to trace
        return None, type(e).__name__


def trace(model, input_shape: tuple[int, ...] | None = None) -> Trace:
    """Trace ``model`` (built on the meta device). ``input_shape``: the model's input (with batch)
    when known, so the flattened maps' shapes are exact."""
    import torch

    modules = dict(model.named_modules())
    registered = [n for n, m in modules.items() if any(True for _ in m.parameters(recurse=False))
                  or any(b is not None for b in m._buffers.values())]
    gm, err = symbolic(model)
    if gm is None:
        return Trace(registered, False, note=f"torch.fx could not trace the model ({err}); "
                     "layers are taken in registration order")
    def flattens_now() -> dict[str, Flatten]:
        out = {}
        for node in gm.graph.nodes:
            if node.op == "call_module" and type(modules.get(str(node.target))).__name__ == "Linear" and node.args:
                f = _flatten_before(str(node.target), node.args[0], modules)
                if f is not None:
                    out[f.linear] = f
        return out

    flattens = flattens_now()
    if input_shape is not None and flattens:
        was = [m.training for m in gm.modules()]
        try:  # eval mode: a training-mode BatchNorm on meta tensors pulls in torch._dynamo
            from torch.fx.passes.shape_prop import ShapeProp

            gm.eval()
            with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")  # ShapeProp prints a traceback of its own on a failing node
                ShapeProp(gm).propagate(torch.empty(input_shape, device="meta"))
            flattens = flattens_now()
        except Exception:  # noqa: BLE001 - a wrong guess of the input shape: shapes stay unknown
            pass
        finally:
            for m, t in zip(gm.modules(), was):
                m.training = t
    order: list[str] = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            name = str(node.target)
        elif node.op == "get_attr":
            name = str(node.target).rpartition(".")[0]
        else:
            continue
        for cand in _owners(name, modules):
            if cand in registered and cand not in order:
                order.append(cand)
    order += [n for n in registered if n not in order]
    feeds = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target) in registered and node.args:
            f = _feeder(node.args[0], registered)
            if f is not None:
                feeds[str(node.target)] = f
    return Trace(order, True, flattens, feeds=feeds)


def _feeder(node, registered: list[str]) -> str | None:
    """The nearest layer with parameters upstream of ``node`` (first inputs only)."""
    for _ in range(64):
        if isinstance(node, (list, tuple)):
            node = node[0] if node else None
        if not hasattr(node, "op"):
            return None
        if node.op == "call_module" and str(node.target) in registered:
            return str(node.target)
        if node.op == "placeholder":
            return INPUT
        if not node.args:
            return None
        node = node.args[0]
    return None


def _owners(name: str, modules: dict) -> list[str]:
    """The module itself and, for a container called as a whole (a leaf to fx), its sub-modules."""
    out = [name]
    out += [n for n in modules if n.startswith(name + ".")] if name else []
    return out


def _is(node, op: str, names: set[str]) -> bool:
    if node.op != op:
        return False
    t = node.target
    name = t if isinstance(t, str) else getattr(t, "__name__", "")
    return name in names


def _flatten_before(linear: str, node, modules: dict) -> Flatten | None:
    """Walk back from a Linear's input: flatten/view/reshape, then permutes, then the map."""
    import torch

    flattened = False
    perm: list[int] | None = None
    while hasattr(node, "op"):
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if mod is not None and isinstance(mod, torch.nn.Flatten):
            if mod.start_dim != 1 or mod.end_dim != -1:
                return None
            flattened = True
        elif _is(node, "call_function", {"flatten"}) or _is(node, "call_method", {"flatten"}):
            start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
            if start != 1:
                return None
            flattened = True
        elif _is(node, "call_method", {"view", "reshape"}) or _is(node, "call_function", {"reshape"}):
            flattened = True
        elif flattened and (_is(node, "call_method", {"permute"}) or _is(node, "call_function", {"permute"})):
            dims = node.args[1:] if node.op == "call_method" else node.args[1:2]
            if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
                dims = dims[0]
            if not all(isinstance(d, int) for d in dims):
                return None
            p = list(dims)
            perm = p if perm is None else [p[i] for i in perm]
        elif (mod is not None and isinstance(mod, (torch.nn.Dropout, torch.nn.Identity))) or \
                _is(node, "call_method", _PASS_METHODS) or _is(node, "call_function", _PASS_FUNCS):
            pass
        elif flattened and perm is not None and (_elementwise(mod) or _is(node, "call_function", _ELEMENTWISE_FUNCS)
                                                 or _is(node, "call_method", _ELEMENTWISE_FUNCS)):
            pass
        else:
            break
        if not node.args:
            return None
        node = node.args[0]
    if not flattened or not hasattr(node, "op"):
        return None
    shape = None
    tm = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    if tm is not None and hasattr(tm, "shape") and len(tm.shape) >= 3:
        shape = tuple(int(d) for d in tm.shape[1:])
    channels, rank, producer = _map_facts(node, modules)
    if shape is not None:
        channels, rank = shape[0], len(shape) - 1
    elif tm is not None and hasattr(tm, "shape") and len(tm.shape) == 2:
        return None  # flattening an already flat (N, F) tensor
    if rank is None:
        return None
    letters = "C" + _SPATIAL.get(rank, "")
    axes = ["N", *letters]
    if perm is not None:
        if sorted(perm) != list(range(len(axes))):
            return None
        axes = [axes[i] for i in perm]
        if axes[0] != "N":
            return None
    return Flatten(linear, producer, channels, rank, "".join(axes[1:]), shape)


def _elementwise(mod) -> bool:
    """A module whose output has its input's shape and axes: a LayerNorm/RMSNorm (over the last
    axes) or an activation."""
    import torch

    if mod is None:
        return False
    if isinstance(mod, (torch.nn.LayerNorm, getattr(torch.nn, "RMSNorm", torch.nn.LayerNorm))):
        return True
    return type(mod).__module__ == "torch.nn.modules.activation" and not isinstance(
        mod, (torch.nn.MultiheadAttention, torch.nn.Softmax, torch.nn.LogSoftmax, torch.nn.Softmin, torch.nn.GLU))


def _map_facts(node, modules: dict) -> tuple[int | None, int | None, str | None]:
    """(channels, spatial rank, producer) of the map a node holds, from the layers before it."""
    channels = rank = producer = None
    seen = 0
    while hasattr(node, "op") and seen < 64:
        seen += 1
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        cls = type(mod).__name__ if mod is not None else str(name)
        if rank is None:
            for n in (1, 2, 3):
                if cls.endswith(f"{n}d"):
                    rank = n
        if channels is None and mod is not None:
            for a in ("out_channels", "num_features", "num_channels"):
                if isinstance(getattr(mod, a, None), int):
                    channels, producer = getattr(mod, a), str(node.target)
                    break
        if channels is not None and rank is not None:
            break
        if not node.args:
            break
        node = node.args[0]
    return channels, rank, producer


# ---------------------------------------------------------------------------------------------
# the source's graph: a Keras model config


@dataclass
class KerasFlatten:
    order: str                          # the order Keras flattened the map in, e.g. "HWC", "CHW"
    dims: tuple[int, ...] | None        # the map's sizes in that order, when the config has them


def _entries(config) -> list[dict]:
    if isinstance(config, dict) and isinstance(config.get("config"), dict):
        layers = config["config"].get("layers")
        if isinstance(layers, list):
            return [e for e in layers if isinstance(e, dict)]
    return []


def _name(e: dict) -> str | None:
    n = e.get("name") or (e.get("config") or {}).get("name")
    return n if isinstance(n, str) else None


def _inbound(e: dict) -> tuple[str | None, tuple | None]:
    """(name of the layer feeding ``e``, the fed tensor's shape) from either config format."""
    nodes = e.get("inbound_nodes")
    if not isinstance(nodes, list) or not nodes:
        return None, None
    node = nodes[0]
    if isinstance(node, dict):  # Keras 3: {"args": [{"class_name": "__keras_tensor__", "config": {...}}]}
        args = node.get("args") or []
        t = args[0] if args else None
        if isinstance(t, dict) and isinstance(t.get("config"), dict):
            hist = t["config"].get("keras_history")
            shape = t["config"].get("shape")
            return (hist[0] if isinstance(hist, list) and hist and isinstance(hist[0], str) else None,
                    tuple(shape) if isinstance(shape, list) else None)
        return None, None
    if isinstance(node, list) and node and isinstance(node[0], list) and node[0]:  # legacy [[name, 0, 0, {}]]
        return (node[0][0] if isinstance(node[0][0], str) else None), None
    return None, None


def _previous(entries: list[dict]) -> dict[str | None, str | None]:
    """Layer -> the layer whose output it reads: its first inbound layer, or (Sequential) the one before."""
    prev: dict[str | None, str | None] = {}
    last = None
    for e in entries:
        n = _name(e)
        src, _ = _inbound(e)
        prev[n] = src if src is not None else last
        last = n
    return prev


# Keras layers that keep a tensor's axes as they are (what lies between a map and its Flatten)
_KEEPS_AXES = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                         "GaussianDropout", "AlphaDropout", "Activation", "ReLU", "LeakyReLU", "ELU", "PReLU",
                         "Softmax", "ActivityRegularization", "Identity", "BatchNormalization"})
_UNKNOWN = "?"


def _rank_of(cls: str) -> int | None:
    m = re.search(r"([123])D", cls)
    return int(m.group(1)) if m else None


def _map_letters(name, by_name: dict, prev: dict) -> str:
    """The axis letters (no batch) of the map layer ``name`` outputs, e.g. "HWC", "CHW", or "?":
    from the nearest layer upstream that states a data_format, through Permutes and layers that
    keep axes."""
    perms: list[list[int]] = []
    for _ in range(len(by_name) + 1):
        e = by_name.get(name)
        if e is None:
            return _UNKNOWN
        cls = e.get("class_name") if isinstance(e.get("class_name"), str) else ""
        cfg = e.get("config") if isinstance(e.get("config"), dict) else {}
        if cls == "Permute":
            dims = cfg.get("dims")
            if not isinstance(dims, list) or not all(isinstance(d, int) for d in dims):
                return _UNKNOWN
            perms.append(dims)
        elif isinstance(cfg.get("data_format"), str) and _rank_of(cls):
            n = _rank_of(cls)
            letters = ("C" + _SPATIAL[n]) if cfg["data_format"] == "channels_first" else (_SPATIAL[n] + "C")
            for dims in reversed(perms):  # the nearest Permute applies last
                if sorted(dims) != list(range(1, len(letters) + 1)):
                    return _UNKNOWN
                letters = "".join(letters[d - 1] for d in dims)
            return letters
        elif cls not in _KEEPS_AXES and cls != "InputLayer":
            return _UNKNOWN
        elif cls == "InputLayer":
            return _UNKNOWN
        name = prev.get(name)
    return _UNKNOWN


def keras_flattens(config, prefix: str = "") -> dict[str, KerasFlatten]:
    """Dense layers that read a flattened map, with the order Keras flattened it in: the map's
    axis order (from its layers' data_format, through any Permute), Flatten(channels_first)
    moving the channels last first, as Keras does. Dropout/Activation between them are seen
    through; a Reshape to one axis counts as a Flatten. The order is "?" where the config does
    not say. Nested models' layers are named ``outer/inner``."""
    out: dict[str, KerasFlatten] = {}
    entries = _entries(config)
    by_name = {_name(e): e for e in entries}
    prev = _previous(entries)
    for e in entries:
        n = _name(e)
        if e.get("class_name") in ("Functional", "Sequential", "Model"):
            out.update(keras_flattens(e, f"{prefix}{n}/"))
            continue
        if e.get("class_name") != "Dense":
            continue
        up = prev.get(n)
        for _ in range(len(entries)):
            f = by_name.get(up)
            if f is None or f.get("class_name") not in _KEEPS_AXES:
                break
            up = prev.get(up)
        f = by_name.get(up)
        fcls = f.get("class_name") if f is not None else None
        fcfg = (f.get("config") if f is not None and isinstance(f.get("config"), dict) else {})
        target = fcfg.get("target_shape")
        if fcls != "Flatten" and not (fcls == "Reshape" and isinstance(target, list) and len(target) == 1):
            continue
        _, shape = _inbound(f)
        dims = tuple(shape[1:]) if shape and all(isinstance(d, int) and d > 0 for d in shape[1:]) else None
        letters = _map_letters(prev.get(_name(f)), by_name, prev)
        if letters == _UNKNOWN or (dims is not None and len(dims) != len(letters)):
            if dims is not None and len(dims) < 2:
                continue  # flattening a flat tensor
            out[f"{prefix}{n}"] = KerasFlatten(_UNKNOWN, None)
            continue
        if fcls == "Flatten" and fcfg.get("data_format") == "channels_first" and len(letters) > 1:
            order = letters[1:] + letters[0]
            dims = (*dims[1:], dims[0]) if dims is not None else None
        else:
            order = letters
        out[f"{prefix}{n}"] = KerasFlatten(order, dims)
    return out


def keras_feeds(config, weighted, prefix: str = "") -> dict[str, str]:
    """Layer -> the nearest layer with weights upstream of it (first inputs), from the config's
    graph (Sequential: the layer before). ``weighted(name)``: whether a layer holds weights."""
    entries = _entries(config)
    prev = _previous(entries)
    out = {}
    for e in entries:
        n = _name(e)
        if not weighted(f"{prefix}{n}"):
            continue
        up = prev.get(n)
        for _ in range(len(entries)):
            if up is None or weighted(f"{prefix}{up}"):
                break
            up = prev.get(up)
        if up is not None:
            out[f"{prefix}{n}"] = f"{prefix}{up}"
    return out


def keras_input_shape(config) -> tuple[int, ...] | None:
    """The torch input shape (batch 1, channels first) of a Keras model with one image-like input:
    a channels_last input is moved to channels first; a channels_first one is kept."""
    entries = _entries(config)
    first = next((e for e in entries if isinstance(e.get("config"), dict)
                  and isinstance(e["config"].get("data_format"), str)), None)
    channels_first = first is not None and first["config"]["data_format"] == "channels_first"
    for e in entries:
        cfg = e.get("config") or {}
        if not isinstance(cfg, dict):
            continue
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if isinstance(shape, list) and len(shape) >= 3 and all(isinstance(d, int) and not isinstance(d, bool)
                                                                 and d > 0 for d in shape[1:]):
            if channels_first:
                return (1, *shape[1:])
            *space, c = shape[1:]
            return (1, c, *space)
        if shape is not None:
            return None
    return None


__all__ = ["trace", "Trace", "Flatten", "keras_flattens", "keras_input_shape"]


# ---------------------------------------------------------------------------------------------
# Who reads a layer's output channels (for coupled width changes)

PER_CHANNEL = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d")
READS_CHANNELS = ("Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "Linear")


def is_depthwise(m) -> bool:
    """A conv whose every channel is its own group, one filter each (channels pass through)."""
    g = getattr(m, "groups", 1)
    return type(m).__name__.startswith("Conv") and g > 1 and g == m.in_channels == m.out_channels


# Ops that keep each channel to itself (elementwise, spatial), so a width change passes through.
_CHANNELWISE_MODULES = {
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Sigmoid", "Tanh", "Hardswish",
    "Hardsigmoid", "Hardtanh", "Softplus", "Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "AlphaDropout", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
    "AdaptiveMaxPool3d", "Upsample", "ZeroPad1d", "ZeroPad2d", "ZeroPad3d", "ConstantPad1d", "ConstantPad2d",
    "ConstantPad3d", "ReflectionPad1d", "ReflectionPad2d", "ReflectionPad3d", "ReplicationPad1d",
    "ReplicationPad2d", "ReplicationPad3d"}
_CHANNELWISE_FUNCS = {
    "relu", "relu_", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "sigmoid", "tanh",
    "hardswish", "hardsigmoid", "hardtanh", "softplus", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "interpolate", "pad", "contiguous", "clone", "detach", "float", "double", "half",
    "to", "abs", "neg", "clamp", "clamp_", "square", "sqrt", "exp"}
_ELEMENTWISE_BINARY = {"add", "iadd", "add_", "mul", "imul", "mul_", "sub", "isub", "sub_", "truediv", "div",
                       "pow"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}


def _name_of(node) -> str:
    t = node.target
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def _arg(node, i: int, key: str, default=None):
    """Argument ``i`` (0 = the tensor for a method call) or keyword ``key`` of an fx node."""
    if key in node.kwargs:
        return node.kwargs[key]
    return node.args[i] if len(node.args) > i else default


def _flattens(node) -> bool:
    """``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)``, ``x.reshape(n, -1)``."""
    name = _name_of(node)
    if name == "flatten":
        return _arg(node, 1, "start_dim", 0) == 1 and _arg(node, 2, "end_dim", -1) == -1
    if name in ("view", "reshape"):
        dims = list(node.args[1:])
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = list(dims[0])
        return len(dims) == 2 and dims[1] == -1
    return False


def _reduces_space(node) -> bool | None:
    """For mean/sum/amax/amin: True if only spatial dims (all >= 2) are reduced, keepdim False
    (the result is (N, C)); False if keepdim (still a map); None if dim 1 or a negative dim may be
    among them (channels mixed, or unknown)."""
    dims = _arg(node, 1, "dim")
    if dims is None:
        return None
    dims = list(dims) if isinstance(dims, (tuple, list)) else [dims]
    if not dims or not all(isinstance(d, int) and d >= 2 for d in dims):
        return None
    return not _arg(node, 2, "keepdim", False)


def channel_readers(model, layer: str) -> tuple[list[str], str | None]:
    """The layers that read ``layer``'s output channels, from the fx graph, walked downstream
    through ops known to keep each channel to itself: activations, dropout, pooling, padding,
    elementwise arithmetic among tensors that all come from the layer, reductions over spatial dims,
    and a flatten to (N, C*H*W) (channel-major, so a Linear after it reads each channel as a block).
    Per-channel layers (BatchNorm, InstanceNorm, depthwise convs) pass the channels on and are
    listed; convs and Linears read them and end the walk. Returns ``(readers, None)``, or
    ``([], why)`` for anything else: another tensor joining (a residual add, a concat), an op that
    may mix or reorder channels (a permute, a softmax over channels, a reduction over them), a layer
    that mixes them (LayerNorm, GroupNorm), the model's output, or a model fx cannot trace."""
    import torch

    modules = dict(model.named_modules())
    gm, err = symbolic(model)
    if gm is None:
        return [], f"torch.fx could not trace the model ({err})"
    starts = [n for n in gm.graph.nodes if n.op == "call_module" and str(n.target) == layer]
    if not starts:
        return [], f"the model's forward pass never calls {layer}"
    flat0 = type(modules.get(layer)).__name__ == "Linear"   # a Linear's channels are features already
    found: list[str] = []
    state = {n: flat0 for n in starts}   # node -> whether it holds the channels flattened (N, C*k)
    declare = "; declare the coupled layers with then: if you know they stay apart"
    for user in gm.graph.nodes:          # topological order: every input is decided before its users
        if user in state or _shape_only(user):
            continue
        ins = _node_args(user)
        tracked = [a for a in ins if a in state]
        if not tracked:
            continue
        flat = state[tracked[0]]
        what = f"{_name_of(user)} ({user.name})"
        if user.op == "output":
            return [], f"{layer}'s channels reach the model's output (they are its outputs)"
        others = [a for a in ins if a not in state]
        if user.op == "call_module":
            m = modules.get(str(user.target))
            kind = type(m).__name__
            if kind in PER_CHANNEL or (m is not None and is_depthwise(m)):
                if is_depthwise(m) and flat:
                    return [], f"{user.target} reads a flattened map"
                if str(user.target) not in found:
                    found.append(str(user.target))
                state[user] = flat
            elif kind == "Linear" or (kind in READS_CHANNELS and not flat):
                if kind == "Linear" and not flat:
                    return [], f"{user.target} (Linear) reads {layer}'s map without a flatten: it mixes positions, " \
                               "not channels" + declare
                if str(user.target) not in found:
                    found.append(str(user.target))
            elif kind == "Flatten" and getattr(m, "start_dim", 0) == 1 and getattr(m, "end_dim", 0) == -1:
                state[user] = True
            elif kind in _CHANNELWISE_MODULES:
                state[user] = flat
            else:
                return [], f"{user.target} ({kind}) reads {layer}'s channels and is not a per-channel layer" + declare
            continue
        name = _name_of(user)
        if name in ("cat", "stack", "concat", "concatenate"):
            return [], f"{layer}'s channels meet others in a concat at {what}" + declare
        if others or (len(tracked) > 1 and name not in _ELEMENTWISE_BINARY) or \
                any(state[a] != flat for a in tracked):
            return [], f"{layer}'s channels meet another tensor at {what}: a residual add, a gate or a " \
                       "concat" + declare
        if name in _CHANNELWISE_FUNCS or name in _ELEMENTWISE_BINARY:
            state[user] = flat
        elif _flattens(user) and not flat:
            state[user] = True
        elif name in _REDUCTIONS and not flat and _reduces_space(user) is not None:
            state[user] = bool(_reduces_space(user))
        else:
            return [], f"{what} may mix or reorder {layer}'s channels (a permute, a view, a softmax or a " \
                       "reduction over them)" + declare
    return found, None


def _node_args(node) -> list:
    """The tensors among ``node``'s arguments: fx nodes, less shape queries (``x.size(0)``, ...)."""
    import torch

    out: list = []
    torch.fx.map_arg((node.args, node.kwargs), out.append)
    return [a for a in out if not _shape_only(a)]


def _shape_only(n, depth: int = 0) -> bool:
    """Whether fx node ``n`` is a size, not a tensor: ``x.size()``, ``x.shape``, ``x.dim()`` and
    arithmetic or indexing on them."""
    if depth > 16:
        return False
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    if n.op == "call_method" and name in ("size", "dim", "numel"):
        return True
    if n.op == "call_function" and name == "getattr" and len(n.args) > 1 and n.args[1] in ("shape", "ndim"):
        return True
    if n.op == "call_function" and name in ("getitem", "mul", "add", "sub", "floordiv", "truediv"):
        import torch

        args: list = []
        torch.fx.map_arg(n.args, args.append)
        return bool(args) and all(_shape_only(a, depth + 1) for a in args)
    return False
