"""Protocol-buffer wire format, decoded by hand (no protobuf package): the TF bundle index
(``tf_bundle``), TF SavedModel/object-graph protos and ONNX models are read with it.

Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 (3/4, groups, are refused).
Every length is checked against the enclosing message; a malformation is ``Corrupt``, which
readers turn into ``InputError(path, cause)``.

``walk`` yields each field with the offset and length of its value and reads no
length-delimited payload, so a caller descends into the messages it wants and records where the
big ``bytes`` fields are (an ONNX initializer's ``raw_data``) to read them later; over a
``FileBytes`` the file is read through one small window. ``parse_proto`` is ``walk`` over bytes
with the payloads read.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple


class Corrupt(Exception):
    """Internal: a malformation; converted to InputError with the file's path."""


class Field(NamedTuple):
    """One field as ``walk`` finds it: ``value`` is the number (wire 0, 1, 5) or the payload's
    length (wire 2); ``offset``/``length`` locate the value's bytes (the payload, for wire 2)."""

    number: int
    wire: int
    value: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def read_varint(buf, pos: int, end: int | None = None, *, what: str = "varint") -> tuple[int, int]:
    if end is None:
        end = len(buf)
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise Corrupt(f"truncated {what}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise Corrupt(f"{what} longer than 10 bytes")


def walk(buf, begin: int = 0, end: int | None = None, what: str = "message") -> Iterator[Field]:
    """The fields of the message held in ``buf[begin:end]``, in order, without reading any
    length-delimited payload: for wire type 2 a Field gives the payload's offset and length,
    which the caller reads (``buf[f.offset:f.end]``), walks into, or skips. ``buf`` is bytes or
    a ``FileBytes`` (then a message of any size is walked in a few windows of memory)."""
    if end is None:
        end = len(buf)
    pos = begin
    while pos < end:
        tag, pos = read_varint(buf, pos, end, what=f"{what} field tag")
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise Corrupt(f"{what}: field number 0")
        if wire == 0:
            start = pos
            val, pos = read_varint(buf, pos, end, what=f"{what} field {field}")
            yield Field(field, 0, val, start, pos - start)
        elif wire == 1:
            if pos + 8 > end:
                raise Corrupt(f"{what}: truncated fixed64 field {field}")
            yield Field(field, 1, int.from_bytes(buf[pos:pos + 8], "little"), pos, 8)
            pos += 8
        elif wire == 2:
            n, pos = read_varint(buf, pos, end, what=f"{what} field {field} length")
            if pos + n > end:
                raise Corrupt(f"{what}: field {field} length {n} runs past the message")
            yield Field(field, 2, n, pos, n)
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise Corrupt(f"{what}: truncated fixed32 field {field}")
            yield Field(field, 5, int.from_bytes(buf[pos:pos + 4], "little"), pos, 4)
            pos += 4
        else:
            raise Corrupt(f"{what}: unsupported protobuf wire type {wire} (field {field})")


def parse_proto(buf: bytes, what: str) -> list[tuple[int, int, Any]]:
    """Minimal protobuf wire decoding: [(field, wire_type, value)]; value is int or bytes."""
    return [(f.number, f.wire, bytes(buf[f.offset:f.end]) if f.wire == 2 else f.value)
            for f in walk(buf, 0, len(buf), what)]


def varints(data, what: str = "packed varints"):
    """The values of packed varints (a repeated int32/int64/uint64 field) as a numpy uint64
    array, decoded vectorised: 64-bit two's complement, as protobuf writes negative ints."""
    import numpy as np

    b = np.frombuffer(data, dtype=np.uint8)
    if b.size and b[-1] & 0x80:
        raise Corrupt(f"truncated {what}")
    last = np.flatnonzero(b < 0x80)
    first = np.concatenate(([0], last[:-1] + 1)) if last.size else last
    if last.size and int((last - first).max()) >= 10:
        raise Corrupt(f"{what}: a varint longer than 10 bytes")
    out = np.zeros(last.size, dtype=np.uint64)
    for k in range(10):
        at = first + k
        live = at <= last
        if not live.any():
            break
        out[live] |= (b[at[live]].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * k)
    return out


class FileBytes:
    """A file's bytes ``[0, size)`` as ``walk`` and ``read_varint`` index them (``fb[i]``,
    ``fb[a:b]``), read with ``pread`` through one window of ``window`` bytes: a message is walked
    without the file being held in memory, and only the bytes asked for are read. ``handle`` is a
    ``fileset.Handle`` (or anything with ``fd``, ``path`` and ``size``). A read past the end of the
    file (it shrank) is ``Corrupt``."""

    def __init__(self, handle, window: int = 1 << 16) -> None:
        self.handle = handle
        self.size = handle.size
        self.window = window
        self._at = 0
        self._buf = b""

    def __len__(self) -> int:
        return self.size

    def _fill(self, pos: int, n: int) -> None:
        import os

        want = max(n, self.window)
        data = os.pread(self.handle.fd, min(want, max(self.size - pos, 0)), pos)
        if len(data) < min(n, self.size - pos):
            raise Corrupt(f"truncated: the file ends at {pos + len(data)} while reading it")
        self._at, self._buf = pos, data

    def __getitem__(self, key):
        if isinstance(key, slice):
            begin, end = key.start or 0, self.size if key.stop is None else key.stop
            end = min(end, self.size)
            if end <= begin:
                return b""
            if end - begin > self.window:  # a big payload: read it directly, keep the window
                import os

                data = os.pread(self.handle.fd, end - begin, begin)
                if len(data) != end - begin:
                    raise Corrupt(f"truncated: the file ends at {begin + len(data)} while reading it")
                return data
            if begin < self._at or end > self._at + len(self._buf):
                self._fill(begin, end - begin)
            return self._buf[begin - self._at:end - self._at]
        if key < 0 or key >= self.size:
            raise IndexError(key)
        if not self._at <= key < self._at + len(self._buf):
            self._fill(key, 1)
        return self._buf[key - self._at]


def int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
