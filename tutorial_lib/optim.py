"""Optimiser parameter groups, defined once (as nanoGPT's ``configure_optimizers`` does).

Every chapter builds its optimiser from :func:`param_groups`: weight decay only on matrices
(weights of linear, convolution and embedding layers), never on biases and normalisation
weights (1-D tensors), which decay would pull towards zero for no regularising benefit; an
optional head with its own, larger learning rate (discriminative learning rates for
fine-tuning); frozen parameters left out. It prints what it built, so the reader sees how many
parameters each group trains.
"""

from __future__ import annotations

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


__all__ = ["param_groups"]
