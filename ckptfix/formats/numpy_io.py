"""NumPy ``.npz`` archives and single ``.npy`` files. Never unpickles (``allow_pickle=False``).

Metadata comes from each member's ``.npy`` header alone; data is read on demand. An ``.npz``
member ``a/b.npy`` is the tensor ``a/b``. Object arrays (which would need pickle) and
structured dtypes are refused with an InputError.
"""

from __future__ import annotations

import struct
import tokenize
import zipfile
from pathlib import Path
from typing import Any

from .. import dtypes
from ..errors import InputError
from ..limits import impossible_shape
from . import zipmember
from .fileio import ZIP_MEMBER_ERRORS
from ..tensors import TensorMeta
from .base import NumpyReader
from .fileio import read_range

# tokenize.TokenError: numpy tokenizes old-style headers; zlib.error: a corrupt deflated member
_ERRORS = (OSError, ValueError, KeyError, EOFError, struct.error, zipfile.BadZipFile,
           UnicodeDecodeError, SyntaxError, TypeError, RuntimeError, IndexError, MemoryError,
           RecursionError, tokenize.TokenError, *ZIP_MEMBER_ERRORS)


def _one_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__


def _read_header(fp, path, what: str) -> tuple[tuple[int, ...], bool, Any]:
    """(shape, fortran_order, numpy dtype) of the .npy stream ``fp``, positioned at data."""
    import numpy as np
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = npformat.read_array_header_2_0(fp)
        elif version == (3, 0):
            shape, fortran, dtype = _read_header_3_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except zipfile.BadZipFile as e:  # an .npz member's CRC, checked when it is read whole
        raise InputError(path, f"{what}: corrupt archive member ({_one_line(e)})") from None
    except _ERRORS as e:
        raise InputError(path, f"{what}: invalid .npy header ({_one_line(e)})") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        from .pickles import pickle_globals  # parses the pickle's opcodes; runs nothing

        try:
            names = pickle_globals(fp)
        except Exception:  # noqa: BLE001 - only for the message
            names = []
        names.sort(key=lambda n: n.startswith(("numpy.", "_codecs.")))  # numpy's own helpers last
        needs = f" (its pickle needs {', '.join(names[:6])})" if names else ""
        raise InputError(path, f"{what} holds Python objects (dtype {dtype}); loading it "
                         f"would need pickle, which ckptfix refuses{needs}")
    if dtype.names is not None or dtype.subdtype is not None:
        raise InputError(path, f"{what} has a structured dtype {dtype}, not a tensor")
    if any(not isinstance(s, int) or isinstance(s, bool) or s < 0 for s in shape):  # (True,) too
        raise InputError(path, f"{what}: invalid shape {shape}")
    # numpy cannot make such an array even when a 0 makes it empty (found by fuzzing: reshape
    # raised "Maximum allowed dimension exceeded" for (0, 2**63, 3)); a non-empty one is
    # reported as truncated, its data being missing
    if impossible_shape(shape, dtype.itemsize):
        raise InputError(path, f"{what}: shape {shape} is too large for any array")
    return tuple(shape), fortran, dtype


def _read_header_3_0(fp):
    """Version 3.0 = 2.0 with a UTF-8 header (numpy has no public reader for it)."""
    import ast

    from numpy.lib import format as npformat

    raw = fp.read(4)
    if len(raw) != 4:
        raise EOFError("truncated header length")
    (hlen,) = struct.unpack("<I", raw)
    if hlen > 10000:  # numpy's own max_header_size default
        raise ValueError(f"header of {hlen} bytes is larger than 10000")
    header = fp.read(hlen)
    if len(header) != hlen:
        raise EOFError("truncated header")
    d = ast.literal_eval(header.decode("utf-8"))  # literals only, never code
    if not isinstance(d, dict) or set(d) != {"descr", "fortran_order", "shape"}:
        raise ValueError(f"bad header {d!r}")
    if not isinstance(d["shape"], tuple) or not isinstance(d["fortran_order"], bool):
        raise ValueError(f"bad header {d!r}")
    return d["shape"], d["fortran_order"], npformat.descr_to_dtype(d["descr"])


def _canonical(path, what: str, dtype) -> str:
    try:
        return dtypes.from_numpy(dtype)
    except KeyError:
        raise InputError(path, f"{what} has dtype {dtype}, which ckptfix does not support") \
            from None


def _finish(arr, fortran: bool):
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.copy(order="C") if fortran and not arr.flags.c_contiguous else arr


class NpzReader(NumpyReader):
    format = "npz"

    def __init__(self, path: str | Path, fileset=None) -> None:
        super().__init__(path, fileset)
        self._metas: dict[str, TensorMeta] = {}
        self._members: dict[str, str] = {}
        self._info: dict[str, tuple] = {}
        self._handle = self.fileset.open(self.path)
        self._fp = self._handle.file()  # the zip reads through the set's file
        try:
            self._zip = zipfile.ZipFile(self._fp)
        except _ERRORS as e:
            self._fp.close()
            raise InputError(self.path, f"truncated or corrupt .npz archive "
                             f"({_one_line(e)})") from None
        try:
            for info in self._zip.infolist():
                if info.is_dir():
                    continue
                member = info.filename
                name = member[: -len(".npy")] if member.endswith(".npy") else member
                if name in self._members:
                    raise InputError(self.path, f"duplicate member {member!r}")
                zipmember.check_declared(self.path, info)  # before a byte is decompressed
                with self._zip.open(info) as fp:
                    shape, fortran, dtype = _read_header(fp, self.path, f"member {member!r}")
                    data_at = fp.tell()
                self._members[name] = member
                self._info[name] = (shape, fortran, dtype, data_at)
                self._metas[name] = TensorMeta(shape=shape,
                                               dtype=_canonical(self.path, f"member {member!r}",
                                                                dtype))
        except InputError:
            self.close()
            raise
        except _ERRORS as e:
            self.close()
            raise InputError(self.path, f"corrupt .npz archive ({_one_line(e)})") from None

    def metas(self) -> dict[str, TensorMeta]:
        return dict(self._metas)

    def read_array(self, name: str):
        import numpy as np

        if name not in self._members:
            raise KeyError(name)
        member = self._members[name]
        shape, fortran, dtype, data_at = self._info[name]
        need = self._metas[name].nbytes
        info = self._zip.getinfo(member)
        if info.file_size < data_at + need:  # the zip's size and the .npy header's disagree
            raise InputError(self.path, f"member {member!r} is truncated ({max(0, info.file_size - data_at)} "
                             f"of {need} data bytes)")
        try:
            data = bytearray(need)
        except MemoryError:
            raise InputError(self.path, f"not enough memory to read member {member!r} ({need:,} bytes)") from None
        try:
            # a bounded stream: never more than the declared bytes, one step in memory at a time
            pos = 0
            for chunk in zipmember.iter_member(self._handle, self._zip, info):
                lo, hi = max(data_at - pos, 0), min(len(chunk), data_at + need - pos)
                if lo < hi:
                    data[pos + lo - data_at:pos + hi - data_at] = chunk[lo:hi]
                pos += len(chunk)
        except InputError:
            raise
        except _ERRORS as e:
            raise InputError(self.path, f"cannot read member {member!r} "
                             f"({_one_line(e)}): corrupt archive") from None
        arr = np.frombuffer(data, dtype=dtype)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
        return _finish(arr, fortran)

    def close(self) -> None:
        self._zip.close()
        self._fp.close()
        super().close()


class NpyReader(NumpyReader):
    format = "npy"

    def __init__(self, path: str | Path, *, name: str | None = None, fileset=None) -> None:
        super().__init__(path, fileset)
        self.name = name or self.path.name.removesuffix(".npy")
        self._file = self.fileset.open(self.path)
        try:
            with self._file.file() as fp:
                shape, fortran, dtype = _read_header(fp, self.path, "array")
                self._data_offset = fp.tell()
            size = self._file.size
        except InputError:
            raise
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        self._info = (shape, fortran, dtype)
        self._meta = TensorMeta(shape=shape, dtype=_canonical(self.path, "array", dtype))
        need = self._meta.numel * dtype.itemsize
        if size - self._data_offset < need:
            raise InputError(self.path, f"truncated: {size - self._data_offset} data bytes, "
                             f"the header promises {need}")

    def metas(self) -> dict[str, TensorMeta]:
        return {self.name: self._meta}

    def read_array(self, name: str):
        import numpy as np

        if name != self.name:
            raise KeyError(name)
        shape, fortran, dtype = self._info
        need = self._meta.numel * dtype.itemsize
        try:
            data = read_range(self._file, self._data_offset, self._data_offset + need)
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        arr = np.frombuffer(data, dtype=dtype)
        arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
        return _finish(arr, fortran)
