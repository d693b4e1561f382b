"""Each op's shape face agrees with its data face; layouts are numerically right."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptfix import dtypes, layouts
from ckptfix.rules.ops import Cast, Constant, Depthwise, OpError, Pad, Reshape, Slice, Transpose, permute_copy
from ckptfix.tensors import TensorMeta

shapes = st.lists(st.integers(1, 5), min_size=1, max_size=5)


def meta_of(t):
    return TensorMeta(tuple(t.shape), dtypes.from_torch(t.dtype))


def agree(op, t):
    try:
        planned = op.shape(meta_of(t))
    except OpError:
        return  # the planner refuses: the data face is never called
    assert meta_of(op.data(t)) == planned


@settings(max_examples=60, deadline=None)
@given(shape=shapes, data=st.data())
def test_transpose_faces_agree(shape, data):
    perm = data.draw(st.permutations(range(len(shape))))
    agree(Transpose(tuple(perm)), torch.randn(shape))


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
    t = torch.randn(shape)
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
    agree(op, torch.randn(shape))


@settings(max_examples=80, deadline=None)
@given(shape=shapes, data=st.data(), fill=st.sampled_from(["zeros", "constant", "normal", "default", "mean", "repeat"]),
       dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_pad_faces_agree(shape, data, fill, dtype):
    axis = data.draw(st.integers(0, len(shape) - 1))
    size = shape[axis] + data.draw(st.integers(0, 4))
    op = Pad(axis, size, fill, value=0.5, std=0.1, seed=3, fan_in=9)
    t = torch.randn(shape).to(dtype)
    agree(op, t)
    out = op.data(t)
    # the existing slices are untouched
    assert torch.equal(out.narrow(axis, 0, shape[axis]), t)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, dtype=st.sampled_from(["float32", "float16", "bfloat16"]))
def test_cast_faces_agree(shape, dtype):
    agree(Cast(dtype), torch.randn(shape))


@settings(max_examples=40, deadline=None)
@given(kh=st.integers(1, 4), kw=st.integers(1, 4), c=st.integers(1, 4), m=st.integers(1, 3))
def test_depthwise_faces_agree(kh, kw, c, m):
    agree(Depthwise(), torch.randn(kh, kw, c, m))


def test_reshape_and_constant_faces_agree():
    agree(Reshape((6, 2)), torch.randn(3, 4))
    agree(Reshape((5,)), torch.randn(3, 4))  # refused by the shape face
    c = Constant(TensorMeta((), "int64"), 0)
    assert meta_of(c.data()) == c.shape()


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
    np.testing.assert_allclose(got.permute(0, 2, 3, 1).numpy(), ref, atol=1e-10)
    # the wrong permutation (a plain reshape with the same element count) does not agree
    bad = torch.from_numpy(k).reshape(7, 3, 3, 5)
    wrong = torch.nn.functional.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), bad, torch.from_numpy(b))
    assert not np.allclose(wrong.permute(0, 2, 3, 1).numpy(), ref)


def test_reversal_in_many_tiles_equals_torch(monkeypatch):
    from ckptfix.rules import ops

    monkeypatch.setattr(ops, "BLOCK", 64)  # 8x8 tiles: many tiles, short ones at the edges
    for shape in [(3, 3, 5, 7), (1, 1, 4, 9), (2, 1, 3, 5), (5, 4, 1, 3), (2, 2, 17, 9), (1, 3, 20, 11)]:
        t = torch.randn(shape)
        assert torch.equal(ops._reverse3(t.reshape(shape[0] * shape[1], shape[2], shape[3])),
                           t.reshape(-1, shape[2], shape[3]).permute(2, 1, 0).contiguous())
    t = torch.randn(4, 6, 5).to(torch.bfloat16)
    assert torch.equal(ops._reverse3(t), t.permute(2, 1, 0).contiguous())
    big = torch.randn(3, 3, 64, 256)  # over 1 MiB: permute_copy tiles it
    assert torch.equal(permute_copy(big, (3, 2, 0, 1)), big.permute(3, 2, 0, 1).contiguous())
