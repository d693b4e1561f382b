"""PyTorch twins of the second Keras zoo (tests/data/zoo2, tools/make_keras_zoo2.py): module names
that share nothing with Keras'; each proved against Keras by a hand conversion when the zoo was
written. ``ZOO2`` (at the end) lists each model's twins and input permutation."""

import torch
from torch import nn
E = 1e-3

class NestedTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.blocks = nn.Sequential(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, eps=E), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, eps=E), nn.ReLU()))
        self.top = nn.Linear(8, 5)
    def forward(self, x):
        return self.top(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))

class DenseSeqTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    def forward(self, x):
        return self.mlp(x)

class GroupsTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1, groups=2)
        self.n = nn.BatchNorm2d(8, eps=E)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=4, bias=False)
        self.o = nn.Linear(8, 3)
    def forward(self, x):
        return self.o(torch.relu(self.b(torch.relu(self.n(self.a(x))))).mean((2, 3)))

class DW3Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.d = nn.Conv2d(4, 12, 3, padding=1, groups=4)
        self.n = nn.BatchNorm2d(12, eps=E)
        self.p = nn.Conv2d(12, 6, 1)
        self.o = nn.Linear(6, 3)
    def forward(self, x):
        return self.o(torch.relu(self.p(torch.relu(self.n(self.d(x))))).mean((2, 3)))

class Sep1DTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.dw = nn.Conv1d(4, 8, 3, padding=1, groups=4, bias=False)
        self.pw = nn.Conv1d(8, 6, 1)
        self.o = nn.Linear(6, 3)
    def forward(self, x):
        return self.o(torch.relu(self.pw(self.dw(x))).mean(2))

class BNcsTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.n1 = nn.BatchNorm2d(8, eps=E)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.n2 = nn.BatchNorm2d(8, eps=E)
        self.o = nn.Linear(8, 3)
    def forward(self, x):
        x = torch.relu(self.n1(self.c1(x)))
        return self.o(torch.relu(self.n2(self.c2(x))).mean((2, 3)))

class InceptionTwin(nn.Module):
    # keras: concat([b3, b1, b2]); b1: 1x1; b2: 1x1 -> 3x3 ; b3: 1x1 -> 3x3 (same shapes as b2)
    def __init__(self):
        super().__init__()
        self.p_one = nn.Conv2d(4, 4, 1)
        self.q_red = nn.Conv2d(4, 4, 1)
        self.q_big = nn.Conv2d(4, 4, 3, padding=1)
        self.r_red = nn.Conv2d(4, 4, 1)
        self.r_big = nn.Conv2d(4, 4, 3, padding=1)
        self.o = nn.Linear(12, 3)
    def forward(self, x):
        p = torch.relu(self.p_one(x))
        q = torch.relu(self.q_big(torch.relu(self.q_red(x))))  # keras b2
        r = torch.relu(self.r_big(torch.relu(self.r_red(x))))  # keras b3
        return self.o(torch.cat([r, p, q], 1).mean((2, 3)))

class Flat1DTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 6, 3)
        self.f = nn.Flatten()
        self.o = nn.Linear(6 * 8, 3)
    def forward(self, x):
        return self.o(self.f(torch.relu(self.c(x))))

class _V(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.o = nn.Linear(4 * 3 * 4, 5)
    def fmap(self, x):
        return nn.functional.max_pool2d(torch.relu(self.c(x)), 2)

class ViewTwin(_V):
    def forward(self, x):
        m = self.fmap(x)
        return self.o(m.view(m.size(0), -1))

class FlatModTwin(_V):
    def __init__(self):
        super().__init__()
        self.fl = nn.Flatten()
    def forward(self, x):
        return self.o(self.fl(self.fmap(x)))

class PermReshapeTwin(_V):
    def forward(self, x):
        m = self.fmap(x)
        n = m.shape[0]
        return self.o(m.permute(0, 2, 3, 1).reshape(n, -1))

class LSTM2Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.rec = nn.LSTM(5, 8, num_layers=2, batch_first=True)
        self.o = nn.Linear(8, 3)
    def forward(self, x):
        _, (h, _) = self.rec(x)
        return self.o(h[-1])

class LSTM2SepTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.r1 = nn.LSTM(5, 8, batch_first=True)
        self.r2 = nn.LSTM(8, 8, batch_first=True)
        self.o = nn.Linear(8, 3)
    def forward(self, x):
        s, _ = self.r1(x)
        _, (h, _) = self.r2(s)
        return self.o(h[-1])

class GRUTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.rec = nn.GRU(5, 6, batch_first=True)
        self.o = nn.Linear(6, 3)
    def forward(self, x):
        _, h = self.rec(x)
        return self.o(h[-1])

class BiLSTMTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.rec = nn.LSTM(5, 6, batch_first=True, bidirectional=True)
        self.o = nn.Linear(12, 3)
    def forward(self, x):
        _, (h, _) = self.rec(x)
        return self.o(torch.cat([h[0], h[1]], 1))

class EmbTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(30, 6)
        self.mid = nn.Linear(6, 4, bias=False)
        self.o = nn.Linear(4, 3)
    def forward(self, x):
        return self.o(torch.relu(self.mid(self.tok(x).mean(1))))

class PReLUMapTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.a = nn.PReLU(4)
        self.o = nn.Linear(4, 3)
    def forward(self, x):
        return self.o(self.a(self.c(x)).mean((2, 3)))

class LNConvTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.ln = nn.LayerNorm(6, eps=E)
        self.o = nn.Linear(6, 3)
    def forward(self, x):
        m = self.c(x).permute(0, 2, 3, 1)
        return self.o(torch.relu(self.ln(m)).mean((1, 2)))

class Repeat12Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.stack = nn.ModuleList([nn.Linear(4, 4) for _ in range(12)])
        self.o = nn.Linear(4, 2)
    def forward(self, x):
        for l in self.stack:
            x = torch.tanh(l(x))
        return self.o(x)

class ChFirstTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.o = nn.Linear(4 * 6 * 8, 5)
    def forward(self, x):
        return self.o(torch.relu(self.c(x)).flatten(1))

class DropFlatTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.o = nn.Linear(4 * 3 * 4, 5)
    def forward(self, x):
        return self.o(nn.functional.max_pool2d(torch.relu(self.c(x)), 2).flatten(1))

# Keras Permute((2, 1, 3)) then Flatten (W, H, C): the PyTorch side is the same net as DropFlatTwin
PermHWTwin = DropFlatTwin


class DenseMapTwin(nn.Module):  # keras Dense on NHWC map == 1x1 conv
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, padding=1)
        self.pix = nn.Conv2d(4, 6, 1)
        self.o = nn.Linear(6, 3)
    def forward(self, x):
        return self.o(torch.relu(self.pix(torch.relu(self.c(x)))).mean((2, 3)))

class ChainTwin(nn.Module):
    def __init__(self):
        super().__init__()
        self.chain = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)])
    def forward(self, x):
        for l in self.chain:
            x = torch.tanh(l(x))
        return x

class ChFirst2Twin(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(4, 6, 3, padding=1)
        self.o = nn.Linear(6 * 5 * 4, 5)
    def forward(self, x):
        return self.o(torch.relu(self.c(x)).flatten(1))


NHWC, NWC = (0, 3, 1, 2), (0, 2, 1)
# model -> [(twin, input permutation or None)] (tests/test_zoo2.py)
ZOO2 = {"nested": [("NestedTwin", NHWC)], "dense_seq": [("DenseSeqTwin", None)], "groups": [("GroupsTwin", NHWC)],
        "dw3": [("DW3Twin", NHWC)], "sep1d": [("Sep1DTwin", NWC)], "bncs": [("BNcsTwin", NHWC)],
        "inception": [("InceptionTwin", NHWC)], "flat1d": [("Flat1DTwin", NWC)],
        "vsmall": [("ViewTwin", NHWC), ("FlatModTwin", NHWC), ("PermReshapeTwin", NHWC)],
        "dropflat": [("DropFlatTwin", NHWC)], "reshapeflat": [("DropFlatTwin", NHWC)], "permhw": [("PermHWTwin", NHWC)],
        "lstm2": [("LSTM2Twin", None), ("LSTM2SepTwin", None)], "gru_ra0": [("GRUTwin", None)],
        "bilstm": [("BiLSTMTwin", None)], "emb": [("EmbTwin", None)], "prelu_map": [("PReLUMapTwin", NHWC)],
        "lnconv": [("LNConvTwin", NHWC)], "repeat12": [("Repeat12Twin", None)], "chfirst": [("ChFirstTwin", None)],
        "densemap": [("DenseMapTwin", NHWC)], "chfirst2": [("ChFirst2Twin", None)],
        "permdrop": [("DropFlatTwin", NHWC)], "permreshape": [("DropFlatTwin", NHWC)],
        "alpha_order": [("ChainTwin", None)]}
