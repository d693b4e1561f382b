"""The eager twins of the torch.distributed.checkpoint fixtures (tests/data/dcp/, written by
tools/make_dcp_fixtures.py). Also importable as ``tests/dcp_nets.py:Name`` targets."""

import torch
from torch import nn


class DcpCnn(nn.Module):
    """single/: saved by one process (world size 1), with its Adam state and an epoch counter."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, stride=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class DcpMlp(nn.Module):
    """fsdp2/: every module fully_shard'ed over two ranks (odd sizes: uneven dim-0 shards)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(7, 5)
        self.norm = nn.LayerNorm(5)
        self.fc2 = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.norm(self.fc1(x))))


class DcpTp(nn.Module):
    """tp/: tensor parallel over two ranks: fc1 column-wise (weight and bias split on dim 0), fc2
    row-wise (weight split on dim 1, bias replicated); bfloat16."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 10)
        self.fc2 = nn.Linear(10, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
