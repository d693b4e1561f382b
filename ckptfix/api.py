"""The library API. The CLI is a thin shell over these functions; pipelines call them directly.

    import ckptfix
    result = ckptfix.apply_file("seed_conv10.pt", ["configs/seed-pad-conv.yaml"], "out.pt")
    assert result.ok and result.fits
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from . import layers as L
from . import target as targets
from .errors import CkptfixError, DoesNotFit, exit_code_for, message_for
from .execute import check_output, check_output_name, execute, inputs_of, output_format
from .formats import open_checkpoint
from .plan import Fit, Plan, count_params, fit_report, make_plan
from .rules import RulesFile, load_rules


@dataclass
class Options:
    state_key: str | None = None
    allow_globals: tuple[str, ...] = ()
    #: read checkpoint files that resolve outside the checkpoint's directory (default: refuse)
    allow_outside_files: bool = False
    #: read HDF5-backed inputs in a child process first, with a deadline (``ckptfix.isolate``);
    #: the CLI's single-file commands set it, batch workers are isolated already
    isolate: bool = False

    def open(self, path):
        kwargs = dict(state_key=self.state_key, allow_globals=self.allow_globals,
                      allow_outside=self.allow_outside_files)
        if self.isolate:
            from .isolate import open_isolated

            return open_isolated(path, **kwargs)
        return open_checkpoint(path, **kwargs)

    def open_target(self, path):
        """A target checkpoint: read as inputs are (isolated too), without the inputs' state_key
        and within its own directory."""
        return replace(self, state_key=None, allow_outside_files=False).open(path)


def inspect(path: str | Path, opts: Options | None = None) -> dict:
    """Tensors, layers read from their shapes, parameter counts (the ``inspect --json`` object)."""
    opts = opts or Options()
    with opts.open(path) as r:
        metas = r.metas()
        classes, configs = r.layer_classes(), r.layer_configs()
        info = {"path": str(path), "format": r.format, **r.extras(), "warnings": r.warnings()}
    layers = L.read_layers(metas, classes, configs)
    info["tensors"] = [{"name": n, "shape": list(m.shape), "dtype": m.dtype,
                        "reads_as": L.reads_as(n, layers)} for n, m in metas.items()]
    info["layers"] = [{"name": ly.name, "type": ly.kind, "description": ly.describe(), "params": ly.params,
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in ly.attrs.items()}}
                      for ly in layers.values()]
    info["params"] = count_params(metas)
    return info


def resolve_target(spec, rules: RulesFile | None = None, kwargs: dict | None = None,
                   opts: Options | None = None) -> targets.Target | None:
    """The command line's target, else the rules file's."""
    base = None
    if spec is None and rules is not None:
        spec, kwargs, base = rules.target, kwargs or rules.target_kwargs, rules.base_dir
    if spec is None:
        return None
    opts = opts or Options()
    return targets.resolve(spec, kwargs, base, opener=opts.open_target)


def diff(path: str | Path, target, *, target_kwargs: dict | None = None, opts: Options | None = None) -> Fit:
    """What does not fit, and why, in layer terms."""
    opts = opts or Options()
    tgt = target if isinstance(target, targets.Target) else resolve_target(target, kwargs=target_kwargs, opts=opts)
    with opts.open(path) as r:
        metas = r.metas()
    return fit_report(metas, tgt)


def _rule_refs(refs) -> list:
    """One rules reference (a path, a preset name or a RulesFile) or several, as a list: a single
    string is one reference, never iterated character by character."""
    if isinstance(refs, (str, Path, RulesFile)):
        return [refs]
    return list(refs)


def compose_rules(refs: str | Path | RulesFile | Iterable[str | Path | RulesFile]) -> RulesFile:
    """Several rules files applied in order; the last one naming a target wins. ``refs`` is one
    reference or an iterable of them (``"seed-pad-conv"`` and ``["seed-pad-conv"]`` are the same)."""
    files = [ref if isinstance(ref, RulesFile) else load_rules(ref) for ref in _rule_refs(refs)]
    merged = RulesFile(rules=[r for f in files for r in f.rules], source=", ".join(f.source for f in files),
                       layer_classes={k: v for f in files for k, v in (f.layer_classes or {}).items()} or None,
                       files=[p for f in files for p in f.files])
    for f in files:
        if f.target is not None:
            merged.target, merged.target_kwargs, merged.base_dir = f.target, f.target_kwargs, f.base_dir
    return merged


@dataclass
class Result:
    """What happened to one input (the ``apply``/``check`` JSON Lines object)."""

    input: str
    output: str | None = None
    ok: bool = False
    fits: bool | None = None
    error: str | None = None
    exit_code: int = 0
    steps: list = field(default_factory=list)
    params: int | None = None
    target_params: int | None = None
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    plan: Plan | None = None
    fit: Fit | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"input": self.input, "output": self.output, "ok": self.ok, "fits": self.fits,
             "error": self.error, "steps": [s.to_json() for s in self.steps], "params": self.params,
             "target_params": self.target_params, "warnings": self.warnings,
             "seconds": round(self.seconds, 4)}
        if self.fit is not None:
            d.update(missing=self.fit.missing, unexpected=self.fit.unexpected, mismatched=self.fit.mismatched)
        return d


def plan_file(path: str | Path, rules: RulesFile, target=None, *, target_kwargs: dict | None = None,
              opts: Options | None = None) -> tuple[Plan, Any]:
    """Open ``path`` and plan ``rules`` on its metadata. Returns (plan, open reader)."""
    opts = opts or Options()
    tgt = target if isinstance(target, targets.Target) else resolve_target(target, rules, target_kwargs, opts)
    reader = opts.open(path)
    try:
        classes = {**reader.layer_classes(), **(rules.layer_classes or {})}
        return make_plan(reader.metas(), rules.rules, tgt, classes=classes,
                         layer_configs=reader.layer_configs()), reader
    except BaseException:
        reader.close()
        raise


class _CallerError(Exception):
    """An exception raised by a caller's callback, carried past apply_file's handlers."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def apply_file(path: str | Path, rules: str | Path | RulesFile | Iterable[str | Path | RulesFile], out: str | Path | None = None,
               *, target=None, target_kwargs: dict | None = None, fmt: str | None = None,
               dry_run: bool = False, force: bool = False, shard_size: int | None = None,
               opts: Options | None = None, raise_on_error: bool = False, progress=None,
               verify: bool = False, on_plan: Callable[[Result], None] | None = None) -> Result:
    """Plan, validate and (unless ``dry_run``) write one checkpoint.

    ``progress``: a ``ckptfix.progress.Progress`` told of bytes and tensors as they are written.
    ``verify``: re-read the output before it is put in place; every tensor must hash as produced.
    ``on_plan``: called with the Result (its plan and fit filled in) once the plan has validated,
    before any data is read or written (the CLI prints the plan there).

    Never raises for a bad input or a misfit unless ``raise_on_error``: the Result says what
    failed (``error``) and the exit code the CLI would use.
    """
    t0 = time.perf_counter()
    res = Result(input=str(path), output=str(out) if out is not None else None)
    try:
        rf = rules if isinstance(rules, RulesFile) else compose_rules(rules)
        if out is None and not dry_run:
            raise CkptfixError("no output path (give -o OUT, or --dry-run)")
        if out is not None:
            check_output_name(out, fmt, shard_size)  # before anything is opened
        plan, reader = plan_file(path, rf, target, target_kwargs=target_kwargs, opts=opts)
        with reader:
            if out is not None and not dry_run:
                check_output(inputs_of(path, rf, plan.target.files if plan.target else ()), Path(out), force, reader)
            res.plan, res.steps, res.fit = plan, plan.steps, plan.fit
            res.params = count_params(plan.metas, plan.target)
            res.target_params = plan.target.params if plan.target else None
            res.fits = plan.fit.fits if plan.fit else None
            res.warnings += plan.warnings
            failed = [f"step {s.index} ({s.where}): {e}" for s in plan.steps for e in s.expect_errors]
            if failed:
                raise DoesNotFit(f"{path}: expectation failed: {failed[0]}"
                                 + (f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""))
            if plan.fit is not None and not plan.fit.fits:
                raise DoesNotFit(f"{path}: after the rules, the checkpoint does not fit {plan.target.description}: "
                                 + _misfit_summary(plan.fit))
            kind = output_format(out, fmt, reader.format, shard_size) if not dry_run else None
            if on_plan is not None:
                try:
                    on_plan(res)
                except BaseException as e:  # the caller's failure (a closed stdout ...): theirs, as raised
                    raise _CallerError(e) from e
            if kind is not None:
                written = execute(plan, reader, out, kind, force=force, shard_size=shard_size,
                                  progress=progress, verify=verify)
                res.warnings += written.warnings
            res.warnings += reader.warnings()
        res.ok = True
    except _CallerError as e:
        raise e.error from None
    except CkptfixError as e:
        if raise_on_error:
            raise
        res.error, res.exit_code, res.ok = message_for(e), exit_code_for(e), False
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # a failure mode not mapped yet: still a result, never a crash of the batch
        if raise_on_error:
            raise
        res.error, res.exit_code, res.ok = f"{path}: {message_for(e)}", exit_code_for(e), False
    finally:
        res.seconds = time.perf_counter() - t0
    return res


def check_file(path: str | Path, target=None, rules: Iterable = (), *, target_kwargs: dict | None = None,
               opts: Options | None = None) -> Result:
    """Does ``path`` (after ``rules``, if any) fit ``target``? Never writes."""
    res = apply_file(path, _rule_refs(rules), None, target=target, target_kwargs=target_kwargs, dry_run=True, opts=opts)
    if res.ok and res.fits is None:
        res.ok, res.exit_code, res.error = False, 2, "check needs a target (--target, or a rules file with one)"
    return res


def _misfit_summary(fit: Fit) -> str:
    parts = []
    if fit.mismatched:
        m = fit.mismatched[0]
        parts.append(f"{len(fit.mismatched)} mismatched (e.g. {m['name']} {m['checkpoint']} vs {m['target']})")
    if fit.missing:
        parts.append(f"{len(fit.missing)} missing (e.g. {fit.missing[0]})")
    if fit.unexpected:
        parts.append(f"{len(fit.unexpected)} unexpected (e.g. {fit.unexpected[0]})")
    return "; ".join(parts)


def keras_config(path: str, opts: Options | None = None):
    """The Keras model config in ``path``: a .keras / legacy .h5 file (read as a checkpoint, so it
    gets the same isolation and limits), or a JSON file (``model.to_json()`` or a .keras archive's
    config.json)."""
    from .errors import InputError
    from .formats.keras_h5 import _loads_config
    from .limits import MAX_JSON_MEMBER

    p = Path(path)
    if not p.is_file():
        raise InputError(p, "no such file" if not p.exists() else "not a file")
    if p.suffix.lower() == ".json":
        if p.stat().st_size > MAX_JSON_MEMBER:
            raise InputError(p, f"a Keras config over {MAX_JSON_MEMBER:,} bytes")
        data = _loads_config(p.read_bytes().decode("utf-8", errors="surrogateescape"), "Keras config", p)
    else:
        with (opts or Options()).open(p) as r:
            data = r.extras().get("keras_config")
    if not isinstance(data, dict) or "class_name" not in data or "config" not in data:
        raise InputError(p, "holds no Keras model config (expected {class_name, config} as model.to_json() writes)")
    return data


def config_layers(config) -> tuple[dict[str, str], dict[str, dict]]:
    """({layer path: class}, {layer path: layer config}) of a Keras model config."""
    from .formats.keras_h5 import walk_config

    layers = walk_config(config)
    return {p: c for p, c, _ in layers}, {p: cfg for p, _, cfg in layers}
