"""The planner: folds the rules over tensor metadata, one rule at a time, and validates after
each step. No tensor data is read here; a plan that cannot succeed fails before anything is read
or written.

After every rule the step records what changed, checks each touched tensor's shape and each
touched layer's parameter count against the target, the total parameter count, and the rule's
own ``expect:``. The final state is compared with the target (missing, unexpected, mismatched).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from . import layer_table as T
from . import layers as L
from . import layouts
from .errors import RulesError
from .limits import memory_limit, tensor_too_big
from .rules.ops import (AddScalar, Cast, Chunk, Constant, Depthwise, FlattenOrder, Op, OpError, Pad, ReorderBlocks,
                        Reshape, Slice, Transpose, tensor_seed)
from .rules.channels import Fresh, InChannels, Select, Selection
from .rules.resample import ResamplePosEmbed, ResizeKernel, square_grid
from .rules.schema import Rule
from .target import Target
from .tensors import TensorMeta, fmt_shape


@dataclass
class Entry:
    source: str | None            # input tensor name; None for a tensor the rules create
    meta: TensorMeta              # after the ops
    ops: list[Op] = field(default_factory=list)


@dataclass
class Step:
    index: int
    rule: str                     # op name
    summary: str                  # e.g. "pad axis 0 to 15 (zeros)"
    where: str                    # file:line
    changes: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)
    tensors: int = 0
    params: int = 0
    fit_target: int = 0           # touched tensors whose shape now equals the target's
    off_target: list[str] = field(default_factory=list)   # touched, in the target, shape differs
    not_in_target: list[str] = field(default_factory=list)
    layers: list[dict] = field(default_factory=list)      # {layer, params, target_params, ok}
    expect_errors: list[str] = field(default_factory=list)
    expect_checked: bool = False

    @property
    def ok(self) -> bool:
        return not self.expect_errors

    def to_json(self) -> dict:
        return {"index": self.index, "rule": self.rule, "summary": self.summary, "where": self.where,
                "changes": self.changes, "touched": len(self.touched), "tensors": self.tensors,
                "params": self.params, "fit_target": self.fit_target, "off_target": self.off_target,
                "not_in_target": self.not_in_target, "layers": self.layers,
                "expect_checked": self.expect_checked, "expect_errors": self.expect_errors, "ok": self.ok}


@dataclass
class Fit:
    fits: bool
    missing: list[str]
    unexpected: list[str]
    mismatched: list[dict]        # {name, checkpoint, target, hint}
    params: int
    target_params: int
    notes: list[str] = field(default_factory=list)   # e.g. dtype differences (load_state_dict casts)
    causes: list = field(default_factory=list)       # diagnose.Cause: why it does not fit, and the fix

    def to_json(self) -> dict:
        return {"fits": self.fits, "missing": self.missing, "unexpected": self.unexpected,
                "mismatched": self.mismatched, "params": self.params, "target_params": self.target_params,
                "notes": self.notes, "causes": [c.to_json() for c in self.causes]}


@dataclass
class Plan:
    inputs: dict[str, TensorMeta]
    entries: dict[str, Entry]
    steps: list[Step]
    target: Target | None
    fit: Fit | None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps) and (self.fit is None or self.fit.fits)

    @property
    def metas(self) -> dict[str, TensorMeta]:
        return {n: e.meta for n, e in self.entries.items()}

    @property
    def shapes_changed(self) -> bool:
        return any(e.source is None or self.inputs[e.source].shape != e.meta.shape
                   for e in self.entries.values())


# ---------------------------------------------------------------------------------------------


def _is_buffer(name: str, target: Target | None) -> bool:
    layer, var = L.split_key(name)
    if target is not None and name in target.tensors:
        ly = target.layers.get(layer)
        if ly is not None:
            return var in ly.buffers
    return var in L.BUFFER_NAMES


def count_params(metas: dict[str, TensorMeta], target: Target | None = None) -> int:
    return sum(m.numel for n, m in metas.items() if not _is_buffer(n, target))


def _patterns(keys) -> list[re.Pattern]:
    return [re.compile(k) for k in ([keys] if isinstance(keys, str) else keys)]


def _close(word: str, names) -> str:
    m = difflib.get_close_matches(word, list(names), n=3, cutoff=0.3)
    return f"closest keys: {', '.join(m)}" if m else f"keys look like: {', '.join(list(names)[:3])}"


class _Planner:
    def __init__(self, metas: dict[str, TensorMeta], target: Target | None,
                 classes: dict[str, str] | None = None) -> None:
        self.inputs = metas
        self.entries: dict[str, Entry] = {n: Entry(n, m) for n, m in metas.items()}
        self.target = target
        self.memory: int | None = None  # limits.memory_limit(), taken when first needed
        # the class of the layer each input tensor belongs to: from the file / rules, else from shapes
        classes = classes or {}
        kinds = {layer: classes.get(layer) or L.infer_layer(layer, ts).kind
                 for layer, ts in L.group_layers(metas).items()}
        self.source_class: dict[str, str] = {k: kinds[L.layer_of(k)] for k in metas}

    # -- helpers ---------------------------------------------------------------------------
    def err(self, rule: Rule, msg: str, hint: str | None = None) -> RulesError:
        return RulesError(f"rule {rule.index} ({rule.op}): {msg}", source=rule.source, line=rule.line, hint=hint)

    def check_size(self, rule: Rule, name: str, before: TensorMeta | None, after: TensorMeta, op: Op) -> None:
        """Refuse, at plan time, a tensor no run could make (see ``limits.tensor_too_big``)."""
        if self.memory is None:
            self.memory = memory_limit()
        why = tensor_too_big(before, after, before is None or op.byte_span(before) is None, self.memory,
                             op.working(before, after) if before is not None else 0)
        if why:
            was = f"{fmt_shape(before.shape)} -> " if before is not None else ""
            raise self.err(rule, f"{name} {was}{fmt_shape(after.shape)} {after.dtype}: {why}")

    def class_of(self, name: str) -> str | None:
        src = self.entries[name].source
        return self.source_class.get(src) if src is not None else None

    def select(self, rule: Rule, keys, *, required: bool = True) -> list[str]:
        classes = getattr(rule.spec, "classes", None)
        hit = list(self.entries)
        if keys is not None:
            pats = _patterns(keys)
            hit = [n for n in hit if any(p.search(n) for p in pats)]
        if classes:
            hit = [n for n in hit if self.class_of(n) in classes]
        if not hit and required and not rule.optional:
            shown = keys if isinstance(keys, str) else ", ".join(keys or ["*"])
            cls = f" in layers of class {', '.join(classes)}" if classes else ""
            raise self.err(rule, f"keys {shown!r} match no tensor{cls}", _close(str(shown), self.entries))
        return hit

    def apply_renames(self, rule: Rule, mapping: dict[str, str]) -> list[str]:
        """Rename old -> new (others kept, order kept); refuse collisions."""
        seen: dict[str, str] = {}
        for old in self.entries:
            new = mapping.get(old, old)
            if not new:
                raise self.err(rule, f"renaming {old!r} gives an empty name")
            if new in seen:
                raise self.err(rule, f"{seen[new]!r} and {old!r} would both be named {new!r}")
            seen[new] = old
        self.entries = {mapping.get(o, o): e for o, e in self.entries.items()}
        return [f"{o} -> {n}" for o, n in mapping.items() if o != n]

    # -- one rule --------------------------------------------------------------------------
    def run(self, rule: Rule) -> tuple[list[str], list[str], str]:
        """Apply ``rule``; return (changes, touched names after the rule, summary)."""
        s = rule.spec
        op = rule.op
        if op == "rename":
            mapping = self._rename_map(rule)
            return self.apply_renames(rule, mapping), list(mapping.values()), \
                (f"rename {s.pattern!r} -> {s.replace!r}" if s.map is None else f"rename map ({len(s.map)} entries)")
        if op == "strip_prefix":
            names = [n for n in self.select(rule, s.keys) if n.startswith(s.prefix)]
            if not names and not rule.optional:
                raise self.err(rule, f"no key starts with {s.prefix!r}", _close(s.prefix, self.entries))
            mapping = {n: n[len(s.prefix):] for n in names}
            return self.apply_renames(rule, mapping), list(mapping.values()), f"strip prefix {s.prefix!r}"
        if op == "add_prefix":
            mapping = {n: s.prefix + n for n in self.select(rule, s.keys)}
            return self.apply_renames(rule, mapping), list(mapping.values()), f"add prefix {s.prefix!r}"
        if op in ("drop", "keep"):
            hit = set(self.select(rule, s.keys))
            gone = [n for n in self.entries if (n in hit) == (op == "drop")]
            if op == "keep" and not hit:
                raise self.err(rule, "keeps nothing")
            for n in gone:
                del self.entries[n]
            return [f"dropped {n}" for n in gone], [], f"{op} {s.keys!r}"
        if op == "add":
            keys = [s.key]
            if s.for_each is not None:
                rx = re.compile(s.for_each)
                try:
                    keys = [s.key.format(**m.groupdict()) for n in self.entries if (m := rx.search(n))]
                except (KeyError, IndexError, ValueError) as ex:
                    raise self.err(rule, f"key template {s.key!r} must use named groups of for_each, like "
                                   f"{{layer}} ({type(ex).__name__}: {ex})") from None
                if not keys and not rule.optional:
                    raise self.err(rule, f"for_each {s.for_each!r} matches no tensor", _close(s.for_each, self.entries))
            changes = []
            for key in keys:
                if key in self.entries:
                    raise self.err(rule, f"tensor {key!r} already exists")
                gen = Constant(TensorMeta(tuple(s.shape), s.dtype), s.value)
                self.check_size(rule, key, None, gen.shape(), gen)
                self.entries[key] = Entry(None, gen.shape(), [gen])
                changes.append(f"added {key} {fmt_shape(s.shape)} {s.dtype} = {s.value:g}")
            return changes, keys, f"add {s.key}"
        if op == "split":
            return self._split(rule)
        if op == "num_classes":
            return self._num_classes(rule)
        if op == "channels":
            return self._channels(rule)
        # tensor ops
        names = self.select(rule, s.keys, required=not (op == "cast" and s.keys is None))
        if op == "pad" and s.fill == "default":
            names.sort(key=lambda n: self.entries[n].meta.rank < 2)  # weights first: biases need their fan_in
        changes, summary = [], ""
        for n in names:  # bound and applied one by one: a bias's fan_in is read off its weight as padded
            try:
                bound = self._bind(rule, n, self.entries[n].meta)
            except OpError as ex:
                raise self.err(rule, f"{n} {fmt_shape(self.entries[n].meta.shape)}: {ex}") from None
            if bound is not None:
                changes += self._apply(rule, [(n, bound)])
                summary = bound.describe()
        return changes, names, summary or _spec_summary(rule)

    def _split(self, rule: Rule) -> tuple[list[str], list[str], str]:
        s = rule.spec
        e = self.entries.get(s.key)
        if e is None:
            if rule.optional:
                return [], [], f"split {s.key}"
            raise self.err(rule, f"no tensor {s.key!r}", _close(s.key, self.entries))
        for n in s.into:
            if n in self.entries and n != s.key:
                raise self.err(rule, f"tensor {n!r} already exists")
        parts = {}
        for i, n in enumerate(s.into):
            op = Chunk(s.axis, i, len(s.into), s.squeeze)
            try:
                meta = op.shape(e.meta)
            except OpError as ex:
                raise self.err(rule, f"{s.key} {fmt_shape(e.meta.shape)}: {ex}") from None
            parts[n] = Entry(e.source, meta, [*e.ops, op])
        pos = list(self.entries).index(s.key)
        items = list(self.entries.items())
        self.entries = dict(items[:pos] + list(parts.items()) + items[pos + 1:])
        changes = [f"{s.key} {fmt_shape(e.meta.shape)} -> {n} {fmt_shape(p.meta.shape)}" for n, p in parts.items()]
        return changes, list(parts), f"split {s.key} into {len(parts)} along axis {s.axis}"

    # -- layer rules: several tensors change together ----------------------------------------
    def _layer_tensors(self, rule: Rule, layer: str) -> list[str]:
        names = [n for n in self.entries if L.layer_of(n) == layer]
        if not names:
            layers = list(dict.fromkeys(L.layer_of(n) for n in self.entries))
            m = difflib.get_close_matches(layer, layers, n=3, cutoff=0.3)
            raise self.err(rule, f"no layer {layer!r}", f"closest layers: {', '.join(m)}" if m else
                           f"layers look like: {', '.join(layers[:3])}")
        return names

    def _find_weight(self, layer: str, min_rank: int = 1) -> str | None:
        """The layer's weight (``weight``, or Keras' ``kernel``) among the current tensors."""
        for var in ("weight", "kernel"):
            for sep in (".", "/"):
                n = L.join_key(layer, var, sep)
                if n in self.entries and self.entries[n].meta.rank >= min_rank:
                    return n
        return None

    def _weight(self, rule: Rule, layer: str) -> str:
        w = self._find_weight(layer)
        if w is None:
            raise self.err(rule, f"layer {layer!r} has no weight")
        return w

    def _kind(self, layer: str, name: str) -> str:
        """The torch class of a layer: the target's, else the file's class, else read from shapes."""
        tl = self.target.layers.get(layer) if self.target is not None else None
        if tl is not None:
            return tl.kind
        cls = self.class_of(name)
        if cls:
            return cls
        local = {L.split_key(n)[1]: e.meta for n, e in self.entries.items() if L.layer_of(n) == layer}
        return L.infer_layer(layer, local).kind

    def _refuse_grouped(self, rule: Rule, name: str) -> None:
        layer = L.layer_of(name)
        tl = self.target.layers.get(layer) if self.target is not None else None
        groups = (tl.attrs.get("groups") or 1) if tl is not None else 1
        if groups > 1 or (self.class_of(name) or "").startswith(("DepthwiseConv", "SeparableConv")):
            raise self.err(rule, f"{name}: a grouped convolution (groups={groups if groups > 1 else 'C'}) reads "
                           "each input channel in its own group: its input channels cannot be adapted "
                           "without changing its groups")

    def _apply(self, rule: Rule, items: list[tuple[str, Op]]) -> list[str]:
        """Append one op to each named tensor, validating shapes; returns the changes."""
        changes = []
        for n, op in items:
            e = self.entries[n]
            try:
                new = op.shape(e.meta)
            except OpError as ex:
                raise self.err(rule, f"{n} {fmt_shape(e.meta.shape)}: {ex}") from None
            self.check_size(rule, n, e.meta, new, op)
            if new != e.meta:
                d0, d1 = ("", "") if new.dtype == e.meta.dtype else (" " + e.meta.dtype, " " + new.dtype)
                changes.append(f"{n} {fmt_shape(e.meta.shape)}{d0} -> {fmt_shape(new.shape)}{d1}")
            e.ops.append(op)
            e.meta = new
        return changes

    def _num_classes(self, rule: Rule) -> tuple[list[str], list[str], str]:
        s = rule.spec
        names = self._layer_tensors(rule, s.layer)
        w = self._weight(rule, s.layer)
        wm = self.entries[w].meta
        ax = s.axis
        if wm.rank < 2:
            raise self.err(rule, f"{s.layer} is not a classifier: its weight {w} is {fmt_shape(wm.shape)} (a head's "
                           "weight is (classes, features))")
        if not -wm.rank <= ax < wm.rank:
            raise self.err(rule, f"{w} {fmt_shape(wm.shape)} has no axis {ax}")
        old = wm.shape[ax]
        members = [n for n in names if n == w or (self.entries[n].meta.rank == 1 and self.entries[n].meta.shape[0] == old)]
        for c in s.coupled or []:
            if c not in self.entries:
                raise self.err(rule, f"coupled tensor {c!r} does not exist", _close(c, self.entries))
            m = self.entries[c].meta
            if m.rank == 0 or m.shape[0] != old:
                raise self.err(rule, f"coupled tensor {c} {fmt_shape(m.shape)}: its axis 0 is not the {old} classes")
            members.append(c)
        fan = wm.numel // old if old else 1  # everything but the class axis: torch's fan_in, in either layout
        if s.keep is not None:
            bad = [k for k in s.keep if k >= old]
            if bad:
                raise self.err(rule, f"keep: class {bad[0]} is out of range for the {old} classes of {w}")
        items: list[tuple[str, Op]] = []
        for n in dict.fromkeys(members):
            a = ax if n == w else 0
            if s.keep is not None:
                items.append((n, Slice(a, index=tuple(s.keep))))
            elif s.size < old:
                items.append((n, Slice(a, stop=s.size)))
            elif s.size > old:
                items.append((n, Pad(a, s.size, "zeros" if s.reinit else s.fill, seed=tensor_seed(s.seed, n), fan_in=fan)))
            if s.reinit:
                items.append((n, Fresh("default", tensor_seed(s.seed, n), fan)))
        how = ("re-initialised (PyTorch init)" if s.reinit else f"classes {s.keep}" if s.keep is not None else
               f"the first {s.size}" if s.size < old else f"new rows {s.fill}" if s.size > old else "unchanged")
        changes = self._apply(rule, items)
        return changes, list(dict.fromkeys(members)), f"{s.layer}: {old} -> {s.size} classes ({how})"

    def _channels(self, rule: Rule) -> tuple[list[str], list[str], str]:
        s = rule.spec
        self._layer_tensors(rule, s.layer)
        w = self._weight(rule, s.layer)
        kind = self._kind(s.layer, w)
        wm = self.entries[w].meta
        if wm.rank < 2:
            raise self.err(rule, f"{s.layer} ({kind}) has no output channels to change (its weight is {fmt_shape(wm.shape)})")
        out_ax = 1 if kind.startswith("ConvTranspose") else 0
        old = wm.shape[out_ax]
        readers = s.then if s.then is not None else self._readers(rule, s.layer)
        # (name, axis, role, block): role out = the producer, norm weight/var = 1, zero = zeros
        members: list[tuple[str, int, str, int]] = [(w, out_ax, "out", 1)]
        for n in self._layer_tensors(rule, s.layer):
            if n != w and self.entries[n].meta.rank == 1 and self.entries[n].meta.shape[0] == old:
                members.append((n, 0, "out", 1))
        for r in readers:
            members += self._reader_members(rule, r, old)
        if s.keep is not None:
            bad = [k for k in s.keep if k >= old]
            if bad:
                raise self.err(rule, f"keep: channel {bad[0]} is out of range for the {old} channels of {s.layer}")
        if s.by == "l1" and s.size >= old:
            raise self.err(rule, f"by: l1 chooses the channels to keep when pruning; this rule takes {s.layer} from "
                           f"{old} to {s.size} channels")
        sel = None
        if s.by == "l1" and s.size < old:
            e = self.entries[w]
            sel = Selection(w, e.source, tuple(e.ops), out_ax, s.size) if e.source is not None else None
            if sel is None:
                raise self.err(rule, f"{w} is made by the rules, not read: its L1 norms are not known")
        items: list[tuple[str, Op]] = []
        for n, ax, role, block in members:
            lw = self.entries.get(self._weight(rule, L.layer_of(n)))
            fan = L.fan_in(tuple(s.size if (i == out_ax and n == w) else d for i, d in enumerate(lw.meta.shape)))
            size = self.entries[n].meta.shape[ax] // old * s.size if block > 1 else s.size
            if s.size < old:
                if sel is not None:
                    items.append((n, Select(ax, sel, block)))
                else:
                    from .rules.channels import blocks

                    idx = tuple(blocks(s.keep if s.keep is not None else range(s.size), block))
                    items.append((n, Slice(ax, index=idx) if s.keep is not None else Slice(ax, stop=size)))
            elif s.size > old:
                if role == "out":
                    items.append((n, Pad(ax, size, s.fill, seed=tensor_seed(s.seed, n), fan_in=fan)))
                elif role == "one":
                    items.append((n, Pad(ax, size, "constant", value=1.0)))
                else:
                    items.append((n, Pad(ax, size, "zeros")))
        how = ("largest L1 norm" if sel is not None else f"channels {s.keep}" if s.keep is not None else
               "the first" if s.size < old else f"new channels {s.fill}, read with zero weights" if s.size > old
               else "unchanged")
        changes = self._apply(rule, items)
        chain = ", ".join([s.layer, *readers])
        return changes, [n for n, *_ in members], f"{s.layer}: {old} -> {s.size} channels ({how}) through {chain}"

    def _readers(self, rule: Rule, layer: str) -> list[str]:
        module = self.target.module if self.target is not None else None
        if module is None:
            raise self.err(rule, f"which layers read {layer}'s channels is not known: give then: [...] (or a "
                           "target model, whose graph shows them)")
        from .trace import channel_readers

        found, why = channel_readers(module, layer)
        if why:
            raise self.err(rule, f"the target's graph: {why}")
        if not found:
            raise self.err(rule, f"the target's graph shows no layer reading {layer}'s channels: give then: [...]")
        return found

    def _reader_members(self, rule: Rule, layer: str, old: int) -> list[tuple[str, int, str, int]]:
        names = self._layer_tensors(rule, layer)
        w = next((n for n in names if L.split_key(n)[1] in ("weight", "kernel", "gamma")), names[0])
        kind = self._kind(layer, w)
        local = {L.split_key(n)[1]: n for n in names}
        if kind.startswith(("BatchNorm", "InstanceNorm")) or kind == "?" and all(
                self.entries[n].meta.rank <= 1 for n in names):
            out = []
            for var, n in local.items():
                m = self.entries[n].meta
                if m.rank == 1 and m.shape[0] == old:
                    out.append((n, 0, "one" if var in ("weight", "running_var", "gamma", "moving_variance") else "zero", 1))
            if not out:
                raise self.err(rule, f"{layer} ({kind}) holds no per-channel tensor of {old}")
            return out
        if kind in ("LayerNorm", "GroupNorm"):
            raise self.err(rule, f"{layer} ({kind}) normalises across channels: its statistics change with "
                           "the width, so it cannot follow a width change unchanged")
        wm = self.entries[w].meta
        grouped = self.target is not None and layer in self.target.layers and \
            (self.target.layers[layer].attrs.get("groups") or 1) > 1
        if wm.rank >= 3 and wm.shape[1] == 1 and wm.shape[0] != old and wm.shape[0] % old == 0 and \
                (grouped or self.target is None or layer not in self.target.layers):
            raise self.err(rule, f"{layer} is a depthwise conv with a channel multiplier ({wm.shape[0]} outputs from "
                           f"{old} channels): a channels rule cannot follow it")
        if wm.rank >= 3 and wm.shape[1] == 1 and wm.shape[0] == old and kind.startswith("Conv") and \
                not (self.target is not None and layer in self.target.layers
                     and (self.target.layers[layer].attrs.get("groups") or 1) == 1):
            return [(n, 0, "out", 1) for n in names if self.entries[n].meta.rank >= 1
                    and self.entries[n].meta.shape[0] == old]  # depthwise: channels pass through, filled as the producer
        ax = 0 if kind.startswith("ConvTranspose") else 1
        if wm.rank < 2:
            raise self.err(rule, f"{layer} ({kind}) does not read channels (its weight is {fmt_shape(wm.shape)})")
        n_in = wm.shape[ax]
        if n_in % old:
            raise self.err(rule, f"{w} {fmt_shape(wm.shape)} reads {n_in} inputs, not a multiple of {old} channels")
        return [(w, ax, "zero", n_in // old)]

    def _rename_map(self, rule: Rule) -> dict[str, str]:
        s = rule.spec
        if s.map is None:
            pat = re.compile(s.pattern)
            names = self.select(rule, None, required=False) if s.classes else list(self.entries)
            mapping = {n: pat.sub(s.replace, n) for n in names if pat.search(n)}
            if not mapping and not rule.optional:
                cls = f" in layers of class {', '.join(s.classes)}" if s.classes else ""
                raise self.err(rule, f"pattern {s.pattern!r} matches no key{cls}", _close(s.pattern, self.entries))
            return mapping
        mapping: dict[str, str] = {}
        for src, dst in s.map.items():
            if "{" in src:
                rx, names = _template(src)
                missing = set(re.findall(r"\{(\w+)\}", dst)) - set(names)
                if missing:
                    raise self.err(rule, f"map {src!r} -> {dst!r}: placeholder {{{missing.pop()}}} is not in the source")
                try:
                    hit = {n: dst.format(**m.groupdict()) for n in self.entries if (m := rx.fullmatch(n))}
                except (KeyError, IndexError, ValueError) as ex:
                    raise self.err(rule, f"map {src!r} -> {dst!r}: invalid placeholder ({ex})") from None
            else:
                hit = {src: dst} if src in self.entries else {}
            if s.classes:
                hit = {n: v for n, v in hit.items() if self.class_of(n) in s.classes}
            if not hit and not rule.optional:
                raise self.err(rule, f"map entry {src!r} matches no key", _close(src, self.entries))
            for n in hit:
                if n in mapping:
                    raise self.err(rule, f"key {n!r} is matched by two map entries")
            mapping.update(hit)
        return mapping

    def _bind(self, rule: Rule, name: str, meta: TensorMeta) -> Op | None:
        s = rule.spec
        if rule.op == "transpose":
            if s.layout in layouts.DEPTHWISE_LAYOUTS:
                return Depthwise(s.layout)
            if s.layout is not None:
                return Transpose(layouts.parse(s.layout), s.layout)
            return Transpose(tuple(s.perm))
        if rule.op == "flatten_order":
            if s.hwc is not None:
                return FlattenOrder(tuple(s.hwc), s.axis)
            return FlattenOrder(tuple(s.dims), s.axis, layouts.parse(s.layout), s.layout)
        if rule.op == "reorder_blocks":
            return ReorderBlocks(tuple(s.order), s.axis)
        if rule.op == "in_channels":
            self._refuse_grouped(rule, name)
            return InChannels(s.size, s.mode, s.axis, tuple(sorted((j, tuple(v) if isinstance(v, list) else (v,))
                                                                  for j, v in (s.map or {}).items())), s.fill)
        if rule.op == "resize_kernel":
            return ResizeKernel(tuple(s.size), s.method, s.interpolation, s.antialias)
        if rule.op == "resample_pos_embed":
            old = tuple(s.from_) if s.from_ is not None else None
            if old is None and meta.rank in (2, 3):
                old = square_grid(meta.shape[meta.rank - 2], s.prefix_tokens)
                if old is None:
                    raise OpError(f"{meta.shape[meta.rank - 2]} tokens less {s.prefix_tokens} prefix token(s) "
                                  "are not a square grid: give from: [h, w]")
            return ResamplePosEmbed(old or (0, 0), tuple(s.to), s.prefix_tokens, s.method, s.antialias)
        if rule.op == "bn_eps":
            return AddScalar(s.from_eps - s.to_eps)
        if rule.op == "reshape":
            return Reshape.squeezing(meta) if s.squeeze else Reshape.to_shape(meta, s.shape)
        if rule.op == "slice":
            return Slice(s.axis, s.start, s.stop, s.step, tuple(s.index) if s.index is not None else None)
        if rule.op == "cast":
            from . import dtypes

            if not dtypes.get(meta.dtype).floating:
                if s.keys is None:
                    return None  # "cast everything" leaves integer tensors alone
                raise self.err(rule, f"{name} is {meta.dtype}; only floating-point tensors can be cast")
            return Cast(s.dtype)
        if rule.op == "pad":
            fan = None
            if s.fill == "default":
                fan = self._fan_in(rule, name, meta)
            return Pad(s.axis, s.size, s.fill, s.value or 0.0, s.std if s.std is not None else 0.02,
                       tensor_seed(s.seed, name), fan)
        raise AssertionError(rule.op)

    def _fan_in(self, rule: Rule, name: str, meta: TensorMeta) -> int:
        if meta.rank >= 2:
            shape = list(meta.shape)
            ax = rule.spec.axis % meta.rank
            shape[ax] = rule.spec.size
            return L.fan_in(tuple(shape))
        w = self._find_weight(L.split_key(name)[0], min_rank=2)
        if w is not None:
            return L.fan_in(self.entries[w].meta.shape)
        raise self.err(rule, f"{name}: fill 'default' needs the layer's weight to compute fan_in "
                       "(none found beside it)")

    # -- validation ------------------------------------------------------------------------
    def validate(self, step: Step, rule: Rule) -> None:
        metas = {n: e.meta for n, e in self.entries.items()}
        step.tensors = len(metas)
        step.params = count_params(metas, self.target)
        t = self.target
        if t is not None:
            for n in step.touched:
                if n not in metas:
                    continue
                if n not in t.tensors:
                    step.not_in_target.append(n)
                elif t.tensors[n].shape == metas[n].shape:
                    step.fit_target += 1
                else:
                    step.off_target.append(f"{n} {fmt_shape(metas[n].shape)} (target {fmt_shape(t.tensors[n].shape)})")
            for layer in dict.fromkeys(L.layer_of(n) for n in step.touched):
                tl = t.layers.get(layer)
                if tl is None:
                    continue
                have = sum(m.numel for n, m in metas.items() if L.layer_of(n) == layer
                           and L.split_key(n)[1] not in tl.buffers | L.BUFFER_NAMES)
                step.layers.append({"layer": layer or "(root)", "params": have, "target_params": tl.params,
                                    "ok": have == tl.params})
        ex = rule.expect
        if ex is None:
            return
        step.expect_checked = True
        for n, shape in (ex.shapes or {}).items():
            if n not in metas:
                step.expect_errors.append(f"expected tensor {n} {fmt_shape(shape)}, but there is no such tensor")
            elif list(metas[n].shape) != list(shape):
                step.expect_errors.append(f"expected {n} {fmt_shape(shape)}, got {fmt_shape(metas[n].shape)}")
        if ex.params is not None and ex.params != step.params:
            step.expect_errors.append(f"expected {ex.params} params, got {step.params}")
        if ex.tensors is not None and ex.tensors != step.tensors:
            step.expect_errors.append(f"expected {ex.tensors} tensors, got {step.tensors}")
        for layer, want in (ex.layer_params or {}).items():
            have = sum(m.numel for n, m in metas.items() if L.layer_of(n) == layer and not _is_buffer(n, t))
            if have != want:
                step.expect_errors.append(f"expected layer {layer} to hold {want} params, got {have}")


def fit_report(metas: dict[str, TensorMeta], target: Target) -> Fit:
    missing = [n for n in target.tensors if n not in metas]
    unexpected = [n for n in metas if n not in target.tensors]
    mismatched, notes = [], []
    for n, m in metas.items():
        t = target.tensors.get(n)
        if t is None:
            continue
        if t.shape != m.shape:
            mismatched.append({"name": n, "checkpoint": list(m.shape), "target": list(t.shape),
                               "hint": mismatch_hint(n, m, t, metas, target)})
        elif t.dtype != m.dtype:
            notes.append(f"{n}: {m.dtype} in the checkpoint, {t.dtype} in the target (load_state_dict casts)")
    fits = not (missing or unexpected or mismatched)
    causes = []
    if not fits:
        from .diagnose import diagnose

        causes = diagnose({n: m.shape for n, m in metas.items()}, {n: m.shape for n, m in target.tensors.items()},
                          execution_order(target),
                          groups={n: ly.attrs["groups"] for n, ly in target.layers.items()
                                  if isinstance(ly.attrs.get("groups"), int) and ly.attrs["groups"] > 1})
    return Fit(fits=fits, missing=missing, unexpected=unexpected, mismatched=mismatched,
               params=count_params(metas, target), target_params=target.params, notes=notes, causes=causes)


def execution_order(target: Target) -> list[str]:
    """The target's tensor names, layer by layer in execution order when it is a model fx can
    trace (a model may define its head before its stem), else in the order it lists them."""
    names = list(target.tensors)
    if target.module is None:
        return names
    from .trace import trace

    tr = trace(target.module)
    if not tr.traced:
        return names
    rank = {m: i for i, m in enumerate(tr.order)}
    return sorted(names, key=lambda n: rank.get(L.layer_of(n), len(rank)))


def mismatch_hint(name: str, have: TensorMeta, want: TensorMeta, metas, target: Target) -> str:
    """Explain one shape mismatch in layer terms."""
    layer, _ = L.split_key(name)
    tl = target.layers.get(layer)
    local = {L.split_key(n)[1]: m for n, m in metas.items() if L.layer_of(n) == layer}
    ours = L.infer_layer(layer, local, tl.kind if tl else None)
    parts = []
    if tl is not None and ours.attrs and tl.attrs:
        diff = L.differences(ours, tl)
        parts.append(f"{ours.describe()} vs {tl.describe()}")
        if diff:
            parts.append("; ".join(map(str, diff)))
        parts.append(f"{ours.params} vs {tl.params} params")
    from .diagnose import has_registers, pos_grids, prefix_tokens

    shapes = {n: m.shape for n, m in metas.items()}
    pos = pos_grids(name, have.shape, want.shape, prefix_tokens(shapes), has_registers(shapes))
    if pos is not None:
        p, old, new = pos
        grid = (lambda g, n: "x".join(map(str, g)) + " grid" if g else f"{n - p} tokens, not a square grid")
        parts.append(f"a position embedding: {p} prefix token(s) + {grid(old, have.shape[-2])} vs "
                     f"{grid(new, want.shape[-2])}")
    if sorted(have.shape) == sorted(want.shape) and have.shape != want.shape:
        parts.append("same sizes in another order: a layout difference (transpose)?")
    return "; ".join(parts) if parts else f"{fmt_shape(have.shape)} vs {fmt_shape(want.shape)}"


KERAS_BN_EPS = T.KERAS_EPS["BatchNormalization"]


def eps_warnings(p: "_Planner", target: Target, layer_configs: dict[str, dict]) -> list[str]:
    """Keras BatchNormalization eps (1e-3 by default) vs the target's BatchNorm eps (1e-5); Flax's
    norms' default eps (the file does not record it: BatchNorm 1e-5, LayerNorm/GroupNorm 1e-6)."""
    out = []
    for name, e in p.entries.items():
        cls = p.source_class.get(e.source) if e.source is not None else None
        if cls != "BatchNormalization" and cls not in T.FLAX_EPS:
            continue
        layer, var = L.split_key(name)
        src_layer, src_var = L.split_key(e.source)
        tl = target.layers.get(layer)
        if tl is None or "eps" not in tl.attrs:
            continue
        if cls in T.FLAX_EPS:  # only where the source is Flax's (its variable names), not a torch LayerNorm
            if src_var != ("var" if cls == "BatchNorm" else "scale"):
                continue
            who, src_eps = f"Flax {cls} (default; the file does not record it)", T.FLAX_EPS[cls]
        else:
            if var != "running_var":
                continue
            who = "Keras BatchNormalization"
            src_eps = float((layer_configs.get(src_layer) or {}).get("epsilon", KERAS_BN_EPS))
        if any(isinstance(op, AddScalar) for op in e.ops) or abs(src_eps - tl.attrs["eps"]) <= 1e-12:
            continue  # eps already folded by a bn_eps rule, or the same
        msg = (f"{layer}: {who} eps {src_eps:g}, target {tl.kind} eps {tl.attrs['eps']:g}: outputs will differ "
               f"slightly. Build the layer with eps={src_eps:g}")
        if var == "running_var":
            msg += (f", or fold the difference into running_var with `- bn_eps: {{keys: '^{re.escape(name)}$', "
                    f"from: {src_eps:g}, to: {tl.attrs['eps']:g}}}`")
        out.append(msg)
    return out


def make_plan(metas: dict[str, TensorMeta], rules: list[Rule], target: Target | None = None, *,
              classes: dict[str, str] | None = None, layer_configs: dict[str, dict] | None = None) -> Plan:
    """Fold ``rules`` over ``metas``. Raises RulesError when a rule cannot apply."""
    p = _Planner(metas, target, classes)
    steps = []
    for rule in rules:
        changes, touched, summary = p.run(rule)
        step = Step(index=len(steps) + 1, rule=rule.op, summary=summary, where=rule.where(),
                    changes=changes, touched=[n for n in touched if n in p.entries])
        p.validate(step, rule)
        steps.append(step)
    final = {n: e.meta for n, e in p.entries.items()}
    fit = fit_report(final, target) if target is not None else None
    warnings = eps_warnings(p, target, layer_configs or {}) if target is not None else []
    return Plan(inputs=dict(metas), entries=p.entries, steps=steps, target=target, fit=fit, warnings=warnings)


def _spec_summary(rule: Rule) -> str:
    """A rule's description when it touched nothing (an optional rule that matched no tensor)."""
    s = rule.spec
    what = getattr(s, "layout", None) or (list(s.perm) if getattr(s, "perm", None) else "")
    if rule.op == "reshape":
        what = "squeeze" if s.squeeze else fmt_shape(s.shape)
    cls = f" [{', '.join(s.classes)}]" if getattr(s, "classes", None) else ""
    return f"{rule.op} {what}{cls} (matched nothing)".replace("  ", " ")


def _template(src: str) -> tuple[re.Pattern, list[str]]:
    """``'layers/{n}/w'`` -> a regex with one named group per placeholder (one path segment)."""
    names: list[str] = []
    out = ""
    for lit, name in re.findall(r"([^{]*)(?:\{(\w+)\})?", src):
        out += re.escape(lit)
        if name:
            if name in names:
                out += f"(?P={name})"
            else:
                names.append(name)
                out += f"(?P<{name}>[^./]+)"
    return re.compile(out), names
