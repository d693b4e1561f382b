"""The layer-aware Keras/TF -> PyTorch conversions, proven numerically.

A numpy reference of TensorFlow's semantics (NHWC inputs, HWIO kernels) is written here and
checked first against the real fixtures (outputs recorded by Keras itself) and against TF's own
definitions (depthwise = block-diagonal conv, Conv2DTranspose = adjoint of Conv2D). Then, for each
layer kind whose layout is easy to get wrong, random TF-layout weights go through
``ckptfix apply`` and the converted PyTorch module must compute what the reference computes;
the usual wrong conversions are shown *not* to, so these tests can fail.
"""

import itertools

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from conftest import KERAS

# The converted torch module runs in float32 and the reference in float64, in another order: they
# agree up to float32 rounding. Outputs here are O(1)-O(10) from sums of <= 100 products, so a few
# ulps are ~1e-6 (the largest difference seen is 1.8e-6, in the conv3d test); an absolute 1e-5
# keeps a margin and is still 1000x below what a wrong conversion misses by (WRONG).
ATOL = 1e-5
WRONG = 1e-2  # a wrong conversion misses the reference by far more than this


# ---------------------------------------------------------------------------------------------
# numpy reference of TensorFlow semantics (float64 throughout)


def _f64(*arrays):
    return [None if a is None else np.asarray(a, dtype=np.float64) for a in arrays]


def _same_pad(x, ks):
    """TF 'same' with stride 1 and odd kernels: k//2 on both sides of every spatial axis."""
    assert all(k % 2 == 1 for k in ks), "TF 'same' is symmetric only for odd kernels"
    return np.pad(x, [(0, 0)] + [(k // 2, k // 2) for k in ks] + [(0, 0)])


def conv_nd(x, k, b=None, padding="valid", stride=1):
    """TF ConvND: x (N, *spatial, Cin), k (*ks, Cin, Cout)."""
    x, k, b = _f64(x, k, b)
    nd = k.ndim - 2
    assert x.ndim == nd + 2 and x.shape[-1] == k.shape[-2]
    ks = k.shape[:nd]
    if padding == "same":
        assert stride == 1
        x = _same_pad(x, ks)
    out_sp = [(x.shape[1 + i] - ks[i]) // stride + 1 for i in range(nd)]
    y = np.zeros((x.shape[0], *out_sp, k.shape[-1]))
    for off in itertools.product(*map(range, ks)):
        win = x[(slice(None),) + tuple(slice(o, o + (n - 1) * stride + 1, stride) for o, n in zip(off, out_sp))]
        y += win @ k[off]
    return y if b is None else y + b


def conv1d(x, k, b=None, padding="valid"):  # NWC, (k, in, out)
    assert x.ndim == 3 and k.ndim == 3
    return conv_nd(x, k, b, padding)


def conv2d(x, k, b=None, padding="valid", stride=1):  # NHWC, HWIO
    assert x.ndim == 4 and k.ndim == 4
    return conv_nd(x, k, b, padding, stride)


def conv3d(x, k, b=None, padding="valid"):  # NDHWC, DHWIO
    assert x.ndim == 5 and k.ndim == 5
    return conv_nd(x, k, b, padding)


def depthwise_conv2d(x, k, b=None, padding="valid"):
    """TF DepthwiseConv2D: k (kh, kw, C, M); output channel c*M + j."""
    x, k, b = _f64(x, k, b)
    kh, kw, c, m = k.shape
    assert x.shape[-1] == c
    if padding == "same":
        x = _same_pad(x, (kh, kw))
    n, h, w, _ = x.shape
    ho, wo = h - kh + 1, w - kw + 1
    y = np.zeros((n, ho, wo, c, m))
    for a, bb in itertools.product(range(kh), range(kw)):
        y += x[:, a:a + ho, bb:bb + wo, :, None] * k[a, bb]
    y = y.reshape(n, ho, wo, c * m)
    return y if b is None else y + b


def separable_conv2d(x, dk, pk, b=None, padding="valid"):
    """TF SeparableConv2D: depthwise (kh, kw, C, M) without bias, then 1x1 pointwise (1, 1, C*M, out) + bias."""
    assert pk.shape[:2] == (1, 1)
    return conv2d(depthwise_conv2d(x, dk, None, padding), pk, b)


def conv2d_transpose(x, k, b=None, stride=1):
    """TF Conv2DTranspose, 'valid': k (kh, kw, out, in); output size (H-1)*s + kh."""
    x, k, b = _f64(x, k, b)
    kh, kw, co, ci = k.shape
    n, h, w, c = x.shape
    assert c == ci
    s = stride
    y = np.zeros((n, (h - 1) * s + kh, (w - 1) * s + kw, co))
    for i, j in itertools.product(range(h), range(w)):
        y[:, i * s:i * s + kh, j * s:j * s + kw, :] += np.einsum("nc,abdc->nabd", x[:, i, j, :], k)
    return y if b is None else y + b


def batch_norm(x, gamma, beta, mean, var, eps=1e-3):
    """Keras BatchNormalization in inference (default epsilon 1e-3), channels last."""
    x, gamma, beta, mean, var = _f64(x, gamma, beta, mean, var)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def dense(x, k, b=None):  # (N, in) @ (in, out)
    x, k, b = _f64(x, k, b)
    return x @ k if b is None else x @ k + b


def flatten(x):  # Keras Flatten of NHWC: (N, H*W*C), index (h*W + w)*C + c
    return np.asarray(x).reshape(x.shape[0], -1)


def global_avg_pool(x):  # over every spatial axis, channels last
    return np.asarray(x).mean(axis=tuple(range(1, x.ndim - 1)))


def relu(x):
    return np.maximum(x, 0)


# ---------------------------------------------------------------------------------------------
# the reference itself: against Keras' recorded outputs and TF's definitions


def test_reference_matches_keras_tiny_cnn():
    w = np.load(KERAS / "tiny_cnn.npz")
    io = np.load(KERAS / "tiny_cnn_io.npz")
    h = conv2d(io["x"], w["conv1/kernel"], w["conv1/bias"], "same")
    h = relu(batch_norm(h, w["bn1/gamma"], w["bn1/beta"], w["bn1/moving_mean"], w["bn1/moving_variance"]))
    h = relu(conv2d(h, w["conv2/kernel"], w["conv2/bias"], "same"))
    y = dense(global_avg_pool(h), w["fc/kernel"], w["fc/bias"])
    np.testing.assert_allclose(y, io["y"], atol=ATOL, rtol=0)
    # and the reference is sensitive to what the layouts tests rely on
    bad = conv2d(io["x"], w["conv1/kernel"], w["conv1/bias"], "valid")
    assert bad.shape != (2, 8, 8, 8)
    swapped = conv2d(io["x"], w["conv1/kernel"].transpose(1, 0, 2, 3), w["conv1/bias"], "same")
    assert np.abs(swapped - conv2d(io["x"], w["conv1/kernel"], w["conv1/bias"], "same")).max() > WRONG


def test_reference_matches_keras_conv1d():
    w = np.load(KERAS / "conv1d.npz")
    io = np.load(KERAS / "conv1d_io.npz")
    h = relu(conv1d(io["x"], w["conv1d/kernel"], w["conv1d/bias"], "same"))
    h = conv1d(h, w["conv1d_1/kernel"], w["conv1d_1/bias"], "valid")
    y = dense(global_avg_pool(h), w["dense/kernel"], w["dense/bias"])
    np.testing.assert_allclose(y, io["y"], atol=ATOL, rtol=0)


def test_reference_depthwise_is_block_diagonal_conv():
    """tf.nn.depthwise_conv2d: output[..., c*M + j] = sum input[..., c] * filter[.., .., c, j]."""
    rng = np.random.default_rng(0)
    c, m = 3, 2
    k = rng.normal(size=(3, 3, c, m))
    full = np.zeros((3, 3, c, c * m))
    for ci, j in itertools.product(range(c), range(m)):
        full[:, :, ci, ci * m + j] = k[:, :, ci, j]
    x = rng.normal(size=(2, 6, 5, c))
    for pad in ("valid", "same"):
        # two float64 computations of the same sums in another order: rounding ~1e-15
        np.testing.assert_allclose(depthwise_conv2d(x, k, padding=pad), conv2d(x, full, padding=pad), atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_reference_conv_transpose_is_adjoint_of_conv(stride):
    """Conv2DTranspose is the gradient of Conv2D: <conv(z, k), x> == <conv_transpose(x, k), z>, where the
    transposed layer's kernel (kh, kw, out, in) is the forward conv's HWIO kernel."""
    rng = np.random.default_rng(1)
    k = rng.normal(size=(3, 2, 4, 5))  # transposed: out=4, in=5; forward conv: in=4, out=5
    x = rng.normal(size=(2, 3, 4, 5))
    y = conv2d_transpose(x, k, stride=stride)
    z = rng.normal(size=y.shape)
    fwd = conv2d(z, k, stride=stride)
    assert fwd.shape == x.shape
    np.testing.assert_allclose(np.vdot(fwd, x), np.vdot(y, z), rtol=1e-10)  # float64 rounding only


# ---------------------------------------------------------------------------------------------
# conversions through the CLI


RNG_SCALE = 0.3


def rand(rng, *shape):
    return (rng.normal(size=shape) * RNG_SCALE).astype(np.float32)


def convert(cli, tmp_path, weights: dict, rules: str, *extra_rules) -> dict:
    src = tmp_path / "w.npz"
    np.savez(src, **weights)
    rf = tmp_path / "rules.yaml"
    rf.write_text(rules)
    out = tmp_path / "out.safetensors"
    args = ["apply", src]
    for r in (rf, *extra_rules):
        args += ["-r", r]
    r = cli(*args, "-o", out)
    assert r.exit_code == 0, r.stderr + r.stdout
    return load_file(out)


def run_torch(module, state, x_channels_last):
    """Load ``state`` strictly and feed the channels-first transpose of ``x``; return channels-last output."""
    module.load_state_dict({k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in state.items()}, strict=True)
    module.eval()
    nd = x_channels_last.ndim
    to_first = (0, nd - 1, *range(1, nd - 1))
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x_channels_last.transpose(to_first)))).numpy()
    return y.transpose(0, *range(2, y.ndim), 1) if y.ndim > 2 else y


def assert_matches(module, state, x, ref):
    y = run_torch(module, state, x)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=ATOL, rtol=0)


def assert_wrong(module, state, x, ref):
    """A wrong conversion still loads (same shapes) but computes something else."""
    y = run_torch(module, state, x)
    assert y.shape == ref.shape
    assert np.abs(y - ref).max() > WRONG


class Sep(nn.Module):
    def __init__(self, c, m, out, k, padding):
        super().__init__()
        self.depthwise = nn.Conv2d(c, c * m, k, padding=padding, groups=c, bias=False)
        self.pointwise = nn.Conv2d(c * m, out, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class Wrap(nn.Module):
    """Put a module under a layer name (``dw.weight``) without a Sequential's index."""

    def __init__(self, **mods):
        super().__init__()
        for k, v in mods.items():
            setattr(self, k, v)
        self._first = next(iter(mods))

    def forward(self, x):
        return getattr(self, self._first)(x)


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("m", [1, 2])
def test_depthwise_conv2d(cli, tmp_path, m, padding):
    rng = np.random.default_rng(10 + m)
    c, kh, kw = 3, 3, 3
    k, b = rand(rng, kh, kw, c, m), rand(rng, c * m)
    x = rng.normal(size=(2, 7, 6, c)).astype(np.float32)
    ref = depthwise_conv2d(x, k, b, padding)
    state = convert(cli, tmp_path, {"dw/kernel": k, "dw/bias": b}, """
rules:
  - transpose: {keys: '^dw/kernel$', layout: HWCM->OIHW}
  - rename: {map: {'dw/kernel': dw.weight, 'dw/bias': dw.bias}}
""")
    assert tuple(state["dw.weight"].shape) == (c * m, 1, kh, kw)

    def net():
        return Wrap(dw=nn.Conv2d(c, c * m, (kh, kw), padding=padding, groups=c))

    assert_matches(net(), state, x, ref)
    # wrong: a plain reshape of the TF kernel
    assert_wrong(net(), {"dw.weight": k.reshape(c * m, 1, kh, kw), "dw.bias": b}, x, ref)
    if m > 1:  # wrong: Conv2D's permutation then reshape -> channel order j*C + c instead of c*M + j
        assert_wrong(net(), {"dw.weight": k.transpose(3, 2, 0, 1).reshape(c * m, 1, kh, kw), "dw.bias": b}, x, ref)


@pytest.mark.parametrize("m", [1, 2])
def test_separable_conv2d(cli, tmp_path, m):
    rng = np.random.default_rng(20 + m)
    c, out, kh, kw, padding = 3, 4, 3, 3, "same"
    dk, pk, b = rand(rng, kh, kw, c, m), rand(rng, 1, 1, c * m, out), rand(rng, out)
    x = rng.normal(size=(2, 6, 5, c)).astype(np.float32)
    ref = separable_conv2d(x, dk, pk, b, padding)
    state = convert(cli, tmp_path, {"sep/depthwise_kernel": dk, "sep/pointwise_kernel": pk, "sep/bias": b}, """
rules:
  - transpose: {keys: '^sep/depthwise_kernel$', layout: HWCM->OIHW}
  - transpose: {keys: '^sep/pointwise_kernel$', layout: HWIO->OIHW}
  - rename:
      map:
        'sep/depthwise_kernel': sep.depthwise.weight
        'sep/pointwise_kernel': sep.pointwise.weight
        'sep/bias': sep.pointwise.bias
""")
    assert set(state) == {"sep.depthwise.weight", "sep.pointwise.weight", "sep.pointwise.bias"}

    def net():
        return Wrap(sep=Sep(c, m, out, (kh, kw), padding=1))

    assert_matches(net(), state, x, ref)
    # wrong: plain reshapes of both kernels
    assert_wrong(net(), {"sep.depthwise.weight": dk.reshape(c * m, 1, kh, kw),
                         "sep.pointwise.weight": pk.reshape(out, c * m, 1, 1), "sep.pointwise.bias": b}, x, ref)
    if m > 1:  # wrong: depthwise channel order j*C + c
        assert_wrong(net(), {"sep.depthwise.weight": dk.transpose(3, 2, 0, 1).reshape(c * m, 1, kh, kw),
                             "sep.pointwise.weight": state["sep.pointwise.weight"].numpy(),
                             "sep.pointwise.bias": b}, x, ref)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_transpose(cli, tmp_path, stride):
    rng = np.random.default_rng(30 + stride)
    cin, cout, kh, kw = 5, 4, 3, 2
    k, b = rand(rng, kh, kw, cout, cin), rand(rng, cout)
    x = rng.normal(size=(2, 3, 4, cin)).astype(np.float32)
    ref = conv2d_transpose(x, k, b, stride)
    assert ref.shape == (2, (3 - 1) * stride + kh, (4 - 1) * stride + kw, cout)
    state = convert(cli, tmp_path, {"up/kernel": k, "up/bias": b}, """
rules:
  - transpose: {keys: '^up/kernel$', layout: HWOI->IOHW}
  - rename: {pattern: '^up/kernel$', replace: up.weight}
  - rename: {pattern: '^up/bias$', replace: up.bias}
""")
    assert tuple(state["up.weight"].shape) == (cin, cout, kh, kw)

    def net():
        return Wrap(up=nn.ConvTranspose2d(cin, cout, (kh, kw), stride=stride))

    assert_matches(net(), state, x, ref)
    good = state["up.weight"].numpy()
    # wrong: a plain reshape; flipping the spatial axes (right for Flax, wrong for Keras)
    assert_wrong(net(), {"up.weight": k.reshape(cin, cout, kh, kw), "up.bias": b}, x, ref)
    assert_wrong(net(), {"up.weight": good[:, :, ::-1, ::-1].copy(), "up.bias": b}, x, ref)


def test_conv3d(cli, tmp_path):
    rng = np.random.default_rng(40)
    cin, cout, ks = 2, 4, (2, 3, 4)
    k, b = rand(rng, *ks, cin, cout), rand(rng, cout)
    x = rng.normal(size=(2, 4, 5, 6, cin)).astype(np.float32)
    ref = conv3d(x, k, b)
    state = convert(cli, tmp_path, {"c3/kernel": k, "c3/bias": b}, """
rules:
  - transpose: {keys: '^c3/kernel$', layout: DHWIO->OIDHW}
  - rename: {map: {'{layer}/kernel': '{layer}.weight', '{layer}/bias': '{layer}.bias'}}
""")
    assert tuple(state["c3.weight"].shape) == (cout, cin, *ks)

    def net():
        return Wrap(c3=nn.Conv3d(cin, cout, ks))

    assert_matches(net(), state, x, ref)
    assert_wrong(net(), {"c3.weight": k.reshape(cout, cin, *ks), "c3.bias": b}, x, ref)


H, W, C, OUT = 3, 4, 5, 7  # non-square, all different: any wrong flatten order shows


class ConvFlattenDense(nn.Module):
    def __init__(self, cin):
        super().__init__()
        self.conv = nn.Conv2d(cin, C, 3)
        self.fc = nn.Linear(H * W * C, OUT)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


FLATTEN_RULES = """
rules:
  - transpose: {keys: '^conv/kernel$', layout: HWIO->OIHW}
  - transpose: {keys: '^fc/kernel$', layout: IO->OI}
  - rename: {pattern: '/kernel$', replace: '.weight'}
  - rename: {pattern: '/bias$', replace: '.bias'}
"""


def _flatten_case():
    rng = np.random.default_rng(50)
    cin = 2
    w = {"conv/kernel": rand(rng, 3, 3, cin, C), "conv/bias": rand(rng, C),
         "fc/kernel": rand(rng, H * W * C, OUT), "fc/bias": rand(rng, OUT)}
    x = rng.normal(size=(2, H + 2, W + 2, cin)).astype(np.float32)
    feat = relu(conv2d(x, w["conv/kernel"], w["conv/bias"]))
    assert feat.shape == (2, H, W, C)
    ref = dense(flatten(feat), w["fc/kernel"], w["fc/bias"])
    return cin, w, x, ref


def test_flatten_then_dense(cli, tmp_path):
    cin, w, x, ref = _flatten_case()
    rules = FLATTEN_RULES + f"  - flatten_order: {{keys: '^fc\\.weight$', hwc: [{H}, {W}, {C}]}}\n"
    state = convert(cli, tmp_path, w, rules)
    assert tuple(state["fc.weight"].shape) == (OUT, H * W * C)
    assert_matches(ConvFlattenDense(cin), state, x, ref)
    # the documented formula, for the record
    expect = w["fc/kernel"].T.reshape(OUT, H, W, C).transpose(0, 3, 1, 2).reshape(OUT, -1)
    np.testing.assert_array_equal(state["fc.weight"].numpy(), expect)
    # only H*W and C matter: hwc [W, H, C] is the same reordering ...
    (tmp_path / "swap").mkdir()
    same = convert(cli, tmp_path / "swap", w, FLATTEN_RULES +
                   f"  - flatten_order: {{keys: '^fc\\.weight$', hwc: [{W}, {H}, {C}]}}\n")
    assert_matches(ConvFlattenDense(cin), same, x, ref)
    # ... but a wrong channel count (same product) loads and misses
    (tmp_path / "bad").mkdir()
    bad = convert(cli, tmp_path / "bad", w, FLATTEN_RULES +
                  f"  - flatten_order: {{keys: '^fc\\.weight$', hwc: [{H}, {C}, {W}]}}\n")
    assert_wrong(ConvFlattenDense(cin), bad, x, ref)


def test_flatten_then_dense_without_flatten_order_is_wrong(cli, tmp_path):
    cin, w, x, ref = _flatten_case()
    state = convert(cli, tmp_path, w, FLATTEN_RULES)  # the plain .T: loads strictly, computes garbage
    assert_wrong(ConvFlattenDense(cin), state, x, ref)
    # and a plain reshape instead of the transpose is wrong too
    state = {k: v.numpy() for k, v in state.items()}
    state["fc.weight"] = w["fc/kernel"].reshape(OUT, H * W * C)
    assert_wrong(ConvFlattenDense(cin), state, x, ref)


# ---------------------------------------------------------------------------------------------
# the generic preset, with the classes an .npz cannot record declared in the rules file


class Everything(nn.Module):
    def __init__(self, c, m, sep_out, up_out, cin3, c3_out):
        super().__init__()
        self.dw = nn.Conv2d(c, c * m, 3, groups=c)
        self.sep = Sep(c, m, sep_out, 3, padding=1)
        self.up = nn.ConvTranspose2d(c, up_out, (3, 2), stride=2)
        self.c3 = nn.Conv3d(cin3, c3_out, (2, 3, 3))
        self.bn = nn.BatchNorm2d(c, eps=1e-3)
        self.conv = nn.Conv2d(c, C, 3)
        self.fc = nn.Linear(H * W * C, OUT)


def test_keras_to_torch_preset(cli, tmp_path):
    rng = np.random.default_rng(60)
    c, m, sep_out, up_out, cin3, c3_out = 3, 2, 4, 5, 2, 3
    w = {
        "dw/kernel": rand(rng, 3, 3, c, m), "dw/bias": rand(rng, c * m),
        "sep/depthwise_kernel": rand(rng, 3, 3, c, m), "sep/pointwise_kernel": rand(rng, 1, 1, c * m, sep_out),
        "sep/bias": rand(rng, sep_out),
        "up/kernel": rand(rng, 3, 2, up_out, c), "up/bias": rand(rng, up_out),
        "c3/kernel": rand(rng, 2, 3, 3, cin3, c3_out), "c3/bias": rand(rng, c3_out),
        "bn/gamma": rand(rng, c) + 1, "bn/beta": rand(rng, c), "bn/moving_mean": rand(rng, c),
        "bn/moving_variance": np.abs(rand(rng, c)) + 0.5,
        "conv/kernel": rand(rng, 3, 3, c, C), "conv/bias": rand(rng, C),
        "fc/kernel": rand(rng, H * W * C, OUT), "fc/bias": rand(rng, OUT),
    }
    mine = f"""
layer_classes: {{dw: DepthwiseConv2D, sep: SeparableConv2D, up: Conv2DTranspose}}
rules:
  - flatten_order: {{keys: '^fc\\.weight$', hwc: [{H}, {W}, {C}]}}
"""
    src = tmp_path / "w.npz"
    np.savez(src, **w)
    rf = tmp_path / "mine.yaml"
    rf.write_text(mine)
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-r", "keras-to-torch", "-r", rf, "-o", out)
    assert r.exit_code == 0, r.stderr + r.stdout
    state = load_file(out)
    net = Everything(c, m, sep_out, up_out, cin3, c3_out)
    net.load_state_dict(state, strict=True)
    net.eval()

    def torch_nhwc(mod, x):
        with torch.no_grad():
            y = mod(torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1)))).numpy()
        return np.moveaxis(y, 1, -1)

    x = rng.normal(size=(2, H + 2, W + 2, c)).astype(np.float32)
    x3 = rng.normal(size=(2, 3, 4, 5, cin3)).astype(np.float32)
    checks = {
        "dw": (torch_nhwc(net.dw, x), depthwise_conv2d(x, w["dw/kernel"], w["dw/bias"])),
        "sep": (torch_nhwc(net.sep, x),
                separable_conv2d(x, w["sep/depthwise_kernel"], w["sep/pointwise_kernel"], w["sep/bias"], "same")),
        "up": (torch_nhwc(net.up, x), conv2d_transpose(x, w["up/kernel"], w["up/bias"], 2)),
        "c3": (torch_nhwc(net.c3, x3), conv3d(x3, w["c3/kernel"], w["c3/bias"])),
        "bn": (torch_nhwc(net.bn, x), batch_norm(x, w["bn/gamma"], w["bn/beta"], w["bn/moving_mean"],
                                                 w["bn/moving_variance"])),
    }
    with torch.no_grad():
        feat = net.conv(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        checks["fc"] = (net.fc(torch.relu(feat).flatten(1)).numpy(),
                        dense(flatten(relu(conv2d(x, w["conv/kernel"], w["conv/bias"]))), w["fc/kernel"], w["fc/bias"]))
    for name, (got, ref) in checks.items():
        assert got.shape == ref.shape, name
        np.testing.assert_allclose(got, ref, atol=ATOL, rtol=0, err_msg=name)


def test_keras_to_torch_preset_reads_depthwise_from_the_bias(cli, tmp_path):
    """Without layer_classes an .npz kernel (3, 3, C, M) is read from its shapes (layer_table):
    with a bias of C*M it can only be a DepthwiseConv2D, so it gets the depthwise layout and loads
    into a groups=C Conv2d; without a bias it is read as a Conv2D (rank 4), and a groups=C Conv2d
    cannot load it: declare the class (layer_classes) or let suggest read it against the target."""
    rng = np.random.default_rng(70)
    c, m = 3, 2
    src = tmp_path / "w.npz"
    np.savez(src, **{"dw/kernel": rand(rng, 3, 3, c, m), "dw/bias": rand(rng, c * m)})
    out = tmp_path / "out.safetensors"
    r = cli("apply", src, "-r", "keras-to-torch", "-o", out)
    assert r.exit_code == 0, r.stderr
    state = load_file(out)
    assert tuple(state["dw.weight"].shape) == (c * m, 1, 3, 3)
    Wrap(dw=nn.Conv2d(c, c * m, 3, groups=c)).load_state_dict(state, strict=True)
    src2 = tmp_path / "nobias.npz"
    np.savez(src2, **{"dw/kernel": rand(rng, 3, 3, c, m)})
    out2 = tmp_path / "out2.safetensors"
    assert cli("apply", src2, "-r", "keras-to-torch", "-o", out2).exit_code == 0
    state = load_file(out2)
    assert tuple(state["dw.weight"].shape) == (m, c, 3, 3)  # Conv2D's OIHW, not (C*M, 1, kh, kw)
    with pytest.raises(RuntimeError, match="size mismatch"):
        Wrap(dw=nn.Conv2d(c, c * m, 3, groups=c, bias=False)).load_state_dict(state, strict=True)


