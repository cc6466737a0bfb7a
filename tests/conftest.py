"""Shared test set-up: the smoke profile by default and no real network, ever."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TUTORIAL_PROFILE", "smoke")

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt of tutorial_lib.data to reach the network fails as it would offline.

    Tests that simulate a download replace ``_open_url`` themselves, after this fixture ran.
    """
    import tutorial_lib.data as data

    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)  # downloads are faked, so let them be tried

    def refuse(url: str, timeout: float):
        raise OSError(f"network disabled in tests (tried {url})")

    monkeypatch.setattr(data, "_open_url", refuse)


def full_data_dir() -> Path | None:
    """The data directory when TUTORIAL_DATA_DIR points at full copies, else None."""
    configured = os.environ.get("TUTORIAL_DATA_DIR")
    return Path(configured) if configured and Path(configured).is_dir() else None
