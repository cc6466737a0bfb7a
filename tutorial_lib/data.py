"""Data sets behind one resolution rule: MNIST, CIFAR-10 and IMDB.

Each loader looks, in this order, for

1. a local copy in the official on-disk layout under the data directory
   (:func:`tutorial_lib.runtime.data_dir`, ``TUTORIAL_DATA_DIR``):
   ``MNIST/raw/*-ubyte`` (or the official ``.gz`` files), ``cifar-10-batches-py/``,
   ``aclImdb/`` or ``aclImdb_v1.tar.gz``;
2. the official download into that directory, verified against its published MD5, written to a
   temporary file and renamed only once verified;
3. a small, real, class-balanced sample bundled in this package, with a loud notice that the
   results it gives are not representative.

Every loader returns a :class:`LoadedData` whose ``source`` says which of the three it used and
how many examples each split has. A local copy that is present but broken is an error, never a
reason to fall back. Shrinking a data set for a profile is a separate, explicit, seeded step:
:func:`stratified_indices`, :func:`subset` and :func:`train_val_split`.

What is trusted: nothing in the data directory runs as code. MNIST's IDX files and IMDB's text
files are parsed as data. CIFAR-10's python batches are pickles, and a pickle can call any
function while it loads; they are read with a restricted unpickler that admits only what the
official batches contain (dicts, lists, strings, bytes, ints and numpy's array reconstruction)
and refuses any other reference (``os.system``, ``eval``, ...) before it runs. Archives are
checked member by member before anything is written (no absolute paths, ``..``, links or
devices). Every file is then checked against its format (uint8 pixels, labels in range, sizes
that agree, UTF-8 text); a failure names the file and what to do. Downloads are trusted only
once their MD5 equals the published one.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import pickle
import re
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Generic, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset

from tutorial_lib.runtime import OFFLINE_ENV, env_flag, notice
from tutorial_lib.runtime import data_dir as default_data_dir

SAMPLES_DIR = Path(__file__).parent / "samples"

MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
"""Per-channel statistics of the 60,000 MNIST training images, pixels scaled to [0, 1].
``tests/test_data.py`` recomputes them from the full data with :func:`channel_stats`."""

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
"""Per-channel statistics of the 50,000 official CIFAR-10 training images, in [0, 1]."""

MNIST_CLASSES = tuple(str(digit) for digit in range(10))
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMDB_CLASSES = ("neg", "pos")

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"

SOURCE_LOCAL = "local copy"
SOURCE_DOWNLOAD = "official download"
SOURCE_SAMPLE = "bundled sample"


class DataError(RuntimeError):
    """Base class of the data layer's errors; the message says which path and what to do."""


class DataNotFoundError(DataError):
    """No local copy, no download, and the bundled sample was not allowed."""


class ChecksumError(DataError):
    """A downloaded file does not have the published checksum."""


class CorruptDataError(DataError):
    """A file in the official layout exists but cannot be read as that format."""


class UnsafeArchiveError(DataError):
    """An archive member would write outside the target, or is a link or a device."""


class DownloadError(DataError, OSError):
    """The official download broke off, timed out, or could not be stored on disk; the message
    names the URL or the path. An ``OSError``, so the resolution rule treats it like a network
    failure: announced, then the bundled sample."""


# ---------------------------------------------------------------------------------------------
# What a loader returns
# ---------------------------------------------------------------------------------------------


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
        """Return one line for a chapter to print, e.g. ``MNIST: local copy at ... (train 60,000, test 10,000)``."""
        sizes = ", ".join(f"{split} {count:,}" for split, count in self.split_sizes.items())
        return f"{self.dataset}: {self.kind} at {self.location} ({sizes})"


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
            raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
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

    def with_transform(self, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> "ImageDataset":
        """Return a view of the same images with another transform (no copy)."""
        return ImageDataset(self.images, self.labels, self.classes, transform)

    def select(self, indices: Sequence[int] | torch.Tensor) -> "ImageDataset":
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

    def select(self, indices: Sequence[int] | torch.Tensor) -> "TextDataset":
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
    """The train and test splits of a data set and the :class:`DataSource` they came from."""

    train: DatasetT
    test: DatasetT
    source: DataSource

    def __str__(self) -> str:
        return self.source.describe()


# ---------------------------------------------------------------------------------------------
# Subsets and statistics
# ---------------------------------------------------------------------------------------------


def _labels_of(dataset: ImageDataset | TextDataset) -> np.ndarray:
    labels = dataset.labels
    return labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def stratified_indices(labels: Sequence[int] | np.ndarray | torch.Tensor, size: int, seed: int = 0) -> np.ndarray:
    """Return ``size`` indices drawn without replacement so that each class keeps its share.

    Classes get ``floor(size * share)`` places and the remaining places go to the largest
    remainders; within a class the examples are drawn with a generator seeded by ``seed``.
    The result is sorted.

    Raises:
        ValueError: if ``size`` is not between 1 and ``len(labels)``.
    """
    labels = np.asarray(labels)
    if not 1 <= size <= len(labels):
        raise ValueError(f"size must be between 1 and {len(labels)} (the number of examples), got {size}")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = size * counts / counts.sum()
    quota = np.floor(exact).astype(int)
    for position in np.argsort(-(exact - quota), kind="stable")[: size - quota.sum()]:
        quota[position] += 1
    chosen = [rng.choice(np.flatnonzero(labels == cls), quota[k], replace=False) for k, cls in enumerate(classes)]
    return np.sort(np.concatenate(chosen))


def balanced_indices(labels: Sequence[int] | np.ndarray | torch.Tensor, per_class: int, seed: int = 0) -> np.ndarray:
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
            raise ValueError(f"class {cls} has {len(members)} examples, fewer than the {per_class} asked for")
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
    for name, size in (("train_size", train_size), ("val_size", val_size), ("test_size", test_size)):
        if size is not None and size < 1:
            raise ValueError(f"{name} must be a positive number of examples (or None for all), got {size}")
    pool, adjustments = loaded.train, []
    classes = len(np.unique(_labels_of(pool)))
    if len(pool) < 2 * classes:
        raise ValueError(f"the training pool holds {len(pool)} examples of {classes} classes; too few to split off a validation set")
    fitting_val = max(classes, int(len(pool) * MAX_VAL_FRACTION))
    if val_size > fitting_val:
        adjustments.append(f"validation {fitting_val:,} instead of {val_size:,} "
                           f"({MAX_VAL_FRACTION:.0%} of the {len(pool):,} training examples available)")
        val_size = fitting_val
    train_pool, val = train_val_split(pool, val_size, seed=seed)
    if train_size is not None and train_size > len(train_pool):
        adjustments.append(f"training {len(train_pool):,} instead of {train_size:,} (all that remain after validation)")
    if test_size is not None and test_size > len(loaded.test):
        adjustments.append(f"test {len(loaded.test):,} instead of {test_size:,} (the whole test split)")
    splits = BudgetSplits(subset(train_pool, train_size, seed=seed), val, subset(loaded.test, test_size, seed=seed),
                          tuple(adjustments))
    if verbose and adjustments:
        notice(f"the budget asks for more {loaded.source.dataset} data than there is, so this run uses "
               + "; ".join(adjustments) + ".")
    return splits


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Return the per-channel mean and standard deviation of uint8 images ``(N, C, H, W)``,
    with pixels scaled to [0, 1] (the numbers ``transforms.Normalize`` wants)."""
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


# ---------------------------------------------------------------------------------------------
# Files: checksums, downloads, archives
# ---------------------------------------------------------------------------------------------


def md5_of(path: Path) -> str:
    """Return the hex MD5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_url(url: str, timeout: float):
    """Open ``url`` for reading; the one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https URLs


def _cannot_write(path: Path, error: OSError) -> DownloadError:
    return DownloadError(
        f"could not write {path} ({error.strerror or error}); the disk may be full or the folder "
        "read-only: free some space, or set TUTORIAL_DATA_DIR to a writable folder"
    )


def download_file(url: str, destination: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination`` through a temporary file in the same folder.

    The file is renamed into place only after its MD5 equals ``md5``, so an interrupted or
    corrupted download never leaves a file under the final name. ``timeout`` bounds the wait
    for the connection and for each read.

    Returns:
        ``destination``.

    Raises:
        ChecksumError: if the downloaded bytes do not have the expected MD5.
        DownloadError: if the connection fails, stalls or breaks off (the message names the
            URL), or the file cannot be written (the message names the path).
    """
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary_name = tempfile.mkstemp(
            dir=destination.parent, prefix=f".{destination.name}.", suffix=".part"
        )
    except OSError as error:
        raise _cannot_write(destination.parent, error) from error
    temporary, received = Path(temporary_name), 0
    try:
        digest = hashlib.md5()
        with os.fdopen(handle, "wb") as out, _open_url(url, timeout) as response:
            # read1 hands over what has arrived, so an error can say how far the transfer got
            read = getattr(response, "read1", response.read)
            while block := read(1 << 20):
                received += len(block)
                digest.update(block)
                try:
                    out.write(block)
                    out.flush()
                except OSError as error:
                    raise _cannot_write(temporary, error) from error
    except DownloadError:
        temporary.unlink(missing_ok=True)
        raise
    except (OSError, http.client.HTTPException) as error:
        temporary.unlink(missing_ok=True)
        raise DownloadError(
            f"the download of {url} failed after {received:,} bytes ({error!r}); nothing was "
            "kept. Try again later, or place a copy in the official layout in the data directory."
        ) from error
    try:
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"{url} downloaded with MD5 {digest.hexdigest()}, expected {md5}; nothing was kept. "
                "Try again, or place a verified copy under the data directory yourself."
            )
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
    return destination


def _checked_member_name(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
        raise UnsafeArchiveError(f"{archive} holds the member {member.name!r}, which points outside the target folder; refusing to read it")
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive} holds {member.name!r}, a link or special file; refusing to read it")
    return name


def safe_extract(archive: Path, destination: Path, keep: Callable[[PurePosixPath], bool] = lambda _: True) -> list[Path]:
    """Extract the members of a tar archive for which ``keep(name)`` is true into ``destination``.

    Every member is checked first: absolute paths, ``..``, links and devices raise
    :class:`UnsafeArchiveError` before anything is written. Extraction goes to a temporary
    folder beside ``destination`` and each top-level entry is renamed into place at the end.

    Returns:
        The paths of the top-level entries created under ``destination``.

    Raises:
        UnsafeArchiveError: on a dangerous member.
        CorruptDataError: if the archive is truncated or not a tar archive.
    """
    destination.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=destination, prefix=".extract-"))
    try:
        with tarfile.open(archive) as tar:
            members = [member for member in tar.getmembers() if keep(_checked_member_name(member, archive))]
            tar.extractall(staging, members=members, filter="data")
        created = []
        for entry in sorted(staging.iterdir()):
            target = destination / entry.name
            if target.exists():
                shutil.rmtree(target) if target.is_dir() else target.unlink()
            os.replace(entry, target)
            created.append(target)
        return created
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(f"{archive} is not a complete tar archive ({error}); delete it and download it again") from error
    except OSError as error:
        raise _cannot_write(destination, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _downloads_allowed(download: bool) -> bool:
    return download and not env_flag(OFFLINE_ENV)


def _announce_sample(source: DataSource, reason: str) -> None:
    notice(
        f"{reason}. Using the {source.describe()}. This is a tiny real sample for trying the code: "
        "results on it are NOT representative. For real results put the data set in the data "
        "directory (TUTORIAL_DATA_DIR, see the setup page) or allow the download."
    )


def _resolve(
    name: str,
    root: Path,
    read_local: Callable[[], LoadedData | None],
    download_and_read: Callable[[], LoadedData],
    read_sample: Callable[[], LoadedData],
    *,
    download: bool,
    allow_sample: bool,
    verbose: bool,
    expected_layout: str,
) -> LoadedData:
    """The resolution rule shared by every loader: local copy, official download, sample."""
    loaded = read_local()
    reason = f"no local {name} copy under {root} (expected {expected_layout})"
    if loaded is None and _downloads_allowed(download):
        try:
            loaded = download_and_read()
        except OSError as error:
            reason += f", and the official download failed ({error})"
    elif loaded is None:
        reason += ", and downloads are switched off"
    if loaded is None:
        if not allow_sample:
            raise DataNotFoundError(
                f"{reason}. Put the data set there in its official layout, set TUTORIAL_DATA_DIR to "
                "a folder that has it, or allow the download."
            )
        loaded = read_sample()
        if verbose:
            _announce_sample(loaded.source, reason)
    elif verbose:
        print(loaded.source.describe())
    return loaded


# ---------------------------------------------------------------------------------------------
# MNIST
# ---------------------------------------------------------------------------------------------

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


_MNIST_IMAGE_MAGIC, _MNIST_LABEL_MAGIC = 2051, 2049


def _mnist_file(raw: Path, name: str) -> Path | None:
    """The unpacked file if present, else the official ``.gz``, else ``None``."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (or its ``.gz``) into memory and check its header against its size.

    Reading the ``.gz`` directly means a read-only data directory works and nothing is unpacked.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                content = stream.read()
        else:
            content = path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(f"{path} is not a complete gzip file ({error}); delete it and fetch MNIST again") from error
    if len(content) < 4 or int.from_bytes(content[:4], "big") != magic:
        raise CorruptDataError(f"{path} is not an IDX file with magic number {magic}; delete it and fetch MNIST again")
    rank = content[3]
    dims = [int.from_bytes(content[4 + 4 * k : 8 + 4 * k], "big") for k in range(rank)]
    expected = 4 + 4 * rank + int(np.prod(dims))
    if len(content) != expected:
        raise CorruptDataError(
            f"{path} should hold {expected:,} bytes for shape {tuple(dims)} but holds {len(content):,}; "
            "the file is truncated or corrupt: delete it and fetch MNIST again"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def _read_mnist_split(images_path: Path, labels_path: Path) -> ImageDataset:
    images = _read_idx(images_path, _MNIST_IMAGE_MAGIC)
    labels = _read_idx(labels_path, _MNIST_LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CorruptDataError(
            f"{images_path} holds images of shape {images.shape[1:]}; MNIST images are 28 x 28. "
            "Delete the file and fetch MNIST again"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError(
            f"{images_path} holds {len(images):,} images but {labels_path} holds labels of shape "
            f"{labels.shape}; the two files must come from the same release: fetch both again"
        )
    if labels.size and labels.max() > 9:
        raise CorruptDataError(
            f"{labels_path} holds the label {int(labels.max())}; MNIST labels are the digits 0-9. "
            "Delete the file and fetch MNIST again"
        )
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)), MNIST_CLASSES
    )


def _read_mnist_folder(raw: Path, kind: str) -> LoadedData[ImageDataset] | None:
    """Read the four MNIST files (each unpacked or ``.gz``); ``None`` if none of them is there.

    Raises:
        CorruptDataError: if some files are there and others missing, or one is malformed.
    """
    found = {name: _mnist_file(raw, name) for pair in _MNIST_FILES.values() for name in pair}
    missing = [name for name, path in found.items() if path is None]
    if len(missing) == len(found):
        return None
    if missing:
        raise CorruptDataError(
            f"{raw} holds part of MNIST but lacks {', '.join(missing)} (or its .gz); add the "
            "missing file, or delete the folder to download MNIST again"
        )
    splits = {split: _read_mnist_split(found[images], found[labels]) for split, (images, labels) in _MNIST_FILES.items()}
    source = DataSource("MNIST", kind, str(raw), {s: len(d) for s, d in splits.items()})
    return LoadedData(splits["train"], splits["test"], source)


MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}


def _download_from_mirrors(mirrors: Sequence[str], filename: str, destination: Path, md5: str) -> None:
    """Try each mirror in turn; a failed or corrupted download moves on to the next one.

    Raises:
        ChecksumError: if every mirror failed and at least one served wrong bytes.
        DownloadError: if every mirror failed to deliver.
    """
    errors: list[DataError] = []
    for mirror in mirrors:
        try:
            download_file(f"{mirror}{filename}", destination, md5)
            return
        except (ChecksumError, DownloadError) as error:
            errors.append(error)
    summary = " | ".join(str(error) for error in errors)
    if any(isinstance(error, ChecksumError) for error in errors):
        raise ChecksumError(f"no mirror served a verified {filename}: {summary}")
    raise DownloadError(f"no mirror served {filename}: {summary}")


def load_mnist(
    root: Path | str | None = None, *, download: bool = True, allow_sample: bool = True, verbose: bool = True
) -> LoadedData[ImageDataset]:
    """Load MNIST (60,000 training and 10,000 test digits, 28x28 grey levels).

    Images come as uint8 ``(N, 1, 28, 28)``; combine with :func:`mnist_transform`.

    Returns:
        :class:`LoadedData` with ``train``, ``test`` and ``source``.

    Raises:
        CorruptDataError: if the local files exist but are truncated or malformed.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    root = Path(root).resolve() if root is not None else default_data_dir()
    raw = root / "MNIST" / "raw"

    def read_local() -> LoadedData | None:
        return _read_mnist_folder(raw, SOURCE_LOCAL)

    def download_and_read() -> LoadedData:
        # All four files land in a staging folder first: a download that fails half-way
        # leaves no partial copy, which the next run would have to refuse.
        raw.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=raw, prefix=".download-"))
        try:
            for filename, md5 in MNIST_MD5.items():
                _download_from_mirrors(MNIST_MIRRORS, filename, staging / filename, md5)
            for filename in MNIST_MD5:
                os.replace(staging / filename, raw / filename)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return _read_mnist_folder(raw, SOURCE_DOWNLOAD)

    def read_sample() -> LoadedData:
        with np.load(SAMPLES_DIR / "mnist_sample.npz") as arrays:
            splits = {
                split: ImageDataset(torch.from_numpy(arrays[f"{split}_images"]), torch.from_numpy(arrays[f"{split}_labels"]), MNIST_CLASSES)
                for split in ("train", "test")
            }
        source = DataSource("MNIST", SOURCE_SAMPLE, str(SAMPLES_DIR / "mnist_sample.npz"), {s: len(d) for s, d in splits.items()})
        return LoadedData(splits["train"], splits["test"], source)

    return _resolve(
        "MNIST", root, read_local, download_and_read, read_sample,
        download=download, allow_sample=allow_sample, verbose=verbose, expected_layout="MNIST/raw/*-ubyte",
    )


def mnist_transform() -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the MNIST input transform: uint8 -> float in [0, 1] -> normalised with
    :data:`MNIST_MEAN`/:data:`MNIST_STD` (so pixels end up roughly in [-0.42, 2.82])."""
    from torchvision.transforms import v2

    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(MNIST_MEAN, MNIST_STD)])


# ---------------------------------------------------------------------------------------------
# CIFAR-10
# ---------------------------------------------------------------------------------------------

_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR-10 batches contain: dicts, lists, strings,
    bytes and ints, and numpy arrays. Any other global (``os.system``, ``eval``, a class of
    some package) is refused before it can be called, so a planted batch cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # written by numpy < 2
        ("numpy._core.multiarray", "_reconstruct"),  # written by numpy >= 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *(("builtins", name) for name in ("dict", "list", "bytes", "int", "str")),
        *(("__builtin__", name) for name in ("dict", "list", "bytes", "int", "str")),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which official CIFAR-10 batches never contain"
            )
        return super().find_class(module, name)


def _describe_values(array: np.ndarray) -> str:
    """Say what is wrong with pixels that are not uint8, for the error message."""
    if array.dtype.kind == "f":
        nan = ", some NaN" if np.isnan(array).any() else ""
        return f"{array.dtype} pixels{nan}"
    if array.dtype.kind in "iu" and array.size:
        return f"{array.dtype} pixels ranging {array.min()}..{array.max()}"
    return f"{array.dtype} pixels"


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch with :class:`_BatchUnpickler` and check what it holds."""
    redo = "delete the folder and fetch CIFAR-10 again"
    try:
        with open(path, "rb") as stream:
            batch = _BatchUnpickler(stream, encoding="latin1").load()
        data, labels = batch["data"], np.asarray(batch["labels"])
    except pickle.UnpicklingError as error:
        raise CorruptDataError(f"{path} was refused: {error}. It may be malicious; {redo}") from error
    except (EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CorruptDataError(f"{path} is not a readable CIFAR-10 python batch ({error!r}); {redo}") from error
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = _describe_values(data) if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(f"{path} holds {found}; CIFAR-10 batches store uint8 pixels in 0..255. {redo}")
    if labels.dtype.kind not in "iu":
        raise CorruptDataError(f"{path} holds {labels.dtype} labels; CIFAR-10 labels are the integers 0..9. {redo}")
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],) or not np.isin(labels, range(10)).all():
        raise CorruptDataError(f"{path} should hold N x 3072 uint8 pixels and N labels in 0..9, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_cifar_folder(folder: Path, kind: str) -> LoadedData[ImageDataset]:
    missing = [name for name in (*_CIFAR_TRAIN_BATCHES, "test_batch") if not (folder / name).is_file()]
    if missing:
        raise CorruptDataError(f"{folder} exists but lacks {', '.join(missing)}; complete it, or delete it to download CIFAR-10 again")
    parts = [_read_cifar_batch(folder / name) for name in _CIFAR_TRAIN_BATCHES]
    train_images = torch.from_numpy(np.concatenate([images for images, _ in parts]))
    train_labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
    test_images, test_labels = _read_cifar_batch(folder / "test_batch")
    train = ImageDataset(train_images, train_labels, CIFAR10_CLASSES)
    test = ImageDataset(torch.from_numpy(test_images), torch.from_numpy(test_labels), CIFAR10_CLASSES)
    return LoadedData(train, test, DataSource("CIFAR-10", kind, str(folder), {"train": len(train), "test": len(test)}))


def load_cifar10(
    root: Path | str | None = None, *, download: bool = True, allow_sample: bool = True, verbose: bool = True
) -> LoadedData[ImageDataset]:
    """Load CIFAR-10 from the pickled python batches (any number of images per batch).

    Images come as uint8 ``(N, 3, 32, 32)``; combine with :func:`cifar10_transforms`. The
    batches are read directly rather than through torchvision's ``CIFAR10``, which insists on
    the official files' checksums and so rejects faithful rebuilt copies.

    Returns:
        :class:`LoadedData` with ``train``, ``test`` and ``source``.

    Raises:
        CorruptDataError: if ``cifar-10-batches-py/`` exists but is incomplete or unreadable.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    root = Path(root).resolve() if root is not None else default_data_dir()
    folder = root / "cifar-10-batches-py"

    def read_local() -> LoadedData | None:
        return _read_cifar_folder(folder, SOURCE_LOCAL) if folder.is_dir() else None

    def download_and_read() -> LoadedData:
        archive = root / "cifar-10-python.tar.gz"
        if not (archive.is_file() and md5_of(archive) == CIFAR10_MD5):
            download_file(CIFAR10_URL, archive, CIFAR10_MD5)
        safe_extract(archive, root, keep=lambda name: name.parts[:1] == ("cifar-10-batches-py",))
        archive.unlink()
        return _read_cifar_folder(folder, SOURCE_DOWNLOAD)

    def read_sample() -> LoadedData:
        path = SAMPLES_DIR / "cifar10_sample.npz"
        with np.load(path) as arrays:
            splits = {
                split: ImageDataset(torch.from_numpy(arrays[f"{split}_images"]), torch.from_numpy(arrays[f"{split}_labels"]), CIFAR10_CLASSES)
                for split in ("train", "test")
            }
        return LoadedData(splits["train"], splits["test"], DataSource("CIFAR-10", SOURCE_SAMPLE, str(path), {s: len(d) for s, d in splits.items()}))

    return _resolve(
        "CIFAR-10", root, read_local, download_and_read, read_sample,
        download=download, allow_sample=allow_sample, verbose=verbose, expected_layout="cifar-10-batches-py/",
    )


IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
"""The statistics torchvision's ImageNet weights were trained with (``weights.transforms()``)."""


def cifar10_transforms(
    train: bool,
    color_jitter: bool = False,
    size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return the CIFAR-10 transform for uint8 ``(3, 32, 32)`` tensors.

    Training: random crop of ``size`` after 4-pixel zero padding (scaled with ``size``),
    horizontal flip, optional colour jitter. Both: resize to ``size`` when it is not 32, scale
    to [0, 1] and normalise with ``mean``/``std`` (CIFAR-10's own statistics by default; pass
    :data:`IMAGENET_MEAN`/:data:`IMAGENET_STD` for a backbone pretrained on ImageNet).
    """
    from torchvision.transforms import v2

    steps: list = []
    if size != 32:
        steps.append(v2.Resize(size, antialias=True))
    if train:
        steps += [v2.RandomCrop(size, padding=4 * size // 32), v2.RandomHorizontalFlip()]
        if color_jitter:
            steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


# ---------------------------------------------------------------------------------------------
# IMDB
# ---------------------------------------------------------------------------------------------

_IMDB_REVIEW = re.compile(r"^aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_IMDB_CLASS_FOLDER = re.compile(r"^aclImdb/(train|test)/(pos|neg)/[^/]+$")
_IMDB_REDO = "delete it and fetch IMDB again, or restore the official aclImdb layout"


def _imdb_from_records(
    records: Iterable[tuple[str, str, int, int, str]], location: Path
) -> dict[str, TextDataset]:
    """Build the splits from ``(split, label_name, id, rating, text)``, sorted by label then id.

    Raises:
        CorruptDataError: if a split has no review of some class (``location`` is named).
    """
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, label_name, review_id, rating, text in records:
        by_split[split].append((IMDB_CLASSES.index(label_name), review_id, rating, text))
    datasets = {}
    for split, rows in by_split.items():
        empty = [name for k, name in enumerate(IMDB_CLASSES) if not any(row[0] == k for row in rows)]
        if empty:
            raise CorruptDataError(
                f"{location} holds no review in aclImdb/{split}/{empty[0]}/ (official file names: "
                f"<id>_<rating>.txt); {_IMDB_REDO}"
            )
        rows.sort()
        datasets[split] = TextDataset(
            texts=[row[3] for row in rows],
            labels=[row[0] for row in rows],
            classes=IMDB_CLASSES,
            ratings=[row[2] for row in rows],
            ids=[row[1] for row in rows],
        )
    return datasets


def _review_record(name: str, payload: bytes, where: str) -> tuple[str, str, int, int, str]:
    """Turn one review file into a record; ``where`` names it in errors (a path, or a member
    of an archive)."""
    match = _IMDB_REVIEW.match(name)
    if not match:
        raise CorruptDataError(f"{where} is not named <id>_<rating>.txt as IMDB reviews are; {_IMDB_REDO}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptDataError(
            f"{where} is not UTF-8 text ({error.reason} at byte {error.start}); IMDB reviews are "
            f"UTF-8: re-save the file as UTF-8, or {_IMDB_REDO}"
        ) from error
    return match[1], match[2], int(match[3]), int(match[4]), text


def _read_imdb_folder(folder: Path) -> dict[str, TextDataset]:
    def records():
        for split in ("train", "test"):
            for label_name in IMDB_CLASSES:
                directory = folder / split / label_name
                if not directory.is_dir():
                    raise CorruptDataError(f"{folder} exists but lacks {split}/{label_name}/; complete it or delete it")
                for path in directory.iterdir():
                    if not path.name.startswith("."):  # .DS_Store and editors' files
                        name = f"aclImdb/{split}/{label_name}/{path.name}"
                        yield _review_record(name, path.read_bytes(), str(path))

    return _imdb_from_records(records(), folder)


def _read_imdb_archive(archive: Path) -> dict[str, TextDataset]:
    """Read the labelled reviews straight out of ``aclImdb_v1.tar.gz`` without extracting it
    (the data directory may be read-only); unsafe members are refused all the same."""

    def records():
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = str(_checked_member_name(member, archive))
                if member.isfile() and _IMDB_CLASS_FOLDER.match(name):
                    payload = tar.extractfile(member).read()
                    yield _review_record(name, payload, f"{name} in {archive}")

    try:
        return _imdb_from_records(records(), archive)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(f"{archive} is not a complete tar.gz archive ({error}); delete it and fetch IMDB again") from error


def load_imdb(
    root: Path | str | None = None, *, download: bool = True, allow_sample: bool = True, verbose: bool = True
) -> LoadedData[TextDataset]:
    """Load the labelled IMDB reviews (Maas et al. 2011): 25,000 training and 25,000 test.

    Reads ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt`` from the folder, or straight from
    ``aclImdb_v1.tar.gz``. Labels: 0 = neg, 1 = pos; the star rating and id come from the file
    name. Texts are returned unchanged (they still hold ``<br />`` tags).

    Returns:
        :class:`LoadedData` of :class:`TextDataset`, sorted by label then review id.

    Raises:
        CorruptDataError: if the local folder is incomplete or the archive is truncated.
        UnsafeArchiveError: if the archive holds links, devices or paths leaving the folder.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    root = Path(root).resolve() if root is not None else default_data_dir()
    folder, archive = root / "aclImdb", root / "aclImdb_v1.tar.gz"

    def loaded(splits: dict[str, TextDataset], kind: str, location: Path) -> LoadedData[TextDataset]:
        sizes = {split: len(dataset) for split, dataset in splits.items()}
        return LoadedData(splits["train"], splits["test"], DataSource("IMDB", kind, str(location), sizes))

    def read_local() -> LoadedData | None:
        if folder.is_dir():
            return loaded(_read_imdb_folder(folder), SOURCE_LOCAL, folder)
        if archive.is_file():
            return loaded(_read_imdb_archive(archive), SOURCE_LOCAL, archive)
        return None

    def download_and_read() -> LoadedData:
        download_file(IMDB_URL, archive, IMDB_MD5, timeout=60.0)
        return loaded(_read_imdb_archive(archive), SOURCE_DOWNLOAD, archive)

    def read_sample() -> LoadedData:
        path = SAMPLES_DIR / "imdb_sample.jsonl.gz"
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            rows = [json.loads(line) for line in stream]
        records = ((row["split"], row["label"], row["id"], row["rating"], row["text"]) for row in rows)
        return loaded(_imdb_from_records(records, path), SOURCE_SAMPLE, path)

    return _resolve(
        "IMDB", root, read_local, download_and_read, read_sample,
        download=download, allow_sample=allow_sample, verbose=verbose, expected_layout="aclImdb/ or aclImdb_v1.tar.gz",
    )


__all__ = [
    "CIFAR10_CLASSES", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD", "IMDB_CLASSES", "MNIST_CLASSES", "MNIST_MEAN", "MNIST_STD",
    "ChecksumError", "CorruptDataError", "DataError", "DataNotFoundError", "DataSource", "ImageDataset",
    "BudgetSplits", "LoadedData", "MAX_VAL_FRACTION", "TextDataset", "budget_splits", "UnsafeArchiveError", "balanced_indices", "channel_stats", "cifar10_transforms", "download_file",
    "load_cifar10", "load_imdb", "load_mnist", "md5_of", "mnist_transform", "safe_extract", "stratified_indices",
    "subset", "train_val_split",
]
