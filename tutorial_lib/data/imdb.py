"""IMDB: 25,000 training and 25,000 test movie reviews labelled negative or positive
(Maas et al. 2011).

Official layout: ``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``, extracted or still
inside ``aclImdb_v1.tar.gz`` (read without extracting, so the data directory may be
read-only). Reviews are UTF-8 text; the star rating and id come from the file name. The
official copy also has 50,000 unlabelled reviews, ``aclImdb/train/unsup/<id>_0.txt``; a copy
without them is complete for the labelled task.
"""

from __future__ import annotations

import gzip
import json
import re
import stat
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tutorial_lib.data.containers import (
    SOURCE_SAMPLE,
    LoadedData,
    TextDataset,
    loaded_data,
)
from tutorial_lib.data.download import checked_member_name, place_in
from tutorial_lib.data.errors import CorruptDataError
from tutorial_lib.data.hub import DataSpec, RemoteFile, load_dataset, register

IMDB_CLASSES = ("neg", "pos")
IMDB_URL = "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"
IMDB_MD5 = "7c2ac02c03563afcf9b574c7e56c153a"

FOLDER, ARCHIVE = "aclImdb", "aclImdb_v1.tar.gz"
_REVIEW = re.compile(r"^aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")
_IN_CLASS_FOLDER = re.compile(r"^aclImdb/(train|test)/(pos|neg)/[^/]+$")
_UNLABELLED = re.compile(r"^aclImdb/train/unsup/(\d+)_0\.txt$")
_IN_UNLABELLED_FOLDER = re.compile(r"^aclImdb/train/unsup/[^/]+$")
_REDO = "delete it and fetch IMDB again, or restore the official aclImdb layout"

Record = tuple[str, str, int, int, str]
"""``(split, label_name, review_id, rating, text)``."""


def _splits_from_records(records: Iterable[Record], location: Path) -> dict[str, TextDataset]:
    """Build the splits from records, sorted by label then id.

    Raises:
        CorruptDataError: if a split has no review of some class (``location`` is named).
    """
    by_split: dict[str, list] = {"train": [], "test": []}
    for split, label_name, review_id, rating, text in records:
        by_split[split].append((IMDB_CLASSES.index(label_name), review_id, rating, text))
    datasets = {}
    for split, rows in by_split.items():
        present = {row[0] for row in rows}
        empty = [name for k, name in enumerate(IMDB_CLASSES) if k not in present]
        if empty:
            raise CorruptDataError(
                f"{location} holds no review in aclImdb/{split}/{empty[0]}/ (official file "
                f"names: <id>_<rating>.txt); {_REDO}"
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


def _review(name: str, payload: bytes, where: str) -> Record:
    """Turn one review file into a record; ``where`` names it in errors (a path, or a member
    of an archive). An unlabelled review's record has the split ``"unsup"``."""
    unlabelled = _UNLABELLED.match(name)
    if unlabelled:
        return "unsup", "", int(unlabelled[1]), 0, _utf8(payload, where)
    match = _REVIEW.match(name)
    if not match:
        raise CorruptDataError(
            f"{where} is not named <id>_<rating>.txt as IMDB reviews are; {_REDO}"
        )
    return match[1], match[2], int(match[3]), int(match[4]), _utf8(payload, where)


def _utf8(payload: bytes, where: str) -> str:
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CorruptDataError(
            f"{where} is not UTF-8 text ({error.reason} at byte {error.start}); IMDB reviews are "
            f"UTF-8: re-save the file as UTF-8, or {_REDO}"
        ) from error


def _split_off_unlabelled(records: Iterable[Record]) -> tuple[list[Record], list[str]]:
    """Return the labelled records and the unlabelled texts (sorted by review id)."""
    labelled, unlabelled = [], []
    for record in records:
        (unlabelled if record[0] == "unsup" else labelled).append(record)
    return labelled, [record[4] for record in sorted(unlabelled, key=lambda r: r[2])]


def _folder_records(folder: Path) -> Iterator[Record]:
    inside = folder.resolve()
    unlabelled = folder / "train" / "unsup"
    if unlabelled.is_dir():
        for path in sorted(unlabelled.iterdir()):
            if not path.name.startswith("."):
                _check_plain_review_file(path, inside)
                name = f"{FOLDER}/train/unsup/{path.name}"
                yield _review(name, path.read_bytes(), str(path))
    for split in ("train", "test"):
        for label_name in IMDB_CLASSES:
            directory = folder / split / label_name
            if not directory.is_dir():
                raise CorruptDataError(
                    f"{folder} exists but lacks {split}/{label_name}/; complete it or delete it"
                )
            for path in directory.iterdir():
                if not path.name.startswith("."):  # .DS_Store and editors' files
                    _check_plain_review_file(path, inside)
                    yield _review(
                        f"{FOLDER}/{split}/{label_name}/{path.name}", path.read_bytes(), str(path)
                    )


def _check_plain_review_file(path: Path, inside: Path) -> None:
    """Refuse what the archive reader refuses too: a review that is a link leading out of the
    data folder (a system file would load as a review) or not a regular file (a named pipe
    would block the reader, a device or folder is no review).

    Raises:
        CorruptDataError: naming ``path`` and where it leads.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(inside):
        raise CorruptDataError(
            f"{path} leads to {resolved}, outside {inside}; IMDB reviews are plain files in "
            f"the folder: replace the link by the review itself, or {_REDO}"
        )
    if not stat.S_ISREG(resolved.stat().st_mode):
        raise CorruptDataError(
            f"{path} is not a regular file; IMDB reviews are plain text files: remove it, or "
            f"{_REDO}"
        )


def _archive_records(archive: Path) -> Iterator[Record]:
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            name = str(checked_member_name(member, archive))
            wanted = _IN_CLASS_FOLDER.match(name) or _IN_UNLABELLED_FOLDER.match(name)
            if member.isfile() and wanted:
                yield _review(name, tar.extractfile(member).read(), f"{name} in {archive}")


def read_imdb(root: Path, kind: str) -> LoadedData[TextDataset] | None:
    """Read ``root/aclImdb/`` or else ``root/aclImdb_v1.tar.gz``; ``None`` if neither is there.

    Raises:
        CorruptDataError: if a class folder is missing or empty, a review is misnamed, not
            UTF-8, not a regular file or a link leading out of the folder, or the archive is
            truncated.
        UnsafeArchiveError: if the archive holds links, devices or paths leaving the folder.
    """
    folder, archive = root / FOLDER, root / ARCHIVE
    if folder.is_dir():
        records, unlabelled = _split_off_unlabelled(_folder_records(folder))
        splits = _splits_from_records(records, folder)
        return loaded_data("IMDB", kind, folder, splits["train"], splits["test"], unlabelled)
    if not archive.is_file():
        return None
    try:
        records, unlabelled = _split_off_unlabelled(_archive_records(archive))
        splits = _splits_from_records(records, archive)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise CorruptDataError(
            f"{archive} is not a complete tar.gz archive ({error}); delete it and fetch IMDB again"
        ) from error
    return loaded_data("IMDB", kind, archive, splits["train"], splits["test"], unlabelled)


def read_imdb_sample(path: Path) -> LoadedData[TextDataset]:
    """Read the bundled sample: gzipped JSON lines with split, label, id, rating and text."""
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        rows = [json.loads(line) for line in stream]
    records = ((row["split"], row["label"], row["id"], row["rating"], row["text"]) for row in rows)
    splits = _splits_from_records(records, path)
    return loaded_data("IMDB", SOURCE_SAMPLE, path, splits["train"], splits["test"])


IMDB = register(
    DataSpec(
        key="imdb",
        name="IMDB",
        layout=f"{FOLDER}/ or {ARCHIVE}",
        read=read_imdb,
        files=(RemoteFile(ARCHIVE, IMDB_MD5, (IMDB_URL.removesuffix(ARCHIVE),), timeout=60.0),),
        place=place_in("."),
        sample="imdb_sample.jsonl.gz",
        read_sample=read_imdb_sample,
    )
)


def load_imdb(
    root: Path | str | None = None,
    *,
    download: bool = True,
    allow_sample: bool = True,
    verbose: bool = True,
) -> LoadedData[TextDataset]:
    """Load the labelled IMDB reviews (Maas et al. 2011), 25,000 training and 25,000 test, by
    the resolution rule of :func:`load_dataset`.

    Labels: 0 = neg, 1 = pos; the star rating and id come from the file name. Texts are
    returned unchanged (they still hold ``<br />`` tags). The unlabelled ``train/unsup/``
    reviews, when the copy has them, are in ``.unlabelled`` (texts, by review id).

    Returns:
        :class:`LoadedData` of :class:`TextDataset`, sorted by label then review id.

    Raises:
        CorruptDataError: if the local folder is incomplete or malformed, or the archive is
            truncated.
        UnsafeArchiveError: if the archive holds links, devices or paths leaving the folder.
        ChecksumError: if the download does not match the published MD5.
        DataNotFoundError: if nothing could be found or fetched and ``allow_sample`` is false.
    """
    return load_dataset("imdb", root, download=download, allow_sample=allow_sample, verbose=verbose)


__all__ = [
    "IMDB",
    "IMDB_CLASSES",
    "IMDB_MD5",
    "IMDB_URL",
    "load_imdb",
    "read_imdb",
    "read_imdb_sample",
]
