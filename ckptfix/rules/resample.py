"""Resolution changes: conv kernels resized (PI-resize or interpolation) and ViT absolute position
embeddings resampled to a new grid. Both faces side by side, as in ``ops``; the numbers are
timm's (``timm.layers.resample_patch_embed`` and ``timm.layers.resample_abs_pos_embed``), which
``tests/test_finetune_ops.py`` compares against reference tensors written by timm itself
(``tools/make_timm_refs.py``).

Interpolation is ``torch.nn.functional.interpolate`` with ``align_corners=False`` on float32
(timm's), the result cast back to the tensor's dtype. With ``antialias=True`` (timm's default)
bilinear/bicubic use PIL's kernels (bicubic a = -0.5, the support widened when downsampling); with
``antialias=False`` torch's plain ones (bicubic a = -0.75): the two differ even when upsampling.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from ..tensors import fmt_shape
from .ops import Op, OpError

METHODS = ("bicubic", "bilinear")
MAX_PI_ENTRIES = 1 << 22  # the PI resize matrix (new_h*new_w x old_h*old_w) and its pinv: 16 MiB each
KERNEL_METHODS = ("pi", *METHODS)


def _interpolate(x, size: tuple[int, int], method: str, antialias: bool):
    """``F.interpolate(x, size, mode=method, antialias=antialias)`` on float32 ``x`` (N, C, h, w)."""
    import torch.nn.functional as F

    return F.interpolate(x, size=size, mode=method, antialias=antialias, align_corners=False)


@functools.lru_cache(maxsize=16)
def _pi_matrix(old: tuple[int, int], new: tuple[int, int], method: str, antialias: bool):
    """``pinv(R)`` (old_h*old_w, new_h*new_w), where column ``i`` of ``R`` (new, old) is the basis
    image ``e_i`` of the old size resized to the new one, so ``resize(x).flatten() = R @ x.flatten()``.
    Float32 throughout, ``torch.linalg.pinv`` with its default tolerance: timm's numbers."""
    import torch

    n = old[0] * old[1]
    basis = torch.eye(n, dtype=torch.float32).reshape(n, 1, *old)
    r = _interpolate(basis, new, method, antialias).reshape(n, -1).T  # (new, old)
    return torch.linalg.pinv(r)


@dataclass(frozen=True)
class ResizeKernel(Op):
    """A conv kernel (O, I, kh, kw) resized to (O, I, *size).

    pi (FlexiViT's pseudo-inverse resize, as ``timm.layers.resample_patch_embed``): with ``R`` the
    matrix that resizes an old-size patch to the new size (``method``/``antialias`` interpolation),
    each (kh, kw) slice ``w`` (flattened) becomes ``w' = pinv(R^T) @ w`` (computed as ``w @ pinv(R)``
    in float32, as timm), the ``w'`` that minimises ``||R^T w' - w||``. Preserves: a patch ``x`` resized to the new size gives the same token,
    ``<resize(x), w'> = <x, w>``, exactly when the new kernel is at least as large (R has full
    column rank); smaller, the least-squares best. A patch embedding keeps its tokens when the
    patch size changes with the image.

    bilinear / bicubic: each slice interpolated to the new size as an image (no rescaling: the
    response to a constant input grows with the kernel's area).
    """

    size: tuple[int, int]
    method: str = "pi"
    interpolation: str = "bicubic"   # pi: the resize R is made of
    antialias: bool = True

    def shape(self, meta):
        if meta.rank != 4:
            raise OpError(f"resizing a kernel needs a rank-4 (O, I, kh, kw) weight, got {fmt_shape(meta.shape)}")
        if any(s <= 0 for s in self.size):
            raise OpError(f"kernel size {list(self.size)} must be positive")
        if self.method not in KERNEL_METHODS:
            raise OpError(f"method {self.method!r}: one of {', '.join(KERNEL_METHODS)}")
        if 0 in meta.shape:
            raise OpError(f"an empty kernel {fmt_shape(meta.shape)} cannot be resized")
        old, new = meta.shape[2] * meta.shape[3], self.size[0] * self.size[1]
        if self.method == "pi" and max(old, new) * old > MAX_PI_ENTRIES and tuple(meta.shape[2:]) != tuple(self.size):
            raise OpError(f"PI-resize of a {meta.shape[2]}x{meta.shape[3]} kernel to {'x'.join(map(str, self.size))} "
                          f"needs a {max(old, new):,} x {old:,} matrix (its resize basis) and a pseudo-inverse, more "
                          f"than the {MAX_PI_ENTRIES:,} entries ckptfix computes; use method: bicubic")
        _floating(meta)
        return meta.with_shape((*meta.shape[:2], *self.size))

    def working(self, before, after):
        # float32 copies of the input and of the result; the PI matrices (bounded by MAX_PI_ENTRIES)
        return 4 * (before.numel + after.numel) + (3 * 4 * MAX_PI_ENTRIES if self.method == "pi" else 0)

    def data(self, t):
        old = tuple(t.shape[2:])
        if old == tuple(self.size):
            return t
        o, i = t.shape[:2]
        x = t.float().reshape(o * i, *old)
        if self.method == "pi":
            m = _pi_matrix(old, tuple(self.size), self.interpolation, self.antialias)
            y = (x.reshape(o * i, -1) @ m).reshape(o, i, *self.size)
        else:
            y = _interpolate(x.unsqueeze(1), tuple(self.size), self.method, self.antialias).reshape(o, i, *self.size)
        return y.to(t.dtype).contiguous()

    def describe(self):
        how = f"PI-resize ({self.interpolation})" if self.method == "pi" else self.method
        return f"resize kernel to {'x'.join(map(str, self.size))} ({how}{'' if self.antialias else ', no antialias'})"


@dataclass(frozen=True)
class ResamplePosEmbed(Op):
    """An absolute position embedding from one token grid to another, as
    ``timm.layers.resample_abs_pos_embed``.

    The tensor is ``(1, P + h*w, D)`` or ``(P + h*w, D)``: ``prefix`` tokens (class, distillation,
    register tokens) first, then the grid row by row (row-major, ``h`` rows of ``w``). The prefix
    tokens are kept as they are; the grid is read as a D-channel image (1, D, h, w), interpolated to
    ``new`` (``method``, ``antialias``) and written back row by row after the prefix. Preserves: the
    embedding as a smooth function of the patch's position in the image; a token at the same
    relative position gets (nearly) the same embedding.
    """

    old: tuple[int, int]
    new: tuple[int, int]
    prefix: int = 1
    method: str = "bicubic"
    antialias: bool = True

    def _tokens_axis(self, rank: int) -> int:
        if rank not in (2, 3):
            raise OpError("a position embedding is (1, tokens, dim) or (tokens, dim)")
        return rank - 2

    def shape(self, meta):
        ax = self._tokens_axis(meta.rank)
        if meta.rank == 3 and meta.shape[0] != 1:
            raise OpError(f"a position embedding (1, tokens, dim) has batch 1, got {fmt_shape(meta.shape)}")
        if self.method not in METHODS:
            raise OpError(f"method {self.method!r}: one of {', '.join(METHODS)}")
        n = meta.shape[ax]
        if meta.shape[-1] == 0:
            raise OpError(f"a position embedding of dim 0 {fmt_shape(meta.shape)} has nothing to resample")
        h, w = self.old
        if n != self.prefix + h * w:
            raise OpError(f"{n} tokens, but {self.prefix} prefix + {h}x{w} grid = {self.prefix + h * w}")
        _floating(meta)
        shape = list(meta.shape)
        shape[ax] = self.prefix + self.new[0] * self.new[1]
        return meta.with_shape(shape)

    def working(self, before, after):
        # the grid in float32, interpolated, permuted back, then joined to the prefix
        return 4 * before.numel + 2 * 4 * after.numel

    def data(self, t):
        if tuple(self.old) == tuple(self.new):
            return t
        x = t if t.dim() == 3 else t.unsqueeze(0)
        prefix, grid = x[:, :self.prefix], x[:, self.prefix:]
        d = x.shape[-1]
        img = grid.float().reshape(1, *self.old, d).permute(0, 3, 1, 2)
        img = _interpolate(img, tuple(self.new), self.method, self.antialias)
        grid = img.permute(0, 2, 3, 1).reshape(1, -1, d).to(t.dtype)
        import torch

        out = torch.cat([prefix, grid], dim=1)
        return (out if t.dim() == 3 else out[0]).contiguous()

    def describe(self):
        g = lambda s: "x".join(map(str, s))  # noqa: E731
        return (f"resample position embedding {g(self.old)} -> {g(self.new)} grid ({self.method}, "
                f"{self.prefix} prefix token{'s' if self.prefix != 1 else ''} kept)")


def _floating(meta) -> None:
    from .. import dtypes

    if not dtypes.get(meta.dtype).floating:
        raise OpError(f"interpolation needs a floating-point tensor, got {meta.dtype}")


def square_grid(tokens: int, prefix: int) -> tuple[int, int] | None:
    """The square grid ``tokens - prefix`` tokens make, if they make one."""
    n = tokens - prefix
    s = math.isqrt(n) if n > 0 else 0
    return (s, s) if s > 0 and s * s == n else None
