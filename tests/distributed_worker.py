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

from tutorial_lib import train
from tutorial_lib.training import checkpoints
from tutorial_lib.training.strategy import Strategy


def blobs(n: int, seed: int) -> TensorDataset:
    """Two overlapping Gaussian blobs in 2-D: learnable, but not in one step."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    points = torch.randn(n, 2, generator=generator) + (labels.unsqueeze(1).float() * 2 - 1)
    return TensorDataset(points, labels)


class Block(nn.Module):
    """A residual block, the repeated unit of a small transformer-shaped network."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.ReLU())

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return hidden + self.mlp(hidden)


class BlockNetwork(nn.Module):
    """Embedding, ``encoder.layer[i]`` blocks (Hugging Face's BERT layout), head."""

    def __init__(self, blocks: int = 3, width: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(2, width)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(Block(width) for _ in range(blocks))
        self.head = nn.Linear(width, 2)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(points)
        for block in self.encoder.layer:
            hidden = block(hidden)
        return self.head(hidden)


def build_model(dropout: float, kind: str = "mlp") -> nn.Module:
    torch.manual_seed(0)
    if kind == "blocks":
        return BlockNetwork()
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
    model = build_model(config.get("dropout", 0.0), config.get("model", "mlp"))
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
        "fsdp_units": _fsdp_units(model),
    }
    torch.save(result, out / f"rank{strategy.rank}.pt")
    return result


def _fsdp_units(model: nn.Module) -> list[str]:
    """Names of the modules that are FSDP2 units ("" is the root), in module order."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return []
    return [name for name, module in model.named_modules() if isinstance(module, FSDPModule)]


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
    if finished["rank"] == 0:  # the line tutorial_lib.training.launch.measure_scaling reads
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
