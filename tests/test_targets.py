"""Targets: layer specs agree with real torch modules; factories build on meta; checkpoints."""

import pytest
import torch
from torch import nn

from ckptfix import layers as L
from ckptfix.errors import TargetError
from ckptfix.target import from_module, parse_layer_expr, resolve

SPECS = [
    "Conv1d(4, 8, 5)", "Conv2d(3, 15, 5)", "Conv2d(4, 8, (3, 1), groups=2, bias=False)", "Conv3d(2, 4, 3)",
    "ConvTranspose2d(6, 4, 3, groups=2)", "ConvTranspose1d(3, 5, 2)", "Linear(16, 10)", "Linear(4, 2, bias=False)",
    "BatchNorm2d(8)", "BatchNorm1d(8, affine=False)", "BatchNorm2d(8, track_running_stats=False)",
    "LayerNorm(12)", "LayerNorm((3, 4), elementwise_affine=False)", "GroupNorm(2, 8)", "Embedding(100, 16)",
]


@pytest.mark.parametrize("spec", SPECS)
def test_layer_spec_shapes_and_params_match_torch(spec):
    ly = parse_layer_expr(spec)
    with torch.device("meta"):
        mod = eval("nn." + spec)  # the test may eval; ckptfix never does
    sd = mod.state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: m.shape for k, m in ly.tensors.items()}
    assert {k: str(v.dtype).removeprefix("torch.") for k, v in sd.items()} == {k: m.dtype for k, m in ly.tensors.items()}
    assert ly.params == sum(p.numel() for p in mod.parameters())
    real = from_module(mod, "m").layers.get("")
    assert (real.params if real else 0) == ly.params


def test_conv_param_formula():
    # C_in*k_h*k_w*C_out/groups + C_out
    assert parse_layer_expr("Conv2d(3, 10, 5)").params == 3 * 5 * 5 * 10 + 10 == 760
    assert parse_layer_expr("Conv2d(8, 16, 3, groups=4)").params == 8 * 3 * 3 * 16 // 4 + 16


@pytest.mark.parametrize("bad", ["Conv2d(3, 15, 5, evil=__import__('os'))", "os.system('x')", "Conv2d(*a)",
                                 "Conv9d(1, 2, 3)", "Linear(4)", "Conv2d(3, 15, 5) + 1", "__import__('os')"])
def test_layer_spec_is_never_evaluated(bad):
    with pytest.raises(TargetError):
        parse_layer_expr(bad)


def test_yaml_layer_spec_file(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("conv_layer: Conv2d(3, 15, 5)\nhead:\n  fc: Linear(15, 2)\n")
    t = resolve(str(p))
    assert t.tensors["conv_layer.weight"].shape == (15, 3, 5, 5)
    assert t.tensors["head.fc.bias"].shape == (2,)
    assert t.params == 1140 + 32


def test_factory_targets_build_on_meta(tmp_path):
    t = resolve("tests/nets.py:SmallNet", {"num_classes": 7})
    assert t.tensors["fc.weight"].shape == (7, 32)
    assert t.tensors["bn1.num_batches_tracked"].dtype == "int64"
    assert t.layers["bn1"].kind == "BatchNorm2d" and t.layers["bn1"].params == 32
    t2 = resolve("torch.nn:Linear", {"in_features": 3, "out_features": 2})
    assert t2.tensors["weight"].shape == (2, 3)
    with pytest.raises(TargetError, match="no such file"):
        resolve("nope.py:Net")
    with pytest.raises(TargetError, match="building the model failed"):
        resolve("tests/nets.py:SmallNet", {"bogus": 1})


def test_checkpoint_target(data):
    t = resolve(str(data / "torch/seed_conv10.pt"))
    assert t.params == 760 and t.layers[""].describe() == "Conv2d(in=3, out=10, kernel=5x5)"


def test_layer_reading_from_shapes():
    from ckptfix.tensors import TensorMeta as T

    ls = L.read_layers({"c.weight": T((10, 3, 5, 5)), "c.bias": T((10,)), "fc.weight": T((4, 10)),
                        "bn.weight": T((8,)), "bn.running_mean": T((8,)), "bn.num_batches_tracked": T((), "int64"),
                        "conv1/kernel": T((3, 3, 3, 8)), "emb.weight": T((100, 16))})
    assert ls["c"].describe() == "Conv2d(in=3, out=10, kernel=5x5)"
    assert ls["fc"].describe() == "Linear(in=10, out=4)"
    assert ls["bn"].kind == "BatchNorm" and ls["bn"].params == 8
    assert ls["conv1"].describe() == "Conv2D(in=3, out=8, kernel=3x3)"
    assert ls["emb"].kind == "Embedding"
