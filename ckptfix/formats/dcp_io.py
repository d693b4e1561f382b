"""torch.distributed.checkpoint (DCP) directories: ``.metadata`` + ``*.distcp``.

What ``torch.distributed.checkpoint.save`` writes with its ``FileSystemWriter`` (FSDP, FSDP2,
tensor-parallel and plain single-process training all save this way). A pure reader: no process
group, no ``torch.load``, nothing of ``torch.distributed`` imported.

Byte layout (torch 2.13 ``torch/distributed/checkpoint/filesystem.py`` and ``metadata.py``)
------------------------------------------------------------------------------------------
* ``.metadata`` is one ``pickle.dump`` of a ``Metadata`` dataclass:

  - ``state_dict_metadata``: fqn -> ``TensorStorageMetadata(properties, size, chunks)`` or
    ``BytesStorageMetadata()``. The fqns are the keys of the state dict given to ``save``,
    flattened with ``.`` (``{"model": sd, "optim": osd}`` gives ``model.fc.weight``,
    ``optim.state.0.exp_avg``, ``optim.param_groups.0.lr``). ``size`` is the tensor's global
    shape; each ``ChunkStorageMetadata(offsets, sizes)`` is one shard (a rank's local tensor of a
    DTensor / ShardedTensor: FSDP splits dim 0, tensor parallelism dim 0 or 1); ``properties``
    holds the dtype (pickled as the global ``torch.float32``), the layout (a call of
    ``torch.serialization._get_layout("torch.strided")``) and an encoded memory format.
  - ``storage_data``: ``MetadataIndex(fqn, offset)`` -> ``_StorageInfo(relative_path, offset,
    length[, transform_descriptors])``: where each chunk (``offset`` = the chunk's offsets) and
    each bytes entry (``offset`` None) is stored.
  - ``planner_data``: fqn -> the key path it had in the nested state dict (``("model",
    "fc.weight")``), ``storage_meta`` (checkpoint id, a random save uuid), ``version``.

* Each ``__<rank>_<n>.distcp`` is the concatenation of its items, each exactly
  ``length`` bytes at ``offset``: a tensor chunk is a complete ``torch.save`` archive of the
  chunk's local tensor (a zip: ``archive/data.pkl`` calling ``torch._utils._rebuild_tensor_v2``
  on the persistent id ``('storage', torch.FloatStorage, '0', 'cpu', numel)``, the storage
  record ``archive/data/0`` stored uncompressed, ``byteorder``, ``version``, ...); a bytes entry is
  the raw bytes of ``torch.save(obj)`` of a non-tensor value (an int, a list). The writer clones a
  view so that each chunk's storage is exactly its bytes. With ``transform_descriptors`` (DCP's
  experimental stream extensions, e.g. zstd) the item is a transformed stream.

How it is read
--------------
* ``.metadata`` goes through ``pickles.load_inert``: DCP's dataclasses, ``torch.Size``, dtypes,
  layouts and ``pathlib`` paths become inert placeholders holding their fields (never imported,
  never called); any other global refuses the file (one that runs code as hostile). The
  placeholders are then read into this module's own typed records, each field type-checked.
* ``metas()`` comes from the metadata alone. At open every listed tensor's chunks are checked
  to tile it exactly (inside the tensor, no overlap, no gap), each chunk's file is opened through
  the fileset (so it must resolve inside the directory) and each item range checked against its
  file's size; items of one file must not overlap (so no tensor reads more bytes than the files
  hold).
* ``read(name)`` allocates the global tensor and copies each chunk into its offsets, reading only
  that tensor's items: memory is the tensor plus one chunk. An item's zip is parsed in place
  (``zipmember`` through a view of the item's byte range, compressed members bounded as for
  ``.pt``); its ``data.pkl`` is unpickled by ``pickles.load_inert`` allowing only the tensor
  rebuild functions, storage classes and ``OrderedDict``; its storage record must be stored
  uncompressed, exactly the storage's size, and passes its CRC-32 as it is read.

Names and what is left out
--------------------------
Names are the fqns DCP records, prefix included: a model saved as ``{"model": sd}`` reads as
``model.fc.weight`` (strip it with a rule, ``- strip_prefix: model.``; ``warnings()`` says which
prefix the tensors carry, ``extras()["prefixes"]``). Not model weights, so not in ``metas()``:
bytes entries (``extras()["non_tensor"]``: pickled objects, never unpickled) and optimizer state
(``extras()["optimizer_state"]``: tensors under a top-level key named like an optimizer, as
``.pt`` containers are treated, or under one that also holds ``param_groups``). A bytes entry whose
archive lists storage records (tensors pickled inside an object) is named in a warning; only its
zip directory is read.

Refused: a chunk file outside the directory (``../x.distcp``, an absolute path; the fileset's
rule, ``--allow-outside-files`` to read it anyway), missing data files, items past the end of
their file, chunks that do not tile their tensor, items stored through transforms, DCP's
safetensors serialization (items that are not ``torch.save`` archives), sparse layouts and dtypes
ckptfix does not handle (when the tensor is a model weight).
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import dtypes
from ..errors import InputError
from ..limits import MAX_PICKLE_MEMBER, MAX_SMALL_RECORD, fmt_bytes
from ..tensors import TensorMeta
from . import pickles, zipmember
from .base import Reader
from .fileio import RangeFile
from .fileset import FileSet
from .torch_io import OPTIMIZER_KEY, check_zip_members

METADATA = ".metadata"
ZIP_MAGIC = b"PK\x03\x04"
MAX_OVERLAP_TESTS = 2_000_000  # chunk comparisons a checkpoint's non-grid layouts may take (_tiling_problem)

_MD = "torch.distributed.checkpoint.metadata."
_FS = "torch.distributed.checkpoint.filesystem."
_LAYOUTS = ("strided", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "_mkldnn", "jagged")
_TORCH_DTYPE = re.compile(r"torch\.(u?int\d+|float\d+(_\w+)?|bfloat16|complex\d+|bool|bits\w+|q\w+)")

#: The globals a ``.metadata`` may name: DCP's dataclasses and the values inside them.
METADATA_GLOBALS = frozenset(
    {_MD + n for n in ("Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
                       "TensorProperties", "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING")}
    | {_FS + "_StorageInfo", "torch.Size", "torch.serialization._get_layout", "collections.OrderedDict",
       "pathlib.PosixPath", "pathlib.WindowsPath", "pathlib.PurePosixPath", "pathlib.PureWindowsPath"}
    | {f"torch.{n}" for n in _LAYOUTS})

#: torch's typed storage classes -> the dtype of their elements (None: one ckptfix does not read)
STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": None, "QInt8Storage": None, "QInt32Storage": None, "QUInt8Storage": None,
    "QUInt4x2Storage": None, "QUInt2x4Storage": None,
}
_REBUILD = ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3")
UNTYPED = "torch.storage.UntypedStorage"
#: The globals the ``data.pkl`` of one item may name: what ``torch.save(tensor)`` writes.
ITEM_GLOBALS = frozenset({*_REBUILD, UNTYPED, "collections.OrderedDict"} | {f"torch.{n}" for n in STORAGE_DTYPES})


def _metadata_global(name: str) -> bool:
    return name in METADATA_GLOBALS or bool(_TORCH_DTYPE.fullmatch(name))


def _item_global(name: str) -> bool:
    return name in ITEM_GLOBALS or bool(_TORCH_DTYPE.fullmatch(name))


# ---------------------------------------------------------------------------------------------
# the metadata, as typed records


@dataclass(frozen=True)
class Item:
    """Where one entry's bytes are: ``length`` bytes at ``offset`` of ``file`` (``relative_path``)."""

    file: str
    offset: int
    length: int
    transforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Chunk:
    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    item: Item

    @property
    def numel(self) -> int:
        return math.prod(self.sizes)


@dataclass(frozen=True)
class TensorEntry:
    fqn: str
    shape: tuple[int, ...]
    dtype: str         # torch's name ("float32"); ckptfix may not handle it (dtypes.BY_NAME)
    layout: str        # "strided", "sparse_coo", ...
    chunks: tuple[Chunk, ...]


@dataclass(frozen=True)
class DcpMetadata:
    tensors: dict[str, TensorEntry]
    non_tensor: dict[str, Item | None]       # BytesStorageMetadata entries (their item, if listed)
    key_paths: dict[str, tuple]              # planner_data: fqn -> key path in the nested state dict
    version: str | None


class _Bad(Exception):
    """A malformed field of the metadata (turned into an InputError naming the file)."""


def _name(obj) -> str:
    if isinstance(obj, pickles.Inert):
        return type(obj).global_name.rsplit(".", 1)[-1]
    return type(obj).__name__


def _fields(obj, cls: str, where: str) -> dict:
    """The fields of a pickled dataclass ``cls`` (a placeholder: its ``BUILD`` state)."""
    if not isinstance(obj, pickles.Inert) or type(obj).global_name != cls:
        raise _Bad(f"{where} is a {_name(obj)}, expected a {cls.rsplit('.', 1)[-1]}")
    state = obj.state
    if isinstance(state, tuple) and len(state) == 2 and state[0] is None and isinstance(state[1], dict):
        state = state[1]  # a dataclass with __slots__
    if state is None:
        state = {}
    if not isinstance(state, dict) or obj.args or obj.items:
        raise _Bad(f"{where}: a {cls.rsplit('.', 1)[-1]} pickled in an unexpected way")
    return state


def _int(v, where: str, *, optional: bool = False) -> int | None:
    if optional and v is None:
        return None
    if type(v) is not int or v < 0:
        raise _Bad(f"{where} is {pickles.printable(repr(v))[:60]}, expected a non-negative integer")
    return v


def _size(obj, where: str) -> tuple[int, ...]:
    """A ``torch.Size`` (a placeholder called with one tuple), or a plain tuple/list of ints."""
    if isinstance(obj, pickles.Inert) and type(obj).global_name == "torch.Size" and obj._inert["how"] == "call" \
            and len(obj.args) == 1 and not obj._inert["kwargs"]:
        obj = obj.args[0]
    if not isinstance(obj, (tuple, list)):
        raise _Bad(f"{where} is a {_name(obj)}, expected a torch.Size")
    return tuple(_int(v, f"{where}[{i}]") for i, v in enumerate(obj))


def _str(v, where: str, *, optional: bool = False) -> str | None:
    if optional and v is None:
        return None
    if not isinstance(v, str):
        raise _Bad(f"{where} is a {_name(v)}, expected a string")
    return v


def _dtype(v, where: str) -> str:
    if isinstance(v, type) and issubclass(v, pickles.Inert) and _TORCH_DTYPE.fullmatch(v.global_name):
        return v.qualname
    raise _Bad(f"{where} is a {_name(v)}, expected a torch dtype")


def _layout(v, where: str) -> str:
    if isinstance(v, type) and issubclass(v, pickles.Inert) and v.module == "torch" and v.qualname in _LAYOUTS:
        return v.qualname
    if isinstance(v, pickles.Inert) and type(v).global_name == "torch.serialization._get_layout" \
            and len(v.args) == 1 and isinstance(v.args[0], str) and v.args[0].removeprefix("torch.") in _LAYOUTS:
        return v.args[0].removeprefix("torch.")
    raise _Bad(f"{where} is a {_name(v)}, expected a torch layout")


def _properties(obj, where: str) -> tuple[str, str]:
    """(dtype, layout) of a ``TensorProperties``: pickled as a tuple by its ``__getstate__``
    (dtype, layout, requires_grad, memory-format code, pin_memory), by older torch as its fields."""
    if not isinstance(obj, pickles.Inert) or type(obj).global_name != _MD + "TensorProperties":
        raise _Bad(f"{where} is a {_name(obj)}, expected a TensorProperties")
    st = obj.state
    if isinstance(st, tuple) and len(st) == 5:
        return _dtype(st[0], f"{where}.dtype"), _layout(st[1], f"{where}.layout")
    st = _fields(obj, _MD + "TensorProperties", where)
    return _dtype(st.get("dtype"), f"{where}.dtype"), _layout(st.get("layout"), f"{where}.layout")


def _item(obj, where: str) -> Item:
    st = _fields(obj, _FS + "_StorageInfo", where)
    transforms = st.get("transform_descriptors") or ()
    if not isinstance(transforms, (list, tuple)) or not all(isinstance(t, str) for t in transforms):
        raise _Bad(f"{where}.transform_descriptors is not a list of strings")
    path = _str(st.get("relative_path"), f"{where}.relative_path")
    if not path or "\x00" in path:
        raise _Bad(f"{where}.relative_path {pickles.printable(repr(path))} is not a file name")
    return Item(path, _int(st.get("offset"), f"{where}.offset"), _int(st.get("length"), f"{where}.length"),
                tuple(transforms))


def parse_metadata(obj) -> DcpMetadata:
    """The typed records of a loaded (inert) ``Metadata``; ``_Bad`` for any malformed field."""
    md = _fields(obj, _MD + "Metadata", "the metadata")
    sdm = md.get("state_dict_metadata")
    if not isinstance(sdm, dict):
        raise _Bad("state_dict_metadata is not a dict")
    storage = md.get("storage_data")
    if not isinstance(storage, dict):
        raise _Bad("storage_data is not a dict (written by a storage writer ckptfix does not read)")
    items: dict[tuple[str, tuple[int, ...] | None], Item] = {}
    for k, v in dict.items(storage):
        idx = _fields(k, _MD + "MetadataIndex", "a storage_data key")
        fqn = _str(idx.get("fqn"), "a storage_data key's fqn")
        where = f"storage_data[{pickles.printable(repr(fqn))}]"
        off = idx.get("offset")
        key = (fqn, None if off is None else _size(off, f"{where}.offset"))
        if key in items:
            raise _Bad(f"{where} is listed twice for the same offsets")
        items[key] = _item(v, where)
    tensors: dict[str, TensorEntry] = {}
    non_tensor: dict[str, Item | None] = {}
    for fqn, entry in dict.items(sdm):
        if not isinstance(fqn, str):
            raise _Bad(f"a state_dict_metadata key is a {_name(fqn)}, expected a string")
        where = f"entry {pickles.printable(repr(fqn))}"
        if isinstance(entry, pickles.Inert) and type(entry).global_name == _MD + "BytesStorageMetadata":
            non_tensor[fqn] = items.get((fqn, None))
            continue
        st = _fields(entry, _MD + "TensorStorageMetadata", where)
        dtype, layout = _properties(st.get("properties"), f"{where}.properties")
        shape = _size(st.get("size"), f"{where}.size")
        chunks = st.get("chunks")
        if not isinstance(chunks, (list, tuple)):
            raise _Bad(f"{where}.chunks is not a list")
        parsed = []
        for i, c in enumerate(chunks):
            cf = _fields(c, _MD + "ChunkStorageMetadata", f"{where}.chunks[{i}]")
            offsets = _size(cf.get("offsets"), f"{where}.chunks[{i}].offsets")
            sizes = _size(cf.get("sizes"), f"{where}.chunks[{i}].sizes")
            item = items.get((fqn, offsets))
            if item is None:
                raise _Bad(f"{where}: no storage_data entry for its chunk at offsets {list(offsets)} "
                           "(the chunk's bytes are nowhere)")
            parsed.append(Chunk(offsets, sizes, item))
        tensors[fqn] = TensorEntry(fqn, shape, dtype, layout, tuple(parsed))
    planner = md.get("planner_data")
    paths = {}
    if isinstance(planner, dict):  # DefaultSavePlanner's; another planner's is not ours to read
        paths = {k: tuple(v) for k, v in dict.items(planner) if isinstance(k, str) and isinstance(v, (tuple, list))
                 and v and all(isinstance(p, (str, int)) and type(p) is not bool for p in v)}
    version = md.get("version")
    return DcpMetadata(tensors, non_tensor, paths, version if isinstance(version, str) else None)


def _is_grid(shape: tuple[int, ...], boxes: list[Chunk]) -> bool:
    """Whether the (non-empty, in-bounds) ``boxes`` form a grid over ``shape``: in each dimension
    their intervals partition it, and each combination of intervals is exactly one box. What
    FSDP (dim 0), tensor parallelism (dim 0 or 1) and both together write; proven in linear time."""
    cells = 1
    for k, n in enumerate(shape):
        pos, count = 0, 0
        for o, s in sorted({(c.offsets[k], c.sizes[k]) for c in boxes}):
            if o != pos:
                return False
            pos, count = o + s, count + 1
        if pos != n:
            return False
        cells *= count
    return len({c.offsets for c in boxes}) == len(boxes) == cells


def _tiling_problem(shape: tuple[int, ...], chunks: tuple[Chunk, ...], budget: list[int] | None = None) -> str | None:
    """Why ``chunks`` do not tile a tensor of ``shape`` exactly, or None. Every chunk inside the
    tensor, no two overlapping, and their elements adding up to the tensor's: together, exact.
    A grid (``_is_grid``) is exact at once; any other layout is swept along the dimension split
    most often, each chunk compared with those overlapping it there, at most ``budget[0]``
    comparisons in all (shared by every tensor of a checkpoint; ``MAX_OVERLAP_TESTS``)."""
    rank, total = len(shape), 0
    for c in chunks:
        if len(c.offsets) != rank or len(c.sizes) != rank:
            return f"a chunk at offsets {list(c.offsets)} has rank {len(c.sizes)}, the tensor {rank}"
        if any(o + s > n for o, s, n in zip(c.offsets, c.sizes, shape)):
            return f"the chunk at offsets {list(c.offsets)} of size {list(c.sizes)} lies outside its shape"
        total += c.numel
    boxes = [c for c in chunks if c.numel]
    if rank and len(boxes) > 1 and not _is_grid(shape, boxes):
        budget = budget if budget is not None else [MAX_OVERLAP_TESTS]
        dim = max(range(rank), key=lambda d: len({c.offsets[d] for c in boxes}))
        boxes.sort(key=lambda c: c.offsets[dim])
        active: list[Chunk] = []
        for b in boxes:
            start = b.offsets[dim]
            active = [a for a in active if a.offsets[dim] + a.sizes[dim] > start]
            budget[0] -= len(active) + 1
            if budget[0] < 0:
                return (f"its {len(chunks):,} chunks are laid out too irregularly to check for overlaps "
                        f"(over {MAX_OVERLAP_TESTS:,} comparisons)")
            for a in active:
                if all(a.offsets[k] < b.offsets[k] + b.sizes[k] and b.offsets[k] < a.offsets[k] + a.sizes[k]
                       for k in range(rank)):
                    return f"the chunks at offsets {list(a.offsets)} and {list(b.offsets)} overlap"
            active.append(b)
    numel = math.prod(shape)
    if total != numel:
        return (f"its {len(chunks)} chunk(s) cover {total:,} of its {numel:,} elements"
                + (" (a gap)" if total < numel else ""))
    return None


# ---------------------------------------------------------------------------------------------
# one item of a .distcp file, read as a file


class _ItemSource:
    """One item, as ``zipmember`` reads a file (``file()``, ``size``); named in messages by its
    file and what it holds."""

    def __init__(self, handle, item: Item, what: str) -> None:
        self.handle, self.item, self.size = handle, item, item.length
        self.label = f"{handle.path} ({what}, {item.length:,} bytes at offset {item.offset:,})"

    def __str__(self) -> str:
        return self.label

    def file(self) -> RangeFile:
        return RangeFile(self.handle.fd, self.item.offset, self.item.length)


@dataclass(frozen=True)
class _Storage:
    key: str
    dtype: str | None  # a typed storage's element dtype; None for an UntypedStorage (bytes)
    numel: int         # elements (typed) or bytes (untyped)


_ZIP_ERRORS = (*zipmember.ERRORS, OSError, ValueError, KeyError, IndexError)


def _itemsize(dtype: str) -> int:
    return dtypes.get(dtype).itemsize


def read_item(src: _ItemSource, dtype: str, sizes: tuple[int, ...]):
    """The tensor one item holds (a ``torch.save`` archive), checked to be a ``dtype`` tensor of
    ``sizes``: parsed in place, its pickle read inertly, its storage record CRC-checked."""
    with src.file() as f:
        head = f.read(4)
        if head != ZIP_MAGIC:
            raise InputError(src, "is not a torch.save archive (DCP's safetensors serialization, or not "
                             "written by FileSystemWriter): not supported" if head else "is empty")
        f.seek(0)
        try:
            with zipfile.ZipFile(f) as zf:
                return _read_archive(src, zf, dtype, sizes)
        except _ZIP_ERRORS as e:
            raise InputError(src, f"corrupt torch.save archive ({type(e).__name__}: "
                             f"{pickles.printable(str(e))[:120]})") from None


def _read_archive(src: _ItemSource, zf: zipfile.ZipFile, dtype: str, sizes: tuple[int, ...]):
    import torch

    infos = zf.infolist()
    dups = sorted(n for n, k in Counter(i.filename for i in infos).items() if k > 1)
    if dups:
        raise InputError(src, f"archive has duplicate entries ({pickles.printable(dups[0])}): corrupt or hostile")
    check_zip_members(src, infos)  # compressed members bounded before anything is decompressed
    names = {i.filename: i for i in infos}
    pkls = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise InputError(src, f"archive holds {len(pkls)} data.pkl records, a torch.save archive one")
    prefix = pkls[0][: -len("data.pkl")]
    if prefix + "byteorder" in names:
        order = zipmember.read_member(src, zf, prefix + "byteorder", MAX_SMALL_RECORD).strip()
        if order != b"little":
            raise InputError(src, f"byte order {pickles.printable(repr(order[:20]))} is not supported")
    storages: list[_Storage] = []

    def persistent_load(pid):
        ok = isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[2], str) \
            and isinstance(pid[1], type) and issubclass(pid[1], pickles.Inert) and type(pid[4]) is int and pid[4] >= 0
        name = pid[1].global_name if ok else ""
        if not ok or not (name == UNTYPED or name.removeprefix("torch.") in STORAGE_DTYPES):
            raise InputError(src, f"{pkls[0]}: a persistent id that is not a storage of torch.save")
        if name != UNTYPED and STORAGE_DTYPES[name.removeprefix("torch.")] is None:
            raise InputError(src, f"{pkls[0]}: a {name} storage, which ckptfix does not read")
        storages.append(_Storage(pid[2], None if name == UNTYPED else STORAGE_DTYPES[name.removeprefix("torch.")],
                                 pid[4]))
        return storages[-1]

    data = zipmember.read_member(src, zf, pkls[0], MAX_SMALL_RECORD)
    obj = pickles.load_inert(data, _item_global, src, pkls[0], persistent_load=persistent_load)
    st, got_dtype, offset, size, stride = _rebuild_args(obj, src, pkls[0])
    if got_dtype != dtype or size != sizes:
        raise InputError(src, f"holds a {got_dtype} tensor of shape {list(size)}, the metadata says "
                         f"{dtype} {list(sizes)}")
    item = _itemsize(dtype)
    nbytes = st.numel * (1 if st.dtype is None else item)
    record = prefix + "data/" + st.key
    info = names.get(record)
    if info is None:
        raise InputError(src, f"storage record {pickles.printable(record)} is missing (truncated or corrupt)")
    if info.compress_type != zipfile.ZIP_STORED:
        raise InputError(src, f"storage record {pickles.printable(record)} is compressed (torch would read it "
                         "as raw bytes: wrong values)")
    if info.file_size != nbytes or nbytes % item or nbytes > src.size:
        raise InputError(src, f"storage record {pickles.printable(record)} holds {info.file_size:,} bytes, "
                         f"expected {nbytes:,} (truncated or corrupt)")
    numel = math.prod(size)
    span = 1 + sum((n - 1) * s for n, s in zip(size, stride)) if numel else 0
    if numel and offset + span > nbytes // item:
        raise InputError(src, f"its tensor spans {offset + span:,} elements of a storage of {nbytes // item:,}")
    buf = bytearray(nbytes)
    done = 0
    for piece in zipmember.iter_member(src, zf, info):  # the CRC is checked at the end
        buf[done:done + len(piece)] = piece
        done += len(piece)
    tdtype = dtypes.torch_dtype(dtype)
    if not numel:
        return torch.empty(size, dtype=tdtype)
    flat = torch.frombuffer(buf, dtype=tdtype)
    return flat.as_strided(size, stride, offset)


def _rebuild_args(obj, src, what: str):
    """(storage, dtype, storage offset, size, stride) of ``_rebuild_tensor_v2(storage, offset,
    size, stride, requires_grad, hooks[, metadata])`` / ``_v3(..., hooks, dtype[, metadata])``."""
    name = type(obj).global_name if isinstance(obj, pickles.Inert) else ""
    args = obj.args if name in _REBUILD and obj._inert["how"] == "call" else None
    v3 = name.endswith("v3")
    least = 7 if v3 else 6  # the hooks (and v3's dtype) included; a metadata dict may follow
    if args is None or not least <= len(args) <= least + 1 or not isinstance(args[0], _Storage):
        raise InputError(src, f"{what} does not hold one tensor as torch.save writes it (found a {_name(obj)})")
    try:
        offset = _int(args[1], "its storage offset")
        size, stride = _size(args[2], "its size"), _size(args[3], "its stride")
        dtype = _dtype(args[6], "its dtype") if v3 else args[0].dtype
    except _Bad as e:
        raise InputError(src, f"{what}: {e}") from None
    if len(size) != len(stride):
        raise InputError(src, f"{what}: size {list(size)} and stride {list(stride)} differ in rank")
    if (args[0].dtype is None) != v3 or dtype not in dtypes.BY_NAME:
        raise InputError(src, f"{what}: a {dtype or 'typeless'} tensor, which ckptfix does not read")
    return args[0], dtype, offset, size, stride


# ---------------------------------------------------------------------------------------------
# the reader


class DcpReader(Reader):
    format = "dcp"

    def __init__(self, path: str | Path, fileset: FileSet | None = None) -> None:
        p = Path(path)
        super().__init__(p, fileset)
        self.dir = p.parent if p.name == METADATA and not p.is_dir() else p
        self.metadata_path = self.dir / METADATA
        h = self.fileset.open(self.metadata_path)
        if h.size > MAX_PICKLE_MEMBER:
            raise InputError(self.metadata_path, f"is {fmt_bytes(h.size)}, over the {fmt_bytes(MAX_PICKLE_MEMBER)} "
                             "ckptfix reads a pickle into memory for")
        try:
            data = h.read_all()
        except OSError as e:
            raise InputError(self.metadata_path, f"cannot read: {e.strerror or e}") from None
        if not data:
            raise InputError(self.metadata_path, "is empty (0 bytes)")
        obj = pickles.load_inert(data, _metadata_global, self.metadata_path, "the DCP metadata")
        try:
            self.md = parse_metadata(obj)
        except _Bad as e:
            raise InputError(self.metadata_path, f"not DCP metadata ckptfix reads: {e}") from None
        self._split()
        self._check_entries()
        self._open_files()
        self._pickled = self._pickled_tensors()

    def _pickled_tensors(self) -> list[str]:
        """The non-tensor entries whose ``torch.save`` archive holds storages: tensors pickled inside
        an object (a nested state dict saved with ``flatten_state_dict=False``, a list in a custom
        container), which ckptfix does not unpickle. Only the zip's directory is read; an entry
        that cannot be told is not listed (its bytes are never used)."""
        out = []
        for fqn, it in self.md.non_tensor.items():
            if it is None or it.transforms:
                continue
            try:
                h = self._handles.get(it.file) or self.fileset.open(self.dir / it.file)
                if it.offset + it.length > h.size:
                    continue
                with zipfile.ZipFile(_ItemSource(h, it, "a non-tensor entry").file()) as zf:
                    if any(re.search(r"(^|/)data/[^/]+$", n) for n in zf.namelist()):
                        out.append(fqn)
            except (InputError, *_ZIP_ERRORS):
                continue
        return out

    # -- what is a model weight

    def _top_key(self, fqn: str) -> str:
        path = self.md.key_paths.get(fqn)
        return str(path[0]) if path else fqn.split(".", 1)[0]

    def _split(self) -> None:
        """Tensors -> model weights (``self.entries``) and optimizer state (``self.optimizer``)."""
        names = (*self.md.tensors, *self.md.non_tensor)
        tops = {self._top_key(f) for f in names}
        with_groups = {t for f in names if f.startswith((t := self._top_key(f)) + ".param_groups.")}

        def optimizer(top: str) -> bool:  # as .pt containers are treated, or what holds param_groups
            return bool(OPTIMIZER_KEY.search(top)) or top in with_groups or (top == "state" and "param_groups" in tops)

        self.entries: dict[str, TensorEntry] = {}
        self.optimizer: list[str] = []
        for fqn, e in self.md.tensors.items():
            if optimizer(self._top_key(fqn)):
                self.optimizer.append(fqn)
            else:
                self.entries[fqn] = e

    def _check_entries(self) -> None:
        md = self.metadata_path
        budget = [MAX_OVERLAP_TESTS]  # for chunk layouts that are not grids (see _tiling_problem)
        for fqn, e in self.entries.items():
            what = f"tensor {pickles.printable(repr(fqn))}"
            if e.layout != "strided":
                raise InputError(md, f"{what} is {e.layout}; ckptfix handles dense (strided) tensors only")
            if e.dtype not in dtypes.BY_NAME:
                raise InputError(md, f"{what} has dtype {pickles.printable(e.dtype)}, which ckptfix does not handle")
            problem = _tiling_problem(e.shape, e.chunks, budget)
            if problem:
                raise InputError(md, f"{what} of shape {list(e.shape)}: {problem}; its chunks must tile it exactly")
            for c in e.chunks:
                if c.item.transforms:
                    raise InputError(md, f"{what}: its chunks are stored through "
                                     f"{pickles.printable(', '.join(c.item.transforms))} (DCP's stream extensions): "
                                     "not supported")
                need = c.numel * _itemsize(e.dtype)
                if need > c.item.length:
                    raise InputError(md, f"{what}: its chunk at offsets {list(c.offsets)} needs {need:,} bytes, "
                                     f"its item in {pickles.printable(c.item.file)} has {c.item.length:,}")

    def _open_files(self) -> None:
        """Open every file a weight's chunks are in (through the fileset: inside the directory,
        once), and check every item of those files against their size and each other."""
        self._handles = {}
        holders: dict[str, str] = {}
        for fqn, e in self.entries.items():
            for c in e.chunks:
                holders.setdefault(c.item.file, fqn)
        for rel, fqn in holders.items():
            p = self.dir / rel
            self.fileset.check_inside(p)
            if not p.exists() and not p.is_symlink():
                raise InputError(p, f"no such file: the DCP data file holding tensor {pickles.printable(repr(fqn))} "
                                 "is missing")
            self._handles[rel] = self.fileset.open(p)
        per_file: dict[str, list[tuple[int, int, str]]] = {}
        listed = [(f, c.item) for f, e in self.md.tensors.items() for c in e.chunks]
        listed += [(f, it) for f, it in self.md.non_tensor.items() if it is not None]
        for fqn, it in listed:
            if it.file in self._handles:
                per_file.setdefault(it.file, []).append((it.offset, it.length, fqn))
        for rel, spans in per_file.items():
            h = self._handles[rel]
            spans.sort()
            end, prev = 0, None
            for begin, length, fqn in spans:
                if begin + length > h.size:
                    raise InputError(h.path, f"the item of {pickles.printable(repr(fqn))} at [{begin:,}, "
                                     f"{begin + length:,}) runs past the end of the file ({h.size:,} bytes): truncated")
                if begin < end:
                    raise InputError(h.path, f"the items of {pickles.printable(repr(prev))} and "
                                     f"{pickles.printable(repr(fqn))} overlap at byte {begin:,}: corrupt metadata")
                end, prev = max(end, begin + length), fqn
        self._chunks = sum(len(e.chunks) for e in self.entries.values())

    # -- the interface

    def metas(self) -> dict[str, TensorMeta]:
        return {n: TensorMeta(e.shape, e.dtype) for n, e in self.entries.items()}

    def read(self, name: str):
        import torch

        e = self.entries[name]
        chunks = [c for c in e.chunks if c.numel]  # an empty chunk holds nothing to copy
        if len(chunks) == 1 and chunks[0].sizes == e.shape:  # the whole tensor: no second copy
            return self._chunk(name, chunks[0], e.dtype).contiguous()
        out = torch.empty(e.shape, dtype=dtypes.torch_dtype(e.dtype))
        for c in chunks:
            out[tuple(slice(o, o + s) for o, s in zip(c.offsets, c.sizes))].copy_(self._chunk(name, c, e.dtype))
        return out

    def _chunk(self, name: str, c: Chunk, dtype: str):
        what = f"chunk of {pickles.printable(repr(name))} at offsets {list(c.offsets)}"
        return read_item(_ItemSource(self._handles[c.item.file], c.item, what), dtype, c.sizes)

    def prefixes(self) -> dict[str, int]:
        """The state-dict key each weight was saved under, as a name prefix (``{"model.": 9}``):
        from the planner's key paths (a flat state dict has none)."""
        out: Counter = Counter()
        for fqn in self.entries:
            path = self.md.key_paths.get(fqn)
            if path and len(path) > 1 and fqn.startswith(f"{path[0]}."):
                out[f"{path[0]}."] += 1
        return dict(out)

    def extras(self) -> dict[str, Any]:
        keys = list(dict.fromkeys(self._top_key(f) for f in (*self.md.tensors, *self.md.non_tensor)))
        return {"dcp_version": self.md.version, "state_dict_keys": keys, "prefixes": self.prefixes(),
                "files": sorted(self._handles), "chunks": self._chunks,
                "optimizer_state": list(self.optimizer), "non_tensor": list(self.md.non_tensor),
                "not_weights": {**{k: "optimizer" for k in self.optimizer},
                                **{k: "non-tensor" for k in self.md.non_tensor}}}

    def warnings(self) -> list[str]:
        out = []
        if self._pickled:
            shown = ", ".join(pickles.printable(repr(f)) for f in self._pickled[:4])
            one = len(self._pickled) == 1
            out.append(f"{len(self._pickled)} non-tensor entr{'y' if one else 'ies'} ({shown}"
                       f"{', ...' if len(self._pickled) > 4 else ''}) hold{'s' if one else ''} tensors inside a pickled object (saved with "
                       "flatten_state_dict=False, or in a container DCP does not flatten): ckptfix does not "
                       "unpickle them, so they are not read; save the state dict flattened, or as plain tensors")
        for p, n in self.prefixes().items():
            every = "all" if n == len(self.entries) else f"{n} of"
            out.append(f"{every} {len(self.entries)} tensor names keep the state-dict key they were saved under, "
                       f"{pickles.printable(repr(p))} (strip it with a rule, `- strip_prefix: {pickles.printable(p)}`, "
                       "to load them into the model)")
        return out
