"""Human-readable text for the CLI (plain aligned text: readable in a terminal, a log or a pipe)."""

from __future__ import annotations

from .errors import one_line as _s
from .plan import Fit, Plan
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


def steps_text(plan: Plan) -> str:
    rows = []
    for s in plan.steps:
        changes = "; ".join(s.changes[:3]) + (f"; ... ({len(s.changes)} in all)" if len(s.changes) > 3 else "")
        if plan.target is not None:
            checks = [f"{s.fit_target}/{len(s.touched)} fit target"] if s.touched else []
            bad_layers = [f"{ly['layer']} {ly['params']}/{ly['target_params']} params" for ly in s.layers if not ly["ok"]]
            ok_layers = [ly for ly in s.layers if ly["ok"]]
            if ok_layers:
                checks.append(f"{len(ok_layers)} layer(s) match target params")
            if bad_layers:
                checks.append("layer params differ: " + ", ".join(bad_layers[:2]))
        else:
            checks = []
        checks += [f"EXPECT FAILED: {e}" for e in s.expect_errors]
        if s.expect_checked and not s.expect_errors:
            checks.append("expect ok")
        rows.append([str(s.index), s.summary, s.where, changes or "-", human_count(s.params), "; ".join(checks) or "-"])
    return _table(rows, ["#", "rule", "where", "changes", "params", "checks"])



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
