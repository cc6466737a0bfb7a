"""Figures for the chapters: white background, titles and labelled axes, one idea per figure.

Every helper returns the ``matplotlib.figure.Figure`` it drew, so chapters can show it and
tests can inspect it.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure


def _as_image(image: torch.Tensor | np.ndarray) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
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
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             facecolor="white", squeeze=False)
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
    fig.tight_layout()
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
    fig, ax = plt.subplots(figsize=(6, 3.6), facecolor="white")
    bars = ax.bar(labels, values, color="#4C72B0")
    for bar, value in zip(bars, values):
        ax.annotate(annotate_format.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    if log_scale:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
