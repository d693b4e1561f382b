"""Rules: the YAML schema, presets, and the ops they apply."""

from __future__ import annotations

from pathlib import Path

from ..errors import RulesError
from .schema import Rule, RulesFile, json_schema, load_yaml, looks_like_rules, parse_rules

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


def parse_text(text: str, source: str = "<rules>", base_dir: Path | None = None, _seen: tuple = (),
               *, included: bool = False) -> RulesFile:
    """Parse a rules file. ``included``: it was named by another rules file's ``include:``; an
    error then never echoes its content unless it is recognisably a rules file."""
    data, lines = _load_included(text, source) if included else load_yaml(text, source)
    if included and not looks_like_rules(data):
        raise RulesError(f"{source}: is not a rules file (included by another)")
    rf = parse_rules(data, lines, source, base_dir)
    if rf.include:
        # included files' rules run first, in order; their classes are defaults this file overrides
        rules, classes = [], {}
        for ref in rf.include:
            p = _include_path(ref, base_dir, source)
            if str(p) in _seen or ref in _seen:
                raise RulesError(f"{source}: include {ref!r} includes itself")
            inc = load_rules(p, _seen + (source, ref, str(p)), included=True)
            rf.files += inc.files
            rules += inc.rules
            classes.update(inc.layer_classes or {})
        rf.rules = rules + rf.rules
        rf.layer_classes = {**classes, **(rf.layer_classes or {})} or None
    return rf


def _include_path(ref: str, base_dir: Path | None, source: str) -> Path:
    """The file an ``include:`` names: one in the including file's directory (or below it),
    else a preset by name (never a path relative to the working directory). Absolute paths and paths that resolve elsewhere (``..``,
    a symlink out) are refused: an include must not read arbitrary files."""
    import os

    p = Path(ref)
    if p.is_absolute():
        raise RulesError(f"{source}: include {ref!r} is an absolute path: refused (includes are "
                         "presets or rules files beside the including file)")
    base = Path(os.path.realpath(base_dir if base_dir is not None else "."))
    cand = base / p
    if not (cand.exists() or cand.is_symlink()):
        known = presets()
        if ref.removesuffix(".yaml") in known:
            return known[ref.removesuffix(".yaml")]
        raise RulesError(f"{source}: include {ref!r}: no such rules file beside it, nor a preset",
                         hint=f"presets: {', '.join(known) or 'none'}")
    real = Path(os.path.realpath(cand))
    if base not in real.parents:
        raise RulesError(f"{source}: include {ref!r} resolves outside {base}: refused (includes are "
                         "presets or rules files beside the including file)")
    return cand


def _load_included(text: str, source: str):
    """load_yaml, but a syntax error says only where (its message can quote the file)."""
    try:
        return load_yaml(text, source)
    except RulesError as e:
        raise RulesError("is not a rules file (invalid YAML; included by another)", source=source,
                         line=e.line) from None


def load_rules(ref: str | Path, _seen: tuple = (), *, included: bool = False) -> RulesFile:
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
    rf = parse_text(text, str(ref) if not Path(ref).exists() else str(p), p.parent, _seen,
                    included=included)
    rf.files.insert(0, p)
    return rf
