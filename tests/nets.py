"""PyTorch twins of the fixture models (see tests/data/FIXTURES.md). Also importable as a
`file.py:callable` target by the tests."""

import torch
from torch import nn


class SmallNet(nn.Module):
    """ddp_net / compiled_net / wrapped_net."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class LightningNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def sharded_net():
    """hf_sharded/: six Conv2d(64, 64, 3) in a Sequential."""
    return nn.Sequential(*[nn.Conv2d(64, 64, 3, padding=1) for _ in range(6)])


class TinyCNN(nn.Module):
    """Twin of the Keras tiny_cnn."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8, eps=eps)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class Conv1DNet(nn.Module):
    """Twin of the Keras conv1d model."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(4, 8, 5, padding=2)
        self.conv1d_1 = nn.Conv1d(8, 6, 3)
        self.dense = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.conv1d(x))
        x = self.conv1d_1(x)
        return self.dense(x.mean(dim=2))


class Conv1DSeq(nn.Module):
    """The conv1d twin with module names that share nothing with the Keras layer names."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv1d(4, 8, 5, padding=2), nn.ReLU(), nn.Conv1d(8, 6, 3))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=2))


class TimmLike(nn.Module):
    """A timm-style classifier: ``in_chans`` and ``num_classes`` change only the first conv and the
    head (module names as timm writes them)."""

    def __init__(self, in_chans: int = 3, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class RenamedTimmLike(nn.Module):
    """The same network as TimmLike(3, 10), its modules named otherwise (features.*, classifier)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        self.classifier = nn.Linear(16, 10)

    def forward(self, x):
        return self.classifier(self.features(x).mean((2, 3)))


class TinyViT(nn.Module):
    """A ViT as timm builds one, small: patch embedding conv (stride = patch), class token (and
    ``reg`` register tokens), absolute position embedding over the grid, one block, a head."""

    def __init__(self, img_size=(32, 32), patch_size: int = 8, in_chans: int = 3, num_classes: int = 10,
                 dim: int = 16, reg_tokens: int = 0):
        super().__init__()
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.grid = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, dim)) if reg_tokens else None
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + reg_tokens + self.grid[0] * self.grid[1], dim))
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        prefix = [self.cls_token.expand(x.shape[0], -1, -1)]
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(x.shape[0], -1, -1))
        x = torch.cat([*prefix, x], dim=1) + self.pos_embed
        x = x + self.fc2(torch.relu(self.fc1(self.norm(x))))
        return self.head(x[:, 0])


class WideCNN(nn.Module):
    """A plain CNN whose widths are arguments: coupled width changes (conv -> BN -> conv, a
    depthwise conv, a Linear reading a flattened map)."""

    def __init__(self, in_chans: int = 3, w1: int = 8, w2: int = 16, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, w1, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(w1)
        self.dw = nn.Conv2d(w1, w1, 3, padding=1, groups=w1)
        self.conv2 = nn.Conv2d(w1, w2, 3)
        self.bn2 = nn.BatchNorm2d(w2)
        self.fc = nn.Linear(w2 * 4 * 4, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = nn.functional.adaptive_avg_pool2d(x, 4)
        return self.fc(torch.flatten(x, 1))
