"""NumPy .npz / .npy readers."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ckptfix.errors import InputError
from ckptfix.formats.detect import open_checkpoint
from ckptfix.formats.numpy_io import NpyReader, NpzReader

DATA = Path(__file__).parent / "data" / "keras"


@pytest.mark.parametrize("model", ["tiny_cnn", "conv1d"])
def test_fixture_npz(model):
    ref = np.load(DATA / f"{model}.npz")
    with NpzReader(DATA / f"{model}.npz") as r:
        metas = r.metas()
        assert list(metas) == list(ref.files)
        for name, meta in metas.items():
            assert meta.shape == ref[name].shape and meta.dtype == "float32"
            np.testing.assert_array_equal(r.read_array(name), ref[name])
        assert r.format == "npz"


def test_fixture_io_npz_via_open_checkpoint():
    with open_checkpoint(DATA / "tiny_cnn_io.npz") as r:
        assert r.metas()["x"].shape == (2, 8, 8, 3)
        assert tuple(r.read("y").shape) == (2, 10)


def test_metas_do_not_read_data(tmp_path, monkeypatch):
    p = tmp_path / "big.npz"
    np.savez(p, a=np.zeros((100, 100), np.float32))
    calls = []
    orig = zipfile.ZipExtFile.read

    def spy(self, n=-1):
        calls.append(n)
        return orig(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    NpzReader(p).metas()
    assert all(0 <= n < 1000 for n in calls)  # header-sized reads only


def test_dtypes_orders_and_compression(tmp_path):
    arrays = {
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i64": np.arange(5, dtype=np.int64),
        "bool": np.array([True, False]),
        "fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        "bigendian": np.arange(4, dtype=">f4"),
        "scalar": np.array(2.5, dtype=np.float64),
        "nested/name": np.ones((1, 2), np.uint8),
    }
    for save in (np.savez, np.savez_compressed):
        p = tmp_path / f"{save.__name__}.npz"
        save(p, **arrays)
        with NpzReader(p) as r:
            m = r.metas()
            assert m["f16"].dtype == "float16" and m["bigendian"].dtype == "float32"
            assert m["scalar"].shape == ()
            for k, v in arrays.items():
                out = r.read_array(k)
                np.testing.assert_array_equal(out, v)
                assert out.dtype.byteorder in ("=", "<", "|")
                assert out.flags.c_contiguous
            assert tuple(r.read("scalar").shape) == ()


def test_npy(tmp_path):
    p = tmp_path / "w.npy"
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(p, a)
    with NpyReader(p) as r:
        assert r.metas() == {"w": r.metas()["w"]}
        assert r.metas()["w"].shape == (2, 3, 4)
        np.testing.assert_array_equal(r.read_array("w"), a)
    with open_checkpoint(p) as r:
        assert r.format == "npy"


def test_npy_version_2_and_3(tmp_path):
    from numpy.lib import format as npformat
    a = np.arange(6, dtype=np.int32).reshape(3, 2)
    for version in ((2, 0), (3, 0)):
        buf = io.BytesIO()
        npformat.write_array(buf, a, version=version)
        p = tmp_path / f"v{version[0]}.npy"
        p.write_bytes(buf.getvalue())
        with NpyReader(p) as r:
            np.testing.assert_array_equal(r.read_array(f"v{version[0]}"), a)


def test_object_array_npz_refused(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, ok=np.ones(2), bad=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(InputError, match="pickle") as e:
        NpzReader(p)
    assert str(p) in str(e.value)


def test_object_array_npy_refused(tmp_path):
    p = tmp_path / "obj.npy"
    np.save(p, np.array([1, "x"], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="pickle"):
        NpyReader(p)


@pytest.mark.parametrize("arr", [np.array(["a", "b"]), np.zeros(2, dtype=[("x", "<f4")]),
                                 np.zeros(2, dtype="complex128"), np.zeros(2, dtype="M8[s]")])
def test_unsupported_dtypes(tmp_path, arr):
    p = tmp_path / "u.npz"
    np.savez(p, a=arr)
    with pytest.raises(InputError):
        NpzReader(p)


def test_truncated_npz(tmp_path):
    p = tmp_path / "t.npz"
    np.savez(p, a=np.ones(1000))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="zip|npz"):
        NpzReader(p)


def test_corrupt_member_data(tmp_path):
    p = tmp_path / "c.npz"
    np.savez(p, a=np.ones(1000))
    data = bytearray(p.read_bytes())
    data[1000] ^= 0xFF  # inside the stored member: the zip CRC catches it on read
    p.write_bytes(bytes(data))
    r = NpzReader(p)
    with pytest.raises(InputError, match="a.npy"):
        r.read_array("a")


def test_member_shorter_than_header_says(tmp_path):
    p = tmp_path / "s.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False,
                                               "shape": (10,)})
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.npy", buf.getvalue() + b"\0" * 8)
    r = NpzReader(p)
    assert r.metas()["a"].shape == (10,)
    with pytest.raises(InputError, match="truncated"):
        r.read_array("a")


def test_bad_header(tmp_path):
    p = tmp_path / "h.npz"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("a.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}\n")
    with pytest.raises(InputError, match="header"):
        NpzReader(p)
    q = tmp_path / "h.npy"
    q.write_bytes(b"not numpy at all")
    with pytest.raises(InputError, match="header"):
        NpyReader(q)


def test_truncated_npy(tmp_path):
    p = tmp_path / "t.npy"
    np.save(p, np.ones(100))
    data = p.read_bytes()
    p.write_bytes(data[:-8])
    with pytest.raises(InputError, match="truncated"):
        NpyReader(p)


def test_missing_files(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        NpzReader(tmp_path / "x.npz")
    with pytest.raises(InputError, match="no such file"):
        NpyReader(tmp_path / "x.npy")
