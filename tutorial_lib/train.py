"""One training loop for every chapter: :func:`fit` and :func:`evaluate`.

Batches may be ``(inputs, targets)`` tuples (images, token ids) or Hugging Face style dicts
with a ``"labels"`` entry; models may return logits or an object with a ``.logits`` attribute.
That is handled once, in :func:`split_batch` and :func:`forward`, so no chapter needs a second
loop.

Progress: interactive notebooks get ``tqdm`` bars (widgets where ``ipywidgets`` is installed, as
on Colab; text bars otherwise). Non-interactive executions — the book build, nbmake, scripts —
set ``TUTORIAL_NONINTERACTIVE=1`` and get no bars, only the one line per epoch that :func:`fit`
always prints, so static pages stay clean.
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

from tutorial_lib.files import atomic_write
from tutorial_lib.runtime import get_device, interactive

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
    raise ValueError(f"expected an (inputs, targets) pair or a dict with 'labels', got {type(batch).__name__}")


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


@torch.no_grad()
def predict(model: nn.Module, loader: Iterable[Batch], device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(logits, targets)`` of a whole loader, on the CPU, in loader order."""
    device = device or get_device()
    model.eval()
    all_logits, all_targets = [], []
    for batch in loader:
        inputs, targets = split_batch(to_device(batch, device))
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            logits = forward(model, inputs)
        all_logits.append(logits.float().cpu())
        all_targets.append(targets.cpu())
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Return ``{"loss": mean loss, "accuracy": fraction correct}`` of ``model`` over ``loader``.

    The loss is averaged over examples (not batches), with ``loss_fn`` defaulting to
    cross-entropy.
    """
    logits, targets = predict(model, loader, device)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    return {
        "loss": float(loss_fn(logits, targets)),
        "accuracy": float((logits.argmax(dim=1) == targets).float().mean()),
    }


def _save_checkpoint(path: Path, **state: Any) -> None:
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` (or :func:`save_model`) with ``weights_only=True``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train first or check the path")
    return torch.load(path, map_location=map_location, weights_only=True)


def save_model(model: nn.Module, path: Path | str) -> Path:
    """Save ``model.state_dict()`` to ``path`` (via a temporary file) and return the path."""
    path = Path(path)
    _save_checkpoint(path, model=model.state_dict())
    return path


def load_model(model: nn.Module, path: Path | str) -> nn.Module:
    """Load the weights saved by :func:`save_model` or :func:`fit` into ``model`` and return it."""
    model.load_state_dict(load_checkpoint(path)["model"])
    return model


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
    mixed_precision: bool | None = None,
    max_steps_per_epoch: int | None = None,
    verbose: bool = True,
) -> History:
    """Train ``model`` for up to ``epochs`` epochs and return the per-epoch :class:`History`.

    Each epoch records ``train_loss``, ``train_accuracy``, ``lr``, ``seconds``,
    ``samples_per_second`` and, with a ``val_loader``, ``val_loss`` and ``val_accuracy``.
    ``scheduler`` steps after every optimiser step (warm-up and one-cycle schedules are defined
    in steps). With ``patience``, training stops when ``monitor`` (higher is better for
    accuracies, lower for losses) has not improved for that many epochs. With
    ``checkpoint_dir``, ``last.pt`` (model, optimiser, scheduler, history) is written after
    every epoch and ``best.pt`` whenever ``monitor`` improves. Whenever a best epoch is kept (on disk, or in
    memory with ``patience`` and no ``checkpoint_dir``) its weights are loaded back into
    ``model`` at the end. ``resume`` continues from ``last.pt``. Mixed precision is used
    on CUDA only (``None`` = automatically).

    Raises:
        ValueError: if ``monitor`` names a validation metric but there is no ``val_loader``,
            ``resume`` is asked without ``checkpoint_dir``, or a batch has the wrong form.
    """
    device = device or get_device()
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    use_amp = device.type == "cuda" if mixed_precision is None else (mixed_precision and device.type == "cuda")
    if monitor.startswith("val_") and val_loader is None and patience is not None:
        raise ValueError(f"early stopping on {monitor!r} needs a val_loader")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs the checkpoint_dir to resume from")
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    higher_is_better = "loss" not in monitor
    model.to(device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    history, start_epoch, best_value, stale_epochs = History(), 0, None, 0
    best_in_memory: dict[str, torch.Tensor] | None = None
    if resume and (checkpoint_dir / "last.pt").is_file():
        state = load_checkpoint(checkpoint_dir / "last.pt", map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        history = History(list(state["history"]))
        start_epoch, best_value, stale_epochs = state["epoch"], state["best_value"], state["stale_epochs"]
        if verbose:
            print(f"resumed from {checkpoint_dir / 'last.pt'} after epoch {start_epoch}")

    for epoch in range(start_epoch, epochs):
        model.train()
        started, seen, loss_sum, correct = time.perf_counter(), 0, 0.0, 0
        steps = len(train_loader) if hasattr(train_loader, "__len__") else None
        if max_steps_per_epoch is not None and steps is not None:
            steps = min(steps, max_steps_per_epoch)
        for step, batch in enumerate(progress_bar(train_loader, total=steps, desc=f"epoch {epoch + 1}/{epochs}", leave=False)):
            if max_steps_per_epoch is not None and step >= max_steps_per_epoch:
                break
            inputs, targets = split_batch(to_device(batch, device))
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                logits = forward(model, inputs)
                loss = loss_fn(logits, targets)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}, step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if grad_clip_norm is not None:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), grad_clip_norm)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()
            size = _batch_size(targets)
            seen += size
            loss_sum += loss.item() * size
            correct += int((logits.argmax(dim=1) == targets).sum())
        seconds = time.perf_counter() - started
        record = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(seen, 1),
            "train_accuracy": correct / max(seen, 1),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": seconds,
            "samples_per_second": seen / seconds if seconds > 0 else math.nan,
        }
        if val_loader is not None:
            record.update({f"val_{key}": value for key, value in evaluate(model, val_loader, loss_fn, device).items()})
        history.records.append(record)

        value = record.get(monitor)
        improved = value is not None and (
            best_value is None or (value > best_value if higher_is_better else value < best_value)
        )
        if improved:
            best_value, stale_epochs = value, 0
            if checkpoint_dir is None and patience is not None:
                best_in_memory = {key: tensor.detach().to("cpu", copy=True) for key, tensor in model.state_dict().items()}
            if checkpoint_dir is not None:
                _save_checkpoint(checkpoint_dir / "best.pt", model=model.state_dict(), epoch=epoch + 1, monitor=monitor, value=value)
        else:
            stale_epochs += 1
        if checkpoint_dir is not None:
            _save_checkpoint(
                checkpoint_dir / "last.pt",
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict() if scheduler is not None else None,
                history=history.records,
                epoch=epoch + 1,
                best_value=best_value,
                stale_epochs=stale_epochs,
            )
        if verbose:
            shown = "  ".join(
                f"{key} {record[key]:.4f}" for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy") if key in record
            )
            print(f"epoch {epoch + 1}/{epochs}  {shown}  ({seconds:.1f} s, {record['samples_per_second']:.0f} samples/s)")
        if patience is not None and stale_epochs >= patience:
            if verbose:
                print(f"early stop: {monitor} has not improved for {patience} epochs (best {best_value:.4f})")
            break

    if checkpoint_dir is not None and (checkpoint_dir / "best.pt").is_file():
        model.load_state_dict(load_checkpoint(checkpoint_dir / "best.pt", map_location=device)["model"])
    elif best_in_memory is not None:
        model.load_state_dict(best_in_memory)
    return history
