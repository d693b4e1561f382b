"""trace: what a target's forward pass shows (execution order, Flatten -> Linear, which layer reads
which), and what a Keras config shows, robust to configs that are not what Keras writes."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ckptfix.trace import keras_feeds, keras_flattens, keras_input_shape, trace


class Branchy(nn.Module):
    """Registered in one order, run in another; a Linear reading a permuted, flattened map."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(4 * 3 * 2, 5)
        self.second = nn.Conv2d(8, 4, 1)
        self.first = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x):
        y = self.second(torch.relu(self.first(x)))
        return self.head(y.permute(0, 2, 3, 1).reshape(y.shape[0], -1))


class Dynamic(nn.Module):
    """Control flow on a tensor value: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.b = nn.Linear(2, 2)
        self.a = nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.a(self.b(x))
        return self.b(x)


def meta(cls):
    with torch.device("meta"):
        return cls()


def test_execution_order_feeds_and_a_permuted_flatten():
    tr = trace(meta(Branchy), (1, 3, 3, 2))
    assert tr.traced and tr.order == ["first", "second", "head"]
    assert tr.feeds == {"first": "<input>", "second": "first", "head": "second"}
    f = tr.flattens["head"]
    assert f.order == "HWC" and f.map_shape == (4, 3, 2) and f.channels == 4


def test_without_the_input_shape_a_square_map_is_assumed_and_said():
    f = trace(meta(Branchy)).flattens["head"]
    assert f.map_shape is None
    assert f.spatial(24) == (None, "6 positions do not form a square; give --input-shape")
    assert f.spatial(16) == ((2, 2), "assumed square")


def test_an_untraceable_model_falls_back_to_registration_order():
    tr = trace(meta(Dynamic))
    assert not tr.traced and tr.order == ["b", "a"] and "registration order" in tr.note


JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(
                        st.sampled_from(["class_name", "config", "layers", "name", "inbound_nodes", "args",
                                         "keras_history", "shape", "dims", "batch_shape", "batch_input_shape"]),
                        c, max_size=5), max_leaves=30)


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_configs_of_any_shape_never_raise(config):
    """A config is data from the file: these read it or give up, they never raise."""
    assert isinstance(keras_flattens(config), dict)
    assert isinstance(keras_feeds(config, lambda n: True), dict)
    shape = keras_input_shape(config)
    assert shape is None or (isinstance(shape, tuple) and all(isinstance(d, int) and d > 0 for d in shape))


def test_a_layer_history_that_is_not_a_name_is_ignored():
    """Found by reading the parser: keras_history [[...], 0, 0] once reached a dict lookup."""
    cfg = {"class_name": "Functional", "config": {"layers": [
        {"class_name": "Flatten", "name": "f", "inbound_nodes": [{"args": [{"config": {"keras_history": [[1], 0]}}]}]},
        {"class_name": "Dense", "name": "d", "inbound_nodes": [{"args": [{"config": {"keras_history": [{"a": 1}]}}]}]}]}}
    assert {k: v.order for k, v in keras_flattens(cfg).items()} == {"d": "?"}  # the config does not say
    assert isinstance(keras_feeds(cfg, lambda n: True), dict)


def _cfg(*layers):
    out = []
    for cls, name, cfg in layers:
        out.append({"class_name": cls, "name": name, "config": {"name": name, **cfg}})
    return {"class_name": "Sequential", "config": {"layers": out}}


def test_the_keras_flatten_order_follows_data_format_permute_and_dropout():
    """The order Keras flattened in: the map's axes (data_format), a Permute, Flatten(channels_first)
    moving channels last; Dropout/Activation between them seen through; Reshape((n,)) as Flatten."""
    conv_last = ("Conv2D", "c", {"data_format": "channels_last"})
    conv_first = ("Conv2D", "c", {"data_format": "channels_first"})
    dense = ("Dense", "d", {})
    order = (lambda *ls: keras_flattens(_cfg(*ls))["d"].order)
    assert order(conv_last, ("Flatten", "f", {}), dense) == "HWC"
    assert order(conv_first, ("Flatten", "f", {}), dense) == "CHW"
    assert order(conv_first, ("Flatten", "f", {"data_format": "channels_first"}), dense) == "HWC"
    assert order(conv_last, ("Permute", "p", {"dims": [3, 1, 2]}), ("Dropout", "x", {}), ("Flatten", "f", {}),
                 ("Dropout", "y", {}), dense) == "CHW"
    assert order(conv_last, ("Permute", "p", {"dims": [3, 1, 2]}), ("Reshape", "r", {"target_shape": [48]}), dense) == "CHW"
    assert order(("Conv1D", "c", {"data_format": "channels_last"}), ("Flatten", "f", {}), dense) == "WC"
    assert order(conv_last, ("Lambda", "l", {}), ("Flatten", "f", {}), dense) == "?"
    cfg = _cfg(("InputLayer", "i", {"batch_shape": [None, 4, 5, 6]}), conv_first, dense)
    assert keras_input_shape(cfg) == (1, 4, 5, 6)
    cfg = _cfg(("InputLayer", "i", {"batch_shape": [None, 4, 5, 6]}), conv_last, dense)
    assert keras_input_shape(cfg) == (1, 6, 4, 5)
