"""A small TF tensor-bundle writer for tests (no TensorFlow).

Follows TensorFlow's ``table_builder.cc`` / ``block_builder.cc`` / ``tensor_bundle.cc``:
prefix-compressed keys with a restart point every ``restart_interval`` entries, a data block
flushed once it reaches ``block_size`` bytes, an index block (restart every entry) whose keys
are the shortest separators, an empty metaindex block, and the 48-byte footer. With the
defaults (256 KiB blocks, restart interval 16) it reproduces TF's ``.index`` files byte for
byte (checked against the real fixtures in tests/test_tf_bundle.py).

Block size and restart interval are parameters so that tiny test files have many blocks and
restart points.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptfix.formats._crc32c import crc32c, mask

MAGIC = 0xDB4775248B80FB57

NP_TO_TF = {
    "float32": 1, "float64": 2, "int32": 3, "uint8": 4, "int16": 5, "int8": 6,
    "complex64": 8, "int64": 9, "bool": 10, "uint16": 17, "float16": 19, "uint32": 22,
    "uint64": 23,
}
DT_STRING = 7
DT_BFLOAT16 = 14


# ----------------------------------------------------------------------------- protobuf bits

def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_varint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value) if value else b""


def field_bytes(num: int, value: bytes, *, keep_empty: bool = False) -> bytes:
    if not value and not keep_empty:
        return b""
    return varint(num << 3 | 2) + varint(len(value)) + value


def field_fixed32(num: int, value: int) -> bytes:
    return varint(num << 3 | 5) + value.to_bytes(4, "little") if value else b""


def encode_shape(shape) -> bytes:
    return b"".join(field_bytes(2, field_varint(1, int(d)), keep_empty=True) for d in shape)


def encode_entry(dtype: int, shape, shard_id: int = 0, offset: int = 0, size: int = 0,
                 crc: int = 0, *, slices: int = 0) -> bytes:
    out = field_varint(1, dtype)
    # TF always sets the shape sub-message, so a scalar has an empty one (12 00) on disk
    out += field_bytes(2, encode_shape(shape), keep_empty=True)
    out += field_varint(3, shard_id) + field_varint(4, offset) + field_varint(5, size)
    out += field_fixed32(6, crc)
    for _ in range(slices):
        out += field_bytes(7, b"", keep_empty=True)
    return out


def encode_header(num_shards: int = 1, endianness: int = 0, producer: int = 1) -> bytes:
    return (field_varint(1, num_shards) + field_varint(2, endianness)
            + field_bytes(3, field_varint(1, producer)))


def encode_object_graph(nodes: list[dict]) -> bytes:
    """nodes: [{"children": [(id, local_name)], "attributes": [(name, full_name, key)]}]."""
    out = b""
    for node in nodes:
        body = b""
        for nid, local in node.get("children", []):
            body += field_bytes(1, field_varint(1, nid) + field_bytes(2, local.encode()),
                                keep_empty=True)
        for name, full, key in node.get("attributes", []):
            body += field_bytes(2, field_bytes(1, name.encode()) + field_bytes(2, full.encode())
                                + field_bytes(3, key.encode()), keep_empty=True)
        out += field_bytes(1, body, keep_empty=True)
    return out


def string_tensor_bytes(strings: list[bytes]) -> tuple[bytes, int]:
    """TF's on-disk string tensor and its entry crc (as TensorFlow computes them)."""
    lengths = b"".join(varint(len(s)) for s in strings)
    crc = 0
    for s in strings:
        n = len(s)
        crc = crc32c(n.to_bytes(4 if n <= 0xFFFFFFFF else 8, "little"), crc)
    len_crc = mask(crc).to_bytes(4, "little")
    crc = crc32c(len_crc, crc)
    for s in strings:
        crc = crc32c(s, crc)
    return lengths + len_crc + b"".join(strings), mask(crc)


# ----------------------------------------------------------------------------- table writing

def shortest_separator(start: bytes, limit: bytes) -> bytes:
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i < n:
        b = start[i]
        if b < 0xFF and b + 1 < limit[i]:
            return start[:i] + bytes([b + 1])
    return start


def short_successor(key: bytes) -> bytes:
    for i, b in enumerate(key):
        if b != 0xFF:
            return key[:i] + bytes([b + 1])
    return key


class BlockBuilder:
    def __init__(self, restart_interval: int) -> None:
        self.restart_interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last = b""
        self.entries = 0

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.restart_interval:
            n = min(len(self.last), len(key))
            while shared < n and self.last[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        self.buf += varint(shared) + varint(len(key) - shared) + varint(len(value))
        self.buf += key[shared:] + value
        self.last = key
        self.counter += 1
        self.entries += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return bytes(self.buf) + b"".join(r.to_bytes(4, "little") for r in self.restarts) + \
            len(self.restarts).to_bytes(4, "little")


def _write_block(out: bytearray, contents: bytes, block_type: int = 0) -> bytes:
    handle = varint(len(out)) + varint(len(contents))
    crc = mask(crc32c(contents + bytes([block_type])))
    out += contents + bytes([block_type]) + crc.to_bytes(4, "little")
    return handle


def build_table(pairs: list[tuple[bytes, bytes]], *, block_size: int = 256 * 1024,
                restart_interval: int = 16) -> bytes:
    """A LevelDB-style table of sorted ``pairs`` (as TensorFlow's TableBuilder writes it)."""
    out = bytearray()
    index = BlockBuilder(1)
    block = BlockBuilder(restart_interval)
    pending_handle = None
    last_key = b""
    for key, value in pairs:
        if pending_handle is not None:
            index.add(shortest_separator(last_key, key), pending_handle)
            pending_handle = None
        block.add(key, value)
        last_key = key
        if block.size_estimate() >= block_size:
            pending_handle = _write_block(out, block.finish())
            block = BlockBuilder(restart_interval)
    if block.entries:
        pending_handle = _write_block(out, block.finish())
    if pending_handle is not None:
        index.add(short_successor(last_key), pending_handle)
    meta_handle = _write_block(out, BlockBuilder(restart_interval).finish())
    index_handle = _write_block(out, index.finish())
    footer = meta_handle + index_handle
    footer += b"\x00" * (40 - len(footer))
    footer += (MAGIC & 0xFFFFFFFF).to_bytes(4, "little") + (MAGIC >> 32).to_bytes(4, "little")
    out += footer
    return bytes(out)


# ----------------------------------------------------------------------------- bundles

def write_bundle(prefix, tensors: dict, *, block_size: int = 256 * 1024,
                 restart_interval: int = 16, num_shards: int = 1, endianness: int = 0,
                 dtype_overrides: dict | None = None) -> Path:
    """Write ``tensors`` (name -> numpy array, or list of bytes for a string tensor).

    Tensors are spread round-robin over ``num_shards`` data files. Returns the prefix.
    ``dtype_overrides`` maps a name to a TF dtype code (e.g. 14 for bfloat16 stored as uint16).
    """
    prefix = Path(prefix)
    dtype_overrides = dtype_overrides or {}
    shards = [bytearray() for _ in range(num_shards)]
    entries = []
    for i, (name, value) in enumerate(tensors.items()):
        shard = i % num_shards
        if isinstance(value, list):
            raw, crc = string_tensor_bytes(value)
            dtype, shape = DT_STRING, (len(value),) if len(value) != 1 else ()
        else:
            arr = np.asarray(value)  # (np.ascontiguousarray would make scalars 1-d)
            if endianness == 1:
                arr = arr.astype(arr.dtype.newbyteorder(">"))
            raw = arr.tobytes()
            crc = mask(crc32c(raw))
            dtype = dtype_overrides.get(name) or NP_TO_TF[np.dtype(value.dtype).name]
            shape = arr.shape
        offset = len(shards[shard])
        shards[shard] += raw
        entries.append((name.encode(), encode_entry(dtype, shape, shard, offset, len(raw), crc)))
    entries.sort()
    pairs = [(b"", encode_header(num_shards, endianness))] + entries
    prefix.parent.mkdir(parents=True, exist_ok=True)
    Path(str(prefix) + ".index").write_bytes(
        build_table(pairs, block_size=block_size, restart_interval=restart_interval))
    for s, data in enumerate(shards):
        Path(f"{prefix}.data-{s:05d}-of-{num_shards:05d}").write_bytes(bytes(data))
    return prefix
