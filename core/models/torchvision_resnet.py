"""torchvision's ImageNet ResNets (ImageNet-50 models) with the split of every classifier network of
:mod:`core.models`: ``forward(x) == forward_head(forward_features(x))``.

:class:`TorchvisionResNet` subclasses ``torchvision.models.ResNet`` and adds methods only: its modules, their
names (``conv1``, ``bn1``, ``layer1..4``, ``fc``), their initialisation and so its ``state_dict`` keys are
torchvision's, so torchvision checkpoints load as they are. Imported only when such a model is built, so
that the CIFAR models do not need torchvision.
"""
from __future__ import annotations

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

LAYERS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3])}


class TorchvisionResNet(ResNet):
    """``torchvision.models.resnet{18,34,50}(num_classes=...)`` with ``forward_features``/``forward_head``.
    Input: float N×3×H×W (already normalized); output: logits N×num_classes."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone (stem with max-pool, ``layer1..4``): N×3×H×W -> ``layer4``'s output N×C×H/32×W/32
        (C = 512 for ResNet-18/34, 2048 for ResNet-50; 7×7 on 224×224 images, 2×2 on 64×64)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """features N×C×h×w -> logits (``avgpool``, flatten, ``fc``)."""
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def torchvision_resnet(depth: int, num_classes: int) -> TorchvisionResNet:
    """What ``torchvision.models.resnet{depth}(num_classes=num_classes)`` builds (same modules, same random
    initialisation from the global generator), as a :class:`TorchvisionResNet`."""
    block, layers = LAYERS[depth]
    return TorchvisionResNet(block, layers, num_classes=num_classes)
