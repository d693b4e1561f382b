"""The "bad input" contract, driven through the CLI.

Every broken or hostile input gives exit code 2 and exactly one line on stderr that names the
file and the cause; nothing is written at the output path and no temporary file is left beside
it; inputs are never modified; an interrupted write leaves nothing behind (exit 130).

Every broken file is built here from real ones: tests/data/torch/seed_conv10.pt (written by
torch.save) and a safetensors file written by safetensors.torch.save_file from it.
"""

from __future__ import annotations

import argparse
import bz2
import functools
import gzip
import hashlib
import io
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import ckptfix
from ckptfix.formats.atomic import TMP_PREFIX

DATA = Path(__file__).parent / "data"
SEED = DATA / "torch" / "seed_conv10.pt"
PAD_PRESET = "seed-pad-conv"   # pads weight/bias of Conv2d(3, 10, 5) to 15 output channels


# ---------------------------------------------------------------------------------------------
# helpers


def sha(path: Path) -> str:
    h = hashlib.sha256()
    paths = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def leftovers(d: Path) -> list[str]:
    return sorted(p.name for p in d.glob(TMP_PREFIX + "*"))


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def assert_bad(r, path, cause: str, *, out: Path | None = None, code: int = 2) -> str:
    """Exit ``code``, one stderr line naming ``path`` and matching ``cause``, nothing written."""
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    line = one_line(r.stderr)
    assert r.exit_code == code, f"exit {r.exit_code}, stderr: {r.stderr}"
    assert str(path) in line, f"{path} not named in: {line}"
    assert re.search(cause, line, re.I), f"cause /{cause}/ not in: {line}"
    if out is not None:
        assert not out.exists(), f"{out} was created"
        assert leftovers(out.parent) == []
    return line


@pytest.fixture(scope="module")
def seed_sd() -> dict[str, torch.Tensor]:
    return torch.load(SEED, weights_only=True)


@pytest.fixture(scope="module")
def st_bytes(seed_sd, tmp_path_factory) -> bytes:
    p = tmp_path_factory.mktemp("st") / "seed_conv10.safetensors"
    save_file(seed_sd, str(p))
    return p.read_bytes()


@pytest.fixture
def seed_st(tmp_path, st_bytes) -> Path:
    p = tmp_path / "in" / "seed_conv10.safetensors"
    p.parent.mkdir(exist_ok=True)
    p.write_bytes(st_bytes)
    return p


@pytest.fixture
def seed_pt(tmp_path) -> Path:
    p = tmp_path / "in" / "seed_conv10.pt"
    p.parent.mkdir(exist_ok=True)
    shutil.copy(SEED, p)
    return p


@pytest.fixture
def outdir(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


# ---------------------------------------------------------------------------------------------
# building broken files from real ones


def st_split(b: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(b[:8], "little")
    return json.loads(b[8:8 + n]), b[8 + n:]


def st_join(header: dict | bytes, data: bytes) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data


def st_mutated(b: bytes, fn) -> bytes:
    header, data = st_split(b)
    fn(header)
    return st_join(header, data)


def _overlap(h):
    h["bias"]["data_offsets"] = [20, 60]        # bias [0,40) and weight [40,3040) in the real file


def _shape_mismatch(h):
    h["bias"]["shape"] = [11]                    # 44 bytes of F32, the range holds 40


def _huge_shape(h):
    h["weight"]["shape"] = [2**62, 2**62]


def st_duplicate_names(b: bytes) -> bytes:
    header, data = st_split(b)
    text = json.dumps(header, separators=(",", ":"))
    dup = '"bias":' + json.dumps(header["bias"], separators=(",", ":"))
    return st_join(("{" + dup + "," + text[1:]).encode(), data)


def st_non_utf8(b: bytes) -> bytes:
    n = int.from_bytes(b[:8], "little")
    raw = b[8:8 + n].replace(b'"bias"', b'"bi\xffs"')
    assert raw != b[8:8 + n]
    return b[:8] + raw + b[8 + n:]


def st_length(b: bytes, n: int) -> bytes:
    return n.to_bytes(8, "little") + b[8:]


def pt_rewritten(b: bytes, *, short: bool = False, deflate: bool = False) -> bytes:
    """Re-zip the checkpoint; its first storage record (data/0) shortened or deflated."""
    src = zipfile.ZipFile(io.BytesIO(b))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            first = info.filename.endswith("/data/0")
            if first and short:
                data = data[: len(data) // 3]
            kind = zipfile.ZIP_DEFLATED if first and deflate else zipfile.ZIP_STORED
            z.writestr(info.filename, data, compress_type=kind)
    return buf.getvalue()


def zip_of_text() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes/readme.txt", "not weights")
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def legacy_pt() -> bytes:
    """The seed in torch's legacy (pre-1.6, non-zip) format: torch.save(..., _use_new_zipfile_serialization=False)."""
    buf = io.BytesIO()
    torch.save(torch.load(SEED, weights_only=True), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def torchscript_pt() -> bytes:
    m = torch.nn.Conv2d(3, 10, 5)
    m.load_state_dict(torch.load(SEED, weights_only=True))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # torch.jit is deprecated; users still have these files
        torch.jit.save(torch.jit.script(m), buf)
    return buf.getvalue()


def torchscript_hostile() -> bytes:
    """A TorchScript archive whose data.pkl calls os.system instead of building the module."""
    src, buf = zipfile.ZipFile(io.BytesIO(torchscript_pt())), io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data.pkl"):
                data = b"\x80\x02cos\nsystem\nX\x05\x00\x00\x00touch\x85R."
            z.writestr(info.filename, data)
    return buf.getvalue()


def pt_with_entry(name: str) -> bytes:
    """The seed with one more zip entry, ``name`` (an empty name once raised IndexError)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(PT)) as src, zipfile.ZipFile(buf, "w") as z:
        for info in src.infolist():
            z.writestr(info, src.read(info))
        z.writestr(zipfile.ZipInfo(name), b"x")
    return buf.getvalue()


def raw_pickle() -> bytes:
    """A plain pickle (protocol 4) of the weights as lists: not something torch.load reads safely."""
    return pickle.dumps({k: v.tolist() for k, v in torch.load(SEED, weights_only=True).items()}, protocol=4)


PT = SEED.read_bytes()
ST_N = 128  # header length of the safetensors file save_file writes for the seed (checked below)
HTML = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body>Not Found</body></html>\n"
LFS = (b"version https://git-lfs.github.com/spec/v1\n"
       b"oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\nsize 4870\n")

# name -> (builder(safetensors bytes) -> file bytes, cause regex)
BROKEN: dict[str, tuple] = {
    "empty": (lambda st: b"", r"empty"),
    # safetensors cut inside the 8-byte length, inside the header, inside the data
    "st-cut-4": (lambda st: st[:4], r"truncated"),
    "st-cut-7": (lambda st: st[:7], r"truncated"),
    "st-cut-8": (lambda st: st[:8], r"truncated"),
    "st-cut-9": (lambda st: st[:9], r"truncated"),
    "st-cut-header-mid": (lambda st: st[:8 + ST_N // 2], r"truncated"),
    "st-cut-header-end": (lambda st: st[:8 + ST_N - 1], r"truncated"),
    "st-cut-data-start": (lambda st: st[:8 + ST_N], r"truncated"),
    "st-cut-data-mid": (lambda st: st[:8 + ST_N + 1001], r"truncated"),
    "st-cut-data-last-byte": (lambda st: st[:-1], r"truncated"),
    "st-trailing-bytes": (lambda st: st + b"\0" * 8, r"trailing"),
    "st-header-past-eof": (lambda st: st_length(st, len(st) * 10), r"truncated.*header|header.*\d+ bytes"),
    "st-header-over-100MB": (lambda st: st_length(st, 200_000_000), r"100 MB|too large"),
    "st-overlapping-offsets": (lambda st: st_mutated(st, _overlap), r"offset"),
    "st-shape-vs-range": (lambda st: st_mutated(st, _shape_mismatch), r"bias.*bytes.*range|range.*bias"),
    "st-duplicate-names": (st_duplicate_names, r"duplicate.*bias"),
    "st-non-utf8-header": (st_non_utf8, r"UTF-8"),
    "st-huge-shape": (lambda st: st_mutated(st, _huge_shape), r"shape.*weight"),
    "st-bad-json": (lambda st: st_length(st, ST_N)[: 8 + ST_N - 3] + b"!!!" + st[8 + ST_N:], r"invalid.*header"),
    # torch zip
    "pt-cut-2": (lambda st: PT[:2], r"truncated"),
    "pt-cut-100": (lambda st: PT[:100], r"truncated|corrupt"),
    "pt-cut-half": (lambda st: PT[: len(PT) // 2], r"truncated|corrupt"),
    "pt-cut-in-central-dir": (lambda st: PT[:-30], r"truncated|corrupt"),
    "pt-cut-last-byte": (lambda st: PT[:-1], r"truncated|corrupt"),
    "pt-zip-magic-overwritten": (lambda st: b"XXXX" + PT[4:], r"not a checkpoint"),
    "pt-short-storage-record": (lambda st: pt_rewritten(PT, short=True),
                                r"data/0.*(truncated|shorter|expected)"),
    "pt-deflated-storage-record": (lambda st: pt_rewritten(PT, deflate=True), r"data/0.*compressed"),
    "pt-legacy-cut-20": (lambda st: legacy_pt()[:20], r"truncated|unexpected (end|EOF)"),
    "pt-legacy-cut-half": (lambda st: legacy_pt()[: len(legacy_pt()) // 2], r"truncated|unexpected (end|EOF)|corrupt"),
    "pt-legacy-cut-last-byte": (lambda st: legacy_pt()[:-1], r"truncated|unexpected (end|EOF)|corrupt"),
    "pt-entry-with-empty-name": (lambda st: pt_with_entry(""), r"corrupt"),
    "torchscript-hostile-global": (lambda st: torchscript_hostile(), r"os\.system.*can run code"),
    # the other new formats (issue 13), cut short: each reader names the file and says truncated
    "onnx-cut-in-graph": (lambda st: (DATA / "onnx" / "cnn_ts.onnx").read_bytes()[:1000], r"truncated or corrupt ONNX"),
    "onnx-cut-in-initializer": (lambda st: (DATA / "onnx" / "cnn_ts.onnx").read_bytes()[:-40],
                                r"truncated or corrupt ONNX"),
    "flax-cut-in-array": (lambda st: (DATA / "flax" / "cnn.msgpack").read_bytes()[:1000], r"truncated"),
    "flax-cut-last-byte": (lambda st: (DATA / "flax" / "cnn.msgpack").read_bytes()[:-1], r"truncated"),
    "raw-pickle-protocol-4": (lambda st: raw_pickle(), r"not a PyTorch checkpoint|unsupported"),
    "zip-not-a-checkpoint": (lambda st: zip_of_text(), r"zip archive"),
    # things downloads and repositories hand out instead of weights
    "html-page": (lambda st: HTML, r"HTML"),
    "git-lfs-pointer": (lambda st: LFS, r"git-LFS"),
    "gzip": (lambda st: gzip.compress(PT), r"compressed"),
    "bzip2": (lambda st: bz2.compress(PT), r"compressed"),
    "random-bytes": (lambda st: b"\x01" + random.Random(0).randbytes(4095), r"not a checkpoint"),
    "random-bytes-pickle-marker": (lambda st: b"\x80" + random.Random(1).randbytes(4095),
                                   r"not a PyTorch checkpoint|unsupported|corrupt"),
}


def test_seed_safetensors_header_length(st_bytes):
    # The cut points above assume this; a header length of 128 also starts with byte 0x80, the
    # pickle protocol marker (this file was once misdetected as a legacy PyTorch pickle).
    assert int.from_bytes(st_bytes[:8], "little") == ST_N
    assert st_bytes[0] == 0x80


def test_real_files_are_fine(cli, seed_st, seed_pt, outdir):
    """The broken files below are built from these; they themselves inspect and apply fine."""
    for p in (seed_st, seed_pt):
        r = cli("inspect", p)
        assert r.exit_code == 0, r.stderr
        assert r.stderr == ""
    r = cli("inspect", seed_st, "--json")
    assert json.loads(r.stdout)["format"] == "safetensors"
    out = outdir / "fixed.safetensors"
    r = cli("apply", seed_st, "-r", PAD_PRESET, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert load_file(str(out))["weight"].shape == (15, 3, 5, 5)


def test_a_torchscript_archive_reads(cli, tmp_path, outdir):
    """The seed scripted and saved with torch.jit.save: read as its state dict (once refused as
    unsupported; tests/test_torchscript.py has the rest), and fixed like the seed."""
    p = tmp_path / "seed_scripted.pt"
    p.write_bytes(torchscript_pt())
    before = sha(p)
    r = cli("inspect", p)
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert "TorchScript archive" in r.stdout and "Conv2d(in=3, out=10, kernel=5x5)" in r.stdout
    out = outdir / "fixed.safetensors"
    r = cli("apply", p, "-r", PAD_PRESET, "-o", out)
    assert r.exit_code == 0, r.stderr
    got, seed = load_file(str(out)), torch.load(SEED, weights_only=True)
    assert got["weight"].shape == (15, 3, 5, 5) and torch.equal(got["weight"][:10], seed["weight"])
    assert sha(p) == before


@pytest.mark.parametrize("scheme", ["per_tensor", "per_channel"])
def test_a_quantized_state_dict_is_one_clear_line(cli, tmp_path, outdir, scheme):
    """A torch.ao quantized model's state dict (``torch.save``): once "cannot load PyTorch
    checkpoint (corrupt or unsupported): NotImplementedError: Could not run
    'aten::_empty_affine_quantized' with arguments from the 'QuantizedMeta' backend ...";
    now the cause, in one line, exit 2, nothing written."""
    import warnings

    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = (torch.quantize_per_tensor(w, 0.1, 0, torch.qint8) if scheme == "per_tensor" else
             torch.quantize_per_channel(w, torch.rand(4, generator=g) + 0.1, torch.zeros(4, dtype=torch.long), 0, torch.qint8))
    p = tmp_path / "q.pt"
    torch.save({"fc.weight": q, "fc.scale": torch.tensor(0.5)}, p)
    for args in (("inspect", p), ("apply", p, "-o", outdir / "q.safetensors")):
        r = cli(*args)
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"ckptfix: error: {p}: "), r.stderr
        assert "holds quantized tensors" in lines[0] and "QuantizedMeta" not in lines[0], lines[0]
    assert not (outdir / "q.safetensors").exists()


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_file(cli, name, tmp_path, outdir, st_bytes):
    build, cause = BROKEN[name]
    p = tmp_path / f"{name}.bin"
    p.write_bytes(build(st_bytes))
    before = sha(p)
    assert_bad(cli("inspect", p), p, cause)
    out = outdir / "out.safetensors"
    assert_bad(cli("apply", p, "-r", PAD_PRESET, "-o", out), p, cause, out=out)
    out_pt = outdir / "out.pt"
    assert_bad(cli("apply", p, "-r", PAD_PRESET, "-o", out_pt), p, cause, out=out_pt)
    assert sha(p) == before


def test_broken_sharded_checkpoint(cli, tmp_copy, outdir):
    d = tmp_copy(DATA / "torch" / "hf_sharded")
    index = d / "model.safetensors.index.json"
    shard = d / "model-00003-of-00006.safetensors"
    out = outdir / "out.safetensors"
    shard.write_bytes(shard.read_bytes()[:-7])                 # a shard cut short: named, not the dir
    for p in (d, index):
        assert_bad(cli("inspect", p), shard, r"truncated")
    assert_bad(cli("apply", d, "-r", "strip-ddp-prefix", "-o", out), shard, r"truncated", out=out)
    shard.unlink()                                             # a shard missing: the index names it
    assert_bad(cli("inspect", d), index, r"model-00003-of-00006\.safetensors.*missing")
    index.write_text("{not json")
    assert_bad(cli("inspect", d), index, r"not a valid safetensors index")
    assert_bad(cli("apply", d, "-r", "strip-ddp-prefix", "-o", out), index, r"index", out=out)


def test_missing_file(cli, tmp_path, outdir):
    p = tmp_path / "nope.pt"
    assert_bad(cli("inspect", p), p, r"no such file")
    out = outdir / "out.pt"
    assert_bad(cli("apply", p, "-r", PAD_PRESET, "-o", out), p, r"no such file", out=out)


def test_directory_that_is_not_a_checkpoint(cli, tmp_path, outdir):
    d = tmp_path / "run-42"
    d.mkdir()
    (d / "notes.txt").write_text("training log\n")
    (d / "config.json").write_text("{}\n")
    assert_bad(cli("inspect", d), d, r"directory")
    out = outdir / "out.safetensors"
    assert_bad(cli("apply", d, "-r", PAD_PRESET, "-o", out), d, r"directory", out=out)


_UNREADABLE_SCRIPT = r"""
import json, sys
from typer.testing import CliRunner
import ckptfix
from ckptfix.cli import app

p, out, preset = sys.argv[1:4]
res = {}
try:
    ckptfix.inspect(p)
    res["api"] = None
except ckptfix.CkptfixError as e:
    res["api"] = [type(e).__name__, str(e)]
r = ckptfix.apply_file(p, [preset], out)
res["apply_file"] = [r.exit_code, r.error]
runner = CliRunner()
for name, args in (("inspect", ["inspect", p]), ("apply", ["apply", p, "-r", preset, "-o", out])):
    x = runner.invoke(app, args)
    res[name] = [x.exit_code, x.stderr, x.stdout]
print(json.dumps(res))
"""


def _drop_dac_capabilities() -> None:
    """In the child: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, so root obeys file modes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):
        if libc.prctl(24, cap, 0, 0, 0) != 0:   # PR_CAPBSET_DROP: gone from the bounding set at exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.fixture(scope="module")
def unreadable(tmp_path_factory):
    """A chmod-000 checkpoint, read by a child process that file permissions apply to.

    We run as root, which chmod does not stop; so the child drops the two capabilities that let
    root bypass file modes (a subprocess, so that this test process keeps them).
    """
    d = tmp_path_factory.mktemp("perm")
    p = d / "seed_conv10.pt"
    shutil.copy(SEED, p)
    p.chmod(0)
    out = d / "out" / "out.pt"
    out.parent.mkdir()
    try:
        if os.geteuid() != 0:
            preexec = None
        elif sys.platform.startswith("linux"):
            preexec = _drop_dac_capabilities
        else:
            pytest.skip("running as root, and dropping capabilities needs Linux")
        try:
            r = subprocess.run([sys.executable, "-c", _UNREADABLE_SCRIPT, str(p), str(out), PAD_PRESET],
                               capture_output=True, text=True, timeout=120, preexec_fn=preexec)
        except subprocess.SubprocessError as e:
            pytest.skip(f"running as root and cannot drop CAP_DAC_OVERRIDE in a child: {e}")
        assert r.returncode == 0, r.stderr
        return p, out, json.loads(r.stdout)
    finally:
        p.chmod(0o644)


def test_permission_denied_library(unreadable):
    p, out, res = unreadable
    kind, msg = res["api"]
    assert kind == "InputError"
    assert msg.startswith(f"{p}: ") and "permission denied" in msg.lower()
    code, err = res["apply_file"]
    assert code == 2 and str(p) in err and "permission denied" in err.lower()
    assert not out.exists() and leftovers(out.parent) == []


@pytest.mark.parametrize("command", ["inspect", "apply"])
def test_permission_denied_cli(unreadable, command):
    from types import SimpleNamespace

    p, out, res = unreadable
    code, stderr, stdout = res[command]
    r = SimpleNamespace(exit_code=code, stderr=stderr, stdout=stdout)
    assert_bad(r, p, r"permission denied", out=out if command == "apply" else None)


# ---------------------------------------------------------------------------------------------
# unsafe pickles


class _Payload:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_unknown_global_is_kept_as_inert_data(cli, seed_sd, tmp_path, outdir):
    """A global outside torch's allowlist is never imported or called: it is kept as a
    placeholder, listed in a warning, and written back unchanged into a .pt output."""
    p = tmp_path / "with_args.pt"
    torch.save({"state_dict": seed_sd, "hparams": argparse.Namespace(lr=1, name="x")}, p)
    r = cli("inspect", p, "--json")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert {t["name"] for t in info["tensors"]} == {"weight", "bias"}
    assert info["inert_globals"] == ["argparse.Namespace"]
    assert any("argparse.Namespace" in w and "inert" in w for w in info["warnings"]), info["warnings"]
    out = outdir / "out.pt"
    r = cli("apply", p, "-r", PAD_PRESET, "-o", out)
    assert r.exit_code == 0, r.stderr
    back = torch.load(out, weights_only=False)  # our own file: the real class is rebuilt
    assert back["hparams"] == argparse.Namespace(lr=1, name="x")
    assert back["state_dict"]["weight"].shape[0] == 15
    # a vetted data type may be admitted as the real object: then nothing is inert
    r = cli("inspect", p, "--allow-global", "argparse.Namespace", "--json")
    assert r.exit_code == 0, r.stderr
    assert "inert_globals" not in json.loads(r.stdout)


def test_legacy_format_unknown_global_is_inert(cli, seed_sd, tmp_path, outdir):
    p = tmp_path / "legacy_args.pt"
    torch.save({"state_dict": seed_sd, "hparams": argparse.Namespace(lr=1)}, p,
               _use_new_zipfile_serialization=False)
    r = cli("inspect", p, "--json")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["inert_globals"] == ["argparse.Namespace"]
    out = outdir / "out.pt"
    assert cli("apply", p, "-r", PAD_PRESET, "-o", out).exit_code == 0
    assert torch.load(out, weights_only=False)["hparams"] == argparse.Namespace(lr=1)


def test_reduce_payload_never_runs(cli, seed_sd, tmp_path, outdir):
    sentinel = tmp_path / "PWNED"
    p = tmp_path / "evil.pt"
    torch.save({"state_dict": seed_sd, "x": _Payload(f"touch {sentinel}")}, p)
    out = outdir / "out.pt"
    assert_bad(cli("inspect", p), p, r"posix\.system")
    assert_bad(cli("apply", p, "-r", PAD_PRESET, "-o", out), p, r"posix\.system", out=out)
    # even when the user allow-lists it, torch blocks the module
    for name in ("posix.system", "os.system"):
        assert_bad(cli("inspect", p, "--allow-global", name), p, r"system")
    assert not sentinel.exists(), "the pickle payload ran"


def test_repacked_zip_is_read(cli, tmp_path, seed_sd):
    p = tmp_path / "repacked.pt"
    p.write_bytes(pt_rewritten(PT))
    assert torch.equal(torch.load(p, weights_only=True)["bias"], seed_sd["bias"])  # torch reads it fine
    r = cli("inspect", p)
    assert r.exit_code == 0, r.stderr


# ---------------------------------------------------------------------------------------------
# rules errors: exit 2, file:line, nothing written


RULES_ERRORS = {
    "invalid-yaml": ("rules:\n  - pad: {keys: '^weight$', axis: 0\n", r"invalid YAML"),
    "invalid-yaml-indent": ("rules:\n  - pad:\n      keys: weight\n     axis: 0\n", r"invalid YAML"),
    "unknown-rule": ("rules:\n  - pads: {keys: '^weight$', axis: 0, size: 15}\n",
                     r"unknown rule 'pads'.*did you mean 'pad'"),
    "unknown-field": ("rules:\n  - pad: {keys: '^weight$', axis: 0, size: 15, fil: zeros}\n",
                      r"unknown field 'fil'.*did you mean 'fill'"),
    "unknown-top-level": ("rule:\n  - pad: {keys: '^weight$', axis: 0, size: 15}\n",
                          r"unknown top-level field 'rule'.*did you mean 'rules'"),
    "bad-regex": ("rules:\n  - pad: {keys: '^(weight', axis: 0, size: 15}\n", r"regex.*does not compile"),
    "matches-no-key": ("rules:\n  - pad: {keys: '^conv9\\.weight$', axis: 0, size: 15}\n", r"match(es)? no"),
    "pad-to-smaller": ("rules:\n  - pad: {keys: '^weight$', axis: 0, size: 5}\n", r"smaller"),
    "slice-out-of-range": ("rules:\n  - slice: {keys: '^bias$', axis: 0, stop: 20}\n", r"out of range"),
    "slice-axis-out-of-range": ("rules:\n  - slice: {keys: '^bias$', axis: 3, stop: 2}\n", r"axis 3.*out of range"),
    "transpose-rank": ("rules:\n  - transpose: {keys: '^(weight|bias)$', layout: HWIO->OIHW}\n",
                       r"bias.*rank-4"),
    "bad-layout": ("rules:\n  - transpose: {keys: '^weight$', layout: HWIO->XYZW}\n", r"layout"),
    "strip-missing-prefix": ("rules:\n  - strip_prefix: module.\n", r"module\."),
}


@pytest.mark.parametrize("name", list(RULES_ERRORS))
@pytest.mark.parametrize("fmt", ["safetensors", "pt"])
def test_rules_error(cli, name, fmt, tmp_path, seed_st, seed_pt, outdir):
    text, cause = RULES_ERRORS[name]
    rules = tmp_path / f"{name}.yaml"
    rules.write_text("ckptfix: 1\n" + text)
    inp = seed_st if fmt == "safetensors" else seed_pt
    before = sha(inp)
    out = outdir / f"out.{fmt}"
    r = cli("apply", inp, "-r", rules, "-o", out)
    line = assert_bad(r, rules, cause, out=out)
    assert re.search(re.escape(str(rules)) + r":\d+: ", line), f"no file:line in {line}"
    assert sha(inp) == before


def test_unknown_field_with_suggestion_when_required_field_is_misspelt(cli, tmp_path, seed_st, outdir):
    rules = tmp_path / "sizes.yaml"
    rules.write_text("ckptfix: 1\nrules:\n  - pad: {keys: '^weight$', axis: 0, sizes: 15}\n")
    out = outdir / "out.safetensors"
    r = cli("apply", seed_st, "-r", rules, "-o", out)
    line = assert_bad(r, f"{rules}:3", r"unknown field 'sizes'.*did you mean 'size'", out=out)
    assert line


def test_transpose_rank_mismatch_is_an_error_not_a_skip(cli, tmp_path, seed_st, outdir):
    rules = tmp_path / "t.yaml"
    rules.write_text("ckptfix: 1\nrules:\n  - transpose: {keys: '^bias$', layout: HWIO->OIHW}\n")
    out = outdir / "out.safetensors"
    assert_bad(cli("apply", seed_st, "-r", rules, "-o", out, "--dry-run"), f"{rules}:3", r"bias")
    assert_bad(cli("apply", seed_st, "-r", rules, "-o", out), f"{rules}:3", r"bias.*rank-4", out=out)


def test_missing_rules_file(cli, tmp_path, seed_st, outdir):
    rules = tmp_path / "nope.yaml"
    out = outdir / "out.safetensors"
    assert_bad(cli("apply", seed_st, "-r", rules, "-o", out), rules, r"no such rules file", out=out)


# ---------------------------------------------------------------------------------------------
# output path


@pytest.mark.parametrize("force", [False, True])
def test_output_equal_to_input_is_refused(cli, seed_st, seed_pt, force):
    for inp in (seed_st, seed_pt):
        before = sha(inp)
        extra = ["--force"] if force else []
        assert_bad(cli("apply", inp, "-r", PAD_PRESET, "-o", inp, *extra), inp, r"input")
        # the same file spelled differently
        other = inp.parent / ".." / inp.parent.name / inp.name
        assert_bad(cli("apply", inp, "-r", PAD_PRESET, "-o", other, *extra), inp.name, r"input")
        assert sha(inp) == before
        assert leftovers(inp.parent) == []


def test_existing_output_needs_force(cli, seed_st, outdir):
    out = outdir / "out.safetensors"
    out.write_bytes(b"precious")
    assert_bad(cli("apply", seed_st, "-r", PAD_PRESET, "-o", out), out, r"exists.*--force")
    assert out.read_bytes() == b"precious"
    assert leftovers(outdir) == []

    r = cli("apply", seed_st, "-r", PAD_PRESET, "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert load_file(str(out))["weight"].shape == (15, 3, 5, 5)
    assert leftovers(outdir) == []


def test_existing_output_needs_force_pt(cli, seed_pt, outdir):
    out = outdir / "out.pt"
    out.write_bytes(b"precious")
    assert_bad(cli("apply", seed_pt, "-r", PAD_PRESET, "-o", out), out, r"exists.*--force")
    assert out.read_bytes() == b"precious"
    r = cli("apply", seed_pt, "-r", PAD_PRESET, "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    assert torch.load(out, weights_only=True)["weight"].shape == (15, 3, 5, 5)
    assert leftovers(outdir) == []


@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_output_directory_missing(cli, seed_st, tmp_path, suffix):
    out = tmp_path / "no" / "such" / f"out.{suffix}"
    assert_bad(cli("apply", seed_st, "-r", PAD_PRESET, "-o", out), out, r"cannot write.*no such")
    assert not (tmp_path / "no").exists()


# ---------------------------------------------------------------------------------------------
# interrupted and failed writes


@pytest.fixture
def interrupt_safetensors(monkeypatch):
    """SafetensorsWriter.write raises KeyboardInterrupt on the 2nd tensor (after the 1st is on disk)."""
    from ckptfix.formats import safetensors_io

    real = safetensors_io.SafetensorsWriter.write
    calls = []

    def write(self, name, tensor):
        calls.append(name)
        if len(calls) == 2:
            self.f.flush()
            raise KeyboardInterrupt
        return real(self, name, tensor)

    monkeypatch.setattr(safetensors_io.SafetensorsWriter, "write", write)
    return calls


@pytest.fixture
def interrupt_pt(monkeypatch):
    """save_pt writes part of the file, then the user presses Ctrl-C."""
    from ckptfix.formats import torch_io

    calls = []

    def save_pt(f, obj, **_kw):
        calls.append(1)
        f.write(b"PK\x03\x04 half a checkpoint")
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch_io, "save_pt", save_pt)
    return calls


def test_interrupted_safetensors_write_api(interrupt_safetensors, seed_st, outdir):
    out = outdir / "out.safetensors"
    before = sha(seed_st)
    with pytest.raises(KeyboardInterrupt):
        ckptfix.apply_file(seed_st, [PAD_PRESET], out)
    assert len(interrupt_safetensors) == 2
    assert not out.exists()
    assert leftovers(outdir) == []
    assert sha(seed_st) == before


def test_interrupted_safetensors_write_cli(cli, interrupt_safetensors, seed_st, outdir):
    out = outdir / "out.safetensors"
    r = cli("apply", seed_st, "-r", PAD_PRESET, "-o", out)
    assert r.exit_code == 130, r.stderr
    assert "interrupted" in one_line(r.stderr)
    assert len(interrupt_safetensors) == 2
    assert not out.exists()
    assert leftovers(outdir) == []


def test_interrupted_sharded_write_cli(cli, interrupt_safetensors, seed_st, outdir):
    out = outdir / "sharded"
    r = cli("apply", seed_st, "-r", PAD_PRESET, "-o", out, "--shard-size", "1KB")
    assert r.exit_code == 130, r.stderr
    assert not out.exists()
    assert leftovers(outdir) == []


def test_interrupted_write_keeps_the_old_output(cli, interrupt_safetensors, seed_st, outdir):
    out = outdir / "out.safetensors"
    out.write_bytes(b"previous result")
    r = cli("apply", seed_st, "-r", PAD_PRESET, "-o", out, "--force")
    assert r.exit_code == 130, r.stderr
    assert out.read_bytes() == b"previous result"
    assert leftovers(outdir) == []


def test_interrupted_pt_write_api(interrupt_pt, seed_pt, outdir):
    out = outdir / "out.pt"
    before = sha(seed_pt)
    with pytest.raises(KeyboardInterrupt):
        ckptfix.apply_file(seed_pt, [PAD_PRESET], out)
    assert interrupt_pt == [1]
    assert not out.exists()
    assert leftovers(outdir) == []
    assert sha(seed_pt) == before


def test_interrupted_pt_write_cli(cli, interrupt_pt, seed_pt, seed_st, outdir):
    for inp in (seed_pt, seed_st):
        out = outdir / f"from_{inp.suffix[1:]}.pt"
        r = cli("apply", inp, "-r", PAD_PRESET, "-o", out)
        assert r.exit_code == 130, r.stderr
        assert "interrupted" in one_line(r.stderr)
        assert not out.exists()
        assert leftovers(outdir) == []
    assert len(interrupt_pt) == 2


def test_write_error_leaves_nothing(cli, monkeypatch, seed_st, outdir):
    """A full disk half-way: exit 2, one line naming the output, nothing left."""
    from ckptfix.formats import safetensors_io

    real = safetensors_io.SafetensorsWriter.write

    def write(self, name, tensor):
        if self._next == 1:
            raise OSError(28, "No space left on device")
        return real(self, name, tensor)

    monkeypatch.setattr(safetensors_io.SafetensorsWriter, "write", write)
    out = outdir / "out.safetensors"
    assert_bad(cli("apply", seed_st, "-r", PAD_PRESET, "-o", out), out, r"no space left", out=out)


# ---------------------------------------------------------------------------------------------
# inputs are never modified


def _written(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


INPUTS = {
    "pt": lambda tmp_copy, tmp_path, st: tmp_copy(SEED),
    "safetensors": lambda tmp_copy, tmp_path, st: _written(tmp_path / "seed.safetensors", st),
    "hf-sharded": lambda tmp_copy, tmp_path, st: tmp_copy(DATA / "torch" / "hf_sharded"),
    "keras-h5": lambda tmp_copy, tmp_path, st: tmp_copy(DATA / "keras" / "tiny_cnn.weights.h5"),
    "pt-lightning": lambda tmp_copy, tmp_path, st: tmp_copy(DATA / "torch" / "lightning_net.ckpt"),
}


@pytest.mark.parametrize("kind", list(INPUTS))
@pytest.mark.parametrize("suffix", ["safetensors", "pt"])
def test_inputs_never_modified(cli, kind, suffix, tmp_copy, tmp_path, st_bytes, outdir):
    inp = INPUTS[kind](tmp_copy, tmp_path, st_bytes)
    rules = tmp_path / "prefix.yaml"
    rules.write_text("ckptfix: 1\nrules:\n  - add_prefix: net.\n")
    before = sha(inp)
    mtime = os.stat(inp).st_mtime_ns
    out = outdir / f"out.{suffix}"
    r = cli("apply", inp, "-r", rules, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert out.exists() and leftovers(outdir) == []
    # a failing run (rule matches nothing) and a refused one (output exists) change nothing either
    bad = tmp_path / "bad.yaml"
    bad.write_text("ckptfix: 1\nrules:\n  - drop: '^nothing-like-this$'\n  - pad: {keys: zzz, size: 3}\n")
    assert cli("apply", inp, "-r", bad, "-o", outdir / "x.safetensors").exit_code == 2
    assert cli("apply", inp, "-r", rules, "-o", out).exit_code == 2
    assert sha(inp) == before
    assert os.stat(inp).st_mtime_ns == mtime


@pytest.mark.parametrize("dims", [[0, 2**62], [2**62, 0], [0, 2**31, 2**31], [3, 0, 2**63 - 1]])
def test_a_shape_no_array_can_have_is_refused_by_every_reader(cli, tmp_path, dims):
    """The class the Flax and .npy readers each met (an empty tensor with an impossible dimension,
    which would be written out and then refused): checked once for every reader when a checkpoint
    is opened (``limits.impossible_shape``). Here through an ONNX initializer of no bytes."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    t = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=dims, raw_data=b"")
    graph = helper.make_graph([], "g", [], [], initializer=[t])
    p = tmp_path / "m.onnx"
    p.write_bytes(helper.make_model(graph).SerializeToString())
    before = sha(p)
    assert_bad(cli("inspect", p), p, r"too large for any array")
    out = tmp_path / "out.safetensors"
    assert_bad(cli("apply", p, "-r", PAD_PRESET, "-o", out), p, r"too large for any array", out=out)
    assert sha(p) == before
