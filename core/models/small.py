"""The other CIFAR architectures of the paper's Table 4: VGG-16, DenseNet-121 and a small ViT.

``width`` scales the channels like on the ResNets (64 = standard size). Each splits as timm's models do,
``forward(x) == forward_head(forward_features(x))``: ``forward_features`` is the backbone (the last
convolutional stage's output N×C×h×w; the ViT's normed token sequence N×T×D), ``forward_head`` the rest.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class VGG16(nn.Module):
    """VGG-16 with batch norm for 32×32 inputs (``features`` + ``classifier``)."""

    plan = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        layers, channels = [], 3
        for item in self.plan:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                out = item * width
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(True)]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×H×W -> the last block's output, after its max-pool: N×8·width×H/32×W/32 (512×1×1 on 32×32)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """features N×C×h×w -> logits (global average pool, flatten, ``classifier``)."""
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class _DenseLayer(nn.Module):
    def __init__(self, channels, growth):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv1 = nn.Conv2d(channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x):
        out = self.conv2(F.relu(self.bn2(self.conv1(F.relu(self.bn1(x))))))
        return torch.cat([out, x], 1)


class DenseNet121(nn.Module):
    """DenseNet-121 (blocks 6-12-24-16) for 32×32 inputs; growth rate ``width // 2`` (32 at width 64)."""

    def __init__(self, num_classes=10, width=64):
        super().__init__()
        growth = max(width // 2, 4)
        channels = 2 * growth
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1, bias=False)
        stages = []
        for i, n in enumerate((6, 12, 24, 16)):
            block = [_DenseLayer(channels + j * growth, growth) for j in range(n)]
            channels += n * growth
            stages += block
            if i < 3:
                out = channels // 2
                stages += [nn.BatchNorm2d(channels), nn.ReLU(), nn.Conv2d(channels, out, 1, bias=False), nn.AvgPool2d(2)]
                channels = out
        self.features = nn.Sequential(*stages)
        self.bn = nn.BatchNorm2d(channels)
        self.linear = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×H×W -> the last dense block's output after the final BatchNorm and ReLU: N×C×H/8×W/8
        (C = 1024 at width 64)."""
        return F.relu(self.bn(self.features(self.conv1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """features N×C×h×w -> logits (global average pool, flatten, ``linear``)."""
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(features, 1), 1))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class ViT(nn.Module):
    """A small Vision Transformer for 32×32 inputs: 4×4 patches, 6 blocks, embedding ``3 * width``."""

    def __init__(self, num_classes=10, width=64, image_size=32, patch=4, depth=6, heads=4):
        super().__init__()
        dim = 3 * width
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch) ** 2 + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """N×3×H×W -> the normed token sequence N×T×D: T = 1 + (H/patch)·(W/patch) tokens (the class token
        first; 65 on 32×32), D = 3·width."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], 1) + self.pos_embed
        return self.norm(self.encoder(tokens))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """tokens N×T×D -> logits: ``head`` of the class token (the other tokens are not read)."""
        return self.head(features[:, 0])

    def forward(self, x):
        return self.forward_head(self.forward_features(x))
