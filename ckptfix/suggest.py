"""suggest: write the rules that make a checkpoint fit a target, then prove them by planning.

Order of attempts: exact names; a known source convention (Keras/TF names and layouts: the
``keras-to-torch`` preset); prefixes to strip or add (DDP, torch.compile, Lightning, ...); matching
layers by order and shape where names do not correspond; unambiguous layouts per tensor; channel
changes (pad/slice), marked ``# review:``. Every step is re-planned on metadata before the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .errors import one_line
from . import diagnose as D
from . import layers as L
from .plan import Plan, make_plan
from .rules import parse_text
from .target import Target
from .tensors import TensorMeta

KERAS_FORMATS = ("keras-h5", "keras-archive", "keras-sharded", "tf-checkpoint", "npz", "npy")


@dataclass
class Suggestion:
    text: str                       # the rules file
    plan: Plan
    unmatched: dict = field(default_factory=dict)   # what is left: missing / unexpected / mismatched

    @property
    def fits(self) -> bool:
        return self.plan.fit is not None and self.plan.fit.fits


class _Builder:
    def __init__(self, metas, classes, target: Target, target_spec: str | None, source: str) -> None:
        self.metas, self.classes, self.target = metas, classes, target
        self.header = [f"# Rules written by `ckptfix suggest` for {source}", "# Lines marked `review:` change values: check them before you rely on the result."]
        self.doc: dict = {"ckptfix": 1}
        if target_spec:
            self.doc["target"] = target_spec
        self.items: list[tuple[str, dict]] = []   # (comment, rule)

    def text(self) -> str:
        # comments carry names from the checkpoint: one line each, or a name could add rules
        out = [one_line(h) for h in self.header] + [yaml.safe_dump(self.doc, sort_keys=False, width=200).rstrip()]
        if not self.items:
            out.append("rules: []")
            return "\n".join(out) + "\n"
        out.append("rules:")
        for comment, rule in self.items:
            if comment:
                out += [f"  # {one_line(ln)}" for ln in comment.splitlines()]
            out += [D.rule_line(op, body) for op, body in rule.items()]
        return "\n".join(out) + "\n"

    def plan(self) -> Plan:
        rf = parse_text(self.text(), "<suggest>")
        return make_plan(self.metas, rf.rules, self.target, classes={**self.classes, **(rf.layer_classes or {})})

    def add(self, comment: str, rule: dict) -> None:
        self.items.append((comment, rule))


def _layers_in_order(names) -> list[str]:
    return list(dict.fromkeys(L.layer_of(n) for n in names))


def _match_by_order(cur: dict[str, TensorMeta], target: Target) -> dict[str, str]:
    """Pair unexpected layers with missing layers in order, when variable names and shapes agree."""
    unexpected = [n for n in cur if n not in target.tensors]
    missing = [n for n in target.tensors if n not in cur]
    ul, ml = _layers_in_order(unexpected), _layers_in_order(missing)
    def sig(layer, names, shapes):
        return tuple(sorted((L.split_key(n)[1], tuple(sorted(shapes[n].shape))) for n in names if L.layer_of(n) == layer))
    usig = {ly: sig(ly, unexpected, cur) for ly in ul}
    msig = {ly: sig(ly, missing, target.tensors) for ly in ml}
    mapping, j = {}, 0
    for u in ul:
        for k in range(j, len(ml)):
            if usig[u] == msig[ml[k]]:
                m = ml[k]
                for n in unexpected:
                    if L.layer_of(n) == u:
                        mapping[n] = L.join_key(m, L.split_key(n)[1])
                j = k + 1
                break
    return mapping


def suggest(metas: dict[str, TensorMeta], target: Target, *, classes: dict[str, str] | None = None,
            source_format: str = "", target_spec: str | None = None, source: str = "the checkpoint") -> Suggestion:
    b = _Builder(metas, classes or {}, target, target_spec, source)
    if source_format in KERAS_FORMATS or any("/" in n for n in metas):
        b.doc["include"] = ["keras-to-torch"]
        b.header.append("# keras-to-torch: Keras/TF layouts by layer class, then names (see README).")
    plan = b.plan()
    for _ in range(3):  # prefixes may stack (e.g. a Lightning `model.` around a DDP `module.`)
        cause = D.prefix_cause(plan.metas, target.tensors)
        if cause is None:
            break
        b.add(cause.message, cause.rules[0])
        plan = b.plan()
    mapping = _match_by_order(plan.metas, target)
    if mapping:
        b.add("names do not correspond: matched layer by layer, in order, by variable names and shapes",
              {"rename": {"map": mapping}})
        plan = b.plan()
    metas_now = plan.metas
    shapes = {n: m.shape for n, m in metas_now.items()}
    want = {n: m.shape for n, m in target.tensors.items()}
    for n in list(shapes):
        if n in want and shapes[n] != want[n]:
            c = D.layout_cause(n, shapes[n], want[n])
            if c is not None and c.rules and not c.review:
                b.add(c.message, c.rules[0])
            elif c is not None and c.review:
                b.header.append(f"# not transposed, ambiguous: {c.message}")
    plan = b.plan()
    if plan.fit is not None and not plan.fit.fits:
        for c in D.diagnose({n: m.shape for n, m in plan.metas.items()}, want, list(target.tensors)):
            if c.kind in ("num_classes", "channels", "in_channels") and c.rules:
                b.add(f"review: {c.message}", c.rules[0])
            elif c.kind == "variant":
                b.header.append(f"# cannot fix: {c.message}")
        plan = b.plan()
    fit = plan.fit
    unmatched = {} if fit is None or fit.fits else {"missing": fit.missing, "unexpected": fit.unexpected,
                                                      "mismatched": fit.mismatched}
    return Suggestion(b.text(), plan, unmatched)


__all__ = ["suggest", "Suggestion"]
