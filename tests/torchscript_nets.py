"""Eager models behind the TorchScript fixtures (tests/data/torchscript/, written by
tools/make_torchscript_fixtures.py), and ``RandomNet``, a module tree drawn from a seed, for the
generated cases of tests/test_torchscript.py.

The fixtures' models are built by ``make(name)`` with seeded weights; their plain tensor
attributes and non-persistent buffers hold what the constructor gives them, so an eager model
loaded from the converted state dict computes what the scripted module computes.
"""

from __future__ import annotations

import random
from typing import Dict, List

import torch
from torch import nn


class ConvBNNet(nn.Module):
    """Conv + BatchNorm in nested Sequentials, a parameter on the top module, a plain tensor
    attribute, and a buffer registered with persistent=False (TorchScript keeps it in the state
    dict: it does not record persistence)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
            nn.Sequential(nn.Conv2d(6, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()))
        self.head = nn.Linear(8, 5)
        self.scale = nn.Parameter(torch.ones(5))              # a parameter of the top module itself
        self.offset = torch.linspace(-1.0, 1.0, 5)            # a tensor attribute: not in state_dict
        self.register_buffer("mask", torch.tensor([1.0, 1.0, 0.0, 1.0, 0.5]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))
        return self.head(h) * self.scale * self.mask + self.offset


class ContainersNet(nn.Module):
    """ModuleList of Sequentials, a ModuleDict (one Linear without bias), a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(2)])
        self.norm = nn.LayerNorm(6)
        self.heads = nn.ModuleDict({"main": nn.Linear(6, 3), "aux": nn.Linear(6, 3, bias=False)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x)
        x = self.norm(x)
        return self.heads["main"](x) + self.heads["aux"](x)


class SeqNet(nn.Module):
    """Embedding -> 2-layer LSTM -> Linear on the last step (int64 tokens in)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.out = nn.Linear(12, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.emb(tokens))
        return self.out(y[:, -1])


NETS = {"convbn": ConvBNNet, "containers": ContainersNet, "seq": SeqNet}


def example_input(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if name == "seq":
        return torch.randint(0, 20, (3, 7), generator=g)
    if name == "convbn":
        return torch.randn(2, 3, 8, 8, generator=g)
    return torch.randn(4, 6, generator=g)


def make(name: str) -> nn.Module:
    """The fixture model ``name`` with its seeded weights (BatchNorm statistics from three
    training batches), in eval mode."""
    torch.manual_seed(0)
    model = NETS[name]()
    if name == "convbn":
        model.train()
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for _ in range(3):
                model(torch.randn(4, 3, 8, 8, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------
# generated module trees


class Leaf(nn.Module):
    """A module whose own tensors are drawn from the seed: parameters, buffers of several dtypes
    (one a strided view of another, one non-persistent), plain attributes."""

    def __init__(self, rng: random.Random, g: torch.Generator) -> None:
        super().__init__()
        for j in range(rng.randint(0, 2)):
            self.register_parameter(f"p{j}", nn.Parameter(torch.randn(rng.randint(1, 4), 3, generator=g)))
        base = torch.randn(4, 6, generator=g)
        if rng.random() < 0.5:
            self.register_buffer("base", base)
            self.register_buffer("view", base.t()[1:4])      # shares base's storage, strided
        kinds = [torch.float64, torch.float16, torch.bfloat16, torch.int32, torch.int64, torch.bool, torch.uint8]
        for j in range(rng.randint(0, 2)):
            dt = rng.choice(kinds)
            t = torch.randn(rng.randint(1, 3), 2, generator=g)
            t = (t > 0) if dt is torch.bool else (t * 50).to(dt) if not dt.is_floating_point else t.to(dt)
            self.register_buffer(f"b{j}", t, persistent=rng.random() < 0.7)
        self.scalar = rng.randint(0, 9)
        self.sizes: List[int] = [rng.randint(1, 5) for _ in range(3)]
        if rng.random() < 0.5:
            self.plain = torch.randn(2, generator=g)
        if rng.random() < 0.3:
            self.table: Dict[str, torch.Tensor] = {"k": torch.randn(3, generator=g)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class RandomNet(nn.Module):
    """A module tree drawn from ``seed``: layers of torch.nn (with and without bias, BatchNorm
    with and without running statistics, LSTM/GRU, Embedding) in Sequential, ModuleList and
    ModuleDict containers (keys that are not identifiers too), nested RandomNets, a submodule
    and a parameter shared under two names (unless not ``share``: tracing refuses them), and
    ``Leaf`` tensors. ``forward`` is the identity: what matters is the state dict."""

    def __init__(self, seed: int, depth: int = 0, share: bool = True) -> None:
        super().__init__()
        rng = random.Random(seed)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.share = share  # tracing refuses shared parameters
        kinds = ["linear", "conv", "bn", "seq", "list", "dict", "rnn", "emb", "leaf"] + (["child"] if depth < 2 else [])
        for i in range(rng.randint(1, 4)):
            self.add_module(f"m{i}", self._layer(rng.choice(kinds), rng, g, depth))
        if rng.random() < 0.5:
            self.top = nn.Parameter(torch.randn(rng.randint(1, 3), generator=g))
        if share and rng.random() < 0.3 and isinstance(getattr(self, "m0", None), nn.Linear):
            self.again = self.m0                               # one submodule under two names
        if share and rng.random() < 0.3 and hasattr(self, "top"):
            self.tied = self.top                               # one parameter under two names

    def _layer(self, kind: str, rng: random.Random, g: torch.Generator, depth: int) -> nn.Module:
        n = rng.randint(1, 4)
        bias = rng.random() < 0.6
        if kind == "linear":
            return nn.Linear(n, rng.randint(1, 4), bias=bias)
        if kind == "conv":
            return rng.choice([nn.Conv1d, nn.Conv2d])(n, rng.randint(1, 3), rng.randint(1, 3), bias=bias)
        if kind == "bn":
            return nn.BatchNorm1d(n, affine=rng.random() < 0.7, track_running_stats=rng.random() < 0.7)
        if kind == "rnn":
            return rng.choice([nn.LSTM, nn.GRU])(n, rng.randint(1, 3), num_layers=rng.randint(1, 2), bias=bias)
        if kind == "emb":
            return nn.Embedding(rng.randint(2, 6), n)
        if kind == "leaf":
            return Leaf(rng, g)
        if kind == "child":
            return RandomNet(rng.randrange(1 << 30), depth + 1, self.share)
        inner = [self._layer(rng.choice(["linear", "bn", "leaf", "conv"]), rng, g, depth)
                 for _ in range(rng.randint(1, 3))]
        if kind == "seq":
            return nn.Sequential(*inner)
        if kind == "list":
            return nn.ModuleList(inner)
        keys = rng.sample(["a", "0", "x_1", "B", "12"], len(inner))  # (torch cannot load keywords)
        return nn.ModuleDict(dict(zip(keys, inner)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
