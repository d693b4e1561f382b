"""Tensor metadata: what planning works on instead of data."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from . import dtypes


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.get(self.dtype).itemsize

    @property
    def rank(self) -> int:
        return len(self.shape)

    def with_shape(self, shape) -> "TensorMeta":
        return replace(self, shape=tuple(int(s) for s in shape))

    def with_dtype(self, dtype: str) -> "TensorMeta":
        return replace(self, dtype=dtype)


def fmt_shape(shape) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"
