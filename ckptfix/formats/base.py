"""The reader interface every checkpoint format implements.

A reader lists tensor metadata without reading data (``metas``) and reads one tensor on demand
(``read``). Planning only ever calls ``metas``; the executor calls ``read`` once per tensor.

A reader opens the files it consists of through ``self.fileset`` (``fileset.FileSet``): each
once, inside the checkpoint's directory, checked for changes before an output is published.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ..tensors import TensorMeta
from .fileset import FileSet


class Reader(ABC):
    #: short format name shown by ``inspect`` ("safetensors", "pt", "keras-h5", ...)
    format: str = "?"

    def __init__(self, path: str | Path, fileset: FileSet | None = None) -> None:
        self.path = Path(path)
        #: the files this checkpoint consists of (shared with the readers of its parts)
        self.fileset = fileset if fileset is not None else FileSet(path)

    def files(self) -> list[Path]:
        """The (resolved) files this checkpoint consists of."""
        return self.fileset.files()

    @abstractmethod
    def metas(self) -> dict[str, TensorMeta]:
        """Name -> metadata, in the file's order. Must not read tensor data."""

    @abstractmethod
    def read(self, name: str):
        """Return one tensor as a ``torch.Tensor`` (CPU, contiguous)."""

    def locate(self, name: str) -> tuple[Path, int, int] | None:
        """``(file, begin, end)`` holding the tensor's bytes as stored (C order, little-endian),
        for readers whose files keep them that way; the executor then copies without reading."""
        return None

    def crc_of(self, begin: int, end: int) -> tuple[int, str] | None:
        """``(crc32, error message)`` a copy of this byte range must be checked against, if any."""
        return None

    def layer_classes(self) -> dict[str, str]:
        """Layer name -> class name where the file records it (Keras configs); else empty."""
        return {}

    def layer_configs(self) -> dict[str, dict]:
        """Layer name -> its config (Keras), where the file records it; else empty."""
        return {}

    def extras(self) -> dict[str, Any]:
        """Format-specific information for ``inspect`` (container keys, metadata ...)."""
        return {}

    def warnings(self) -> list[str]:
        """Things the user should know about this file (e.g. TF 'same' padding with stride 2)."""
        return []

    def close(self) -> None:
        self.fileset.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NumpyReader(Reader):
    """Base for readers whose natural result is a numpy array (HDF5, TF bundles, npz)."""

    @abstractmethod
    def read_array(self, name: str):
        """Return one tensor as a numpy array."""

    def read(self, name: str):
        import numpy as np
        import torch

        # not np.ascontiguousarray alone: it turns 0-d arrays (scalars) into shape (1,)
        arr = np.asarray(self.read_array(name))
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        if arr.dtype.kind == "V" and arr.dtype.itemsize == 2:  # bfloat16 stored raw
            return torch.from_numpy(arr.view(np.uint16).copy()).view(torch.bfloat16)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr)
