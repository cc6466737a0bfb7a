"""MNIST: 60,000 training and 10,000 test digits, 28 x 28 grey levels (LeCun et al. 1998).

Official layout: ``MNIST/raw/`` holding the four IDX files, unpacked (``*-ubyte``, as
torchvision leaves them) or as the official ``.gz`` files, which are read in place.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from tutorial_lib.data.containers import ImageDataset, LoadedData, loaded_data
from tutorial_lib.data.download import place_in
from tutorial_lib.data.errors import CorruptDataError
from tutorial_lib.data.hub import DataSpec, RemoteFile, load_dataset, read_image_sample, register

MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
"""Per-channel statistics of the 60,000 MNIST training images, pixels scaled to [0, 1].
``tests/test_data.py`` recomputes them from the full data with :func:`channel_stats`."""

MNIST_CLASSES = tuple(str(digit) for digit in range(10))

MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
MNIST_MD5 = {  # the checksums torchvision publishes for the official files
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

_SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IMAGE_MAGIC, _LABEL_MAGIC = 2051, 2049
_REDO = "delete it and fetch MNIST again"


def _find(raw: Path, name: str) -> Path | None:
    """The unpacked file if present, else the official ``.gz``, else ``None``."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file (or its ``.gz``) and return its uint8 array in the header's shape.

    Raises:
        CorruptDataError: if the gzip stream is broken, the magic number differs, or the size
            does not match the shape in the header (a truncated file).
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                content = stream.read()
        else:
            content = path.read_bytes()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(f"{path} is not a complete gzip file ({error}); {_REDO}") from error
    if len(content) < 4 or int.from_bytes(content[:4], "big") != magic:
        raise CorruptDataError(f"{path} is not an IDX file with magic number {magic}; {_REDO}")
    rank = content[3]
    dims = [int.from_bytes(content[4 + 4 * k : 8 + 4 * k], "big") for k in range(rank)]
    expected = 4 + 4 * rank + math.prod(dims)  # exact: np.prod wraps around past 2**63
    if len(content) != expected:
        raise CorruptDataError(
            f"{path} should hold {expected:,} bytes for shape {tuple(dims)} but holds "
            f"{len(content):,}; the file is truncated or corrupt: {_REDO}"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * rank).reshape(dims)


def _read_split(images_path: Path, labels_path: Path) -> ImageDataset:
    images = read_idx(images_path, _IMAGE_MAGIC)
    labels = read_idx(labels_path, _LABEL_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise CorruptDataError(
            f"{images_path} holds images of shape {images.shape[1:]}; MNIST images are 28 x 28. "
            f"Delete the file and fetch MNIST again"
        )
    if labels.ndim != 1 or len(labels) != len(images):
        raise CorruptDataError(
            f"{images_path} holds {len(images):,} images but {labels_path} holds labels of shape "
            f"{labels.shape}; the two files must come from the same release: fetch both again"
        )
    if labels.size and labels.max() > 9:
        raise CorruptDataError(
            f"{labels_path} holds the label {int(labels.max())}; MNIST labels are the digits "
            "0-9. Delete the file and fetch MNIST again"
        )
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        MNIST_CLASSES,
    )


def read_mnist(root: Path, kind: str) -> LoadedData[ImageDataset] | None:
    """Read ``root/MNIST/raw`` (each file unpacked or ``.gz``); ``None`` if none of the four
    files is there.

    Raises:
        CorruptDataError: if some files are there and others missing, or one is malformed.
    """
    raw = root / "MNIST" / "raw"
    found = {name: _find(raw, name) for pair in _SPLIT_FILES.values() for name in pair}
    missing = [name for name, path in found.items() if path is None]
    if len(missing) == len(found):
        return None
    if missing:
        raise CorruptDataError(
            f"{raw} holds part of MNIST but lacks {', '.join(missing)} (or its .gz); add the "
            "missing file, or delete the folder to download MNIST again"
        )
    train, test = (
        _read_split(found[images], found[labels]) for images, labels in _SPLIT_FILES.values()
    )
    return loaded_data("MNIST", kind, raw, train, test)


MNIST = register(
    DataSpec(
        key="mnist",
        name="MNIST",
        layout="MNIST/raw/*-ubyte or the official .gz files",
        read=read_mnist,
        files=tuple(RemoteFile(name, md5, MNIST_MIRRORS) for name, md5 in MNIST_MD5.items()),
        place=place_in("MNIST/raw"),
        sample="mnist_sample.npz",
        read_sample=read_image_sample("MNIST", MNIST_CLASSES),
    )
)


def load_mnist(
    root: Path | str | None = None,
    *,
    download: bool = True,
    allow_sample: bool = True,
    verbose: bool = True,
) -> LoadedData[ImageDataset]:
    """Load MNIST (60,000 training and 10,000 test digits, 28x28 grey levels) by the
    resolution rule of :func:`load_dataset`.

    Images come as uint8 ``(N, 1, 28, 28)``; combine with
    :func:`~tutorial_lib.data.transforms.mnist_transform`.

    Returns:
        :class:`LoadedData` with ``train``, ``test`` and ``source``.

    Raises:
        CorruptDataError: if the local files are incomplete, truncated or malformed.
        ChecksumError: if no mirror served the official bytes.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    return load_dataset(
        "mnist", root, download=download, allow_sample=allow_sample, verbose=verbose
    )


__all__ = [
    "MNIST",
    "MNIST_CLASSES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "load_mnist",
    "read_idx",
    "read_mnist",
]
