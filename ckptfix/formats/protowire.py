"""Protocol-buffer wire format, decoded by hand (no protobuf package): the TF bundle index
(``tf_bundle``), TF SavedModel/object-graph protos and ONNX models are read with it.

Wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32 (3/4, groups, are refused).
Every length is checked against the enclosing message; a malformation is ``Corrupt``, which
readers turn into ``InputError(path, cause)``.
"""

from __future__ import annotations

from typing import Any


class Corrupt(Exception):
    """Internal: a malformation; converted to InputError with the file's path."""


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


def parse_proto(buf: bytes, what: str) -> list[tuple[int, int, Any]]:
    """Minimal protobuf wire decoding: [(field, wire_type, value)]; value is int or bytes."""
    out = []
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos, end, what=f"{what} field tag")
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise Corrupt(f"{what}: field number 0")
        if wire == 0:
            val, pos = read_varint(buf, pos, end, what=f"{what} field {field}")
        elif wire == 1:
            if pos + 8 > end:
                raise Corrupt(f"{what}: truncated fixed64 field {field}")
            val = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wire == 2:
            n, pos = read_varint(buf, pos, end, what=f"{what} field {field} length")
            if pos + n > end:
                raise Corrupt(f"{what}: field {field} length {n} runs past the message")
            val = bytes(buf[pos:pos + n])
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise Corrupt(f"{what}: truncated fixed32 field {field}")
            val = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        else:
            raise Corrupt(f"{what}: unsupported protobuf wire type {wire} (field {field})")
        out.append((field, wire, val))
    return out


def int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v
