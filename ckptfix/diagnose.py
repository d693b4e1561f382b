"""Why does a checkpoint not fit? Causes across all mismatches together, and the rule that fixes
each (or an honest "no rule can"). Used by ``explain`` (from a pasted error) and ``diff``.

Inputs are shapes by name: the checkpoint's and the model's, with ``None`` where a shape is
unknown (a pasted error lists missing/unexpected keys without shapes).
"""

from __future__ import annotations

import re
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
PREFIX, LAYOUT, POS_EMBED, PATCH, IN_CHANNELS, NUM_CLASSES, WIDTH, VARIANT = (
    "prefix", "layout", "pos_embed", "patch_size", "in_channels", "num_classes", "channels", "variant")

POS_NAMES = re.compile(r"(^|[._/])(pos_embed|pos_embedding|position_embeddings?|positional_embedding)"
                       r"(\.weight)?$")
# class heads by name (timm, torchvision, HF): wherever they sit, or a top-level fc (ResNet's)
HEADS = re.compile(r"(^|\.)(head|head_dist|classifier|last_linear|logits)(\.fc)?$|^fc$")
PREFIX_TOKENS = re.compile(r"(^|[._/])(cls_token|dist_token|reg_token|register_tokens)$")
REGISTERS = re.compile(r"(^|[._/])(reg_token|register_tokens)$")


def diagnose(ckpt: dict[str, Shape | None], model: dict[str, Shape | None],
             order: list[str] | None = None, *, partial: bool = False,
             groups: dict[str, int] | None = None) -> list[Cause]:
    """All causes at once, most fundamental first: a prefix, layouts, then each layer whose sizes
    differ gets its own cause (input channels of the first layer, classes of the last, a width
    elsewhere: pad/slice rules marked review); only what no rule can change (kernel sizes, ranks,
    a layer of another kind) is called a different variant. ``order``: the model's key order
    (execution order where known). ``partial``: the names are only some of the model's (a pasted
    error lists the mismatched ones): the first of them is taken for the model's input layer only
    if it reads at most 4 channels, and the last is not taken for the classifier (heads are still
    known by name). ``groups``: the model's layers' conv groups, where known (a target model)."""
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
    pos = pos_embed_causes(rest, ckpt)
    causes += pos
    for c in pos:
        for n in c.names:
            rest.pop(n, None)
    by_layer: dict[str, list[str]] = {}
    for n in rest:
        by_layer.setdefault(L.layer_of(n), []).append(n)
    order = order or list(model)
    layer_order = list(dict.fromkeys(L.layer_of(n) for n in order))
    first = next((ly for ly in layer_order if _has_weight(ly, model)), layer_order[0] if layer_order else None)
    last = layer_order[-1] if layer_order else None
    if partial:
        w = next((n for n in ckpt if L.layer_of(n) == first and L.split_key(n)[1] in ("weight", "kernel")
                  and ckpt[n] is not None and len(ckpt[n]) >= 3), None)
        first = first if w is not None and ckpt[w][1] <= 4 else None
        last = None
    layer_shapes = {ly: ({n: ckpt[n] for n in ckpt if L.layer_of(n) == ly and ckpt[n] is not None},
                         {n: model[n] for n in model if L.layer_of(n) == ly and model[n] is not None})
                    for ly in by_layer}
    chains, covered, settled = width_chains([ly for ly in layer_order if ly in by_layer], layer_shapes)
    causes += chains  # first: a layer a chain covers in part then gets pad/slice for the rest only
    unfixable = []
    in_order = [ly for ly in layer_order if ly in by_layer] + [ly for ly in by_layer if ly not in layer_order]
    for layer in in_order:  # the model's order: the first layer's cause first
        if layer in covered:
            continue
        have, want = layer_shapes[layer]
        have = {n: settled.get(n, shp) for n, shp in have.items()}  # after the chains' rules
        c = size_cause(layer, have, want, layer == first, layer == last, patch=bool(pos) or "patch" in layer,
                       groups=(groups or {}).get(layer, 1))
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


def _has_weight(layer: str, shapes: dict) -> bool:
    return any(L.layer_of(n) == layer and L.split_key(n)[1] in ("weight", "kernel") for n in shapes)


def _g(grid) -> str:
    return "x".join(map(str, grid))


def prefix_tokens(shapes: dict[str, Shape | None]) -> int:
    """Prefix tokens a ViT's state dict shows: its class/distillation/register token tensors."""
    return sum((s[-2] if len(s) >= 2 else 1) for n, s in shapes.items() if s is not None and PREFIX_TOKENS.search(n))


def has_registers(shapes: dict[str, Shape | None]) -> bool:
    return any(REGISTERS.search(n) for n in shapes)


def pos_grids(name: str, a: Shape, b: Shape, prefix: int, registers: bool = False
              ) -> tuple[int, tuple | None, tuple | None] | None:
    """For a position embedding ``name`` of shape ``a`` where ``b`` is wanted: (prefix tokens,
    old grid, new grid), the grids None when not square; None when it is not a position embedding
    whose token count changed. ``prefix``: the count the state dict shows (class, distillation and
    register tokens); with none shown, 1 or 0, whichever makes both grids square. With register
    tokens, 0 is tried next (timm's ``no_embed_class`` models embed the grid only). Otherwise a
    count that is not square after the prefix shown stays unresolved: 4x6 + 1 = 25 tokens must not
    be read as a 5x5 grid."""
    from .rules.resample import square_grid

    if not POS_NAMES.search(name) or len(a) != len(b) or len(a) not in (2, 3) or a[-1] != b[-1] or \
            (len(a) == 3 and (a[0], b[0]) != (1, 1)) or a == b:
        return None
    tries = [prefix, 0] if prefix and registers else [prefix] if prefix else [1, 0]
    for p in tries:
        old, new = square_grid(a[-2], p), square_grid(b[-2], p)
        if old and new:
            return p, old, new
    return tries[0], None, None


def pos_embed_causes(mism: dict[str, tuple[Shape, Shape]], ckpt: dict[str, Shape | None]) -> list[Cause]:
    """Absolute position embeddings whose token count differs (a new image or patch size): a
    ``resample_pos_embed`` rule each (``pos_grids``), or what to say when the grids are not square."""
    out = []
    hint, registers = prefix_tokens(ckpt), has_registers(ckpt)
    for n, (a, b) in mism.items():
        found = pos_grids(n, a, b, hint, registers)
        if found is None:
            continue
        p, old, new = found
        if old is None or new is None:
            alt = " (0 if it embeds the grid only)" if p else ""
            out.append(Cause(POS_EMBED, f"{n}: {a[-2]} -> {b[-2]} position tokens, not square grids after {p} "
                             f"prefix token(s): resample it with `- resample_pos_embed: {{keys: '{anchored([n])}', "
                             f"from: [h, w], to: [h, w], prefix_tokens: {p}}}`{alt} once you know the grids (rows "
                             "first: a 224x256 image in 16x16 patches is [14, 16])", fixable=False, names=[n]))
            continue
        out.append(Cause(POS_EMBED, f"{n}: a position embedding for a {_g(old)} grid, the model's is {_g(new)} "
                         f"(a new image or patch size): resampled bicubic as timm resample_abs_pos_embed, the "
                         f"{p} prefix token(s) kept: each patch keeps (nearly) the embedding of the same place "
                         "in the image",
                         [{"resample_pos_embed": {"keys": anchored([n]), "from": list(old), "to": list(new),
                                                  "prefix_tokens": p}}], review=True, names=[n]))
    return out


_OUT = ("out_channels", "out_features")
_IN = ("in_channels", "in_features")


def width_chains(layers: list[str], shapes: dict[str, tuple[dict, dict]]
                 ) -> tuple[list[Cause], set[str], dict[str, Shape]]:
    """Coupled width changes: a layer whose output channels change a -> b, then (in order) the
    per-channel layers after it (norms, depthwise convs) changing a -> b, then the layer reading
    them (input channels a -> b, or a Linear's features a*k -> b*k). Each chain is one ``channels``
    rule; ``covered`` are the layers whose every difference a chain explains, and ``settled`` the
    shapes the chains' rules leave the tensors in (so the rest of a layer is resized from there)."""
    diffs = {}
    for ly in layers:
        have, want = shapes[ly]
        if not have or set(have) != set(want):
            continue
        any_name = next(iter(have))
        a, b = _layer(any_name, dict(have)), _layer(any_name, dict(want))
        if a.kind != b.kind:
            continue
        diffs[ly] = ({d.attr: d for d in L.differences(a, b)}, a, have)
    causes, explained = [], {ly: set() for ly in diffs}
    settled: dict[str, Shape] = {}

    def settled_from(q: str) -> dict[str, Shape]:
        return {n: settled.get(n, shp) for n, shp in shapes[q][0].items()}
    i = 0
    while i < len(layers):
        ly = layers[i]
        i += 1
        if ly not in diffs or not any(k in diffs[ly][0] and k not in explained[ly] for k in _OUT) \
                or set(diffs[ly][0]) - {*_OUT, *_IN}:
            continue  # not a producer, or a depthwise conv a chain passed through
        d = next(diffs[ly][0][k] for k in _OUT if k in diffs[ly][0])
        old, new = d.have, d.want
        chain, j, closed = [], i, False
        while j < len(layers) and layers[j] in diffs:
            q = layers[j]
            qd, qa, qhave = diffs[q]
            w = next((n for n in qhave if L.split_key(n)[1] == "weight"), None)
            depthwise = w is not None and len(qhave[w]) >= 3 and qhave[w][1] == 1 and qhave[w][0] == old
            if set(qd) == {"num_features"} and (qd["num_features"].have, qd["num_features"].want) == (old, new) or \
                    depthwise and set(qd) == {"out_channels"} and qd["out_channels"].want == new:
                chain.append(q)
                j += 1
                continue
            k = next((k for k in _IN if k in qd), None)
            if k is not None and qd[k].have % old == 0 and qd[k].want * old == qd[k].have * new:
                chain.append(q)
                closed = True
            break
        if not closed:
            continue
        for q in [ly, *chain[:-1]]:  # the producer and what passes the channels on: axis 0 and per-channel tensors
            for n, shp in settled_from(q).items():
                if shp and shp[0] == old:
                    settled[n] = (new, *shp[1:])
        w = next((n for n in settled_from(chain[-1]) if L.split_key(n)[1] in ("weight", "kernel")), None)
        if w is not None:
            shp = settled_from(chain[-1])[w]
            settled[w] = (shp[0], shp[1] * new // old, *shp[2:])
        explained[ly] |= set(k for k in _OUT if k in diffs[ly][0])
        for q in chain[:-1]:
            explained[q] |= set(diffs[q][0])
        explained[chain[-1]] |= {k for k in _IN if k in diffs[chain[-1]][0]}
        grows = new > old
        what = ("the new channels start at zero and are read with zero weights: the network's outputs are unchanged"
                if grows else f"keeps the first {new} channels (by: l1 keeps those whose filters have the largest "
                "L1 norm; keep: [...] names them)")
        causes.append(Cause(WIDTH, f"{ly}: {old} -> {new} output channels, read by {', '.join(chain)}: {what}",
                            [{"channels": {"layer": ly, "size": new, "then": chain}}], review=True,
                            names=sorted(n for q in [ly, *chain] for n in shapes[q][0] if shapes[q][0][n] != shapes[q][1].get(n))))
    covered = {ly for ly, done in explained.items() if done and done >= set(diffs[ly][0])}
    # a chain whose layers are not all explained still stands: the rest gets pad/slice rules
    return causes, covered, settled


def size_cause(layer: str, have: dict[str, Shape], want: dict[str, Shape], is_first: bool, is_last: bool,
               *, patch: bool = False, groups: int = 1) -> Cause:
    """The cause of one layer's size differences (``have``/``want``: its tensors' shapes in the
    checkpoint, after any layout rules, and in the model), with the rules that fix it: input
    channels of the first layer adapted (``in_channels``, timm's sum/repeat), classes of the last
    (``num_classes``), a patch embedding's kernel PI-resized (``patch``: the model has a position
    embedding, or the layer is named so), else pad/slice per axis (a width). ``groups``: the
    model's layer's groups where known; a grouped conv (not depthwise) that differs at all is
    another grouping, a different variant: its weight's axis 1 holds channels per group."""
    names = [n for n in have if n in want and have[n] != want[n]]
    rest = {n: (have[n], want[n]) for n in names}
    a = _layer(names[0], dict(have))
    b = _layer(names[0], dict(want))
    ds = L.differences(a, b)
    attrs = {d.attr for d in ds}
    where = layer or "the layer"
    shapes_ok = all(len(rest[n][0]) == len(rest[n][1]) for n in names)
    weight = next((n for n in names if L.split_key(n)[1] in ("weight", "kernel")), None)
    if shapes_ok and patch and attrs and "kernel_size" in attrs and attrs <= {"kernel_size", *L.IN_ATTRS} \
            and a.kind.startswith("Conv") and weight is not None and len(have[weight]) == 4:
        return _patch_cause(where, weight, ds, have[weight], want[weight])
    depthwise = weight is not None and len(want[weight]) >= 3 and want[weight][1] == 1 and want[weight][0] == groups
    if groups > 1 and not depthwise:
        return Cause(VARIANT, f"{where}: a grouped convolution (groups={groups}) in the model, "
                     + "; ".join(f"{n} {fmt_shape(rest[n][0])} vs {fmt_shape(rest[n][1])}" for n in names)
                     + ": its weight holds channels per group, so another size is another grouping",
                     fixable=False, names=sorted(names))
    if not shapes_ok or "kernel_size" in attrs or "groups" in attrs:
        why = "; ".join(map(str, ds)) or "; ".join(f"{n} {fmt_shape(rest[n][0])} vs {fmt_shape(rest[n][1])}"
                                                   for n in names)
        return Cause(VARIANT, f"{where}: {why}", fixable=False, names=sorted(names))
    if attrs and attrs <= L.IN_ATTRS and is_first and weight is not None and names == [weight] \
            and len(have[weight]) >= 3:
        d = next(d for d in ds if d.attr in L.IN_ATTRS)
        rule, keeps = in_channels_rule(weight, d.have, d.want)
        return Cause(IN_CHANNELS, f"a different number of input channels ({d.have} -> {d.want}) in the first "
                     f"layer {where}: {keeps}", [rule], review=True, names=[weight])
    if attrs and attrs <= L.OUT_ATTRS and (is_last or HEADS.search(layer)) and "out_features" in attrs and layer \
            and weight is not None and all(rest[n][0][0] != rest[n][1][0] and rest[n][0][1:] == rest[n][1][1:]
                                           for n in names):
        d = next(d for d in ds if d.attr in L.OUT_ATTRS)
        if d.want > d.have:
            keeps = (f"the {d.have} old classes keep their weights; the {d.want - d.have} new ones start as PyTorch "
                     "initialises the layer (seeded)")
        else:
            keeps = f"keeps the first {d.want} classes (keep: [...] names the classes to keep, in their new order)"
        return Cause(NUM_CLASSES, f"a different number of classes ({d.have} -> {d.want}) in the last layer {where}: "
                     f"{keeps}", [{"num_classes": {"layer": layer, "size": d.want}}], review=True, names=sorted(names))
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
    norm = a.kind.startswith(("BatchNorm", "InstanceNorm"))
    ones = [n for n in names if norm and L.split_key(n)[1] in ("weight", "running_var")]
    rules = []
    for (axis, x, y), ns in groups.items():
        rest_ns = [n for n in ns if n not in ones]
        if y > x and ones and set(ns) & set(ones):  # a fresh norm's new slots: weight 1, running_var 1
            rules.append(_resize_rule(layer, [n for n in ns if n in ones], axis, x, y, one=True))
            if rest_ns:
                rules.append(_resize_rule(layer, rest_ns, axis, x, y))
        else:
            rules.append(_resize_rule(layer, ns, axis, x, y))
    grows = any(y > x for _, x, y in groups)
    shrinks = any(y < x for _, x, y in groups)
    keep = []
    if grows:
        keep.append("padding keeps the old values; the new ones start at zero" +
                    (" (a norm's weight and running_var at 1, as a fresh norm's)" if ones else ""))
    if shrinks:
        keep.append("slicing keeps the first entries")
    if a.kind in ("LayerNorm", "GroupNorm") and (grows or shrinks):
        keep.append(f"but a {a.kind} normalises across its channels: with another width its statistics change, "
                    "so the outputs change too (no padding keeps them)")
    return Cause(kind, msg + ("; " + "; ".join(keep) if keep else ""), rules, review=True, names=sorted(names))


def in_channels_rule(weight: str, c: int, n: int) -> tuple[dict, str]:
    """The ``in_channels`` rule for a first conv going from ``c`` to ``n`` input channels, and what
    it preserves: timm's sum (to 1) and repeat (from 3), else the old channels kept, new ones zero."""
    keys = anchored([weight])
    if n == 1:
        return ({"in_channels": {"keys": keys, "size": 1, "mode": "sum"}},
                f"summed over the {c} channels (as timm): a gray image gives exactly the activations its "
                f"{c}-channel copy gave")
    if c == 3:
        exact = " (exactly, for channels that repeat the RGB image)" if n % c == 0 else ""
        return ({"in_channels": {"keys": keys, "size": n, "mode": "repeat"}},
                f"RGB repeated to {n} channels and scaled by 3/{n} (as timm): the response's scale is kept{exact}; "
                + ("`mode: keep` keeps the RGB response exactly, the new channels starting at zero, and `map: "
                   "{3: 0}` starts one from red" if n > c else "`mode: keep` keeps the first channels as they are"))
    if n > c:
        return ({"in_channels": {"keys": keys, "size": n, "mode": "keep", "fill": "zeros"}},
                f"the {c} old channels kept, the {n - c} new ones start at zero: the old channels give exactly "
                "the old activations (`map: {new: source}` starts a new channel from an old one)")
    return ({"in_channels": {"keys": keys, "size": n, "mode": "keep"}},
            f"the first {n} of {c} channels kept (`map: {{new: source}}` picks others)")


def _patch_cause(where: str, weight: str, ds, have: Shape, want: Shape) -> Cause:
    new = list(want[2:])
    rules = [{"resize_kernel": {"keys": anchored([weight]), "size": new, "method": "pi"}}]
    msg = (f"{where}: a patch embedding with {_g(have[2:])} patches, the model's are {_g(want[2:])} (a new patch "
           "size): PI-resized as timm resample_patch_embed (FlexiViT): a patch resized to the new size gives the "
           "same token" + (" exactly" if want[2] >= have[2] and want[3] >= have[3] else
                           " as nearly as a smaller kernel can (least squares)"))
    if want[1] != have[1]:
        rule, keeps = in_channels_rule(weight, have[1], want[1])
        rules.insert(0, rule)
        msg += f"; input channels {have[1]} -> {want[1]}: {keeps}"
    return Cause(PATCH, msg, rules, review=True, names=[weight])


def _resize_rule(layer: str, names: list[str], axis: int, have: int, want: int, *, one: bool = False) -> dict:
    keys = anchored(names)
    if want > have and one:
        return {"pad": {"keys": keys, "axis": axis, "size": want, "fill": "constant", "value": 1.0}}
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
