"""Flax msgpack checkpoints: what ``flax.serialization.to_bytes`` writes (Hugging Face's
``flax_model.msgpack``, ``flax.training.checkpoints``' msgpack files), read without jax, flax or
msgpack.

Byte layout (flax 0.12 ``serialization.py``)
--------------------------------------------
The file is one msgpack value: a map of string keys whose values are maps (submodules,
collections), arrays and other leaves. An array is a msgpack **ext** value of type 1 whose payload
is itself msgpack: an array of three, ``[shape (an array of ints), dtype name (str, e.g.
"float32", "bfloat16"), buffer (bin: the array's bytes, C order, the writer's byte order)]``.
Type 3 is the same for a numpy scalar (a 0-d array); type 2 a Python complex ``(real, imag)``.
Arrays over ``MAX_CHUNK_SIZE`` (1 GiB) are written as a map ``{"__msgpack_chunked_array__": true,
"shape": {"0": d0, ...}, "chunks": {"0": <1-d array>, ...}}``: the flattened array cut into
chunks, joined again on reading (as Flax does: only where such a map is a map's value or the root).

Only the subset Flax writes is parsed, by a small skimming parser that reads the structure and
records each array's shape, dtype and byte offset without reading its data: nil, false/true,
positive/negative fixint, (u)int8-64, float32/64, fixstr/str8-32, bin8-32, fixarray/array16/32,
fixmap/map16/32, fixext1-16/ext8-32. ``metas()`` is the structure; ``read(name)`` reads one array's
bytes by offset (``fileio``), and ``locate`` gives them to the executor for a byte copy.

Names
-----
The path of keys (list positions for msgpack arrays) joined with ``/``: ``params/Conv_0/kernel``,
``batch_stats/BatchNorm_0/mean``; a file of the ``params`` dict itself (Hugging Face) has
``Embed_0/embedding``. As for Keras' ``layer/var``, ``layers.split_key`` takes the module path
(``params/Conv_0``) as the layer; the ``flax-to-torch`` preset and ``suggest`` strip the
``params/``/``batch_stats/`` collections first, so that a BatchNorm is one layer.
``layer_classes()`` gives each module's class from Flax's default name (``Conv_0`` -> Conv2D for a
2-D kernel, ``BatchNorm_1``, ``Dense_3``, ...) or, for other names, from its variables and shapes
(``layer_table.flax_classes``; ``extras()["inferred_classes"]`` lists those).

Not weights (left out of ``metas()``, listed in ``extras()["not_weights"]`` with the reason):
a ``TrainState``'s ``opt_state`` (optimizer state) and ``step``; leaves that are not arrays
(ints, floats, strings, bytes, bools, nil, complex numbers, unknown ext types); arrays of a dtype
ckptfix has no name for (complex128, int4, strings, ...).

Refused, as one-line ``InputError`` naming the file (every length is checked against the file's
size before it is used, so a lying header costs nothing): truncation, a length past the end,
bytes after the value, the unused byte 0xc1, map keys that are not UTF-8 strings, a key twice in a
map, two entries of the same name, nesting over ``limits.MAX_DEPTH``, more than
``limits.MAX_TREE_ENTRIES`` leaves or ``MAX_TREE_NAME_CHARS`` characters of names (a small file of
nils, or of short keys under one 64 KB key, would make gigabytes of names), an ndarray payload
that is not ``[shape, dtype, buffer]`` filling its ext exactly, a negative dimension, an empty
shape no array can have (``(0, 2**64 - 1)``), rank over 64, a buffer whose size is not shape x
itemsize, malformed chunked arrays. The bytes are taken as
little-endian, as every machine Flax runs on writes them (the dtype name does not record it).
Orbax checkpoint directories are refused by ``detect`` (they are not msgpack).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Any

from .. import dtypes
from .. import layer_table as T
from ..errors import InputError
from ..limits import MAX_DEPTH, MAX_TREE_ENTRIES, MAX_TREE_NAME_CHARS, impossible_shape
from ..tensors import TensorMeta
from .base import Reader
from .fileio import read_range

WINDOW = 1 << 16           # bytes read at a time while skimming (array data is skipped, not read)
MAX_KEY = 1 << 16          # a map key or dtype name longer than this is not Flax's
MAX_TEXT = 4096            # string leaves up to this long are kept (for extras and warnings)
MAX_RANK = 64              # numpy's limit
CHUNKED = "__msgpack_chunked_array__"
EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
NOT_WEIGHTS_TOP = {"opt_state": "optimizer state", "step": "bookkeeping"}


class _Corrupt(Exception):
    pass


@dataclass(slots=True)
class _Array:
    """An ndarray leaf: where its buffer is (``pieces``: one per chunk)."""

    shape: tuple[int, ...]
    dtype: str                            # numpy's name as written
    pieces: list[tuple[int, int]]         # (begin, end) byte ranges, joined in order
    ext: int = EXT_NDARRAY


@dataclass(slots=True)
class _Leaf:
    """Anything else: its kind (``int``, ``str``, ``ext type 5`` ...) and value where small."""

    kind: str
    value: Any = None


_Node = Any  # dict[str, _Node] | list[_Node] | _Array | _Leaf


class _Skim:
    """The msgpack subset above, read from a file handle through a sliding window."""

    def __init__(self, handle, size: int) -> None:
        self.h, self.size = handle, size
        self.pos = 0
        self.buf, self.buf_at = b"", 0
        self.entries = self.name_chars = 0   # leaves so far, and the characters of their names

    # -- bytes

    def take(self, n: int, limit: int | None = None, what: str = "value") -> bytes:
        end = self.size if limit is None else limit
        if n < 0 or self.pos + n > end:
            where = "the end of the file" if limit is None else "the end of its ext payload"
            raise _Corrupt(f"truncated or corrupt: a {what} at offset {self.pos} needs {n} bytes, past {where} "
                           f"({end})")
        lo = self.pos - self.buf_at
        if lo < 0 or lo + n > len(self.buf):
            self.buf_at = self.pos
            self.buf = bytes(read_range(self.h, self.pos, min(self.size, self.pos + max(n, WINDOW))))
            lo = 0
        self.pos += n
        return self.buf[lo:lo + n]

    def skip(self, n: int, limit: int | None = None, what: str = "value") -> int:
        """Step over ``n`` bytes (checked against the end); returns where they began."""
        end = self.size if limit is None else limit
        if self.pos + n > end:
            raise _Corrupt(f"truncated or corrupt: a {what} at offset {self.pos} declares {n:,} bytes, past the end "
                           f"of the {'file' if limit is None else 'ext payload'} ({end:,})")
        at = self.pos
        self.pos += n
        return at

    def uint(self, n: int, limit=None, what="length") -> int:
        return int.from_bytes(self.take(n, limit, what), "big")

    # -- values

    def head(self, limit=None) -> tuple[str, Any]:
        """One value's header: ``("map"|"array", count)``, ``("str"|"bin", length)``,
        ``("ext", (code, length))`` or ``("scalar", (kind, value))``."""
        at = self.pos
        b = self.take(1, limit)[0]
        if b <= 0x7F:
            return "scalar", ("int", b)
        if b >= 0xE0:
            return "scalar", ("int", b - 0x100)
        if 0x80 <= b <= 0x8F:
            return "map", b & 0x0F
        if 0x90 <= b <= 0x9F:
            return "array", b & 0x0F
        if 0xA0 <= b <= 0xBF:
            return "str", b & 0x1F
        if b == 0xC0:
            return "scalar", ("nil", None)
        if b in (0xC2, 0xC3):
            return "scalar", ("bool", b == 0xC3)
        if b in (0xC4, 0xC5, 0xC6):
            return "bin", self.uint(1 << (b - 0xC4), limit)
        if b in (0xC7, 0xC8, 0xC9):
            n = self.uint(1 << (b - 0xC7), limit)
            return "ext", (struct.unpack(">b", self.take(1, limit))[0], n)
        if b in (0xCA, 0xCB):
            fmt, n = (">f", 4) if b == 0xCA else (">d", 8)
            return "scalar", ("float", struct.unpack(fmt, self.take(n, limit))[0])
        if 0xCC <= b <= 0xCF:
            return "scalar", ("int", self.uint(1 << (b - 0xCC), limit, "integer"))
        if 0xD0 <= b <= 0xD3:
            n = 1 << (b - 0xD0)
            return "scalar", ("int", int.from_bytes(self.take(n, limit, "integer"), "big", signed=True))
        if 0xD4 <= b <= 0xD8:
            code = struct.unpack(">b", self.take(1, limit))[0]
            return "ext", (code, 1 << (b - 0xD4))
        if b in (0xD9, 0xDA, 0xDB):
            return "str", self.uint(1 << (b - 0xD9), limit)
        if b in (0xDC, 0xDD):
            return "array", self.uint(2 << (b - 0xDC), limit)
        if b in (0xDE, 0xDF):
            return "map", self.uint(2 << (b - 0xDE), limit)
        raise _Corrupt(f"byte 0xc1 at offset {at} is not msgpack (never used): corrupt file")

    def text(self, n: int, limit=None, what="string") -> str:
        if n > MAX_KEY:
            raise _Corrupt(f"a {what} at offset {self.pos} is {n:,} bytes long: not a Flax file, or corrupt")
        raw = self.take(n, limit, what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _Corrupt(f"a {what} at offset {self.pos - n} is not UTF-8: corrupt file") from None

    def key(self) -> str:
        at = self.pos
        kind, n = self.head()
        if kind != "str":
            shown = n[0] if kind == "scalar" else kind
            raise _Corrupt(f"map key at offset {at} is {'an' if shown[0] in 'aeiou' else 'a'} {shown}, not a string: "
                           "Flax writes string keys only (a state dict's)")
        return self.text(n, what="map key")

    def count(self, kind: str, n: int, at: int) -> None:
        """A container of ``n`` entries needs at least 1 byte per value (2 per map entry)."""
        need = n * (2 if kind == "map" else 1)
        if self.pos + need > self.size:
            raise _Corrupt(f"the {kind} at offset {at} declares {n:,} entries but only {self.size - self.pos:,} bytes "
                           "follow: truncated or corrupt")

    def value(self, depth: int, where) -> tuple[str, Any]:
        """A leaf (``("leaf", node)``) or an opened container (``("open", (kind, count))``)."""
        at = self.pos
        kind, arg = self.head()
        if kind in ("map", "array"):
            if depth > MAX_DEPTH:
                raise _Corrupt(f"is nested too deeply (more than {MAX_DEPTH} levels, at offset {at})")
            self.count(kind, arg, at)
            return "open", (kind, arg)
        if kind == "scalar":
            return "leaf", _Leaf(*arg)
        if kind == "str":
            if arg <= MAX_TEXT:
                return "leaf", _Leaf("string", self.text(arg))
            self.skip(arg)
            return "leaf", _Leaf("string", None)
        if kind == "bin":
            self.skip(arg)
            return "leaf", _Leaf("bytes", arg)
        code, n = arg
        start = self.skip(n, what="ext payload")
        if code in (EXT_NDARRAY, EXT_NPSCALAR):
            end, self.pos = self.pos, start
            arr = self.ndarray(end, where())
            arr.ext = code
            return "leaf", arr
        return "leaf", _Leaf("complex number" if code == EXT_COMPLEX else f"ext type {code}")

    def ndarray(self, end: int, where: str) -> _Array:
        """The payload ``[shape, dtype, buffer]`` of an ndarray ext ending at ``end``."""
        at = self.pos

        def bad(why: str) -> _Corrupt:
            return _Corrupt(f"array {where!r} (ext payload at offset {at}): {why}")

        try:
            kind, n = self.head(end)
            if kind != "array" or n != 3:
                raise bad("not [shape, dtype, buffer]")
            kind, rank = self.head(end)
            if kind != "array":
                raise bad("its shape is not an array")
            if rank > MAX_RANK:
                raise bad(f"rank {rank} is over numpy's {MAX_RANK}")
            shape = []
            for _ in range(rank):
                kind, d = self.head(end)
                if kind != "scalar" or d[0] != "int":
                    raise bad("a dimension is not an integer")
                if d[1] < 0:
                    raise bad(f"dimension {d[1]} is negative")
                shape.append(d[1])
            kind, n = self.head(end)
            if kind not in ("str", "bin"):
                raise bad("its dtype is not a string")
            dtype = self.text(n, end, "dtype name")
            kind, n = self.head(end)
            if kind not in ("str", "bin"):
                raise bad("its buffer is not bytes")
            begin = self.skip(n, end, "buffer")
        except _Corrupt as e:
            if str(e).startswith("array "):
                raise
            raise bad(str(e)) from None
        if self.pos != end:
            raise bad(f"{end - self.pos} bytes after the buffer, inside the ext")
        known = dtypes.BY_NAME.get(dtype)
        if known is not None and math.prod(shape) * known.itemsize != n:
            raise bad(f"shape {list(shape)} of {dtype} needs {math.prod(shape) * known.itemsize:,} bytes but its "
                      f"buffer holds {n:,}")
        if impossible_shape(shape, known.itemsize if known is not None else 1):
            raise bad(f"shape {list(shape)} is too large for any array (numpy refuses it, even empty)")
        return _Array(tuple(shape), dtype, [(begin, begin + n)])

    def leaf(self, name_chars: int) -> None:
        """Count one leaf and its name against the budgets: a small file of many tiny entries, or of
        short keys under one long one, would otherwise make gigabytes of Python objects and names."""
        self.entries += 1
        self.name_chars += name_chars
        if self.entries > MAX_TREE_ENTRIES:
            raise _Corrupt(f"holds more than {MAX_TREE_ENTRIES:,} entries (at offset {self.pos}): not a Flax "
                           "state dict, or crafted")
        if self.name_chars > MAX_TREE_NAME_CHARS:
            raise _Corrupt(f"its entries' names add up to more than {MAX_TREE_NAME_CHARS:,} characters (at offset "
                           f"{self.pos}; long keys above many entries): not a Flax state dict, or crafted")

    def parse(self) -> dict:
        """The whole file as nested dicts/lists of ``_Array``/``_Leaf`` (iterative: any depth)."""
        state, arg = self.value(1, lambda: "")
        if state != "open" or arg[0] != "map":
            raise _Corrupt("is not a msgpack map (a Flax state dict)")
        root: dict = {}
        # frames: [container, entries left, is a map, current key, path, length of the path's name]
        stack: list[list] = [[root, arg[1], True, self.key(), [], -1]] if arg[1] else []
        finished: _Node | None = None
        while stack:
            f = stack[-1]
            if finished is None:
                key = f[3] if f[2] else str(len(f[0]))
                state, arg = self.value(len(stack) + 1, lambda: "/".join(f[4] + [key]))
                if state == "open":
                    kind, n = arg
                    child: Any = {} if kind == "map" else []
                    if n:
                        stack.append([child, n, kind == "map", None, f[4] + [key], f[5] + 1 + len(key)])
                        if kind == "map":
                            stack[-1][3] = self.key()
                        continue
                    finished = child
                else:
                    self.leaf(f[5] + 1 + len(key))
                    finished = arg
            # put the finished value into the frame on top
            f = stack[-1]
            if f[2]:
                if f[3] in f[0]:
                    raise _Corrupt(f"map {'/'.join(f[4]) or '(root)'!r} has the key {f[3]!r} twice "
                                   "(msgpack readers keep the last): corrupt or crafted file")
                f[0][f[3]] = finished
            else:
                f[0].append(finished)
            f[1] -= 1
            if f[1]:
                finished = None
                if f[2]:
                    f[3] = self.key()
                continue
            finished = f[0]
            stack.pop()
        if self.pos != self.size:
            raise _Corrupt(f"{self.size - self.pos:,} bytes follow the msgpack value (at offset {self.pos}): "
                           "corrupt, or several values concatenated")
        return root


# ---------------------------------------------------------------------------------------------
# the parsed tree -> named tensors


_REASON = {"int": "int value", "float": "float value", "bool": "bool value", "nil": "nil value",
           "string": "string value", "bytes": "bytes value"}


def _unchunk(node: dict, name: str) -> _Array:
    """A ``__msgpack_chunked_array__`` map as one array (flax ``_unchunk``: the chunks, flattened
    pieces of one dtype, joined and reshaped to ``shape``)."""
    def bad(why: str) -> _Corrupt:
        return _Corrupt(f"chunked array {name!r}: {why}")

    shape_d, chunks_d = node.get("shape"), node.get("chunks")
    if not isinstance(shape_d, dict) or not isinstance(chunks_d, dict):
        raise bad("needs a 'shape' map and a 'chunks' map")
    if set(shape_d) != {str(i) for i in range(len(shape_d))} or len(shape_d) > MAX_RANK:
        raise bad("its shape is not a map of dimensions '0', '1', ...")
    shape = []
    for i in range(len(shape_d)):
        d = shape_d[str(i)]
        if not isinstance(d, _Leaf) or d.kind != "int" or d.value < 0:
            raise bad(f"dimension {i} is not a non-negative integer")
        shape.append(d.value)
    if not chunks_d or set(chunks_d) != {str(i) for i in range(len(chunks_d))}:
        raise bad("its chunks are not a map of arrays '0', '1', ...")
    pieces, dtype, numel = [], None, 0
    for i in range(len(chunks_d)):
        c = chunks_d[str(i)]
        if not isinstance(c, _Array) or c.ext != EXT_NDARRAY or len(c.shape) != 1:
            raise bad(f"chunk {i} is not a 1-d array")
        if dtype is not None and c.dtype != dtype:
            raise bad(f"chunk {i} is {c.dtype}, chunk 0 {dtype}")
        dtype = c.dtype
        numel += c.shape[0]
        pieces += c.pieces
    if impossible_shape(shape, dtypes.BY_NAME[dtype].itemsize if dtype in dtypes.BY_NAME else 1):
        raise bad(f"shape {list(shape)} is too large for any array (numpy refuses it, even empty)")
    if numel != math.prod(shape):
        raise bad(f"its chunks hold {numel:,} elements, its shape {list(shape)} {math.prod(shape):,}")
    return _Array(tuple(shape), dtype, pieces)


def flatten(root: dict) -> tuple[dict[str, _Array], dict[str, str], dict[str, Any]]:
    """``(arrays, not weights {name: reason}, small leaf values)`` by name, in file order."""
    if CHUNKED in root:
        raise _Corrupt("is one chunked array, not a state dict of named arrays")
    arrays: dict[str, _Array] = {}
    why: dict[str, str] = {}
    values: dict[str, Any] = {}
    # (node, name, its first key, whether a chunked-array map here is one: Flax unchunks map values only)
    stack: list[tuple[Any, str, str | None, bool]] = [(root, "", None, False)]
    while stack:
        node, name, top, in_map = stack.pop()
        if isinstance(node, dict) and in_map and CHUNKED in node:
            node = _unchunk(node, name)
        if isinstance(node, (dict, list)):
            items = node.items() if isinstance(node, dict) else ((str(i), v) for i, v in enumerate(node))
            kids = [(v, k, k, True) if top is None else (v, f"{name}/{k}", top, isinstance(node, dict))
                    for k, v in items]
            stack.extend(reversed(kids))
            continue
        if name in arrays or name in why:
            raise _Corrupt(f"two entries are both named {name!r} (a key with '/' in it): ambiguous")
        if isinstance(node, _Leaf) and node.kind in _REASON and node.kind != "bytes" and (
                node.value is not None or node.kind == "nil"):  # (a long string's text is not kept)
            finite = not isinstance(node.value, float) or math.isfinite(node.value)
            values[name] = node.value if finite else repr(node.value)  # (JSON has no nan, inf)
        top_why = NOT_WEIGHTS_TOP.get(top) if top == "opt_state" or name == "step" else None
        if top_why is not None:
            why[name] = top_why
        elif isinstance(node, _Array):
            if node.dtype in dtypes.BY_NAME:
                arrays[name] = node
            else:
                why[name] = f"{node.dtype} array (a dtype ckptfix does not have)"
        else:
            why[name] = _REASON.get(node.kind, node.kind)
    return arrays, why, values


class FlaxReader(Reader):
    format = "flax-msgpack"

    def __init__(self, path, fileset=None) -> None:
        super().__init__(path, fileset)
        self._file = self.fileset.open(self.path)
        try:
            root = _Skim(self._file, self._file.size).parse()
            self._arrays, self._why, self._values = flatten(root)
        except _Corrupt as e:
            raise InputError(self.path, str(e)) from None
        except OSError as e:
            raise InputError(self.path, f"cannot read: {e.strerror or e}") from None
        self._metas = {n: TensorMeta(a.shape, a.dtype) for n, a in self._arrays.items()}
        self.top_keys = list(root)
        from ..layers import group_layers

        shapes = {layer: {v: m.shape for v, m in ts.items()} for layer, ts in group_layers(self._metas).items()}
        named, self._inferred = T.flax_classes(shapes)
        self._classes = {**named, **self._inferred}

    def metas(self) -> dict[str, TensorMeta]:
        return dict(self._metas)

    def locate(self, name: str):
        pieces = self._arrays[name].pieces
        return (self._file, *pieces[0]) if len(pieces) == 1 else None

    def read(self, name: str):
        import torch

        from .safetensors_io import read_tensor

        arr, meta = self._arrays[name], self._metas[name]
        if len(arr.pieces) == 1:
            return read_tensor(self._file, *arr.pieces[0], meta)
        buf = torch.empty(meta.nbytes, dtype=torch.uint8)
        at = 0
        for b, e in arr.pieces:
            read_range(self._file, b, e, buf[at:at + e - b].numpy())
            at += e - b
        return buf.view(dtypes.torch_dtype(meta.dtype)).reshape(meta.shape)

    def layer_classes(self) -> dict[str, str]:
        return dict(self._classes)

    def extras(self) -> dict[str, Any]:
        return {"top_keys": self.top_keys, "not_weights": dict(self._why), "values": dict(self._values),
                "chunked": [n for n, a in self._arrays.items() if len(a.pieces) > 1],
                "inferred_classes": dict(self._inferred)}

    def warnings(self) -> list[str]:
        out = []
        orbax = [n for n, v in self._values.items() if isinstance(v, str) and v.startswith("PLACEHOLDER://")]
        if orbax:
            out.append(f"{len(orbax)} value(s) are Orbax placeholders (PLACEHOLDER://...): their arrays are stored "
                       "by Orbax beside this file, which ckptfix does not read; save the restored state with "
                       "flax.serialization.to_bytes")
        stacked = [n[:-len("/kernel")] for n, m in self._metas.items() if n.endswith("/kernel") and len(m.shape) >= 3
                   and (b := self._metas.get(n[:-len("kernel")] + "bias")) is not None and len(b.shape) >= 2
                   and b.shape[0] == m.shape[0]]
        if stacked:
            out.append(f"{len(stacked)} module(s) hold variables stacked by nn.scan/nn.vmap (a leading axis of layers: "
                       f"{stacked[0]}/kernel {list(self._metas[stacked[0] + '/kernel'].shape)}): no layer class, "
                       "left as stored; unstack them by hand (one torch layer per index)")
        odd = sorted({r for r in self._why.values() if r.endswith("does not have)")})
        if odd:
            out.append(f"arrays left out: {', '.join(odd)}")
        return out
