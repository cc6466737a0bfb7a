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
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from tutorial_lib.checkpoints import CheckpointError, load_checkpoint, load_model, save_model
from tutorial_lib.distributed import Strategy
from tutorial_lib.lora import lora_layers
from tutorial_lib.run_state import (
    History,
    Progress,
    restore_best,
    resume_from,
    save_last,
    track_best,
)
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


def _count_targets(logits: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """Return ``(targets, correct predictions)`` of a batch: one target per example for a
    classifier (logits ``(batch, classes)``), one per position for a language model (logits
    ``(batch, time, vocab)``, targets ``(batch, time)``)."""
    return targets.numel(), int((logits.argmax(dim=-1) == targets).sum())


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
    process predicts its share of the set and every process gets the whole result. It holds
    every logit in memory: for a language model's large vocabulary use :func:`evaluate`.

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
        ValueError: if ``loader`` yields no batch.
    """
    strategy = strategy or Strategy.from_environment(device)
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
        size, right = _count_targets(logits, targets)
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
    ``accumulation_steps`` micro-batches (the loss is divided by the group's size: by
    ``accumulation_steps``, or by what is left for an epoch's last, shorter group; processes
    synchronise on the last micro-batch only) over all processes.

    Each epoch records ``train_loss``, ``train_accuracy``, ``lr``, ``seconds``,
    ``samples_per_second`` and, with a ``val_loader``, ``val_loss`` and ``val_accuracy``. Losses,
    accuracies and speeds count targets: examples for a classifier, token positions for a
    language model (logits ``(batch, time, vocab)``, whose ``samples_per_second`` is then
    tokens per second).
    ``scheduler`` steps after every optimiser step. With ``patience``, training stops when
    ``monitor`` (one of :data:`MONITORS`; higher is better for accuracies) has not improved
    for that many epochs. With ``checkpoint_dir``, ``last.pt`` (model, optimiser, scheduler,
    history, random states) is written after every epoch and ``best.pt`` whenever ``monitor``
    improves; the best weights this run (or the run it resumed) kept are loaded back into
    ``model`` at the end. ``resume`` continues from ``last.pt`` exactly as if never stopped;
    without ``last.pt`` it starts afresh, and an earlier run's ``best.pt`` is first renamed
    (announced) so this run cannot overwrite it.
    Mixed precision (``None`` = automatic): bf16 on CUDA where supported, else fp16 with a
    gradient scaler; off on the CPU unless ``"bf16"`` is asked for.

    Raises:
        ValueError: for an unknown ``monitor``, early stopping on a validation metric without
            ``val_loader``, ``resume`` without ``checkpoint_dir``, an empty loader or
            ``max_steps_per_epoch=0``, ``accumulation_steps < 1``, a wrongly formed batch, a
            model whose LoRA layers are merged (``unmerge()`` first), or, under torchrun,
            ranks with different numbers of batches.
        NotADirectoryError: if ``checkpoint_dir`` (or a folder above it) is a file.
        CheckpointError: if ``last.pt`` is unreadable or was written for another optimiser or
            another model.
        FloatingPointError: if the training or validation loss stops being a number.
    """
    strategy = strategy or Strategy.from_environment(device, mixed_precision)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    _check_arguments(monitor, val_loader, patience, resume, checkpoint_dir, accumulation_steps)
    _check_no_merged_lora(model)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if checkpoint_dir is not None:
        _check_checkpoint_dir(checkpoint_dir)
    say = print if verbose and strategy.is_main else _silent
    wrapped = strategy.wrap(model, optimizer)
    train_loader = strategy.shard_loader(train_loader, training=True)
    steps = _steps_per_epoch(train_loader, max_steps_per_epoch, accumulation_steps)
    _check_same_steps_on_every_rank(steps, strategy)
    _check_schedule(scheduler, epochs, steps, accumulation_steps, strategy, say)
    progress, best_in_memory = Progress(), None
    if resume:
        progress = resume_from(
            checkpoint_dir / "last.pt", strategy, model, optimizer, scheduler, train_loader, say
        )
    optimizer.zero_grad(set_to_none=True)

    for epoch in range(progress.epoch, epochs):
        wrapped.train()
        if hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
            train_loader.sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on all ranks
        started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        batches = progress_bar(
            train_loader,
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
            disable=not strategy.is_main,
        )
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
                    raise FloatingPointError(
                        f"the loss became {loss.item()} at epoch {epoch + 1},"
                        f" step {step}; lower the learning rate"
                    )
                # Gradients add up over the micro-steps of a group; dividing by the group's real
                # size (the last group of an epoch may be short) makes them its mean.
                strategy.backward(loss / _group_size(step, accumulation_steps, steps))
            if last_micro_step:
                strategy.step(wrapped, optimizer, grad_clip_norm)  # clip, step, zero the grads
                if scheduler is not None:
                    scheduler.step()
            size, right = _count_targets(logits, targets)
            seen += size
            loss_sum += loss.item() * size
            correct += right
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
        best_in_memory = track_best(
            progress,
            record,
            monitor,
            strategy,
            model,
            checkpoint_dir,
            keep_in_memory=checkpoint_dir is None and patience is not None,
            best_in_memory=best_in_memory,
        )
        if checkpoint_dir is not None:
            save_last(
                checkpoint_dir / "last.pt",
                progress,
                strategy,
                model,
                optimizer,
                scheduler,
                train_loader,
            )
        say(_epoch_line(record, epochs))
        if patience is not None and progress.stale_epochs >= patience:
            say(
                f"early stop: {monitor} has not improved for {patience} epochs "
                f"(best {progress.best_value:.4f} at epoch {progress.best_epoch})"
            )
            break

    restore_best(progress, strategy, model, checkpoint_dir, best_in_memory, say)
    return progress.history


def _group_size(step: int, accumulation_steps: int, steps: int | None) -> int:
    """The number of micro-batches in the accumulation group of batch ``step`` (0-based): the
    last group of an epoch of ``steps`` batches holds what is left."""
    group_start = step - step % accumulation_steps
    group_end = group_start + accumulation_steps
    return (min(group_end, steps) if steps is not None else group_end) - group_start


def _silent(*args: Any, **kwargs: Any) -> None:
    """The ``print`` of processes other than rank 0 and of ``verbose=False``."""


def _check_arguments(
    monitor: str,
    val_loader: Any,
    patience: int | None,
    resume: bool,
    checkpoint_dir: Any,
    accumulation_steps: int,
) -> None:
    if monitor not in MONITORS:
        raise ValueError(f"monitor={monitor!r} is not a metric fit records; use one of {MONITORS}")
    if monitor.startswith("val_") and val_loader is None and patience is not None:
        raise ValueError(f"early stopping on {monitor!r} needs a val_loader")
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


def _check_checkpoint_dir(checkpoint_dir: Path) -> None:
    """Refuse, before any epoch is trained, a ``checkpoint_dir`` that could never be written:
    the folder itself or one above it is a file."""
    for folder in (checkpoint_dir, *checkpoint_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise NotADirectoryError(
                    f"checkpoint_dir {checkpoint_dir} cannot be a folder: {folder} is a file; "
                    "pass a folder path (it is created when missing)"
                )
            return


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


def _steps_per_epoch(
    loader: Any, max_steps_per_epoch: int | None, accumulation_steps: int
) -> int | None:
    """Batches per epoch on this process (``None`` for an iterable without a length)."""
    steps = len(loader) if hasattr(loader, "__len__") else None
    if max_steps_per_epoch is not None:
        steps = max_steps_per_epoch if steps is None else min(steps, max_steps_per_epoch)
    if steps is not None and steps <= 0:
        raise ValueError(
            f"an epoch would have {steps} training steps (the training loader is "
            "empty or max_steps_per_epoch is 0); give it at least one batch"
        )
    if steps is None and accumulation_steps > 1:
        raise ValueError(
            "accumulation_steps > 1 needs a training loader with a length (or "
            "max_steps_per_epoch) so that an epoch's last optimiser step is known"
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
    "CheckpointError",
    "History",
    "Strategy",
    "evaluate",
    "fit",
    "forward",
    "load_checkpoint",
    "load_model",
    "optimizer_steps_per_epoch",
    "predict",
    "progress_bar",
    "save_model",
    "split_batch",
    "to_device",
]
