"""Tensor ops. Each op has two faces defined side by side: ``shape`` (TensorMeta -> TensorMeta),
used by the planner, and ``data`` (Tensor -> Tensor), used by the executor. A property test checks
that they agree for every op. Ops are bound: every parameter (axis, fill, seed, fan-in) is resolved
at plan time, so the executor only runs them.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from .. import dtypes, layouts
from ..tensors import TensorMeta, fmt_shape


class OpError(ValueError):
    """An op cannot apply to a tensor of this shape/dtype (the planner adds rule and key)."""


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise OpError(f"axis {axis} is out of range for a rank-{rank} tensor")
    return axis % rank


def _fmt(v) -> str:
    return "" if v is None else str(v)


class Op:
    def shape(self, meta: TensorMeta) -> TensorMeta:
        raise NotImplementedError

    def data(self, t):
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def working(self, before: TensorMeta, after: TensorMeta) -> int:
        """Bytes the data face holds besides its input and output (float32 copies, ...)."""
        return 0

    def byte_span(self, meta: TensorMeta) -> tuple[int, int] | None:
        """``(offset, length)`` if the result's bytes are one run of the input's bytes (so they
        can be copied without being read); None if the op has to compute."""
        return None


def permute_copy(t, perm):
    """``t.permute(perm).contiguous()``, faster for the layouts checkpoints need.

    Dims of size 1 are dropped and runs of dims that stay together are merged, so HWIO->OIHW is
    the 3-axis reversal (HW, I, O) -> (O, I, HW), and depthwise/1x1 kernels become 2-D transposes.
    torch copies a reversal element by element with poor locality; ``_reverse3`` tiles it.
    """
    shape = tuple(t.shape)
    groups: list[list[int]] = []  # runs of input dims, in output order
    for d in perm:
        if shape[d] == 1:
            continue
        if groups and groups[-1][-1] + 1 == d:
            groups[-1].append(d)
        else:
            groups.append([d])
    by_input = sorted(range(len(groups)), key=lambda g: groups[g][0])
    x = t.reshape([math.prod(shape[d] for d in groups[g]) for g in by_input])
    q = [by_input.index(k) for k in range(len(groups))]
    if q == sorted(q):
        out = x.clone()
    elif q == [1, 0]:
        out = x.t().contiguous()
    elif q == [2, 1, 0] and x.numel() * x.element_size() > 1 << 20:  # small ones: tiling costs more
        out = _reverse3(x)
    else:
        out = x.permute(q).contiguous()
    return out.reshape([shape[p] for p in perm])


BLOCK = 32 << 10  # bytes of input one tile of a reversal covers: it stays in the L1/L2 cache


def _reverse3(x):
    """(A, B, C) -> (C, B, A), contiguous, tile by tile: each tile ``x[:, b:b+n, c:c+n]`` is read
    and written while it is in cache. torch copies the whole permuted view element by element with
    strided reads across the full tensor (0.4-1 GB/s here for 3x3x1024x1024 kernels); tiled, it
    runs 2-3x faster. Memory: the input and the output, nothing more."""
    import torch

    a, b, c = x.shape
    out = torch.empty((c, b, a), dtype=x.dtype)
    n = max(8, int(math.sqrt(BLOCK / (a * x.element_size()))) // 8 * 8)
    for c0 in range(0, c, n):
        for b0 in range(0, b, n):
            out[c0:c0 + n, b0:b0 + n].copy_(x[:, b0:b0 + n, c0:c0 + n].permute(2, 1, 0))
    return out


def _index_select(t, axis: int, idx):
    """``t.index_select(axis, idx)`` for every dtype: torch has no 1-D kernel for uint16/32/64, so
    those are selected as the signed integers of the same size (the bytes are only moved)."""
    import torch

    idx = torch.as_tensor(idx, dtype=torch.long)
    alias = {torch.uint16: torch.int16, torch.uint32: torch.int32, torch.uint64: torch.int64}.get(t.dtype)
    if alias is None:
        return t.index_select(axis, idx)
    return t.view(alias).index_select(axis, idx).view(t.dtype)


@dataclass(frozen=True)
class Transpose(Op):
    perm: tuple[int, ...]
    label: str = ""

    def shape(self, meta):
        if meta.rank != len(self.perm):
            what = f"layout {self.label}" if self.label else f"perm {list(self.perm)}"
            raise OpError(f"{what} needs a rank-{len(self.perm)} tensor, got {fmt_shape(meta.shape)}")
        return meta.with_shape(meta.shape[i] for i in self.perm)

    def data(self, t):
        return permute_copy(t, self.perm)

    def describe(self):
        return f"transpose {self.label or list(self.perm)}"


@dataclass(frozen=True)
class Depthwise(Op):
    """Keras DepthwiseConv{1,2,3}D kernel (*K, C, M) -> Conv{1,2,3}d(groups=C) weight (C*M, 1, *K).

    Exactly ``k.permute(C, M, *K).reshape(C*M, 1, *K)``: output channel ``c*M + m`` holds Keras'
    ``kernel[..., c, m]``, as Keras' depthwise conv orders its outputs (tf.nn.depthwise_conv2d).
    ``label`` is the layout (``HWCM->OIHW``, ``WCM->OIW``, ``DHWCM->OIDHW``); its length fixes the rank.
    """

    label: str = layouts.DEPTHWISE

    @property
    def rank(self) -> int:
        return len(self.label.split("->")[0])

    def shape(self, meta):
        if meta.rank != self.rank:
            raise OpError(f"layout {self.label} needs a rank-{self.rank} kernel, got {fmt_shape(meta.shape)}")
        *k, c, m = meta.shape
        return meta.with_shape((c * m, 1, *k))

    def data(self, t):
        *k, c, m = t.shape
        n = len(k)
        return permute_copy(t, (n, n + 1, *range(n))).reshape(c * m, 1, *k)

    def describe(self):
        return f"transpose {self.label}"


@dataclass(frozen=True)
class ReorderBlocks(Op):
    """Cut ``axis`` into ``len(order)`` equal blocks; output block ``i`` is input block ``order[i]``.

    For recurrent gates stored in another order: Keras GRU (z, r, h) -> torch GRU (r, z, n) is
    ``order [1, 0, 2]`` on axis 0 of the torch-layout weight ``(3*U, I)`` and of the biases.
    """

    order: tuple[int, ...]
    axis: int = 0

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        if sorted(self.order) != list(range(len(self.order))):
            raise OpError(f"order {list(self.order)} is not a permutation of 0..{len(self.order) - 1}")
        if meta.shape[ax] % len(self.order):
            raise OpError(f"axis {self.axis} has {meta.shape[ax]} entries, not divisible into {len(self.order)} blocks")
        return meta

    def data(self, t):
        ax = self.axis % t.dim()
        blocks = t.chunk(len(self.order), dim=ax)
        import torch

        return torch.cat([blocks[i] for i in self.order], dim=ax).contiguous()

    def describe(self):
        return f"reorder {len(self.order)} blocks {list(self.order)} (axis {self.axis})"


@dataclass(frozen=True)
class Chunk(Op):
    """Part ``index`` of ``parts`` equal parts of ``axis`` (``torch.chunk``); with ``squeeze`` the
    axis is dropped (each part must then have size 1 there: ``torch.unbind``)."""

    axis: int
    index: int
    parts: int
    squeeze: bool = False

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        n = meta.shape[ax]
        if n % self.parts:
            raise OpError(f"axis {self.axis} has {n} entries, not divisible into {self.parts} parts")
        size = n // self.parts
        if self.squeeze and size != 1:
            raise OpError(f"squeeze needs parts of size 1 along axis {self.axis}, got {size}")
        shape = list(meta.shape)
        if self.squeeze:
            del shape[ax]
        else:
            shape[ax] = size
        return meta.with_shape(shape)

    def data(self, t):
        ax = self.axis % t.dim()
        import torch

        part = t.chunk(self.parts, dim=ax)[self.index]
        return (part.squeeze(ax) if self.squeeze else part).clone(memory_format=torch.contiguous_format)

    def byte_span(self, meta):
        ax = _axis(self.axis, meta.rank)
        if any(d != 1 for d in meta.shape[:ax]):
            return None
        size = meta.nbytes // self.parts
        return self.index * size, size

    def describe(self):
        return f"part {self.index + 1} of {self.parts} along axis {self.axis}" + (" (squeezed)" if self.squeeze else "")


@dataclass(frozen=True)
class Slice(Op):
    axis: int
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    index: tuple[int, ...] | None = None

    def _indices(self, n: int) -> range | tuple[int, ...]:
        if self.index is not None:
            bad = [i for i in self.index if not -n <= i < n]
            if bad:
                raise OpError(f"index {bad[0]} is out of range for an axis of size {n}")
            return tuple(i % n for i in self.index)
        for v in (self.start, self.stop):
            if v is not None and not -n <= v <= n:
                raise OpError(f"slice {_fmt(self.start)}:{_fmt(self.stop)} is out of range for an axis of size {n}")
        if self.step is not None and self.step <= 0:
            raise OpError("slice step must be positive")
        r = range(n)[slice(self.start, self.stop, self.step)]
        if len(r) == 0:
            raise OpError(f"slice {_fmt(self.start)}:{_fmt(self.stop)} of an axis of size {n} is empty")
        return r

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        shape = list(meta.shape)
        shape[ax] = len(self._indices(shape[ax]))
        return meta.with_shape(shape)

    def byte_span(self, meta):
        # a run of whole rows: the axis is the first one that is not 1, and the step is 1
        ax = _axis(self.axis, meta.rank)
        idx = self._indices(meta.shape[ax])
        if any(n != 1 for n in meta.shape[:ax]):
            return None
        if isinstance(idx, tuple):
            if list(idx) != list(range(idx[0], idx[0] + len(idx))):
                return None
            idx = range(idx[0], idx[0] + len(idx))
        if idx.step != 1:
            return None
        row = math.prod(meta.shape[ax + 1:]) * dtypes.get(meta.dtype).itemsize
        return idx.start * row, len(idx) * row

    def data(self, t):
        ax = self.axis % t.dim()
        idx = self._indices(t.shape[ax])
        if isinstance(idx, range) and idx.step == 1:
            return t.narrow(ax, idx.start, len(idx))
        return _index_select(t, ax, list(idx))

    def describe(self):
        if self.index is not None:
            return f"slice axis {self.axis} index {list(self.index)}"
        s = f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        return f"slice axis {self.axis} [{s}{'' if self.step is None else ':' + str(self.step)}]"


FILLS = ("zeros", "constant", "normal", "default", "mean", "repeat")


def default_init(shape, seed: int, fan_in: int | None, dtype):
    """What PyTorch's ``reset_parameters`` draws for a layer with this ``fan_in``: uniform(-b, b),
    b = 1/sqrt(fan_in) (``kaiming_uniform_(a=sqrt(5))`` for weights, the same bound for biases),
    from a generator seeded with ``seed``, drawn in float32 and cast to ``dtype``."""
    import torch

    g = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
    return ((torch.rand(tuple(shape), generator=g, dtype=torch.float32) * 2 - 1) * bound).to(dtype)


def tensor_seed(seed: int, key: str) -> int:
    """A per-tensor seed: reproducible, and different tensors get different draws."""
    return (seed * 1_000_003 + zlib.crc32(key.encode())) % (2**63)


@dataclass(frozen=True)
class Pad(Op):
    """Grow ``axis`` to ``size``; the new slots are filled as ``fill`` says.

    default: what PyTorch's reset_parameters draws for a new layer of the padded shape:
    uniform(-b, b) with b = 1/sqrt(fan_in) (kaiming_uniform(a=sqrt(5)) for weights, the same bound
    for biases, fan_in taken from the layer's weight). mean: the mean of the existing slices along
    ``axis``. repeat: existing slices cycled (0, 1, ..., 0, 1, ...).
    """

    axis: int
    size: int
    fill: str = "zeros"
    value: float = 0.0
    std: float = 0.02
    seed: int = 0
    fan_in: int | None = None

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        n = meta.shape[ax]
        if self.size < n:
            raise OpError(f"cannot pad axis {self.axis} from {n} to smaller size {self.size} (use slice)")
        if self.fill in ("normal", "default", "mean") and not dtypes.get(meta.dtype).floating:
            raise OpError(f"fill {self.fill!r} needs a floating-point tensor, got {meta.dtype}")
        if self.fill in ("mean", "repeat") and n == 0:
            raise OpError(f"fill {self.fill!r} needs existing slices along axis {self.axis}")
        if self.fill == "constant" and not dtypes.fits(meta.dtype, self.value):
            raise OpError(f"fill value {self.value:g} does not fit dtype {meta.dtype}")
        shape = list(meta.shape)
        shape[ax] = self.size
        return meta.with_shape(shape)

    def data(self, t):
        import torch

        ax = self.axis % t.dim()
        n = t.shape[ax]
        extra = self.size - n
        if extra == 0:
            return t
        shape = list(t.shape)
        shape[ax] = extra
        if self.fill == "zeros":
            new = torch.zeros(shape, dtype=t.dtype)
        elif self.fill == "constant":
            new = torch.full(shape, self.value, dtype=t.dtype)
        elif self.fill == "repeat":
            new = _index_select(t, ax, torch.arange(extra) % n)
        elif self.fill == "mean":
            new = t.float().mean(dim=ax, keepdim=True).expand(shape).to(t.dtype)
        else:
            if self.fill == "normal":
                g = torch.Generator().manual_seed(self.seed)
                new = (torch.randn(shape, generator=g, dtype=torch.float32) * self.std).to(t.dtype)
            else:
                new = default_init(shape, self.seed, self.fan_in, t.dtype)
        return torch.cat([t, new], dim=ax)

    def describe(self):
        extra = {"constant": f" {self.value}", "normal": f" std={self.std}"}.get(self.fill, "")
        return f"pad axis {self.axis} to {self.size} ({self.fill}{extra})"


@dataclass(frozen=True)
class Cast(Op):
    dtype: str

    def shape(self, meta):
        return meta.with_dtype(self.dtype)

    def data(self, t):
        return t.to(dtypes.torch_dtype(self.dtype))

    def describe(self):
        return f"cast {self.dtype}"


@dataclass(frozen=True)
class FlattenOrder(Op):
    """Reorder the features along ``axis`` from one flatten order of a feature map to another.

    ``dims`` are the map's sizes in the source's order and ``perm`` the target's order of them:
    exactly ``w.unflatten(axis, dims).permute(..., perm, ...).flatten(axis)``. Keras flattens NHWC
    maps as (H, W, C); PyTorch flattens NCHW as (C, H, W): ``dims (H, W, C)``, ``perm (2, 0, 1)``
    (``HWC->CHW``). Apply it to the PyTorch-layout Linear weight (out, features), i.e. after IO->OI.
    """

    dims: tuple[int, ...]
    axis: int = 1
    perm: tuple[int, ...] = (2, 0, 1)
    label: str = "HWC->CHW"

    def shape(self, meta):
        ax = _axis(self.axis, meta.rank)
        if any(d <= 0 for d in self.dims):
            raise OpError(f"dims {list(self.dims)} must be positive")
        if len(self.perm) != len(self.dims):
            raise OpError(f"layout {self.label} has {len(self.perm)} axes, dims has {len(self.dims)}")
        if meta.shape[ax] != math.prod(self.dims):
            prod = "*".join(map(str, self.dims))
            raise OpError(f"axis {self.axis} has {meta.shape[ax]} features, but {prod} = {math.prod(self.dims)}")
        return meta

    def data(self, t):
        ax = self.axis % t.dim()
        moved = t.movedim(ax, -1)
        lead = moved.shape[:-1]
        k = len(lead)
        out = moved.reshape(*lead, *self.dims).permute(*range(k), *(k + p for p in self.perm))
        return out.reshape(*lead, math.prod(self.dims)).movedim(-1, ax).contiguous()

    def describe(self):
        return f"flatten order {self.label} {list(self.dims)} (axis {self.axis})"


@dataclass(frozen=True)
class AddScalar(Op):
    """Add a constant (BatchNorm eps folding: running_var + (eps_from - eps_to))."""

    value: float

    def shape(self, meta):
        if not dtypes.get(meta.dtype).floating:
            raise OpError(f"needs a floating-point tensor, got {meta.dtype}")
        if not dtypes.fits(meta.dtype, self.value):
            raise OpError(f"adding {self.value:g} overflows dtype {meta.dtype}")
        return meta

    def data(self, t):
        return (t.double() + self.value).to(t.dtype)

    def describe(self):
        return f"add {self.value:+g}"


@dataclass(frozen=True)
class Reshape(Op):
    """The same elements in a new shape: exactly ``numpy.reshape(a, to, order="C")`` (which is also
    ``torch.reshape``). The elements are read in row-major (C) order, last axis fastest, and
    written into the new shape in that same order; nothing is permuted, so ``[6] -> [2, 3]`` gives
    rows ``a[0:3]`` and ``a[3:6]``. The element count must not change (a refusal at plan time). A
    C-contiguous tensor keeps its bytes, so the executor copies them without reading
    (``byte_span``). ``to`` is concrete; ``Reshape.to_shape`` and ``Reshape.squeezing`` bind a
    rule's ``shape`` (one -1 inferred, as numpy does) or ``squeeze`` to a tensor at plan time."""

    to: tuple[int, ...]
    label: str = ""  # how the rule said it ("squeeze", a shape with -1), for describe()

    @classmethod
    def to_shape(cls, meta: TensorMeta, shape) -> "Reshape":
        """``shape`` with at most one -1, which stands for what the other axes leave (numpy's rule)."""
        shape = tuple(shape)
        if shape.count(-1) > 1 or any(d < -1 for d in shape):
            raise OpError(f"shape {fmt_shape(shape)}: sizes are >= 0, with at most one -1")
        if -1 in shape:
            rest = math.prod(d for d in shape if d != -1)
            if rest == 0:
                raise OpError(f"cannot reshape to {fmt_shape(shape)}: with a size-0 axis the -1 is ambiguous")
            if meta.numel % rest:
                raise OpError(f"cannot reshape to {fmt_shape(shape)}: it holds {meta.numel} elements, "
                              f"not a multiple of the {rest} the other axes hold")
            return cls(tuple(meta.numel // rest if d == -1 else d for d in shape), f"reshape {fmt_shape(shape)}")
        return cls(shape)

    @classmethod
    def squeezing(cls, meta: TensorMeta) -> "Reshape":
        """Every size-1 axis dropped (``numpy.squeeze``); a tensor with none keeps its shape."""
        return cls(tuple(d for d in meta.shape if d != 1), "squeeze (drop size-1 axes)")

    def shape(self, meta):
        if math.prod(self.to) != meta.numel:
            raise OpError(f"cannot reshape to {fmt_shape(self.to)} ({math.prod(self.to)} elements): it holds "
                          f"{meta.numel}; a reshape keeps the element count")
        return meta.with_shape(self.to)

    def data(self, t):
        return t.reshape(self.to).contiguous()

    def byte_span(self, meta):
        return 0, meta.nbytes

    def describe(self):
        return self.label or f"reshape {fmt_shape(self.to)}"


@dataclass(frozen=True)
class Constant(Op):
    """A source for a tensor the rules add (e.g. BatchNorm's num_batches_tracked)."""

    meta: TensorMeta
    value: float = 0.0

    def shape(self, meta=None):
        if not dtypes.fits(self.meta.dtype, self.value):
            raise OpError(f"value {self.value:g} does not fit dtype {self.meta.dtype}")
        return self.meta

    def data(self, t=None):
        import torch

        return torch.full(self.meta.shape, self.value, dtype=dtypes.torch_dtype(self.meta.dtype))

    def describe(self):
        return f"new {fmt_shape(self.meta.shape)} {self.meta.dtype} = {self.value:g}"
