"""Issue 10 section 8: single-file commands read HDF5-backed files (libhdf5 can crash or hang on a
crafted file) in a child process first, with a deadline; other formats skip that step.

Crashes and hangs are injected in the child (``CKPTFIX_READER_FAULT``, as the batch tests do with
``CKPTFIX_WORKER_FAULT``): no HDF5 file that reliably kills libhdf5 can be shipped portably.
"""

from __future__ import annotations

import shutil
import subprocess

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
