"""What every part of the loop needs to know about a batch: the leaf of ``tutorial_lib.training``.

Batches may be ``(inputs, targets)`` pairs (images, token ids) or Hugging Face style dicts with
a ``"labels"`` entry; models may return logits or an object with a ``.logits`` attribute. That
is handled once, here, so no chapter needs a second loop. This module imports nothing else of
``tutorial_lib``: the strategy, the run state and the loop import it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

Batch = tuple[Any, torch.Tensor] | list | Mapping[str, torch.Tensor]


def to_device(value: Any, device: torch.device) -> Any:
    """Return ``value`` with every tensor inside it (also in dicts, lists, tuples) on ``device``."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def split_batch(batch: Batch) -> tuple[Any, torch.Tensor]:
    """Return ``(inputs, targets)`` of a batch.

    Raises:
        ValueError: for a batch that is neither a pair nor a mapping with ``"labels"``.
    """
    if isinstance(batch, Mapping):
        if "labels" not in batch:
            raise ValueError(f"a dict batch needs a 'labels' entry; it has {sorted(batch)}")
        inputs = {key: value for key, value in batch.items() if key != "labels"}
        return inputs, batch["labels"]
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    raise ValueError(
        f"expected an (inputs, targets) pair or a dict with 'labels', got {type(batch).__name__}"
    )


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call ``model`` on ``inputs`` (keyword arguments for a dict) and return its logits."""
    output = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    return output.logits if hasattr(output, "logits") else output


def count_targets(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Return ``(targets, correct predictions)`` of a batch: one target per example for a
    classifier (logits ``(batch, classes)``), one per position for a language model (logits
    ``(batch, time, vocab)``, targets ``(batch, time)``). A target of ``-100``
    (``F.cross_entropy``'s ``ignore_index``: a pad, a prompt token, an unlabelled example) is
    not counted."""
    counted = targets != -100
    return int(counted.sum()), int(((logits.argmax(dim=-1) == targets) & counted).sum())
