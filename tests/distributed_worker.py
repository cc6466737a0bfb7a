"""One ``train.fit`` run on a tiny problem, for tests/test_distributed.py.

Launched by ``python -m torch.distributed.run ... tests/distributed_worker.py '<json config>'``
(or called in-process with :func:`run` for the one-process reference). Every rank writes its
final parameters and history to ``<out>/rank<R>.pt`` and appends the name of every checkpoint it
writes to ``<out>/writes.rank<R>.txt``, so the test can check who wrote what.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tutorial_lib import checkpoints, train
from tutorial_lib.distributed import Strategy


def blobs(n: int, seed: int) -> TensorDataset:
    """Two overlapping Gaussian blobs in 2-D: learnable, but not in one step."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 2, generator=generator) + (labels.unsqueeze(1).float() * 2 - 1)
    return TensorDataset(points, labels)


def build_model(dropout: float) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Train as ``config`` says and return ``{"model", "history", "world_size", "rank"}``."""
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    strategy = Strategy.from_environment("cpu", parallel=config.get("parallel", "ddp"))
    generator = torch.Generator().manual_seed(7)
    train_loader = DataLoader(
        blobs(config.get("train_size", 96), seed=0),
        batch_size=config["batch_size"],
        shuffle=config.get("shuffle", False),
        generator=generator,
    )
    val_loader = DataLoader(blobs(config.get("val_size", 37), seed=1), batch_size=8)
    model = build_model(config.get("dropout", 0.0))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    history = train.fit(
        model,
        train_loader,
        val_loader,
        optimizer,
        epochs=config["epochs"],
        max_steps_per_epoch=config.get("max_steps"),
        verbose=False,
        checkpoint_dir=config.get("checkpoint_dir"),
        resume=config.get("resume", False),
        accumulation_steps=config.get("accumulation_steps", 1),
        strategy=strategy,
    )
    result = {
        "model": strategy.model_state_dict(model),
        "history": history.records,
        "world_size": strategy.world_size,
        "rank": strategy.rank,
    }
    torch.save(result, out / f"rank{strategy.rank}.pt")
    return result


def _record_checkpoint_writes(out: Path, rank: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    original = checkpoints.save_checkpoint

    def recording(path, **state):
        with open(out / f"writes.rank{rank}.txt", "a", encoding="utf-8") as log:
            log.write(Path(path).name + "\n")
        return original(path, **state)

    checkpoints.save_checkpoint = recording


if __name__ == "__main__":
    os.environ.setdefault("TUTORIAL_NONINTERACTIVE", "1")
    settings = json.loads(sys.argv[1])
    _record_checkpoint_writes(Path(settings["out"]), int(os.environ.get("RANK", "0")))
    finished = run(settings)
    if finished["rank"] == 0:  # the line tutorial_lib.launch.measure_scaling reads
        last = finished["history"][-1]
        print(
            "RESULT "
            + json.dumps(
                {
                    "samples_per_second": last["samples_per_second"],
                    "world_size": finished["world_size"],
                }
            )
        )
