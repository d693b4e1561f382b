"""safetensors: a header-only reader, a one-tensor-at-a-time writer, and HF-sharded layouts.

The reader parses and validates the header itself (pure Python, no torch needed for planning)
with the same checks the safetensors library makes, plus one it does not: duplicate tensor names
are refused instead of "last wins". Each tensor is read with one ``pread`` into a fresh buffer,
so nothing stays mapped and a file truncated under us gives an error, not SIGBUS.

The writer writes the format directly so that tensors can be streamed: the header is known from
the plan before any data exists. It lays tensors out exactly like ``safetensors.torch.save_file``
(dtype rank descending, then name), so for the same tensors the bytes are identical.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import dtypes
from ..errors import InputError
from ..tensors import TensorMeta
from .base import Reader
from .detect import SHARD_INDEX
from .fileio import WriteBehind, copy_range, read_range

MAX_HEADER = 100_000_000
# safetensors' Dtype enum order (the library sorts tensors by this, descending, then by name).
_DTYPE_RANK = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16",
               "I32", "U32", "F32", "C64", "F64", "I64", "U64"]


def _no_duplicates(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate tensor name {k!r} in header")
        out[k] = v
    return out


def parse_header(path: Path, f, size: int) -> tuple[dict[str, TensorMeta], dict[str, tuple[int, int]], dict, int]:
    """Validate a safetensors header. Returns (metas, absolute byte ranges, metadata, data start)."""
    if size < 8:
        raise InputError(path, f"truncated safetensors file: {size} bytes, the header length alone needs 8")
    n = int.from_bytes(f.read(8), "little")
    if n > MAX_HEADER:
        raise InputError(path, f"safetensors header length {n} is over the 100 MB limit (corrupt file?)")
    if 8 + n > size:
        raise InputError(path, f"truncated safetensors file: header says {n} bytes, file has {size - 8} after the length")
    raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(path, "safetensors header is not valid UTF-8") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise InputError(path, "invalid safetensors header: JSON nested too deeply") from None
    except ValueError as e:
        raise InputError(path, f"invalid safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise InputError(path, "invalid safetensors header: not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(path, "invalid safetensors header: __metadata__ must map strings to strings")
    try:  # a JSON "\ud800" escape: a lone surrogate, which no output (or terminal) can encode
        json.dumps(metadata, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(path, "invalid safetensors header: __metadata__ holds invalid Unicode "
                         "(a lone surrogate)") from None
    start = 8 + n
    metas: dict[str, TensorMeta] = {}
    ranges: dict[str, tuple[int, int]] = {}
    for name, info in header.items():
        if isinstance(info, dict) and "dtype" in info and (
                not isinstance(info["dtype"], str) or info["dtype"] not in dtypes.BY_SAFETENSORS):
            raise InputError(path, f"tensor {name!r} has unknown dtype {str(info['dtype'])[:40]!r}")
        try:
            dt = dtypes.BY_SAFETENSORS[info["dtype"]]
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InputError(path, f"invalid safetensors header entry for tensor {name!r}") from None
        if not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in shape):
            raise InputError(path, f"invalid shape {list(shape)} for tensor {name!r}")
        if not all(isinstance(o, int) and o >= 0 for o in (begin, end)) or end < begin:
            raise InputError(path, f"invalid data offsets for tensor {name!r}")
        meta = TensorMeta(shape=shape, dtype=dt.name)
        if meta.nbytes != end - begin:
            raise InputError(path, f"tensor {name!r}: shape {list(shape)} x {dt.name} is {meta.nbytes} "
                             f"bytes but its data range is {end - begin}")
        metas[name] = meta
        ranges[name] = (start + begin, start + end)
    # The data section must be covered exactly, without overlaps or gaps.
    pos = start
    for name, (b, e) in sorted(ranges.items(), key=lambda kv: kv[1]):
        if b != pos:
            raise InputError(path, f"invalid offset for tensor {name!r}: overlapping or out of order data")
        pos = e
    if pos != size:
        what = "truncated" if pos > size else "has trailing bytes after the data"
        raise InputError(path, f"safetensors file {what}: data ends at {pos}, file is {size} bytes")
    return metas, ranges, {str(k): str(v) for k, v in metadata.items()}, start


def read_tensor(path, begin: int, end: int, meta: TensorMeta):
    """One tensor's bytes read straight into a new tensor (no zero-filled buffer first)."""
    import torch

    dt = dtypes.torch_dtype(meta.dtype)
    if meta.numel == 0:
        return torch.empty(meta.shape, dtype=dt)
    buf = torch.empty(end - begin, dtype=torch.uint8)
    read_range(path, begin, end, buf.numpy())
    return buf.view(dt).reshape(meta.shape)


class SafetensorsReader(Reader):
    format = "safetensors"

    def __init__(self, path: str | Path, fileset=None) -> None:
        super().__init__(path, fileset)
        self._file = self.fileset.open(self.path)
        size = self._file.size
        try:
            with self._file.file() as f:
                self._metas, self._ranges, self.metadata, self.data_start = parse_header(self.path, f, size)
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        self.size = size

    def metas(self) -> dict[str, TensorMeta]:
        return dict(self._metas)

    def byte_range(self, name: str) -> tuple[int, int]:
        return self._ranges[name]

    def locate(self, name: str):
        b, e = self._ranges[name]
        return self._file, b, e

    def read(self, name: str):
        b, e = self._ranges[name]
        return read_tensor(self._file, b, e, self._metas[name])

    def extras(self):
        return {"metadata": self.metadata} if self.metadata else {}


class ShardedSafetensorsReader(Reader):
    """``model.safetensors.index.json`` + shards (huggingface_hub layout)."""

    format = "safetensors-sharded"

    def __init__(self, path: str | Path, fileset=None) -> None:
        p = Path(path)
        index = p / SHARD_INDEX if p.is_dir() else p
        super().__init__(index, fileset)
        try:
            h = self.fileset.open(index)
            doc = json.loads(h.read_all().decode("utf-8"))
            weight_map = doc["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError
        except OSError as e:
            raise InputError(index, f"cannot read: {e.strerror or e}") from None
        except (ValueError, KeyError, TypeError):
            raise InputError(index, "not a valid safetensors index (needs a JSON object with a weight_map)") from None
        self.index_metadata = doc.get("metadata") or {}
        self._shards: dict[str, SafetensorsReader] = {}
        self._where: dict[str, SafetensorsReader] = {}
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or "/" in shard or "\\" in shard or shard.startswith(".."):
                raise InputError(index, f"invalid shard file name {shard!r} for tensor {name!r}")
            if shard not in self._shards:
                sp = index.parent / shard
                if not sp.is_file():
                    raise InputError(index, f"shard {shard} (holding {name!r}) is missing")
                self._shards[shard] = SafetensorsReader(sp, self.fileset)
            reader = self._shards[shard]
            if name not in reader._metas:
                raise InputError(reader.path, f"tensor {name!r} is listed in the index but not in this shard")
            self._where[name] = reader

    def metas(self) -> dict[str, TensorMeta]:
        return {n: r._metas[n] for n, r in self._where.items()}

    def read(self, name: str):
        return self._where[name].read(name)

    def locate(self, name: str):
        return self._where[name].locate(name)

    def extras(self):
        return {"shards": len(self._shards), "metadata": self.index_metadata}


# ---------------------------------------------------------------------------------------------
# Writing


def layout(metas: dict[str, TensorMeta]) -> list[str]:
    """The order safetensors.torch.save_file lays tensors out in."""
    rank = {d: i for i, d in enumerate(_DTYPE_RANK)}
    return sorted(metas, key=lambda n: (-rank[dtypes.get(metas[n].dtype).safetensors], n))


def build_header(metas: dict[str, TensorMeta], metadata: dict[str, str] | None) -> tuple[bytes, list[str]]:
    if "__metadata__" in metas:
        from ..errors import CkptfixError

        raise CkptfixError("a tensor named '__metadata__' cannot be stored in safetensors (the name is reserved); "
                           "rename it or write .pt")
    order = layout(metas)
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    pos = 0
    for name in order:
        m = metas[name]
        header[name] = {"dtype": dtypes.get(m.dtype).safetensors, "shape": list(m.shape),
                        "data_offsets": [pos, pos + m.nbytes]}
        pos += m.nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, order


def tensor_bytes(tensor) -> memoryview:
    """A zero-copy byte view of a CPU tensor (made contiguous first)."""
    import torch

    t = tensor.detach().contiguous()
    if t.numel() == 0:
        return memoryview(b"")
    return memoryview(t.reshape(-1).view(torch.uint8).numpy())


class SafetensorsWriter:
    """Write a safetensors file one tensor at a time, in ``self.order``.

    ``metas`` must be final: each written tensor is checked against it.
    """

    def __init__(self, f, metas: dict[str, TensorMeta], metadata: dict[str, str] | None = None) -> None:
        self.f = f
        self.metas = metas
        header, self.order = build_header(metas, metadata)
        f.write(header)
        self._next = 0
        self._behind = WriteBehind(f)

    def write(self, name: str, tensor) -> None:
        expected = self.order[self._next]
        if name != expected:
            raise AssertionError(f"tensor {name!r} written out of order (expected {expected!r})")
        meta = self.metas[name]
        if tuple(tensor.shape) != meta.shape or dtypes.from_torch(tensor.dtype) != meta.dtype:
            raise AssertionError(f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned {meta}")
        self.f.write(tensor_bytes(tensor))
        self._next += 1
        self._behind()

    def copy(self, name: str, path: Path, begin: int, length: int, on_chunk=None, crc=None) -> None:
        """Copy bytes already in the right layout from a file (a renamed tensor, a row range)."""
        expected = self.order[self._next]
        if name != expected or length != self.metas[name].nbytes:
            raise AssertionError(f"raw copy of {name!r} does not match the plan")
        def step(n):
            self._behind()
            if on_chunk:
                on_chunk(n)
        copy_range(path, begin, length, self.f, step, crc)
        self._next += 1

    def finish(self) -> None:
        if self._next != len(self.order):
            raise AssertionError(f"only {self._next} of {len(self.order)} tensors written")


def shard_groups(metas: dict[str, TensorMeta], max_bytes: int) -> list[list[str]]:
    """Split names (in order) into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    groups: list[list[str]] = [[]]
    size = 0
    for name, m in metas.items():
        if groups[-1] and size + m.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += m.nbytes
    return groups


def shard_name(i: int, n: int) -> str:
    return f"model-{i + 1:05d}-of-{n:05d}.safetensors"
