"""Classification metrics, computed by scikit-learn rather than by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support


def to_numpy(values: Sequence | np.ndarray | torch.Tensor) -> np.ndarray:
    """Return ``values`` as a NumPy array: a tensor is detached and copied to the CPU first
    (so a CUDA tensor or one that requires grad works), anything else goes through
    ``np.asarray``. The one conversion the metrics and the figures share."""
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def accuracy(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    y_pred: Sequence[int] | np.ndarray | torch.Tensor,
) -> float:
    """Return the fraction of predictions equal to the true labels."""
    return float(accuracy_score(to_numpy(y_true), to_numpy(y_pred)))


def standard_error(accuracy_value: float, count: int) -> float:
    """Return the binomial standard error sqrt(a (1 - a) / n) of an accuracy ``a`` measured
    on ``count`` independent examples: two of them apart is where a difference starts to mean
    something.

    Raises:
        ValueError: if ``count`` is not positive or ``accuracy_value`` is outside [0, 1].
    """
    if count < 1:
        raise ValueError(f"an accuracy needs at least one example, not {count}")
    if not 0.0 <= accuracy_value <= 1.0:
        raise ValueError(f"an accuracy lies in [0, 1], not {accuracy_value}")
    return math.sqrt(accuracy_value * (1.0 - accuracy_value) / count)


def macro_f1(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    y_pred: Sequence[int] | np.ndarray | torch.Tensor,
) -> float:
    """Return the F1 score averaged over classes with equal weight."""
    return float(f1_score(to_numpy(y_true), to_numpy(y_pred), average="macro"))


def per_class_report(
    y_true: Sequence[int] | np.ndarray | torch.Tensor,
    y_pred: Sequence[int] | np.ndarray | torch.Tensor,
    class_names: Sequence[str],
) -> list[dict[str, float | str | int]]:
    """Return one row per class: ``class``, ``precision``, ``recall``, ``f1`` and ``support``."""
    precision, recall, f1, support = precision_recall_fscore_support(
        to_numpy(y_true), to_numpy(y_pred), labels=list(range(len(class_names))), zero_division=0
    )
    return [
        {
            "class": name,
            "precision": float(p),
            "recall": float(r),
            "f1": float(f),
            "support": int(s),
        }
        for name, p, r, f, s in zip(class_names, precision, recall, f1, support, strict=True)
    ]


def format_report(rows: list[dict[str, float | str | int]]) -> str:
    """Return the rows of :func:`per_class_report` as an aligned text table."""
    lines = [f"{'class':<12}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for row in rows:
        lines.append(
            f"{row['class']:<12}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}{row['support']:>10,}"
        )
    return "\n".join(lines)
