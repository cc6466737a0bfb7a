"""What a run of :func:`tutorial_lib.train.fit` carries from epoch to epoch, and its files.

:class:`History` is what ``fit`` returns. :class:`RunState` is the one object that holds a run's
model, optimiser, schedule, loader, strategy and folder together with its history, the best
value so far and the epochs without improvement; its four methods are the four things the loop
asks of it: :meth:`~RunState.resume` from ``last.pt``, :meth:`~RunState.track` an epoch's record
(writing ``best.pt`` or keeping the best weights in memory), :meth:`~RunState.save_last`, and
:meth:`~RunState.restore_best` at the end. Files are written by rank 0 only.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from tutorial_lib.runtime import notice
from tutorial_lib.training import checkpoints
from tutorial_lib.training.strategy import Strategy

Monitor = Literal["val_accuracy", "val_loss", "train_accuracy", "train_loss"]
"""A metric :func:`fit` can monitor for early stopping and ``best.pt``."""

MONITORS: dict[Monitor, Literal["min", "max"]] = {
    "val_accuracy": "max",
    "val_loss": "min",
    "train_accuracy": "max",
    "train_loss": "min",
}
"""The metrics :func:`fit` can monitor for early stopping and ``best.pt``, each with its
direction: ``"max"`` when higher is better, ``"min"`` when lower is."""


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
class RunState:
    """One training run: what it trains and where its files go, and what survives an epoch
    boundary (``history``, ``best_value``, ``best_epoch``, ``stale_epochs``: written into
    ``last.pt``, read back by :meth:`resume`).

    ``keep_best`` says where the best weights are kept: ``"file"`` (``best.pt`` in
    ``checkpoint_dir``), ``"memory"`` (a CPU copy) or ``None`` (not kept: only the best value is
    followed, for early stopping).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    strategy: Strategy
    checkpoint_dir: Path | None
    monitor: str
    keep_best: Literal["file", "memory"] | None
    say: Callable[..., None] = print
    history: History = field(default_factory=History)
    best_value: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    best_weights: dict[str, torch.Tensor] | None = None

    @property
    def epochs_done(self) -> int:
        """The epochs this run (with the run it resumed) has finished."""
        return int(self.history.records[-1]["epoch"]) if self.history.records else 0

    def _improves(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if MONITORS[self.monitor] == "min":
            return value < self.best_value
        return value > self.best_value

    def track(self, record: dict[str, float]) -> None:
        """Add an epoch's ``record`` to the history and follow the best value: on improvement
        write ``best.pt`` or keep a copy of the weights (as ``keep_best`` says).

        Raises:
            FloatingPointError: if the record's validation loss is NaN.
        """
        if math.isnan(record.get("val_loss", 0.0)):
            raise FloatingPointError(
                f"the validation loss is NaN at epoch {record['epoch']}: the "
                "model outputs non-numbers on some example; lower the learning "
                "rate or check the validation data"
            )
        self.history.records.append(record)
        value = record.get(self.monitor)
        if value is None:  # a validation metric without a val_loader: nothing to compare
            return
        if not self._improves(value):
            self.stale_epochs += 1
            return
        self.best_value, self.best_epoch, self.stale_epochs = value, record["epoch"], 0
        if self.keep_best is None:
            return
        weights = self.strategy.model_state_dict(self.model)  # collective under FSDP2
        if self.keep_best == "memory":
            # tensors copied to the CPU; anything else (a module's extra state, e.g. LoRA's
            # merged flag) deep-copied, so later training cannot change the kept copy
            self.best_weights = {
                key: t.detach().to("cpu", copy=True)
                if isinstance(t, torch.Tensor)
                else copy.deepcopy(t)
                for key, t in weights.items()
            }
            return
        if self.strategy.is_main:
            checkpoints.save_checkpoint(
                self.checkpoint_dir / "best.pt",
                model=weights,
                epoch=record["epoch"],
                monitor=self.monitor,
                value=value,
            )
        self.strategy.barrier()

    def save_last(self) -> None:
        """Write ``last.pt`` from rank 0; the state is gathered on every rank (collectives)."""
        strategy = self.strategy
        state = {
            "model": strategy.model_state_dict(self.model),
            "optimizer": strategy.optimizer_state_dict(self.model, self.optimizer),
            "optimizer_class": type(self.optimizer).__name__,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "history": self.history.records,
            "epoch": self.epochs_done,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "stale_epochs": self.stale_epochs,
            # one per process
            "rng_states": strategy.gather_object(checkpoints.rng_state(self.train_loader)),
        }
        if strategy.is_main:
            checkpoints.save_checkpoint(self.checkpoint_dir / "last.pt", **state)
        strategy.barrier()

    def resume(self) -> None:
        """Load ``last.pt`` into the run: weights, optimiser, schedule, history, best value and
        random states, so training continues exactly as if never stopped.

        Without ``last.pt`` the run starts afresh, and an earlier run's ``best.pt`` in the same
        folder is renamed first (on rank 0, announced), since the fresh run would overwrite it.

        Raises:
            CheckpointError: if ``last.pt`` is unreadable, or was written for another optimiser
                or another model (its weights do not fit ``model``).
        """
        path, strategy = self.checkpoint_dir / "last.pt", self.strategy
        if not path.is_file():
            self.say(
                f"resume: there is no {path.name} in {path.parent} yet, so training starts afresh"
            )
            if strategy.is_main:
                _move_earlier_best_aside(path.parent / "best.pt")
            strategy.barrier()
            return
        state = checkpoints.load_checkpoint(path)
        saved_class = state.get("optimizer_class")
        if saved_class is not None and saved_class != type(self.optimizer).__name__:
            raise checkpoints.CheckpointError(
                f"{path} holds the state of a {saved_class} optimiser but this run "
                f"uses {type(self.optimizer).__name__}; build the same optimiser as the "
                "run that wrote it, or start afresh in another checkpoint_dir"
            )
        self._load_weights(state["model"], path)
        try:
            strategy.load_optimizer_state_dict(self.model, self.optimizer, state["optimizer"])
        except (KeyError, ValueError) as error:
            raise checkpoints.CheckpointError(
                f"the optimiser state in {path} does not fit this optimiser "
                f"({error}); its parameter groups or settings differ from the run "
                "that wrote it"
            ) from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        rng_states = state.get("rng_states") or []
        if len(rng_states) == strategy.world_size:
            checkpoints.set_rng_state(rng_states[strategy.rank], self.train_loader)
        else:
            self.say(
                f"resume: {path.name} was written by {len(rng_states)} process(es), this run "
                f"has {strategy.world_size}; the random streams continue from new seeds"
            )
        self.say(f"resumed from {path} after epoch {state['epoch']}")
        self.history = History(list(state["history"]))
        self.best_value, self.best_epoch = state["best_value"], state.get("best_epoch")
        self.stale_epochs = state["stale_epochs"]

    def restore_best(self) -> None:
        """Load the best weights back into the model, only if this run (or the run it resumed)
        kept them: from memory, or from ``best.pt`` when that file holds this run's best epoch
        (another run may have written it since; that is said, and the file is not loaded)."""
        if self.best_weights is not None:
            self.strategy.load_model_state_dict(self.model, self.best_weights)
            return
        if self.keep_best != "file" or self.best_epoch is None:
            return
        best_path = self.checkpoint_dir / "best.pt"
        if not best_path.is_file():
            return
        best = checkpoints.load_checkpoint(best_path)
        if best.get("epoch") != self.best_epoch:
            self.say(
                f"not loading {best_path}: it holds epoch {best.get('epoch')}, but this run's "
                f"best was epoch {self.best_epoch} (another run wrote it)"
            )
            return
        self._load_weights(best["model"], best_path)

    def _load_weights(self, weights: dict[str, torch.Tensor], path: Path) -> None:
        checkpoints.load_weights(
            self.model,
            weights,
            path,
            lambda state: self.strategy.load_model_state_dict(self.model, state),
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
