"""Figures for the chapters: white background, titles and labelled axes, one idea per figure.

Every helper returns the ``matplotlib.figure.Figure`` it drew, so chapters can show it and
tests can inspect it.
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown
from matplotlib.figure import Figure

from tutorial_lib.metrics import to_numpy
from tutorial_lib.runtime import escape_math


def _as_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[0] in (1, 3):
        array = array.transpose(1, 2, 0)
    return array.squeeze()


def image_grid(
    images: Sequence[torch.Tensor | np.ndarray],
    titles: Sequence[str] | None = None,
    ncols: int = 8,
    suptitle: str | None = None,
    cmap: str = "gray",
    symmetric: bool = False,
    size: float = 1.6,
) -> Figure:
    """Draw images in a grid, each with an optional title, and return the figure.

    Images may be ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``. With ``symmetric`` each single-
    channel image gets a colour scale centred on zero (for filters and edge responses, whose sign
    matters); the default ``cmap`` then becomes a diverging one.

    Raises:
        ValueError: if ``titles`` is given with a different length than ``images``.
    """
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    ncols = max(1, min(ncols, len(images)))
    nrows = -(-len(images) // ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
        facecolor="white",
        squeeze=False,
        layout="constrained",  # keeps each row's titles clear of the row above
    )
    for index, ax in enumerate(axes.flat):
        ax.axis("off")
        if index >= len(images):
            continue
        array = _as_image(images[index])
        if symmetric and array.ndim == 2:
            limit = float(np.abs(array).max()) or 1.0
            ax.imshow(array, cmap="coolwarm" if cmap == "gray" else cmap, vmin=-limit, vmax=limit)
        else:
            ax.imshow(array, cmap=cmap if array.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[index], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    ylabel: str,
    log_scale: bool = False,
    annotate_format: str = "{:.3g}",
) -> Figure:
    """Draw one bar per label with its value written on top, and return the figure."""
    fig, ax = plt.subplots(figsize=(6, 3.6), facecolor="white", layout="constrained")
    bars = ax.bar(labels, values, color="#4C72B0")
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            annotate_format.format(value),
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
        )
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    return fig


def training_curves(history, title: str = "Training curves") -> Figure:
    """Draw loss and accuracy per epoch (train and, when recorded, validation) from a
    :class:`tutorial_lib.train.History`; return the figure with two axes."""
    epochs = history["epoch"]
    fig, (loss_ax, accuracy_ax) = plt.subplots(
        1, 2, figsize=(10, 3.6), facecolor="white", layout="constrained"
    )
    for prefix, style in (("train", "-o"), ("val", "--s")):
        if f"{prefix}_loss" in history.keys:
            loss_ax.plot(epochs, history[f"{prefix}_loss"], style, label=prefix)
            accuracy_ax.plot(
                epochs, [100 * v for v in history[f"{prefix}_accuracy"]], style, label=prefix
            )
    loss_ax.set(title="Loss", xlabel="epoch", ylabel="cross-entropy")
    accuracy_ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    for ax in (loss_ax, accuracy_ax):
        ax.grid(alpha=0.3)
        ax.legend()
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title)
    return fig


def confusion_matrix_figure(
    y_true, y_pred, class_names: Sequence[str], title: str = "Confusion matrix"
) -> Figure:
    """Draw scikit-learn's confusion matrix (rows: true class, columns: predicted) with counts
    in the cells; return the figure."""
    from sklearn.metrics import confusion_matrix

    labels = list(range(len(class_names)))
    matrix = confusion_matrix(to_numpy(y_true), to_numpy(y_pred), labels=labels)
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size), facecolor="white", layout="constrained")
    ax.imshow(matrix, cmap="Blues")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        ax.text(
            column,
            row,
            str(count),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if count > threshold else "black",
        )
    ax.set_xticks(
        range(len(class_names)), class_names, rotation=45 if max(map(len, class_names)) > 2 else 0
    )
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set(title=title, xlabel="predicted class", ylabel="true class")
    return fig


def conv_filters(layer: torch.nn.Conv2d, title: str = "Learned filters", ncols: int = 8) -> Figure:
    """Draw every kernel of a single-input-channel ``Conv2d`` (red positive, blue negative)."""
    weights = layer.weight.detach().cpu()
    if weights.shape[1] != 1:
        weights = weights.mean(dim=1, keepdim=True)
    return image_grid(
        list(weights[:, 0]),
        titles=[str(i) for i in range(len(weights))],
        ncols=ncols,
        suptitle=title,
        symmetric=True,
        size=1.1,
    )


def feature_maps(
    module: torch.nn.Module,
    image: torch.Tensor,
    title: str = "Feature maps",
    limit: int = 16,
    ncols: int = 8,
) -> Figure:
    """Run one image ``(C, H, W)`` through ``module``; draw its first ``limit`` output channels."""
    with torch.no_grad():
        maps = module(image.unsqueeze(0))[0].cpu()
    return image_grid(
        list(maps[:limit]),
        titles=[f"channel {i}" for i in range(min(limit, len(maps)))],
        ncols=ncols,
        suptitle=title,
        cmap="viridis",
        size=1.3,
    )


class MarkdownTable(Markdown):
    """A Markdown table: rendered as a table in a notebook, shown as its Markdown text elsewhere
    (a script, a terminal), where the repr of :class:`IPython.display.Markdown` says nothing."""

    def __repr__(self) -> str:
        return self.data


def markdown_table(
    rows: Sequence[Sequence[object]],
    headers: Sequence[str],
    align: str | None = None,
) -> MarkdownTable:
    """Return ``rows`` under ``headers`` as a Markdown table to ``display`` from a cell.

    Cells are written with ``str``, so format numbers before passing them. ``align`` gives one
    character per column, ``"l"`` or ``"r"``; by default text columns are left-aligned and
    columns whose cells are all ``int``/``float`` right-aligned. ``|`` inside a cell is escaped.

    Raises:
        ValueError: if a row has a different number of cells than ``headers``, or ``align`` has
            the wrong length or a character other than ``l``/``r``.
    """
    for number, row in enumerate(rows):
        if len(row) != len(headers):
            raise ValueError(
                f"row {number} has {len(row)} cells but there are {len(headers)} headers"
            )
    if align is None:
        align = "".join(
            "r" if rows and all(isinstance(row[i], int | float) for row in rows) else "l"
            for i in range(len(headers))
        )
    if len(align) != len(headers) or set(align) - {"l", "r"}:
        raise ValueError(f"align must be one 'l' or 'r' per column ({len(headers)}), got {align!r}")

    def line(cells: Sequence[object]) -> str:
        # "|" would end the cell; "$" would start math
        escaped = (escape_math(str(cell).replace("|", "\\|")) for cell in cells)
        return "| " + " | ".join(escaped) + " |"

    rule = "| " + " | ".join("---:" if a == "r" else ":---" for a in align) + " |"
    return MarkdownTable("\n".join([line(headers), rule, *(line(row) for row in rows)]))


class SourceListing(Markdown):
    """Python source as a highlighted code block in a notebook and in the book, and as the
    plain code elsewhere (a script, a terminal)."""

    def __init__(self, code: str) -> None:
        # a fence longer than any run of backticks inside the code, so nothing can close it early
        longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
        fence = "`" * max(3, longest + 1)
        super().__init__(f"{fence}python\n{code}\n{fence}")
        self.code = code

    def __repr__(self) -> str:
        return self.code


def show_source(*objects: object) -> SourceListing:
    """Return the source of each function, class or method in ``objects`` (a
    :class:`~pathlib.Path` stands for the whole file, e.g. a script under ``chapters/scripts``),
    dedented and separated by blank lines, as one listing to display from a cell.

    Raises:
        ValueError: if no object is given.
        TypeError: for an object without Python source (a built-in, an instance).
        FileNotFoundError: for a path that does not exist.
    """
    if not objects:
        raise ValueError("show_source needs at least one function, class, method or path")
    sources = []
    for item in objects:
        if isinstance(item, Path):
            sources.append(item.read_text(encoding="utf-8").rstrip())
            continue
        try:
            sources.append(textwrap.dedent(inspect.getsource(item)).rstrip())
        except TypeError as error:
            raise TypeError(
                f"show_source shows functions, classes, methods and paths, not {item!r}: {error}"
            ) from None
    return SourceListing("\n\n\n".join(sources))
