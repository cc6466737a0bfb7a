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
:func:`stratified_indices`, :func:`subset`, :func:`train_val_split` and :func:`budget_splits`.

What is trusted: nothing in the data directory runs as code. MNIST's IDX files and IMDB's text
files are parsed as data. CIFAR-10's python batches are pickles, and a pickle can call any
function while it loads; they are read with a restricted unpickler that admits only what the
official batches contain (dicts, lists, strings, bytes, ints and numpy's array reconstruction)
and refuses any other reference (``os.system``, ``eval``, ...) before it runs. Archives are
checked member by member before anything is written (no absolute paths, ``..``, links or
devices). Every file is then checked against its format (uint8 pixels, labels in range, sizes
that agree, UTF-8 text); a failure names the file and what to do. Downloads are trusted only
once their MD5 equals the published one.

The package, by concern:

- :mod:`~tutorial_lib.data.containers`: what a loader returns (``ImageDataset``,
  ``TextDataset``, ``LoadedData``, ``DataSource``);
- :mod:`~tutorial_lib.data.sampling`: subsets, splits, budgets and channel statistics;
- :mod:`~tutorial_lib.data.download`: checksums, verified downloads, mirrors, safe extraction;
- :mod:`~tutorial_lib.data.hub`: the ``DataSpec`` of each data set in ``DATA_HUB`` and the one
  resolution rule, :func:`load_dataset`; adding a data set is a spec plus a reader;
- :mod:`~tutorial_lib.data.mnist`, :mod:`~tutorial_lib.data.cifar10`,
  :mod:`~tutorial_lib.data.imdb`: one spec, reader and loader each;
- :mod:`~tutorial_lib.data.transforms`: the image transforms and the ImageNet statistics.
"""

from tutorial_lib.data.cifar10 import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR10_MD5,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    load_cifar10,
)
from tutorial_lib.data.containers import (
    SOURCE_DOWNLOAD,
    SOURCE_LOCAL,
    SOURCE_SAMPLE,
    DataSource,
    ImageDataset,
    LoadedData,
    TextDataset,
)
from tutorial_lib.data.download import (
    download_file,
    download_from_mirrors,
    md5_of,
    safe_extract,
)
from tutorial_lib.data.errors import (
    ChecksumError,
    CorruptDataError,
    DataError,
    DataNotFoundError,
    DownloadError,
    UnsafeArchiveError,
)
from tutorial_lib.data.hub import (
    DATA_HUB,
    SAMPLES_DIR,
    DataSpec,
    RemoteFile,
    load_dataset,
    register,
)
from tutorial_lib.data.imdb import IMDB, IMDB_CLASSES, IMDB_MD5, IMDB_URL, load_imdb
from tutorial_lib.data.mnist import (
    MNIST,
    MNIST_CLASSES,
    MNIST_MD5,
    MNIST_MEAN,
    MNIST_MIRRORS,
    MNIST_STD,
    load_mnist,
)
from tutorial_lib.data.sampling import (
    MAX_VAL_FRACTION,
    BudgetSplits,
    balanced_indices,
    budget_splits,
    channel_stats,
    stratified_indices,
    subset,
    train_val_split,
)
from tutorial_lib.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    cifar10_transforms,
    mnist_transform,
)
from tutorial_lib.runtime import OFFLINE_ENV

__all__ = [
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MD5",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_URL",
    "DATA_HUB",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMDB",
    "IMDB_CLASSES",
    "IMDB_MD5",
    "IMDB_URL",
    "MAX_VAL_FRACTION",
    "MNIST",
    "MNIST_CLASSES",
    "MNIST_MD5",
    "MNIST_MEAN",
    "MNIST_MIRRORS",
    "MNIST_STD",
    "OFFLINE_ENV",
    "SAMPLES_DIR",
    "SOURCE_DOWNLOAD",
    "SOURCE_LOCAL",
    "SOURCE_SAMPLE",
    "BudgetSplits",
    "ChecksumError",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "DataSource",
    "DataSpec",
    "DownloadError",
    "ImageDataset",
    "LoadedData",
    "RemoteFile",
    "TextDataset",
    "UnsafeArchiveError",
    "balanced_indices",
    "budget_splits",
    "channel_stats",
    "cifar10_transforms",
    "download_file",
    "download_from_mirrors",
    "load_cifar10",
    "load_dataset",
    "load_imdb",
    "load_mnist",
    "md5_of",
    "mnist_transform",
    "register",
    "safe_extract",
    "stratified_indices",
    "subset",
    "train_val_split",
]
