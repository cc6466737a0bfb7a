"""The setup page's instructions work as written: every command it tells a reader to run exists
in the environment that `make` creates, and every file it names is there."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

SETUP_PAGE = REPO_ROOT / "book" / "setup.md"


def _shell_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", SETUP_PAGE.read_text(encoding="utf-8"), flags=re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def test_the_setup_page_has_shell_instructions():
    assert any(command.startswith("make book") for command in _shell_commands())


@pytest.mark.parametrize("command", _shell_commands())
def test_every_command_on_the_setup_page_is_installed(command: str):
    words = command.split()
    if words[0] in ("make", "source", "cd", "export", "rm", "git"):
        return  # shell built-ins and system tools, not ours to install
    executable = words[0] if words[0] != "jupyter" else f"jupyter-{words[1]}"
    venv_bin = Path(sys.executable).parent
    assert (venv_bin / executable).exists() or shutil.which(executable), (
        f"the setup page tells readers to run `{command}`, but `{executable}` is not installed by "
        "requirements.txt"
    )
    for word in words[1:]:
        if word.startswith("chapters/"):
            assert (REPO_ROOT / word).is_file(), (
                f"the setup page names {word}, which does not exist"
            )
