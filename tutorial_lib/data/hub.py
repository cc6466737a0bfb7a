"""The data hub: one declarative spec per data set, and the one resolution rule that reads it.

A :class:`DataSpec` says everything the rule needs about a data set: its official layout and
the reader for it, the official files with their checksums and mirrors, how a verified download
is put into that layout, and the bundled sample. Adding a data set is one spec and one reader::

    register(DataSpec(
        key="fashion_mnist", name="Fashion-MNIST", layout="FashionMNIST/raw/*-ubyte.gz",
        read=read_fashion_mnist,  # (root, kind) -> LoadedData | None; the one new function
        files=tuple(RemoteFile(name, md5, (MIRROR,)) for name, md5 in FASHION_MD5.items()),
        place=place_in("FashionMNIST/raw"),
        sample="fashion_mnist_sample.npz",
        read_sample=read_image_sample("Fashion-MNIST", CLASSES),
    ))

after which ``load_dataset("fashion_mnist")`` resolves it like every other data set (a
``load_fashion_mnist`` wrapper only adds a docstring). ``tests/test_data_hub.py`` registers
such a data set and walks it through the three sources.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tutorial_lib.data.containers import (
    SOURCE_DOWNLOAD,
    SOURCE_LOCAL,
    SOURCE_SAMPLE,
    DataSource,
    ImageDataset,
    LoadedData,
    loaded_data,
)
from tutorial_lib.data.download import cannot_write, download_from_mirrors, md5_of
from tutorial_lib.data.errors import CorruptDataError, DataNotFoundError
from tutorial_lib.runtime import OFFLINE_ENV, display_path, env_flag, notice
from tutorial_lib.runtime import data_dir as default_data_dir

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"


@dataclass(frozen=True)
class RemoteFile:
    """One official file: its name, published MD5 and the base URLs it is served from (the
    file's URL is ``mirror + filename``; mirrors are tried in order)."""

    filename: str
    md5: str
    mirrors: tuple[str, ...]
    timeout: float = 30.0


@dataclass(frozen=True)
class DataSpec:
    """Everything the resolution rule needs to know about one data set.

    Attributes:
        key: the name in :data:`DATA_HUB` (``"mnist"``).
        name: the name printed to the reader (``"MNIST"``).
        layout: the official on-disk layout under the data directory, for messages.
        read: ``read(root, kind)`` returns the data set in ``root`` in the official layout,
            ``None`` when none of it is there, and raises ``CorruptDataError`` when it is there
            but incomplete or malformed (never a reason to fall back).
        files: the official files to download when there is no local copy.
        place: ``place(downloaded_file, root)`` puts one verified download into the layout.
        sample: the bundled sample's file name in ``tutorial_lib/samples``.
        read_sample: ``read_sample(path)`` returns the sample as :class:`LoadedData`.
    """

    key: str
    name: str
    layout: str
    read: Callable[[Path, str], LoadedData | None]
    files: tuple[RemoteFile, ...]
    place: Callable[[Path, Path], None]
    sample: str
    read_sample: Callable[[Path], LoadedData]


DATA_HUB: dict[str, DataSpec] = {}
"""Every data set the loaders know, by key; tests replace entries to serve local files."""


def register(spec: DataSpec) -> DataSpec:
    """Add ``spec`` to :data:`DATA_HUB` under ``spec.key`` and return it."""
    DATA_HUB[spec.key] = spec
    return spec


def _downloads_allowed(download: bool) -> bool:
    return download and not env_flag(OFFLINE_ENV)


def _download_into(spec: DataSpec, root: Path) -> None:
    """Fetch every official file into a staging folder, then place them: a download that
    fails half-way leaves no partial copy for the next run to refuse."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".download-{spec.key}-"))
    except OSError as error:
        raise cannot_write(root, error) from error
    try:
        # a verified copy from an earlier attempt is reused, and moved only once the rest
        # has arrived, so a failed download never costs it
        kept = [
            remote
            for remote in spec.files
            if (root / remote.filename).is_file() and md5_of(root / remote.filename) == remote.md5
        ]
        for remote in spec.files:
            if remote not in kept:
                download_from_mirrors(
                    remote.mirrors,
                    remote.filename,
                    staging / remote.filename,
                    remote.md5,
                    remote.timeout,
                )
        for remote in kept:
            os.replace(root / remote.filename, staging / remote.filename)
        for remote in spec.files:
            spec.place(staging / remote.filename, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _announce_sample(source: DataSource, reason: str) -> None:
    notice(
        f"{reason}. Using the {source.describe()}. This is a tiny real sample for trying the "
        "code: results on it are NOT representative. For real results put the data set in the "
        "data directory (TUTORIAL_DATA_DIR, see the setup page) or allow the download."
    )


def load_dataset(
    key: str,
    root: Path | str | None = None,
    *,
    download: bool = True,
    allow_sample: bool = True,
    verbose: bool = True,
) -> LoadedData:
    """Load the data set registered as ``key`` by the one resolution rule and say where from.

    1. a local copy in the official layout under ``root`` (default: the data directory);
    2. the official download into ``root``, verified against the published MD5 (skipped when
       ``download`` is false or ``TUTORIAL_OFFLINE`` is set);
    3. the bundled sample, with a notice that results on it are not representative.

    Returns:
        :class:`LoadedData`, whose ``source`` says which of the three was used.

    Raises:
        KeyError: if no data set is registered as ``key``.
        CorruptDataError, UnsafeArchiveError: if a local copy or a download is broken.
        ChecksumError: if a download does not match the published checksum (no fallback).
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    if key not in DATA_HUB:
        raise KeyError(f"no data set {key!r}; the known ones are {', '.join(sorted(DATA_HUB))}")
    spec = DATA_HUB[key]
    root = Path(root).resolve() if root is not None else default_data_dir()
    loaded = spec.read(root, SOURCE_LOCAL)
    reason = f"no local {spec.name} copy under {root} (expected {spec.layout})"
    if loaded is None and _downloads_allowed(download):
        try:
            _download_into(spec, root)
            loaded = spec.read(root, SOURCE_DOWNLOAD)
            if loaded is None:  # the spec's place step and reader disagree on the layout
                raise CorruptDataError(
                    f"the {spec.name} download was verified and placed under {root}, but no "
                    f"copy in the layout {spec.layout} was found there"
                )
        except OSError as error:  # DownloadError included: network or disk, never the data
            reason += f", and the official download failed ({error})"
    elif loaded is None:
        reason += ", and downloads are switched off"
    if loaded is None:
        if not allow_sample:
            raise DataNotFoundError(
                f"{reason}. Put the data set there in its official layout, set "
                "TUTORIAL_DATA_DIR to a folder that has it, or allow the download."
            )
        loaded = spec.read_sample(SAMPLES_DIR / spec.sample)
        if verbose:  # on the page, the data folder as the reader knows it, not this machine's path
            _announce_sample(loaded.source, reason.replace(str(root), display_path(root), 1))
    elif verbose:
        print(loaded.source.describe())
    return loaded


def read_image_sample(dataset: str, classes: Sequence[str]) -> Callable[[Path], LoadedData]:
    """A spec's ``read_sample`` for images saved as ``{train,test}_{images,labels}`` in an
    ``.npz`` file (what ``scripts/make_samples.py`` writes)."""

    def read(path: Path) -> LoadedData[ImageDataset]:
        with np.load(path) as arrays:
            train, test = (
                ImageDataset(
                    torch.from_numpy(arrays[f"{split}_images"]),
                    torch.from_numpy(arrays[f"{split}_labels"]),
                    classes,
                )
                for split in ("train", "test")
            )
        return loaded_data(dataset, SOURCE_SAMPLE, path, train, test)

    return read


__all__ = [
    "DATA_HUB",
    "DataSpec",
    "RemoteFile",
    "SAMPLES_DIR",
    "load_dataset",
    "read_image_sample",
    "register",
]
