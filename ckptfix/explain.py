"""Read a pasted ``load_state_dict`` error: every size mismatch, missing and unexpected key.

Robust to what people paste: the traceback around it, tabs or spaces, lines wrapped or cut off by
a terminal (a cut-off entry is kept with what could be read), several errors in one paste.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

def _loose(pattern: str) -> str:
    """Let every space in ``pattern`` match any whitespace or none (terminal wrapping)."""
    return pattern.replace(" ", r"\s*")


_SIZE = re.compile(_loose(
    r"size mismatch for (?P<name>[^\s:]+): copying a param with shape torch\.Size\(\[(?P<ckpt>[\d,\s]*)\]\)"
    r"(?: from checkpoint, the shape in current model is torch\.Size\(\[(?P<model>[\d,\s]*)\]\))?"))
_LIST = re.compile(_loose(r"(?P<kind>Missing|Unexpected) key\(s\) in state_dict:") + r"(?P<body>.*?)"
                   r"(?=(?:Missing|Unexpected)\s*key\(s\)|size\s*mismatch\s*for|Error\(s\)\s*in\s*loading|$)", re.S)
# a physical line that starts a new logical one (anything else continues a terminal-wrapped line)
_STARTS = ("size mismatch", "Missing key", "Unexpected key", "RuntimeError", "Error(s)", "Traceback", "File ",
           "During handling", "While copying")
_QUOTED = re.compile(r'"([^"\s]+)"')
_MODEL = re.compile(r"Error\(s\) in loading state_dict for (\w+)")


@dataclass
class Mismatch:
    name: str
    checkpoint: tuple[int, ...]
    model: tuple[int, ...] | None     # None when the line was cut off before it


@dataclass
class LoadError:
    model_class: str | None = None
    mismatches: list[Mismatch] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.mismatches or self.missing or self.unexpected)


def _shape(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text))


def parse(text: str) -> LoadError:
    """Everything a load_state_dict error says, from any paste that contains it."""
    flat = ""
    for line in text.replace("\r", "").replace("\t", " ").split("\n"):
        if not line or line[:1].isspace() or line.startswith(_STARTS) or not flat:
            flat += " " + line.strip()
        else:
            flat += line  # a terminal wrapped this line: rejoin without a space
    out = LoadError()
    m = _MODEL.search(flat)
    if m:
        out.model_class = m.group(1)
    seen = set()
    for m in _SIZE.finditer(flat):
        name = m.group("name")
        if name in seen:
            continue
        seen.add(name)
        model = m.group("model")
        out.mismatches.append(Mismatch(name, _shape(m.group("ckpt")), _shape(model) if model is not None else None))
    for m in _LIST.finditer(flat):
        keys = _QUOTED.findall(m.group("body"))
        target = out.missing if m.group("kind") == "Missing" else out.unexpected
        target.extend(k for k in keys if k not in target)
    return out


def explain(text: str) -> dict:
    """The ``explain --json`` object: every entry read as layers, plus causes and fixing rules."""
    from . import diagnose as D
    from . import layers as L

    err = parse(text)
    ckpt = {m.name: m.checkpoint for m in err.mismatches}
    model = {m.name: m.model for m in err.mismatches}
    for n in err.unexpected:
        ckpt.setdefault(n, None)
    for n in err.missing:
        model.setdefault(n, None)
    order = [m.name for m in err.mismatches] + err.missing
    causes = D.diagnose(ckpt, model, order, partial=True)
    rows = []
    for m in err.mismatches:
        a = D._layer(m.name, ckpt)
        b = D._layer(m.name, {k: v for k, v in model.items()}) if m.model is not None else None
        rows.append({
            "name": m.name,
            "checkpoint": list(m.checkpoint),
            "model": list(m.model) if m.model is not None else None,
            "layer": {"checkpoint": a.describe() if a.attrs else None,
                      "model": b.describe() if b is not None and b.attrs else None,
                      "checkpoint_params": a.full_params if a.attrs else None,
                      "model_params": b.full_params if b is not None and b.attrs else None},
            "differs": [str(d) for d in L.differences(a, b)] if b is not None else [],
            "hint": next((c.message for c in causes if m.name in c.names), None),
        })
    return {"model_class": err.model_class, "mismatches": rows, "missing": err.missing,
            "unexpected": err.unexpected, "causes": [c.to_json() for c in causes],
            "rules_yaml": D.rules_yaml(causes)}
