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
"""

from __future__ import annotations

import gzip
import hashlib
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


def download_file(url: str, destination: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``destination`` through a temporary file in the same folder.

    The file is renamed into place only after its MD5 equals ``md5``, so an interrupted or
    corrupted download never leaves a file under the final name.

    Returns:
        ``destination``.

    Raises:
        ChecksumError: if the downloaded bytes do not have the expected MD5.
        OSError: if the network or the disk fails (``urllib.error.URLError`` is an ``OSError``).
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    temporary = Path(temporary_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(handle, "wb") as out, _open_url(url, timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
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
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise CorruptDataError(f"{archive} is not a complete tar archive ({error}); delete it and download it again") from error
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


def _check_idx(path: Path, magic: int) -> None:
    """Check an IDX file's header against its size, so a truncated file gets a clear error."""
    with open(path, "rb") as stream:
        header = stream.read(4)
        if len(header) < 4 or int.from_bytes(header, "big") != magic:
            raise CorruptDataError(f"{path} is not an IDX file with magic number {magic}; delete it and fetch MNIST again")
        dims = [int.from_bytes(stream.read(4), "big") for _ in range(header[3])]
    expected = 4 + 4 * len(dims) + int(np.prod(dims))
    if path.stat().st_size != expected:
        raise CorruptDataError(
            f"{path} should hold {expected:,} bytes for shape {tuple(dims)} but holds {path.stat().st_size:,}; "
            "the file is truncated or corrupt: delete it and fetch MNIST again"
        )


def _gunzip(source: Path, destination: Path) -> None:
    handle, temporary_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, gzip.open(source, "rb") as stream:
            shutil.copyfileobj(stream, out)
        os.replace(temporary_name, destination)
    except (OSError, EOFError) as error:
        raise CorruptDataError(f"{source} is not a complete gzip file ({error}); delete it and fetch MNIST again") from error
    finally:
        Path(temporary_name).unlink(missing_ok=True)


def _read_mnist_folder(root: Path, kind: str) -> LoadedData[ImageDataset]:
    from torchvision.datasets import MNIST

    raw = root / "MNIST" / "raw"
    splits = {}
    for split, (images_name, labels_name) in _MNIST_FILES.items():
        _check_idx(raw / images_name, 2051)
        _check_idx(raw / labels_name, 2049)
        mnist = MNIST(str(root), train=(split == "train"), download=False)
        splits[split] = ImageDataset(mnist.data.unsqueeze(1).contiguous(), mnist.targets, MNIST_CLASSES)
    source = DataSource("MNIST", kind, str(raw), {s: len(d) for s, d in splits.items()})
    return LoadedData(splits["train"], splits["test"], source)


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
    needed = [name for pair in _MNIST_FILES.values() for name in pair]

    def read_local() -> LoadedData | None:
        if all((raw / name).is_file() for name in needed):
            return _read_mnist_folder(root, SOURCE_LOCAL)
        if all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in needed):
            for name in needed:
                if not (raw / name).is_file():
                    _gunzip(raw / f"{name}.gz", raw / name)
            return _read_mnist_folder(root, SOURCE_LOCAL)
        return None

    def download_and_read() -> LoadedData:
        from torchvision.datasets import MNIST

        raw.mkdir(parents=True, exist_ok=True)
        last_error: OSError | None = None
        for filename, md5 in MNIST.resources:
            target = raw / filename.removesuffix(".gz")
            if target.is_file():
                continue
            for mirror in MNIST.mirrors:
                try:
                    download_file(f"{mirror}{filename}", raw / filename, md5)
                    break
                except OSError as error:
                    last_error = error
            else:
                raise last_error or OSError(f"could not download {filename}")
            _gunzip(raw / filename, target)
            (raw / filename).unlink()
        return _read_mnist_folder(root, SOURCE_DOWNLOAD)

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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as stream:
            batch = pickle.load(stream, encoding="latin1")
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as error:
        raise CorruptDataError(f"{path} is not a readable CIFAR-10 python batch ({error!r}); delete the folder and fetch CIFAR-10 again") from error
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],) or not np.isin(labels, range(10)).all():
        raise CorruptDataError(f"{path} should hold N x 3072 uint8 pixels and N labels in 0..9, got {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels


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


def _imdb_from_records(records: Iterable[tuple[str, str, int, int, str]]) -> dict[str, TextDataset]:
    """Build the splits from ``(split, label_name, id, rating, text)``, sorted by label then id."""
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, label_name, review_id, rating, text in records:
        by_split[split].append((IMDB_CLASSES.index(label_name), review_id, rating, text))
    datasets = {}
    for split, rows in by_split.items():
        rows.sort()
        datasets[split] = TextDataset(
            texts=[row[3] for row in rows],
            labels=[row[0] for row in rows],
            classes=IMDB_CLASSES,
            ratings=[row[2] for row in rows],
            ids=[row[1] for row in rows],
        )
    return datasets


def _read_imdb_folder(folder: Path) -> dict[str, TextDataset]:
    def records():
        for split in ("train", "test"):
            for label_name in IMDB_CLASSES:
                directory = folder / split / label_name
                if not directory.is_dir():
                    raise CorruptDataError(f"{folder} exists but lacks {split}/{label_name}/; complete it or delete it")
                for path in directory.iterdir():
                    match = _IMDB_REVIEW.match(f"aclImdb/{split}/{label_name}/{path.name}")
                    if match:
                        yield split, label_name, int(match[3]), int(match[4]), path.read_text(encoding="utf-8")

    return _imdb_from_records(records())


def _read_imdb_archive(archive: Path) -> dict[str, TextDataset]:
    """Read the labelled reviews straight out of ``aclImdb_v1.tar.gz`` without extracting it
    (the data directory may be read-only); unsafe members are refused all the same."""

    def records():
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = _checked_member_name(member, archive)
                match = _IMDB_REVIEW.match(str(name))
                if match and member.isfile():
                    text = tar.extractfile(member).read().decode("utf-8")
                    yield match[1], match[2], int(match[3]), int(match[4]), text

    try:
        splits = _imdb_from_records(records())
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(f"{archive} is not a complete tar.gz archive ({error}); delete it and fetch IMDB again") from error
    if not len(splits["train"]) or not len(splits["test"]):
        raise CorruptDataError(f"{archive} holds no aclImdb/{{train,test}}/{{pos,neg}}/*.txt reviews; is it the IMDB archive?")
    return splits


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
        return loaded(_imdb_from_records(records), SOURCE_SAMPLE, path)

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
