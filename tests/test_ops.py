"""Each op's shape face agrees with its data face; layouts are numerically right."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfix import dtypes, layouts
from ckptfix.rules import channels, ops, resample
from ckptfix.rules.ops import Cast, Constant, Depthwise, OpError, Pad, Reshape, Slice, Transpose, permute_copy
from ckptfix.tensors import TensorMeta
from numerics import seeded_randn

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=5)


def meta_of(t):
    return TensorMeta(tuple(t.shape), dtypes.from_torch(t.dtype))


def agree(op, t):
    try:
        planned = op.shape(meta_of(t))
    except OpError:
        return  # the planner refuses: the data face is never called
    assert meta_of(op.data(t)) == planned


# ---------------------------------------------------------------------------------------------
# every op, found in ckptfix/rules/ops.py: a new op is covered (or fails the registry test)

OP_MODULES = (ops, channels, resample)   # every module of ckptfix/rules that defines ops
OPS = sorted({c for m in OP_MODULES for c in vars(m).values()
              if isinstance(c, type) and issubclass(c, ops.Op) and c is not ops.Op and c.__module__ == m.__name__},
             key=lambda c: c.__name__)
ALL_DTYPES = sorted(dtypes.BY_NAME)   # every dtype a checkpoint may hold reaches the ops
FLOATING = sorted(n for n, d in dtypes.BY_NAME.items() if d.floating)
GENERATORS = {}  # op class -> (hypothesis data -> (a bound op, an input tensor the op is valid for))


def generates(cls):
    def register(fn):
        GENERATORS[cls] = fn
        return fn
    return register


def random_tensor(data, shape, dtype: str) -> torch.Tensor:
    """Seeded values (the seed is drawn, so hypothesis shrinks and replays it) of any dtype."""
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    t = torch.randn(tuple(shape), generator=g, dtype=torch.float64) * 4
    return t > 0 if dtype == "bool" else t.to(dtypes.torch_dtype(dtype))


def draw_tensor(data, dtypes_from=ALL_DTYPES, min_rank=0, max_rank=5, min_side=0, shape=None):
    if shape is None:
        shape = data.draw(st.lists(st.integers(min_side, 5), min_size=min_rank, max_size=max_rank), label="shape")
    return random_tensor(data, shape, data.draw(st.sampled_from(dtypes_from), label="dtype"))


def draw_value(data, dtype: str) -> float:
    """A fill value the dtype can hold (what the rules schema and the planner let through)."""
    if dtypes.get(dtype).floating or dtype == "complex64":
        return data.draw(st.floats(-400, 400), label="value")  # float8_e4m3fn holds up to 448
    lo, hi = (0, 1) if dtype == "bool" else (0, 255) if dtype.startswith("uint") else (-128, 127)
    return float(data.draw(st.integers(lo, hi), label="value"))


def draw_axis(data, rank):
    ax = data.draw(st.integers(0, rank - 1), label="axis")
    return ax - rank if data.draw(st.booleans(), label="negative axis") else ax


@generates(Transpose)
def _transpose(data):
    t = draw_tensor(data)
    return Transpose(tuple(data.draw(st.permutations(range(t.dim())), label="perm"))), t


@generates(Depthwise)
def _depthwise(data):
    label = data.draw(st.sampled_from(["WCM->OIW", "HWCM->OIHW", "DHWCM->OIDHW"]), label="layout")
    n = len(label.split("->")[0])
    return Depthwise(label), draw_tensor(data, min_rank=n, max_rank=n)


@generates(ops.ReorderBlocks)
def _reorder_blocks(data):
    order = tuple(data.draw(st.permutations(range(data.draw(st.integers(1, 4), label="blocks"))), label="order"))
    rank = data.draw(st.integers(1, 3), label="rank")
    axis = draw_axis(data, rank)
    shape = data.draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank), label="shape")
    shape[axis] = len(order) * data.draw(st.integers(0, 3), label="block size")
    return ops.ReorderBlocks(order, axis), draw_tensor(data, shape=shape)


@generates(ops.Chunk)
def _chunk(data):
    parts = data.draw(st.integers(1, 4), label="parts")
    squeeze = data.draw(st.booleans(), label="squeeze")
    rank = data.draw(st.integers(1, 3), label="rank")
    axis = draw_axis(data, rank)
    shape = data.draw(st.lists(st.integers(0, 3), min_size=rank, max_size=rank), label="shape")
    shape[axis] = parts * (1 if squeeze else data.draw(st.integers(1, 3), label="part size"))
    return ops.Chunk(axis, data.draw(st.integers(0, parts - 1), label="index"), parts, squeeze), \
        draw_tensor(data, shape=shape)


@generates(Slice)
def _slice(data):
    t = draw_tensor(data, min_rank=1, min_side=1)
    axis = draw_axis(data, t.dim())
    n = t.shape[axis]
    if data.draw(st.booleans(), label="by index"):
        idx = data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4), label="index")
        return Slice(axis, index=tuple(idx)), t
    lo = data.draw(st.integers(0, n - 1), label="lo")
    hi = data.draw(st.integers(lo + 1, n), label="hi")  # non-empty by construction
    start = data.draw(st.sampled_from([lo, lo - n] + ([None] if lo == 0 else [])), label="start")
    stop = data.draw(st.sampled_from([hi] + ([hi - n] if hi < n else [None])), label="stop")
    return Slice(axis, start, stop, data.draw(st.none() | st.integers(1, 3), label="step")), t


@generates(Pad)
def _pad(data):
    fill = data.draw(st.sampled_from(ops.FILLS), label="fill")
    floating_only = fill in ("normal", "default", "mean")
    needs_slices = fill in ("mean", "repeat")
    t = draw_tensor(data, FLOATING if floating_only else ALL_DTYPES, min_rank=1)
    axis = draw_axis(data, t.dim())
    if needs_slices and t.shape[axis] == 0:
        t = random_tensor(data, [*t.shape[:axis % t.dim()], 1, *t.shape[axis % t.dim() + 1:]], meta_of(t).dtype)
    size = t.shape[axis] + data.draw(st.integers(0, 4), label="extra")
    value = draw_value(data, meta_of(t).dtype) if fill == "constant" else 0.0
    return Pad(axis, size, fill, value=value, std=data.draw(st.floats(1e-4, 1.0), label="std"),
               seed=data.draw(st.integers(0, 2**31), label="pad seed"),
               fan_in=data.draw(st.none() | st.integers(1, 1000), label="fan_in")), t


@generates(ops.Cast)
def _cast(data):
    # the planner casts floating-point tensors only (plan.py refuses the others before the op)
    return Cast(data.draw(st.sampled_from(dtypes.CASTABLE), label="to")), draw_tensor(data, FLOATING)


@generates(ops.FlattenOrder)
def _flatten_order(data):
    hwc = tuple(data.draw(st.lists(st.integers(1, 4), min_size=3, max_size=3), label="hwc"))
    rank = data.draw(st.integers(1, 3), label="rank")
    axis = draw_axis(data, rank)
    shape = data.draw(st.lists(st.integers(0, 4), min_size=rank, max_size=rank), label="shape")
    shape[axis] = hwc[0] * hwc[1] * hwc[2]
    perm = tuple(data.draw(st.permutations(range(3)), label="perm"))
    return ops.FlattenOrder(hwc, axis, perm, "XYZ->" + "".join("XYZ"[p] for p in perm)), draw_tensor(data, shape=shape)


@generates(ops.AddScalar)
def _add_scalar(data):
    return ops.AddScalar(data.draw(st.floats(-1.0, 1.0), label="value")), draw_tensor(data, FLOATING)


@generates(Reshape)
def _reshape(data):
    t = draw_tensor(data)
    dims = list(data.draw(st.permutations(tuple(t.shape)), label="dims"))
    if len(dims) >= 2 and data.draw(st.booleans(), label="merge"):
        i = data.draw(st.integers(0, len(dims) - 2), label="at")
        dims[i:i + 2] = [dims[i] * dims[i + 1]]
    dims += [1] * data.draw(st.integers(0, 2), label="ones")
    form = data.draw(st.sampled_from(["shape", "-1", "squeeze"]), label="form")  # as the rule binds it
    if form == "squeeze":
        return Reshape.squeezing(meta_of(t)), t
    if form == "-1" and dims and all(dims):
        dims[data.draw(st.integers(0, len(dims) - 1), label="inferred")] = -1
        return Reshape.to_shape(meta_of(t), dims), t
    return Reshape(tuple(dims)), t


@generates(Constant)
def _constant(data):
    meta = meta_of(draw_tensor(data))
    return Constant(meta, draw_value(data, meta.dtype)), draw_tensor(data)


@generates(channels.InChannels)
def _in_channels(data):
    t = draw_tensor(data, FLOATING, min_rank=2, max_rank=4, min_side=1)
    c = t.shape[1]
    mode = data.draw(st.sampled_from(["keep", "sum", "repeat"]), label="mode")
    if mode == "sum":
        n = data.draw(st.sampled_from([d for d in range(1, c + 1) if c % d == 0]), label="size")
        return channels.InChannels(n, "sum"), t
    n = data.draw(st.integers(1, 7), label="size")
    if mode == "repeat":
        return channels.InChannels(n, "repeat"), t
    pairs = data.draw(st.dictionaries(st.integers(0, n - 1), st.lists(st.integers(0, c - 1), min_size=1, max_size=3),
                                      max_size=3), label="map")
    fill = data.draw(st.sampled_from(["zeros", "mean"]), label="fill")
    return channels.InChannels(n, "keep", 1, tuple(sorted((j, tuple(v)) for j, v in pairs.items())), fill), t


@generates(channels.Fresh)
def _fresh(data):
    t = draw_tensor(data, FLOATING)
    return channels.Fresh(data.draw(st.sampled_from(["default", "zeros"]), label="fill"),
                          data.draw(st.integers(0, 99), label="seed"), data.draw(st.integers(1, 50), label="fan")), t


@generates(channels.Select)
def _select(data):
    t = draw_tensor(data, ALL_DTYPES, min_rank=1, max_rank=4, min_side=1)
    axis = draw_axis(data, t.dim())
    block = data.draw(st.sampled_from([d for d in range(1, t.shape[axis] + 1) if t.shape[axis] % d == 0]), label="block")
    n = t.shape[axis] // block
    keep = data.draw(st.integers(1, n), label="keep")
    sel = channels.Selection("x", "x", (), 0, keep,
                             tuple(sorted(data.draw(st.permutations(range(n)), label="order")[:keep])))
    return channels.Select(axis, sel, block), t


@generates(resample.ResizeKernel)
def _resize_kernel(data):
    t = draw_tensor(data, FLOATING, min_rank=4, max_rank=4, min_side=1)
    size = (data.draw(st.integers(1, 6), label="h"), data.draw(st.integers(1, 6), label="w"))
    method = data.draw(st.sampled_from(resample.KERNEL_METHODS), label="method")
    return resample.ResizeKernel(size, method, data.draw(st.sampled_from(resample.METHODS), label="interp"),
                                 data.draw(st.booleans(), label="antialias")), t


@generates(resample.ResamplePosEmbed)
def _pos_embed(data):
    prefix = data.draw(st.integers(0, 2), label="prefix")
    old = (data.draw(st.integers(1, 5), label="oh"), data.draw(st.integers(1, 5), label="ow"))
    new = (data.draw(st.integers(1, 6), label="nh"), data.draw(st.integers(1, 6), label="nw"))
    d = data.draw(st.integers(1, 4), label="dim")
    shape = [1, prefix + old[0] * old[1], d] if data.draw(st.booleans(), label="batched") else [prefix + old[0] * old[1], d]
    t = draw_tensor(data, FLOATING, shape=shape)
    return resample.ResamplePosEmbed(old, new, prefix, data.draw(st.sampled_from(resample.METHODS), label="m"),
                                     data.draw(st.booleans(), label="aa")), t


def test_every_op_has_a_generator():
    """Discovery is not vacuous, and an op without a generator of valid inputs fails here."""
    assert {Transpose, Depthwise, Slice, Pad, Cast, ops.FlattenOrder, ops.AddScalar, Reshape, Constant,
            channels.InChannels, channels.Select, resample.ResizeKernel, resample.ResamplePosEmbed} <= set(OPS)
    missing = [c.__name__ for c in OPS if c not in GENERATORS]
    assert not missing, f"ops with no input generator in tests/test_ops.py: {missing}"


def raw_bytes(t):
    return t.contiguous().reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("op_cls", OPS, ids=lambda c: c.__name__)
@settings(max_examples=120, deadline=None)
@given(data=st.data())
def test_shape_face_equals_data_face(op_cls, data):
    """For valid inputs of many shapes and dtypes, the planned shape/dtype is what the data face
    computes; where the op says its result is a run of the input's bytes, it is."""
    if op_cls not in GENERATORS:
        pytest.fail(f"{op_cls.__name__} has no input generator (see GENERATORS)")
    op, t = GENERATORS[op_cls](data)
    meta = meta_of(t)
    planned = op.shape(meta)  # valid by construction: a refusal is a failure too
    out = op.data(t)
    assert meta_of(out) == planned, op.describe()
    span = op.byte_span(meta)
    if span is not None:
        off, n = span
        assert torch.equal(raw_bytes(t)[off:off + n], raw_bytes(out)), op.describe()
    assert isinstance(op.describe(), str) and op.describe()


@settings(max_examples=150, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=6), data=st.data())
def test_permute_copy_equals_torch_permute(shape, data):
    """The fast transpose path (merged dims, two-step reversal) gives torch's answer exactly."""
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    t = torch.arange(max(1, np.prod(shape, dtype=int)), dtype=torch.float32).reshape(shape)
    out = permute_copy(t, perm)
    assert out.is_contiguous() and torch.equal(out, t.permute(perm).contiguous())
    assert out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()  # a copy, never a view


def slice_op(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if data.draw(st.booleans()):
        idx = tuple(data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4)))
        return Slice(axis, index=idx)
    return Slice(axis, data.draw(st.none() | st.integers(-n, n)), data.draw(st.none() | st.integers(-n, n)),
                 data.draw(st.none() | st.integers(1, 3)))


@settings(max_examples=150, deadline=None)
@given(shape=shapes, data=st.data())
def test_byte_span_is_the_slice(shape, data):
    """Where a slice claims to be one run of the input's bytes, those bytes are its result."""
    op = slice_op(shape, data)
    t = random_tensor(data, shape, "float32")
    try:
        span = op.byte_span(meta_of(t))
    except OpError:
        return
    raw = t.reshape(-1).view(torch.uint8)
    if span is not None:
        off, n = span
        assert torch.equal(raw[off:off + n], op.data(t).contiguous().reshape(-1).view(torch.uint8))
    if op.axis % len(shape) == 0 and (op.index is None or len(op.index) == 1) and (op.step in (None, 1)):
        assert span is not None  # whole-row runs are always copied, never computed


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data())
def test_slice_faces_agree(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    n = shape[axis]
    if data.draw(st.booleans()):
        idx = tuple(data.draw(st.lists(st.integers(-n, n - 1), min_size=1, max_size=4)))
        op = Slice(axis, index=idx)
    else:
        op = Slice(axis, data.draw(st.none() | st.integers(-n, n)), data.draw(st.none() | st.integers(-n, n)),
                   data.draw(st.none() | st.integers(1, 3)))
    agree(op, random_tensor(data, shape, "float32"))  # may be refused: out of range or empty


@settings(max_examples=80, deadline=None)
@given(shape=shapes, data=st.data(), fill=st.sampled_from(["zeros", "constant", "normal", "default", "mean", "repeat"]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_pad_faces_agree(shape, data, fill, dtype):
    axis = data.draw(st.integers(0, len(shape) - 1))
    size = shape[axis] + data.draw(st.integers(0, 4))
    op = Pad(axis, size, fill, value=0.5, std=0.1, seed=3, fan_in=9)
    t = random_tensor(data, shape, dtypes.from_torch(dtype))
    agree(op, t)
    out = op.data(t)
    # the existing slices are untouched
    assert torch.equal(out.narrow(axis, 0, shape[axis]), t)


def test_reshape_refused_and_constant_without_input():
    with pytest.raises(OpError, match="cannot reshape"):
        Reshape((5,)).shape(TensorMeta((3, 4)))
    c = Constant(TensorMeta((), "int64"), 0)  # a source: the executor calls it with no input
    assert meta_of(c.data()) == c.shape()


@pytest.mark.parametrize("dtype,value,fits", [
    ("uint8", -1, False), ("uint8", 255, True), ("uint8", 256, False), ("int8", -128, True), ("int8", 300, False),
    ("int64", 0.5, False), ("int32", float("nan"), False), ("bool", 2, False), ("bool", 1, True),
    ("float16", 65504, True), ("float16", 1e5, False), ("float32", 1e40, False), ("float32", float("inf"), True),
    ("float8_e4m3fn", 448, True), ("float8_e4m3fn", 500, False), ("float64", 1e300, True),
])
def test_what_a_dtype_can_hold(dtype, value, fits):
    assert dtypes.fits(dtype, value) is fits
    if dtype != "bool" and fits and value == value:  # torch agrees where it can tell (bool: anything goes)
        torch.full((1,), value, dtype=dtypes.torch_dtype(dtype))


def test_a_fill_value_the_dtype_cannot_hold_is_refused_at_plan_time():
    """Found by test_shape_face_equals_data_face: the planner accepted ``fill: constant, value: 300``
    for an int8 tensor and the executor died ("internal error: RuntimeError: value cannot be
    converted to type int8_t without overflow"); 0.5 was silently written as 0."""
    for dtype, value in [("int8", 300), ("uint8", -1), ("int64", 0.5), ("float16", 1e5)]:
        with pytest.raises(OpError, match=f"does not fit dtype {dtype}"):
            Pad(0, 5, "constant", value=value).shape(TensorMeta((3,), dtype))
    assert Pad(0, 5, "constant", value=-3).shape(TensorMeta((3,), "int8")) == TensorMeta((5,), "int8")


def test_pad_smaller_and_slice_out_of_range_are_errors():
    with pytest.raises(OpError, match="smaller"):
        Pad(0, 5).shape(TensorMeta((10, 3)))
    with pytest.raises(OpError, match="out of range"):
        Slice(0, 0, 20).shape(TensorMeta((10, 3)))
    with pytest.raises(OpError, match="out of range"):
        Slice(2, 0, 1).shape(TensorMeta((10, 3)))
    with pytest.raises(OpError, match="rank-4"):
        Transpose(layouts.parse("HWIO->OIHW"), "HWIO->OIHW").shape(TensorMeta((10,)))


@pytest.mark.parametrize("layout,perm", [("HWIO->OIHW", (3, 2, 0, 1)), ("IO->OI", (1, 0)), ("WIO->OIW", (2, 1, 0)),
                                          ("DHWIO->OIDHW", (4, 3, 0, 1, 2)), ("OIHW->HWIO", (2, 3, 1, 0))])
def test_layout_permutations(layout, perm):
    assert layouts.parse(layout) == perm
    src, dst = layout.split("->")
    assert layouts.parse(f"{dst}->{src}") == layouts.inverse(perm)


def conv2d_nhwc_hwio(x, k, b):
    """Reference TensorFlow-semantics convolution in numpy: NHWC input, HWIO kernel, 'valid'."""
    n, h, w, _ = x.shape
    kh, kw, _, o = k.shape
    out = np.zeros((n, h - kh + 1, w - kw + 1, o))
    for i in range(h - kh + 1):
        for j in range(w - kw + 1):
            patch = x[:, i:i + kh, j:j + kw, :]
            out[:, i, j, :] = np.tensordot(patch, k, axes=([1, 2, 3], [0, 1, 2]))
    return out + b


def test_hwio_to_oihw_is_numerically_the_same_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8, 3))
    k = rng.standard_normal((3, 5, 3, 7))  # HWIO, non-square so a wrong permutation shows
    b = rng.standard_normal(7)
    ref = conv2d_nhwc_hwio(x, k, b)
    w = Transpose(layouts.parse("HWIO->OIHW")).data(torch.from_numpy(k))
    assert tuple(w.shape) == (7, 3, 3, 5)
    got = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), w, torch.from_numpy(b))
    # float64 throughout, torch's conv vs a numpy loop: rounding only (~1e-14 on values of ~10)
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), ref, atol=1e-10)
    # the wrong permutation (a plain reshape with the same element count) does not agree
    bad = torch.from_numpy(k).reshape(7, 3, 3, 5)
    wrong = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), bad, torch.from_numpy(b))
    assert not np.allclose(wrong.permute(0, 2, 3, 1).numpy(), ref)


def test_reversal_in_many_tiles_equals_torch(monkeypatch):
    from ckptfix.rules import ops

    monkeypatch.setattr(ops, "BLOCK", 64)  # 8x8 tiles: many tiles, short ones at the edges
    for seed, shape in enumerate([(3, 3, 5, 7), (1, 1, 4, 9), (2, 1, 3, 5), (5, 4, 1, 3), (2, 2, 17, 9), (1, 3, 20, 11)]):
        t = seeded_randn(*shape, seed=seed)
        assert torch.equal(ops._reverse3(t.reshape(shape[0] * shape[1], shape[2], shape[3])),
                           t.reshape(-1, shape[2], shape[3]).permute(2, 1, 0).contiguous())
    t = seeded_randn(4, 6, 5).to(torch.bfloat16)
    assert torch.equal(ops._reverse3(t), t.permute(2, 1, 0).contiguous())
    big = seeded_randn(3, 3, 64, 256)  # over 1 MiB: permute_copy tiles it
    assert torch.equal(permute_copy(big, (3, 2, 0, 1)), big.permute(3, 2, 0, 1).contiguous())
