"""The developer's commands: `make unit` leaves the book out, and a missing browser stops
`make test` at once with the one line that says what to install."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT


def _pytest(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *arguments],
        cwd=REPO_ROOT,
        env={**os.environ, **environment},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_missing_chromium_stops_the_run_before_the_book_builds():
    result = _pytest("tests/test_book.py", "-q", TUTORIAL_CHROMIUM="/nonexistent/chromium")
    assert result.returncode == 4, result.stdout[-2000:]
    assert "Chromium not found at /nonexistent/chromium" in result.stdout
    assert "apt-get install chromium" in result.stdout
    assert "passed" not in result.stdout, "nothing may run before the stop"


def test_the_book_tests_carry_the_book_marker_so_make_unit_leaves_them_out():
    kept = _pytest("tests/test_book.py", "--collect-only", "-q", "-m", "not book",
                   TUTORIAL_CHROMIUM="/nonexistent/chromium")  # fmt: skip
    assert kept.returncode == 5, kept.stdout[-2000:]  # no test selected, and no stop
    selected = _pytest("tests/test_book.py", "--collect-only", "-q", "-m", "book")
    assert "test_every_chapter_page_is_executed" in selected.stdout
