"""Batch mode under kill -9, a full disk, files that are not ours, and concurrent runs (issue 10,
section 7): workers die with their parent; every file in the out-dir is described by the manifest
(record before publish); rerunning the same command resumes and exits 0; a record is no licence to
overwrite a file whose bytes are not the recorded ones; a lock serialises runs into one out-dir."""

import errno
import fcntl
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ckptfix import batch
from ckptfix.batch import LOCK, MANIFEST
from ckptfix.formats.atomic import TMP_PREFIX

INPUTS = ["a.pt", "sub/b.pt", "sub/deeper/c.pt"]


def ddp_state(seed: int, big: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = {"0.weight": (8, 4), "0.bias": (8,), "2.weight": (3, 8), "2.bias": (3,)}
    if big:
        net["1.weight"] = (big,)
    return {f"module.{k}": torch.randn(*s, generator=g) for k, s in net.items()}


def make_tree(root: Path, names=INPUTS, big: int = 0) -> Path:
    for i, rel in enumerate(names):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ddp_state(i, big), root / rel)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "ckpts")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def cmd(tree: Path, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "ckptfix", "apply", str(tree), "--recursive", "-r", "strip-ddp-prefix",
            "--out-dir", str(out), "--keep-going", *map(str, extra)]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith("CKPTFIX_")}
    return {**e, **extra}


def run(args, timeout=300, **env_extra) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env(**env_extra))


def manifest(out: Path) -> dict[str, set[str]]:
    known: dict[str, set[str]] = {}
    for rec in batch.read_manifest(out).values():
        for r in rec:
            known.setdefault(r["key"], set()).add(r["output_sha256"])
    return known


def published(out: Path) -> list[Path]:
    """Every file ckptfix put in the out-dir, except its own bookkeeping and temporary files."""
    return sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST, LOCK)
                  and not p.name.startswith(TMP_PREFIX))


def temp_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob(f"{TMP_PREFIX}*"))


def assert_described(out: Path) -> None:
    """The invariant: every file in the out-dir is one the manifest recorded at that path."""
    known = manifest(out)
    for p in published(out):
        key = p.relative_to(out).as_posix()
        assert sha(p) in known.get(key, set()), f"{key} is in the out-dir but not described by the manifest"


def assert_outputs_right(tree: Path, out: Path, seeds=None) -> None:
    for i, rel in enumerate(INPUTS):
        got = torch.load(out / rel, weights_only=True)
        want = {k.removeprefix("module."): v for k, v in torch.load(tree / rel, weights_only=True).items()}
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want), rel


def children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_until(cond, limit: float = 60.0, what: str = "") -> None:
    """Poll ``cond`` (bounded); fails if it does not hold within ``limit`` seconds."""
    end = time.monotonic() + limit
    while not cond():
        if time.monotonic() > end:
            pytest.fail(f"not within {limit:g} s: {what}")
        time.sleep(0.05)


def report_lines(path: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------------------------------------
# workers die with their parent


def test_workers_die_with_a_killed_parent_and_the_rerun_resumes(tree, tmp_path):
    """kill -9 of the batch parent while a worker is busy (hanging) and another idle: both are
    gone within a bounded wait, nothing undescribed lands in the out-dir, the rerun exits 0."""
    out, report = tmp_path / "out", tmp_path / "run.jsonl"
    p = subprocess.Popen(cmd(tree, out, "--jobs", "2", "--report", report), env=env(CKPTFIX_WORKER_FAULT="a.pt:hang"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: len(report_lines(report)) == 2, 120, "b.pt and c.pt done by the second worker")
        workers = children(p.pid)
        assert len(workers) == 2
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    wait_until(lambda: not any(alive(w) for w in workers), 30, f"workers {workers} exit after their parent")
    assert_described(out)
    r = run(cmd(tree, out, "--jobs", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_outputs_right(tree, out)
    assert_described(out)
    assert temp_files(out) == []


def test_a_worker_exits_when_its_stdin_closes_mid_job(tree, tmp_path):
    """The portable watchdog: stdin EOF (the parent is gone) ends a busy worker at once."""
    from dataclasses import asdict

    w = subprocess.Popen([sys.executable, "-m", "ckptfix.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, env=env(CKPTFIX_WORKER_FAULT="a.pt:hang"))
    settings = batch.Settings(rules=["strip-ddp-prefix"])
    job = batch.Job(0, str(tree / "a.pt"), str(tmp_path / "a.pt"))
    w.stdin.write(json.dumps({"settings": asdict(settings), "digest": "x"}).encode() + b"\n")
    w.stdin.write(json.dumps({"job": asdict(job)}).encode() + b"\n")
    w.stdin.flush()
    assert "ready" in json.loads(w.stdout.readline())
    w.stdin.close()  # the job hangs; EOF must still end the worker
    assert w.wait(timeout=30) == 0


# ---------------------------------------------------------------------------------------------
# kill -9 at every stage of publishing an output, then the same command again


@pytest.mark.parametrize("stage", ["staged", "recorded", "published"])
@pytest.mark.parametrize("previous", [False, True], ids=["fresh", "redo"])
def test_kill_9_at_each_stage_then_the_same_command_resumes(tree, tmp_path, stage, previous):
    """The parent is killed after a worker wrote b.pt's output under its temporary name, after
    the manifest recorded it, or after it was renamed into place; with or without an older
    output of b.pt already there (its input changed since). The out-dir holds only described
    files; rerunning the same command exits 0 with every output right."""
    out = tmp_path / "out"
    if previous:
        assert run(cmd(tree, out)).returncode == 0
        torch.save(ddp_state(7), tree / "sub/b.pt")
    r = run(cmd(tree, out), CKPTFIX_BATCH_FAULT=f"{stage}:sub/b.pt")
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    assert_described(out)
    r = run(cmd(tree, out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_outputs_right(tree, out)
    assert_described(out)
    assert temp_files(out) == []
    r = run(cmd(tree, out))  # and then everything is up to date
    assert r.returncode == 0 and "3 skipped" in r.stdout, r.stdout


def test_kill_9_at_random_moments_then_resume(tmp_path):
    """SIGKILL of the parent at seeded random moments over whole runs (bigger inputs, two
    workers): after each kill (and once its workers are gone) every file in the out-dir is
    described; the same command then finishes the job and exits 0."""
    rng = random.Random(10)
    tree = make_tree(tmp_path / "ckpts", INPUTS + ["d.pt", "sub/e.pt"], big=1 << 20)
    out = tmp_path / "out"
    t0 = time.monotonic()
    assert run(cmd(tree, tmp_path / "timing", "--jobs", "2")).returncode == 0
    duration = time.monotonic() - t0
    for _ in range(4):
        p = subprocess.Popen(cmd(tree, out, "--jobs", "2"), env=env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + rng.uniform(0.3, duration)
        workers: set[int] = set()
        while time.monotonic() < deadline and p.poll() is None:
            workers.update(children(p.pid))
            time.sleep(0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        wait_until(lambda: not any(alive(w) for w in workers), 30, "the killed run's workers exit")
        assert_described(out) if out.exists() else None
    r = run(cmd(tree, out, "--jobs", "2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert_outputs_right(tree, out)
    assert_described(out)
    assert temp_files(out) == []


def test_a_manifest_cut_mid_line_is_not_glued_to_the_next_record(cli, tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST).write_text('{"key": "a.pt", "input_sha')  # a kill mid-append
    r = cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", out)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert sorted(manifest(out)) == ["a.pt", "sub/b.pt", "sub/deeper/c.pt"]
    assert_described(out)


# ---------------------------------------------------------------------------------------------
# a record is not permission to overwrite


@pytest.mark.parametrize("replacement", ["other checkpoint", "same size", "truncated", "appended"])
def test_a_file_that_is_not_the_recorded_one_is_the_users(cli, tree, tmp_path, replacement):
    out = tmp_path / "out"
    args = ("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", out, "--keep-going")
    assert cli(*args).exit_code == 0
    ours = (out / "a.pt").read_bytes()
    theirs = {"other checkpoint": None, "same size": bytes(b ^ 0x55 for b in ours),
              "truncated": ours[:-10], "appended": ours + b"\0"}[replacement]
    if theirs is None:
        torch.save({"mine": torch.arange(5)}, out / "a.pt")
        theirs = (out / "a.pt").read_bytes()
    else:
        (out / "a.pt").write_bytes(theirs)
    r = cli(*args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out / "a.pt") in lines[0] and "not the file ckptfix recorded" in lines[0], lines
    assert "--force" in lines[0] and (out / "a.pt").read_bytes() == theirs  # untouched
    assert "2 skipped" in r.stdout
    r = cli(*args, "--force")
    assert r.exit_code == 0 and (out / "a.pt").read_bytes() == ours  # redone
    assert_described(out)


# ---------------------------------------------------------------------------------------------
# concurrent runs into one out-dir


def test_two_identical_runs_at_once_both_end_well(tree, tmp_path):
    """One does the work; the other waits for the lock and then finds everything up to date."""
    out = tmp_path / "out"
    reports = [tmp_path / "r1.jsonl", tmp_path / "r2.jsonl"]
    procs = [subprocess.Popen(cmd(tree, out, "--report", rep), env=env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rep in reports]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    done = [rec["input"] for rep in reports for rec in report_lines(rep) if rec["status"] == "done"]
    skipped = [rec["input"] for rep in reports for rec in report_lines(rep) if rec["status"] == "skipped"]
    assert sorted(done) == sorted(skipped) == sorted(str(tree / rel) for rel in INPUTS)
    assert len(batch.read_manifest(out)) == 3 and all(len(v) == 1 for v in batch.read_manifest(out).values())
    assert_outputs_right(tree, out)
    assert_described(out)


def _hold_lock(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def test_a_second_run_waits_for_the_holder_and_says_who_it_is(tree, tmp_path):
    out = tmp_path / "out"
    fd = _hold_lock(out)
    try:
        p = subprocess.Popen(cmd(tree, out), env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = p.stderr.readline()  # it says so once, then waits (for as long as the holder runs)
        assert first.strip() == f"ckptfix: waiting for ckptfix pid {os.getpid()} holding {out / LOCK}"
        assert p.poll() is None and not (out / MANIFEST).exists()
    finally:
        os.close(fd)  # the holder is done
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 0 and "3 done" in stdout and "waiting" not in stderr, stdout + stderr
    assert_outputs_right(tree, out)


def test_lock_timeout_fails_naming_the_holder(cli, tree, tmp_path):
    out = tmp_path / "out"
    fd = _hold_lock(out)
    try:
        r = cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", out, "--lock-timeout", "0")
    finally:
        os.close(fd)
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {out / LOCK}: ckptfix pid {os.getpid()} holds this out-dir")
    assert published(out) == []


# ---------------------------------------------------------------------------------------------
# the manifest cannot be written


def _manifest_write_fails(monkeypatch, err: int):
    real = os.write

    def write(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(MANIFEST):
            raise OSError(err, os.strerror(err))
        return real(fd, data)

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EIO, errno.EDQUOT])
def test_a_full_disk_on_the_manifest_is_one_line_and_nothing_undescribed(cli, tree, tmp_path, monkeypatch, err):
    """The output whose record cannot be written is not put in place (its temporary file is
    removed; an older output there stays, still described by its record); the batch stops."""
    out = tmp_path / "out"
    args = ("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", out, "--keep-going")
    assert cli(*args).exit_code == 0
    old = {p: p.read_bytes() for p in published(out)}
    for i, rel in enumerate(INPUTS):
        torch.save(ddp_state(10 + i), tree / rel)  # everything must be redone
    _manifest_write_fails(monkeypatch, err)
    r = cli(*args)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"ckptfix: error: {out / MANIFEST}: cannot record {out / 'a.pt'}: {os.strerror(err)}")
    assert "internal error" not in r.stderr and "2 not run" in r.stdout
    assert {p: p.read_bytes() for p in published(out)} == old and temp_files(out) == []
    assert_described(out)
    monkeypatch.undo()
    r = cli(*args)  # space again: the same command finishes the job
    assert r.exit_code == 0 and "3 done" in r.stdout
    assert_outputs_right(tree, out)


def test_a_file_size_limit_on_the_manifest_is_one_line(tree, tmp_path):
    """A real kernel error (RLIMIT_FSIZE: EFBIG) on the append, in a subprocess: one line, exit 2,
    no output left undescribed, and the manifest is not left with half a record."""
    out = tmp_path / "out"
    out.mkdir()
    limit = 256 << 10
    junk = "#" * (limit - 200) + "\n"  # an unparsable line: ignored; the next record crosses the limit
    (out / MANIFEST).write_text(junk)

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    r = subprocess.run(cmd(tree, out), capture_output=True, text=True, timeout=300, env=env(), preexec_fn=cap)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ckptfix: error: {out / MANIFEST}: cannot record "), lines
    assert "File too large" in lines[0]
    assert (out / MANIFEST).read_text() == junk
    assert published(out) == [] and temp_files(out) == []


# ---------------------------------------------------------------------------------------------
# deadlines start when the worker is ready


def test_the_deadline_does_not_count_a_slow_worker_start(cli, tree, tmp_path, monkeypatch):
    """A worker that takes longer to start (import torch on a busy machine) than --timeout
    allows per input: no input times out."""
    monkeypatch.setenv("CKPTFIX_WORKER_SLOW_START", "6")
    r = cli("apply", tree, "--recursive", "-r", "strip-ddp-prefix", "--out-dir", tmp_path / "out", "--timeout", "4")
    assert r.exit_code == 0 and "3 done" in r.stdout, r.stdout + r.stderr
