"""The layer table is the one place for layer facts: its torch shapes are torch's, its Keras
readings convert the way Keras computes (checked end to end by test_zoo), and the keras-to-torch
preset agrees with it."""

import re

import pytest
import torch
import yaml

from ckptfix import layer_table as T
from ckptfix.layers import spec_layer

CASES = [
    ("Conv1d", dict(in_channels=4, out_channels=6, kernel_size=(3,), groups=2, bias=True)),
    ("Conv2d", dict(in_channels=6, out_channels=12, kernel_size=(3, 5), groups=6, bias=False)),
    ("Conv3d", dict(in_channels=2, out_channels=4, kernel_size=(1, 2, 3), groups=1, bias=True)),
    ("ConvTranspose1d", dict(in_channels=4, out_channels=6, kernel_size=(2,), groups=2, bias=True)),
    ("ConvTranspose2d", dict(in_channels=8, out_channels=3, kernel_size=(2, 2), groups=1, bias=True)),
    ("ConvTranspose3d", dict(in_channels=2, out_channels=4, kernel_size=(2, 1, 2), groups=1, bias=False)),
    ("Linear", dict(in_features=256, out_features=360, bias=True)),
    ("BatchNorm2d", dict(num_features=7)),
    ("LayerNorm", dict(normalized_shape=(5, 3))),
    ("GroupNorm", dict(num_groups=2, num_channels=6)),
    ("PReLU", dict(num_parameters=9)),
    ("Embedding", dict(num_embeddings=11, embedding_dim=4)),
    ("LSTM", dict(input_size=5, hidden_size=3, num_layers=2, bias=True, bidirectional=False)),
    ("GRU", dict(input_size=5, hidden_size=4, num_layers=1, bias=True, bidirectional=True)),
]


@pytest.mark.parametrize("kind,attrs", CASES)
def test_table_shapes_and_counts_are_torchs(kind, attrs):
    """Reference: the real torch.nn module built from the same attributes."""
    m = getattr(torch.nn, kind)(**attrs)
    want = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert T.TORCH[kind].shapes(attrs) == want
    assert T.params_of(kind, attrs) == sum(p.numel() for p in m.parameters())
    got = T.torch_attrs(m)
    assert T.TORCH[kind].shapes(got) == want


@pytest.mark.parametrize("kind,attrs", [c for c in CASES if c[0] not in ("LSTM", "GRU")])
def test_reading_a_state_dict_finds_the_layer(kind, attrs):
    m = getattr(torch.nn, kind)(**attrs)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    kinds = {u.kind for u in T.torch_readings(shapes)}
    family = "BatchNorm2d" if kind.startswith("BatchNorm") else kind
    assert family in kinds


def test_a_conv_with_an_empty_bias_is_read_without_dividing_by_zero():
    """Found by fuzzing a TorchScript archive: a bias of shape (0,) beside a conv weight raised
    ZeroDivisionError in the ConvTranspose groups guess."""
    assert T.torch_readings({"weight": (8, 6, 3, 3), "bias": (0,)}) is not None


def test_linear_counts_its_bias():
    """explain counted Linear(in=256, out=360) as 92,160 (the bias missing)."""
    assert T.params_of("Linear", {"in_features": 256, "out_features": 360}) == 92_520
    assert spec_layer("", "Linear", [256, 360], {}).params == 92_520


@pytest.mark.parametrize("shapes,cls,kinds", [
    ({"kernel": (3, 3, 6, 2), "bias": (12,)}, None, [("DepthwiseConv2D", 6, 12, 6)]),
    ({"kernel": (3, 3, 6, 2), "bias": (2,)}, None, [("Conv2D", 6, 2, None)]),
    ({"kernel": (3, 3, 6, 2), "bias": (6,)}, None, [("Conv2DTranspose", 2, 6, None)]),
    ({"kernel": (3, 3, 6, 2)}, "DepthwiseConv2D", [("DepthwiseConv2D", 6, 12, 6)]),
    ({"kernel": (3, 3, 6, 2)}, "Conv2DTranspose", [("Conv2DTranspose", 2, 6, None)]),
    ({"depthwise_weights": (3, 3, 8, 1), "pointwise_weights": (1, 1, 8, 4), "biases": (4,)}, None,
     [("SeparableConv2D", 8, 8, 8)]),
    ({"0": (3, 3, 3, 8), "1": (8,)}, None, [("Conv2D", 3, 8, None)]),
])
def test_keras_kernels_are_read_by_what_the_shapes_allow(shapes, cls, kinds):
    """A kernel with no class is every layer its shapes allow (the target then decides); with a
    class only that one. Without a config a conv's groups are unknown (None: a grouped kernel is
    torch's grouped weight after the layout, whatever the groups; the target's module says). The depthwise [3, 3, 6, 2] is never read as Conv2D(in=6, out=2) when the
    bias says 12 outputs."""
    got = [(form.classes[0], units[0].attrs.get("in_channels"), units[0].attrs.get("out_channels"),
            units[0].attrs.get("groups")) for form, _, units in T.keras_readings(shapes, cls)]
    assert got == kinds


def test_the_keras_to_torch_preset_agrees_with_the_table():
    """configs/keras-to-torch.yaml: every class the table converts with a permutation has its
    transpose rule with the table's layout, and no rule names a layout the table does not use."""
    preset = yaml.safe_load(open("configs/keras-to-torch.yaml"))["rules"]
    by_class = {}
    for r in preset:
        t = r.get("transpose")
        if t:
            for c in t.get("classes", []):
                by_class.setdefault(c, set()).add((t["keys"], t["layout"]))
    for form in T.KERAS:
        if form.classes[0] in T.RNN_CLASSES:
            continue  # per-layer rules (gate order, split biases): suggest writes them, the preset says so
        sample = form.units(_example(form), {})
        if sample is None:
            continue
        for u in sample:
            for conv in u.tensors.values():
                if isinstance(conv, T.Convert) and conv.layout is not None:
                    var = conv.var
                    assert any(re.search(keys, f"layer/{var}") and layout == conv.layout
                               for keys, layout in by_class.get(form.classes[0], ())), (form.classes[0], var)


def _example(form: T.KerasLayer):
    """Stored shapes of a small instance of each Keras class (in the table's variable names)."""
    c = form.classes[0]
    n = int(c[-2]) if c[-2].isdigit() else 2
    k = (3,) * n
    ex = {
        "Dense": {"kernel": (4, 5), "bias": (5,)},
        "BatchNormalization": {v: (4,) for v in form.variables},
        "LayerNormalization": {"gamma": (4,), "beta": (4,)},
        "GroupNormalization": {"gamma": (4,), "beta": (4,)},
        "PReLU": {"alpha": (1, 1, 4)},
        "Embedding": {"embeddings": (9, 4)},
        "LSTM": {"kernel": (3, 16), "recurrent_kernel": (4, 16), "bias": (16,)},
        "GRU": {"kernel": (3, 12), "recurrent_kernel": (4, 12), "bias": (2, 12)},
        "SimpleRNN": {"kernel": (3, 4), "recurrent_kernel": (4, 4), "bias": (4,)},
    }
    if c in ex:
        return ex[c]
    if c.startswith("Separable"):
        return {"depthwise_kernel": (*k, 4, 1), "pointwise_kernel": ((1,) * n) + (4, 6), "bias": (6,)}
    if c.startswith("Depthwise"):
        return {"kernel": (*k, 4, 2), "bias": (8,)}
    if "Transpose" in c:
        return {"kernel": (*k, 6, 4), "bias": (6,)}
    return {"kernel": (*k, 4, 6), "bias": (6,)}
