"""The PyTorch models of the ONNX fixtures (``tools/make_onnx_fixtures.py`` exports them; the
tests convert the ONNX weights back into fresh instances with ``ckptfix suggest`` + ``apply``).

``HelperTwin`` is the PyTorch model of ``helper_anon.onnx``, a graph written with onnx.helper
(tf2onnx-style node names ``model/dense/Gemm``, anonymous ``const_fold_opt__N`` weights): its
module names share nothing with the graph's."""

import torch
from torch import nn


class OnnxCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.layer1(x))
        return self.fc(x.mean((2, 3)))


class OnnxMLP(nn.Module):
    """Linear layers with and without bias; ``b`` is square (7 x 7): a MatMul weight that would
    pass unchanged under its own name if the (in, out) layout were not known."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 7)
        self.b = nn.Linear(7, 7, bias=False)
        self.c = nn.Linear(7, 3)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


class OnnxEmbLN(nn.Module):
    """Embedding -> LayerNorm -> Linear on (batch, tokens, dim): the Linear is MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.ln = nn.LayerNorm(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        return self.head(self.ln(self.emb(x)))


class OnnxConvT(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2)
        self.inorm = nn.InstanceNorm2d(3, affine=True)
        self.mix = nn.Conv1d(3, 2, 2)

    def forward(self, x):
        y = self.inorm(self.up(x))            # (N, 3, H, W)
        return self.mix(y.flatten(2))         # (N, 2, H*W - 1)


class HelperTwin(nn.Module):
    """Conv (its weight a Constant node) -> mean -> Linear (Gemm transB=0) -> Linear (square
    MatMul + Add)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3)
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 8)

    def forward(self, x):
        x = torch.relu(self.features(x)).mean((2, 3))
        return self.out(torch.relu(self.hidden(x)))
