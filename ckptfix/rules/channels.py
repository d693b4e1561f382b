"""Channel surgery: a conv's input channels adapted (grayscale, multispectral), a layer's values
drawn afresh (a re-initialised head), and channels kept by an index list chosen from the data (the
largest L1 norms). Both faces side by side, as in ``ops``.

``InChannels`` follows ``timm.models._manipulate.adapt_input_conv`` for the cases timm covers
(``tests/test_finetune_ops.py`` compares against tensors timm wrote) and extends it to any count.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .. import dtypes
from ..tensors import fmt_shape
from .ops import Op, OpError, Pad, _axis, _index_select, default_init

IN_MODES = ("keep", "sum", "repeat")
NEW_FILLS = ("zeros", "mean")


@dataclass(frozen=True)
class InChannels(Op):
    """The input-channel axis (``axis``, 1 for an OIHW conv weight) from C to ``size`` = N.

    mode ``sum`` (timm ``adapt_input_conv`` to 1 channel): N must divide C; channel ``j`` of the
    result is the sum of the C/N consecutive channels ``j*C/N .. (j+1)*C/N - 1``. For N = 1 that is
    the sum over all channels: a gray image gives exactly the activations its RGB copy (the gray
    value in each channel) gave. For a space-to-depth stem (C = 3 * blocks) and N = C/3 it is timm's
    per-block sum.

    mode ``repeat`` (timm for C = 3 and N != 1, 3): channel ``j`` is channel ``j mod C`` scaled by
    C/N. When N is a multiple of C, an input whose channel ``j`` holds channel ``j mod C`` of an
    image gives exactly the old activations; otherwise the response's scale is kept on average.

    mode ``keep``: channel ``j`` is ``map[j]`` (a source channel, or a list of them summed) when the
    map names it, else channel ``j`` itself for ``j < C``, else ``fill``: ``zeros`` (an input whose
    first C channels hold the old image gives exactly the old activations, whatever the new channels
    hold) or ``mean`` (the mean of the C source channels). ``map`` pairs are (new, sources).

    Computed in float32 at least (float64 stays float64), then cast back (as timm).
    """

    size: int
    mode: str = "keep"
    axis: int = 1
    map: tuple[tuple[int, tuple[int, ...]], ...] = ()
    fill: str = "zeros"

    def shape(self, meta):
        if meta.rank < 2:
            raise OpError(f"input channels are an axis of a weight (rank >= 2), got {fmt_shape(meta.shape)}")
        ax = _axis(self.axis, meta.rank)
        c, n = meta.shape[ax], self.size
        if n < 1:
            raise OpError(f"size {n}: at least 1 channel")
        if not dtypes.get(meta.dtype).floating:
            raise OpError(f"adapting input channels needs a floating-point weight, got {meta.dtype}")
        if self.mode == "sum" and c % n:
            raise OpError(f"mode sum sums groups of C/N channels: {n} does not divide {c}")
        if self.mode not in IN_MODES:
            raise OpError(f"mode {self.mode!r}: one of {', '.join(IN_MODES)}")
        for j, srcs in self.map:
            if not 0 <= j < n:
                raise OpError(f"map: new channel {j} is out of range for {n} channels")
            bad = [s for s in srcs if not 0 <= s < c]
            if bad:
                raise OpError(f"map: source channel {bad[0]} is out of range for {c} channels")
        if self.mode == "keep" and self.fill == "mean" and c == 0:
            raise OpError("fill mean needs source channels")
        shape = list(meta.shape)
        shape[ax] = n
        return meta.with_shape(shape)

    def working(self, before, after):
        return 8 * (before.numel + after.numel)  # a float32 (or float64) copy in, the pieces out

    def data(self, t):
        import torch

        ax = self.axis % t.dim()
        work = t if t.dtype == torch.float64 else t.float()
        c, n = t.shape[ax], self.size
        if self.mode == "sum":
            shape = list(work.shape)
            shape[ax:ax + 1] = [n, c // n]
            out = work.reshape(shape).sum(dim=ax + 1)
        elif self.mode == "repeat":
            out = _index_select(work, ax, [j % c for j in range(n)]) * (c / n)
        else:
            cols = []
            maps = dict(self.map)
            mean = work.mean(dim=ax, keepdim=True) if self.fill == "mean" else None
            for j in range(n):
                if j in maps:
                    cols.append(work.index_select(ax, torch.tensor(maps[j])).sum(dim=ax, keepdim=True))
                elif j < c:
                    cols.append(work.narrow(ax, j, 1))
                else:
                    cols.append(mean if mean is not None else torch.zeros_like(work.narrow(ax, 0, 1)))
            out = torch.cat(cols, dim=ax)
        return out.to(t.dtype).contiguous()

    def describe(self):
        how = {"sum": "sum", "repeat": "repeat, scaled"}.get(self.mode, f"keep, new {self.fill}")
        extra = f", map {dict(self.map)}" if self.map else ""
        return f"input channels (axis {self.axis}) to {self.size} ({how}{extra})"


@dataclass(frozen=True)
class Fresh(Op):
    """Values drawn afresh in the same shape (the input's values are not used): ``default`` is
    PyTorch's ``reset_parameters`` distribution for the layer, uniform(-b, b) with
    b = 1/sqrt(fan_in) (weights and biases alike, as ``ops.Pad``'s ``default``), from a seeded
    generator; ``zeros``."""

    fill: str = "default"
    seed: int = 0
    fan_in: int = 1

    def shape(self, meta):
        if self.fill == "default" and not dtypes.get(meta.dtype).floating:
            raise OpError(f"fill default needs a floating-point tensor, got {meta.dtype}")
        return meta

    def working(self, before, after):
        return 4 * after.numel  # drawn in float32

    def data(self, t):
        import torch

        if self.fill == "zeros":
            return torch.zeros_like(t)
        return default_init(t.shape, self.seed, self.fan_in, t.dtype)

    def describe(self):
        return f"re-initialise ({self.fill}{', PyTorch init' if self.fill == 'default' else ''})"


@dataclass(eq=False)
class Selection:
    """Indices chosen from the data when it is read: the ``keep`` entries along ``axis`` of one
    tensor (input ``source`` after the ops ``before``) with the largest L1 norm (the sum of absolute
    values over every other axis, in float64), returned in ascending order. Ties keep the lower index.
    One selection is shared by every tensor a coupled rule changes, so they all keep the same
    channels. ``resolve`` is called by the executor before any tensor is made."""

    name: str                        # the tensor whose norms decide (its name after the rules)
    source: str
    before: tuple
    axis: int
    keep: int
    index: tuple[int, ...] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def resolve(self, read) -> tuple[int, ...]:
        import torch

        with self._lock:
            if self.index is None:
                t = read(self.source)
                for op in self.before:
                    t = op.data(t)
                ax = self.axis % t.dim()
                norms = t.double().abs().movedim(ax, 0).reshape(t.shape[ax], -1).sum(dim=1)
                order = torch.sort(-norms, stable=True).indices[: self.keep]
                self.index = tuple(sorted(int(i) for i in order))
            return self.index


@dataclass(frozen=True)
class Select(Op):
    """Keep the entries ``selection`` chooses along ``axis`` (``index_select``), in its order.
    ``block``: each chosen index ``c`` stands for the run ``c*block .. (c+1)*block - 1`` (a Linear
    reading a flattened NCHW map holds ``block`` = H*W features per channel)."""

    axis: int
    selection: Selection
    block: int = 1

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        shape = list(meta.shape)
        if meta.shape[ax] % self.block:
            raise OpError(f"axis {self.axis} has {meta.shape[ax]} entries, not a multiple of {self.block} per channel")
        if self.selection.keep * self.block > meta.shape[ax]:
            raise OpError(f"cannot keep {self.selection.keep} of {meta.shape[ax] // self.block} channels")
        shape[ax] = self.selection.keep * self.block
        return meta.with_shape(shape)

    def data(self, t):
        if self.selection.index is None:
            from ..errors import CkptfixError

            raise CkptfixError(f"internal error: the L1 selection of {self.selection.name} was not resolved")
        return _index_select(t, self.axis % t.dim(), blocks(self.selection.index, self.block))

    def describe(self):
        return (f"keep {self.selection.keep} along axis {self.axis} (largest L1 norm of "
                f"{self.selection.name}, chosen when the data is read)")


def blocks(index, block: int) -> list[int]:
    """Channel indices to feature indices: ``c -> c*block .. (c+1)*block - 1``."""
    return [c * block + j for c in index for j in range(block)]


def selections(entries) -> list[Selection]:
    """Every L1 selection a plan's ops use, once each."""
    out: dict[int, Selection] = {}
    for e in entries:
        for op in e.ops:
            if isinstance(op, Select):
                out.setdefault(id(op.selection), op.selection)
    return list(out.values())


__all__ = ["InChannels", "Fresh", "Selection", "Select", "selections", "Pad"]
