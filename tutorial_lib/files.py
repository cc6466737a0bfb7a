"""Writing files so that a reader never sees half of one: the one atomic-write helper.

Checkpoints, result records, downloads and unpacked archives all go through
:func:`atomic_write`: the bytes land in a uniquely named temporary file in the target folder,
which is renamed over the target (``os.replace``, atomic on one file system) only once complete.
A failure removes the temporary file and leaves an earlier target untouched; two writers of one
target never share a temporary name, so the last complete write wins.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a fresh temporary path beside ``target``; on a clean exit rename it onto ``target``.

    Write the whole file to the yielded path inside the ``with`` block. If the block raises,
    the temporary file is deleted and ``target`` keeps its previous content (or stays absent).

    Raises:
        OSError: if the folder cannot be created or written (read-only, disk full); nothing
            is left behind.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def atomic_write(target: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)`` and move the finished file onto ``target``; return ``target``.

    Raises:
        OSError: as :func:`atomic_path`; whatever ``write`` raises propagates after clean-up.
    """
    with atomic_path(target) as temporary:
        write(temporary)
    return Path(target)


def atomic_write_text(target: Path | str, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``target`` atomically and return ``target``."""
    return atomic_write(target, lambda path: path.write_text(text, encoding="utf-8"))
