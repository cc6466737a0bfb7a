"""What a loader returns: the data sets, and where they came from."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch
from torch.utils.data import Dataset

from tutorial_lib.runtime import display_path

SOURCE_LOCAL = "local copy"
SOURCE_DOWNLOAD = "official download"
SOURCE_SAMPLE = "bundled sample"
SOURCE_KINDS = (SOURCE_LOCAL, SOURCE_DOWNLOAD, SOURCE_SAMPLE)
"""Every :attr:`DataSource.kind` a loader reports."""


def source_kind(source: str) -> str | None:
    """Return the kind of data source a result record names, whether the record holds the kind
    itself (``"bundled sample"``) or a :meth:`DataSource.describe` line (``"MNIST: bundled
    sample at ... (train 800, test 200)"``); ``None`` when it names no known kind."""
    if source in SOURCE_KINDS:
        return source
    _, separator, described = source.partition(": ")
    if separator:
        for kind in SOURCE_KINDS:
            if described.startswith(f"{kind} at "):
                return kind
    return None


@dataclass(frozen=True)
class DataSource:
    """Where a data set came from and how many examples each split holds."""

    dataset: str
    kind: str
    location: str
    split_sizes: dict[str, int]

    @property
    def is_sample(self) -> bool:
        return self.kind == SOURCE_SAMPLE

    def describe(self) -> str:
        """Return one line for a chapter to print, e.g.
        ``MNIST: local copy at ... (train 60,000, test 10,000)``."""
        sizes = ", ".join(f"{split} {count:,}" for split, count in self.split_sizes.items())
        return f"{self.dataset}: {self.kind} at {display_path(self.location)} ({sizes})"


class ImageDataset(Dataset):
    """Images held as one uint8 tensor ``(N, C, H, W)`` with integer labels.

    ``dataset[i]`` returns ``(transform(image), label)``; without a transform the image is the
    uint8 tensor itself. torchvision's ``transforms.v2`` work on these tensors directly.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        classes: Sequence[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(f"expected {images.shape[0]} labels, got shape {tuple(labels.shape)}")
        self.images = images
        self.labels = labels.long()
        self.classes = tuple(classes)
        self.transform = transform

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.labels[index])

    def with_transform(
        self, transform: Callable[[torch.Tensor], torch.Tensor] | None
    ) -> ImageDataset:
        """Return a view of the same images with another transform (no copy)."""
        return ImageDataset(self.images, self.labels, self.classes, transform)

    def select(self, indices: Sequence[int] | torch.Tensor) -> ImageDataset:
        """Return the examples at ``indices`` as a new data set with the same transform."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return ImageDataset(self.images[index], self.labels[index], self.classes, self.transform)


@dataclass
class TextDataset(Dataset):
    """Texts with integer labels and, for IMDB, the star rating and review id from the file name.

    ``dataset[i]`` returns ``(text, label)``; ``texts`` and ``labels`` are plain lists, ready for
    a Hugging Face tokenizer or a vocabulary.
    """

    texts: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    ratings: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("labels", "ratings", "ids"):
            values = getattr(self, name)
            if name != "labels" and not values:
                continue
            if len(values) != len(self.texts):
                raise ValueError(f"{len(self.texts)} texts but {len(values)} {name}")

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], self.labels[index]

    def select(self, indices: Sequence[int] | torch.Tensor) -> TextDataset:
        """Return the examples at ``indices`` as a new data set."""
        picked = [int(i) for i in indices]
        return TextDataset(
            texts=[self.texts[i] for i in picked],
            labels=[self.labels[i] for i in picked],
            classes=self.classes,
            ratings=[self.ratings[i] for i in picked] if self.ratings else [],
            ids=[self.ids[i] for i in picked] if self.ids else [],
        )


DatasetT = TypeVar("DatasetT", ImageDataset, TextDataset)


@dataclass(frozen=True)
class LoadedData(Generic[DatasetT]):
    """The train and test splits of a data set and the :class:`DataSource` they came from.

    ``unlabelled`` holds the extra unlabelled training examples a copy ships (IMDB's
    ``train/unsup/`` reviews, as texts), empty when there are none.
    """

    train: DatasetT
    test: DatasetT
    source: DataSource
    unlabelled: list = field(default_factory=list)

    def __str__(self) -> str:
        return self.source.describe()


def loaded_data(
    dataset: str,
    kind: str,
    location: object,
    train: DatasetT,
    test: DatasetT,
    unlabelled: list | None = None,
) -> LoadedData[DatasetT]:
    """Wrap two splits (and any unlabelled examples) with their :class:`DataSource` (a
    reader's last line)."""
    sizes = {"train": len(train), "test": len(test)}
    if unlabelled:
        sizes["unlabelled"] = len(unlabelled)
    source = DataSource(dataset, kind, str(location), sizes)
    return LoadedData(train, test, source, list(unlabelled or []))


__all__ = [
    "DataSource",
    "DatasetT",
    "ImageDataset",
    "LoadedData",
    "SOURCE_DOWNLOAD",
    "SOURCE_KINDS",
    "SOURCE_LOCAL",
    "SOURCE_SAMPLE",
    "TextDataset",
    "loaded_data",
    "source_kind",
]
