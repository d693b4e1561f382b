"""Target-driven matching: for each layer of the target model, in execution order, the source
tensors that are an encoding of it.

A source layer (tensors grouped by their layer path) is read every way the layer table allows
(``layer_table.keras_readings`` for Keras/TF variables, ``torch_readings`` for torch state dicts):
a rank-4 kernel with no class may be a Conv2D, a DepthwiseConv2D or a Conv2DTranspose; the target
decides. A reading becomes one or more torch modules (SeparableConv2D: two). Pairing, in order:

1. same names: a target layer whose tensors are all in the source under its own names and shapes;
1c. (Flax files, whose layers are in sorted name order) the same module path, if compatible;
2. in order: each target layer takes the first compatible source layer after the last one taken
   (compatible = same torch class and groups, and the same shapes after conversion), else the
   first compatible one anywhere (parallel branches traced in another order); a source whose
   layer order is lost (a TF checkpoint's sorted names) is taken in natural name order;
3. near pairs: a target layer and a source layer of the same class and tensor names whose sizes
   differ (channels, classes): paired in order, the difference becomes a reviewed cause;
4. what is left is reported: source tensors nothing took, target layers nothing fills.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import layer_table as T
from . import layers as L
from .layers import split_key
from .tensors import TensorMeta

Shape = tuple[int, ...]
natural_key = L.natural_key
_rnn_local = T.rnn_rename


@dataclass
class SourceLayer:
    name: str
    cls: str | None
    cfg: dict
    keys: dict[str, str]                 # stored variable name -> full key
    shapes: dict[str, Shape]
    position: int

    @property
    def torch_style(self) -> bool:
        return L.torch_named(self.keys)


@dataclass
class Reading:
    src: SourceLayer
    units: list[T.Unit]
    naming: dict[str, str]               # stored var -> the form's var name
    form: T.KerasLayer | None            # None: a torch layer read as itself

    @property
    def what(self) -> str:
        return self.form.classes[0] if self.form is not None else self.units[0].kind

    def key_of(self, var: str) -> str:
        """The full source key of the form's variable ``var``."""
        for stored, v in self.naming.items():
            if v == var:
                return self.src.keys[stored]
        raise KeyError(var)


@dataclass
class TargetUnit:
    module: str
    kind: str
    attrs: dict
    keys: dict[str, str]                 # canonical local name (RNN: _l0) -> full key
    shapes: dict[str, Shape]             # canonical local name -> shape
    rnn_layer: int | None
    index: int


@dataclass
class Pair:
    targets: list[TargetUnit]
    reading: Reading
    how: str                              # same names | in order | out of order | only pair left | near
    differs: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # (target key, converted, wanted)
    by_name: bool = False                 # a near pair found under the target's own names


@dataclass
class Matching:
    pairs: list[Pair]
    unplaced: list[str]                   # source keys nothing took
    missing: list[TargetUnit]             # target layers nothing fills
    ordered: bool                         # the source's layer order was used
    notes: list[str] = field(default_factory=list)
    unplaced_layers: list[SourceLayer] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------


def source_layers(metas: dict[str, TensorMeta], classes: dict[str, str], configs: dict[str, dict],
                  layer_order: list[str] | None = None) -> tuple[list[SourceLayer], bool]:
    """The source's layers, and whether their order is the model's (False for sorted names, unless
    ``layer_order`` (a Keras config's) restores it)."""
    groups: dict[str, dict[str, str]] = {}
    for key in metas:
        layer, var = split_key(key)
        groups.setdefault(layer, {})[var] = key
    names = list(groups)
    ordered = not (len(names) > 2 and names == sorted(names))
    if not ordered:
        names.sort(key=natural_key)
        rank = {n: i for i, n in enumerate(layer_order or [])}
        if rank and sum(n in rank for n in names) >= len(names) // 2 + 1:
            names.sort(key=lambda n: rank.get(n, len(rank)))
            ordered = True
    out = []
    for i, n in enumerate(names):
        keys = groups[n]
        out.append(SourceLayer(n, classes.get(n), configs.get(n) or {}, keys,
                               {v: tuple(metas[k].shape) for v, k in keys.items()}, i))
    return out, ordered


_UNNAMED = re.compile(r"^(arr_)?\d+$")


def segment_unnamed(metas: dict[str, TensorMeta], tunits: list["TargetUnit"]) -> dict[str, str] | None:
    """Arrays with no names (``numpy.savez(*model.get_weights())``: ``arr_0``, ``arr_1``, ...) cut into
    layers by what the target's layers are, in order: the k arrays from position i are one layer if
    some reading of them (variables by save order) gives the next target layer(s) exactly. Returns
    {array key: "layer<N>/<index in layer>"}, or None if no cut consumes every array and layer."""
    keys = sorted(metas, key=natural_key)
    if not keys or not all(_UNNAMED.match(k) for k in keys):
        return None
    shapes = [tuple(metas[k].shape) for k in keys]
    memo: dict[tuple[int, int], list | None] = {}

    def cut(i: int, u: int):
        if (i, u) in memo:
            return memo[(i, u)]
        memo[(i, u)] = None
        if i == len(keys) and u == len(tunits):
            memo[(i, u)] = []
            return []
        for k in range(1, 5):
            if i + k > len(keys):
                break
            local = {str(j): shapes[i + j] for j in range(k)}
            for _form, _naming, units in T.keras_readings(local, None):
                n = len(units)
                ts = tunits[u:u + n]
                if len(ts) == n and all(compatible(x, t) for x, t in zip(units, ts)):
                    rest = cut(i + k, u + n)
                    if rest is not None:
                        memo[(i, u)] = [k, *rest]
                        return memo[(i, u)]
        return None

    sizes = cut(0, 0)
    if sizes is None:
        return None
    out, i = {}, 0
    for n, k in enumerate(sizes):
        for j in range(k):
            out[keys[i + j]] = f"layer{n}/{j}"
        i += k
    return out


def readings(src: SourceLayer, forms: list[T.KerasLayer] | None = None) -> list[Reading]:
    """``forms``: what a layer of no class may be (Keras' by default; ``T.FLAX`` for a Flax file)."""
    out = []
    if src.torch_style and src.cls is None:
        for u in T.torch_readings(src.shapes):
            naming = {v: v for v in src.keys}
            out.append(Reading(src, [u], naming, None))
        if any(u.rnn_layer is not None for r in out for u in r.units):  # one reading, a unit per layer
            kinds = {}
            for r in out:
                kinds.setdefault(r.units[0].kind, []).append(r.units[0])
            out = [Reading(src, us, {v: v for v in src.keys}, None) for us in kinds.values()]
        if not out:
            out.append(Reading(src, [T.opaque(src.shapes)], {v: v for v in src.keys}, None))
        return out
    for form, naming, units in T.keras_readings(src.shapes, src.cls, src.cfg, forms):
        out.append(Reading(src, units, naming, form))
    if not out and src.cls is None and not any("/" in k for k in src.keys.values()):
        # torch parameters of no layer class (a ViT's cls_token and pos_embed): taken as they are
        out.append(Reading(src, [T.opaque(src.shapes)], {v: v for v in src.keys}, None))
    return out


def target_units(target, order: list[str]) -> list[TargetUnit]:
    out: list[TargetUnit] = []
    rank = {n: i for i, n in enumerate(order)}
    layers = sorted(target.layers.values(), key=lambda ly: rank.get(ly.name, len(rank)))
    for ly in layers:
        full = {v: (k if not ly.name else f"{ly.name}.{v}") for v, k in ((v, v) for v in ly.tensors)}
        shapes = {v: tuple(m.shape) for v, m in ly.tensors.items()}
        if ly.kind in T.RNN_GATES and ly.kind in T.TORCH and "weight_ih_l0" in shapes:
            layers_n = sorted({x for v in shapes if (x := T.rnn_layer_of(v)) is not None})
            if any(v.endswith("_reverse") for v in shapes):
                layers_n = []
            for layer in layers_n:
                local = {v for v in shapes if re.search(rf"_l{layer}$", v)}
                out.append(TargetUnit(ly.name, ly.kind, ly.attrs,
                                      {_rnn_local(v, layer, 0): full[v] for v in local},
                                      {_rnn_local(v, layer, 0): shapes[v] for v in local}, layer, len(out)))
            if layers_n:
                continue
        out.append(TargetUnit(ly.name, ly.kind, ly.attrs, full, shapes, None, len(out)))
    return out


def _canon(u: T.Unit) -> dict[str, Shape]:
    return {_rnn_local(n, u.rnn_layer, 0): s for n, s in u.shapes().items()}


def compatible(u: T.Unit, t: TargetUnit, near: bool = False) -> bool:
    family = (lambda k: k[:-2] if k.startswith(("BatchNorm", "InstanceNorm")) else k)
    if family(u.kind) != family(t.kind) and not (u.kind == "?" and t.kind not in T.TORCH):
        return False
    us = _canon(u)
    if not near:
        if us != t.shapes:
            return False
        g_t, g_u = t.attrs.get("groups"), u.attrs.get("groups")
        return g_t is None or g_u is None or g_t == g_u
    return set(us) == set(t.shapes) and all(len(us[n]) == len(t.shapes[n]) for n in us) and us != t.shapes


def match(metas: dict[str, TensorMeta], target, order: list[str], classes: dict[str, str] | None = None,
          configs: dict[str, dict] | None = None, feeds: tuple[dict, dict] | None = None,
          layer_order: list[str] | None = None, forms: list[T.KerasLayer] | None = None,
          by_module: bool = False) -> Matching:
    """``feeds``: (target layer -> the layer it reads, source layer -> the layer it reads), from the
    traced graph and the source's config: among equally good candidates, the one read from where
    the target layer reads is taken (two BatchNorms of the same size after parallel convs).
    ``forms``: what a source layer of no class may be (``readings``). ``by_module``: pair a target
    layer first with the source layer of its module path (``a.b`` <- ``a/b``), if compatible."""
    tunits = target_units(target, order)
    cut = segment_unnamed(metas, tunits)
    if cut is not None:  # unnamed arrays: read under the layer they were cut into, keys kept
        srcs, ordered = source_layers({cut[k]: m for k, m in metas.items()}, {}, {})
        back = {v: k for k, v in cut.items()}
        for s in srcs:
            s.keys = {v: back[k] for v, k in s.keys.items()}
    else:
        srcs, ordered = source_layers(metas, classes or {}, configs or {}, layer_order)
    pairs: list[Pair] = []
    taken_keys: set[str] = set()
    # 1. same names and shapes, unless the file's layer class stores them in another layout (an
    # ONNX MatMul's (in, out) weight under the Linear's own name: square, it would pass unchanged)
    converted = {src.name for src in srcs if src.cls and _stored_converted(src)}
    left_t = []
    for t in tunits:
        if t.keys and split_key(next(iter(t.keys.values())))[0] in converted:
            left_t.append(t)
        elif all(metas.get(k) is not None and tuple(metas[k].shape) == t.shapes[v] for v, k in t.keys.items()):
            layer = split_key(next(iter(t.keys.values())))[0]
            sl = SourceLayer(layer, None, {}, {split_key(k)[1]: k for k in t.keys.values()},
                             {split_key(k)[1]: tuple(metas[k].shape) for k in t.keys.values()}, -1)
            u = T.Unit(t.kind if t.kind in T.TORCH else "?", {} if t.kind in T.TORCH else {"shapes": sl.shapes},
                       {v: T.Convert(split_key(k)[1]) for v, k in t.keys.items()}, rnn_layer=t.rnn_layer)
            pairs.append(Pair([t], Reading(sl, [u], {n: n for n in sl.keys}, None), "same names"))
            taken_keys.update(t.keys.values())
        else:
            left_t.append(t)
    # sources minus what step 1 took
    pool: list[tuple[SourceLayer, list[Reading]]] = []
    for s in srcs:
        keys = {v: k for v, k in s.keys.items() if k not in taken_keys}
        if not keys:
            continue
        if len(keys) != len(s.keys):
            s = SourceLayer(s.name, s.cls, s.cfg, keys, {v: s.shapes[v] for v in keys}, s.position)
        pool.append((s, readings(s, forms)))
    used: set[int] = set()
    matched_t: set[int] = set()
    t_feed, s_feed = feeds or ({}, {})
    paired: dict[str, str] = {p.targets[0].module: p.reading.src.name for p in pairs}

    # 1b. same names, other sizes: the layer is in the checkpoint under the target's own names
    by_name = {s.name: j for j, (s, _) in enumerate(pool)}
    for t in left_t:
        if t.rnn_layer is not None or not t.keys:
            continue
        j = by_name.get(split_key(next(iter(t.keys.values())))[0])
        if j is None or j in used or set(pool[j][0].keys.values()) != set(t.keys.values()):
            continue
        r = next((r for r in pool[j][1] if len(r.units) == 1 and compatible(r.units[0], t, near=True)), None)
        if r is not None:
            pairs.append(Pair([t], r, "near", by_name=True))
            used.add(j)
            matched_t.add(t.index)
            paired[t.module] = r.src.name

    # 1c. (Flax) the same module path, other variable names and layouts: a Flax file's modules are
    # in sorted name order, not the order they run, so its names are the better guide
    if by_module:
        for t in left_t:
            j = by_name.get(t.module.replace(".", "/"))
            if t.rnn_layer is not None or t.index in matched_t or j is None or j in used:
                continue
            r = next((r for r in pool[j][1] if len(r.units) == 1 and compatible(r.units[0], t)), None)
            if r is not None:
                pairs.append(Pair([t], r, "by name"))
                used.add(j)
                matched_t.add(t.index)
                paired[t.module] = r.src.name

    def prefer(t: TargetUnit):
        up = paired.get(t_feed.get(t.module, ""))
        return (lambda s: s_feed.get(s.name) == up) if up is not None and s_feed else None
    # 2. in order
    last = -1
    i = 0
    while i < len(left_t):
        t = left_t[i]
        if t.index in matched_t:
            i += 1
            continue
        found = _find(left_t, i, pool, used, last, ordered, near=False, prefer=prefer(t))
        if found is not None:
            j, r, n_units, how = found
            ts = left_t[i:i + n_units]
            pairs.append(Pair(ts, r, how))
            for x in ts:
                paired[x.module] = r.src.name
            used.add(j)
            matched_t.update(x.index for x in ts)
            last = max(last, j) if how == "in order" else last
            i += n_units
            continue
        i += 1
    # 3. near pairs: same class and tensor names, other sizes
    for i, t in enumerate(left_t):
        if t.index in matched_t:
            continue
        found = _find(left_t, i, pool, used, -1, True, near=True)
        if found is None:
            continue
        j, r, n_units, _ = found
        pairs.append(Pair([t], r, "near"))
        used.add(j)
        matched_t.add(t.index)
    unplaced = [k for j, (s, _) in enumerate(pool) if j not in used for k in s.keys.values()]
    missing = [t for t in left_t if t.index not in matched_t]
    pairs.sort(key=lambda p: p.targets[0].index)
    for p in pairs:
        if p.how == "near":
            _differences(p)
    notes = _siblings(pairs, t_feed)
    return Matching(pairs, unplaced, missing, ordered, notes,
                    [s for j, (s, _) in enumerate(pool) if j not in used])


def _stored_converted(src: SourceLayer) -> bool:
    """Whether every reading of a source layer under its class changes some stored tensor's values
    (a layout, a row, a gate order): then its tensors are not the target's as they are."""
    rs = readings(src)
    return bool(rs) and all(any(isinstance(c, T.Convert) and c.converts for u in r.units for c in u.tensors.values())
                            for r in rs)


def _siblings(pairs: list[Pair], t_feed: dict[str, str]) -> list[str]:
    """Target layers that read the same input and have the same shapes (an Inception's parallel
    1x1 convs, attention's q/k/v): neither shapes nor the graph tell them apart, so their pairing
    rests on the checkpoint's order alone. Said, never silently trusted."""
    groups: dict[tuple, list[Pair]] = {}
    for p in pairs:
        t = p.targets[0]
        if p.how == "same names" or t.module not in t_feed:
            continue
        key = (t_feed[t.module], t.kind, tuple(sorted(t.shapes.items())))
        groups.setdefault(key, []).append(p)
    out = []
    for ps in groups.values():
        if len(ps) > 1:
            pairs_txt = ", ".join(f"{p.targets[0].module} <- {p.reading.src.name}" for p in ps)
            out.append(f"review: {', '.join(p.targets[0].module for p in ps)} read the same input and have the "
                       f"same shapes: paired by the checkpoint's order alone ({pairs_txt}); check them")
    return out


def _find(left_t: list[TargetUnit], i: int, pool, used: set[int], last: int, ordered: bool, near: bool,
          prefer=None):
    """The source layer (index in pool, reading, units consumed, how) for target unit i."""
    def fits(r: Reading) -> int:
        n = len(r.units)
        ts = left_t[i:i + n]
        if len(ts) != n:
            return 0
        if near:
            return 1 if n == 1 and compatible(r.units[0], ts[0], near=True) else 0
        return n if all(compatible(u, t) for u, t in zip(r.units, ts)) else 0

    candidates = []
    for j, (s, rs) in enumerate(pool):
        if j in used:
            continue
        for r in rs:
            n = fits(r)
            if n:
                candidates.append((j, r, n))
                break
    if not candidates:
        return None
    if prefer is not None and len(candidates) > 1:
        fed = [c for c in candidates if prefer(pool[c[0]][0])]
        if len(fed) == 1:
            j, r, n = fed[0]
            return j, r, n, "by the graph"
    if near or not ordered:
        j, r, n = candidates[0]
        return j, r, n, ("near" if near else "in name order")
    after = [c for c in candidates if c[0] > last]
    if after:
        j, r, n = after[0]
        return j, r, n, "in order"
    j, r, n = candidates[0]
    return j, r, n, "out of order"


def _differences(p: Pair) -> None:
    t = p.targets[0]
    u = p.reading.units[0]
    got = _canon(u)
    for v, want in t.shapes.items():
        if got.get(v) != want:
            p.differs.append((t.keys[v], got[v], want))


__all__ = ["match", "Matching", "Pair", "Reading", "TargetUnit", "SourceLayer", "natural_key"]
