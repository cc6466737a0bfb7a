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


MAKEFILE = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")


def _check_shell_tool(words: list[str]) -> None:
    """Shell built-ins and system tools are not ours to install, but what they are told to do
    must exist: a make target, the virtual environment the Makefile creates, a folder of the
    checkout, a variable the package reads."""
    tool, arguments = words[0], words[1:]
    if tool == "make":
        for target in arguments:
            assert re.search(rf"^{re.escape(target)}:", MAKEFILE, re.M), (
                f"the setup page runs `make {target}`, which the Makefile does not define"
            )
    elif tool == "source":
        venv = re.search(r"^VENV \?= (\S+)$", MAKEFILE, re.M)
        assert venv and arguments == [f"{venv.group(1)}/bin/activate"], (
            f"the setup page activates {arguments}, not the environment the Makefile creates"
        )
    elif tool in ("cd", "rm"):
        for argument in (a for a in arguments if not a.startswith("-")):
            assert (REPO_ROOT / argument).exists() or argument in MAKEFILE, argument
    elif tool == "export":
        for assignment in arguments:
            name = assignment.split("=")[0]
            package = "\n".join(p.read_text() for p in (REPO_ROOT / "tutorial_lib").rglob("*.py"))
            assert name in package, f"the setup page sets {name}, which nothing reads"
    else:
        raise AssertionError(f"no check for `{tool}`: add one before telling readers to run it")


@pytest.mark.parametrize("command", _shell_commands())
def test_every_command_on_the_setup_page_is_installed(command: str):
    words = command.split()
    if words[0] in ("make", "source", "cd", "export", "rm", "git"):
        _check_shell_tool(words)
        return
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
