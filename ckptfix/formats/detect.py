"""Format detection from magic bytes (never the extension) and dispatch to a reader."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

from ..errors import InputError

ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
# torch's legacy (non-zip) format starts with a pickled magic number
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
SHARD_INDEX = "model.safetensors.index.json"


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
    return InputError(path, "is not a checkpoint format ckptfix knows "
                      "(safetensors, PyTorch zip/pickle, Keras .h5/.keras, TF checkpoint, .npz/.npy)")


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
        raise InputError(p, "no such file or directory") from None
    except OSError as e:
        raise InputError(p, f"cannot access: {e.strerror}") from None

    if stat.S_ISDIR(st.st_mode):
        if (p / SHARD_INDEX).is_file():
            return "safetensors-sharded"
        if (p / "checkpoint").is_file() or any(p.glob("*.index")):
            return "tf-checkpoint"
        if any(p.glob("*.weights.json")):
            return "keras-sharded"
        raise InputError(p, "is a directory with no model.safetensors.index.json, "
                         "TF checkpoint or Keras sharded weights in it")
    if p.name.endswith(".index.json") or p.name.endswith(".weights.json"):
        return "keras-sharded" if p.name.endswith(".weights.json") else "safetensors-sharded"
    if not p.exists() and Path(str(p) + ".index").is_file():
        return "tf-checkpoint"  # a TF prefix
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
    if p.name.endswith(".index") and Path(str(p)[: -len(".index")] + ".data-00000-of-00001").exists():
        return "tf-checkpoint"
    if p.name.endswith(".index") and any(p.parent.glob(p.name[: -len(".index")] + ".data-*")):
        return "tf-checkpoint"
    raise _not_a_checkpoint(p, head)


def _classify_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise InputError(p, f"truncated or corrupt zip archive ({e})") from None
    if any(n.endswith("data.pkl") for n in names):
        return "pt"
    if "config.json" in names and any(n.endswith(".weights.h5") or n == "model.weights.h5" for n in names):
        return "keras-archive"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    if not names:
        raise InputError(p, "is an empty zip archive")
    raise InputError(p, "is a zip archive but not a PyTorch checkpoint, .keras archive or .npz "
                     f"(entries: {', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")


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
}


def open_checkpoint(path: str | Path, *, state_key: str | None = None,
                    allow_globals: tuple[str, ...] = ()):
    """Open any supported checkpoint and return its Reader."""
    import importlib

    fmt = classify(path)
    module, cls = READERS[fmt]
    reader = getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    if fmt in ("pt", "pt-legacy"):
        return reader(path, state_key=state_key, allow_globals=allow_globals, legacy=fmt == "pt-legacy")
    return reader(path)
