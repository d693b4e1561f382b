"""Why does a checkpoint not fit? Causes across all mismatches together, and the rule that fixes
each (or an honest "no rule can"). Used by ``explain`` (from a pasted error) and ``diff``.

Inputs are shapes by name: the checkpoint's and the model's, with ``None`` where a shape is
unknown (a pasted error lists missing/unexpected keys without shapes).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .errors import one_line
from . import layers as L
from . import layouts
from .tensors import TensorMeta, fmt_shape

Shape = tuple[int, ...]


@dataclass
class Cause:
    kind: str                      # prefix | layout | num_classes | in_channels | channels | variant
    message: str
    rules: list[dict] = field(default_factory=list)   # YAML-ready rules that fix it
    review: bool = False           # a rule that changes values: a person should look at it
    fixable: bool = True
    names: list[str] = field(default_factory=list)    # the keys it explains

    def to_json(self) -> dict:
        return {"kind": self.kind, "message": self.message, "rules": self.rules, "review": self.review,
                "fixable": self.fixable, "names": self.names}


def anchored(names) -> str:
    """One regex matching exactly these names (each escaped, anchored)."""
    import re

    names = list(dict.fromkeys(names))
    if len(names) == 1:
        return f"^{re.escape(names[0])}$"
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def prefix_cause(ckpt_names, model_names) -> Cause | None:
    """Missing and unexpected keys that differ by a prefix (module., _orig_mod., model., ...)."""
    ckpt, model = set(ckpt_names), set(model_names)
    unexpected, missing = ckpt - model, model - ckpt
    for strip, src, dst in ((True, unexpected, model), (False, missing, ckpt)):
        votes: Counter[str] = Counter()
        for u in src:
            for i, ch in enumerate(u):
                if ch in "./" and u[i + 1:] in dst:
                    votes[u[:i + 1]] += 1
        if votes:
            p, n = votes.most_common(1)[0]
            if n >= max(1, len(src) // 2):
                names = sorted(u for u in src if u.startswith(p))
                if strip:
                    return Cause("prefix", f"the checkpoint's keys carry an extra prefix {p!r} ({n} keys)"
                                 + _prefix_origin(p), [{"strip_prefix": p}], names=names)
                return Cause("prefix", f"the model's keys carry a prefix {p!r} the checkpoint lacks ({n} keys)",
                             [{"add_prefix": p}], names=names)
    return None


def _prefix_origin(p: str) -> str:
    return {"module.": ": saved from nn.DataParallel/DistributedDataParallel",
            "_orig_mod.": ": saved from a torch.compile'd model",
            "model.": ": a LightningModule's self.model?"}.get(p, "")


def layout_cause(name: str, ckpt: Shape, model: Shape) -> Cause | None:
    """The checkpoint's shape is a TF/Keras layout permutation of the model's."""
    if sorted(ckpt) != sorted(model) or ckpt == model:
        return None
    fits = [lay for lay in layouts.TF_LAYOUTS
            if len(layouts.parse(lay)) == len(ckpt) and
            tuple(ckpt[i] for i in layouts.parse(lay)) == tuple(model)]
    if not fits:
        return Cause("layout", f"{name}: {fmt_shape(ckpt)} holds the model's {fmt_shape(model)} sizes in another "
                     "order, but no TensorFlow layout maps one to the other", fixable=False)
    perms = {tuple(p) for p in _all_perms(ckpt, model)}
    lay = fits[0]
    if len(perms) > 1:
        return Cause("layout", f"{name}: {fmt_shape(ckpt)} looks like the TensorFlow layout {lay.split('->')[0]} of "
                     f"{fmt_shape(model)}, but equal sizes make the permutation ambiguous; check it",
                     [{"transpose": {"keys": anchored([name]), "layout": lay}}], review=True, names=[name])
    return Cause("layout", f"{name}: {fmt_shape(ckpt)} is the TensorFlow layout {lay.split('->')[0]} of the model's "
                 f"{fmt_shape(model)} ({lay})", [{"transpose": {"keys": anchored([name]), "layout": lay}}],
                 names=[name])


def _all_perms(a: Shape, b: Shape):
    from itertools import permutations

    return [p for p in permutations(range(len(a))) if tuple(a[i] for i in p) == tuple(b)]


def _layer(name: str, shapes: dict[str, Shape | None]) -> L.Layer:
    layer = L.layer_of(name)
    local = {L.split_key(n)[1]: TensorMeta(s) for n, s in shapes.items() if s is not None and L.layer_of(n) == layer}
    return L.infer_layer(layer, local)


# Kinds of cause, most fundamental first (a Cause's ``kind`` is one of these)
PREFIX, LAYOUT, IN_CHANNELS, NUM_CLASSES, WIDTH, VARIANT = ("prefix", "layout", "in_channels", "num_classes",
                                                           "channels", "variant")


def diagnose(ckpt: dict[str, Shape | None], model: dict[str, Shape | None],
             order: list[str] | None = None) -> list[Cause]:
    """All causes at once, most fundamental first: a prefix, layouts, then each layer whose sizes
    differ gets its own cause (input channels of the first layer, classes of the last, a width
    elsewhere: pad/slice rules marked review); only what no rule can change (kernel sizes, ranks,
    a layer of another kind) is called a different variant. ``order``: the model's key order."""
    causes: list[Cause] = []
    p = prefix_cause(ckpt, model)
    if p:
        causes.append(p)
        strip, fix = next(iter(p.rules[0].items()))
        if strip == "strip_prefix":
            ckpt = {(n[len(fix):] if n.startswith(fix) else n): s for n, s in ckpt.items()}
        else:
            ckpt = {fix + n: s for n, s in ckpt.items()}
    mism = {n: (ckpt[n], model[n]) for n in ckpt if n in model and ckpt[n] is not None and model[n] is not None
            and ckpt[n] != model[n]}
    rest = {}
    for n, (a, b) in mism.items():
        c = layout_cause(n, a, b)
        if c and c.fixable:
            causes.append(c)
        else:
            rest[n] = (a, b)
    if not rest:
        return causes
    by_layer: dict[str, list[str]] = {}
    for n in rest:
        by_layer.setdefault(L.layer_of(n), []).append(n)
    order = order or list(model)
    layer_order = list(dict.fromkeys(L.layer_of(n) for n in order))
    first = layer_order[0] if layer_order else None
    last = layer_order[-1] if layer_order else None
    unfixable = []
    for layer, names in by_layer.items():
        have = {n: ckpt[n] for n in ckpt if L.layer_of(n) == layer and ckpt[n] is not None}
        want = {n: model[n] for n in model if L.layer_of(n) == layer and model[n] is not None}
        c = size_cause(layer, have, want, layer == first, layer == last)
        if c.fixable:
            causes.append(c)
        else:
            unfixable.append(c)
    if unfixable:
        names = sorted(n for c in unfixable for n in c.names)
        what = "; ".join(c.message for c in unfixable[:3]) + ("; ..." if len(unfixable) > 3 else "")
        causes.append(Cause(VARIANT, f"{len(unfixable)} layer(s) cannot be resized to fit ({what}): a different "
                            "model variant there. No rule can make these weights compute the same thing; load the "
                            "checkpoint into the variant it was trained as, or re-train/distil", fixable=False,
                            names=names))
    return causes


def size_cause(layer: str, have: dict[str, Shape], want: dict[str, Shape], is_first: bool, is_last: bool) -> Cause:
    """The cause of one layer's size differences (``have``/``want``: its tensors' shapes in the
    checkpoint, after any layout rules, and in the model), with the pad/slice rules that fix it:
    one per axis and size change, over every tensor it applies to."""
    names = [n for n in have if n in want and have[n] != want[n]]
    rest = {n: (have[n], want[n]) for n in names}
    a = _layer(names[0], dict(have))
    b = _layer(names[0], dict(want))
    ds = L.differences(a, b)
    attrs = {d.attr for d in ds}
    where = layer or "the layer"
    shapes_ok = all(len(rest[n][0]) == len(rest[n][1]) for n in names)
    if not shapes_ok or "kernel_size" in attrs or "groups" in attrs:
        why = "; ".join(map(str, ds)) or "; ".join(f"{n} {fmt_shape(rest[n][0])} vs {fmt_shape(rest[n][1])}"
                                                   for n in names)
        return Cause(VARIANT, f"{where}: {why}", fixable=False, names=sorted(names))
    if attrs and attrs <= L.IN_ATTRS and is_first:
        d = next(d for d in ds if d.attr in L.IN_ATTRS)
        msg = f"a different number of input channels ({d.have} -> {d.want}) in the first layer {where}"
        kind = IN_CHANNELS
    elif attrs and attrs <= L.OUT_ATTRS and is_last and ("out_features" in attrs or "num_embeddings" in attrs):
        d = next(d for d in ds if d.attr in L.OUT_ATTRS)
        msg = f"a different number of classes ({d.have} -> {d.want}) in the last layer {where}"
        kind = NUM_CLASSES
    else:
        msg = f"{where}: " + ("; ".join(map(str, ds)) if ds else
                              "; ".join(f"{n} {fmt_shape(rest[n][0])} -> {fmt_shape(rest[n][1])}" for n in names))
        kind = WIDTH
    groups: dict[tuple[int, int, int], list[str]] = {}
    for n in names:
        have, want = rest[n]
        for axis, (x, y) in enumerate(zip(have, want)):
            if x != y:
                groups.setdefault((axis, x, y), []).append(n)
    rules = [_resize_rule(layer, ns, axis, x, y) for (axis, x, y), ns in groups.items()]
    grows = any(y > x for _, x, y in groups)
    shrinks = any(y < x for _, x, y in groups)
    keep = []
    if grows:
        keep.append("padding with zeros keeps the old values; the new ones start at zero")
    if shrinks:
        keep.append("slicing keeps the first entries")
    return Cause(kind, msg + ("; " + "; ".join(keep) if keep else ""), rules, review=True, names=sorted(names))


def _resize_rule(layer: str, names: list[str], axis: int, have: int, want: int) -> dict:
    keys = anchored(names)
    if want > have:
        return {"pad": {"keys": keys, "axis": axis, "size": want, "fill": "zeros"}}
    return {"slice": {"keys": keys, "axis": axis, "stop": want}}


def rules_yaml(causes: list[Cause]) -> str:
    """The fixing rules as a commented YAML snippet."""
    lines = ["rules:"]
    for c in causes:
        if not c.rules:
            continue
        lines.append(f"  # {'review: ' if c.review else ''}{one_line(c.message)}")
        for r in c.rules:
            for op, body in r.items():
                lines.append(rule_line(op, body))
    return "\n".join(lines) + "\n" if len(lines) > 1 else ""


def rule_line(op: str, body) -> str:
    """``  - op: {field: value, ...}``, one line whatever the values hold (a name with a newline
    is written double-quoted, ``"a\\nb"``, where YAML would otherwise fold it over lines)."""
    import yaml

    text = yaml.safe_dump(body, default_flow_style=True, sort_keys=False, width=float("inf")).strip()
    if "\n" in text.removesuffix("...").strip():
        text = yaml.safe_dump(body, default_flow_style=True, sort_keys=False, width=float("inf"),
                              default_style='"').strip()
    return f"  - {op}: {text.removesuffix('...').strip()}"
