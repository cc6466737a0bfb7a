"""The chapter networks, small and plain."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def freeze(module: nn.Module) -> nn.Module:
    """Stop gradients for every parameter of ``module`` (e.g. a pretrained backbone); return it.

    Frozen parameters get no ``.grad`` and an optimiser leaves them unchanged."""
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    return module


class MnistCNN(nn.Module):
    """The source series' MNIST network: conv32-pool-conv64-pool-fc128-fc10.

    Both convolutions are 3x3 with padding 1, so each keeps the spatial size and each 2x2 max
    pooling halves it: 28 -> 14 -> 7. Input ``(N, 1, 28, 28)``, output ``(N, num_classes)``
    logits (no softmax: ``nn.CrossEntropyLoss`` applies log-softmax itself).
    421,642 parameters with 10 classes.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1:] != (1, 28, 28):
            raise ValueError(f"MnistCNN expects images of shape (N, 1, 28, 28), got {tuple(images.shape)}")
        return self.classifier(self.features(images))
