"""The training loop of every chapter: :func:`train_step`, :func:`fit`, :func:`evaluate`.

:func:`train_step` is one optimiser step; :func:`fit` repeats it over epochs and adds what a
real run needs (validation, history, early stopping, checkpoints, resuming). Where it runs —
one CPU, one GPU, or N processes under ``torchrun`` with DDP or FSDP2 — is decided by a
:class:`~tutorial_lib.training.strategy.Strategy`, so the loop is the same loop everywhere; what
a run carries from epoch to epoch is one :class:`~tutorial_lib.training.state.RunState`.

Progress: interactive notebooks get ``tqdm`` bars (widgets where ``ipywidgets`` is installed, as
on Colab; text bars otherwise). Non-interactive executions — the book build, nbmake, scripts —
set ``TUTORIAL_NONINTERACTIVE=1`` and get no bars, only the one line per epoch that :func:`fit`
always prints, so static pages stay clean.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tutorial_lib.lora import lora_layers
from tutorial_lib.runtime import interactive
from tutorial_lib.training.batches import Batch, count_targets, forward, split_batch
from tutorial_lib.training.state import MONITORS, History, Monitor, RunState
from tutorial_lib.training.strategy import MixedPrecision, Strategy, check_grad_clip_norm

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@dataclass(frozen=True)
class StepResult:
    """What :func:`train_step` measured: the summed loss, correct predictions and targets of
    its micro-batches (sums, so that steps add up: ``total = total + result``)."""

    loss_sum: float = 0.0
    correct: int = 0
    targets: int = 0

    @property
    def loss(self) -> float:
        """The mean loss per target."""
        return self.loss_sum / self.targets

    def __add__(self, other: StepResult) -> StepResult:
        return StepResult(
            self.loss_sum + other.loss_sum,
            self.correct + other.correct,
            self.targets + other.targets,
        )


def train_step(
    model: nn.Module,
    micro_batches: Sequence[Batch],
    optimizer: torch.optim.Optimizer,
    strategy: Strategy,
    *,
    loss_fn: LossFn | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    grad_clip_norm: float | None = None,
) -> StepResult:
    """Take one optimiser step on the mean gradient of ``micro_batches`` and return its numbers.

    One micro-batch is an ordinary step; k of them accumulate the gradient of a k times larger
    batch. ``model`` is the module :meth:`Strategy.wrap` returned (a DDP wrapper under
    ``torchrun``); ``strategy`` supplies autocast, the gradient scaler and, on the last
    micro-batch only, the averaging of gradients between processes.

    Raises:
        FloatingPointError: if the loss of a micro-batch is not a finite number.
    """
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    result = StepResult()
    for index, batch in enumerate(micro_batches):
        inputs, targets = split_batch(strategy.to_device(batch))
        # Processes average their gradients on the last micro-batch only (DDP's no_sync).
        with strategy.sync_gradients(model, index == len(micro_batches) - 1):
            with strategy.autocast():
                logits = forward(model, inputs)
                loss = loss_fn(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()}; lower the learning rate")
            # Gradients add up over the micro-batches: dividing by their number makes the mean.
            strategy.backward(loss / len(micro_batches))  # scaled first for fp16
        size, correct = count_targets(logits, targets)
        result = result + StepResult(loss.item() * size, correct, size)
    strategy.step(model, optimizer, grad_clip_norm)  # unscale, clip, step, zero the gradients
    if scheduler is not None:
        scheduler.step()
    return result


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
    process predicts its share of the set and every process gets the whole result. It holds
    every logit in memory: for a language model's large vocabulary use :func:`evaluate`.

    Raises:
        ValueError: if ``loader`` yields no batch, or for both ``strategy`` and ``device``.
    """
    strategy = _one_strategy(strategy, device, caller="predict")
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
    total = len(loader.sampler) if sharded else 0
    return tuple(
        strategy.gather_in_order(torch.cat(part), total, sharded)
        for part in (all_logits, all_targets)
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
    strategy: Strategy | None = None,
) -> dict[str, float]:
    """Return ``{"loss": mean loss, "accuracy": fraction correct}`` of ``model`` over ``loader``.

    Both are averaged over targets — examples for a classifier, token positions for a language
    model — with ``loss_fn`` (a mean over its batch's targets) defaulting to cross-entropy. The
    loader is consumed batch by batch, so memory does not grow with the set. Under
    ``torchrun`` each process evaluates its share and every process returns the numbers of the
    whole set, counting each example once (the padding a ``DistributedSampler`` adds is
    dropped).

    Raises:
        ValueError: if ``loader`` yields no batch, or for both ``strategy`` and ``device``.
    """
    strategy = _one_strategy(strategy, device, caller="evaluate")
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    model.eval()
    shard = strategy.shard_loader(loader, training=False)
    # A DistributedSampler pads the set to a multiple of the processes by repeating examples,
    # at the end of some ranks' shares: keep only this rank's own examples.
    own = strategy.own_examples(len(loader.sampler)) if shard is not loader else None
    loss_sum, correct, count, taken, batches = 0.0, 0, 0, 0, 0
    for batch in shard:
        inputs, targets = split_batch(strategy.to_device(batch))
        with strategy.autocast():
            logits = forward(model, inputs)
        batches += 1
        if own is not None:
            keep = max(0, min(len(targets), own - taken))
            taken += len(targets)
            logits, targets = logits[:keep], targets[:keep]
            if keep == 0:
                continue
        size, right = count_targets(logits, targets)
        loss_sum += float(loss_fn(logits.float(), targets)) * size
        correct += right
        count += size
    if batches == 0:
        raise ValueError("the evaluation loader yielded no batches; give it at least one example")
    loss_sum, correct, count = strategy.reduce_sum(loss_sum, correct, count)
    return {"loss": loss_sum / count, "accuracy": correct / count}


def optimizer_steps_per_epoch(
    loader: Iterable[Batch], accumulation_steps: int = 1, strategy: Strategy | None = None
) -> int:
    """Return how many optimiser steps :func:`fit` takes per epoch on this process: the batches
    of this process's share of ``loader`` divided by ``accumulation_steps`` (rounded up). Size a
    learning-rate schedule with it, so it stays right under ``torchrun``."""
    strategy = strategy or Strategy.from_environment()
    return math.ceil(len(strategy.shard_loader(loader, training=True)) / accumulation_steps)


def fit(
    model: nn.Module,
    train_loader: DataLoader | Iterable[Batch],
    val_loader: DataLoader | Iterable[Batch] | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    *,
    loss_fn: LossFn | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    strategy: Strategy | None = None,
    device: torch.device | None = None,
    mixed_precision: MixedPrecision = None,
    accumulation_steps: int = 1,
    grad_clip_norm: float | None = None,
    max_steps_per_epoch: int | None = None,
    monitor: Monitor = "val_accuracy",
    patience: int | None = None,
    restore_best: bool | None = None,
    checkpoint_dir: Path | str | None = None,
    resume: bool = False,
    verbose: bool = True,
) -> History:
    """Train ``model`` for up to ``epochs`` epochs of :func:`train_step` and return the
    per-epoch :class:`History`: ``train_loss``, ``train_accuracy``, ``lr``, ``seconds``,
    ``samples_per_second`` and, with a ``val_loader``, ``val_loss`` and ``val_accuracy``, all
    counted per target (an example for a classifier, a token position for a language model).

    - Where: ``strategy`` (default :meth:`Strategy.from_environment` of ``device`` and
      ``mixed_precision``). Under ``torchrun`` each process trains on its share of a
      ``DataLoader`` (DDP, or FSDP2 with ``parallel="fsdp"``), metrics cover the whole
      validation set and only rank 0 prints and writes files. **Global batch = per-process
      batch × processes × ``accumulation_steps``**. Mixed precision (``None`` = automatic):
      bf16 on CUDA where native, else fp16 with a gradient scaler; off on the CPU. ``True``:
      the same on CUDA, and bf16 on a CPU that computes it natively (AVX-512-BF16, AMX).
    - ``scheduler`` steps after every optimiser step; ``grad_clip_norm`` clips before it.
    - The best epoch has the best ``monitor`` (a key of :data:`MONITORS`, whose value says
      whether lower or higher is better). ``patience``: stop after that many epochs without
      improvement. ``restore_best=True`` loads the best epoch's weights back into ``model`` at
      the end (from ``best.pt``, else a copy kept in memory); ``False`` keeps the last epoch's;
      the default ``None`` restores whenever ``checkpoint_dir`` or ``patience`` is given.
    - ``checkpoint_dir``: ``last.pt`` (model, optimiser, schedule, history, random states)
      after every epoch, ``best.pt`` whenever ``monitor`` improves. ``resume`` continues from
      ``last.pt`` bitwise as if never stopped (or afresh, an earlier ``best.pt`` renamed).

    Raises:
        ValueError: for ``strategy`` with ``device`` or ``mixed_precision``, an unknown
            ``monitor``, early stopping or ``restore_best=True`` on a validation metric without
            ``val_loader``, ``resume`` without ``checkpoint_dir``, an empty loader or
            ``max_steps_per_epoch=0``, ``accumulation_steps < 1``, a wrongly formed batch,
            merged LoRA layers (``unmerge()`` first), or, under torchrun, ranks with different
            numbers of batches.
        NotADirectoryError: if ``checkpoint_dir`` (or a folder above it) is a file.
        CheckpointError: if ``last.pt`` is unreadable or was written for another optimiser or
            another model.
        FloatingPointError: if the training or validation loss stops being a number.
    """
    strategy = _one_strategy(strategy, device, mixed_precision)
    _check_arguments(
        monitor, val_loader, patience, restore_best, resume, checkpoint_dir, accumulation_steps
    )
    check_grad_clip_norm(grad_clip_norm)  # before any step: 0 would silently train nothing
    _check_no_merged_lora(model)
    checkpoint_dir = _usable_folder(checkpoint_dir)
    say = print if verbose and strategy.is_main else _silent
    wrapped = strategy.wrap(model, optimizer)
    train_loader = strategy.shard_loader(train_loader, training=True)
    steps = _steps_per_epoch(train_loader, max_steps_per_epoch)
    _check_same_steps_on_every_rank(steps, strategy)
    _check_schedule(scheduler, epochs, steps, accumulation_steps, strategy, say)
    if restore_best is None:
        restore_best = checkpoint_dir is not None or patience is not None
    keep_best = "file" if checkpoint_dir is not None else "memory" if restore_best else None
    run = RunState(
        model, optimizer, scheduler, train_loader, strategy, checkpoint_dir, monitor, keep_best, say
    )
    if resume:
        run.resume()
    optimizer.zero_grad(set_to_none=True)
    step_options = {"loss_fn": loss_fn, "scheduler": scheduler, "grad_clip_norm": grad_clip_norm}

    for epoch in range(run.epochs_done, epochs):
        wrapped.train()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on all ranks
        started, totals = time.perf_counter(), StepResult()
        batches = progress_bar(
            itertools.islice(train_loader, steps),  # a capped epoch draws no extra batch
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not strategy.is_main,
        )
        for micro_batches in _groups(batches, accumulation_steps):
            totals += train_step(wrapped, micro_batches, optimizer, strategy, **step_options)
        record = _epoch_record(epoch, totals, time.perf_counter() - started, optimizer, strategy)
        if val_loader is not None:
            metrics = evaluate(model, val_loader, loss_fn, strategy=strategy)
            record.update({f"val_{key}": value for key, value in metrics.items()})
        run.track(record)
        if checkpoint_dir is not None:
            run.save_last()
        say(_epoch_line(record, epochs))
        if patience is not None and run.stale_epochs >= patience:
            say(
                f"early stop: {monitor} has not improved for {patience} epochs "
                f"(best {run.best_value:.4f} at epoch {run.best_epoch})"
            )
            break
    if restore_best:
        run.restore_best()
    return run.history


def _epoch_record(
    epoch: int, totals: StepResult, seconds: float, optimizer: Any, strategy: Strategy
) -> dict[str, float]:
    """The training half of an epoch's record: ``totals`` summed over all processes."""
    seen, loss_sum, correct = strategy.reduce_sum(totals.targets, totals.loss_sum, totals.correct)
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "lr": optimizer.param_groups[0]["lr"],
        "seconds": seconds,
        "samples_per_second": seen / seconds if seconds > 0 else math.nan,
    }


def _groups(batches: Iterable[Batch], size: int) -> Iterator[list[Batch]]:
    """The batches in lists of ``size`` (the last one holds what is left): the micro-batches of
    each optimiser step."""
    iterator = iter(batches)
    while group := list(itertools.islice(iterator, size)):
        yield group


def _one_strategy(
    strategy: Strategy | None,
    device: torch.device | None,
    mixed_precision: MixedPrecision = None,
    caller: str = "fit",
) -> Strategy:
    """The run's strategy: the one given, or the environment's for ``device`` and
    ``mixed_precision``. Both at once would leave the two silently ignored: refused."""
    if strategy is None:
        return Strategy.from_environment(device, mixed_precision)
    if device is not None or mixed_precision is not None:
        raise ValueError(
            f"give {caller} either a strategy or device/mixed_precision, not both (the strategy "
            "already fixes them): Strategy.from_environment(device, mixed_precision) builds one"
        )
    return strategy


def _silent(*args: Any, **kwargs: Any) -> None:
    """The ``print`` of processes other than rank 0 and of ``verbose=False``."""


def _check_arguments(
    monitor: str,
    val_loader: Any,
    patience: int | None,
    restore_best: bool | None,
    resume: bool,
    checkpoint_dir: Any,
    accumulation_steps: int,
) -> None:
    if monitor not in MONITORS:
        raise ValueError(
            f"monitor={monitor!r} is not a metric fit records; use one of {tuple(MONITORS)}"
        )
    if monitor.startswith("val_") and val_loader is None:
        if patience is not None:
            raise ValueError(f"early stopping on {monitor!r} needs a val_loader")
        if restore_best:
            raise ValueError(f"restore_best=True on {monitor!r} needs a val_loader")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    if not isinstance(accumulation_steps, int) or accumulation_steps < 1:
        raise ValueError(
            f"accumulation_steps must be a whole number ≥ 1, not {accumulation_steps!r}"
        )


def _check_no_merged_lora(model: nn.Module) -> None:
    """A merged LoRA layer adds nothing to its A and B in the forward pass, so they would get
    no gradient and the adapter would not train."""
    merged = [name for name, layer in lora_layers(model).items() if layer.merged]
    if merged:
        raise ValueError(
            f"{len(merged)} LoRA layers of the model are merged (e.g. {merged[0]}), so no "
            "gradient reaches their A and B: call lora.unmerge() before training "
            "(merge only for inference)"
        )


def _usable_folder(checkpoint_dir: Path | str | None) -> Path | None:
    """Return ``checkpoint_dir`` as a ``Path``, refusing, before any epoch is trained, a folder
    that could never be written: the folder itself or one above it is a file."""
    if checkpoint_dir is None:
        return None
    checkpoint_dir = Path(checkpoint_dir)
    for folder in (checkpoint_dir, *checkpoint_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(
                    f"checkpoint_dir {checkpoint_dir} cannot be a folder: {folder} is a file; "
                    "pass a folder path (it is created when missing)"
                )
            break
    return checkpoint_dir


def _check_same_steps_on_every_rank(steps: int | None, strategy: Strategy) -> None:
    """Under torchrun every rank must take the same number of steps: a rank that finishes its
    epoch early calls the next collective while the others still average gradients, and gloo
    or NCCL then fail with a message about data sizes (or wait forever)."""
    if not strategy.distributed:
        return
    per_rank = strategy.gather_object(steps)
    if len(set(per_rank)) > 1:
        counts = ", ".join(f"rank {rank}: {count}" for rank, count in enumerate(per_rank))
        raise ValueError(
            f"the ranks' batch counts per epoch differ ({counts}); every process must take "
            "the same number of steps. Give fit a DataLoader (it is split evenly between the "
            "ranks) or cap the epoch with max_steps_per_epoch"
        )


def _check_schedule(
    scheduler: Any,
    epochs: int,
    steps: int | None,
    accumulation_steps: int,
    strategy: Strategy,
    say: Callable[..., None],
) -> None:
    """Under torchrun each process takes 1/N of the steps: a schedule sized with
    ``len(train_loader)`` would stop part-way (one-cycle would never anneal). Say so."""
    planned = getattr(scheduler, "total_steps", None)
    if not strategy.distributed or planned is None or steps is None:
        return
    taken = epochs * math.ceil(steps / accumulation_steps)
    if planned > taken:
        say(
            f"NOTICE: the learning-rate schedule plans {planned} steps but each of the "
            f"{strategy.world_size} processes takes {taken}; size it with "
            "train.optimizer_steps_per_epoch(train_loader) so it completes"
        )


def _steps_per_epoch(loader: Any, max_steps_per_epoch: int | None) -> int | None:
    """Batches per epoch on this process (``None`` for an iterable without a length)."""
    steps = len(loader) if hasattr(loader, "__len__") else None
    if max_steps_per_epoch is not None:
        steps = max_steps_per_epoch if steps is None else min(steps, max_steps_per_epoch)
    if steps is not None and steps <= 0:
        raise ValueError(
            f"an epoch would have {steps} training steps (the training loader is "
            "empty or max_steps_per_epoch is 0); give it at least one batch"
        )
    return steps


def _epoch_line(record: dict[str, float], epochs: int) -> str:
    # short labels keep the line within the book's 100 columns
    labels = {"train_loss": "loss", "train_accuracy": "acc", "val_loss": "val loss",
              "val_accuracy": "val acc"}  # fmt: skip
    shown = "  ".join(
        f"{label} {record[key]:.4f}" for key, label in labels.items() if key in record
    )
    return (
        f"epoch {record['epoch']}/{epochs}  {shown}  ({record['seconds']:.1f} s, "
        f"{record['samples_per_second']:,.0f}/s)"
    )


__all__ = [
    "MONITORS",
    "History",
    "StepResult",
    "evaluate",
    "fit",
    "optimizer_steps_per_epoch",
    "predict",
    "progress_bar",
    "train_step",
]
