"""The data layer's errors: each message names the file, folder or URL and what to do."""

from __future__ import annotations


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


__all__ = [
    "ChecksumError",
    "CorruptDataError",
    "DataError",
    "DataNotFoundError",
    "DownloadError",
    "UnsafeArchiveError",
]
