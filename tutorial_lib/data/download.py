"""Getting files safely: checksums, verified downloads from mirrors, and safe extraction.

Nothing here is trusted before it is checked: a download is renamed into place only once its
MD5 equals the published one, and every archive member is checked before anything is written.
A failure names the URL or the path and leaves no partial file behind.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath

from tutorial_lib.data.errors import (
    ChecksumError,
    CorruptDataError,
    DataError,
    DownloadError,
    UnsafeArchiveError,
)


def md5_of(path: Path) -> str:
    """Return the hex MD5 digest of the file at ``path``."""
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_url(url: str, timeout: float):
    """Open ``url`` for reading; the one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)  # fixed https URLs


def cannot_write(path: Path, error: OSError) -> DownloadError:
    """The error for a write into the data directory that failed (full disk, read-only)."""
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
        raise cannot_write(destination.parent, error) from error
    temporary, received, digest = Path(temporary_name), 0, hashlib.md5()
    try:
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
                    raise cannot_write(temporary, error) from error
        if digest.hexdigest() != md5:
            raise ChecksumError(
                f"{url} downloaded with MD5 {digest.hexdigest()}, expected {md5}; nothing was "
                "kept. Try again, or place a verified copy under the data directory yourself."
            )
        os.replace(temporary, destination)
    except (DownloadError, ChecksumError):
        raise
    except (OSError, http.client.HTTPException) as error:
        # URLError, timeouts, resets and IncompleteRead: the network, not the disk
        raise DownloadError(
            f"the download of {url} failed after {received:,} bytes ({error!r}); nothing was "
            "kept. Try again later, or place a copy in the official layout in the data directory."
        ) from error
    finally:
        temporary.unlink(missing_ok=True)
    return destination


def download_from_mirrors(
    mirrors: Sequence[str], filename: str, destination: Path, md5: str, timeout: float = 30.0
) -> Path:
    """Download ``mirror + filename`` from each mirror in turn until one delivers verified bytes.

    A broken connection and a wrong checksum alike move on to the next mirror.

    Returns:
        ``destination``.

    Raises:
        ChecksumError: if every mirror failed and at least one served wrong bytes (the message
            lists each mirror's failure).
        DownloadError: if every mirror failed to deliver.
    """
    errors: list[DataError] = []
    for mirror in mirrors:
        try:
            return download_file(f"{mirror}{filename}", destination, md5, timeout)
        except (ChecksumError, DownloadError) as error:
            errors.append(error)
    summary = " | ".join(str(error) for error in errors)
    if any(isinstance(error, ChecksumError) for error in errors):
        raise ChecksumError(f"no mirror served a verified {filename}: {summary}")
    raise DownloadError(f"no mirror served {filename}: {summary}")


def checked_member_name(member: tarfile.TarInfo, archive: Path) -> PurePosixPath:
    """Return the member's name once it is known to stay inside the target folder.

    Raises:
        UnsafeArchiveError: for an absolute path, a ``..`` component, a link or a device.
    """
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts or member.name.startswith(("/", "\\")):
        raise UnsafeArchiveError(
            f"{archive} holds the member {member.name!r}, which points outside the target "
            "folder; refusing to read it"
        )
    if not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(
            f"{archive} holds {member.name!r}, a link or special file; refusing to read it"
        )
    return name


def safe_extract(
    archive: Path, destination: Path, keep: Callable[[PurePosixPath], bool] = lambda _: True
) -> list[Path]:
    """Extract the members of a tar archive for which ``keep(name)`` is true into ``destination``.

    Every member is checked first: absolute paths, ``..``, links and devices raise
    :class:`UnsafeArchiveError` before anything is written. Extraction goes to a temporary
    folder beside ``destination`` and each top-level entry is renamed into place at the end.

    Returns:
        The paths of the top-level entries created under ``destination``.

    Raises:
        UnsafeArchiveError: on a dangerous member.
        CorruptDataError: if the archive is truncated or not a tar archive.
        DownloadError: if ``destination`` cannot be written (full disk, read-only folder).
    """
    staging: Path | None = None
    try:
        destination.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=destination, prefix=".extract-"))
        with tarfile.open(archive) as tar:
            members = [
                member for member in tar.getmembers() if keep(checked_member_name(member, archive))
            ]
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
        raise CorruptDataError(
            f"{archive} is not a complete tar archive ({error}); delete it and download it again"
        ) from error
    except OSError as error:
        raise cannot_write(destination, error) from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def place_in(folder: str) -> Callable[[Path, Path], None]:
    """A spec's ``place`` step: move the verified download into ``root / folder``."""

    def place(downloaded: Path, root: Path) -> None:
        (root / folder).mkdir(parents=True, exist_ok=True)
        os.replace(downloaded, root / folder / downloaded.name)

    return place


def extract_folder(folder: str) -> Callable[[Path, Path], None]:
    """A spec's ``place`` step: safely extract only ``folder/`` of the downloaded archive into
    ``root`` (the archive itself is not kept)."""

    def place(downloaded: Path, root: Path) -> None:
        safe_extract(downloaded, root, keep=lambda name: name.parts[:1] == (folder,))

    return place


__all__ = [
    "cannot_write",
    "checked_member_name",
    "download_file",
    "download_from_mirrors",
    "extract_folder",
    "md5_of",
    "place_in",
    "safe_extract",
]
