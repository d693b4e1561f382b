"""PyTorch twins of the Flax fixture models (tools/make_flax_fixtures.py), NCHW, with Flax's
module names, so that the flax-to-torch preset's names fit them as they are."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class CNN(nn.Module):
    """Conv_0 (8, 3x3 SAME) -> BatchNorm_0 -> relu -> Conv_1 (16, 3x3, stride 2, padding 1) -> relu
    -> flatten -> Dense_0 (10). Flax flattens NHWC, this twin NCHW (flatten_order)."""

    def __init__(self, bn_eps: float = 1e-5):
        super().__init__()
        self.Conv_0 = nn.Conv2d(3, 8, 3, padding=1)
        self.BatchNorm_0 = nn.BatchNorm2d(8, eps=bn_eps)
        self.Conv_1 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.Dense_0 = nn.Linear(256, 10)

    def forward(self, x):
        x = F.relu(self.BatchNorm_0(self.Conv_0(x)))
        x = F.relu(self.Conv_1(x))
        return self.Dense_0(torch.flatten(x, 1))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 8, 3, padding=1, groups=4)
        self.pw = nn.Conv2d(8, 8, 1, groups=2)
        self.gn = nn.GroupNorm(2, 8, eps=1e-6)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = F.relu(self.dw(x))
        x = F.relu(self.gn(self.pw(x)))
        return self.head(x.mean(dim=(2, 3)))


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.Dense_0 = nn.Linear(12, 32)
        self.Dense_1 = nn.Linear(32, 16, bias=False)
        self.Dense_2 = nn.Linear(16, 5)

    def forward(self, x):
        return self.Dense_2(F.relu(self.Dense_1(F.relu(self.Dense_0(x)))))


class Block(nn.Module):
    """Flax names a module's submodules in the order they are constructed: in
    ``nn.Dense(16)(nn.gelu(nn.Dense(32)(x)))`` the outer Dense(16) is Dense_0."""

    def __init__(self):
        super().__init__()
        self.Dense_1 = nn.Linear(16, 32)
        self.Dense_0 = nn.Linear(32, 16)

    def forward(self, x):
        return self.Dense_0(F.gelu(self.Dense_1(x), approximate="tanh"))


class Embed(nn.Module):
    def __init__(self, ln_eps: float = 1e-6):
        super().__init__()
        self.Embed_0 = nn.Embedding(50, 16)
        self.LayerNorm_0 = nn.LayerNorm(16, eps=ln_eps)
        self.mlp = Block()
        self.Dense_0 = nn.Linear(16, 3)

    def forward(self, tokens):
        x = self.LayerNorm_0(self.Embed_0(tokens))
        x = x + self.mlp(x)
        return self.Dense_0(x.mean(dim=1))


class ConvT(nn.Module):
    """Flax ConvTranspose VALID is torch's padding=0; SAME with k=4, s=2 pads 2 on both sides of
    the dilated input, torch's padding=1 (k-1-p)."""

    def __init__(self):
        super().__init__()
        self.ConvTranspose_0 = nn.ConvTranspose2d(3, 6, 3, stride=2)
        self.ConvTranspose_1 = nn.ConvTranspose2d(6, 4, 4, stride=2, padding=1)
        self.ConvTranspose_2 = nn.ConvTranspose2d(4, 4, 2, stride=2)

    def forward(self, x):
        x = F.relu(self.ConvTranspose_0(x))
        x = F.relu(self.ConvTranspose_1(x))
        return self.ConvTranspose_2(x)
