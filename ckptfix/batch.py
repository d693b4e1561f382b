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
hash to the recorded sha256, and redoes the rest (an output it recorded may be replaced; any other
existing file needs ``--force``).
"""

from __future__ import annotations

import hashlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from . import __version__
from .errors import EXIT_BAD_INPUT, EXIT_OK, UsageError
from .formats.atomic import TMP_PREFIX
from .formats.detect import PT_SUFFIXES, SHARD_INDEX
from .formats.fileio import sha256_path

MANIFEST = ".ckptfix-manifest.jsonl"
# what --recursive picks up in a directory (a directory holding an HF index is one checkpoint)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".h5", ".hdf5", ".keras",
                       ".npz", ".npy", ".index")
DEFAULT_TIMEOUT = 1800.0  # seconds per input; a 100 GB checkpoint streams in a few minutes here


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
    force: bool = False
    dry_run: bool = False
    verify: bool = False
    max_memory: int | None = None
    threads: int | None = None

    def digest(self) -> str:
        """What makes an output what it is, besides its input: rules (as loaded, includes and
        target files too), target and options. Paths to rules files do not matter, contents do."""
        from .api import compose_rules

        rules = compose_rules(self.rules)
        doc = {"rules": [[r.op, r.spec.model_dump(mode="json"), r.expect.model_dump(mode="json") if r.expect
                          else None, r.optional] for r in rules.rules],
               "target": self.target or rules.target,
               "target_file": _file_digest(self.target or rules.target, rules.base_dir),
               "target_kwargs": self.target_kwargs or rules.target_kwargs,
               "layer_classes": rules.layer_classes, "fmt": self.fmt, "shard_size": self.shard_size,
               "state_key": self.state_key, "allow_globals": sorted(self.allow_globals)}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _file_digest(spec, base: Path | None) -> str | None:
    """sha256 of a target that names a file (a checkpoint, a layer spec, a factory .py)."""
    if not isinstance(spec, str):
        return None
    name = spec.rsplit(":", 1)[0] if spec.count(":") == 1 and ".py:" in spec else spec
    for p in ([base / name] if base else []) + [Path(name)]:
        try:
            if p.exists():
                return sha256_path(p)
        except OSError:
            return None
    return None


@dataclass
class Job:
    index: int
    input: str
    output: str | None  # None for check and dry runs
    key: str | None = None  # the output's path under the out-dir: the manifest key
    previous: dict | None = None  # the manifest record for this output, if any


# ---------------------------------------------------------------------------------------------
# inputs and outputs


def collect(paths: list[str], recursive: bool) -> list[tuple[Path, Path]]:
    """``(input, relative name)`` for every checkpoint named, in order. A directory is one
    checkpoint if it holds an HF index; otherwise, with ``recursive``, the checkpoints under it
    (by suffix, hidden files and ckptfix temp files skipped), named relative to it."""
    found: list[tuple[Path, Path]] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir() and not (p / SHARD_INDEX).is_file():
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
            if (d / n / SHARD_INDEX).is_file():  # a sharded checkpoint: one input, not its shards
                dirnames.remove(n)
                yield d / n
        if (d / SHARD_INDEX).is_file() and d != root:
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
    manifest = read_manifest(out_dir) if out_dir is not None else {}
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
        jobs.append(Job(i, str(inp), str(out_dir / key), key, manifest.get(key)))
    return jobs


# ---------------------------------------------------------------------------------------------
# the manifest


def read_manifest(out_dir: Path) -> dict[str, dict]:
    """Output key -> its last record. Lines that do not parse (a run killed mid-line) are ignored."""
    records: dict[str, dict] = {}
    try:
        with open(out_dir / MANIFEST, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                    records[rec["key"]] = rec
                except (ValueError, KeyError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    except OSError as e:
        raise UsageError(f"{out_dir / MANIFEST}: cannot read: {e.strerror}") from None
    return records


def append_manifest(out_dir: Path, rec: dict) -> None:
    line = json.dumps(rec, sort_keys=True) + "\n"
    with open(out_dir / MANIFEST, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def up_to_date(job: Job, input_sha: str, digest: str) -> bool:
    prev = job.previous
    if not prev or job.output is None or not Path(job.output).exists():
        return False
    if (prev.get("input_sha256"), prev.get("digest"), prev.get("version")) != (input_sha, digest, __version__):
        return False
    return sha256_path(Path(job.output)) == prev.get("output_sha256")


# ---------------------------------------------------------------------------------------------
# workers


class _Worker:
    def __init__(self, settings: Settings, digest: str) -> None:
        self.log = tempfile.TemporaryFile(prefix="ckptfix-worker-")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "ckptfix.worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     start_new_session=True)  # Ctrl-C goes to the parent only
        self.buf = b""
        self.job: Job | None = None
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


def run(jobs: list[Job], settings: Settings, *, workers: int = 1, timeout: float = DEFAULT_TIMEOUT,
        keep_going: bool = True, on_record: Callable[[dict], None] = lambda r: None,
        out_dir: Path | None = None) -> list[dict]:
    """Run ``jobs`` on ``workers`` processes; call ``on_record`` with each record as it arrives
    (in completion order). Returns the records in input order; inputs never started (after a
    failure, without ``keep_going``) get status "not run"."""
    digest = settings.digest()
    pending = list(jobs)
    records: dict[int, dict] = {}
    pool: list[_Worker] = []
    stopping = False
    sel = selectors.DefaultSelector()

    def finish(w: _Worker, rec: dict) -> None:
        nonlocal stopping
        job = w.job
        w.job = None
        records[job.index] = rec
        if rec["status"] == "done" and out_dir is not None and rec.get("output_sha256"):
            append_manifest(out_dir, {"key": job.key, "input": job.input, "input_sha256": rec["input_sha256"],
                                      "output_sha256": rec["output_sha256"], "digest": digest,
                                      "version": __version__})
        if rec["status"] == "failed" and not keep_going:
            stopping = True
        on_record(rec)

    def spawn() -> None:
        w = _Worker(settings, digest)
        pool.append(w)
        sel.register(w.proc.stdout, selectors.EVENT_READ, w)

    def retire(w: _Worker, why: str | None) -> None:
        """Fail the worker's input (if any) for ``why``, stop it, start another if work is left."""
        if w.job is not None:
            finish(w, failure(w.job, why or w.death(), time.monotonic() - w.started))
        w.kill()
        sel.unregister(w.proc.stdout)
        w.stop()
        pool.remove(w)
        if pending and not stopping:
            spawn()

    try:
        for _ in range(max(1, min(workers, len(jobs)))):
            spawn()
        while True:
            for w in list(pool):
                if w.job is None and pending and not stopping:
                    try:
                        w.give(pending.pop(0), timeout)
                    except OSError:  # it died before taking the job
                        retire(w, None)
            busy = [w for w in pool if w.job is not None]
            if not busy:
                break
            wait = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            for key, _ in sel.select(timeout=wait):
                w = key.data
                chunk = os.read(w.proc.stdout.fileno(), 1 << 16)
                if not chunk:  # the worker died
                    retire(w, None)
                    continue
                w.buf += chunk
                while b"\n" in w.buf and w.job is not None:
                    line, w.buf = w.buf.split(b"\n", 1)
                    finish(w, json.loads(line))
            now = time.monotonic()
            for w in [w for w in pool if w.job is not None and now >= w.deadline]:
                retire(w, f"timed out after {timeout:g} s (the worker was killed)")
    finally:
        for w in pool:
            if w.job is not None:
                w.kill()
            w.stop()
        sel.close()
    for job in jobs:
        records.setdefault(job.index, {"input": job.input, "output": job.output, "status": "not run",
                                       "ok": False, "exit_code": EXIT_OK, "error": None})
    return [records[j.index] for j in jobs]
