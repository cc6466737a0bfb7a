"""Lint and format: the package, the tests, the benchmarks and the chapters (the paired .py files)
pass ruff with the configuration in pyproject.toml (100 columns: the book's code column)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

RUFF = Path(sys.executable).with_name("ruff")


def _ruff(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUFF), *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def test_ruff_check_passes():
    result = _ruff("check", "--output-format", "concise", ".")
    assert result.returncode == 0, (
        f"ruff check found problems (fix them, or `ruff check --fix`):\n{result.stdout}"
    )


def test_ruff_format_leaves_every_file_unchanged():
    result = _ruff("format", "--check", ".")
    assert result.returncode == 0, f"run `ruff format` on these files:\n{result.stdout}"


def test_ruff_rejects_a_line_wider_than_the_book_column(tmp_path):
    too_wide = tmp_path / "wide.py"
    too_wide.write_text(f"VALUE = {'1 + ' * 30}1\n", encoding="utf-8")
    result = _ruff("check", "--config", str(REPO_ROOT / "pyproject.toml"), str(too_wide))
    assert result.returncode != 0 and "E501" in result.stdout
