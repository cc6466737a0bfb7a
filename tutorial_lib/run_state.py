"""What a run of :func:`tutorial_lib.train.fit` carries from epoch to epoch, and its files.

:class:`History` is what ``fit`` returns; :class:`Progress` adds the best value so far and the
epochs without improvement. The functions here keep ``best.pt`` and ``last.pt`` in step with
them, on rank 0 only, and bring a run back from ``last.pt``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tutorial_lib import checkpoints
from tutorial_lib.checkpoints import CheckpointError, load_checkpoint, rng_state, set_rng_state
from tutorial_lib.distributed import Strategy
from tutorial_lib.runtime import notice


@dataclass
class History:
    """Per-epoch records of :func:`fit`: ``records[k]`` maps metric names to values of epoch k+1."""

    records: list[dict[str, float]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: str) -> list[float]:
        """Return the values of one metric over the epochs, e.g. ``history["val_accuracy"]``."""
        return [record[key] for record in self.records]

    @property
    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []


@dataclass
class Progress:
    """What survives an epoch boundary: written into ``last.pt``, read back on resume."""

    history: History = field(default_factory=History)
    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0


def _improves(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if "loss" in monitor else value > best


def track_best(
    progress: Progress,
    record: dict[str, float],
    monitor: str,
    strategy: Strategy,
    model: nn.Module,
    checkpoint_dir: Path | None,
    keep_in_memory: bool,
    best_in_memory: dict[str, torch.Tensor] | None,
) -> dict | None:
    """Update the best value; write ``best.pt`` or keep a copy when it improved. Returns the
    in-memory best weights (unchanged when it did not improve)."""
    if math.isnan(record.get("val_loss", 0.0)):
        raise FloatingPointError(
            f"the validation loss is NaN at epoch {record['epoch']}: the "
            "model outputs non-numbers on some example; lower the learning "
            "rate or check the validation data"
        )
    value = record.get(monitor)
    if value is None:  # a validation metric without a val_loader: nothing to compare
        return best_in_memory
    if not _improves(value, progress.best_value, monitor):
        progress.stale_epochs += 1
        return best_in_memory
    progress.best_value, progress.best_epoch, progress.stale_epochs = value, record["epoch"], 0
    if checkpoint_dir is None and not keep_in_memory:
        return best_in_memory
    weights = strategy.model_state_dict(model)
    if keep_in_memory:
        return {key: tensor.detach().to("cpu", copy=True) for key, tensor in weights.items()}
    if strategy.is_main:
        checkpoints.save_checkpoint(
            checkpoint_dir / "best.pt",
            model=weights,
            epoch=record["epoch"],
            monitor=monitor,
            value=value,
        )
    strategy.barrier()
    return best_in_memory


def save_last(
    path: Path,
    progress: Progress,
    strategy: Strategy,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_loader: Any,
) -> None:
    """Write ``last.pt`` from rank 0; the state is gathered on every rank (collectives)."""
    state = {
        "model": strategy.model_state_dict(model),
        "optimizer": strategy.optimizer_state_dict(model, optimizer),
        "optimizer_class": type(optimizer).__name__,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "history": progress.history.records,
        "epoch": progress.history.records[-1]["epoch"],
        "best_value": progress.best_value,
        "best_epoch": progress.best_epoch,
        "stale_epochs": progress.stale_epochs,
        "rng_states": strategy.gather_object(rng_state(train_loader)),  # one per process
    }
    if strategy.is_main:
        checkpoints.save_checkpoint(path, **state)
    strategy.barrier()


def resume_from(
    path: Path,
    strategy: Strategy,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    train_loader: Any,
    say: Callable[..., None],
) -> Progress:
    """Load ``last.pt`` into the run and return its progress (a fresh one without the file).

    Without ``last.pt`` an earlier run's ``best.pt`` in the same folder is renamed first (on
    rank 0, announced), since the fresh run would overwrite it with its own first epoch.

    Raises:
        CheckpointError: if ``last.pt`` is unreadable, or was written for another optimiser or
            another model (its weights do not fit ``model``).
    """
    if not path.is_file():
        say(f"resume: there is no {path.name} in {path.parent} yet, so training starts afresh")
        if strategy.is_main:
            _move_earlier_best_aside(path.parent / "best.pt")
        strategy.barrier()
        return Progress()
    state = load_checkpoint(path)
    saved_class = state.get("optimizer_class")
    if saved_class is not None and saved_class != type(optimizer).__name__:
        raise CheckpointError(
            f"{path} holds the state of a {saved_class} optimiser but this run "
            f"uses {type(optimizer).__name__}; build the same optimiser as the "
            "run that wrote it, or start afresh in another checkpoint_dir"
        )
    _load_weights(strategy, model, state["model"], path)
    try:
        strategy.load_optimizer_state_dict(model, optimizer, state["optimizer"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(
            f"the optimiser state in {path} does not fit this optimiser "
            f"({error}); its parameter groups or settings differ from the run "
            "that wrote it"
        ) from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng_states = state.get("rng_states") or []
    if len(rng_states) == strategy.world_size:
        set_rng_state(rng_states[strategy.rank], train_loader)
    else:
        say(
            f"resume: {path.name} was written by {len(rng_states)} process(es), this run has "
            f"{strategy.world_size}; the random streams continue from new seeds"
        )
    say(f"resumed from {path} after epoch {state['epoch']}")
    return Progress(
        History(list(state["history"])),
        state["epoch"],
        state["best_value"],
        state.get("best_epoch"),
        state["stale_epochs"],
    )


def _load_weights(
    strategy: Strategy, model: nn.Module, weights: dict[str, torch.Tensor], path: Path
) -> None:
    checkpoints.load_weights(
        model, weights, path, lambda state: strategy.load_model_state_dict(model, state)
    )


def _move_earlier_best_aside(best_path: Path) -> None:
    """Rename ``best.pt`` of an earlier run to ``best.earlier-N.pt`` and say so."""
    if not best_path.is_file():
        return
    number = 1
    while (aside := best_path.with_name(f"best.earlier-{number}.pt")).exists():
        number += 1
    best_path.rename(aside)
    notice(
        f"{best_path} was written by an earlier run and this run starts afresh (there is no "
        f"last.pt to resume from), so it was renamed to {aside.name} rather than overwritten; "
        "delete it when you no longer need it"
    )


def restore_best(
    progress: Progress,
    strategy: Strategy,
    model: nn.Module,
    checkpoint_dir: Path | None,
    best_in_memory: dict | None,
    say: Callable[..., None],
) -> None:
    """Load back the best weights, only if this run (or the run it resumed) kept them."""
    if best_in_memory is not None:
        strategy.load_model_state_dict(model, best_in_memory)
        return
    best_path = checkpoint_dir / "best.pt" if checkpoint_dir is not None else None
    if progress.best_epoch is None or best_path is None or not best_path.is_file():
        return
    best = load_checkpoint(best_path)
    if best.get("epoch") != progress.best_epoch:
        say(
            f"not loading {best_path}: it holds epoch {best.get('epoch')}, but this run's best "
            f"was epoch {progress.best_epoch} (another run wrote it)"
        )
        return
    _load_weights(strategy, model, best["model"], best_path)
