"""A batch worker: ``python -m ckptfix.worker``, started by ``ckptfix.batch``.

Protocol, JSON Lines: the first line on stdin is ``{"settings": ..., "digest": ...}``; then one
``{"job": ...}`` per line, each answered by one record on the original stdout. Anything else the
process prints goes to stderr (which the parent keeps, to explain a crash). The memory cap is set
before torch is imported; torch is imported once here and used for every job.

``CKPTFIX_WORKER_FAULT=substring:kind`` (kind: segv, abort, hang, exit) makes the worker fail that
way on an input whose path contains ``substring``: fault injection for the isolation tests.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def _limit_memory(cap: int | None) -> None:
    if not cap:
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))


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
    if in_sha and settings.command == "apply" and not settings.dry_run and batch.up_to_date(j, in_sha, digest):
        rec.update(status="skipped", ok=True, reason="up to date", output_sha256=j.previous["output_sha256"],
                   exit_code=0, error=None, seconds=round(time.perf_counter() - t0, 4))
        return rec
    opts = api.Options(state_key=settings.state_key, allow_globals=tuple(settings.allow_globals))
    try:
        if "rules" not in cache:
            cache["rules"] = api.compose_rules(settings.rules)
            cache["target"] = api.resolve_target(settings.target, cache["rules"], settings.target_kwargs, opts)
        if settings.command == "check":
            res = api.check_file(j.input, cache["target"], [cache["rules"]], opts=opts)
        else:
            if j.output and not settings.dry_run:
                Path(j.output).parent.mkdir(parents=True, exist_ok=True)
            ours = j.previous is not None and j.output is not None and Path(j.output).exists()
            res = api.apply_file(j.input, cache["rules"], j.output, target=cache["target"], fmt=settings.fmt,
                                 dry_run=settings.dry_run, force=settings.force or ours,
                                 shard_size=settings.shard_size, opts=opts, verify=settings.verify)
    except CkptfixError as e:
        rec.update(ok=False, exit_code=e.exit_code, error=str(e))
    except MemoryError:
        rec.update(ok=False, exit_code=2, error=_oom_message(j.input, settings))
    else:
        if res.error and _oom(res.error):
            res.error = _oom_message(j.input, settings)
        rec.update(res.to_json(), exit_code=res.exit_code)
        if res.ok:
            rec["status"] = "done"
            if j.output and not settings.dry_run and settings.command == "apply":
                rec["output_sha256"] = batch.sha256_path(Path(j.output))
    if rec.get("error") and not rec["error"].startswith(j.input):
        rec["error"] = f"{j.input}: {rec['error']}"  # in a batch, every error names its input
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    return rec


def _oom_message(path: str, settings) -> str:
    cap = f"{settings.max_memory / 2**30:.1f} GiB" if settings.max_memory else "none"
    return f"{path}: out of memory (worker memory cap {cap}; raise it with --max-memory)"


def main() -> None:
    proto = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # prints from libraries must not corrupt the protocol
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    from .batch import Settings

    os.environ["CKPTFIX_ISOLATED"] = "1"  # this process is the isolation: no nested reader children
    first = json.loads(sys.stdin.readline())
    settings = Settings(**first["settings"])
    _limit_memory(settings.max_memory)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    cache: dict = {}
    for line in sys.stdin:
        job = json.loads(line)["job"]
        proto.write(json.dumps(run_job(job, settings, first["digest"], cache)) + "\n")


if __name__ == "__main__":
    main()
