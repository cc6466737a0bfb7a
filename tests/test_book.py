"""The README's first command works on a fresh machine: the book builds with warnings as errors,
executing every chapter under the default ``cpu`` profile with an empty data directory, empty
weight caches and no network, so every chapter runs on the bundled samples and the offline
weights (``rm -rf data && TUTORIAL_OFFLINE=1 make book``)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT


BOOK_BUILD_TIMEOUT_S = 1500
"""A bound on the whole build (every chapter executed under ``cpu`` on the bundled samples);
chapter cells are bounded separately by ``execute.timeout`` in ``_config.yml``."""


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("book")
    fresh = tmp_path_factory.mktemp("fresh-machine")
    for folder in ("data", "results", "torch-home", "hf-home"):
        (fresh / folder).mkdir()
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    environment = {
        **os.environ,
        "TUTORIAL_PROFILE": "cpu",
        "TUTORIAL_DATA_DIR": str(fresh / "data"),
        "TUTORIAL_RESULTS_DIR": str(fresh / "results"),
        "TORCH_HOME": str(fresh / "torch-home"),
        "HF_HOME": str(fresh / "hf-home"),
        "TUTORIAL_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "TUTORIAL_NONINTERACTIVE": "1",
    }
    command = [str(jupyter_book), "build", "--all", "--warningiserror", "--nitpick", "--keep-going",
               "--path-output", str(output), str(REPO_ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=BOOK_BUILD_TIMEOUT_S)
    assert result.returncode == 0, f"jupyter-book build failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return output / "_build" / "html"


def test_every_chapter_page_is_executed_with_figures_and_a_colab_button(built_book: Path):
    chapters = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    for notebook in chapters:
        page = (built_book / "chapters" / f"{notebook.stem}.html").read_text(encoding="utf-8")
        assert "colab.research.google.com/github/" in page and f"chapters/{notebook.name}" in page
        assert re.search(r'<img [^>]*src="\.\./_images/[^"]+\.png"', page), f"{notebook.name} rendered no figure"
        assert "Traceback" not in page
        assert "profile cpu" in page, "the environment report was not executed under the cpu profile"
        assert "bundled sample" in page or notebook.stem.startswith("01_"), f"{notebook.name} did not announce the sample"


def test_book_pages_and_bibliography_render(built_book: Path):
    for page in ("book/intro.html", "book/setup.html", "book/glossary.html", "book/references.html"):
        assert (built_book / page).is_file()
    references = (built_book / "book" / "references.html").read_text(encoding="utf-8")
    assert "Dumoulin" in references
