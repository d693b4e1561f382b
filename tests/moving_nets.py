"""Targets whose constructors need real tensors (issue 11, item 8), as `file.py:callable` targets.
Each class counts its constructions in ``builds`` (the meta attempt, then the CPU build)."""

import torch
from torch import nn


class Counted(nn.Module):
    builds = 0

    def __init__(self):
        super().__init__()
        type(self).builds += 1


class MovesItself(Counted):
    """A public voice encoder's pattern: pick a device, then ``self.to(device)``. The one-layer LSTM
    with dropout makes torch warn (on every build)."""

    def __init__(self, device=None, hidden: int = 16):
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, 1, dropout=0.1, batch_first=True)
        self.linear = nn.Linear(hidden, 4)
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.to(device)


class MovesByName(Counted):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.to("cpu")
        if torch.cuda.is_available():
            self.cuda()


class MovesDtype(Counted):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.to(torch.device("cpu"), torch.float64)


class ItemInInit(Counted):
    """A size read from a tensor: ``.item()`` (and ``int(tensor)``) has no value on meta."""

    def __init__(self):
        super().__init__()
        n = int(torch.tensor([5]).item())
        m = int(torch.zeros(3).sum()) + 2
        self.fc = nn.Linear(n, m)


class BranchesOnATensor(Counted):
    def __init__(self):
        super().__init__()
        w = torch.ones(3)
        self.fc = nn.Linear(3, 6 if bool(w.all()) else 1)


class CpuBuffer(Counted):
    """An explicit device for a buffer: a real tensor among meta ones; built on meta once."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.register_buffer("mean", torch.zeros(3, device="cpu"))


class HugeCpuBuffer(Counted):
    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.zeros(1000, 1000, device="cpu"))


class Raises(Counted):
    def __init__(self):
        super().__init__()
        raise ValueError("unknown backbone 'resnet9000'")


class BigMovesItself(Counted):
    """4 MB of parameters, then ``self.to``: over a 1 MiB budget before it fails on meta."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1000, 1000)
        self.to("cpu")


class BigAfterItem(Counted):
    """``.item()`` first (nothing counted on meta), then 4 MB."""

    def __init__(self):
        super().__init__()
        n = int(torch.tensor([1000]).item())
        self.fc = nn.Linear(1000, n)


def billion():
    """1e9 parameters (4 GB on the CPU): built on meta, it takes no memory."""
    return nn.Linear(40000, 25000)
