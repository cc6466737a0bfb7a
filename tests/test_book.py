"""The book builds with warnings as errors, executing every chapter (under the test profile)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("book")
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run(
        [str(jupyter_book), "build", "--all", "--warningiserror", "--nitpick", "--keep-going", "--path-output", str(output), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        env={**os.environ, "TUTORIAL_PROFILE": os.environ.get("TUTORIAL_PROFILE", "smoke")},
        timeout=1800,
    )
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return output / "_build" / "html"


def test_every_chapter_page_is_executed_with_figures_and_a_colab_button(built_book: Path):
    chapters = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    for notebook in chapters:
        page = (built_book / "chapters" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert "colab.research.google.com/github/" in page and f"chapters/{notebook.name}" in page
        assert re.search(r'<img [^>]*src="\.\./_images/[^"]+\.png"', page), f"{notebook.name} rendered no figure"
        assert "Traceback" not in page
        assert "profile " in page, "the environment report was not executed"


def test_book_pages_and_bibliography_render(built_book: Path):
    for page in ("book/intro.html", "book/setup.html", "book/glossary.html", "book/references.html"):
        assert (built_book / page).is_file()
    references = (built_book / "book" / "references.html").read_text(encoding="utf-8")
    assert "Dumoulin" in references
