"""Shared test set-up: the smoke profile by default and no real network, ever.

Downloads are tested against a local HTTP server on 127.0.0.1 (the ``local_server`` fixture);
every other address is refused by ``no_network``.
"""

from __future__ import annotations

import http.server
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ.setdefault("TUTORIAL_PROFILE", "smoke")

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCALHOST = "127.0.0.1"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt of tutorial_lib.data to reach the network fails as it would offline, except
    for URLs on 127.0.0.1 (the local test server).

    Tests that fake a download replace ``_open_url`` themselves, after this fixture ran.
    """
    import tutorial_lib.data as data
    import tutorial_lib.data.download as network

    monkeypatch.delenv(data.OFFLINE_ENV, raising=False)  # downloads are faked, so let them be tried
    real_open_url = network._open_url

    def local_only(url: str, timeout: float):
        if urllib.parse.urlsplit(url).hostname == LOCALHOST:
            return real_open_url(url, timeout)
        raise OSError(f"network disabled in tests (tried {url})")

    monkeypatch.setattr(network, "_open_url", local_only)


class LocalServer:
    """An HTTP server on 127.0.0.1 that answers each path from ``routes``: bytes are served
    whole; a callable receives the request handler and writes the answer itself (to cut,
    stall or lie)."""

    def __init__(self) -> None:
        self.routes: dict[str, bytes | Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()  # set at teardown so stalled handlers end
        routes, requests = self.routes, self.requests

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # the name http.server calls
                requests.append(self.path)
                answer = routes.get(self.path)
                if answer is None:
                    self.send_error(404)
                elif callable(answer):
                    answer(self)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        return f"http://{LOCALHOST}:{self.server.server_address[1]}{path}"


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    """A :class:`LocalServer` on a free port of 127.0.0.1, stopped after the test."""
    server = LocalServer()
    server.thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.server.shutdown()
        server.server.server_close()
        server.thread.join(timeout=5)


def full_data_dir() -> Path | None:
    """The data directory when TUTORIAL_DATA_DIR points at full copies, else None."""
    configured = os.environ.get("TUTORIAL_DATA_DIR")
    return Path(configured) if configured and Path(configured).is_dir() else None


BOOK_TESTS = "test_book.py"


def pytest_collection_modifyitems(config, items) -> None:
    """Mark the book build's tests ``book`` (so ``-m "not book"`` skips the long build), and
    stop at once, with one line, when they are selected but Chromium is missing: otherwise the
    whole book would build for 20 minutes and then fail on the missing browser."""
    selected_book_tests = False
    for item in items:
        if item.path.name == BOOK_TESTS:
            item.add_marker(pytest.mark.book)
            selected_book_tests = True
    if not selected_book_tests or config.getoption("markexpr", ""):
        return
    chromium = Path(os.environ.get("TUTORIAL_CHROMIUM", "/usr/bin/chromium"))
    if not chromium.is_file():
        pytest.exit(
            f"Chromium not found at {chromium}: the book's browser check needs it. Install it "
            "(apt-get install chromium) or set TUTORIAL_CHROMIUM to a Chromium binary; "
            "`make unit` runs everything but the book.",
            returncode=4,
        )
