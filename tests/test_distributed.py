"""`train.fit` under torchrun: 2 CPU processes on gloo give the one-process results.

Each test launches ``python -m torch.distributed.run`` (what the ``torchrun`` command runs) on
127.0.0.1 with a free port, ``OMP_NUM_THREADS=1`` and a hard timeout, so CI can never hang.
The worker is tests/distributed_worker.py; the one-process reference calls it in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import distributed_worker
import pytest
import torch
from conftest import REPO_ROOT

from tutorial_lib import train
from tutorial_lib.training import launch

WORKER = Path(distributed_worker.__file__)
TIMEOUT_SECONDS = 120
EQUIVALENCE = {"batch_size": 8, "epochs": 2, "max_steps": 4}  # 8 SGD steps with momentum

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)


def torchrun_command(config: dict, *launcher_options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launcher_options,
        str(WORKER),
        json.dumps(config),
    ]


def run_jobs(*commands: list[str]) -> None:
    """Run the commands at once (the nodes of one job) and fail with their output if any fails."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
        "TUTORIAL_NONINTERACTIVE": "1",
    }
    processes = [
        subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command in commands
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT_SECONDS)[0])
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for process, output in zip(processes, outputs, strict=True):
        assert process.returncode == 0, f"torchrun failed:\n{output[-4000:]}"


def one_node_command(config: dict, processes: int = 2) -> list[str]:
    return torchrun_command(
        config,
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={launch.free_port()}",
    )


def run_on_one_node(config: dict, processes: int = 2) -> None:
    run_jobs(one_node_command(config, processes))


def results(folder: Path, world_size: int = 2) -> list[dict]:
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


def assert_same_parameters(first: dict, second: dict, exact: bool = False) -> None:
    assert first.keys() == second.keys()
    for name, tensor in first.items():
        if exact:
            assert torch.equal(tensor, second[name]), name
        else:
            torch.testing.assert_close(tensor, second[name], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The reference: one process, batch 16 (= 2 processes × 8)."""
    config = {**EQUIVALENCE, "batch_size": 16, "out": str(tmp_path_factory.mktemp("one"))}
    return distributed_worker.run(config)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    """Two processes on one node, batch 8 each."""
    out = tmp_path_factory.mktemp("ddp")
    run_on_one_node({**EQUIVALENCE, "out": str(out)})
    return results(out)


def test_ddp_on_two_processes_equals_one_process_with_twice_the_batch(one_process, two_processes):
    assert [result["world_size"] for result in two_processes] == [2, 2]
    assert_same_parameters(two_processes[0]["model"], one_process["model"])
    moved = any(
        not torch.equal(tensor, distributed_worker.build_model(0.0).state_dict()[name])
        for name, tensor in one_process["model"].items()
    )
    assert moved, "the reference run must have trained"


def test_every_rank_ends_equal_and_validation_covers_the_whole_set(one_process, two_processes):
    assert_same_parameters(two_processes[0]["model"], two_processes[1]["model"], exact=True)
    # 37 validation examples on 2 ranks: the sampler pads one; the metrics must not count it.
    model = distributed_worker.build_model(0.0)
    model.load_state_dict(two_processes[0]["model"])
    val_set = distributed_worker.blobs(37, seed=1)
    expected = train.evaluate(
        model, torch.utils.data.DataLoader(val_set, batch_size=37), device=torch.device("cpu")
    )
    for result in two_processes:
        last = result["history"][-1]
        assert last["val_accuracy"] == expected["accuracy"]
        assert last["val_loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert two_processes[0]["history"][-1]["val_accuracy"] * 37 == pytest.approx(
        round(two_processes[0]["history"][-1]["val_accuracy"] * 37)
    ), "a whole number of 37"
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert two_processes[0]["history"][-1][key] == pytest.approx(
            one_process["history"][-1][key], rel=1e-5
        )


def test_only_rank_0_writes_and_a_stopped_run_resumes_exactly(tmp_path):
    """Shuffling and dropout on: the resumed run must restore every random stream of each rank."""
    shuffled = {"batch_size": 8, "shuffle": True, "dropout": 0.3, "max_steps": 4}
    whole, first_half, second_half = tmp_path / "whole", tmp_path / "a", tmp_path / "b"
    checkpoints = tmp_path / "checkpoints"
    # The uninterrupted run and the first half are independent jobs: run them side by side.
    run_jobs(
        one_node_command(
            {
                **shuffled,
                "epochs": 3,
                "out": str(whole),
                "checkpoint_dir": str(tmp_path / "whole_checkpoints"),
            }
        ),
        one_node_command(
            {**shuffled, "epochs": 1, "out": str(first_half), "checkpoint_dir": str(checkpoints)}
        ),
    )
    assert not (first_half / "writes.rank1.txt").exists(), "rank 1 must never write a checkpoint"
    assert (first_half / "writes.rank0.txt").read_text().split() == ["best.pt", "last.pt"]
    run_on_one_node(
        {
            **shuffled,
            "epochs": 3,
            "out": str(second_half),
            "checkpoint_dir": str(checkpoints),
            "resume": True,
        }
    )
    assert not (second_half / "writes.rank1.txt").exists()
    assert sorted(path.name for path in checkpoints.iterdir()) == ["best.pt", "last.pt"]
    uninterrupted, resumed = results(whole), results(second_half)
    for rank in (0, 1):
        assert [record["epoch"] for record in resumed[rank]["history"]] == [1, 2, 3]
        assert_same_numbers(resumed[rank]["history"], uninterrupted[rank]["history"])
        assert_same_parameters(resumed[rank]["model"], uninterrupted[rank]["model"], exact=True)
    resumed_last = train.load_checkpoint(checkpoints / "last.pt")
    whole_last = train.load_checkpoint(tmp_path / "whole_checkpoints" / "last.pt")
    assert resumed_last["epoch"] == 3 and len(resumed_last["rng_states"]) == 2
    assert_same_parameters(resumed_last["model"], whole_last["model"], exact=True)


def assert_same_numbers(first: list[dict], second: list[dict]) -> None:
    """Equal metrics epoch by epoch (timings aside)."""
    keys = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
    assert [[record[key] for key in keys] for record in first] == [
        [record[key] for key in keys] for record in second
    ]


def test_two_nodes_on_loopback_equal_two_processes_on_one_node(tmp_path, two_processes):
    port, out = launch.free_port(), tmp_path / "nodes"
    config = {**EQUIVALENCE, "out": str(out)}
    nodes = [
        torchrun_command(
            config,
            "--nnodes=2",
            f"--node_rank={rank}",
            "--nproc_per_node=1",
            "--master_addr=127.0.0.1",
            f"--master_port={port}",
        )
        for rank in (0, 1)
    ]
    run_jobs(*nodes)
    for node, one_node in zip(results(out), two_processes, strict=True):
        assert_same_parameters(node["model"], one_node["model"], exact=True)
        assert_same_numbers(node["history"], one_node["history"])


def test_two_accumulated_micro_batches_equal_one_batch_twice_the_size(tmp_path, one_process):
    accumulated = distributed_worker.run(
        {
            **EQUIVALENCE,
            "batch_size": 8,
            "accumulation_steps": 2,
            "max_steps": 8,
            "out": str(tmp_path / "one"),
        }
    )
    assert_same_parameters(accumulated["model"], one_process["model"])
    # and under DDP, where no_sync skips the all-reduce of the first micro-batch
    out = tmp_path / "ddp"
    run_on_one_node(
        {**EQUIVALENCE, "batch_size": 4, "accumulation_steps": 2, "max_steps": 8, "out": str(out)}
    )
    assert_same_parameters(results(out)[0]["model"], one_process["model"])


def test_fsdp2_on_two_cpu_processes_equals_one_process(tmp_path, one_process):
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip(f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    out = tmp_path / "fsdp"
    run_on_one_node({**EQUIVALENCE, "parallel": "fsdp", "out": str(out)})
    sharded = results(out)
    assert_same_parameters(sharded[0]["model"], one_process["model"])
    assert_same_parameters(sharded[0]["model"], sharded[1]["model"], exact=True)
    assert sharded[0]["history"][-1]["val_accuracy"] == one_process["history"][-1]["val_accuracy"]


def test_fsdp2_shards_each_transformer_block_as_its_own_unit(tmp_path):
    """Blocks in ``encoder.layer`` (BERT's layout): one unit per block, then the root — not one
    unit for the whole encoder — and training still equals one process."""
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip(f"torch {torch.__version__} has no FSDP2 (torch.distributed.fsdp.fully_shard)")
    config = {**EQUIVALENCE, "model": "blocks"}
    reference = distributed_worker.run({**config, "batch_size": 16, "out": str(tmp_path / "one")})
    out = tmp_path / "fsdp"
    run_on_one_node({**config, "parallel": "fsdp", "out": str(out)})
    expected = ["", "encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]
    for result in results(out):
        assert result["fsdp_units"] == expected
    assert_same_parameters(results(out)[0]["model"], reference["model"])


def test_measure_scaling_launches_each_process_count_and_reports_efficiency(tmp_path):
    """The chapter's GPU scaling cell, run on the CPU with a tiny configuration."""
    config = {**EQUIVALENCE, "out": str(tmp_path)}
    rows = launch.measure_scaling(WORKER, (1, 2), json.dumps(config), timeout=TIMEOUT_SECONDS)
    assert [row["processes"] for row in rows] == [1, 2]
    assert all(row["samples_per_second"] > 0 for row in rows)
    # known throughputs, so that the efficiency is checked against a hand-computed value (the
    # first row's 1.0 holds by construction and proves nothing): 100/s alone, 150/s on two
    # processes is 150 / (2 x 100) = 0.75 of perfect scaling
    known = tmp_path / "known.py"
    known.write_text(
        "import json, os\n"
        "if os.environ['RANK'] == '0':\n"
        "    speed = {'1': 100.0, '2': 150.0}[os.environ['WORLD_SIZE']]\n"
        "    print('RESULT ' + json.dumps({'samples_per_second': speed}))\n"
    )
    rows = launch.measure_scaling(known, (1, 2), timeout=TIMEOUT_SECONDS)
    assert [row["efficiency"] for row in rows] == [1.0, 0.75]
    failing = tmp_path / "fails.py"
    failing.write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    with pytest.raises(RuntimeError, match=r"failed \(exit 3\):\nabout to fail"):
        launch.python_script(failing, timeout=TIMEOUT_SECONDS)
