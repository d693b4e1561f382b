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

# The plain permutations above (not the depthwise reshape): what explain/diagnose look for.
TF_LAYOUTS = tuple(dict.fromkeys(lay for _, lay in KERAS_TO_TORCH.values() if lay != DEPTHWISE))


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


def inverse(perm: tuple[int, ...]) -> tuple[int, ...]:
    out = [0] * len(perm)
    for i, p in enumerate(perm):
        out[p] = i
    return tuple(out)
