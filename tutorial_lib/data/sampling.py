"""Shrinking a data set, explicitly and seeded: subsets, splits, budgets, and statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic

import numpy as np
import torch

from tutorial_lib.data.containers import DatasetT, ImageDataset, LoadedData, TextDataset
from tutorial_lib.runtime import notice


def _labels_of(dataset: ImageDataset | TextDataset) -> np.ndarray:
    labels = dataset.labels
    return labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def stratified_indices(
    labels: Sequence[int] | np.ndarray | torch.Tensor, size: int, seed: int = 0
) -> np.ndarray:
    """Return ``size`` indices drawn without replacement so that each class keeps its share.

    Classes get ``floor(size * share)`` places and the remaining places go to the largest
    remainders; within a class the examples are drawn with a generator seeded by ``seed``.
    The result is sorted.

    Raises:
        ValueError: if ``size`` is not between 1 and ``len(labels)``.
    """
    labels = np.asarray(labels)
    if not 1 <= size <= len(labels):
        raise ValueError(
            f"size must be between 1 and {len(labels)} (the number of examples), got {size}"
        )
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    for position in np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]:
        quota[position] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), quota[k], replace=False)
        for k, cls in enumerate(classes)
    ]
    return np.sort(np.concatenate(chosen))


def balanced_indices(
    labels: Sequence[int] | np.ndarray | torch.Tensor, per_class: int, seed: int = 0
) -> np.ndarray:
    """Return ``per_class`` indices of every class, drawn without replacement with a generator
    seeded by ``seed``, sorted (for few-shot sets and class-balanced samples).

    Raises:
        ValueError: if some class has fewer than ``per_class`` examples.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if len(members) < per_class:
            raise ValueError(
                f"class {cls} has {len(members)} examples, fewer than the {per_class} asked for"
            )
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def subset(dataset: DatasetT, size: int | None, seed: int = 0) -> DatasetT:
    """Return a stratified, seeded subset of ``size`` examples, or ``dataset`` itself when
    ``size`` is ``None`` or not smaller than the data set."""
    if size is None or size >= len(dataset):
        return dataset
    return dataset.select(stratified_indices(_labels_of(dataset), size, seed))


def train_val_split(dataset: DatasetT, val_size: int, seed: int = 0) -> tuple[DatasetT, DatasetT]:
    """Split ``dataset`` into disjoint training and validation parts, stratified by label.

    Returns ``(train, validation)`` with ``len(validation) == val_size``.

    Raises:
        ValueError: if ``val_size`` leaves no example on either side.
    """
    if not 0 < val_size < len(dataset):
        raise ValueError(f"val_size must be between 1 and {len(dataset) - 1}, got {val_size}")
    val_index = stratified_indices(_labels_of(dataset), val_size, seed)
    train_mask = np.ones(len(dataset), dtype=bool)
    train_mask[val_index] = False
    return dataset.select(np.flatnonzero(train_mask)), dataset.select(val_index)


@dataclass(frozen=True)
class BudgetSplits(Generic[DatasetT]):
    """The training, validation and test sets a chapter works with, and how they differ from the
    sizes its budget asked for (``adjustments``: empty when the budget fitted the data)."""

    train: DatasetT
    val: DatasetT
    test: DatasetT
    adjustments: tuple[str, ...] = ()

    def sizes(self) -> dict[str, int]:
        """Return ``{"train": ..., "validation": ..., "test": ...}``, for result records."""
        return {"train": len(self.train), "validation": len(self.val), "test": len(self.test)}

    def describe(self) -> str:
        """Return one line with the three sizes."""
        return f"train {len(self.train):,} | validation {len(self.val):,} | test {len(self.test):,}"


MAX_VAL_FRACTION = 0.2
"""The largest share of the training pool a validation split may take when the budget's
validation size does not fit the data there is."""


def budget_splits(
    loaded: LoadedData[DatasetT],
    train_size: int | None,
    val_size: int,
    test_size: int | None,
    seed: int = 0,
    verbose: bool = True,
) -> BudgetSplits[DatasetT]:
    """Return the splits a chapter's budget asks for, shrunk to the data actually available.

    The validation split is carved, stratified, out of ``loaded.train``; the training set is a
    stratified subset of what remains (``None``: all of it); the test set a stratified subset of
    ``loaded.test`` (``None``: all of it). Validation and test never overlap training. When the
    data is smaller than the budget (for instance the bundled sample instead of the full data
    set), the validation split takes at most :data:`MAX_VAL_FRACTION` of the training pool and
    the other splits use what there is; each such change is listed in ``adjustments`` and,
    with ``verbose``, announced in one notice.

    Raises:
        ValueError: if a size is not positive, or the training pool is too small to split
            (fewer than two examples per class).
    """
    sizes = (("train_size", train_size), ("val_size", val_size), ("test_size", test_size))
    for name, size in sizes:
        if size is not None and size < 1:
            raise ValueError(
                f"{name} must be a positive number of examples (or None for all), got {size}"
            )
    pool, adjustments = loaded.train, []
    classes = len(np.unique(_labels_of(pool)))
    if len(pool) < 2 * classes:
        raise ValueError(
            f"the training pool holds {len(pool)} examples of {classes} classes; too few to "
            "split off a validation set"
        )
    fitting_val = max(classes, int(len(pool) * MAX_VAL_FRACTION))
    if val_size > fitting_val:
        adjustments.append(
            f"validation {fitting_val:,} instead of {val_size:,} "
            f"({MAX_VAL_FRACTION:.0%} of the {len(pool):,} training examples available)"
        )
        val_size = fitting_val
    train_pool, val = train_val_split(pool, val_size, seed=seed)
    if train_size is not None and train_size > len(train_pool):
        adjustments.append(
            f"training {len(train_pool):,} instead of {train_size:,} "
            "(all that remain after validation)"
        )
    if test_size is not None and test_size > len(loaded.test):
        adjustments.append(
            f"test {len(loaded.test):,} instead of {test_size:,} (the whole test split)"
        )
    splits = BudgetSplits(
        subset(train_pool, train_size, seed=seed),
        val,
        subset(loaded.test, test_size, seed=seed),
        tuple(adjustments),
    )
    if verbose and adjustments:
        notice(
            f"the budget asks for more {loaded.source.dataset} data than there is, so this "
            "run uses " + "; ".join(adjustments) + "."
        )
    return splits


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the per-channel mean and standard deviation of uint8 images ``(N, C, H, W)``,
    with pixels scaled to [0, 1] (the numbers ``transforms.Normalize`` wants), rounded to
    four decimals.

    Raises:
        ValueError: if ``images`` is not 4-D.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
    total = images.shape[0] * images.shape[2] * images.shape[3]
    sums = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for chunk in images.split(4096):
        scaled = chunk.to(torch.float64) / 255
        sums += scaled.sum(dim=(0, 2, 3))
        squares += (scaled**2).sum(dim=(0, 2, 3))
    mean = sums / total
    std = (squares / total - mean**2).sqrt()
    return tuple(round(v, 4) for v in mean.tolist()), tuple(round(v, 4) for v in std.tolist())


__all__ = [
    "BudgetSplits",
    "MAX_VAL_FRACTION",
    "balanced_indices",
    "budget_splits",
    "channel_stats",
    "stratified_indices",
    "subset",
    "train_val_split",
]
