"""Decompression bombs: zip members that expand far beyond the file (deflated zeros), zip headers
that lie about a member's size, and bombs nested inside bombs. Each is run through the CLI in a
subprocess under an address-space cap (RLIMIT_AS): the run must end with exit 2 and one line
naming the file, and its peak RSS must stay far below what the bomb expands to.

Before the fix (f53d0ac) a 1 MiB .keras reached 2.1 GiB and a 1 MiB .pt 4.3 GiB; under a cap
they ended as "internal error: MemoryError" with no file named.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

GiB = 1 << 30
CAP = 3 * GiB // 2  # address space of the CLI process: every bomb below expands beyond it
RSS_BOUND = 800 << 20  # what a bomb's run may peak at (torch + h5py imported: ~400 MiB)


# ------------------------------------------------------------------------------ zip building

def deflated_zeros(n: int, prefix: bytes = b"") -> tuple[bytes, int]:
    """(raw deflate stream, CRC-32) of ``prefix`` + ``n - len(prefix)`` zero bytes, built without
    holding them: after a full flush every block of zeros compresses to the same bytes."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = 16 << 20
    zeros = bytes(block)
    out = [c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)]
    packed = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == packed
    whole, rest = divmod(n - len(prefix), block)
    out += [packed] * whole
    out.append(c.compress(bytes(rest)) + c.flush())
    crc = zlib.crc32(prefix)
    for _ in range(whole):
        crc = zlib.crc32(zeros, crc)
    return b"".join(out), zlib.crc32(bytes(rest), crc)


def make_zip(members: list[tuple]) -> bytes:
    """A zip from ``(name, raw bytes as stored, method, crc, declared size)``: the declared size
    (the central directory's and the local header's) may lie."""
    out = io.BytesIO()
    central = []
    for name, raw, method, crc, size in members:
        off = out.tell()
        nb = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, len(raw), size,
                              len(nb), 0) + nb + raw)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc,
                                   len(raw), size, len(nb), 0, 0, 0, 0, 0, off) + nb)
    cd = out.tell()
    for c in central:
        out.write(c)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - cd, cd, 0))
    return out.getvalue()


def stored(name: str, data: bytes) -> tuple:
    return name, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)


def deflated(name: str, data: bytes, declared: int | None = None) -> tuple:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    raw = c.compress(data) + c.flush()
    return name, raw, zipfile.ZIP_DEFLATED, zlib.crc32(data), len(data) if declared is None else declared


def zeros_member(name: str, n: int, prefix: bytes = b"", declared: int | None = None) -> tuple:
    """A deflated member of ``n`` bytes (``prefix`` then zeros); a ``declared`` size lies, with the
    CRC of what it declares (so zipfile, which stops there, would take the cut bytes as valid)."""
    raw, crc = deflated_zeros(n, prefix)
    if declared is not None:
        crc = zlib.crc32(bytes(declared - len(prefix)), zlib.crc32(prefix))
    return name, raw, zipfile.ZIP_DEFLATED, crc, n if declared is None else declared


# ------------------------------------------------------------------------------ inputs

def small_h5() -> bytes:
    import h5py

    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_dataset("layers/dense/vars/0", data=np.ones((4, 3), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros(3, np.float32))
    return bio.getvalue()


CONFIG = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": [
    {"class_name": "Dense", "config": {"name": "dense", "units": 3}}]}}).encode()


def keras(members_after_config: list[tuple], config: tuple | None = None) -> bytes:
    return make_zip([config or stored("config.json", CONFIG),
                     stored("metadata.json", b'{"keras_version": "3.0.0"}')] + members_after_config)


def torch_members() -> list[tuple[str, bytes]]:
    import torch

    bio = io.BytesIO()
    torch.save({"w": torch.ones(3)}, bio)
    with zipfile.ZipFile(io.BytesIO(bio.getvalue())) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def torch_zip(replace: dict[str, tuple]) -> bytes:
    """torch's own members, stored, with those named by their last part replaced."""
    out = []
    for name, data in torch_members():
        last = name.split("/", 1)[1]
        if last in replace:
            out.append((name,) + replace[last][1:])
        else:
            out.append(stored(name, data))
    return make_zip(out)


def npy(arr: np.ndarray) -> bytes:
    bio = io.BytesIO()
    np.save(bio, arr)
    return bio.getvalue()


def npy_header(shape, dtype="<f4") -> bytes:
    return npy(np.zeros(shape, dtype))[: -int(np.prod(shape)) * np.dtype(dtype).itemsize or None]


# ------------------------------------------------------------------------------ running

def run_capped(*args: str, cap: int = CAP) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in bytes) of ``python -m ckptfix ARGS`` under RLIMIT_AS."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    with open(os.devnull, "wb") as null, __import__("tempfile").TemporaryFile() as err:
        p = subprocess.Popen([sys.executable, "-m", "ckptfix", *args], stdout=null, stderr=err,
                             preexec_fn=limit)
        _pid, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return p.returncode, err.read().decode("utf-8", "replace"), usage.ru_maxrss * 1024


def assert_apply_refused(path: Path, out: Path) -> None:
    """``apply path -o out`` under the cap: exit 2, one line naming the file, bounded RSS, no output."""
    code, err, rss = run_capped("apply", str(path), "-o", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(path) in err, err
    assert "internal error" not in err and rss < RSS_BOUND, err
    assert not out.exists()


def assert_refused(path: Path, pattern: str, *args: str) -> str:
    import re

    code, err, rss = run_capped("inspect", str(path), *args)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"ckptfix: error: {path}: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    assert re.search(pattern, lines[0]), err
    assert rss < RSS_BOUND, f"peak RSS {rss >> 20} MiB"
    return lines[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bombs")


def test_a_normal_deflated_keras_archive_still_reads(work):
    # Keras may deflate its members: a compressed model.weights.h5 is decompressed into a
    # temporary file by a bounded stream
    p = work / "ok.keras"
    p.write_bytes(keras([deflated("model.weights.h5", small_h5())], deflated("config.json", CONFIG)))
    code, err, _rss = run_capped("inspect", str(p))
    assert code == 0, err


# -- .keras

def test_keras_weights_member_of_deflated_zeros(work):
    p = work / "zeros.keras"
    p.write_bytes(keras([zeros_member("model.weights.h5", 2 * GiB)]))
    assert p.stat().st_size < 4 << 20
    assert_refused(p, r"member model\.weights\.h5 is not an HDF5 file")


def test_keras_weights_member_real_h5_padded_with_zeros(work):
    # a valid HDF5 file followed by 2 GiB of zeros: its superblock declares its true size
    p = work / "padded.keras"
    p.write_bytes(keras([zeros_member("model.weights.h5", 2 * GiB, prefix=small_h5())]))
    assert_refused(p, r"compressed member model\.weights\.h5 expands beyond the [\d,]+ bytes its HDF5 superblock")


@pytest.mark.parametrize("member", ["config.json", "metadata.json"])
def test_keras_json_member_of_deflated_whitespace(work, member):
    # 2 GiB of zeros after a valid JSON prefix (json.loads would have held it all, twice)
    p = work / f"{member}.keras"
    others = {"config.json": stored("config.json", CONFIG), "metadata.json": stored("metadata.json", b"{}")}
    others[member] = zeros_member(member, 2 * GiB, prefix=b'{"a": "')
    p.write_bytes(make_zip([others["config.json"], others["metadata.json"],
                            stored("model.weights.h5", small_h5())]))
    assert_refused(p, rf"compressed member {member} expands beyond 64 MiB")


def test_keras_member_declaring_1_kib_that_inflates_to_2_gib(work):
    # the zip header lies: the stream is cut at the declared size and reported, never trusted
    p = work / "lie-small.keras"
    p.write_bytes(keras([stored("model.weights.h5", small_h5())],
                        zeros_member("config.json", 2 * GiB, prefix=b'{"a": "', declared=1024)))
    assert_refused(p, r"compressed member config\.json expands beyond its declared 1,024 bytes")


def test_keras_member_declaring_more_than_deflate_can_produce(work):
    p = work / "lie-big.keras"
    p.write_bytes(keras([deflated("model.weights.h5", small_h5(), declared=0xFFFFFFF0)]))
    assert_refused(p, r"compressed member model\.weights\.h5 expands beyond 1100:1")


def test_keras_nested_bomb_h5_inside_deflate_with_gzip_datasets(work):
    # an HDF5 file whose gzip-filtered dataset declares 64 GiB of zeros, itself deflated in the
    # archive: the member is decompressed to disk (bounded), the dataset refused by its storage
    import h5py

    bio = io.BytesIO()
    with h5py.File(bio, "w") as f:
        f.create_dataset("layers/dense/vars/0", shape=(1 << 14, 1 << 20), dtype="f4",
                         chunks=(1, 1 << 20), compression="gzip", fillvalue=0)
        f["layers/dense/vars/0"][0] = 0  # one chunk written: the rest is fill
    p = work / "nested.keras"
    p.write_bytes(keras([deflated("model.weights.h5", bio.getvalue())]))
    assert_apply_refused(p, work / "nested.safetensors")


# -- .pt

def test_pt_with_deflated_data_pkl_holding_a_2_gib_string(work):
    # BINUNICODE8 of 2 GiB zeros: a 2 MiB file; torch would allocate the declared size, copy it
    # and unpickle it (4.3 GiB for 1 GiB before)
    n = 2 * GiB
    head = b"\x80\x04\x8d" + struct.pack("<Q", n)
    p = work / "pkl.pt"
    p.write_bytes(torch_zip({"data.pkl": zeros_member("data.pkl", len(head) + n, prefix=head)}))
    assert_refused(p, r"compressed member \S*data\.pkl expands beyond 256 MiB")


@pytest.mark.parametrize("record", ["byteorder", ".data/serialization_id", "version"])
def test_pt_with_a_deflated_small_record(work, record):
    p = work / f"rec-{record.replace('/', '_')}.pt"
    p.write_bytes(torch_zip({record: zeros_member(record, 2 * GiB)}))
    assert_refused(p, rf"compressed member \S*{record} expands beyond 1 MiB")


def test_pt_data_pkl_declaring_more_than_deflate_can_produce(work):
    members = dict(torch_members())
    pkl = next(d for n, d in members.items() if n.endswith("data.pkl"))
    p = work / "pkl-lie.pt"
    p.write_bytes(torch_zip({"data.pkl": deflated("data.pkl", pkl, declared=200 << 20)}))
    assert_refused(p, r"compressed member \S*data\.pkl expands beyond 1100:1")


# -- .npz

def test_npz_member_of_deflated_zeros_reads_bounded(work):
    # an honest bomb: a (2 GiB / 4,) float32 array of zeros is what the header declares; it is
    # refused at plan time if it cannot be held, never allocated twice
    n = 2 * GiB
    p = work / "zeros.npz"
    p.write_bytes(make_zip([zeros_member("a.npy", len(npy_header((n // 4,))) + n,
                                         prefix=npy_header((n // 4,)))]))
    code, err, rss = run_capped("inspect", str(p))  # metadata only: nothing is decompressed
    assert code == 0 and rss < RSS_BOUND, err
    assert_apply_refused(p, work / "zeros.safetensors")


def test_npz_member_declaring_1_kib_that_inflates_to_2_gib(work):
    head = npy_header((256,))
    p = work / "npz-lie.npz"
    p.write_bytes(make_zip([zeros_member("a.npy", 2 * GiB, prefix=head, declared=len(head) + 1024)]))
    code, err, rss = run_capped("apply", str(p), "-o", str(work / "lie.safetensors"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"{p}: compressed member a.npy expands beyond its declared" in err and rss < RSS_BOUND, err


def test_npz_member_declaring_more_than_deflate_can_produce(work):
    p = work / "npz-big.npz"
    p.write_bytes(make_zip([deflated("a.npy", npy(np.ones(8, np.float32)), declared=0xFFFFFFF0)]))
    assert_refused(p, r"compressed member a\.npy expands beyond 1100:1")
