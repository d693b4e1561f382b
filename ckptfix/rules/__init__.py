"""Rules: the YAML schema, presets, and the ops they apply."""

from __future__ import annotations

from pathlib import Path

from ..errors import RulesError
from .schema import Rule, RulesFile, json_schema, load_yaml, parse_rules

__all__ = ["Rule", "RulesFile", "json_schema", "load_rules", "preset_dir", "presets", "parse_text"]


def preset_dir() -> Path:
    """Presets ship in the wheel as ckptfix/_configs; in a source checkout they are ../configs."""
    here = Path(__file__).resolve().parent.parent
    for d in (here / "_configs", here.parent / "configs"):
        if d.is_dir():
            return d
    return here / "_configs"


def presets() -> dict[str, Path]:
    d = preset_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def parse_text(text: str, source: str = "<rules>", base_dir: Path | None = None, _seen: tuple = ()) -> RulesFile:
    data, lines = load_yaml(text, source)
    rf = parse_rules(data, lines, source, base_dir)
    if rf.include:
        # included files' rules run first, in order; their classes are defaults this file overrides
        rules, classes = [], {}
        for ref in rf.include:
            p = Path(ref)
            if base_dir is not None and not p.is_absolute() and (base_dir / p).exists():
                p = base_dir / p
            if str(p) in _seen or ref in _seen:
                raise RulesError(f"{source}: include {ref!r} includes itself")
            inc = load_rules(p if p.exists() else ref, _seen + (source, ref, str(p)))
            rules += inc.rules
            classes.update(inc.layer_classes or {})
        rf.rules = rules + rf.rules
        rf.layer_classes = {**classes, **(rf.layer_classes or {})} or None
    return rf


def load_rules(ref: str | Path, _seen: tuple = ()) -> RulesFile:
    """Load a rules file by path, or a preset by name (``strip-ddp-prefix``)."""
    p = Path(ref)
    if not p.exists():
        known = presets()
        name = str(ref).removesuffix(".yaml")
        if name in known:
            p = known[name]
        else:
            import difflib

            close = difflib.get_close_matches(str(ref), list(known), n=1)
            hint = f"did you mean preset {close[0]!r}?" if close else \
                f"presets: {', '.join(known) or 'none'}"
            raise RulesError(f"{ref}: no such rules file or preset", hint=hint)
    if p.is_dir():
        raise RulesError(f"{p}: is a directory, not a rules file")
    try:
        text = p.read_text("utf-8")
    except UnicodeDecodeError:
        raise RulesError(f"{p}: not a text (UTF-8) file") from None
    except OSError as e:
        raise RulesError(f"{p}: cannot read: {e.strerror or e}") from None
    return parse_text(text, str(ref) if not Path(ref).exists() else str(p), p.parent, _seen)
