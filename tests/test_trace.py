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
    assert tr.feeds == {"second": "first", "head": "second"}
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
    assert keras_flattens(cfg) == {}
    assert isinstance(keras_feeds(cfg, lambda n: True), dict)
