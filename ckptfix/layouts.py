"""Tensor layouts as permutations: ``SRC->DST`` with one letter per axis (``HWIO->OIHW``).

The permutation is read off the letters, so any consistent pair works. Which layout each layer
kind uses is in ``layer_table`` (the one place for layer facts); the named layouts here are
derived from it. Depthwise layouts (``HWCM->OIHW``, ``WCM->OIW``, ``DHWCM->OIDHW``) are a
permutation followed by the reshape (C, M, *K) -> (C*M, 1, *K) (``ops.Depthwise``).
"""

from __future__ import annotations

from .layer_table import conv_layout, depthwise_layout

DEPTHWISE = depthwise_layout(2)
DEPTHWISE_LAYOUTS = tuple(depthwise_layout(n) for n in (1, 2, 3))
# The plain permutations Keras/TF layers need (not the depthwise reshapes): what diagnose looks for.
TF_LAYOUTS = ("IO->OI", *(conv_layout(n, t) for t in (False, True) for n in (1, 2, 3)))


def parse(layout: str) -> tuple[int, ...]:
    """``'HWIO->OIHW' -> (3, 2, 0, 1)``. Raises ValueError for an inconsistent pair."""
    if layout in DEPTHWISE_LAYOUTS:
        n = len(layout.split("->")[0]) - 2
        return (n, n + 1, *range(n))
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
