"""Issue 10 section 8: single-file commands read HDF5-backed files (libhdf5 can crash or hang on a
crafted file) in a child process first, with a deadline; other formats skip that step.

Crashes and hangs are injected in the child (``CKPTFIX_READER_FAULT``, as the batch tests do with
``CKPTFIX_WORKER_FAULT``): no HDF5 file that reliably kills libhdf5 can be shipped portably.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ckptfix import isolate

from conftest import KERAS, TORCH

H5_FILES = ["tiny_cnn.weights.h5", "tiny_cnn.keras", "tiny_cnn_legacy.h5"]


@pytest.fixture
def h5(tmp_path):
    def copy(name: str):
        dst = tmp_path / "in" / name
        dst.parent.mkdir(exist_ok=True)
        shutil.copy(KERAS / name, dst)
        return dst
    return copy


def one_error_line(r, path) -> str:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert str(path) in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("name", H5_FILES)
def test_a_crash_in_the_reader_is_one_line_and_no_output(cli, h5, name, tmp_path, monkeypatch):
    p = h5(name)
    before = p.read_bytes()
    monkeypatch.setenv("CKPTFIX_READER_FAULT", f"{p.name}:segv")
    out = tmp_path / "out.safetensors"
    for args in (["inspect", p], ["apply", p, "-r", "keras-to-torch", "-o", out],
                 ["diff", p, "--target", "Conv2d(3, 8, 3)"]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        assert "crashed (SIGSEGV)" in one_error_line(r, p)
    assert not out.exists() and list(out.parent.glob(".ckptfix-tmp-*")) == []
    assert p.read_bytes() == before


def test_a_hang_in_the_reader_hits_the_deadline(cli, h5, monkeypatch):
    p = h5("tiny_cnn.weights.h5")
    monkeypatch.setenv("CKPTFIX_READER_FAULT", f"{p.name}:hang")
    monkeypatch.setenv("CKPTFIX_READ_TIMEOUT", "2")
    r = cli("inspect", p)
    assert r.exit_code == 2
    assert "did not finish in 2 s" in one_error_line(r, p)


@pytest.mark.parametrize("name", H5_FILES)
def test_healthy_files_read_the_same_with_isolation(cli, h5, name, monkeypatch):
    p = h5(name)
    isolated = cli("inspect", p, "--json")
    monkeypatch.setenv(isolate.ENV, "1")  # as if already isolated: no child
    direct = cli("inspect", p, "--json")
    assert isolated.exit_code == direct.exit_code == 0, isolated.stderr
    assert isolated.stdout == direct.stdout


def test_an_error_the_child_finds_is_the_commands_error(cli, tmp_path, monkeypatch):
    """A truncated HDF5 file: the child reports it, and the message is the in-process one."""
    p = tmp_path / "cut.weights.h5"
    p.write_bytes((KERAS / "tiny_cnn.weights.h5").read_bytes()[:3000])
    isolated = cli("inspect", p)
    monkeypatch.setenv(isolate.ENV, "1")
    direct = cli("inspect", p)
    assert isolated.exit_code == direct.exit_code == 2
    assert one_error_line(isolated, p) == one_error_line(direct, p)


def test_other_formats_start_no_child(cli, monkeypatch):
    calls = []

    def no_child(*a, **kw):
        calls.append(a)
        raise AssertionError("a child process was started")

    monkeypatch.setattr(subprocess, "Popen", no_child)
    for p in (TORCH / "seed_conv10.pt", KERAS / "tiny_cnn.npz", KERAS / "tiny_cnn_tf2"):
        r = cli("inspect", p)
        assert r.exit_code == 0, r.stderr
    assert calls == []


def test_hdf5_inputs_do_start_a_child(cli, monkeypatch):
    started = []
    real = subprocess.Popen

    def spy(*a, **kw):
        started.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(subprocess, "Popen", spy)
    assert cli("inspect", KERAS / "tiny_cnn.keras").exit_code == 0
    assert len(started) == 1 and started[0][:-1] == isolate.module_command("ckptfix.isolate")


# -- F3: no child ckptfix starts imports code from the working directory or an input's directory

FAKE_MODULES = ["ckptfix/__init__.py", "ckptfix/isolate.py", "ckptfix/worker.py", "h5py.py", "json.py",
                "runpy.py", "numpy.py"]


def plant_fakes(where: Path, sentinel: Path) -> None:
    """Modules that, imported, append their name to ``sentinel``; the fake ckptfix.isolate then
    says ``{}`` and exits 0 (so that a parent trusting its exit status reads the file itself)."""
    for rel in FAKE_MODULES:
        f = where / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        code = f"open({str(sentinel)!r}, 'a').write({str(where / rel)!r} + '\\n')\n"
        if rel == "ckptfix/isolate.py":
            code += "print('{}')\n"
        f.write_text(code)


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A downloaded model repository: fakes in the working directory and in the input's own
    directory; the commands run from there. Returns (repo, input directory, sentinel)."""
    repo, sentinel = tmp_path / "repo", tmp_path / "SENTINEL"
    inputs = repo / "models"
    plant_fakes(repo, sentinel)
    plant_fakes(inputs, sentinel)
    shutil.copy(KERAS / "tiny_cnn.weights.h5", inputs / "x.weights.h5")
    shutil.copy(KERAS / "tiny_cnn_legacy.h5", repo / "y.h5")
    monkeypatch.chdir(repo)
    return repo, inputs, sentinel


def test_the_isolated_child_imports_nothing_from_the_working_directory(cli, planted):
    repo, inputs, sentinel = planted
    for p in ("y.h5", inputs / "x.weights.h5", Path("models/x.weights.h5")):
        r = cli("inspect", p)
        assert r.exit_code == 0, r.stderr
        assert "conv1" in r.stdout
    assert not sentinel.exists(), sentinel.read_text()


def test_batch_workers_import_nothing_from_the_working_directory(cli, planted, tmp_path):
    repo, inputs, sentinel = planted
    shutil.copy(TORCH / "seed_conv10.pt", inputs / "z.pt")
    (tmp_path / "none.yaml").write_text("ckptfix: 1\nrules: []\n")
    r = cli("apply", "models", "--recursive", "-r", tmp_path / "none.yaml", "--out-dir", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if not p.name.startswith(".")) == \
        ["x.weights.safetensors", "z.pt"]
    assert not sentinel.exists(), sentinel.read_text()


@pytest.mark.parametrize("safe_path", [True, False], ids=["-P", "-c stub"])
def test_module_command_leaves_the_working_directory_off_sys_path(planted, safe_path, monkeypatch):
    """Both ways of building the child (``-P`` on 3.11+, the ``-c`` stub on 3.10), run here."""
    repo, inputs, sentinel = planted
    monkeypatch.setenv(isolate.TOKEN_ENV, "t0ken")
    cmd = isolate.module_command("ckptfix.isolate", safe_path=safe_path) + ["y.h5"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **{isolate.ENV: "1"}))
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["token"] == "t0ken" and report["format"] == "keras-h5"
    assert list(report["files"]) == [os.path.realpath("y.h5")]
    assert not sentinel.exists(), sentinel.read_text()


@pytest.mark.parametrize("says", ["", "{}", '{"token": "not the one", "files": {}}', "not json"])
def test_a_child_that_exits_0_without_the_report_is_an_error(cli, h5, monkeypatch, says):
    """Exit status 0 proves nothing: only the report with the token the parent gave counts."""
    p = h5("tiny_cnn.weights.h5")
    monkeypatch.setattr(isolate, "module_command",
                        lambda module: [sys.executable, "-c", f"print({says!r})"])
    r = cli("inspect", p)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "without its report" in one_error_line(r, p)
    assert "conv1" not in r.stdout


# -- F4a: target checkpoints are isolated like inputs

def test_a_crash_reading_a_target_checkpoint_is_one_line_naming_it(cli, h5, tmp_path, monkeypatch):
    tgt = tmp_path / "in" / "tgt.weights.h5"
    tgt.parent.mkdir(exist_ok=True)
    shutil.copy(KERAS / "tiny_cnn.weights.h5", tgt)
    rules = tmp_path / "in" / "with-target.yaml"
    rules.write_text("ckptfix: 1\ntarget: tgt.weights.h5\nrules: []\n")
    src = KERAS / "tiny_cnn.npz"
    out = tmp_path / "out.safetensors"
    assert cli("check", src, "--target", tgt).exit_code == 0  # healthy: it fits
    monkeypatch.setenv("CKPTFIX_READER_FAULT", f"{tgt.name}:segv")
    for args in (["check", src, "--target", tgt], ["diff", src, "--target", tgt],
                 ["suggest", src, "--target", tgt], ["apply", src, "-r", "strip-ddp-prefix", "-o", out,
                                                     "--target", tgt],
                 ["apply", src, "-r", rules, "-o", out], ["check", src, "-r", rules]):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.stdout, r.stderr)
        line = one_error_line(r, "tgt.weights.h5")
        assert "crashed (SIGSEGV)" in line, line
    assert not out.exists()


# -- F4b: what the parent reads is what the child checked

def swap_after_preflight(monkeypatch, name: str, swap) -> list:
    """Run ``swap(path)`` right after the isolated check of a path ending in ``name``."""
    real, swapped = isolate.preflight, []

    def preflight_then_swap(path, **kw):
        checked = real(path, **kw)
        if str(path).endswith(name):
            swap(Path(path))
            swapped.append(str(path))
        return checked

    monkeypatch.setattr(isolate, "preflight", preflight_then_swap)
    return swapped


def _replace_with(other: Path):
    def swap(p: Path) -> None:
        tmp = p.with_name(p.name + ".new")
        shutil.copy(other, tmp)
        os.replace(tmp, p)
    return swap


def _touch(p: Path) -> None:
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def _repoint(other: Path):
    def swap(p: Path) -> None:
        tmp = p.with_name(p.name + ".new")
        tmp.symlink_to(other)
        os.replace(tmp, p)
    return swap


@pytest.mark.parametrize("how", ["replaced", "rewritten", "symlink repointed", "other format"])
def test_a_file_changed_after_the_isolated_check_is_not_read(cli, h5, tmp_path, monkeypatch, how):
    other = tmp_path / "in" / "conv1d.weights.h5"
    other.parent.mkdir()
    shutil.copy(KERAS / "conv1d.weights.h5", other)
    if how == "symlink repointed":
        h5("tiny_cnn.weights.h5")
        p = tmp_path / "in" / "link.weights.h5"
        p.symlink_to("tiny_cnn.weights.h5")
    else:
        p = h5("tiny_cnn.weights.h5")
    swap = {"replaced": _replace_with(other), "rewritten": _touch, "symlink repointed": _repoint(other),
            "other format": _replace_with(TORCH / "seed_conv10.pt")}[how]
    swapped = swap_after_preflight(monkeypatch, p.name, swap)
    out = tmp_path / "out.safetensors"
    for args in (["inspect", p, "--json"], ["apply", p, "-r", "keras-to-torch", "-o", out]):
        if how != "rewritten":  # back to the original for the next command
            p.unlink()
            (p.symlink_to("tiny_cnn.weights.h5") if how == "symlink repointed"
             else shutil.copy(KERAS / "tiny_cnn.weights.h5", p))
        r = cli(*args)
        assert r.exit_code == 2, (args, how, r.stdout, r.stderr)
        assert "changed between the isolated check and the read" in one_error_line(r, p)
        assert "conv1d" not in r.stdout and "seed" not in r.stdout and r.stdout.strip() == ""
    assert len(swapped) == 2
    assert not out.exists() and list(out.parent.glob(".ckptfix-tmp-*")) == []


def test_a_target_changed_after_the_isolated_check_is_not_read(cli, tmp_path, monkeypatch):
    tgt = tmp_path / "tgt.weights.h5"
    shutil.copy(KERAS / "tiny_cnn.weights.h5", tgt)
    swap_after_preflight(monkeypatch, tgt.name, _replace_with(KERAS / "conv1d.weights.h5"))
    r = cli("check", KERAS / "tiny_cnn.npz", "--target", tgt)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert "changed between the isolated check and the read" in one_error_line(r, tgt)


def test_an_unchanged_file_reads_through_the_tie(cli, h5, monkeypatch):
    """The control: the same hook, swapping nothing, changes nothing."""
    p = h5("tiny_cnn.weights.h5")
    swapped = swap_after_preflight(monkeypatch, p.name, lambda p: None)
    r = cli("inspect", p)
    assert r.exit_code == 0 and "conv1" in r.stdout and swapped == [str(p)]
