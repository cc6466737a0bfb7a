"""The chapters as files: pairs in sync, no outputs committed, the shared structure, the TOC."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import jupytext
import pytest
import yaml
from conftest import REPO_ROOT
from jupytext.compare import compare_notebooks

CHAPTERS = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.py"))
REQUIRED_SECTIONS = (
    "What you will learn",
    "Prerequisites",
    "## Summary",
    "## Exercises",
    "## References",
)


def test_there_are_chapters():
    assert CHAPTERS, "no chapters/NN_name.py found"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_py_and_ipynb_are_in_sync(source: Path):
    notebook_path = source.with_suffix(".ipynb")
    assert notebook_path.is_file(), (
        f"{source.name} has no paired notebook; run `jupytext --sync {source}`"
    )
    from_py = jupytext.read(source)
    from_ipynb = jupytext.read(notebook_path)
    compare_notebooks(from_ipynb, from_py, fmt="py:percent")


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_committed_notebook_has_no_outputs_and_a_python3_kernel(source: Path):
    notebook = json.loads(source.with_suffix(".ipynb").read_text(encoding="utf-8"))
    dirty = [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, f"code cells {dirty} carry outputs; strip them before committing"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_chapter_has_the_shared_structure(source: Path):
    text = source.read_text(encoding="utf-8")
    for section in REQUIRED_SECTIONS:
        assert section in text, f"{source.name} lacks '{section}'"
    assert re.search(
        r"^BUDGETS = \{\n    \"smoke\": .*^    \"cpu\": .*^    \"gpu\": ", text, flags=re.M | re.S
    ), (
        "the budget of every profile is declared once, visibly, at the top: "
        "BUDGETS = {smoke, cpu, gpu}"
    )
    assert "run = runtime.start_chapter(BUDGETS" in text, (
        "the chapter opens with runtime.start_chapter"
    )
    assert ":class: dropdown" in text, "exercise solutions are hidden in a dropdown"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_colab_install_cell_names_the_configured_repository(source: Path):
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    text = source.read_text(encoding="utf-8")
    addresses = re.findall(r'^REPOSITORY = "([^"]+)"$', text, flags=re.M)
    assert addresses == [config["repository"]["url"]], (
        "the install cell names the repository once, in REPOSITORY, as _config.yml does"
    )
    assert 'f"git+{REPOSITORY}"' in text
    assert text.count("github.com/") == 1, "every other address derives from REPOSITORY"
    (install,) = [c for c in jupytext.read(source).cells if "REPOSITORY = " in c.source]
    assert "hide-cell" in install.metadata.get("tags", []), (
        "the install cell matters only on Colab: tag it hide-cell so the page folds it away"
    )
    assert len(install.source.splitlines()) <= 10, "the install cell stays a few lines"


def test_toc_lists_every_chapter_notebook():
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    files = [entry["file"] for part in toc["parts"] for entry in part["chapters"]]
    chapter_files = [f for f in files if f.startswith("chapters/")]
    assert chapter_files == [f"chapters/{p.stem}.ipynb" for p in CHAPTERS]
    for file in files:
        assert (REPO_ROOT / file).is_file() or (REPO_ROOT / f"{file}.md").is_file(), (
            f"_toc.yml names a missing page {file}"
        )


MARKDOWN_HEADING_AS_COMMENT = re.compile(r"^# #{1,4} \w", re.MULTILINE)


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_no_markdown_heading_hides_inside_a_code_cell(source: Path):
    """A heading commented out inside a code cell vanishes from the book's table of contents
    and renders as code; it belongs in a markdown cell."""
    pair = (("py", source), ("ipynb", source.with_suffix(".ipynb")))
    for kind, notebook in ((kind, jupytext.read(path)) for kind, path in pair):
        hidden = [
            (index, match.group(0))
            for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code"
            for match in MARKDOWN_HEADING_AS_COMMENT.finditer(cell.source)
        ]
        assert not hidden, f"{source.name} ({kind}): code cells carry markdown headings {hidden}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_shell_scripts_shown_in_prose_keep_their_shebang(source: Path):
    """jupytext reads a markdown line `# #!...` of the .py as an escaped magic and drops the
    `#` unless the chapter's header sets comment_magics: false, so a shown script would
    start with `!/bin/bash`, which no shell runs."""
    for kind, path in (("py", source), ("ipynb", source.with_suffix(".ipynb"))):
        notebook = jupytext.read(path)
        eaten = [
            line
            for cell in notebook.cells
            if cell.cell_type == "markdown"
            for line in cell.source.splitlines()
            if line.startswith("!/")
        ]
        assert not eaten, f"{source.name} ({kind}): shebang lost in {eaten}"


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_files_fetched_from_the_repository_come_from_the_configured_one(source: Path):
    """A notebook opened on its own (Colab) fetches the scripts it launches from the repository
    that the install cell installs from, on the branch the book is built from."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    owner_and_name = config["repository"]["url"].removeprefix("https://github.com/")
    expected = (
        f"https://raw.githubusercontent.com/{owner_and_name}/{config['repository']['branch']}"
    )
    fetched = re.findall(r"https://raw\.githubusercontent\.com/[^\"'\s]+", source.read_text())
    assert all(url.rstrip("/") == expected for url in fetched), fetched


def test_every_script_a_chapter_launches_is_a_file_in_chapters_scripts():
    text = (REPO_ROOT / "chapters" / "07_scaling_out.py").read_text(encoding="utf-8")
    named = set(re.findall(r'SCRIPTS / "([\w.]+)"', text))
    (listed,) = re.findall(r"SCRIPT_NAMES = \(([^)]*)\)", text)
    assert named and named == set(re.findall(r'"([\w.]+)"', listed))
    assert all((REPO_ROOT / "chapters" / "scripts" / name).is_file() for name in named)


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_package_code_is_shown_highlighted_not_printed(source: Path):
    """Printed source is grey monospace in the book and in Colab; plots.show_source gives the
    same code as a highlighted Python block."""
    text = source.read_text(encoding="utf-8")
    printed = re.findall(r"print\((?:inspect\.getsource\(|\w+\.read_text\(\)\)).*", text)
    assert not printed, f"{source.name}: show these with plots.show_source: {printed}"


def _record_keys_missing(written: ast.Dict, record: object, path: tuple = ()) -> list[tuple]:
    """The key paths of the dict literal a chapter passes to write_result_record (nested dict
    literals included) that ``record`` lacks."""
    missing = []
    for key, value in zip(written.keys, written.values, strict=True):
        if not isinstance(key, ast.Constant):
            continue
        if not isinstance(record, dict) or key.value not in record:
            missing.append((*path, key.value))
        elif isinstance(value, ast.Dict):
            missing += _record_keys_missing(value, record[key.value], (*path, key.value))
    return missing


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda p: p.name)
def test_the_published_record_holds_every_key_its_chapter_writes(source: Path):
    """A record published before its chapter changed what it records is stale: re-publish it
    (benchmarks/run_chapter.py --publish) whenever a chapter's record gains a figure."""
    published = REPO_ROOT / "results" / "published" / f"{source.stem}.cpu.json"
    if not published.is_file():
        pytest.skip(f"{source.stem} has no published cpu record")
    calls = [
        node
        for node in ast.walk(ast.parse(source.read_text(encoding="utf-8")))
        if isinstance(node, ast.Call)
        and getattr(node.func, "attr", "") == "write_result_record"
        and len(node.args) == 2
        and isinstance(node.args[1], ast.Dict)
    ]
    assert len(calls) == 1, f"{source.name} should write one result record, with a dict literal"
    record = json.loads(published.read_text(encoding="utf-8"))
    missing = _record_keys_missing(calls[0].args[1], record)
    assert not missing, f"{published.name} predates its chapter: it lacks {missing}"


def test_chapter_6s_sample_rates_are_the_ones_its_published_sweep_chose():
    """The bundled sample cannot sweep; its notice says it uses the rates the cpu sweep chose,
    so they must be the published sweep's best on validation, method by method."""
    record = json.loads(
        (REPO_ROOT / "results" / "published" / "06_peft_lora.cpu.json").read_text("utf-8")
    )
    names = {"full fine-tuning": "full", "BitFit": "bitfit", "head only": "head"}
    best: dict[str, tuple[float, float]] = {}
    for run in record["metrics"]["learning_rate_sweep"]:
        method = names.get(run["method"], "lora" if run["method"] == "LoRA r=4" else None)
        if method and run["val_accuracy"] > best.get(method, (-1.0, 0.0))[0]:
            best[method] = (run["val_accuracy"], run["learning_rate"])
    source = (REPO_ROOT / "chapters" / "06_peft_lora.py").read_text(encoding="utf-8")
    match = re.search(r"^CPU_SWEEP_CHOICES = (\{.*\})$", source, re.MULTILINE)
    assert match, "chapter 6 names its sweep's choices in CPU_SWEEP_CHOICES"
    chosen = ast.literal_eval(match.group(1))
    assert {method: rates[0] for method, rates in chosen.items()} == {
        method: rate for method, (_, rate) in best.items()
    }
