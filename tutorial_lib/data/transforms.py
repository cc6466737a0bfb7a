"""Input transforms for the image data sets (torchvision ``transforms.v2`` on uint8 tensors)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from tutorial_lib.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from tutorial_lib.data.mnist import MNIST_MEAN, MNIST_STD

IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
"""The statistics torchvision's ImageNet weights were trained with (``weights.transforms()``)."""


def mnist_transform() -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the MNIST input transform: uint8 -> float in [0, 1] -> normalised with
    ``MNIST_MEAN``/``MNIST_STD`` (so pixels end up roughly in [-0.42, 2.82])."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MNIST_MEAN, MNIST_STD)])


def cifar10_transforms(
    train: bool,
    color_jitter: bool = False,
    size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the CIFAR-10 transform for uint8 ``(3, 32, 32)`` tensors.

    Training: random crop of ``size`` after 4-pixel zero padding (scaled with ``size``),
    horizontal flip, optional colour jitter. Both: resize to ``size`` when it is not 32, scale
    to [0, 1] and normalise with ``mean``/``std`` (CIFAR-10's own statistics by default; pass
    :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` for a backbone pretrained on ImageNet).
    """
    from torchvision.transforms import v2

    steps: list = []
    if size != 32:
        steps.append(v2.Resize(size, antialias=True))
    if train:
        steps += [v2.RandomCrop(size, padding=4 * size // 32), v2.RandomHorizontalFlip()]
        if color_jitter:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "cifar10_transforms", "mnist_transform"]
