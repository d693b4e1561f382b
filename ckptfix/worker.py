"""A batch worker: ``python -m ckptfix.worker``, started by ``ckptfix.batch``.

Protocol, JSON Lines: the first line on stdin is ``{"settings": ..., "digest": ...}``; the worker
sets its memory cap, imports torch and the readers, and answers ``{"ready": pid}`` (the parent
starts an input's deadline only once it has handed the job to a ready worker). Then one
``{"job": ...}`` per line, each answered by one record on the original stdout. Anything else the
process prints goes to stderr (which the parent keeps, to explain a crash).

The worker dies with its parent: PR_SET_PDEATHSIG (Linux), and everywhere a watchdog thread that
exits when stdin reaches EOF (the parent is gone or done) or the parent pid changes.

In an out-dir (``job.staged`` set) the worker never writes the output path itself: it decides
whether the file there may be replaced (skip it if up to date; refuse a file that is not one the
manifest recorded, unless --force), writes the output to ``staged`` and reports its sha256; the
parent records it and renames it into place.

``CKPTFIX_WORKER_FAULT=substring:kind`` (kind: segv, abort, hang, exit) makes the worker fail that
way on an input whose path contains ``substring``: fault injection for the isolation tests.
``CKPTFIX_WORKER_SLOW_START=seconds`` delays the ready line (a worker importing torch on a busy
machine): deadlines must not count it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
import time
from pathlib import Path


def _fault(path: str) -> None:
    spec = os.environ.get("CKPTFIX_WORKER_FAULT", "")
    if ":" not in spec:
        return
    needle, kind = spec.rsplit(":", 1)
    if needle not in path:
        return
    if kind == "segv":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        while True:
            time.sleep(60)
    elif kind == "exit":
        os._exit(3)


def _oom(text: str) -> bool:
    """torch reports a failed allocation as RuntimeError; api.apply_file as an internal error."""
    return any(s in text for s in ("MemoryError", "can't allocate memory", "not enough memory"))


def run_job(job: dict, settings, digest: str, cache: dict) -> dict:
    from . import api, batch
    from .errors import CkptfixError

    t0 = time.perf_counter()
    j = batch.Job(**job)
    rec = {"input": j.input, "output": j.output, "status": "failed", "worker_pid": os.getpid()}
    _fault(j.input)
    try:
        in_sha = batch.sha256_path(Path(j.input)) if Path(j.input).exists() else None
    except OSError:
        in_sha = None  # unreadable: apply_file says why
    rec["input_sha256"] = in_sha
    opts = settings.options()
    try:
        dest = None  # where apply_file writes: the staged name in an out-dir
        if j.staged is not None:
            out_sha = _output_sha(Path(j.output))
            if in_sha and batch.up_to_date(j, in_sha, out_sha, digest):
                rec.update(status="skipped", ok=True, reason="up to date", output_sha256=out_sha,
                           exit_code=0, error=None, seconds=round(time.perf_counter() - t0, 4))
                return rec
            _may_replace(j, out_sha, settings.force)
            dest = j.staged
        elif settings.command == "apply" and not settings.dry_run:
            dest = j.output
        if "rules" not in cache:
            cache["rules"] = api.compose_rules(settings.rules)
            cache["target"] = api.resolve_target(settings.target, cache["rules"], settings.target_kwargs, opts)
        if settings.command == "check":
            res = api.check_file(j.input, cache["target"], [cache["rules"]], opts=opts)
        else:
            if dest and not settings.dry_run:
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
            res = api.apply_file(j.input, cache["rules"], dest, target=cache["target"], fmt=settings.fmt,
                                 dry_run=settings.dry_run, force=settings.force and j.staged is None,
                                 shard_size=settings.shard_size, opts=opts, verify=settings.verify)
    except CkptfixError as e:
        rec.update(ok=False, exit_code=e.exit_code, error=str(e))
    except MemoryError:
        rec.update(ok=False, exit_code=2, error=_oom_message(j.input, settings))
    else:
        if res.error and _oom(res.error):
            res.error = _oom_message(j.input, settings)
        rec.update(res.to_json(), exit_code=res.exit_code, output=j.output)
        if res.ok:
            rec["status"] = "done"
            if dest and not settings.dry_run and settings.command == "apply":
                rec["output_sha256"] = batch.sha256_path(Path(dest))
    if j.staged and rec.get("error"):
        rec["error"] = rec["error"].replace(j.staged, j.output)  # the user knows the output's name
    for i, w in enumerate(rec.get("warnings") or []):
        if j.staged:
            rec["warnings"][i] = w.replace(j.staged, j.output)
    if rec.get("error") and not rec["error"].startswith(j.input):
        rec["error"] = f"{j.input}: {rec['error']}"  # in a batch, every error names its input
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    return rec


def _output_sha(out: Path) -> str | None:
    """sha256 of what is at an output path now (None if nothing is)."""
    from .batch import sha256_path
    from .errors import UsageError

    if not out.exists() and not out.is_symlink():
        return None
    try:
        return sha256_path(out)
    except OSError as e:
        raise UsageError(f"{out}: exists and cannot be read ({e.strerror}); refusing to replace it") from None


def _may_replace(j, out_sha: str | None, force: bool) -> None:
    """A file at the output path may be replaced only if it is one ckptfix recorded there (its
    bytes hash as recorded), or with --force. Never the input itself, nor a foreign directory."""
    from . import batch
    from .errors import UsageError
    from .execute import check_output

    out = Path(j.output)
    if out_sha is not None and not force and not batch.owned(j, out_sha):
        if j.previous is None:
            raise UsageError(f"{out}: already exists (use --force to replace it)")
        raise UsageError(f"{out}: exists but is not the file ckptfix recorded there (its bytes differ from "
                         f"the record in {_manifest_of(j)}); it is left "
                         "alone (use --force to replace it)")
    check_output([Path(j.input)], out, force=True)


def _manifest_of(j) -> Path:
    from .batch import MANIFEST

    out = Path(j.output)
    return Path(*out.parts[: len(out.parts) - len(Path(j.key).parts)]) / MANIFEST


def _oom_message(path: str, settings) -> str:
    cap = f"{settings.max_memory / 2**30:.1f} GiB" if settings.max_memory else "none"
    return f"{path}: out of memory (worker memory cap {cap}; raise it with --max-memory)"


def _die_with_parent(parent: int) -> None:
    """Never outlive the batch parent: a kill -9 of the parent must not leave workers running."""
    from .isolate import die_with_parent

    die_with_parent()  # Linux; the watchdog below holds everywhere

    def watch_parent():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # it died before we could ask to die with it
        os._exit(1)
    threading.Thread(target=watch_parent, daemon=True).start()


def _inbox() -> queue.Queue:
    """Lines from stdin, read by a thread: at EOF (the parent closed the pipe, or died) the worker
    exits at once, even in the middle of a job."""
    lines: queue.Queue = queue.Queue()

    def read():
        for line in sys.stdin:
            lines.put(line)
        os._exit(0)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _warm_up(settings, digest: str, cache: dict) -> None:
    """Import what every job needs before saying ready, so deadlines do not pay for imports."""
    import torch

    if settings.threads:
        torch.set_num_threads(settings.threads)
    from . import api
    from .formats import safetensors_io, torch_io  # noqa: F401

    try:
        opts = settings.options()
        cache["rules"] = api.compose_rules(settings.rules)
        cache["target"] = api.resolve_target(settings.target, cache["rules"], settings.target_kwargs, opts)
    except Exception:  # noqa: BLE001 - each job reports it
        cache.clear()


def main() -> None:
    parent = int(os.environ.get("CKPTFIX_PARENT_PID") or os.getppid())
    _die_with_parent(parent)
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # prints from libraries must not corrupt the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    from .batch import Settings

    os.environ["CKPTFIX_ISOLATED"] = "1"  # this process is the isolation: no nested reader children
    inbox = _inbox()
    first = json.loads(inbox.get())
    settings = Settings(**first["settings"])
    from .isolate import limit_memory

    limit_memory(settings.max_memory)
    cache: dict = {}
    _warm_up(settings, first["digest"], cache)
    time.sleep(float(os.environ.get("CKPTFIX_WORKER_SLOW_START") or 0))
    proto.write(json.dumps({"ready": os.getpid()}) + "\n")
    while True:
        job = json.loads(inbox.get())["job"]
        proto.write(json.dumps(run_job(job, settings, first["digest"], cache)) + "\n")


if __name__ == "__main__":
    main()
