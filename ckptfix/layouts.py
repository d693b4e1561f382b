"""Tensor layouts: TensorFlow/Keras <-> PyTorch, as permutations (and the one reshape).

A layout is written ``SRC->DST`` with one letter per axis (``HWIO->OIHW``): the permutation is
read off the letters, so every named pair below is just a documented example and any consistent
pair works. The table is the single source of truth for which layout each layer kind uses.
"""

from __future__ import annotations

# Keras/TF layer class -> (variable, layout that makes it PyTorch's)
KERAS_TO_TORCH = {
    "Dense": ("kernel", "IO->OI"),
    "Conv1D": ("kernel", "WIO->OIW"),
    "Conv2D": ("kernel", "HWIO->OIHW"),
    "Conv3D": ("kernel", "DHWIO->OIDHW"),
    "Conv2DTranspose": ("kernel", "HWOI->IOHW"),
    "Conv1DTranspose": ("kernel", "WOI->IOW"),
    "Conv3DTranspose": ("kernel", "DHWOI->IODHW"),
    "DepthwiseConv2D": ("kernel", DEPTHWISE := "HWCM->OIHW"),
}

NAMED = {
    "HWIO->OIHW": "Conv2D kernel (kh, kw, in, out) -> Conv2d weight (out, in, kh, kw)",
    "OIHW->HWIO": "the reverse",
    "IO->OI": "Dense kernel (in, out) -> Linear weight (out, in)",
    "OI->IO": "the reverse",
    "WIO->OIW": "Conv1D kernel (k, in, out) -> Conv1d weight (out, in, k)",
    "OIW->WIO": "the reverse",
    "DHWIO->OIDHW": "Conv3D kernel (kd, kh, kw, in, out) -> Conv3d weight (out, in, kd, kh, kw)",
    "OIDHW->DHWIO": "the reverse",
    "HWOI->IOHW": "Conv2DTranspose kernel (kh, kw, out, in) -> ConvTranspose2d weight (in, out, kh, kw)",
    DEPTHWISE: "DepthwiseConv2D kernel (kh, kw, C, M) -> groups=C Conv2d weight (C*M, 1, kh, kw); "
               "output channel c*M + j",
}


def parse(layout: str) -> tuple[int, ...]:
    """``'HWIO->OIHW' -> (3, 2, 0, 1)``. Raises ValueError for an inconsistent pair."""
    if layout == DEPTHWISE:
        return (2, 3, 0, 1)
    try:
        src, dst = (s.strip() for s in layout.split("->"))
    except ValueError:
        raise ValueError(f"layout {layout!r} must look like SRC->DST, e.g. HWIO->OIHW") from None
    if not src.isalpha() or sorted(src) != sorted(dst) or len(set(src)) != len(src):
        raise ValueError(f"layout {layout!r}: both sides must use the same distinct axis letters")
    return tuple(src.index(c) for c in dst)


def rank(layout: str) -> int:
    return len(parse(layout))


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)
