"""Format detection from magic bytes (never the extension) and dispatch to a reader."""

from __future__ import annotations

import os
import re
import stat
import zipfile
from collections import Counter
from pathlib import Path

from ..errors import InputError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
# torch's legacy (non-zip) format starts with a pickled magic number
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
SHARD_INDEX = "model.safetensors.index.json"  # huggingface_hub's sharded-safetensors index
PT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")  # file names PyTorch checkpoints go by
TF_TABLE_MAGIC = bytes.fromhex("57fb808b247547db")  # the last 8 bytes of a TF checkpoint's .index
SAVED_MODEL = "saved_model.pb"  # a TF SavedModel directory: this + variables/variables.index
DCP_METADATA = ".metadata"      # a torch.distributed.checkpoint directory: this + *.distcp
# files only an Orbax checkpoint directory holds (orbax-checkpoint 0.12: StandardCheckpointer,
# PyTreeCheckpointer, CheckpointManager's <step>/ and <step>/<item>/ directories)
ORBAX_MARKERS = ("_CHECKPOINT_METADATA", "_METADATA", "manifest.ocdbt", "_sharding")
KNOWN = ("safetensors, PyTorch zip/pickle, TorchScript, Keras .h5/.keras, TF checkpoint or SavedModel, "
         "ONNX, Flax msgpack, torch.distributed.checkpoint, .npz/.npy")


def directory_checkpoint(p: Path) -> bool:
    """Whether directory ``p`` is one checkpoint made of several files (an HF sharded index, a
    SavedModel, a torch.distributed.checkpoint, an Orbax checkpoint: refused as one input), as
    opposed to a directory of checkpoints."""
    return ((p / SHARD_INDEX).is_file() or (p / SAVED_MODEL).is_file()
            or (p / "variables" / "variables.index").is_file() or (p / DCP_METADATA).is_file()
            or _is_orbax(p))


def _is_orbax(p: Path) -> bool:
    return any((p / m).is_file() for m in ORBAX_MARKERS) or (p / "ocdbt.process_0").is_dir()


def _orbax_steps(p: Path, limit: int = 1000) -> list[str]:
    """The step directories of an Orbax CheckpointManager directory (``0/``, ``100/``, ...)."""
    steps = []
    try:
        with os.scandir(p) as it:
            for i, e in enumerate(it):
                if i >= limit:
                    break
                if e.is_dir() and _is_orbax(Path(e.path)):
                    steps.append(e.name)
    except OSError:
        return []
    return sorted(steps, key=lambda n: (len(n), n))


ORBAX_HINT = ("restore it with orbax and write the state with flax.serialization.to_bytes(state) to a .msgpack "
              "file, which ckptfix reads")


def _orbax_error(p: Path, steps: list[str] | None = None) -> InputError:
    what = (f"an Orbax CheckpointManager directory (steps {', '.join(steps[:4])}{', ...' if len(steps) > 4 else ''})"
            if steps else "an Orbax checkpoint directory")
    return InputError(p, f"is {what}: ckptfix does not read Orbax's tensorstore (OCDBT/zarr) "
                      "arrays", hint=ORBAX_HINT)


def _tail(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(-n, os.SEEK_END)
            return f.read(n)
    except OSError:
        return b""


def _head(path: Path, n: int = 512) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _not_a_checkpoint(path: Path, head: bytes) -> InputError:
    text = head.lstrip().lower()
    if head.startswith(b"version https://git-lfs"):
        return InputError(path, "is a git-LFS pointer, not the checkpoint",
                          hint="run `git lfs pull` to fetch the real file")
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return InputError(path, "is an HTML/XML page, not a checkpoint",
                          hint="a download that returned a web page?")
    if head[:6] == b"7z\xbc\xaf\x27\x1c" or head[:3] == b"\x1f\x8b\x08" or head[:3] == b"BZh":
        return InputError(path, "is a compressed archive (7z/gzip/bzip2), not a checkpoint",
                          hint="extract it first")
    return InputError(path, f"is not a checkpoint format ckptfix knows ({KNOWN})")


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    # 8-byte little-endian header length, then a JSON object. A length past EOF still counts:
    # the reader then reports the truncation precisely.
    return int.from_bytes(head[:8], "little") > 0 and head[8:9] == b"{"


def classify(path: str | Path) -> str:
    """Name the format of ``path`` from its bytes. Raises InputError if it is none we read."""
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if Path(str(p) + ".index").is_file():
            return "tf-checkpoint"  # a TF prefix (``model.ckpt`` for model.ckpt.index + .data-*)
        raise InputError(p, "no such file or directory") from None
    except OSError as e:
        raise InputError(p, f"cannot access: {e.strerror}") from None

    if stat.S_ISDIR(st.st_mode):
        if _is_orbax(p):  # before the TF check: an old Orbax directory holds a `checkpoint` file too
            raise _orbax_error(p)
        if (p / SHARD_INDEX).is_file():
            return "safetensors-sharded"
        if (p / "checkpoint").is_file() or any(p.glob("*.index")):
            return "tf-checkpoint"
        if (p / SAVED_MODEL).is_file() or (p / "variables" / "variables.index").is_file():
            return "tf-checkpoint"  # a SavedModel root: its variables/ bundle (tf_bundle.resolve_prefix)
        if (p / DCP_METADATA).is_file():
            return "dcp"
        if any(p.glob("*.weights.json")):
            return "keras-sharded"
        steps = _orbax_steps(p)
        if steps:
            raise _orbax_error(p, steps)
        raise InputError(p, "is a directory with no model.safetensors.index.json, TF checkpoint or "
                         "SavedModel, torch.distributed.checkpoint .metadata or Keras sharded weights in it")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read below forever
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "special")
        raise InputError(p, f"is not a regular file ({kind})")
    if p.name.endswith(".index.json") or p.name.endswith(".weights.json"):
        return "keras-sharded" if p.name.endswith(".weights.json") else "safetensors-sharded"
    if p.name == DCP_METADATA:
        return "dcp"  # a DCP directory named by its metadata file (a pickle: not pt-legacy)
    if p.name in ORBAX_MARKERS and _is_orbax(p.parent):
        raise InputError(p, f"is part of an Orbax checkpoint ({p.parent}): ckptfix does not read Orbax",
                         hint=ORBAX_HINT)
    try:
        head = _head(p)
    except PermissionError:
        raise InputError(p, "permission denied") from None
    except OSError as e:
        raise InputError(p, f"cannot read: {e.strerror or e}") from None
    if not head:
        raise InputError(p, "is empty (0 bytes)")
    if len(head) < 9:  # shorter than any checkpoint (a safetensors length alone is 8 bytes)
        raise InputError(p, f"truncated or not a checkpoint: only {len(head)} bytes")
    if head.startswith(ZIP_MAGIC) or head.startswith(EMPTY_ZIP_MAGIC):
        return _classify_zip(p)
    if head.startswith(HDF5_MAGIC):
        return "keras-h5"
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(TORCH_LEGACY_MAGIC):
        return "pt-legacy"
    # before the bare pickle check: a safetensors header length of 128 mod 256 starts with 0x80 too
    if _looks_like_safetensors(head, st.st_size):
        return "safetensors"
    if head[:1] == b"\x80":
        return "pt-legacy"
    if _looks_like_msgpack_map(head):
        return "flax-msgpack"
    if _looks_like_onnx(head):
        return "onnx"
    if st.st_size >= 48 and _tail(p, 8) == TF_TABLE_MAGIC:  # a TF index, whatever its data shards' state
        return "tf-checkpoint"
    if p.name.endswith(".index") and Path(str(p)[: -len(".index")] + ".data-00000-of-00001").exists():
        return "tf-checkpoint"
    if p.name.endswith(".index") and any(p.parent.glob(p.name[: -len(".index")] + ".data-*")):
        return "tf-checkpoint"
    if _looks_like_old_pickle(head):
        return "pt-legacy"  # torch.load refuses it, and the error names its globals
    raise _not_a_checkpoint(p, head)


def _looks_like_msgpack_map(head: bytes) -> bool:
    """flax.serialization's msgpack: a non-empty map (fixmap 0x81-0x8f, map16, map32) whose first
    key is a string. (0x80, an empty fixmap, is a pickle's PROTO opcode: taken above.)"""
    b0 = head[0]
    if 0x81 <= b0 <= 0x8F:
        key = head[1]
    elif b0 == 0xDE and len(head) > 3:
        key = head[3]
    elif b0 == 0xDF and len(head) > 5:
        key = head[5]
    else:
        return False
    return 0xA0 <= key <= 0xBF or key in (0xD9, 0xDA, 0xDB)


def _looks_like_onnx(head: bytes) -> bool:
    """An ONNX ModelProto: protobuf with no magic. Its first fields are ModelProto's (1
    ir_version, 2-4 producer/domain strings, 5 model_version, 6 doc, 7 graph, 8 opset_import,
    14 metadata_props, 20 training_info, 25 functions, 26 configuration), in a wire type that fits
    each, and an ir_version field among the first three (torch, tf2onnx and onnx.helper write it
    first)."""
    from .protowire import Corrupt, read_varint

    wires = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
    pos, seen = 0, []
    try:
        while len(seen) < 3 and pos < len(head):
            tag, pos = read_varint(head, pos)
            field, wire = tag >> 3, tag & 7
            if wires.get(field) != wire:
                return False
            if wire == 0:
                value, pos = read_varint(head, pos)
                if field == 1 and not 1 <= value <= 64:
                    return False
            else:
                n, pos = read_varint(head, pos)
                if field == 7:  # the graph: its size is the rest of the file, not of the head
                    seen.append(field)
                    break
                pos += n
            seen.append(field)
    except Corrupt:
        return False
    return 1 in seen


_OLD_PICKLE_START = re.compile(rb"c[\w.]+\n[\w.]+\n|\([dltcVSILFN)}\]]|L\d+L?\n|I\d+\n|[}\]]")


def _looks_like_old_pickle(head: bytes) -> bool:
    """A protocol 0/1 pickle (these have no 0x80 PROTO opcode): a typical first opcode, then at
    least four opcodes that parse (or a complete pickle). Parsing only; nothing is run."""
    import io
    import pickletools

    if not _OLD_PICKLE_START.match(head):
        return False
    n = 0
    try:
        for op, _arg, _pos in pickletools.genops(io.BytesIO(head)):
            n += 1
            if n >= 4 or op.name == "STOP":
                return True
    except Exception:  # noqa: BLE001 - not a pickle
        return False
    return False


def _classify_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as e:
        # NotImplementedError: a (corrupt) "needs zip version 24.9" or unknown flags
        raise InputError(p, f"truncated or corrupt zip archive ({e})") from None
    dups = sorted(n for n, k in Counter(names).items() if k > 1)
    if dups:  # zip readers disagree on which copy counts (torch takes the first, zipfile the last)
        raise InputError(p, f"zip archive has duplicate entries ({', '.join(dups[:3])}): ambiguous, "
                         "corrupt or hostile file")
    if any(n.endswith("data.pkl") for n in names):
        # TorchScript (torch.jit.save) keeps its module's code and constants beside data.pkl
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return "torchscript"
        return "pt"
    if "config.json" in names and ("metadata.json" in names or any(
            n.endswith(".weights.h5") or n == "model.weights.h5" for n in names)):
        return "keras-archive"  # (the reader says so when the weights are missing)
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if not names:
        raise InputError(p, "is an empty zip archive")
    raise InputError(p, "is a zip archive but not a PyTorch checkpoint, .keras archive or .npz "
                     f"(entries: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")


# formats read by a C library (libhdf5) that can crash or hang on a crafted file: the single-file
# commands read them in a child process first (ckptfix.isolate)
C_LIBRARY_FORMATS = frozenset({"keras-h5", "keras-archive", "keras-sharded"})

# format -> (module in ckptfix.formats, reader class); imported only when that format is read
READERS = {
    "safetensors": ("safetensors_io", "SafetensorsReader"),
    "safetensors-sharded": ("safetensors_io", "ShardedSafetensorsReader"),
    "pt": ("torch_io", "TorchReader"),
    "pt-legacy": ("torch_io", "TorchReader"),
    "keras-h5": ("keras_h5", "KerasH5Reader"),
    "keras-archive": ("keras_h5", "KerasArchiveReader"),
    "keras-sharded": ("keras_h5", "KerasShardedReader"),
    "tf-checkpoint": ("tf_bundle", "TFCheckpointReader"),
    "npz": ("numpy_io", "NpzReader"),
    "npy": ("numpy_io", "NpyReader"),
    "torchscript": ("torchscript_io", "TorchScriptReader"),
    "onnx": ("onnx_io", "OnnxReader"),
    "flax-msgpack": ("flax_io", "FlaxReader"),
    "dcp": ("dcp_io", "DcpReader"),
}


def open_checkpoint(path: str | Path, *, state_key: str | None = None,
                    allow_globals: tuple[str, ...] = (), allow_outside: bool = False,
                    fileset=None, expect_format: str | None = None):
    """Open any supported checkpoint and return its Reader. Its files must resolve inside the
    checkpoint's directory unless ``allow_outside`` (see ``fileset``). ``fileset``: the FileSet to
    open them through (``isolate.TiedFileSet``); ``expect_format``: what ``path`` was classified
    as before (by an isolated check): another format now is an InputError."""
    import importlib

    from .fileset import FileSet

    fmt = classify(path)
    if expect_format is not None and fmt != expect_format:
        raise InputError(path, f"changed between the isolated check and the read (it was {expect_format}, "
                         f"now {fmt}): nothing was read from it; run again once it is complete")
    module, cls = READERS[fmt]
    reader = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    files = fileset if fileset is not None else FileSet(path, allow_outside=allow_outside)
    try:
        if fmt in ("pt", "pt-legacy"):
            r = reader(path, state_key=state_key, allow_globals=allow_globals, legacy=fmt == "pt-legacy",
                       fileset=files)
        else:
            r = reader(path, fileset=files)
    except RecursionError:  # any parser or walker of any format: the file's nesting, not a bug
        files.close()
        raise InputError(path, "is nested too deeply to read (a structure deeper than Python's "
                         "recursion limit): corrupt or hostile file") from None
    except BaseException:
        files.close()
        raise
    try:
        _check_names(path, r.metas())
    except BaseException:
        r.close()
        raise
    return r


def _check_names(path, metas) -> None:
    """Shapes must be ones an array can have (``limits.impossible_shape``), for every reader.
    Tensor names must be text: JSON escapes (safetensors), pickles and HDF5 attributes can
    all carry lone surrogates (``\\ud800``), which no output format can store or print."""
    from .. import dtypes
    from ..limits import impossible_shape

    for name, meta in metas.items():
        dt = dtypes.BY_NAME.get(meta.dtype)
        if impossible_shape(meta.shape, dt.itemsize if dt is not None else 1):
            shown = name if isinstance(name, str) else repr(name)
            raise InputError(path, f"tensor {shown.encode('utf-8', 'backslashreplace').decode()!r}: shape "
                             f"{list(meta.shape)} is too large for any array: corrupt or crafted file")
        if not isinstance(name, str):
            raise InputError(path, f"tensor name {name!r} is not a string ({type(name).__name__})")
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(path, f"tensor name {name.encode('utf-8', 'backslashreplace').decode()!r} "
                             "is not valid Unicode (a lone surrogate): corrupt or crafted file") from None
