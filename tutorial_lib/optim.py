"""Optimiser parameter groups, defined once (as nanoGPT's ``configure_optimizers`` does).

Every chapter builds its optimiser from :func:`param_groups`: weight decay only on matrices
(weights of linear, convolution and embedding layers), never on biases and normalisation
weights (1-D tensors), which decay would pull towards zero for no regularising benefit; an
optional head with its own, larger learning rate (discriminative learning rates for
fine-tuning); frozen parameters left out. It prints what it built, so the reader sees how many
parameters each group trains.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    head: nn.Module | None = None,
    head_lr: float | None = None,
    verbose: bool = True,
) -> list[dict]:
    """Return optimiser parameter groups for the trainable parameters of ``model``.

    Parameters with two or more dimensions get ``weight_decay``; biases and normalisation
    weights get none. With ``head`` (a submodule of ``model``), its parameters form their own
    groups at ``head_lr`` (default ``lr``) and the rest of the model trains at ``lr``.
    Frozen parameters (``requires_grad=False``) are left out; each trainable parameter appears
    in exactly one group; empty groups are dropped. Each group carries a ``"name"``.

    Returns:
        The groups, ready for ``torch.optim.AdamW(groups)`` (or any ``torch.optim`` optimiser).

    Raises:
        ValueError: if ``head`` is not a submodule of ``model``, ``head_lr`` is given without
            ``head``, or ``model`` has no trainable parameter.
    """
    if head is None and head_lr is not None:
        raise ValueError("head_lr needs the head module it applies to")
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    if not head_ids <= {id(p) for p in model.parameters()}:
        raise ValueError("head must be a submodule of model")
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for parameter in model.parameters():
        if parameter.requires_grad:
            buckets.setdefault((id(parameter) in head_ids, parameter.ndim >= 2), []).append(
                parameter
            )
    if not buckets:
        raise ValueError(
            "model has no trainable parameter; unfreeze something before building an optimiser"
        )
    groups = []
    for (is_head, decays), params in sorted(buckets.items()):
        part = "head" if is_head else ("model" if head is None else "backbone")
        groups.append(
            {
                "params": params,
                "lr": (head_lr if head_lr is not None else lr) if is_head else lr,
                "weight_decay": weight_decay if decays else 0.0,
                "name": f"{part}, {'decay' if decays else 'no decay'}",
            }
        )
    if verbose:
        for group in groups:
            count = sum(p.numel() for p in group["params"])
            print(
                f"{group['name']:<20} {len(group['params']):>4} tensors {count:>12,} parameters"
                f"  lr {group['lr']:.1e}  weight decay {group['weight_decay']:g}"
            )
    return groups


def adamw_with_linear_warmup(
    model: nn.Module,
    learning_rate: float,
    total_steps: int,
    weight_decay: float = 0.01,
    warmup_fraction: float = 0.1,
    verbose: bool = True,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """Return ``(optimizer, scheduler)`` for fine-tuning a pre-trained transformer (chapter 4's
    recipe, reused by chapters 6, 9 and 10): AdamW over :func:`param_groups` (no decay on
    biases and norms), a linear warm-up over the first ``warmup_fraction`` of ``total_steps``
    (at least one step), then a linear decay to zero. The scheduler steps once per optimiser
    step.

    Raises:
        ValueError: if ``total_steps < 1`` or ``warmup_fraction`` is outside [0, 1), or as
            :func:`param_groups`.
    """
    from transformers import get_linear_schedule_with_warmup

    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(f"warmup_fraction must lie in [0, 1), got {warmup_fraction}")
    groups = param_groups(model, lr=learning_rate, weight_decay=weight_decay, verbose=verbose)
    optimizer = torch.optim.AdamW(groups)
    warmup_steps = max(1, int(warmup_fraction * total_steps))
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
    return optimizer, scheduler


__all__ = ["adamw_with_linear_warmup", "param_groups"]
