"""Byte ranges of files: the two primitives every streaming path is built on.

``read_range`` reads ``[begin, end)`` into a fresh buffer with ``pread`` (nothing stays mapped,
so a file cut short under us gives an error, never SIGBUS). ``copy_range`` copies a range into an
open output file without it passing through Python at all (``copy_file_range``: the kernel copies,
as ``cp`` does), falling back to bounded ``pread``/``write`` chunks where the kernel or the file
system cannot. Both raise ``InputError`` naming the source on a short read.

Wherever they take a ``path`` they also take a ``fileset.Handle``: the checkpoint's file, opened
once, is then read through its descriptor instead of being opened again by name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import zlib
from pathlib import Path
from typing import Callable

from ..errors import InputError

try:
    from lzma import LZMAError  # what zipfile raises for a corrupt LZMA member
except ImportError:  # a Python without lzma cannot read such members at all
    LZMAError = zlib.error
# what reading a corrupt compressed zip member raises (besides zipfile.BadZipFile)
ZIP_MEMBER_ERRORS = (zlib.error, LZMAError)

CHUNK = 64 << 20  # one step of a copy (bounds memory on the fallback path, paces progress) and of write-behind
# copy_file_range is refused for these (old kernels, cross-device, special files): fall back
_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF, errno.EPERM}


def _open(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except OSError as e:
        raise InputError(path, f"cannot read: {e.strerror}") from None


@contextlib.contextmanager
def _source(src):
    """``(fd, path)`` to read ``src``: a Handle's own descriptor, else the path opened for the call."""
    if hasattr(src, "fd"):
        yield src.fd, src.path
        return
    fd = _open(src)
    try:
        yield fd, src
    finally:
        os.close(fd)


def _short(path: Path, want: int, begin: int) -> InputError:
    return InputError(path, f"truncated: expected {want} bytes at offset {begin}, file ends early")


def read_into(fd: int, view: memoryview, begin: int, path: Path) -> None:
    got = 0
    while got < len(view):
        k = os.preadv(fd, [view[got:]], begin + got)
        if k == 0:
            raise _short(path, len(view), begin)
        got += k


def read_range(path: Path, begin: int, end: int, buf=None):
    """Read ``[begin, end)`` into ``buf`` (a writable buffer of that size), else into a fresh
    bytearray; return the buffer. A short read is an InputError."""
    buf = bytearray(end - begin) if buf is None else buf
    with _source(path) as (fd, name):
        read_into(fd, memoryview(buf).cast("B"), begin, name)
    return buf


def _sync_file_range():
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError, ImportError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


class WriteBehind:
    """Starts the kernel's writeback of an output file every ``CHUNK`` bytes written.

    Outputs are fsynced before they are renamed into place (atomic writes). Left alone, the kernel
    holds gigabytes of dirty pages until that fsync, which then waits for all of them, and writers
    get throttled meanwhile. Starting writeback as we go overlaps the disk with our work: measured
    here on 2 GiB, write + fsync took 0.9 s with it and 2.3-5.9 s without. It is only a hint (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); durability still comes from the fsync.
    """

    def __init__(self, f) -> None:
        self.f = f
        self.started = f.tell()

    def __call__(self) -> None:
        pos = self.f.tell()
        if _SYNC_FILE_RANGE is None or pos - self.started < CHUNK:
            return
        self.f.flush()
        _SYNC_FILE_RANGE(self.f.fileno(), self.started, pos - self.started, _SYNC_FILE_RANGE_WRITE)
        self.started = pos


def copy_range(path: Path, begin: int, length: int, out, on_chunk: Callable[[int], None] | None = None,
               crc: tuple[int, str] | None = None) -> None:
    """Append ``length`` bytes of ``path`` from ``begin`` to the open binary file ``out``.
    ``on_chunk(n)`` is called after each step of at most ``CHUNK`` bytes. With ``crc`` =
    ``(crc32, message)`` the bytes pass through memory (read once) and are checked on the way;
    a mismatch is an InputError with that message, before the copy is used."""
    out.flush()
    dst = out.fileno()
    pos = out.tell()
    with _source(path) as (src, path):
        done = 0
        kernel = hasattr(os, "copy_file_range") and crc is None
        running = 0
        buf = None
        while done < length:
            step = min(CHUNK, length - done)
            if kernel:
                try:
                    k = os.copy_file_range(src, dst, step, begin + done, pos + done)
                except OSError as e:
                    if e.errno not in _NO_KERNEL_COPY:
                        raise
                    kernel = False
                    continue
            else:
                if buf is None:
                    buf = bytearray(min(CHUNK, length))
                view = memoryview(buf)[:step]
                read_into(src, view, begin + done, path)
                k = os.pwrite(dst, view, pos + done)
                if crc is not None:
                    running = zlib.crc32(view[:k], running)
            if k == 0:
                raise _short(path, length, begin)
            done += k
            out.seek(pos + done)
            if on_chunk:
                on_chunk(k)
        if crc is not None and running != crc[0]:
            raise InputError(path, crc[1])


def sha256_range(path: Path, begin: int, length: int) -> str:
    """sha256 of ``length`` bytes of ``path`` from ``begin``, read in bounded chunks."""
    h = hashlib.sha256()
    with _source(path) as (fd, name):
        buf = bytearray(min(CHUNK, length))
        done = 0
        while done < length:
            view = memoryview(buf)[:min(CHUNK, length - done)]
            read_into(fd, view, begin + done, name)
            h.update(view)
            done += len(view)
    return h.hexdigest()


def sha256_path(p: Path) -> str:
    """sha256 of a file, or of a directory's files (relative names and bytes, sorted)."""
    p = Path(p)
    if not p.is_dir():
        return sha256_range(p, 0, os.path.getsize(p))
    h = hashlib.sha256()
    for f in sorted(f for f in p.rglob("*") if f.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_range(f, 0, os.path.getsize(f))))
    return h.hexdigest()


class RangeFile(io.RawIOBase):
    """``length`` bytes at ``begin`` of an open descriptor, as a read-only seekable file (for
    zipfile, h5py): reads go through ``pread`` and never past the range; closing it leaves the
    descriptor open (it belongs to the fileset). A DCP item, a stored zip member."""

    def __init__(self, fd: int, begin: int, length: int) -> None:
        super().__init__()
        self._fd, self._begin, self._len, self._pos = fd, begin, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        new = pos + (0 if whence == 0 else self._pos if whence == 1 else self._len)
        if new < 0:
            raise OSError(22, "seek before the start of the range")
        self._pos = new
        return new

    def readinto(self, b) -> int:
        n = max(0, min(len(b), self._len - self._pos))
        if n == 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b).cast("B")[:n]], self._begin + self._pos)
        self._pos += got
        return got

    def read(self, n: int = -1) -> bytes:  # never allocates past the range, whatever n a zip declares
        left = max(0, self._len - self._pos)
        buf = bytearray(left if n is None or n < 0 else min(n, left))
        return bytes(buf[: self.readinto(buf)])

    def close(self) -> None:  # the descriptor belongs to the fileset
        super().close()
