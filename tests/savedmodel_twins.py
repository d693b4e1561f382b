"""PyTorch twins of tools/make_savedmodel_fixtures.py's models (NCHW)."""

import torch
from torch import nn


class KerasCNN(nn.Module):
    """conv(3->4, 3x3 same) -> bn -> relu -> depthwise 3x3 valid -> global average -> dense(4->5)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.dw(torch.relu(self.bn(self.conv(x))))
        return self.head(x.mean((2, 3)))
