"""PyTorch twins of the Keras zoo (tests/data/zoo, written by tools/make_keras_zoo.py).

Each twin computes what its Keras model computes, written the way a PyTorch user writes it: its
module names share nothing with the Keras layer names, blocks are nn.Sequential, and where PyTorch
code is usually structured differently (a separable conv as two modules, a Conv2d without bias
before BatchNorm, BatchNorm left at PyTorch's eps, flattening in NCHW order) the twin does so.
Every twin's constructor takes no required arguments. The docstring of each twin says how to feed
the stored input `x` and how to compare with the stored output; `ZOO` says the same for the test.

BatchNorm eps: Keras uses 1e-3. Twins with `eps=1e-3` need no folding; MobileNetSeparable and
ResNetTwin keep PyTorch's default 1e-5, so a conversion must fold the difference into running_var.
LayerNorm/GroupNorm eps cannot be folded (it is applied to the batch's own statistics), so those
twins use Keras' 1e-3.
"""

from __future__ import annotations

import torch
from torch import nn

NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
NWC_TO_NCW = (0, 2, 1)
NDHWC_TO_NCDHW = (0, 4, 1, 2, 3)
KERAS_EPS = 1e-3


class MobileNetTwoModules(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output (N, 5) logits, compared as is.
    The SeparableConv2D is two modules, `sep_dw` (depthwise, no bias) and `sep_pw` (1x1 with the bias);
    BatchNorm eps 1e-3 (Keras')."""

    def __init__(self, eps: float = KERAS_EPS):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8, eps=eps), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16, eps=eps), nn.ReLU())
        self.sep_dw = nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False)
        self.sep_pw = nn.Conv2d(16, 12, 1)
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        x = self.expand(self.stem(x))
        x = torch.relu(self.sep_pw(self.sep_dw(x)))
        return self.head(x.mean(dim=(2, 3)))


class SeparableConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        return self.pointwise(self.depthwise(x))


class MobileNetSeparable(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output (N, 5) logits, compared as is.
    The SeparableConv2D is one module with `.depthwise` and `.pointwise` children; BatchNorm at
    PyTorch's default eps 1e-5 (a conversion must fold Keras' 1e-3 into running_var)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, groups=8), nn.BatchNorm2d(16), nn.ReLU(),
            SeparableConv(16, 12), nn.ReLU(),
        )
        self.head = nn.Linear(12, 5)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


class UNetTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output an NCHW map (N, 2, 8, 8): compare
    out.permute(0, 2, 3, 1) with Keras' NHWC map. Skip: torch.cat([upsampled, encoder], 1), as
    Keras' Concatenate()([up, enc]) on the channel axis; GroupNorm(4, 16, eps=1e-3)."""

    def __init__(self):
        super().__init__()
        self.down = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.bottom = nn.Conv2d(8, 16, 3, padding=1)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.mix = nn.GroupNorm(4, 16, eps=KERAS_EPS)
        self.proj = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        e = torch.relu(self.down(x))
        b = torch.relu(self.bottom(self.pool(e)))
        return self.proj(self.mix(torch.cat([self.up(b), e], 1)))


class VGGTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2) (12x16: H != W); output (N, 5), compared as is.
    Flattens NCHW as PyTorch does (x.flatten(1)): from `vgg` (Keras flattens H, W, C) the first
    Linear needs the NHWC -> NCHW reorder; from `vgg_permute` (Permute((3, 1, 2)) before Flatten:
    Keras flattens C, H, W too) it must be left as it is."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(8 * 3 * 4, 16), nn.ReLU(), nn.Linear(16, 5))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv_a = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(cout)
        self.conv_b = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(cout)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        y = self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x)))))
        return torch.relu(self.shortcut(x) + y)


class ResNetTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output (N, 10), compared as is. torchvision-like
    blocks (`blocks.1.shortcut` is the strided 1x1 projection); BatchNorm at PyTorch's default eps
    1e-5 everywhere (a conversion must fold Keras' 1e-3)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(ResBlock(8, 8, 1), ResBlock(8, 16, 2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


class Conv1DTwin(nn.Module):
    """Input NWC->NCW: x.permute(0, 2, 1); output (N, 3), compared as is. Flattens NCW (x.flatten(1)):
    the Linear needs Keras' (W, C) flatten order reordered to (C, W)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Conv1d(4, 8, 3, padding=1)
        self.expand = nn.ConvTranspose1d(8, 6, 2, stride=2)
        self.head = nn.Linear(6 * 32, 3)

    def forward(self, x):
        return self.head(self.expand(torch.relu(self.encoder(x))).flatten(1))


class Conv3DTwin(nn.Module):
    """Input NDHWC->NCDHW: x.permute(0, 4, 1, 2, 3); output (N, 3), compared as is. BatchNorm3d eps 1e-3."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(2, 4, 3, padding=1), nn.BatchNorm3d(4, eps=KERAS_EPS), nn.ReLU(),
            nn.ConvTranspose3d(4, 4, 2, stride=2), nn.ReLU(),
        )
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x).mean(dim=(2, 3, 4)))


class PReLUNetTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output a tuple (probabilities (N, 2), box (N, 4)):
    compare with y0, y1. PReLU(C) (weight [C]; Keras stores alpha [1, 1, C] for the conv maps);
    flattens NCHW (x.flatten(1)), so the first Linear needs the NHWC -> NCHW reorder."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.PReLU(8), nn.MaxPool2d(2), nn.Conv2d(8, 12, 3), nn.PReLU(12))
        self.fc = nn.Linear(12 * 3 * 3, 16)
        self.act = nn.PReLU(16)
        self.cls = nn.Linear(16, 2)
        self.box = nn.Linear(16, 4)

    def forward(self, x):
        x = self.act(self.fc(self.body(x).flatten(1)))
        return torch.softmax(self.cls(x), dim=1), self.box(x)


class PReLUNetPermuteTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output a tuple (probabilities (N, 2), box (N, 4)):
    compare with y0, y1. As real MTCNN ports do, it permutes the map to NHWC before flattening
    (x.permute(0, 2, 3, 1).flatten(1)), so its Linear expects TF's order: no reorder is needed."""

    def __init__(self):
        super().__init__()
        self.feat1 = nn.Conv2d(3, 8, 3)
        self.act1 = nn.PReLU(8)
        self.feat2 = nn.Conv2d(8, 12, 3)
        self.act2 = nn.PReLU(12)
        self.dense = nn.Linear(12 * 3 * 3, 16)
        self.act3 = nn.PReLU(16)
        self.head_prob = nn.Linear(16, 2)
        self.head_box = nn.Linear(16, 4)

    def forward(self, x):
        x = self.act2(self.feat2(nn.functional.max_pool2d(self.act1(self.feat1(x)), 2)))
        x = self.act3(self.dense(x.permute(0, 2, 3, 1).flatten(1)))
        return torch.softmax(self.head_prob(x), dim=1), self.head_box(x)


class RNNTwin(nn.Module):
    """Input token ids (N, 7), no transform (as int64); output (N, 4), compared as is.
    nn.LSTM / nn.GRU(batch_first=True): Keras' LSTM has one bias (-> bias_ih, bias_hh = 0), Keras'
    GRU (reset_after=True) has gates z, r, h and bias [2, 3u] (PyTorch: r, z, n; bias_ih, bias_hh).
    LayerNorm eps 1e-3."""

    def __init__(self):
        super().__init__()
        self.tokens = nn.Embedding(20, 8)
        self.enc = nn.LSTM(8, 12, batch_first=True)
        self.ln = nn.LayerNorm(12, eps=KERAS_EPS)
        self.dec = nn.GRU(12, 10, batch_first=True)
        self.head = nn.Linear(10, 4)

    def forward(self, x):
        h, _ = self.enc(self.tokens(x))
        _, last = self.dec(self.ln(h))
        return self.head(last[-1])


class SubclassedTwin(nn.Module):
    """Input NHWC->NCHW: x.permute(0, 3, 1, 2); output (N, 5), compared as is. BatchNorm eps 1e-3."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, eps=KERAS_EPS), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        )
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier(self.features(x).mean(dim=(2, 3)))


# keras model -> [(twin class name, input permutation or None, output permutation or None)]
ZOO = {
    "mobilenet": [("MobileNetTwoModules", NHWC_TO_NCHW, None), ("MobileNetSeparable", NHWC_TO_NCHW, None)],
    "unet": [("UNetTwin", NHWC_TO_NCHW, NCHW_TO_NHWC)],
    "vgg": [("VGGTwin", NHWC_TO_NCHW, None)],
    "vgg_permute": [("VGGTwin", NHWC_TO_NCHW, None)],
    "resnet": [("ResNetTwin", NHWC_TO_NCHW, None)],
    "conv1d": [("Conv1DTwin", NWC_TO_NCW, None)],
    "conv3d": [("Conv3DTwin", NDHWC_TO_NCDHW, None)],
    "prelu": [("PReLUNetTwin", NHWC_TO_NCHW, None), ("PReLUNetPermuteTwin", NHWC_TO_NCHW, None)],
    "rnn": [("RNNTwin", None, None)],
    "subclassed": [("SubclassedTwin", NHWC_TO_NCHW, None)],
}


def run_twin(model: nn.Module, x, input_perm, output_perm) -> list[torch.Tensor]:
    """The twin's outputs (a list, one per Keras output) for the stored Keras input `x` (numpy),
    in Keras' layout."""
    t = torch.from_numpy(x)
    t = t.long() if not t.is_floating_point() else t
    if input_perm is not None:
        t = t.permute(*input_perm).contiguous()
    model.eval()
    with torch.no_grad():
        out = model(t)
    outs = list(out) if isinstance(out, (tuple, list)) else [out]
    return [o.permute(*output_perm) if output_perm is not None else o for o in outs]
