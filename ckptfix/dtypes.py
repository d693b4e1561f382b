"""Tensor dtypes: one table mapping ckptfix's canonical names to every format's spelling.

Planning works on these names only, so it never needs torch. ``torch_dtype`` imports torch
lazily for the executor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str          # canonical: float32, bfloat16, int64, bool, ...
    itemsize: int
    safetensors: str   # F32, BF16, I64, BOOL, ...
    numpy: str | None  # numpy dtype string, None where numpy has none (bfloat16, float8)
    floating: bool


_TABLE = [
    DType("float64", 8, "F64", "<f8", True),
    DType("float32", 4, "F32", "<f4", True),
    DType("float16", 2, "F16", "<f2", True),
    DType("bfloat16", 2, "BF16", None, True),
    DType("float8_e4m3fn", 1, "F8_E4M3", None, True),
    DType("float8_e5m2", 1, "F8_E5M2", None, True),
    DType("int64", 8, "I64", "<i8", False),
    DType("int32", 4, "I32", "<i4", False),
    DType("int16", 2, "I16", "<i2", False),
    DType("int8", 1, "I8", "|i1", False),
    DType("uint64", 8, "U64", "<u8", False),
    DType("uint32", 4, "U32", "<u4", False),
    DType("uint16", 2, "U16", "<u2", False),
    DType("uint8", 1, "U8", "|u1", False),
    DType("bool", 1, "BOOL", "|b1", False),
    DType("complex64", 8, "C64", "<c8", False),
]

BY_NAME = {d.name: d for d in _TABLE}
BY_SAFETENSORS = {d.safetensors: d for d in _TABLE}
# Cast targets a rules file may ask for.
CASTABLE = ("float32", "float16", "bfloat16")


def get(name: str) -> DType:
    return BY_NAME[name]


# the largest finite value of each floating dtype (complex64: of its float32 parts)
_FLOAT_MAX = {"float64": 1.7976931348623157e308, "float32": 3.4028234663852886e38, "float16": 65504.0,
              "bfloat16": 3.3895313892515355e38, "float8_e4m3fn": 448.0, "float8_e5m2": 57344.0,
              "complex64": 3.4028234663852886e38}


def fits(name: str, value: float) -> bool:
    """Whether a tensor of dtype ``name`` can hold ``value``: integer dtypes an integer in their
    range (bool: 0 or 1), floating ones nan, +-inf or a finite value up to their largest."""
    if name in _FLOAT_MAX:
        return value != value or abs(value) == float("inf") or abs(value) <= _FLOAT_MAX[name]
    if value != value or abs(value) == float("inf") or value != int(value):
        return False
    if name == "bool":
        return value in (0, 1)
    bits = get(name).itemsize * 8
    lo, hi = (0, 2**bits - 1) if name.startswith("uint") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    return lo <= int(value) <= hi


def from_numpy(np_dtype) -> str:
    """Canonical name of a numpy dtype (raises KeyError if ckptfix has no such dtype)."""
    import numpy as np

    d = np.dtype(np_dtype)
    if d.kind == "V" and d.itemsize == 2 and "bfloat16" in str(np_dtype):
        return "bfloat16"
    name = {"f": "float", "i": "int", "u": "uint", "c": "complex"}.get(d.kind)
    if d.kind == "b":
        return "bool"
    if name is None:
        raise KeyError(str(d))
    full = f"{name}{d.itemsize * 8}"
    if full not in BY_NAME:
        raise KeyError(str(d))
    return full


def from_torch(torch_dtype) -> str:
    name = str(torch_dtype).removeprefix("torch.")
    if name not in BY_NAME:
        raise KeyError(name)
    return name


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)
