"""Zip members read with bounded memory, never trusting the sizes an archive declares.

A deflated member of zeros expands ~1000:1, and a zip's headers can lie (declare 1 KiB for a
member that inflates to 1 GiB, or 1 TiB for one that holds nothing). So:

* ``check_declared`` refuses, before anything is decompressed, a member declaring more than a
  budget or more than its compressed bytes can produce (``limits.MAX_RATIO``);
* ``iter_member`` streams a member in bounded chunks and stops at its declared size: a member that
  inflates beyond it, ends short of it or fails its CRC is corrupt;
* ``read_member`` (small members, read whole) and ``extract_member`` (into a temporary file) are
  built on it.

Stored and deflated members are read here directly (``pread`` + ``zlib``); other methods go
through ``zipfile``'s stream, which also stops at the declared size and checks the CRC.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

from ..errors import InputError
from ..limits import MAX_RATIO, fmt_bytes
from .fileio import ZIP_MEMBER_ERRORS

STEP = 1 << 20  # bytes decompressed (or read) per step: what a stream holds at once


def _openf(src):
    """A file object on ``src``: a ``fileset.Handle`` (the checkpoint's file, opened once) or a path."""
    return src.file() if hasattr(src, "file") else open(src, "rb")


def _size(src) -> int:
    return src.size if hasattr(src, "size") else os.path.getsize(src)


def data_start(path: Path, info: zipfile.ZipInfo) -> int:
    """File offset of a member's data (after its local header)."""
    with _openf(path) as f:
        f.seek(info.header_offset)
        header = f.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise InputError(path, f"bad local header for {info.filename} in the zip archive")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def check_declared(path: Path, info: zipfile.ZipInfo, limit: int | None = None) -> None:
    """Refuse a member whose declared size is over ``limit`` (bytes ckptfix would hold in memory)
    or, compressed, more than its compressed size can expand to. Nothing is decompressed."""
    name, size = info.filename, info.file_size
    if info.compress_type == zipfile.ZIP_STORED:
        if limit is not None and size > limit:
            raise InputError(path, f"member {name} is {size:,} bytes, over the {fmt_bytes(limit)} "
                             "ckptfix reads into memory for it")
        return
    if limit is not None and size > limit:
        raise InputError(path, f"compressed member {name} expands beyond {fmt_bytes(limit)} "
                         f"(it declares {size:,} bytes): refused")
    if size > max(info.compress_size, 1) * MAX_RATIO:
        raise InputError(path, f"compressed member {name} expands beyond {MAX_RATIO}:1 (it declares "
                         f"{size:,} bytes from {info.compress_size:,}), more than compression can "
                         "produce: corrupt or hostile archive")


def _beyond(path: Path, info: zipfile.ZipInfo) -> InputError:
    return InputError(path, f"compressed member {info.filename} expands beyond its declared "
                      f"{info.file_size:,} bytes: corrupt or hostile archive")


def _short(path: Path, info: zipfile.ZipInfo, got: int) -> InputError:
    return InputError(path, f"member {info.filename} holds {got:,} bytes, its header declares "
                      f"{info.file_size:,}: truncated or corrupt archive")


def iter_member(path: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo,
                limit: int | None = None) -> Iterator[bytes]:
    """The bytes of one member, in chunks of at most ``STEP``, exactly ``info.file_size`` of them."""
    check_declared(path, info, limit)
    encrypted = info.flag_bits & 0x1
    if info.compress_type == zipfile.ZIP_STORED and not encrypted:
        yield from _stored(path, info)
    elif info.compress_type == zipfile.ZIP_DEFLATED and not encrypted:
        yield from _inflate(path, info)
    else:  # zipfile stops at the declared size and checks the CRC (or refuses the method)
        got = 0
        with zf.open(info) as fp:
            while chunk := fp.read(STEP):
                got += len(chunk)
                yield chunk
        if got != info.file_size:
            raise _short(path, info, got)


def _stored(path: Path, info: zipfile.ZipInfo) -> Iterator[bytes]:
    start = data_start(path, info)
    if info.compress_size != info.file_size or start + info.file_size > _size(path):
        raise _short(path, info, max(0, min(info.compress_size, _size(path) - start)))
    crc, done = 0, 0
    with _openf(path) as f:
        while done < info.file_size:
            f.seek(start + done)
            chunk = f.read(min(STEP, info.file_size - done))
            if not chunk:
                raise _short(path, info, done)
            crc = zlib.crc32(chunk, crc)
            done += len(chunk)
            yield chunk
    if crc != info.CRC:
        raise InputError(path, f"member {info.filename} fails its CRC check: corrupt archive")


def _inflate(path: Path, info: zipfile.ZipInfo) -> Iterator[bytes]:
    start = data_start(path, info)
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    left, done, crc, pending = info.compress_size, 0, 0, b""
    with _openf(path) as f:
        f.seek(start)
        while True:
            if not pending and left:
                pending = f.read(min(STEP, left))
                if not pending:
                    raise _short(path, info, done)
                left -= len(pending)
            try:
                # one byte more than the member may still give: that byte proves it lies
                out = d.decompress(pending, min(STEP, info.file_size - done + 1))
            except zlib.error as e:
                raise InputError(path, f"member {info.filename}: corrupt compressed data ({e})") from None
            pending = d.unconsumed_tail
            if out:
                done += len(out)
                if done > info.file_size:
                    raise _beyond(path, info)
                crc = zlib.crc32(out, crc)
                yield out
            if d.eof:
                break
            if not out and not pending and not left:
                raise _short(path, info, done)  # the compressed stream stops mid-way
    if done != info.file_size:
        raise _short(path, info, done)
    if crc != info.CRC:
        raise InputError(path, f"member {info.filename} fails its CRC check: corrupt archive")


def read_member(path: Path, zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """A whole member, at most ``limit`` bytes (its declared size is checked first)."""
    info = zf.getinfo(name)
    buf = bytearray()
    for chunk in iter_member(path, zf, info, limit):
        buf += chunk
    return bytes(buf)


def extract_member(path: Path, zf: zipfile.ZipFile, name: str,
                   check_head: Callable[[bytes], None] | None = None):
    """A compressed member decompressed into an anonymous temporary file (deleted when closed),
    positioned at 0: memory stays bounded, and the disk it takes is what the archive declares
    (at most ``MAX_RATIO`` times its compressed size), checked against the free space first.
    ``check_head(first_chunk)`` may refuse the member from its first bytes, before the rest is
    decompressed."""
    info = zf.getinfo(name)
    check_declared(path, info)
    tmp = tempfile.gettempdir()
    free = shutil.disk_usage(tmp).free
    if info.file_size > free:
        raise InputError(path, f"compressed member {name} expands to {fmt_bytes(info.file_size)}; "
                         f"the temporary directory {tmp} has {fmt_bytes(free)} free (set TMPDIR)")
    out = tempfile.TemporaryFile(prefix="ckptfix-")
    try:
        for i, chunk in enumerate(iter_member(path, zf, info)):
            if i == 0 and check_head is not None:
                check_head(chunk)
            out.write(chunk)
        out.flush()
        out.seek(0)
    except OSError as e:
        out.close()
        raise InputError(path, f"cannot decompress member {name} into {tmp}: {e.strerror or e}") from None
    except BaseException:
        out.close()
        raise
    return out


# what reading a member through zipfile raises for a bad archive (besides InputError from here)
ERRORS = (zipfile.BadZipFile, NotImplementedError, RuntimeError, EOFError, *ZIP_MEMBER_ERRORS)
