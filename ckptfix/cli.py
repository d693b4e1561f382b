"""The command line: parses arguments, calls the library, renders, and maps errors to exit codes
(in ``_run``, the one place that does). Heavy imports (torch) happen only inside commands.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import (EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, EXIT_DOES_NOT_FIT, EXIT_INTERRUPTED, EXIT_OK, CkptfixError,
                     UsageError, exit_code_for, message_for, one_line, printable)
from .batch import DEFAULT_TIMEOUT
from .progress import Bar

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Make checkpoints fit their models: inspect, diff, apply YAML rules, check.")
_state = {"debug": False}


# Everything shown on a terminal goes through errors.one_line / printable: a message is one line
# and no string from a file (a tensor name, a key, a shard name) can forge a line or send escapes.

def _err(msg: str) -> None:
    print(f"ckptfix: error: {one_line(msg)}", file=sys.stderr)


def _warn(msg: str) -> None:
    print(f"ckptfix: warning: {one_line(msg)}", file=sys.stderr)


def _note(msg: str) -> None:
    print(f"ckptfix: {one_line(msg)}", file=sys.stderr, flush=True)


def _out(text: str, *, file=None, flush: bool = False) -> None:
    """A text report (several lines) on stdout (or ``file``), every control but newline escaped."""
    print(printable(text), file=file or sys.stdout, flush=flush)


def _run(fn, *args, **kwargs) -> int:
    """Call ``fn``; turn every failure into one line on stderr and an exit code."""
    try:
        code = fn(*args, **kwargs)
        sys.stdout.flush()  # a reader that went away is seen here, not at the interpreter's exit
        return EXIT_OK if code is None else code
    except BaseException as e:
        if not isinstance(e, Exception) and not isinstance(e, KeyboardInterrupt):
            raise  # SystemExit, typer.Exit: not failures of ours
        code = exit_code_for(e)  # the one exception -> exit-code map (ckptfix.errors)
        if code == EXIT_BROKEN_PIPE:
            return _reader_gone()
        if _state["debug"] and not isinstance(e, KeyboardInterrupt):
            raise
        hint = "" if isinstance(e, (CkptfixError, KeyboardInterrupt)) else " (run with --debug for the traceback)"
        _err(message_for(e) + hint)
        return code


def _reader_gone() -> int:
    """stdout's reader closed the pipe (``ckptfix inspect x | head -1``): stop quietly, as a
    program killed by SIGPIPE would. stdout then points at /dev/null so that the interpreter's
    flush at exit has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_BROKEN_PIPE


def _exit(code: int) -> None:
    raise typer.Exit(code)


def _emit_json(obj) -> None:
    print(json.dumps(obj, default=str))


def _opts(state_key, allow_global, allow_outside: bool = False):
    from .api import Options

    return Options(state_key=state_key, allow_globals=tuple(allow_global or ()), allow_outside_files=allow_outside,
                   isolate=True)


def _kwargs(text: Optional[str]) -> Optional[dict]:
    if text is None:
        return None
    import yaml

    try:
        v = yaml.safe_load(text)
    except yaml.YAMLError as e:
        why = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UsageError(f"--target-kwargs: not a YAML/JSON mapping: {why}") from None
    except RecursionError:
        raise UsageError("--target-kwargs: nested too deeply") from None
    if not isinstance(v, dict):
        raise UsageError("--target-kwargs must be a mapping, e.g. '{num_classes: 15}'")
    return v


def parse_size(text: Optional[str], option: str = "--shard-size") -> Optional[int]:
    """'5GB' -> 5e9, '500MiB' -> 500*2**20, '1024' -> 1024."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", text, re.I)
    if not m:
        raise UsageError(f"{option} {text!r}: give a size like 5GB, 500MB or 2GiB")
    num, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    base = 1024 if binary else 1000
    size = int(num * base ** " kmgt".index(unit or " "))
    if size <= 0:
        raise UsageError(f"{option} must be positive")
    return size


StateKey = typer.Option(None, "--state-key", help="Where the state dict sits in a container (e.g. state_dict).")
AllowGlobal = typer.Option(None, "--allow-global", help="Build a vetted data type (argparse.Namespace, datetime.datetime, numpy.dtype, ...) as the real object; other pickle globals are kept as inert data, never run.")
AllowOutside = typer.Option(False, "--allow-outside-files", help="Read checkpoint files (shards, TF data) that resolve outside the checkpoint's directory; refused by default.")
TargetKw = typer.Option(None, "--target-kwargs", help="Keyword arguments for a model-factory target, as YAML: '{num_classes: 15}'.")
Json = typer.Option(False, "--json", help="Machine-readable output (see README).")
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bar and no report; errors and warnings only.")
Verbose = typer.Option(False, "--verbose", "-v", help="The whole plan: steps that did nothing, and every change.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"ckptfix {__version__}")
        raise typer.Exit(0)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
         version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                      help="Print the version and exit.")) -> None:
    _state["debug"] = debug


@app.command()
def inspect(ckpt: str, as_json: bool = Json, state_key: Optional[str] = StateKey,
            allow_global: Optional[List[str]] = AllowGlobal, allow_outside: bool = AllowOutside) -> None:
    """List tensors, read layers from their shapes (Conv2d(in=3, out=10, kernel=5x5)), count params."""

    def go():
        from . import api
        from .render import inspect_text

        info = api.inspect(ckpt, _opts(state_key, allow_global, allow_outside))
        if as_json:
            _emit_json(info)
        else:
            _out(inspect_text(info))
    _exit(_run(go))


@app.command()
def diff(ckpt: str, target: str = typer.Option(..., "--target", "-t", help="Checkpoint, module:callable, file.py:callable, layer spec."),
         target_kwargs: Optional[str] = TargetKw, as_json: bool = Json,
         state_key: Optional[str] = StateKey, allow_global: Optional[List[str]] = AllowGlobal,
         allow_outside: bool = AllowOutside) -> None:
    """Say what does not fit the target, and why, in layer terms. Exit 0 if it fits, 1 if not."""

    def go():
        from . import api
        from .render import fit_text

        opts = _opts(state_key, allow_global, allow_outside)
        tgt = api.resolve_target(target, kwargs=_kwargs(target_kwargs), opts=opts)
        fit = api.diff(ckpt, tgt, opts=opts)
        if as_json:
            _emit_json(fit.to_json())
        else:
            _out(fit_text(fit, str(ckpt), tgt.description))
        return EXIT_OK if fit.fits else EXIT_DOES_NOT_FIT
    _exit(_run(go))


def _relative_to(spec: str, where: Optional[Path]) -> str:
    """Rewrite a path-like target so that it resolves from a rules file written in ``where``."""
    import os

    if where is None:
        return spec
    path, sep, attr = spec.rpartition(":") if ".py:" in spec else (spec, "", "")
    if not Path(path).exists():
        return spec
    return os.path.relpath(Path(path).resolve(), where.resolve()) + sep + attr


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    parts = text.lower().replace(",", "x").split("x")
    if not all(p.strip().isdigit() and int(p) > 0 for p in parts) or len(parts) > 4:
        raise UsageError(f"--input-shape {text!r}: give positive sizes like 3x12x16 (channels first, no batch)")
    return (1, *(int(p) for p in parts))


@app.command()
def suggest(ckpt: str, target: str = typer.Option(..., "--target", "-t", help="What the checkpoint must fit."),
            out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the rules file here (default: print it)."),
            force: bool = typer.Option(False, "--force", help="Replace an existing rules file."),
            target_kwargs: Optional[str] = TargetKw, as_json: bool = Json,
            state_key: Optional[str] = StateKey, allow_global: Optional[List[str]] = AllowGlobal,
            allow_outside: bool = AllowOutside,
            input_shape: Optional[str] = typer.Option(
                None, "--input-shape", help="The model's input as the target takes it, e.g. 3x12x16 "
                "(channels first, no batch): fixes the feature map a Flatten -> Linear reads when the "
                "checkpoint has no Keras config."),
            keras_config: Optional[str] = typer.Option(
                None, "--keras-config", help="A Keras model config for a checkpoint that has none (.npz, TF "
                "checkpoints, .weights.h5): a .keras or legacy .h5 file, or the JSON of model.to_json(). "
                "Gives layer classes, the graph and Permute/Flatten facts."),
            verbose: bool = Verbose) -> None:
    """Write a commented rules file that makes CKPT fit the target, proven by a dry-run plan. Exit 1 if it cannot."""

    def go():
        from . import api
        from .execute import check_output, inputs_of
        from .formats.atomic import atomic_file
        from .render import fit_text, plan_text
        from .errors import InputError
        from .layers import split_key
        from .suggest import suggest as run_suggest

        opts = _opts(state_key, allow_global, allow_outside)
        tgt = api.resolve_target(target, kwargs=_kwargs(target_kwargs), opts=opts)
        if out is not None and Path(out).exists() and not force:
            raise UsageError(f"{out}: already exists (use --force to replace it)")
        if out is not None and Path(out).is_dir():
            raise UsageError(f"{out}: is a directory; give the rules file's path")
        extra = api.keras_config(keras_config, opts) if keras_config is not None else None
        with opts.open(ckpt) as r:
            if out is not None:  # never onto the checkpoint (any of its files) or the target's file
                extra_files = [Path(keras_config)] if keras_config is not None else []
                check_output(inputs_of(ckpt, None, [*tgt.files, *extra_files]), Path(out), force, r)
            config = r.extras().get("keras_config") or extra
            classes, configs = r.layer_classes(), r.layer_configs()
            if extra is not None:  # the file's own facts first, the given config's for the rest
                more_classes, more_configs = api.config_layers(extra)
                layers = {split_key(k)[0] for k in r.metas()}
                if 2 * len(layers & set(more_classes)) < len(layers):  # Keras default names collide across models
                    raise InputError(Path(keras_config), "its Keras config names too few of the checkpoint's layers "
                                     f"(it has {', '.join(sorted(more_classes)[:3])}; the checkpoint "
                                     f"{', '.join(sorted(layers)[:3])}): not this model's config")
                classes, configs = {**more_classes, **classes}, {**more_configs, **configs}
            sug = run_suggest(r.metas(), tgt, classes=classes, configs=configs,
                              keras_config=config, source_format=r.format,
                              input_shape=_input_shape(input_shape),
                              layer_order=r.extras().get("execution_order"),
                              target_spec=_relative_to(target, Path(out).parent if out else None),
                              target_kwargs=_kwargs(target_kwargs), source=str(ckpt))
            reader_warnings = r.warnings()  # what the file's reader says (as apply and inspect print it)
        for w in reader_warnings:
            _warn(w)
        if out is not None:
            with atomic_file(out) as tmp:
                Path(tmp).write_text(sug.text)
        if as_json:
            _emit_json({"input": ckpt, "output": out, "fits": sug.fits, "rules": sug.text,
                        "steps": [s.to_json() for s in sug.plan.steps], **sug.unmatched})
        else:
            if out is None:
                _out(sug.text.rstrip())
            if sug.plan.steps:
                _out(plan_text(sug.plan, f"{ckpt}: plan of the suggested rules (dry run)", verbose=verbose))
            _out(fit_text(sug.plan.fit, "result", tgt.description))
            if out is not None:
                _out(f"wrote {out}" + ("" if sug.fits else " (incomplete: see above)"))
        return EXIT_OK if sug.fits else EXIT_DOES_NOT_FIT
    _exit(_run(go))


@app.command()
def explain(source: str = typer.Argument("-", help="A file holding the pasted error, or - for stdin."),
            as_json: bool = Json) -> None:
    """Read a pasted load_state_dict error: each mismatch as layers, the likely cause, the fixing rule."""

    def go():
        from .explain import explain as run_explain
        from .render import explain_text

        if source == "-":
            text = sys.stdin.read()
        else:
            try:
                text = Path(source).read_text("utf-8", errors="replace")
            except OSError as e:
                raise UsageError(f"{source}: cannot read: {e.strerror or e}") from None
        info = run_explain(text)
        if not (info["mismatches"] or info["missing"] or info["unexpected"]):
            raise UsageError(f"{'stdin' if source == '-' else source}: no load_state_dict error found "
                             "(expected 'size mismatch for ...', 'Missing key(s)' or 'Unexpected key(s)')")
        if as_json:
            _emit_json(info)
        else:
            _out(explain_text(info))
    _exit(_run(go))


def _report_plan(res, verbose: bool = False) -> None:
    """The plan and its fit: printed (through ``apply_file``'s ``on_plan``) before the data moves."""
    from .render import fit_text, plan_text

    if res.plan is not None and res.plan.steps:
        _out(plan_text(res.plan, f"{res.input}: plan", verbose=verbose), flush=True)
    if res.fit is not None and res.plan is not None:
        _out(fit_text(res.fit, "result" if res.plan.steps else res.input, res.plan.target.description), flush=True)


def _report(res, as_json: bool, verb: str, quiet: bool = False, verbose: bool = False,
            plan_shown: bool = False) -> None:
    if as_json:
        _emit_json(res.to_json())
        return
    if quiet:
        for w in res.warnings:
            _warn(w)
        return
    if not plan_shown:
        _report_plan(res, verbose)
    if res.ok:
        if res.output and verb == "apply":
            _out(f"wrote {res.output}")
        elif verb == "dry-run":
            _out("dry run: nothing read beyond metadata, nothing written")
    for w in res.warnings:
        _warn(w)


Recursive = typer.Option(False, "--recursive", help="Directories: process the checkpoints under them (outputs mirror their paths).")
Jobs = typer.Option(None, "--jobs", "-j", help="Worker processes (batch mode; default 1).")
Timeout = typer.Option(None, "--timeout", help=f"Seconds allowed per input in batch mode (default {DEFAULT_TIMEOUT:g}).")
MaxMemory = typer.Option(None, "--max-memory", help="Memory cap per worker process, e.g. 8GB (default: RAM / jobs).")
Report = typer.Option(None, "--report", help="Write one JSON object per input to this file (JSON Lines).")
LockTimeout = typer.Option(None, "--lock-timeout", help="Seconds to wait for another run holding the --out-dir (default: as long as it runs; 0: fail at once).")


@app.command()
def apply(ckpts: List[str] = typer.Argument(..., help="Input checkpoint(s) or, with --recursive, directories."),
          rules: Optional[List[str]] = typer.Option(None, "--rules", "-r", help="Rules file or preset name; repeat to compose (none: convert/extract only)."),
          out: Optional[str] = typer.Option(None, "--out", "-o", help="Output file (or directory, for sharded output)."),
          out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Output directory: batch mode (workers, report, resumable)."),
          target: Optional[str] = typer.Option(None, "--target", "-t", help="Overrides the rules file's target."),
          target_kwargs: Optional[str] = TargetKw,
          fmt: Optional[str] = typer.Option(None, "--format", help="safetensors | pt (default: from -o's suffix, else the input's)."),
          shard_size: Optional[str] = typer.Option(None, "--shard-size", help="Write HF-sharded safetensors, e.g. 5GB."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Plan and validate on metadata only; read and write nothing."),
          force: bool = typer.Option(False, "--force", help="Replace an existing output."),
          verify: bool = typer.Option(False, "--verify", help="Re-read every output before it is put in place and compare tensor checksums."),
          keep_going: bool = typer.Option(False, "--keep-going", help="With several inputs, go on after a failure."),
          recursive: bool = Recursive, jobs: Optional[int] = Jobs, timeout: Optional[float] = Timeout,
          max_memory: Optional[str] = MaxMemory, report: Optional[str] = Report,
          lock_timeout: Optional[float] = LockTimeout, quiet: bool = Quiet, verbose: bool = Verbose,
          as_json: bool = Json, state_key: Optional[str] = StateKey,
          allow_global: Optional[List[str]] = AllowGlobal, allow_outside: bool = AllowOutside) -> None:
    """Apply rules, validating shapes and parameter counts after every step, then write atomically."""

    def go():
        from . import api

        if fmt is not None and fmt not in ("safetensors", "pt"):
            raise UsageError(f"--format {fmt!r}: choose safetensors or pt")
        if not dry_run and (out is None) == (out_dir is None):
            raise UsageError("give exactly one of -o OUT or --out-dir DIR (or --dry-run)")
        if out is not None and (len(ckpts) > 1 or recursive):
            raise UsageError("several inputs need --out-dir, not -o")
        odir = Path(out_dir) if out_dir is not None else None
        if odir is not None and odir.exists() and not odir.is_dir():
            raise UsageError(f"--out-dir {out_dir}: exists and is not a directory")
        size = parse_size(shard_size, "--shard-size")
        composed = api.compose_rules(rules or [])
        opts = _opts(state_key, allow_global, allow_outside)
        tgt = api.resolve_target(target, composed, _kwargs(target_kwargs), opts)
        if odir is not None or jobs is not None or report is not None or recursive:
            from .batch import Settings

            settings = Settings(command="apply", rules=list(rules or []), target=target,
                                target_kwargs=_kwargs(target_kwargs), fmt=fmt, shard_size=size,
                                state_key=state_key, allow_globals=list(allow_global or []), force=force,
                                dry_run=dry_run, verify=verify, allow_outside_files=allow_outside)
            return _batch(settings, ckpts, odir, out, recursive, jobs, timeout, max_memory, report,
                          keep_going, as_json, quiet, lock_timeout)
        bar = Bar() if Bar.wanted(quiet=quiet, json=as_json) else None
        worst = EXIT_OK
        shown = []  # the plan is printed once it validates, before the data moves
        on_plan = None if as_json or quiet else (lambda r: (_report_plan(r, verbose), shown.append(r)))
        for inp in ckpts:
            res = api.apply_file(inp, composed, out, target=tgt, fmt=fmt, dry_run=dry_run, force=force,
                                 shard_size=size, opts=opts, progress=bar, verify=verify, on_plan=on_plan)
            _report(res, as_json, "dry-run" if dry_run else "apply", quiet, verbose, plan_shown=res in shown)
            if not res.ok:
                if not as_json:
                    _err(res.error)
                worst = max(worst, res.exit_code) if res.exit_code != EXIT_INTERRUPTED else res.exit_code
                if not keep_going:
                    break
        return worst
    _exit(_run(go))


def _batch(settings, ckpts, odir, out, recursive, jobs, timeout, max_memory, report, keep_going, as_json, quiet,
           lock_timeout=None):
    """Batch mode for apply and check: workers, a record per input, a summary at the end. Into an
    out-dir, the run holds its lock throughout (a second run waits; see batch.locked)."""
    import os

    from . import batch

    if jobs is not None and jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if timeout is not None and timeout <= 0:
        raise UsageError("--timeout must be positive")
    if lock_timeout is not None and lock_timeout < 0:
        raise UsageError("--lock-timeout must be 0 or more")
    workers = jobs or 1
    cap = parse_size(max_memory, "--max-memory")
    if cap is None:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        cap = max(4 << 30, ram // workers)
    settings.max_memory = cap
    settings.threads = max(1, (os.cpu_count() or 1) // workers)
    inputs = batch.collect(ckpts, recursive)
    if not inputs:
        raise UsageError(f"no checkpoints found in {', '.join(ckpts)}")
    writing = odir is not None and not settings.dry_run
    if writing:
        try:
            odir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--out-dir {odir}: cannot create it: {e.strerror}") from None
    with batch.locked(odir, lock_timeout, _note) if writing else contextlib.nullcontext():
        return _run_batch(settings, inputs, odir if writing else None, out, workers, timeout, report,
                          keep_going, as_json, quiet)


def _run_batch(settings, inputs, odir, out, workers, timeout, report, keep_going, as_json, quiet):
    import time

    from . import batch
    from .render import batch_line, batch_summary

    jobs_ = batch.plan_jobs(inputs, odir, settings.fmt)
    if out is not None and jobs_:
        jobs_[0].output = out
    batch.refuse_onto_inputs(jobs_, settings.input_files())
    sink = open(report, "w", encoding="utf-8") if report else None  # noqa: SIM115
    t0 = time.monotonic()
    overall = None
    if odir is not None and Bar.wanted(quiet=quiet, json=as_json):  # apply --out-dir on a terminal
        from .progress import BatchBar, input_bytes

        sizes = {str(j.input): input_bytes(j.input) for j in jobs_}
        overall = BatchBar(len(jobs_), sum(sizes.values()))

    def on_record(rec):
        if overall is not None:
            overall.record(sizes.get(str(rec["input"]), 0))
        line = json.dumps(rec, default=str)
        if sink:
            sink.write(line + "\n")
            sink.flush()
        if as_json:
            print(line, flush=True)
        elif not quiet:
            _out(batch_line(rec), flush=True)
        if rec["status"] == "failed" and not as_json:
            _err(rec["error"])
        for w in rec.get("warnings") or []:
            _warn(f"{rec['input']}: {w}")

    try:
        records = batch.run(jobs_, settings, workers=workers, timeout=timeout or batch.DEFAULT_TIMEOUT,
                            keep_going=keep_going, on_record=on_record, out_dir=odir)
    finally:
        if overall is not None:
            overall.finish()
        if sink:
            sink.close()
    if not quiet:
        _out(batch_summary(records, time.monotonic() - t0), file=sys.stderr if as_json else sys.stdout)
    return max((r.get("exit_code") or 0 for r in records), default=EXIT_OK)


@app.command()
def check(ckpts: List[str] = typer.Argument(..., help="Checkpoint(s) to check, or directories with --recursive."),
          target: Optional[str] = typer.Option(None, "--target", "-t", help="What they must fit."),
          rules: Optional[List[str]] = typer.Option(None, "--rules", "-r", help="Rules to apply (on metadata) first."),
          target_kwargs: Optional[str] = TargetKw, as_json: bool = Json,
          recursive: bool = Recursive, jobs: Optional[int] = Jobs, timeout: Optional[float] = Timeout,
          max_memory: Optional[str] = MaxMemory, report: Optional[str] = Report, quiet: bool = Quiet,
          state_key: Optional[str] = StateKey, allow_global: Optional[List[str]] = AllowGlobal,
          allow_outside: bool = AllowOutside) -> None:
    """Exit 0 when every checkpoint fits the target (after the rules, if given); 1 if any does not."""

    def go():
        from . import api

        composed = api.compose_rules(rules or [])
        opts = _opts(state_key, allow_global, allow_outside)
        tgt = api.resolve_target(target, composed, _kwargs(target_kwargs), opts)
        if tgt is None:
            raise UsageError("check needs --target (or a rules file with a target)")
        if jobs is not None or report is not None or recursive:
            from .batch import Settings

            settings = Settings(command="check", rules=list(rules or []), target=target,
                                target_kwargs=_kwargs(target_kwargs), state_key=state_key,
                                allow_globals=list(allow_global or []), dry_run=True,
                                allow_outside_files=allow_outside)
            return _batch(settings, ckpts, None, None, recursive, jobs, timeout, max_memory, report,
                          True, as_json, quiet)
        worst = EXIT_OK
        for inp in ckpts:
            res = api.check_file(inp, tgt, [composed], opts=opts)
            if as_json:
                _emit_json(res.to_json())
            else:
                if res.fit is not None and not quiet:
                    from .render import fit_text

                    _out(fit_text(res.fit, str(inp), tgt.description))
                if res.error and res.exit_code != EXIT_DOES_NOT_FIT:
                    _err(res.error)
            worst = max(worst, res.exit_code)
        return worst
    _exit(_run(go))


@app.command()
def schema() -> None:
    """Print the JSON Schema of rules files (for editors)."""
    from .rules import json_schema

    print(json.dumps(json_schema(), indent=2))


@app.command()
def presets() -> None:
    """List the bundled rule presets (usable as -r NAME)."""

    def go():
        from .rules import presets as found

        for name, path in found().items():
            first = ""
            for line in path.read_text().splitlines():
                if line.startswith("#"):
                    first = line.lstrip("# ").strip()
                    break
            _out(f"{name:32} {first}")
    _exit(_run(go))


@app.command()
def show(ckpt: str = typer.Argument(..., help="Checkpoint to draw, e.g. model.keras."),
         layers: Optional[List[str]] = typer.Argument(None, help="Layers to draw: a layer or tensor name, or a regex matching whole layer names, e.g. 'conv.*' (default: the conv layers and weight matrices, up to a limit)."),
         rules: Optional[List[str]] = typer.Option(None, "--rules", "-r", help="Draw before | after these rules (applied in memory), e.g. -r keras-to-torch; repeat to compose."),
         out: Optional[str] = typer.Option(None, "--out", "-o", help="The PNG to write, e.g. -o filters.png."),
         state_key: Optional[str] = StateKey, allow_global: Optional[List[str]] = AllowGlobal,
         allow_outside: bool = AllowOutside) -> None:
    """Draw conv filters as image grids and a histogram per weight into a PNG (needs ckptfix[show])."""

    def go():
        from .pictures import show_file

        pic = show_file(ckpt, out, layers or [], rules or [], _opts(state_key, allow_global, allow_outside))
        _out(f"wrote {out} ({pic.summary})")
    _exit(_run(go))


def run() -> None:
    app()


if __name__ == "__main__":
    run()
