"""The fine-tuning ops against timm and against what they promise to preserve.

Reference: tensors written by timm 1.0.31's own ``adapt_input_conv``, ``resample_abs_pos_embed``
and ``resample_patch_embed`` (tools/make_timm_refs.py, tests/data/timm_ref/). The properties are
checked on generated shapes (hypothesis, seeded): each op's shape face agrees with its data face,
and what the docstring says is preserved is preserved, in float64 where the claim is exact.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from ckptfix.rules.channels import Fresh, InChannels, Select, Selection
from ckptfix.rules.ops import OpError
from ckptfix.rules.resample import ResamplePosEmbed, ResizeKernel, square_grid
from ckptfix.tensors import TensorMeta
from conftest import DATA

REF = DATA / "timm_ref"
CASES = {c["case"]: c for c in json.loads((REF / "cases.json").read_text())["cases"]}
TENSORS = load_file(REF / "refs.safetensors")


def _op_for(case: dict, x: torch.Tensor):
    a = case["resolved_args"]
    if case["function"].endswith("adapt_input_conv"):
        n = a["in_chans"]
        return InChannels(n, "sum" if n == 1 else "repeat")
    if case["function"].endswith("resample_abs_pos_embed"):
        old = tuple(a["old_size"]) if a["old_size"] else square_grid(x.shape[1], a["num_prefix_tokens"])
        return ResamplePosEmbed(old, tuple(a["new_size"]), a["num_prefix_tokens"], a["interpolation"], a["antialias"])
    return ResizeKernel(tuple(a["new_size"]), "pi", a["interpolation"], a["antialias"])


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_timm(case):
    """Every case within 1e-6 of what timm computed (the issue's bar), through both faces."""
    x, want = TENSORS[f"{case}.input"], TENSORS[f"{case}.output"]
    op = _op_for(CASES[case], x)
    assert op.shape(TensorMeta(tuple(x.shape), "float32")).shape == tuple(want.shape)
    got = op.data(x.clone())
    assert got.shape == want.shape and got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_the_reference_covers_what_the_issue_names():
    assert {CASES[f"adapt_{n}"]["resolved_args"]["in_chans"] for n in (1, 2, 4, 13)} == {1, 2, 4, 13}
    assert CASES["pos_14_24"]["input_shape"] == [1, 197, 32] and CASES["pos_14_24"]["output_shape"] == [1, 577, 32]
    assert CASES["pos_nonsquare"]["resolved_args"]["old_size"] == [12, 16]
    assert [CASES[c]["output_shape"][2:] for c in ("patch_16_14", "patch_16_8")] == [[14, 14], [8, 8]]


# --- input channels ------------------------------------------------------------------------

conv_shapes = st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 4), st.integers(1, 4))


def _w(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@given(conv_shapes, st.integers(1, 3), st.integers(0, 2**16))
def test_sum_gives_a_gray_image_the_same_activations(shape, n_div, seed):
    """mode sum: conv(x', w') == conv(x, w) where channel j of w' sums its C/N group and x repeats
    each gray channel over its group (N = 1: the gray image copied into every channel)."""
    o, c, kh, kw = shape
    n = c if c % n_div else c // n_div or 1
    if c % n:
        n = 1
    w = _w((o, c, kh, kw), seed)
    op = InChannels(n, "sum")
    w2 = op.data(w)
    assert tuple(w2.shape) == op.shape(TensorMeta(w.shape, "float64")).shape == (o, n, kh, kw)
    gray = _w((2, n, kh + 3, kw + 2), seed + 1)
    x = gray.repeat_interleave(c // n, dim=1)
    torch.testing.assert_close(F.conv2d(gray, w2), F.conv2d(x, w), rtol=1e-12, atol=1e-12)


@given(conv_shapes, st.integers(1, 4), st.integers(0, 2**16))
def test_repeat_is_exact_for_channels_that_repeat_the_image(shape, k, seed):
    o, c, kh, kw = shape
    n = c * k
    w = _w((o, c, kh, kw), seed)
    w2 = InChannels(n, "repeat").data(w)
    torch.testing.assert_close(w2, w.repeat(1, k, 1, 1) * (c / n), rtol=0, atol=0)
    x = _w((1, c, kh + 2, kw + 2), seed + 1)
    torch.testing.assert_close(F.conv2d(x.repeat(1, k, 1, 1), w2), F.conv2d(x, w), rtol=1e-12, atol=1e-12)


@given(conv_shapes, st.integers(0, 5), st.integers(0, 2**16))
def test_keep_zeros_ignores_the_new_channels(shape, extra, seed):
    """mode keep, fill zeros: whatever the new channels hold, the old channels give the old output."""
    o, c, kh, kw = shape
    w = _w((o, c, kh, kw), seed)
    w2 = InChannels(c + extra, "keep").data(w)
    x = _w((1, c, kh + 1, kw + 1), seed + 1)
    noise = _w((1, extra, kh + 1, kw + 1), seed + 2) * 100
    torch.testing.assert_close(F.conv2d(torch.cat([x, noise], 1), w2), F.conv2d(x, w), rtol=1e-12, atol=1e-12)


def test_keep_with_a_map_and_mean():
    w = _w((4, 3, 3, 3))
    nir = InChannels(4, "keep", map=((3, (0,)),)).data(w)
    assert torch.equal(nir[:, :3], w) and torch.equal(nir[:, 3], w[:, 0])            # NIR from red
    bgr = InChannels(3, "keep", map=((0, (2,)), (2, (0,)))).data(w)
    assert torch.equal(bgr, w[:, [2, 1, 0]])                                            # a reorder
    both = InChannels(2, "keep", map=((1, (1, 2)),)).data(w)
    assert torch.equal(both[:, 0], w[:, 0]) and torch.allclose(both[:, 1], w[:, 1] + w[:, 2])
    mean = InChannels(5, "keep", fill="mean").data(w)
    torch.testing.assert_close(mean[:, 3:], w.mean(1, keepdim=True).expand(4, 2, 3, 3))


def test_in_channels_refusals_and_dtypes():
    meta = TensorMeta((4, 6, 3, 3), "float16")
    with pytest.raises(OpError, match="4 does not divide 6"):
        InChannels(4, "sum").shape(meta)
    with pytest.raises(OpError, match="source channel 6 is out of range"):
        InChannels(7, "keep", map=((6, (6,)),)).shape(meta)
    with pytest.raises(OpError, match="floating-point"):
        InChannels(1, "sum").shape(TensorMeta((4, 3, 3, 3), "int8"))
    with pytest.raises(OpError, match="rank >= 2"):
        InChannels(1, "sum").shape(TensorMeta((4,), "float32"))
    w = _w((4, 6, 3, 3), dtype=torch.float16)
    out = InChannels(2, "sum").data(w)   # float16 summed in float32, as timm
    assert out.dtype == torch.float16
    torch.testing.assert_close(out, w.float().reshape(4, 2, 3, 3, 3).sum(2).half())


# --- kernels and position embeddings -------------------------------------------------------

@given(st.integers(2, 6), st.integers(2, 6), st.integers(0, 4), st.integers(0, 4), st.integers(0, 2**16))
def test_pi_resize_keeps_the_token_of_a_resized_patch(h, w, dh, dw, seed):
    """FlexiViT's property, for a kernel that grows: <resize(x), w'> = <x, w> for any patch x
    (float32 arithmetic: compared at 1e-4 of the token's scale)."""
    new = (h + dh, w + dw)
    k = _w((3, 2, h, w), seed, torch.float32)
    op = ResizeKernel(new, "pi")
    k2 = op.data(k)
    assert tuple(k2.shape) == op.shape(TensorMeta(k.shape, "float32")).shape == (3, 2, *new)
    x = _w((5, 2, h, w), seed + 1, torch.float32)
    xr = F.interpolate(x, size=new, mode="bicubic", antialias=True, align_corners=False)
    tok, tok2 = torch.einsum("nihw,oihw->no", x, k), torch.einsum("nihw,oihw->no", xr, k2)
    torch.testing.assert_close(tok2, tok, rtol=1e-4, atol=1e-4 * float(tok.abs().max()))


def test_interpolated_kernels_are_interpolate():
    k = _w((2, 3, 5, 5), dtype=torch.float32)
    for method in ("bilinear", "bicubic"):
        got = ResizeKernel((7, 3), method).data(k)
        want = F.interpolate(k.reshape(6, 1, 5, 5), size=(7, 3), mode=method, antialias=True,
                             align_corners=False).reshape(2, 3, 7, 3)
        assert torch.equal(got, want)
    with pytest.raises(OpError, match="rank-4"):
        ResizeKernel((3, 3)).shape(TensorMeta((4, 3, 5), "float32"))


@given(st.integers(0, 3), st.tuples(st.integers(1, 7), st.integers(1, 7)), st.tuples(st.integers(1, 9), st.integers(1, 9)),
       st.integers(1, 5), st.booleans(), st.integers(0, 2**16))
def test_pos_embed_faces_prefix_and_constants(prefix, old, new, dim, batched, seed):
    """Any prefix and grids, (1, N, D) or (N, D): the faces agree, the prefix tokens are kept
    bit for bit, and a constant grid stays constant (each output is a weighted mean)."""
    n = prefix + old[0] * old[1]
    x = _w((1, n, dim) if batched else (n, dim), seed, torch.float32)
    grid = x[..., prefix:, :]
    const = torch.arange(dim, dtype=torch.float32)
    grid[...] = const
    op = ResamplePosEmbed(old, new, prefix)
    y = op.data(x)
    assert tuple(y.shape) == op.shape(TensorMeta(tuple(x.shape), "float32")).shape
    assert torch.equal(y[..., :prefix, :], x[..., :prefix, :])
    torch.testing.assert_close(y[..., prefix:, :], const.expand_as(y[..., prefix:, :]), rtol=1e-5, atol=1e-5)


def test_pos_embed_refusals():
    with pytest.raises(OpError, match="197 tokens, but 1 prefix \\+ 12x12"):
        ResamplePosEmbed((12, 12), (24, 24)).shape(TensorMeta((1, 197, 8), "float32"))
    with pytest.raises(OpError, match="batch 1"):
        ResamplePosEmbed((14, 14), (24, 24)).shape(TensorMeta((2, 197, 8), "float32"))
    assert square_grid(197, 1) == (14, 14) and square_grid(197, 0) is None and square_grid(1, 1) is None


# --- drawn afresh, chosen by L1 --------------------------------------------------------------

def test_fresh_is_pytorch_default_distribution_and_seeded():
    t = torch.zeros(4000, 250)
    a, b, c = Fresh("default", 1, 250).data(t), Fresh("default", 1, 250).data(t), Fresh("default", 2, 250).data(t)
    bound = 1 / 250 ** 0.5
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.abs().max()) <= bound and float(a.abs().max()) > 0.99 * bound   # uniform(-b, b), as reset_parameters
    assert abs(float(a.mean())) < 0.01 * bound


@given(st.integers(1, 12), st.integers(1, 4), st.integers(0, 2**16))
def test_l1_selection_keeps_the_largest_norms_in_order(out, keep, seed):
    keep = min(keep, out)
    w = _w((out, 3, 2, 2), seed)
    sel = Selection("w", "w", (), 0, keep)
    idx = sel.resolve(lambda name: w)
    norms = w.abs().sum((1, 2, 3))
    assert list(idx) == sorted(idx) and len(set(idx)) == keep
    assert float(norms[list(idx)].min()) >= float(max((norms[i] for i in range(out) if i not in idx), default=-1))
    op = Select(0, sel)
    assert torch.equal(op.data(w), w[list(idx)])
    assert op.shape(TensorMeta(tuple(w.shape), "float64")).shape == (keep, 3, 2, 2)
    assert torch.equal(Select(1, sel, block=2).data(torch.arange(2 * out * 2.0).reshape(2, 2 * out)),
                       torch.arange(2 * out * 2.0).reshape(2, 2 * out)[:, [c * 2 + j for c in idx for j in (0, 1)]])


def test_a_pi_resize_too_big_to_compute_is_refused_at_plan_time():
    with pytest.raises(OpError, match="PI-resize of a 64x64 kernel to 512x512 needs a 262,144 x 4,096 matrix"):
        ResizeKernel((512, 512), "pi").shape(TensorMeta((8, 3, 64, 64), "float32"))
    with pytest.raises(OpError, match="PI-resize of a 256x256 kernel to 8x8 needs a 65,536 x 65,536 matrix"):
        ResizeKernel((8, 8), "pi").shape(TensorMeta((1, 1, 256, 256), "float32"))   # the basis counts (eye(old))
    with pytest.raises(OpError, match="empty kernel"):
        ResizeKernel((8, 8), "pi").shape(TensorMeta((0, 3, 16, 16), "float32"))
    assert ResizeKernel((512, 512), "bicubic").shape(TensorMeta((8, 3, 64, 64), "float32")).shape == (8, 3, 512, 512)
