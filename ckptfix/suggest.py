"""suggest: write the rules that make a checkpoint fit a target, proven by one dry-run plan.

The target decides (``match``): each of its layers, in execution order, is paired with the source
layer that encodes it under the layer table's layouts. The pairs become typed rules (``schema``
models), each carrying its reason and assumption as a comment; they are planned once, and the
YAML is rendered at the end. What is inferred from where:

* layouts, from each layer's class (the file's config) or, without one, from what the target's
  layer is (a [3, 3, 6, 2] kernel is a Conv2D for a Conv2d(6, 2) and a DepthwiseConv2D for a
  Conv2d(6, 12, groups=6));
* the Flatten -> Dense reorder, from the target's traced graph (a Linear fed by a flattened map,
  and the order it flattens in) and the source's config (a Permute before Flatten); without a
  config the source is assumed to flatten NHWC (stated in the file);
* BatchNorm eps, from the config (Keras' default 1e-3 without one, stated; Flax's 1e-5);
* a Flax file's collections: ``params``/``batch_stats`` prefixes stripped first (one module's
  variables are in both), classes from Flax's default module names only (others: the target decides
  among ``layer_table.FLAX``), ConvTranspose kernels flipped with ``reorder_blocks``;
* channel/class differences become pad/slice rules marked ``review:``; tensors nothing takes get
  a ``drop`` marked ``review:``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from . import diagnose as D
from . import layer_table as T
from .errors import one_line
from .layers import split_key
from .match import Matching, Pair, match
from .plan import Plan, make_plan
from .rules.schema import OPS, SHORTHAND, Rule
from .target import Target
from .tensors import TensorMeta, fmt_shape
from .formats.keras_h5 import walk_config
from .trace import Trace, keras_feeds, keras_flattens, keras_input_shape, trace


@dataclass
class Suggestion:
    text: str                       # the rules file
    plan: Plan
    unmatched: dict = field(default_factory=dict)   # what is left: missing / unexpected / mismatched
    problems: list[str] = field(default_factory=list)   # what no rule could settle

    @property
    def fits(self) -> bool:
        return self.plan.fit is not None and self.plan.fit.fits and not self.problems


HOW = {"near": "the same layer with other sizes (see the review rules)", "in order": "in execution order",
       "by name": "by module name",
       "by the graph": "by the graph (which layer reads which)", "in name order": "in natural name order",
       "out of order": "out of order (the checkpoint's order differs here)"}


@dataclass
class _Item:
    op: str
    body: dict
    comment: str


_anchored = D.anchored


def _short(names, n: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


class _Rules:
    """The rules being built, grouped by op so that one rule covers every tensor it applies to."""

    def __init__(self) -> None:
        self.items: list[_Item] = []
        self.header: list[str] = []
        self.problems: list[str] = []

    def add(self, op: str, body: dict, comment: str) -> None:
        self.items.append(_Item(op, body, comment))

    def typed(self) -> list[Rule]:
        out = []
        for i, it in enumerate(self.items):
            spec = OPS[it.op].model_validate(it.body)
            out.append(Rule(op=it.op, spec=spec, expect=None, index=i + 1, source="<suggest>", line=None))
        return out


def _prefix_rules(metas: dict[str, TensorMeta], target: Target, rules: _Rules) -> dict[str, TensorMeta]:
    """strip_prefix / add_prefix for torch state dicts (DDP, torch.compile, Lightning, ...)."""
    for _ in range(3):  # prefixes may stack (a Lightning `model.` around a DDP `module.`)
        cause = D.prefix_cause(metas, target.tensors)
        if cause is None:
            break
        op, p = next(iter(cause.rules[0].items()))
        rules.add(op, {"prefix": p}, cause.message)
        if op == "strip_prefix":
            metas = {(k[len(p):] if k.startswith(p) else k): v for k, v in metas.items()}
        else:
            metas = {p + k: v for k, v in metas.items()}
    return metas


def suggest(metas: dict[str, TensorMeta], target: Target, *, classes: dict[str, str] | None = None,
            configs: dict[str, dict] | None = None, keras_config=None, source_format: str = "",
            target_spec: str | None = None, target_kwargs: dict | None = None, source: str = "the checkpoint",
            input_shape: tuple[int, ...] | None = None, layer_order: list[str] | None = None) -> Suggestion:
    """``layer_order``: the source's layers in the order its model runs them, when the file records
    it (an ONNX graph's node order: ``extras()["execution_order"]``); a Keras config's comes first."""
    classes = classes or {}
    configs = configs or {}
    rules = _Rules()
    torch_source = not any("/" in k for k in metas) and source_format not in (
        "keras-h5", "keras-archive", "keras-sharded", "tf-checkpoint", "flax-msgpack")
    work = _prefix_rules(metas, target, rules) if torch_source else dict(metas)
    forms, match_classes = None, classes
    if source_format == "flax-msgpack":
        work, forms = _flax_collections(work, rules), T.FLAX
        match_classes = T.flax_classes(_shapes_by_layer(work))[0]  # Flax's names only: the target decides the rest
    shape_in = input_shape or keras_input_shape(keras_config)
    tr = trace(target.module, shape_in) if target.module is not None else \
        Trace(list(target.layers), False, note="the target is not a model: its layers are taken in file order")
    s_feed = keras_feeds(keras_config, lambda n: any(k.startswith(n + "/") for k in work)) if keras_config else {}
    config_order = [p for p, _, _ in walk_config(keras_config)] if keras_config else None
    m = match(work, target, tr.order, match_classes, configs, feeds=(tr.feeds, s_feed),
              layer_order=config_order or layer_order, forms=forms, by_module=forms is not None)
    rules.header += [f"# {n}" for n in m.notes]
    if forms is not None:
        if not m.ordered and any(p.how not in ("same names", "by name") for p in m.pairs):
            rules.header.append("# review: a Flax file keeps modules in sorted name order (jax sorts dict keys), "
                                "not the order they run: layers the target names otherwise were paired in natural "
                                "name order (Flax numbers Conv_0, Conv_1, ... in creation order). Check them")
    elif not m.ordered and any(p.how != "same names" and not p.by_name for p in m.pairs):
        rules.header.append("# review: the checkpoint's layer order is lost (sorted names): layers of the same "
                            "shapes were paired in natural name order (conv2d, conv2d_1, ...). Check them, or give "
                            "the model's config with --keras-config")
    if tr.note:
        rules.header.append(f"# {tr.note}")
    crossed = [p for p in m.pairs if p.how == "out of order"]
    if crossed and not s_feed:
        rules.header.append(
            f"# review: the checkpoint's layer order differs from the model's at {_short(p.targets[0].module for p in crossed)} "
            "(parallel branches?), and the checkpoint has no graph: layers of the same shapes there were paired by "
            "order. Check them, or give the model's config with --keras-config")
    _build(m, work, target, tr, keras_config, configs, rules, layouts_of="Flax" if forms is not None else "TensorFlow")
    typed = rules.typed()
    plan = make_plan(metas, typed, target, classes=classes, layer_configs=configs)
    text = _render(rules, target_spec, source, target_kwargs)
    fit = plan.fit
    unmatched = {} if fit is None or fit.fits else {"missing": fit.missing, "unexpected": fit.unexpected,
                                                      "mismatched": fit.mismatched}
    return Suggestion(text, plan, unmatched, rules.problems)


def _shapes_by_layer(metas: dict[str, TensorMeta]) -> dict[str, dict[str, tuple[int, ...]]]:
    out: dict[str, dict[str, tuple[int, ...]]] = {}
    for k, m in metas.items():
        layer, var = split_key(k)
        out.setdefault(layer, {})[var] = tuple(m.shape)
    return out


def _flax_collections(metas: dict[str, TensorMeta], rules: _Rules) -> dict[str, TensorMeta]:
    """A Flax file's ``params/`` and ``batch_stats/`` prefixes stripped (a BatchNorm's scale is in
    one, its mean in the other), unless that makes two names one."""
    out: dict[str, TensorMeta] = {}
    for k, m in metas.items():
        col, rest = T.flax_split(k)
        out[rest if col else k] = m
    if len(out) != len(metas) or out.keys() == metas.keys():
        return dict(metas)
    cols = sorted({T.flax_split(k)[0] for k in metas} - {""})
    rules.add("rename", {"pattern": f"^({'|'.join(cols)})/", "replace": ""},
              f"Flax collections {' and '.join(cols)}: a module's variables are in "
              f"{'both' if len(cols) > 1 else 'it'}")
    return out


# ---------------------------------------------------------------------------------------------


def _build(m: Matching, metas: dict[str, TensorMeta], target: Target, tr: Trace, keras_config,
           configs: dict[str, dict], rules: _Rules, layouts_of: str = "TensorFlow") -> None:
    """``layouts_of``: whose layouts the stored kernels are in, for the transpose comments (a Flax
    file's Conv/Dense kernels are read through Keras' rows)."""
    renames: dict[str, str] = {}
    why: dict[str, list[str]] = {}
    splits: list[tuple[str, list[str]]] = []
    transposes: dict[tuple[str, str], list[str]] = {}
    blocks: dict[tuple[int, ...], list[str]] = {}
    squeezes: list[str] = []
    flips: dict[tuple[int, int], list[str]] = {}
    fills: list[tuple[str, T.Fill, str]] = []
    for p in m.pairs:
        if p.how != "same names":
            note = f", {p.reading.form.note}" if p.reading.form is not None and p.reading.form.note else ""
            why.setdefault(HOW.get(p.how, p.how), []).append(
                f"{p.targets[0].module} <- {p.reading.src.name} ({p.reading.what}{note})")
        k = p.reading.src.shapes.get("kernel")
        if p.reading.what == "ConvTranspose" and k is not None and k[-1] == k[-2]:
            rules.header.append(f"# review: {p.targets[0].module}: a Flax ConvTranspose kernel {list(k)} with as many "
                                f"inputs as outputs does not show whether transpose_kernel was set: read as "
                                f"{p.reading.form.note}")
        for u, t in zip(p.reading.units, p.targets):
            for local, conv in u.tensors.items():
                canon = T.rnn_rename(local, u.rnn_layer, 0)
                tkey = t.keys.get(canon)
                if tkey is None:
                    continue
                if isinstance(conv, T.Fill):
                    fills.append((tkey, conv, p.reading.what))
                    continue
                skey = p.reading.key_of(conv.var)
                if conv.row is not None:
                    for entry in splits:
                        if entry[0] == skey:
                            entry[1].append(tkey)
                            break
                    else:
                        splits.append((skey, [tkey]))
                elif skey != tkey:
                    renames[skey] = tkey
                if conv.layout is not None:
                    onnx = p.reading.form is not None and p.reading.form.framework == "ONNX"
                    transposes.setdefault((conv.layout, "ONNX" if onnx else layouts_of), []).append(tkey)
                if conv.blocks is not None:
                    blocks.setdefault(conv.blocks, []).append(tkey)
                if conv.squeeze:
                    squeezes.append(tkey)
                for axis in conv.flip:
                    flips.setdefault((axis, t.shapes[canon][axis]), []).append(tkey)
    for skey, into in splits:
        rules.add("split", {"key": skey, "into": into, "axis": 0, "squeeze": True},
                  f"{skey}: Keras GRU bias (2, 3U), row 0 the input bias, row 1 the recurrent bias")
    if renames:
        lines = ["names: each target layer (in execution order) paired with the checkpoint layer that encodes it"]
        for how, items in why.items():
            lines.append(f"{how}: {_short(items, 6)}")
        rules.add("rename", {"map": renames}, "\n".join(lines))
    for (layout, framework), keys in transposes.items():
        what = "ONNX MatMul/Gemm(transB=0) weights are (in, out)" if framework == "ONNX" else f"{framework} layout"
        rules.add("transpose", {"keys": _anchored(keys), "layout": layout}, f"{what} {layout}: {_short(keys)}")
    for (axis, size), keys in flips.items():
        rules.add("reorder_blocks", {"keys": _anchored(keys), "order": list(range(size))[::-1], "axis": axis},
                  f"Flax ConvTranspose (transpose_kernel=False) applies its kernel as stored, torch's "
                  f"ConvTranspose flipped: reversed along axis {axis}: {_short(keys)}")
    for order, keys in blocks.items():
        rules.add("reorder_blocks", {"keys": _anchored(keys), "order": list(order)},
                  f"gate order: Keras GRU (z, r, h) -> torch (r, z, n): {_short(keys)}")
    if squeezes:
        rules.add("reshape", {"keys": _anchored(squeezes), "shape": [-1]},
                  f"PReLU alpha [..., C] with shared axes -> torch's [C]: {_short(squeezes)}")
    _flatten_rules(m, metas, tr, keras_config, rules)
    _eps_rules(m, target, configs, rules)
    _fill_rules(fills, target, rules)
    _review_rules(m, target, tr, rules)


def _flatten_rules(m: Matching, metas, tr: Trace, keras_config, rules: _Rules) -> None:
    src_flat = keras_flattens(keras_config)
    for p in m.pairs:
        t = p.targets[0]
        f = tr.flattens.get(t.module)
        if f is None or p.reading.form is None or p.reading.form.framework == "ONNX" or t.kind != "Linear":
            continue  # (an ONNX graph flattens NCHW maps as torch does: nothing to reorder)
        in_f = t.shapes["weight"][1]
        info = src_flat.get(p.reading.src.name)
        letters = "".join(c for c in f.order if c != "C")
        if f.map_shape is not None:
            spatial, how = tuple(f.map_shape[1:]), "traced"
        elif info is not None and info.dims is not None:
            sizes = dict(zip(info.order, info.dims))  # the same image axes, named the same on both sides
            spatial = tuple(sizes[c] for c in letters) if set(letters) <= set(sizes) else None
            how = "from the Keras config"
        else:
            spatial, how = f.spatial(in_f)
        if spatial is None:
            rules.problems.append(f"{t.module}: reads a flattened map of {in_f} features but its height and width "
                                  f"are unknown ({how})")
            continue
        if f.channels is not None and f.channels * math.prod(spatial) != in_f:
            rules.problems.append(f"{t.module}: reads {in_f} features, but a map of {f.channels} channels x "
                                  f"{'x'.join(map(str, spatial))} ({how}) holds {f.channels * math.prod(spatial)}; "
                                  "give --input-shape")
            continue
        if len(spatial) == 0 or all(s == 1 for s in spatial):
            continue
        if info is not None and info.order == "?":
            rules.header.append(f"# review: {t.module}: the Keras config does not show in which order the map this "
                                "Dense reads was flattened; assumed NHWC (channels last)")
            info = None
        src_order = info.order if info is not None else letters + "C"
        assumed = "" if info is not None or keras_config else (" The checkpoint has no Keras config: assumed it "
                                                                "flattens NHWC (no Permute before Flatten).")
        if src_order == f.order:
            rules.header.append(f"# {t.module}: both sides flatten the map in {f.order} order: no reorder")
            continue
        sizes = {"C": f.channels, **dict(zip(letters, spatial))}
        if f.channels is None or sorted(src_order) != sorted(f.order):
            rules.problems.append(f"{t.module}: cannot line up the flatten orders {src_order} and {f.order}")
            continue
        dims = [sizes[c] for c in src_order]
        rules.add("flatten_order", {"keys": _anchored([t.keys["weight"]]), "dims": dims,
                                    "layout": f"{src_order}->{f.order}"},
                  f"{t.module} reads a flattened {f.order} map ({'x'.join(map(str, dims))} in {src_order} order, "
                  f"sizes {how}); the checkpoint's Dense read it in {src_order} order.{assumed}")


def _eps_rules(m: Matching, target: Target, configs: dict[str, dict], rules: _Rules) -> None:
    groups: dict[tuple[float, float], list[str]] = {}
    assumed = False
    for p in m.pairs:
        if p.reading.form is None:
            continue
        for u, t in zip(p.reading.units, p.targets):
            cls = p.reading.what
            if cls not in T.NORM_EPS:
                continue
            # ONNX's norms record their epsilon (default 1e-5, torch's); the class names are Keras' too
            who, default = ("ONNX", 1e-5) if p.reading.form.framework == "ONNX" else T.NORM_EPS[cls]
            cfg = p.reading.src.cfg
            src_eps = float(cfg.get("epsilon", default))
            assumed = assumed or ("epsilon" not in cfg and who == "Keras")
            to = t.attrs.get("eps")
            if to is None or abs(src_eps - to) <= 1e-12:
                continue
            if t.kind.startswith("BatchNorm") and "running_var" in t.keys:
                groups.setdefault((who, src_eps, float(to)), []).append(t.keys["running_var"])
            else:
                rules.header.append(f"# {t.module}: {who} {cls} eps {src_eps:g}, target eps {to:g}: outputs differ "
                                    f"slightly; build it with eps={src_eps:g}")
    for (who, a, b), keys in groups.items():
        rules.add("bn_eps", {"keys": _anchored(keys), "from": a, "to": b},
                  f"BatchNorm eps {a:g} ({who}{' default, assumed: no config' if assumed and who == 'Keras' else ''}) "
                  f"in a layer with eps {b:g}: running_var += {a - b:g}: {_short(keys)}")


def _fill_rules(fills: list[tuple[str, T.Fill, str]], target: Target, rules: _Rules) -> None:
    nbt = [k for k, f, _ in fills if k.endswith("num_batches_tracked")]
    if nbt:
        layers = [k[: -len(".num_batches_tracked")] for k in nbt]
        rules.add("add", {"for_each": "^(?P<layer>" + "|".join(re.escape(x) for x in layers) + r")\.running_var$",
                          "key": "{layer}.num_batches_tracked", "dtype": "int64", "value": 0},
                  "BatchNorm's num_batches_tracked, which the checkpoint does not store")
    for key, f, what in fills:
        if key.endswith("num_batches_tracked"):
            continue
        meta = target.tensors[key]
        rules.add("add", {"key": key, "shape": list(meta.shape), "dtype": meta.dtype, "value": f.value},
                  f"{key}: {what} stores no such tensor; {f.value:g} computes the same")


def _review_rules(m: Matching, target: Target, tr: Trace, rules: _Rules) -> None:
    """Pairs whose sizes differ (diagnose.size_cause: the same reading diff and explain give),
    target layers nothing fills, source tensors nothing takes."""
    last = max((p.targets[-1].index for p in m.pairs), default=None)
    first = min((p.targets[0].index for p in m.pairs if p.targets[0].kind in T.TORCH), default=None)
    pos_embed = [n for n in target.tensors if D.POS_NAMES.search(n)]
    near = sorted((p for p in m.pairs if p.how == "near"), key=lambda p: p.targets[0].index)
    shapes = {}
    for p in near:
        t = p.targets[0]
        have = {k: got for k, got, _ in p.differs}
        shapes[t.module] = ({k: have.get(k, t.shapes[v]) for v, k in t.keys.items()},
                            {k: t.shapes[v] for v, k in t.keys.items()})
    chains, covered, settled = D.width_chains([p.targets[0].module for p in near], shapes)
    for c in chains:
        for r in c.rules:
            op, body = next(iter(r.items()))
            rules.add(op, body, f"review: {c.message}")
    for p in near:
        t = p.targets[0]
        if t.module in covered:
            continue
        have = {k: settled.get(k, got) for k, got, _ in p.differs}   # after the chains' rules
        want = {k: w for k, _, w in p.differs}
        have = {k: v for k, v in have.items() if v != want[k]}
        want = {k: want[k] for k in have}
        if not have:
            continue
        pos = D.pos_embed_causes({k: (have[k], want[k]) for k in have}, {k: m.shape for k, m in target.tensors.items()})
        for c in pos:
            if not c.fixable:
                rules.problems.append(c.message)
            for r in c.rules:
                op, body = next(iter(r.items()))
                rules.add(op, body, f"review: {c.message}")
            for n in c.names:
                have.pop(n)
                want.pop(n)
        if not have:
            continue
        for v, k in t.keys.items():  # the layer's other tensors, for reading it
            have.setdefault(k, t.shapes[v])
            want.setdefault(k, t.shapes[v])
        g = t.attrs.get("groups")
        cause = D.size_cause(t.module, have, want, t.index == first, t.index == last,
                             patch=bool(pos_embed) or "patch" in t.module, groups=g if isinstance(g, int) else 1)
        if not cause.fixable:
            rules.problems.append(f"{cause.message}: no rule makes these weights compute the same thing")
            continue
        for r in cause.rules:
            op, body = next(iter(r.items()))
            rules.add(op, body, f"review: {cause.message}")
    for s in m.unplaced_layers:
        why = T.refusal(s.shapes, s.cls, s.name)
        if why:
            rules.problems.append(f"the checkpoint's {s.name}: {why}")
    for t in m.missing:
        rules.problems.append(f"{t.module}: the target's {t.kind} has no counterpart in the checkpoint "
                              f"({_short(t.keys.values())})")
    if m.unplaced:
        rules.add("drop", {"keys": _anchored(m.unplaced)},
                  f"review: the target has no place for {len(m.unplaced)} tensor(s): {_short(m.unplaced)}")


def _render(rules: _Rules, target_spec: str | None, source: str, target_kwargs: dict | None = None) -> str:
    import yaml

    out = [f"# Rules written by `ckptfix suggest` for {source}",
           "# Lines marked `review:` change values: check them before you rely on the result."]
    out += rules.header
    out += [f"# cannot fix: {p}" for p in rules.problems]
    out = [one_line(h) for h in out]
    doc: dict = {"ckptfix": 1}
    if target_spec:
        doc["target"] = target_spec
        if target_kwargs:
            doc["target_kwargs"] = target_kwargs
    out.append(yaml.safe_dump(doc, sort_keys=False, width=200).rstrip())
    if not rules.items:
        out.append("rules: []")
        return "\n".join(out) + "\n"
    out.append("rules:")
    for it in rules.items:
        out += [f"  # {one_line(ln)}" for ln in it.comment.splitlines()]
        short = SHORTHAND.get(it.op)
        if short is not None and set(it.body) == {short} and isinstance(it.body[short], str):
            out.append(D.rule_line(it.op, it.body[short]))
        else:
            out.append(D.rule_line(it.op, it.body))
    return "\n".join(out) + "\n"


__all__ = ["suggest", "Suggestion"]
