"""CIFAR-10: 50,000 training and 10,000 test colour images of 32 x 32 pixels in ten classes
(Krizhevsky 2009).

Official layout: ``cifar-10-batches-py/`` holding ``data_batch_1`` ... ``data_batch_5`` and
``test_batch``, the pickled python batches. A pickle can call any function while it loads, so
the batches are read with :class:`BatchUnpickler`, which admits only what the official batches
contain. The batches are read directly rather than through torchvision's ``CIFAR10``, which
insists on the official files' checksums and so rejects faithful rebuilt copies; any number of
images per batch is accepted.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from tutorial_lib.data.containers import ImageDataset, LoadedData, loaded_data
from tutorial_lib.data.download import extract_folder
from tutorial_lib.data.errors import CorruptDataError
from tutorial_lib.data.hub import DataSpec, RemoteFile, load_dataset, read_image_sample, register

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
"""Per-channel statistics of the 50,000 official CIFAR-10 training images, in [0, 1]."""

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"

FOLDER = "cifar-10-batches-py"
_TRAIN_BATCHES = tuple(f"data_batch_{k}" for k in range(1, 6))
_REDO = "delete the folder and fetch CIFAR-10 again"


class BatchUnpickler(pickle.Unpickler):
    """Unpickles only what the official CIFAR-10 batches contain: dicts, lists, strings,
    bytes and ints, and numpy arrays. Any other global (``os.system``, ``eval``, a class of
    some package) is refused before it can be called, so a planted batch cannot run code."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),  # written by numpy < 2 (the official files)
            ("numpy._core.multiarray", "_reconstruct"),  # written by numpy >= 2
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            *(
                (module, name)
                for module in ("builtins", "__builtin__")
                for name in ("dict", "list", "bytes", "int", "str")
            ),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"it refers to {module}.{name}, which official CIFAR-10 batches never contain"
            )
        return super().find_class(module, name)


def _describe_pixels(array: np.ndarray) -> str:
    """Say what is wrong with pixels that are not uint8, for the error message."""
    if array.dtype.kind == "f":
        return f"{array.dtype} pixels" + (", some NaN" if np.isnan(array).any() else "")
    if array.dtype.kind in "iu" and array.size:
        return f"{array.dtype} pixels ranging {array.min()}..{array.max()}"
    return f"{array.dtype} pixels"


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch with :class:`BatchUnpickler` and check what it holds.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        CorruptDataError: if the file refers to anything but the admitted globals, is not a
            batch, or holds pixels that are not uint8 or labels that are not integers 0..9.
    """
    try:
        with open(path, "rb") as stream:
            batch = BatchUnpickler(stream, encoding="latin1").load()
        data, labels = batch["data"], np.asarray(batch["labels"])
    except pickle.UnpicklingError as error:
        raise CorruptDataError(
            f"{path} was refused: {error}. It may be malicious; {_REDO}"
        ) from error
    except (EOFError, KeyError, TypeError, ValueError, AttributeError, IndexError) as error:
        raise CorruptDataError(
            f"{path} is not a readable CIFAR-10 python batch ({error!r}); {_REDO}"
        ) from error
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        found = _describe_pixels(data) if isinstance(data, np.ndarray) else type(data).__name__
        raise CorruptDataError(
            f"{path} holds {found}; CIFAR-10 batches store uint8 pixels in 0..255. {_REDO}"
        )
    if labels.dtype.kind not in "iu":
        raise CorruptDataError(
            f"{path} holds {labels.dtype} labels; CIFAR-10 labels are the integers 0..9. {_REDO}"
        )
    if (
        data.ndim != 2
        or data.shape[1] != 3072
        or labels.shape != (data.shape[0],)
        or not np.isin(labels, range(10)).all()
    ):
        raise CorruptDataError(
            f"{path} should hold N x 3072 uint8 pixels and N labels in 0..9, got {data.shape} "
            f"and {labels.shape}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(root: Path, kind: str) -> LoadedData[ImageDataset] | None:
    """Read ``root/cifar-10-batches-py``; ``None`` if the folder is not there.

    Raises:
        CorruptDataError: if the folder lacks a batch, or a batch is refused or malformed.
    """
    folder = root / FOLDER
    if not folder.is_dir():
        return None
    missing = [name for name in (*_TRAIN_BATCHES, "test_batch") if not (folder / name).is_file()]
    if missing:
        raise CorruptDataError(
            f"{folder} exists but lacks {', '.join(missing)}; complete it, or delete it to "
            "download CIFAR-10 again"
        )
    parts = [read_batch(folder / name) for name in _TRAIN_BATCHES]
    train_images = torch.from_numpy(np.concatenate([images for images, _ in parts]))
    train_labels = torch.from_numpy(np.concatenate([labels for _, labels in parts]))
    test_images, test_labels = read_batch(folder / "test_batch")
    train = ImageDataset(train_images, train_labels, CIFAR10_CLASSES)
    test = ImageDataset(
        torch.from_numpy(test_images), torch.from_numpy(test_labels), CIFAR10_CLASSES
    )
    return loaded_data("CIFAR-10", kind, folder, train, test)


CIFAR10 = register(
    DataSpec(
        key="cifar10",
        name="CIFAR-10",
        layout=f"{FOLDER}/",
        read=read_cifar10,
        files=(
            RemoteFile(
                CIFAR10_URL.rsplit("/", 1)[1], CIFAR10_MD5, (CIFAR10_URL.rsplit("/", 1)[0] + "/",)
            ),
        ),
        place=extract_folder(FOLDER),
        sample="cifar10_sample.npz",
        read_sample=read_image_sample("CIFAR-10", CIFAR10_CLASSES),
    )
)


def load_cifar10(
    root: Path | str | None = None,
    *,
    download: bool = True,
    allow_sample: bool = True,
    verbose: bool = True,
) -> LoadedData[ImageDataset]:
    """Load CIFAR-10 from the pickled python batches by the resolution rule of
    :func:`load_dataset`.

    Images come as uint8 ``(N, 3, 32, 32)``; combine with
    :func:`~tutorial_lib.data.transforms.cifar10_transforms`.

    Returns:
        :class:`LoadedData` with ``train``, ``test`` and ``source``.

    Raises:
        CorruptDataError: if ``cifar-10-batches-py/`` exists but is incomplete, unreadable,
            malformed, or holds a batch that refers to code.
        ChecksumError: if the download does not match the published MD5.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    return load_dataset(
        "cifar10", root, download=download, allow_sample=allow_sample, verbose=verbose
    )


__all__ = [
    "BatchUnpickler",
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "load_cifar10",
    "read_batch",
    "read_cifar10",
]
