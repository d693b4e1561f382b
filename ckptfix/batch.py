"""Batch runs: many inputs, each in a worker process, reported as JSON Lines, resumable.

    ckptfix apply -r RULES ckpts/ more/*.pt --out-dir fixed/ --recursive --jobs 2 --report run.jsonl

The parent process plans nothing and imports no torch: it lists the inputs, names the outputs
(mirroring each input's path under the directory it was found in), and hands one input at a time
to each of ``jobs`` workers (``python -m ckptfix.worker``; torch is imported once per worker, not
per file). A worker runs under a memory cap (RLIMIT_AS) and each input under a deadline; a worker
that crashes (SIGSEGV, SIGBUS), hangs or runs out of memory fails that input with a reason and is
replaced, and the batch goes on.

Resuming: every finished output is recorded in ``OUT_DIR/.ckptfix-manifest.jsonl`` with the
sha256 of its input and of itself, a digest of the rules and options, and the ckptfix version.
Rerunning the same command skips an output whose record matches all four and whose bytes still
hash to the recorded sha256, and redoes the rest.

Record before publish: a worker writes its output under a temporary name (``staged``, named with
the parent's pid); the parent appends the output's record to the manifest (fsynced) and only then
renames the file into place. So a kill -9 at any moment leaves in the out-dir only files the
manifest describes, plus temporary files of a dead process that the next run removes.

Ownership: a record is not permission to overwrite. A file at an output path is ckptfix's only if
its bytes hash to a sha256 the manifest recorded for that path; any other file is the user's and
needs ``--force``.

Concurrency: a run holds ``OUT_DIR/.ckptfix-lock`` (flock, with its pid inside) from before it
reads the manifest until its last output is published. A second run into the same out-dir waits
for it (``lock_timeout`` bounds the wait), then finds the first run's outputs up to date. The lock
dies with its process: there are no stale locks. Workers die with the parent (PR_SET_PDEATHSIG on
Linux; everywhere, a worker exits when its stdin reaches EOF or its parent changes).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import selectors
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_OK, CkptfixError, UsageError
from .formats import atomic
from .formats.atomic import TMP_PREFIX, clean_stale, fsync_dir, temp_path_for
from .formats.detect import PT_SUFFIXES, SHARD_INDEX, directory_checkpoint
from .formats.fileio import sha256_path
from .isolate import module_command

MANIFEST = ".ckptfix-manifest.jsonl"
LOCK = ".ckptfix-lock"
# what --recursive picks up in a directory (a directory holding an HF index is one checkpoint)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".h5", ".hdf5", ".keras",
                       ".npz", ".npy", ".index", ".jit", ".onnx", ".msgpack")
DEFAULT_TIMEOUT = 1800.0  # seconds per input; a 100 GB checkpoint streams in a few minutes here
STARTUP_TIMEOUT = 600.0  # seconds a worker may take to import torch and say it is ready


@dataclass
class Settings:
    """What every worker needs; sent to it as JSON once."""

    command: str = "apply"  # apply | check
    rules: list[str] = field(default_factory=list)
    target: str | None = None
    target_kwargs: dict | None = None
    fmt: str | None = None
    shard_size: int | None = None
    state_key: str | None = None
    allow_globals: list[str] = field(default_factory=list)
    allow_outside_files: bool = False
    force: bool = False
    dry_run: bool = False
    verify: bool = False
    max_memory: int | None = None
    threads: int | None = None

    def options(self):
        """The reading options every input of the batch is opened with (a worker is the
        isolation, so no reader child)."""
        from .api import Options

        return Options(state_key=self.state_key, allow_globals=tuple(self.allow_globals),
                       allow_outside_files=self.allow_outside_files)

    def digest(self) -> str:
        """What makes an output what it is, besides its input: rules (as loaded, includes and
        target files too), target and options. Paths to rules files do not matter, contents do."""
        from .api import compose_rules

        rules = compose_rules(self.rules)
        doc = {"rules": [[r.op, r.spec.model_dump(mode="json"), r.expect.model_dump(mode="json") if r.expect
                          else None, r.optional] for r in rules.rules],
               "target": self.target or rules.target,
               "target_file": _file_digest(*self._target(rules)),
               "target_kwargs": self.target_kwargs or rules.target_kwargs,
               "layer_classes": rules.layer_classes, "fmt": self.fmt, "shard_size": self.shard_size,
               "state_key": self.state_key, "allow_globals": sorted(self.allow_globals),
               "allow_outside_files": self.allow_outside_files}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()

    def input_files(self) -> list[tuple[str, Path]]:
        """What the run reads besides its checkpoints: the rules files (includes too) and the file
        the target names. No output of the run may be one of them."""
        from .api import compose_rules
        from .execute import inputs_of
        from .target import named_file

        rules = compose_rules(self.rules)
        named = named_file(*self._target(rules))
        return inputs_of(None, rules, [named] if named is not None else [])

    def _target(self, rules) -> tuple:
        """The target spec and the directory it is relative to (the command line's: none)."""
        return (self.target, None) if self.target else (rules.target, rules.base_dir)


def _file_digest(spec, base: Path | None) -> str | None:
    """sha256 of a target that names a file (a checkpoint, a layer spec, a factory .py)."""
    from .target import named_file

    p = named_file(spec, base)
    try:
        return sha256_path(p) if p is not None and p.is_file() else None
    except OSError:
        return None


@dataclass
class Job:
    index: int
    input: str
    output: str | None  # None for check and dry runs
    key: str | None = None  # the output's path under the out-dir: the manifest key
    previous: dict | None = None  # the manifest record for this output, if any
    known: list[str] = field(default_factory=list)  # every output sha256 recorded for this key
    staged: str | None = None  # where the worker writes the output; the parent publishes it


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def collect(paths: list[str], recursive: bool) -> list[tuple[Path, Path]]:
    """``(input, relative name)`` for every checkpoint named, in order. A directory is one
    checkpoint if it holds an HF index, a SavedModel or a DCP ``.metadata``; otherwise, with ``recursive``, the checkpoints under it
    (by suffix, hidden files and ckptfix temp files skipped), named relative to it."""
    found: list[tuple[Path, Path]] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir() and not directory_checkpoint(p):
            if not recursive:
                raise UsageError(f"{p}: is a directory; give --recursive to process the checkpoints under it")
            found += [(f, f.relative_to(p)) for f in _walk(p)]
            continue
        found.append((p, Path(p.parent.name if p.name == SHARD_INDEX else p.name)))
    return found


def _walk(root: Path):
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for n in list(dirnames):
            if directory_checkpoint(d / n):  # one input (shards, SavedModel, DCP), not its files
                dirnames.remove(n)
                yield d / n
        if directory_checkpoint(d) and d != root:
            continue
        for n in sorted(filenames):
            if n.startswith(".") or n.startswith(TMP_PREFIX) or not n.endswith(CHECKPOINT_SUFFIXES):
                continue
            if n.endswith(".safetensors") and (d / SHARD_INDEX).is_file():
                continue  # a shard of the sharded checkpoint at the root
            yield d / n


def output_name(rel: Path, fmt: str | None, is_dir: bool) -> Path:
    """The output's path under --out-dir: the input's relative path, its suffix adjusted to the
    output format (a sharded input becomes one ``.safetensors`` file named after its directory)."""
    name = rel.name + ".safetensors" if is_dir else rel.name
    if name.endswith(".index"):  # a TF checkpoint named by its index file
        name = name[: -len(".index")] + ".safetensors"
    if fmt == "safetensors" and not name.endswith(".safetensors"):
        name = Path(name).stem + ".safetensors"
    elif fmt == "pt" and not name.endswith(PT_SUFFIXES):
        name = Path(name).stem + ".pt"
    elif fmt is None and not name.endswith((".safetensors",) + PT_SUFFIXES):
        name = Path(name).stem + ".safetensors"  # Keras, TF, numpy in: safetensors out
    return rel.parent / name


def plan_jobs(inputs: list[tuple[Path, Path]], out_dir: Path | None, fmt: str | None) -> list[Job]:
    """One job per input; two inputs that would write the same output are refused up front."""
    history = read_manifest(out_dir) if out_dir is not None else {}
    jobs, seen = [], {}
    for i, (inp, rel) in enumerate(inputs):
        if out_dir is None:
            jobs.append(Job(i, str(inp), None))
            continue
        key = output_name(rel, fmt, inp.is_dir()).as_posix()
        if key in seen:
            raise UsageError(f"{inp} and {seen[key]} would both be written to {out_dir / key}; "
                             "give them separate runs or rename one")
        seen[key] = inp
        recs = history.get(key, [])
        jobs.append(Job(i, str(inp), str(out_dir / key), key, recs[-1] if recs else None,
                        [r["output_sha256"] for r in recs if r.get("output_sha256")]))
    return jobs


def refuse_onto_inputs(jobs: list[Job], reads: list[tuple[str, Path]]) -> None:
    """Up front: no output of the run may be any file the run reads (every job's input, the
    rules files, the target's file), whatever --force says."""
    from .execute import InputSet

    guard = InputSet([("the input", Path(j.input)) for j in jobs] + list(reads))
    for j in jobs:
        if j.output is not None:
            guard.refuse(Path(j.output))


# ---------------------------------------------------------------------------------------------
# the manifest


def read_manifest(out_dir: Path) -> dict[str, list[dict]]:
    """Output key -> its records, oldest first. Lines that do not parse (a run killed mid-line)
    are ignored."""
    records: dict[str, list[dict]] = {}
    try:
        with open(out_dir / MANIFEST, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records.setdefault(rec["key"], []).append(rec)
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UsageError(f"{out_dir / MANIFEST}: cannot read: {e.strerror}") from None
    return records


def append_manifest(out_dir: Path, rec: dict) -> None:
    """Append one record, fsynced. A failed append (full disk, file-size limit) is cut back off, so
    the manifest never ends in half a line that the next record would be glued to."""
    path = out_dir / MANIFEST
    data = (json.dumps(rec, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.fstat(fd).st_size
        if start and os.pread(fd, 1, start - 1) != b"\n":  # a line cut short by a kill
            data = b"\n" + data
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
            raise
    finally:
        os.close(fd)


def up_to_date(job: Job, input_sha: str, output_sha: str | None, digest: str) -> bool:
    """The output recorded last for this path, made from these input bytes by these rules and
    options and this version, is still there, byte for byte."""
    prev = job.previous
    if not prev or output_sha is None:
        return False
    return (prev.get("input_sha256"), prev.get("digest"), prev.get("version"), prev.get("output_sha256")) \
        == (input_sha, digest, __version__, output_sha)


def owned(job: Job, output_sha: str | None) -> bool:
    """Whether the file at the job's output path is one ckptfix recorded there (and so may be
    replaced without --force). A record alone is not enough: the bytes must be the recorded ones."""
    return output_sha is not None and output_sha in job.known


def publish(staged: Path, dest: Path) -> None:
    """Rename a staged output into place (a directory output: the old one is moved aside first
    and removed once the new one is in place)."""
    if staged.is_dir() and dest.is_dir() and not dest.is_symlink():
        aside = temp_path_for(dest)
        os.replace(dest, aside)
        try:
            os.replace(staged, dest)
        except OSError:
            os.replace(aside, dest)
            raise
        fsync_dir(dest.parent)
        shutil.rmtree(aside, ignore_errors=True)
        return
    os.replace(staged, dest)
    fsync_dir(dest.parent)


def remove_staged(staged: Path) -> None:
    with contextlib.suppress(OSError):
        atomic.remove(staged)


# ---------------------------------------------------------------------------------------------
# the out-dir lock


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip() or "x")
        return f"ckptfix pid {pid}"
    return "another ckptfix process"


@contextlib.contextmanager
def locked(out_dir: Path, timeout: float | None = None, on_wait: Callable[[str], None] = lambda m: None):
    """Hold ``OUT_DIR/.ckptfix-lock`` (flock; our pid inside). If another run holds it, call
    ``on_wait`` once with who holds it and wait for it, at most ``timeout`` seconds (None: as long
    as it runs; 0: fail at once). The kernel drops the lock when its process dies."""
    path = out_dir / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UsageError(f"{path}: cannot create the out-dir lock: {e.strerror}") from None
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                pass
            who = _holder(fd)
            if deadline is not None and time.monotonic() >= deadline:
                raise UsageError(f"{path}: {who} holds this out-dir (waited {timeout:g} s; "
                                 "--lock-timeout sets how long to wait)")
            if not told:
                on_wait(f"waiting for {who} holding {path}")
                told = True
            time.sleep(0.05 if deadline is None else max(0.0, min(0.05, deadline - time.monotonic())))
        with contextlib.suppress(OSError):  # the pid is for the message only (a full disk: none)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------------
# workers


class _Worker:
    """One ``python -m ckptfix.worker``. It says ``{"ready": pid}`` once torch and ckptfix are
    imported; only then is it given a job, and the job's deadline starts when it is given."""

    def __init__(self, settings: Settings, digest: str) -> None:
        self.log = tempfile.TemporaryFile(prefix="ckptfix-worker-")
        env = dict(os.environ, PYTHONUNBUFFERED="1", CKPTFIX_PARENT_PID=str(os.getpid()))
        self.proc = subprocess.Popen(module_command("ckptfix.worker"), stdin=subprocess.PIPE,  # not from cwd
                                     stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     start_new_session=True)  # Ctrl-C goes to the parent only
        self.buf = b""
        self.job: Job | None = None
        self.ready = False
        self.startup_deadline = time.monotonic() + STARTUP_TIMEOUT
        self.deadline = 0.0
        self.started = 0.0
        self._send({"settings": asdict(settings), "digest": digest})

    def _send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self.proc.stdin.flush()

    def give(self, job: Job, timeout: float) -> None:
        self.job, self.started = job, time.monotonic()
        self.deadline = self.started + timeout
        self._send({"job": asdict(job)})

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        self.log.close()

    def last_words(self) -> str:
        self.log.seek(0)
        lines = [ln.strip() for ln in self.log.read().decode("utf-8", "replace").splitlines() if ln.strip()]
        return lines[-1][:200] if lines else ""

    def death(self) -> str:
        self.kill()
        code = self.proc.returncode
        if code < 0:
            sig = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
            why = {"SIGKILL": "killed (SIGKILL: out of memory?)", "SIGBUS": "crashed (SIGBUS)",
                   "SIGSEGV": "crashed (SIGSEGV)", "SIGABRT": "aborted (SIGABRT)"}.get(sig, f"killed by {sig}")
        else:
            why = f"exited with status {code}"
        words = self.last_words()
        return f"worker {why} while processing it" + (f"; its last output: {words}" if words else "")


def failure(job: Job, error: str, seconds: float, code: int = EXIT_BAD_INPUT) -> dict:
    return {"input": job.input, "output": job.output, "status": "failed", "ok": False, "fits": None,
            "exit_code": code, "error": f"{job.input}: {error}", "seconds": round(seconds, 4)}


def _fault_point(stage: str, job: Job) -> None:
    """``CKPTFIX_BATCH_FAULT=stage:substring`` kills this (parent) process with SIGKILL at
    ``stage`` (staged, recorded, published) of the output whose input path contains substring:
    fault injection for the resume tests."""
    spec = os.environ.get("CKPTFIX_BATCH_FAULT", "")
    if spec.partition(":")[0] == stage and spec.partition(":")[2] in job.input:
        os.kill(os.getpid(), signal.SIGKILL)


def settle(out_dir: Path, job: Job, rec: dict, digest: str) -> tuple[dict, bool]:
    """What the parent does with a worker's answer in an out-dir: record the staged output in the
    manifest, then rename it into place (record before publish). Returns the record and whether
    the batch must stop (the manifest cannot be written: nothing more could be published). An
    output that is not published is removed, so nothing undescribed is left in the out-dir."""
    staged, dest = Path(job.staged), Path(job.output)
    if rec["status"] != "done" or not rec.get("output_sha256"):
        remove_staged(staged)
        return rec, False
    _fault_point("staged", job)
    try:
        append_manifest(out_dir, {"key": job.key, "input": job.input, "input_sha256": rec["input_sha256"],
                                  "output_sha256": rec["output_sha256"], "digest": digest,
                                  "version": __version__})
    except OSError as e:
        remove_staged(staged)
        bad = failure(job, "", rec.get("seconds") or 0.0)
        bad["error"] = (f"{out_dir / MANIFEST}: cannot record {dest}: {e.strerror or e}; the batch stopped "
                        f"and {dest} was not put in place (its old file, if any, is unchanged)")
        return bad, True
    _fault_point("recorded", job)
    try:
        publish(staged, dest)
    except OSError as e:
        remove_staged(staged)
        return failure(job, f"{dest}: cannot put the output in place: {e.strerror or e}",
                       rec.get("seconds") or 0.0), False
    _fault_point("published", job)
    return rec, False


def run(jobs: list[Job], settings: Settings, *, workers: int = 1, timeout: float = DEFAULT_TIMEOUT,
        keep_going: bool = True, on_record: Callable[[dict], None] = lambda r: None,
        out_dir: Path | None = None) -> list[dict]:
    """Run ``jobs`` on ``workers`` processes; call ``on_record`` with each record as it arrives
    (in completion order). Returns the records in input order; inputs never started (after a
    failure, without ``keep_going``) get status "not run". With ``out_dir``, the caller holds its
    lock (``locked``): outputs are staged, recorded, then published (``settle``)."""
    digest = settings.digest()
    pending = list(jobs)
    records: dict[int, dict] = {}
    pool: list[_Worker] = []
    stopping = aborted = False
    sel = selectors.DefaultSelector()
    out_dirs = {Path(j.output).parent for j in jobs} if out_dir is not None else set()
    for d in out_dirs:
        clean_stale(d)  # what a killed run left (no live run can own it: we hold the lock)

    def finish(w: _Worker, rec: dict) -> None:
        nonlocal stopping, aborted
        job = w.job
        w.job = None
        if job.staged is not None:
            rec, fatal = settle(out_dir, job, rec, digest)
            stopping = aborted = stopping or fatal
        records[job.index] = rec
        if rec["status"] == "failed" and not keep_going:
            stopping = True
        on_record(rec)

    def spawn() -> None:
        w = _Worker(settings, digest)
        pool.append(w)
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)

    def retire(w: _Worker, why: str | None) -> None:
        """Fail the worker's input (if any) for ``why``, stop it, start another if work is left."""
        if not w.ready and w.job is None:
            raise CkptfixError(f"a ckptfix worker could not start: {w.last_words() or w.death()}")
        if w.job is not None:
            finish(w, failure(w.job, why or w.death(), time.monotonic() - w.started))
        w.kill()
        sel.unregister(w.proc.stdout)
        w.stop()
        pool.remove(w)
        if pending and not stopping:
            spawn()

    def give(w: _Worker, job: Job) -> None:
        if out_dir is not None and job.output is not None and not settings.dry_run:
            job.staged = str(temp_path_for(Path(job.output)))  # our pid: stale once we are gone
        w.give(job, timeout)

    try:
        for _ in range(max(1, min(workers, len(jobs)))):
            spawn()
        while not aborted:
            for w in list(pool):
                if w.ready and w.job is None and pending and not stopping:
                    try:
                        give(w, pending.pop(0))
                    except OSError:  # it died before taking the job
                        retire(w, None)
            busy = [w for w in pool if w.job is not None]
            starting = [w for w in pool if not w.ready] if pending and not stopping else []
            if not busy and not starting:
                break
            due = min([w.deadline for w in busy] + [w.startup_deadline for w in starting])
            for key, _ in sel.select(timeout=max(0.0, due - time.monotonic())):
                w = key.data
                chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
                if not chunk:  # the worker died
                    retire(w, None)
                    continue
                w.buf += chunk
                while b"\n" in w.buf:
                    line, w.buf = w.buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "ready" in msg:
                        w.ready = True
                    elif w.job is not None:
                        finish(w, msg)
            now = time.monotonic()
            for w in [w for w in pool if w.job is not None and now >= w.deadline]:
                retire(w, f"timed out after {timeout:g} s (the worker was killed)")
            for w in [w for w in starting if not w.ready and now >= w.startup_deadline]:
                w.kill()
                raise CkptfixError(f"a ckptfix worker did not start within {STARTUP_TIMEOUT:g} s"
                                   + (f"; its last output: {w.last_words()}" if w.last_words() else ""))
    finally:
        for w in pool:
            if w.job is not None:
                w.kill()
                if w.job.staged:
                    remove_staged(Path(w.job.staged))
            w.stop()
        sel.close()
        for d in out_dirs:
            clean_stale(d)  # temporary files of workers killed above
    for job in jobs:
        records.setdefault(job.index, {"input": job.input, "output": job.output, "status": "not run",
                                       "ok": False, "exit_code": EXIT_OK, "error": None})
    return [records[j.index] for j in jobs]
