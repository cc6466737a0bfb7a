"""One training loop for every chapter: :func:`fit` and :func:`evaluate`.

Batches may be ``(inputs, targets)`` tuples (images, token ids) or Hugging Face style dicts
with a ``"labels"`` entry; models may return logits or an object with a ``.logits`` attribute.
That is handled once, in :func:`split_batch` and :func:`forward`, so no chapter needs a second
loop.

Progress: interactive notebooks get ``tqdm`` bars (widgets where ``ipywidgets`` is installed, as
on Colab; text bars otherwise). Non-interactive executions — the book build, nbmake, scripts —
set ``TUTORIAL_NONINTERACTIVE=1`` and get no bars, only the one line per epoch that :func:`fit`
always prints, so static pages stay clean.

Where the loop runs — one CPU, one GPU, or N processes under ``torchrun`` with DDP or FSDP2 —
is decided by a :class:`tutorial_lib.distributed.Strategy`, so the loop itself is the same
loop everywhere. Checkpoint files are handled by :mod:`tutorial_lib.checkpoints`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tutorial_lib.checkpoints import (CheckpointError, load_checkpoint, load_model, rng_state,
                                      save_checkpoint, save_model, set_rng_state)
from tutorial_lib.distributed import Strategy
from tutorial_lib.runtime import interactive

Batch = tuple[Any, torch.Tensor] | list | Mapping[str, torch.Tensor]


def progress_bar(iterable: Iterable, **kwargs) -> Iterable:
    """Wrap ``iterable`` in a tqdm bar when running interactively; return it unchanged otherwise."""
    if not interactive():
        return iterable
    try:
        import ipywidgets  # noqa: F401  (tqdm.auto needs it for notebook widgets)
        from tqdm.auto import tqdm
    except ImportError:
        from tqdm.std import tqdm
    return tqdm(iterable, **kwargs)


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


def _batch_size(targets: torch.Tensor) -> int:
    return int(targets.shape[0])


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


MONITORS = ("val_accuracy", "val_loss", "train_accuracy", "train_loss")
"""The metrics :func:`fit` can monitor for early stopping and ``best.pt``."""


@torch.no_grad()
def predict(
    model: nn.Module,
    loader: Iterable[Batch],
    device: torch.device | None = None,
    strategy: Strategy | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, targets)`` of a whole loader, on the CPU, in loader order.

    Autocast follows the mixed-precision choice of ``strategy`` (default: automatic, as in
    :func:`fit` — bf16 or fp16 on CUDA, full precision on the CPU). Under ``torchrun`` each
    process predicts its share of the set and every process gets the whole result.

    Raises:
        ValueError: if ``loader`` yields no batch.
    """
    strategy = strategy or Strategy.from_environment(device)
    model.eval()
    shard = strategy.shard_loader(loader, training=False)
    all_logits, all_targets = [], []
    for batch in shard:
        inputs, targets = split_batch(strategy.to_device(batch))
        with strategy.autocast():
            logits = forward(model, inputs)
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    if not all_logits:
        raise ValueError("the evaluation loader yielded no batches; give it at least one example")
    sharded = shard is not loader
    total = len(loader.dataset) if sharded else 0
    return tuple(strategy.gather_in_order(torch.cat(part), total, sharded)
                 for part in (all_logits, all_targets))


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
    strategy: Strategy | None = None,
) -> dict[str, float]:
    """Return ``{"loss": mean loss, "accuracy": fraction correct}`` of ``model`` over ``loader``.

    The loss is averaged over examples (not batches), with ``loss_fn`` defaulting to
    cross-entropy. Under ``torchrun`` every process returns the numbers of the whole set.

    Raises:
        ValueError: if ``loader`` yields no batch.
    """
    logits, targets = predict(model, loader, device, strategy)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return {
        "loss": float(loss_fn(logits, targets)),
        "accuracy": float((logits.argmax(dim=1) == targets).float().mean()),
    }


def optimizer_steps_per_epoch(loader: Iterable[Batch], accumulation_steps: int = 1,
                              strategy: Strategy | None = None) -> int:
    """Return how many optimiser steps :func:`fit` takes per epoch on this process: the batches
    of this process's share of ``loader`` divided by ``accumulation_steps`` (rounded up). Size a
    learning-rate schedule with it, so it stays right under ``torchrun``."""
    strategy = strategy or Strategy.from_environment()
    return math.ceil(len(strategy.shard_loader(loader, training=True)) / accumulation_steps)


@dataclass
class _Progress:
    """What survives an epoch boundary: written into ``last.pt``, read back on resume."""

    history: History = field(default_factory=History)
    epoch: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0


def fit(
    model: nn.Module,
    train_loader: DataLoader | Iterable[Batch],
    val_loader: DataLoader | Iterable[Batch] | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    device: torch.device | None = None,
    monitor: str = "val_accuracy",
    patience: int | None = None,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    grad_clip_norm: float | None = None,
    mixed_precision: bool | str | None = None,
    max_steps_per_epoch: int | None = None,
    verbose: bool = True,
    accumulation_steps: int = 1,
    strategy: Strategy | None = None,
) -> History:
    """Train ``model`` for up to ``epochs`` epochs and return the per-epoch :class:`History`.

    The same call runs as ``python script.py`` and as ``torchrun --nproc_per_node=N script.py``
    (or ``--nnodes=M``): ``strategy`` (default :meth:`Strategy.from_environment` of ``device``
    and ``mixed_precision``) then wraps the model in DDP (FSDP2 with
    ``Strategy.from_environment(parallel="fsdp")``), gives each process its share of a
    ``DataLoader`` through a ``DistributedSampler``, evaluates on the whole validation set and
    lets only rank 0 print and write checkpoints. **Global batch = per-process batch × number
    of processes × ``accumulation_steps``**: each optimiser step averages the gradients of
    ``accumulation_steps`` micro-batches (the loss is divided by it; processes synchronise on
    the last micro-batch only) over all processes.

    Each epoch records ``train_loss``, ``train_accuracy``, ``lr``, ``seconds``,
    ``samples_per_second`` and, with a ``val_loader``, ``val_loss`` and ``val_accuracy``.
    ``scheduler`` steps after every optimiser step. With ``patience``, training stops when
    ``monitor`` (one of :data:`MONITORS`; higher is better for accuracies) has not improved
    for that many epochs. With ``checkpoint_dir``, ``last.pt`` (model, optimiser, scheduler,
    history, random states) is written after every epoch and ``best.pt`` whenever ``monitor``
    improves; the best weights this run (or the run it resumed) kept are loaded back into
    ``model`` at the end. ``resume`` continues from ``last.pt`` exactly as if never stopped.
    Mixed precision (``None`` = automatic): bf16 on CUDA where supported, else fp16 with a
    gradient scaler; off on the CPU unless ``"bf16"`` is asked for.

    Raises:
        ValueError: for an unknown ``monitor``, early stopping on a validation metric without
            ``val_loader``, ``resume`` without ``checkpoint_dir``, an empty loader or
            ``max_steps_per_epoch=0``, ``accumulation_steps < 1``, or a wrongly formed batch.
        CheckpointError: if ``last.pt`` is unreadable or was written for another optimiser.
        FloatingPointError: if the training or validation loss stops being a number.
    """
    strategy = strategy or Strategy.from_environment(device, mixed_precision)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    _check_arguments(monitor, val_loader, patience, resume, checkpoint_dir, accumulation_steps)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    say = print if verbose and strategy.is_main else _silent
    wrapped = strategy.wrap(model, optimizer)
    train_loader = strategy.shard_loader(train_loader, training=True)
    steps = _steps_per_epoch(train_loader, max_steps_per_epoch, accumulation_steps)
    progress, best_in_memory = _Progress(), None
    if resume:
        progress = _resume(checkpoint_dir / "last.pt", strategy, model, optimizer, scheduler,
                           train_loader, say)
    optimizer.zero_grad(set_to_none=True)

    for epoch in range(progress.epoch, epochs):
        wrapped.train()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on all ranks
        started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        batches = progress_bar(train_loader, total=steps, desc=f"epoch {epoch + 1}/{epochs}",
                               leave=False, disable=not strategy.is_main)
        for step, batch in enumerate(batches):
            if steps is not None and step >= steps:
                break
            inputs, targets = split_batch(strategy.to_device(batch))
            # Processes average their gradients only on the last micro-batch of a step.
            last_micro_step = (step + 1) % accumulation_steps == 0 or step + 1 == steps
            with strategy.sync_gradients(wrapped, last_micro_step):
                with strategy.autocast():
                    logits = forward(wrapped, inputs)
                    loss = loss_fn(logits, targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1},"
                                             f" step {step}; lower the learning rate")
                strategy.backward(loss / accumulation_steps)  # gradients add up over micro-steps
            if last_micro_step:
                strategy.step(wrapped, optimizer, grad_clip_norm)  # clip, step, zero the grads
                if scheduler is not None:
                    scheduler.step()
            size = _batch_size(targets)
            seen += size
            loss_sum += loss.item() * size
            correct += int((logits.argmax(dim=1) == targets).sum())
        seconds = time.perf_counter() - started
        seen, loss_sum, correct = strategy.reduce_sum(seen, loss_sum, correct)
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "samples_per_second": seen / seconds if seconds > 0 else math.nan,
        }
        if val_loader is not None:
            metrics = evaluate(model, val_loader, loss_fn, strategy=strategy)
            record.update({f"val_{key}": value for key, value in metrics.items()})
        progress.history.records.append(record)
        best_in_memory = _track_best(progress, record, monitor, strategy, model, checkpoint_dir,
                                     keep_in_memory=checkpoint_dir is None and patience is not None,
                                     best_in_memory=best_in_memory)
        if checkpoint_dir is not None:
            _save_last(checkpoint_dir / "last.pt", progress, strategy, model, optimizer,
                       scheduler, train_loader)
        say(_epoch_line(record, epochs))
        if patience is not None and progress.stale_epochs >= patience:
            say(f"early stop: {monitor} has not improved for {patience} epochs "
                f"(best {progress.best_value:.4f} at epoch {progress.best_epoch})")
            break

    _restore_best(progress, strategy, model, checkpoint_dir, best_in_memory, say)
    return progress.history


def _silent(*args: Any, **kwargs: Any) -> None:
    """The ``print`` of processes other than rank 0 and of ``verbose=False``."""


def _check_arguments(monitor: str, val_loader: Any, patience: int | None, resume: bool,
                     checkpoint_dir: Any, accumulation_steps: int) -> None:
    if monitor not in MONITORS:
        raise ValueError(f"monitor={monitor!r} is not a metric fit records; use one of {MONITORS}")
    if monitor.startswith("val_") and val_loader is None and patience is not None:
        raise ValueError(f"early stopping on {monitor!r} needs a val_loader")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(f"accumulation_steps must be a whole number ≥ 1, not {accumulation_steps!r}")


def _steps_per_epoch(loader: Any, max_steps_per_epoch: int | None,
                     accumulation_steps: int) -> int | None:
    """Batches per epoch on this process (``None`` for an iterable without a length)."""
    steps = len(loader) if hasattr(loader, "__len__") else None
    if max_steps_per_epoch is not None:
        steps = max_steps_per_epoch if steps is None else min(steps, max_steps_per_epoch)
    if steps is not None and steps <= 0:
        raise ValueError(f"an epoch would have {steps} training steps (the training loader is "
                         "empty or max_steps_per_epoch is 0); give it at least one batch")
    if steps is None and accumulation_steps > 1:
        raise ValueError("accumulation_steps > 1 needs a training loader with a length (or "
                         "max_steps_per_epoch) so that an epoch's last optimiser step is known")
    return steps


def _improves(value: float, best: float | None, monitor: str) -> bool:
    if best is None:
        return True
    return value < best if "loss" in monitor else value > best


def _track_best(progress: _Progress, record: dict[str, float], monitor: str, strategy: Strategy,
                model: nn.Module, checkpoint_dir: Path | None, keep_in_memory: bool,
                best_in_memory: dict[str, torch.Tensor] | None) -> dict | None:
    """Update the best value; write ``best.pt`` or keep a copy when it improved. Returns the
    in-memory best weights (unchanged when it did not improve)."""
    if math.isnan(record.get("val_loss", 0.0)):
        raise FloatingPointError(f"the validation loss is NaN at epoch {record['epoch']}: the "
                                 "model outputs non-numbers on some example; lower the learning "
                                 "rate or check the validation data")
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
        save_checkpoint(checkpoint_dir / "best.pt", model=weights, epoch=record["epoch"],
                        monitor=monitor, value=value)
    strategy.barrier()
    return best_in_memory


def _save_last(path: Path, progress: _Progress, strategy: Strategy, model: nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Any, train_loader: Any) -> None:
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
        save_checkpoint(path, **state)
    strategy.barrier()


def _resume(path: Path, strategy: Strategy, model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: Any, train_loader: Any, say: Callable[..., None]) -> _Progress:
    """Load ``last.pt`` into the run and return its progress (a fresh one without the file)."""
    if not path.is_file():
        say(f"resume: there is no {path.name} in {path.parent} yet, so training starts afresh")
        return _Progress()
    state = load_checkpoint(path)
    saved_class = state.get("optimizer_class")
    if saved_class is not None and saved_class != type(optimizer).__name__:
        raise CheckpointError(f"{path} holds the state of a {saved_class} optimiser but this run "
                              f"uses {type(optimizer).__name__}; build the same optimiser as the "
                              "run that wrote it, or start afresh in another checkpoint_dir")
    strategy.load_model_state_dict(model, state["model"])
    try:
        strategy.load_optimizer_state_dict(model, optimizer, state["optimizer"])
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"the optimiser state in {path} does not fit this optimiser "
                              f"({error}); its parameter groups or settings differ from the run "
                              "that wrote it") from None
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    rng_states = state.get("rng_states") or []
    if len(rng_states) == strategy.world_size:
        set_rng_state(rng_states[strategy.rank], train_loader)
    else:
        say(f"resume: {path.name} was written by {len(rng_states)} process(es), this run has "
            f"{strategy.world_size}; the random streams continue from new seeds")
    say(f"resumed from {path} after epoch {state['epoch']}")
    return _Progress(History(list(state["history"])), state["epoch"], state["best_value"],
                     state.get("best_epoch"), state["stale_epochs"])


def _restore_best(progress: _Progress, strategy: Strategy, model: nn.Module,
                  checkpoint_dir: Path | None, best_in_memory: dict | None,
                  say: Callable[..., None]) -> None:
    """Load back the best weights, only if this run (or the run it resumed) kept them."""
    if best_in_memory is not None:
        strategy.load_model_state_dict(model, best_in_memory)
        return
    best_path = checkpoint_dir / "best.pt" if checkpoint_dir is not None else None
    if progress.best_epoch is None or best_path is None or not best_path.is_file():
        return
    best = load_checkpoint(best_path)
    if best.get("epoch") != progress.best_epoch:
        say(f"not loading {best_path}: it holds epoch {best.get('epoch')}, but this run's best "
            f"was epoch {progress.best_epoch} (another run wrote it)")
        return
    strategy.load_model_state_dict(model, best["model"])


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    keys = ("train_loss", "train_accuracy", "val_loss", "val_accuracy")
    shown = "  ".join(f"{key} {record[key]:.4f}" for key in keys if key in record)
    return (f"epoch {record['epoch']}/{epochs}  {shown}  ({record['seconds']:.1f} s, "
            f"{record['samples_per_second']:.0f} samples/s)")


_save_checkpoint = save_checkpoint  # the name earlier code used
__all__ = ["History", "MONITORS", "CheckpointError", "Strategy", "evaluate", "fit", "forward",
           "load_checkpoint", "load_model", "optimizer_steps_per_epoch", "predict",
           "progress_bar", "save_checkpoint", "save_model", "split_batch", "to_device"]
