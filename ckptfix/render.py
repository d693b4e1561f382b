"""Human-readable text for the CLI (plain aligned text: readable in a terminal, a log or a pipe).

The step table is laid out for ``text_width()``: ``COLUMNS`` when set, else the terminal's width
when stdout is a terminal, else 80 (a log or a pipe); no line of it is wider.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import textwrap

from .errors import one_line as _s
from .plan import Fit, Plan, count_params
from .tensors import fmt_shape

# Names, keys, paths and messages come from files: each goes in through ``_s`` (errors.one_line),
# so a name can neither forge a line of the report nor send a terminal escape.


def _table(rows: list[list[str]], header: list[str] | None = None, indent: str = "  ") -> str:
    allrows = [[_s(c) for c in r] for r in ([header] if header else []) + rows]
    if not allrows:
        return ""
    widths = [max(len(r[i]) for r in allrows) for i in range(len(allrows[0]))]
    lines = []
    for r in allrows:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return "\n".join(lines)


def human_count(n: int) -> str:
    return f"{n:,}"


def inspect_text(info: dict) -> str:
    # a reader may name its format in words (extras' format_description): "TorchScript archive (torchscript)"
    fmt = _s(info["format"]) if not info.get("format_description") else \
        f"{_s(info['format_description'])} ({_s(info['format'])})"
    out = [f"{_s(info['path'])}: {fmt}, {len(info['tensors'])} tensors, "
           f"{human_count(info['params'])} params"]
    if info.get("state_key"):
        out.append(f"state dict at {_s(repr(info['state_key']))}; other entries: "
                   f"{', '.join(map(_s, info.get('container_keys', [])))}")
    rows = []
    for t in info["tensors"]:
        rows.append([t["name"], fmt_shape(t["shape"]), "-> " + t["reads_as"] if t["reads_as"] else "", t["dtype"]])
    out.append(_table(rows))
    out.append("layers:")
    rows = [[ly["name"] or "(root)", ly["description"], human_count(ly["params"])] for ly in info["layers"]]
    out.append(_table(rows, ["layer", "reads as", "params"]))
    out.append(f"total params: {human_count(info['params'])}")
    if info.get("not_weights"):  # reader extras: stored entries that are not model weights, and why
        kinds: dict[str, int] = {}
        for why in info["not_weights"].values():
            kinds[why.split(" of ")[0]] = kinds.get(why.split(" of ")[0], 0) + 1
        out.append("not weights (not counted): " + ", ".join(f"{_s(k)} {n}" for k, n in kinds.items()))
    for w in info.get("warnings", []):
        out.append(f"warning: {_s(w)}")
    return "\n".join(out)


def fit_text(fit: Fit, what: str, target_desc: str) -> str:
    out = []
    what, target_desc = _s(what), _s(target_desc)
    if fit.fits:
        out.append(f"{what} fits {target_desc} ({human_count(fit.params)} params)")
    else:
        out.append(f"{what} does not fit {target_desc}: {len(fit.mismatched)} mismatched, "
                   f"{len(fit.missing)} missing, {len(fit.unexpected)} unexpected")
    for m in fit.mismatched:
        out.append(f"  {_s(m['name'])}: {fmt_shape(m['checkpoint'])} vs target {fmt_shape(m['target'])}")
        if m["hint"]:
            out.append(f"      {_s(m['hint'])}")
    if fit.missing:
        out.append("  missing (in the target, not in the checkpoint): " + _names(fit.missing))
    if fit.unexpected:
        out.append("  unexpected (in the checkpoint, not in the target): " + _names(fit.unexpected))
    out.append(f"  params: {human_count(fit.params)} vs target {human_count(fit.target_params)}")
    for n in fit.notes:
        out.append(f"  note: {_s(n)}")
    if fit.causes:
        from .diagnose import rules_yaml

        out.append("cause:" if len(fit.causes) == 1 else "causes:")
        out += [f"  - {_s(c.message)}" for c in fit.causes]
        fix = rules_yaml(fit.causes)
        if fix:
            out.append("rules that fix it:")
            out.append(fix.rstrip())
    return "\n".join(out)


def _names(names: list[str], limit: int = 8) -> str:
    s = ", ".join(map(_s, names[:limit]))
    return s + (f", ... ({len(names)} in all)" if len(names) > limit else "")


DEFAULT_WIDTH = 80  # the width of text that is not going to a terminal (a log, a pipe, a file)
MIN_WIDTH = 40      # narrower than this, nothing can be laid out; the table is drawn for 40 columns
CHANGES_SHOWN = 3   # changes listed per step (all of them with --verbose)


def text_width(stream=None) -> int:
    """The width reports are laid out for: ``COLUMNS`` when set (a terminal's own, or a user's
    choice for a log), else the terminal's width when ``stream`` (stdout) is a terminal, else 80.
    Never below ``MIN_WIDTH``."""
    env = os.environ.get("COLUMNS", "")
    if env.strip().isdigit() and int(env) > 0:
        return max(MIN_WIDTH, int(env))
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return max(MIN_WIDTH, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns if tty else DEFAULT_WIDTH)


def _wrap(text: str, width: int) -> list[str]:
    """One cell's text as lines of at most ``width`` characters (words broken when they must be;
    a wrapped line's continuation indented by two, when there is room)."""
    if len(text) <= width:
        return [text]
    indent = "  " if width > 8 else ""
    # a shape ([3, 3, 8, 16]) is one word: lines break between names and shapes, not inside one
    glued = re.sub(r"\[[^\[\]]*\]", lambda m: m.group(0).replace(" ", NBSP), text)
    lines = textwrap.wrap(glued, width, subsequent_indent=indent, break_long_words=True,
                          break_on_hyphens=False) or [""]
    return [line.replace(NBSP, " ") for line in lines]


NBSP = "\x00"  # glue: not a break point for textwrap, and never in escaped text (one_line escapes controls)


def _fit_widths(natural: list[int], budget: int, shrink: list[int], caps: dict[int, int] | None = None) -> list[int]:
    """Column widths summing to at most ``budget``. First the columns in ``caps`` give up room down
    to their cap; then the columns in ``shrink``, the widest first, down to a floor; then any
    column, down to 1."""
    widths = list(natural)
    for i, cap in (caps or {}).items():
        widths[i] = max(min(widths[i], cap), widths[i] - max(0, sum(widths) - budget))
    floors = [(min(w, 12) if i in shrink else w) for i, w in enumerate(widths)]
    for pool, floor in ((shrink, floors), (list(range(len(widths))), [1] * len(widths))):
        while sum(widths) > budget:
            cands = [i for i in pool if widths[i] > floor[i]]
            if not cands:
                break
            i = max(cands, key=lambda j: (widths[j], -pool.index(j)))
            widths[i] -= 1
    return widths


def _grid(rows: list[list[list[str]]], header: list[str], width: int, shrink: list[int],
          caps: dict[int, int] | None = None, below: list[str] | None = None, indent: str = "  ") -> list[str]:
    """A table whose cells hold several lines each, laid out in ``width`` columns: cells wrap
    inside their column, so no line is wider than ``width``. ``below``: a line of text under
    each row (or ""), from the second column on, wrapped too."""
    rows = [[[_s(x) for x in cell] for cell in r] for r in rows]
    header = [_s(h) for h in header]
    ncol = len(header)
    natural = [max([len(header[i])] + [len(x) for r in rows for x in r[i]]) for i in range(ncol)]
    widths = _fit_widths(natural, width - len(indent) - 2 * (ncol - 1), shrink, caps)
    out = []
    for n, r in enumerate([[[h] for h in header]] + rows):
        cells = [[w for x in cell for w in _wrap(x, widths[i])] for i, cell in enumerate(r)]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths)]
            out.append((indent + "  ".join(parts)).rstrip())
        if n and below and below[n - 1]:
            lead = " " * min(len(indent) + widths[0] + 2, width // 2)
            out += [lead + line for line in _wrap(_s(below[n - 1]), width - len(lead))]
    return out


def _natural_width(rows: list[list[list[str]]], header: list[str], indent: int = 2) -> int:
    return indent + 2 * (len(header) - 1) + sum(
        max([len(_s(header[i]))] + [len(_s(x)) for r in rows for x in r[i]]) for i in range(len(header)))


def _idle(s) -> bool:
    """A step that did nothing: no change, no tensor touched, nothing checked (an optional rule
    that matched no tensor, as presets for many model shapes have)."""
    return not s.changes and not s.touched and not s.expect_errors and not s.expect_checked


def _ranges(nums: list[int]) -> str:
    out, i = [], 0
    while i < len(nums):
        j = i
        while j + 1 < len(nums) and nums[j + 1] == nums[j] + 1:
            j += 1
        out.append(str(nums[i]) if i == j else f"{nums[i]}-{nums[j]}")
        i = j + 1
    return ", ".join(out)


def _checks(plan: Plan, s) -> list[str]:
    checks = []
    if plan.target is not None:
        if s.touched:
            checks.append(f"{s.fit_target}/{len(s.touched)} fit target")
        ok = [ly for ly in s.layers if ly["ok"]]
        bad = [f"{ly['layer']} {ly['params']}/{ly['target_params']}" for ly in s.layers if not ly["ok"]]
        if ok:
            checks.append(f"{len(ok)} layer(s) params ok")
        if bad:
            checks.append("layer params differ: " + ", ".join(bad[:2]) + (" ..." if len(bad) > 2 else ""))
    checks += [f"EXPECT FAILED: {e}" for e in s.expect_errors]
    if s.expect_checked and not s.expect_errors:
        checks.append("expect ok")
    return checks


def steps_text(plan: Plan, *, verbose: bool = False, width: int | None = None) -> str:
    """The plan's steps as a table at most ``width`` columns wide (``text_width()`` by default).

    Compact unless ``verbose``: steps that did nothing are one line under the table; a step's
    changes are listed one a line, the first ``CHANGES_SHOWN`` of them; a rules file named by
    every step goes in the heading and the column holds line numbers; the params column only
    when the count changes; the checks column only when a step checked something.
    """
    width = width or text_width()
    idle = [] if verbose else [s for s in plan.steps if _idle(s)]
    shown = [s for s in plan.steps if s not in idle]
    sources = {s.where.rpartition(":")[0] for s in plan.steps}
    one_source = len(sources) == 1 and all(s.where.rpartition(":")[2].isdigit() for s in plan.steps)
    params = {s.params for s in plan.steps} | {count_params(plan.inputs, plan.target)}
    checks = {s.index: _checks(plan, s) for s in shown}
    cols = ["#", "rule", "line" if one_source else "where", "changes"]
    if len(params) > 1:
        cols.append("params")
    rows = []
    for s in shown:
        limit = len(s.changes) if verbose else CHANGES_SHOWN
        changes = s.changes[:limit] + ([f"... ({len(s.changes)} in all)"] if len(s.changes) > limit else [])
        row = [[str(s.index)], [s.summary], [s.where.rpartition(":")[2] if one_source else s.where],
               changes or ["-"]]
        if "params" in cols:
            row.append([human_count(s.params)])
        rows.append(row)
    below = None
    if any(checks.values()):  # a column when the table fits as it is, else a line under each row
        wide = [row + [checks[s.index] or ["-"]] for row, s in zip(rows, shown)]
        if _natural_width(wide, cols + ["checks"]) <= width:
            rows, cols = wide, cols + ["checks"]
        else:
            below = ["checks: " + "; ".join(checks[s.index]) if checks[s.index] else "" for s in shown]
    out = []
    about = [f"{len(plan.steps)} step(s)"]
    if one_source:
        about.append(f"rules from {next(iter(sources))}")
    if len(params) == 1:
        about.append(f"{human_count(next(iter(params)))} params throughout")
    out += _wrap_line("  " + "; ".join(about), width)
    if rows:
        # where a cell must give up room: changes first, then checks, the rule, where
        order = [cols.index(c) for c in ("changes", "checks", "rule", "where", "line") if c in cols]
        # the rule's words wrap before the changes do (they are read once; the changes are the news)
        caps = {cols.index("rule"): max(20, width // 4)}
        out += _grid(rows, cols, width, order, caps, below)
    if idle:
        out += _wrap_line(f"  {len(idle)} rule(s) matched no tensor and did nothing: step(s) "
                          f"{_ranges([s.index for s in idle])} (--verbose lists them)", width)
    return "\n".join(out)


def plan_text(plan: Plan, heading: str, *, verbose: bool = False, width: int | None = None) -> str:
    """``heading`` (e.g. "model.keras: plan") over the steps table."""
    width = width or text_width()
    return "\n".join(_wrap_line(heading, width) + [steps_text(plan, verbose=verbose, width=width)])


def _wrap_line(text: str, width: int) -> list[str]:
    return textwrap.wrap(_s(text), width, subsequent_indent="    ", break_long_words=True,
                         break_on_hyphens=False) or [""]


def explain_text(info: dict) -> str:
    out = []
    if info["mismatches"]:
        rows = []
        for m in info["mismatches"]:
            ly = m["layer"]
            model = fmt_shape(m["model"]) if m["model"] is not None else "? (cut off)"
            reading = f"{ly['checkpoint']} -> {ly['model']}" if ly["checkpoint"] and ly["model"] else (ly["checkpoint"] or "")
            rows.append([m["name"], fmt_shape(m["checkpoint"]), model, "; ".join(m["differs"]) or "-", reading])
        out.append(_table(rows, ["tensor", "checkpoint", "model", "differs", "layer"]))
        params = {(m["layer"]["checkpoint"], m["layer"]["checkpoint_params"], m["layer"]["model_params"])
                  for m in info["mismatches"] if m["layer"]["checkpoint_params"] is not None
                  and m["layer"]["model_params"] is not None}
        for desc, a, b in sorted(params, key=str):
            out.append(f"  {_s(desc)}: {human_count(a)} params in the checkpoint, {human_count(b)} in the model")
    if info["missing"]:
        out.append("missing (the model has them, the checkpoint does not): " + _names(info["missing"]))
    if info["unexpected"]:
        out.append("unexpected (the checkpoint has them, the model does not): " + _names(info["unexpected"]))
    out.append("cause:" if len(info["causes"]) == 1 else "causes:")
    for c in info["causes"] or [{"message": "not recognised: compare the shapes above", "fixable": False}]:
        out.append(f"  - {_s(c['message'])}")
    if info["rules_yaml"]:
        out.append("a rules file that fixes it (ckptfix apply CKPT -r fix.yaml -o OUT):")
        out.append(info["rules_yaml"].rstrip())
    elif info["causes"] and not any(c["fixable"] for c in info["causes"]):
        out.append("no rule can fix this.")
    return "\n".join(out)


def batch_line(rec: dict) -> str:
    """One line per input of a batch, as it finishes."""
    took = f" ({rec['seconds']:.2f} s)" if rec.get("seconds") is not None else ""
    inp = _s(rec["input"])
    if rec["status"] == "done":
        where = f" -> {_s(rec['output'])}" if rec.get("output") else ""
        fits = "" if rec.get("fits") is None else (" (fits)" if rec["fits"] else " (does not fit)")
        return f"done     {inp}{where}{fits}{took}"
    if rec["status"] == "skipped":
        return f"skipped  {inp}: {_s(rec.get('reason', ''))} ({_s(rec.get('output'))})"
    return f"failed   {inp}{took}"


def batch_summary(records: list[dict], seconds: float) -> str:
    """The table at the end of a batch: counts, then every input that did not succeed, with why."""
    counts = {k: sum(r["status"] == k for r in records) for k in ("done", "skipped", "failed", "not run")}
    head = (f"{len(records)} input(s) in {seconds:.1f} s: {counts['done']} done, {counts['skipped']} skipped "
            f"(up to date), {counts['failed']} failed"
            + (f", {counts['not run']} not run (stopped at the first failure; --keep-going goes on)"
               if counts["not run"] else ""))
    bad = [r for r in records if r["status"] == "failed"]
    if not bad:
        return head
    width = min(60, max(len(_s(r["input"])) for r in bad))
    rows = [f"  {_s(r['input']):<{width}}  {_s(_reason(r))}" for r in bad]
    return "\n".join([head, "failed:"] + rows)


def _reason(rec: dict) -> str:
    err = rec.get("error") or ""
    prefix = f"{rec['input']}: "
    return err[len(prefix):] if err.startswith(prefix) else err
