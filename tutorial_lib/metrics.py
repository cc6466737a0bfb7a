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


def _correct_matrix(correct: Sequence | np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    matrix = to_numpy(correct).astype(float)
    if matrix.ndim != 2 or matrix.shape[0] < 2 or matrix.shape[1] < 2:
        raise ValueError(
            f"{name} must be a (runs, examples) array of 0/1 scores with at least 2 runs (seeds) "
            f"and 2 examples, got shape {matrix.shape}; for one run use standard_error"
        )
    if not np.isin(matrix, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0/1 (or bool) scores, one per run and example")
    return matrix


def seeded_accuracy(correct: Sequence | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Return ``(mean accuracy, standard error)`` of several training runs (seeds) of one recipe,
    each scored on the **same** examples: ``correct[s, i]`` is 1 when run ``s`` got example
    ``i`` right.

    The standard error covers both sources of variation: the test examples (the variance over
    examples of their per-example mean score, divided by their number) and training (the
    variance of the runs' accuracies, divided by the number of runs). The two estimates share
    a small run-by-example term, so the sum is slightly conservative. With three runs the seed
    term rests on two degrees of freedom: it is a rough guide, better than ignoring it.

    Raises:
        ValueError: unless ``correct`` is a 0/1 array of at least 2 runs by 2 examples.
    """
    matrix = _correct_matrix(correct, "correct")
    runs, examples = matrix.shape
    per_example = matrix.mean(axis=0)
    per_run = matrix.mean(axis=1)
    variance = per_example.var(ddof=1) / examples + per_run.var(ddof=1) / runs
    return float(matrix.mean()), math.sqrt(variance)


def seeded_difference(
    correct_a: Sequence | np.ndarray | torch.Tensor, correct_b: Sequence | np.ndarray | torch.Tensor
) -> tuple[float, float]:
    """Return ``(accuracy of a − accuracy of b, standard error)`` for two recipes, each trained
    with several seeds and scored on the **same** examples (columns in the same order).

    Paired over the examples — the variance over examples of the difference of their
    per-example mean scores, divided by their number, which is smaller than treating the two
    accuracies as independent because both arms find the same reviews hard — plus each arm's
    variance between seeds divided by its number of runs.

    Raises:
        ValueError: unless both are 0/1 arrays of at least 2 runs, with the same examples.
    """
    a = _correct_matrix(correct_a, "correct_a")
    b = _correct_matrix(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the two arms must be scored on the same examples: {a.shape[1]} vs {b.shape[1]}"
        )
    per_example = a.mean(axis=0) - b.mean(axis=0)
    variance = (
        per_example.var(ddof=1) / len(per_example)
        + a.mean(axis=1).var(ddof=1) / a.shape[0]
        + b.mean(axis=1).var(ddof=1) / b.shape[0]
    )
    return float(a.mean() - b.mean()), math.sqrt(variance)


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
