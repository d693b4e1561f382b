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


def _anchored(names) -> str:
    import re

    names = list(names)
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
                     [{"transpose": {"keys": _anchored([name]), "layout": lay}}], review=True, names=[name])
    return Cause("layout", f"{name}: {fmt_shape(ckpt)} is the TensorFlow layout {lay.split('->')[0]} of the model's "
                 f"{fmt_shape(model)} ({lay})", [{"transpose": {"keys": _anchored([name]), "layout": lay}}],
                 names=[name])


def _all_perms(a: Shape, b: Shape):
    from itertools import permutations

    return [p for p in permutations(range(len(a))) if tuple(a[i] for i in p) == tuple(b)]


def _layer(name: str, shapes: dict[str, Shape | None]) -> L.Layer:
    layer = L.layer_of(name)
    local = {L.split_key(n)[1]: TensorMeta(s) for n, s in shapes.items() if s is not None and L.layer_of(n) == layer}
    return L.infer_layer(layer, local)


def diagnose(ckpt: dict[str, Shape | None], model: dict[str, Shape | None],
             order: list[str] | None = None) -> list[Cause]:
    """All causes, most fundamental first. ``order``: the model's key order (first/last layers)."""
    causes: list[Cause] = []
    p = prefix_cause(ckpt, model)
    if p:
        causes.append(p)
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
    # read each mismatched layer on both sides
    by_layer: dict[str, list[str]] = {}
    for n in rest:
        by_layer.setdefault(L.layer_of(n), []).append(n)
    order = order or list(model)
    layer_order = list(dict.fromkeys(L.layer_of(n) for n in order))
    diffs = {}
    for layer, names in by_layer.items():
        a = _layer(names[0], {n: ckpt.get(n) for n in ckpt})
        b = _layer(names[0], {n: model.get(n) for n in model})
        diffs[layer] = (a, b, L.differences(a, b), names)
    kinds = {layer: {d.split(" ")[0] for d in ds} for layer, (_, _, ds, _) in diffs.items()}
    last = layer_order[-1] if layer_order else None
    if len(diffs) == 1:
        layer, (a, b, ds, names) = next(iter(diffs.items()))
        k = kinds[layer]
        if k <= {"out_features", "out_channels", "num_embeddings"} and k:
            dim = "out_features" if "out_features" in k else ("out_channels" if "out_channels" in k else "num_embeddings")
            have, want = a.attrs[dim], b.attrs[dim]
            kind = "num_classes" if layer == last and dim == "out_features" else "channels"
            what = (f"a different number of classes ({have} -> {want}) in the last layer {layer}"
                    if kind == "num_classes" else f"{layer or 'the layer'}: {'; '.join(ds)}")
            what += ("; padding with zeros keeps the old outputs in the first "
                     f"{have}" if want > have else f"; slicing keeps the first {want}")
            causes.append(Cause(kind, what, [_resize_rule(layer, names, 0, have, want)], review=True, names=names))
            return causes
        if k == {"in_channels"} or k == {"in_features"}:
            dim = "in_channels" if "in_channels" in k else "in_features"
            have, want = a.attrs[dim], b.attrs[dim]
            first = layer == (layer_order[0] if layer_order else layer)
            msg = (f"a different number of input channels ({have} -> {want}) in the first layer {layer}" if first
                   else f"{layer or 'the layer'}: {'; '.join(ds)}")
            wnames = [n for n in names if L.split_key(n)[1] in ("weight", "kernel")]
            causes.append(Cause("in_channels" if first else "channels", msg,
                                [_resize_rule(layer, wnames or names, 1, have, want)], review=True, names=names))
            return causes
    # several layers, or kernel sizes: a different variant of the model
    ks = [d for (_, _, ds, _) in diffs.values() for d in ds]
    factors = {round(b.attrs.get(k, 0) / a.attrs[k], 3) for (a, b, ds, _) in diffs.values()
               for k in ("out_channels", "out_features", "in_channels", "in_features")
               if a.attrs.get(k) and b.attrs.get(k) and a.attrs[k] != b.attrs[k]}
    why = "kernel sizes differ" if any(d.startswith("kernel_size") for d in ks) else \
        (f"widths differ by a consistent factor ({', '.join(map(str, sorted(factors)))})" if len(factors) == 1
         else "several layers differ")
    causes.append(Cause("variant", f"{len(diffs)} layer(s) differ ({why}): this is a different model variant. "
                        "No rule can make these weights compute the same thing; load the checkpoint into the "
                        "variant it was trained as, or re-train/distil", fixable=False, names=sorted(rest)))
    return causes


def _resize_rule(layer: str, names: list[str], axis: int, have: int, want: int) -> dict:
    keys = _anchored(names)
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
