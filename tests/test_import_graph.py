"""The modules of tutorial_lib import each other one way: no module imports, directly or through
others, a module that imports it (issue #25). Read from the source with `ast`, so an import
inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "tutorial_lib"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The tutorial_lib modules that ``path`` imports (``from a import b`` counts as ``a.b``
    when ``a.b`` is a module, else as ``a``)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(path) for path in paths}
    return {module_name(path): imported_modules(path, modules) for path in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Return one import cycle as ``[a, b, ..., a]``, or ``None`` when there is none."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported, [*path, imported])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_tutorial_lib_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_training_modules_import_downwards_only():
    graph = import_graph()
    assert graph["tutorial_lib.training.batches"] == set(), "the batch helpers are the leaf"
    assert "tutorial_lib.training.loop" not in set().union(
        *(imports for module, imports in graph.items() if module != "tutorial_lib.train")
    ), "only the façade imports the loop"
    assert graph["tutorial_lib.training"] == set(), "the package file imports no module"


def test_the_cycle_finder_finds_a_cycle_through_three_modules():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_relative_and_from_imports_are_edges():
    modules = {"tutorial_lib.lora", "tutorial_lib.training.checkpoints", "tutorial_lib.training"}
    lora = PACKAGE / "lora.py"
    assert "tutorial_lib.training.checkpoints" in imported_modules(lora, modules)
    pretraining = PACKAGE / "llm" / "pretraining.py"
    assert "tutorial_lib.train" in imported_modules(pretraining, {*modules, "tutorial_lib.train"})


def test_only_the_language_model_family_imports_it():
    """``tutorial_lib.llm`` builds on the general helpers (the loop, LoRA, quantization), never
    the other way: a chapter 1-7 helper must work without the language-model code."""
    graph = import_graph()
    outside = {module for module in graph if not module.startswith("tutorial_lib.llm")}
    leaks = {
        module: sorted(i for i in graph[module] if i.startswith("tutorial_lib.llm"))
        for module in outside
    }
    assert not {module: found for module, found in leaks.items() if found}


LLM_STAGES = ["bpe", "gpt", "pretraining", "adapt", "instruct", "chat", "preference"]


def test_the_language_model_stages_import_earlier_stages_only():
    graph = import_graph()
    stages = [f"tutorial_lib.llm.{stage}" for stage in LLM_STAGES]
    assert set(stages) <= set(graph), "tutorial_lib/llm/__init__.py lists every stage"
    for position, module in enumerate(stages):
        later = {i for i in graph[module] if i.startswith("tutorial_lib.llm.")} - set(
            stages[:position]
        )
        assert not later, f"{module} imports a later stage: {sorted(later)}"
