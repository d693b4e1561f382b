"""Nothing lost (issue 6): kill -9 at random moments leaves no partial output; a file-size limit
or a full disk gives a clear error and no output; --verify re-reads what was written."""

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
from safetensors.torch import load_file, save_file

from ckptfix import api
from ckptfix.formats import atomic, safetensors_io

RENAME = "ckptfix: 1\nrules:\n  - rename: {pattern: '/', replace: '.'}\n"
TRANSPOSE = RENAME + "  - transpose: {keys: 'kernel$', layout: HWIO->OIHW}\n"


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """About 48 MB of conv kernels: big enough that a write takes a while, small enough for CI."""
    d = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(0)
    src = {f"block{i}/conv/kernel": torch.randn(3, 3, 64, 256, generator=g) for i in range(20)}
    src["head/bias"] = torch.randn(10, generator=g)
    p = d / "big.safetensors"
    save_file(src, p)
    for name, text in (("rename.yaml", RENAME), ("transpose.yaml", TRANSPOSE)):
        (d / name).write_text(text)
    return p


def expected(src: Path, transpose: bool) -> dict:
    out = {}
    for k, v in load_file(src).items():
        out[k.replace("/", ".")] = v.permute(3, 2, 0, 1).contiguous() if transpose and v.dim() == 4 else v
    return out


def ckptfix_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "ckptfix", *map(str, args)]


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.startswith(atomic.TMP_PREFIX))


@pytest.mark.parametrize("rules, suffix", [("rename.yaml", "safetensors"), ("transpose.yaml", "safetensors"),
                                           ("transpose.yaml", "pt")])
def test_kill_9_never_leaves_a_partial_output(big, tmp_path, rules, suffix):
    """SIGKILL at random moments during the run: the output is absent or complete, never partial;
    the temporary files left are recognisable and the next run removes them."""
    rng = random.Random(f"{rules}{suffix}")
    out = tmp_path / f"out.{suffix}"
    want = expected(big, rules == "transpose.yaml")
    # how long a whole run takes, to spread the kills over it
    t0 = time.monotonic()
    subprocess.run(ckptfix_cmd("apply", big, "-r", big.parent / rules, "-o", out, "-q"), check=True, timeout=120)
    duration = time.monotonic() - t0
    out.unlink()
    complete = 0
    # the first kill lands at 50 ms, long before a run (which starts by importing torch) can finish,
    # so "some kills landed mid-run" holds even if the machine got faster since the timing run
    for delay in [0.05] + [rng.uniform(0.05, duration) for _ in range(5)]:
        p = subprocess.Popen(ckptfix_cmd("apply", big, "-r", big.parent / rules, "-o", out, "-q"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if out.exists():  # complete: every tensor, right values
            got = load_file(out) if suffix == "safetensors" else torch.load(out, weights_only=True)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
            complete += 1
            out.unlink()
        for name in leftovers(tmp_path):
            assert name.endswith(out.name)  # recognisable: prefix, pid, random tag, output name
    # the next run cleans up what the killed ones left, and says so
    r = subprocess.run(ckptfix_cmd("apply", big, "-r", big.parent / rules, "-o", out), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and leftovers(tmp_path) == []
    assert out.exists()
    assert complete < 6  # at least some kills landed mid-run


def test_stale_temp_files_of_live_runs_are_left_alone(tmp_path):
    live = tmp_path / f"{atomic.TMP_PREFIX}{os.getpid()}-0123abcd-x.safetensors"
    dead_pid = 2**22 + 12345  # above pid_max on most systems: never alive
    dead = tmp_path / f"{atomic.TMP_PREFIX}{dead_pid}-0123abcd-x.safetensors"
    other = tmp_path / "notes.ckptfix-tmp-1-0123abcd-x"  # not our prefix at the start
    for p in (live, dead, other):
        p.write_bytes(b"x")
    assert atomic.clean_stale(tmp_path) == [dead]
    assert live.exists() and other.exists() and not dead.exists()


def _fsize_limit(nbytes: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return limit


@pytest.mark.parametrize("rules", ["rename.yaml", "transpose.yaml"])
@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_file_size_limit_is_a_clear_error(big, tmp_path, rules, suffix):
    out = tmp_path / f"out.{suffix}"
    r = subprocess.run(ckptfix_cmd("apply", big, "-r", big.parent / rules, "-o", out), capture_output=True,
                       text=True, timeout=120, preexec_fn=_fsize_limit(4 << 20))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "File too large" in lines[0], r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_full_disk_in_the_copy_path_is_a_clear_error(big, tmp_path, monkeypatch, cli):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    monkeypatch.setattr(os, "pwrite", full)
    out = tmp_path / "out.safetensors"
    r = cli("apply", big, "-r", big.parent / "rename.yaml", "-o", out)
    assert r.exit_code == 2 and "No space left on device" in r.stderr and str(out) in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("rules", ["rename.yaml", "transpose.yaml"])
@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_verify_passes_on_a_good_write(cli, big, tmp_path, rules, suffix):
    out = tmp_path / f"out.{suffix}"
    r = cli("apply", big, "-r", big.parent / rules, "-o", out, "--verify")
    assert r.exit_code == 0, r.stderr


def test_verify_catches_bytes_that_differ_from_what_was_produced(cli, big, tmp_path, monkeypatch):
    """A writer that corrupts one tensor (a stand-in for a bad disk or a bug): --verify refuses
    to put the file in place; without --verify the bad file would have been written."""
    real = safetensors_io.tensor_bytes

    def corrupt(t):
        b = bytearray(real(t))
        if len(b) > 1000:
            b[1000] ^= 0xFF
        return memoryview(b)

    monkeypatch.setattr(safetensors_io, "tensor_bytes", corrupt)
    out = tmp_path / "out.safetensors"
    r = cli("apply", big, "-r", big.parent / "transpose.yaml", "-o", out, "--verify")
    assert r.exit_code == 2 and "verification failed" in r.stderr and str(out) in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []
    assert cli("apply", big, "-r", big.parent / "transpose.yaml", "-o", out).exit_code == 0  # unverified: written


def test_verify_in_the_api(big, tmp_path):
    res = api.apply_file(big, [big.parent / "transpose.yaml"], tmp_path / "o.safetensors", verify=True)
    assert res.ok, res.error
