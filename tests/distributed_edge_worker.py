"""``train.fit`` under torchrun on loaders that are not plain ones, for
tests/test_distributed_hardening.py.

Launched as ``torchrun ... tests/distributed_edge_worker.py <case> <out folder>``; each rank
writes what it saw to ``<out>/rank<R>.pt``:

* ``subset_sampler`` — a 64-example set of which the training loader picks 16 with a
  ``SubsetRandomSampler`` and the validation loader 16 others with a list of indices (a split
  made with samplers); each data set records the indices drawn from it.
* ``uneven_batches`` — rank 0 gets 4 batches, rank 1 three (lists of batches, which fit cannot
  split itself).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from distributed_worker import blobs, build_model
from torch.utils.data import DataLoader, Dataset, SubsetRandomSampler

from tutorial_lib import train
from tutorial_lib.training.strategy import Strategy

TRAIN_PICKS = range(16)
VAL_PICKS = list(range(48, 64))


class Recording(Dataset):
    """A data set that notes every index drawn from it."""

    def __init__(self, examples: Dataset) -> None:
        self.examples, self.drawn = examples, []

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int):
        self.drawn.append(int(index))
        return self.examples[index]


def subset_sampler(strategy: Strategy, out: Path) -> None:
    train_set, val_set = Recording(blobs(64, seed=0)), Recording(blobs(64, seed=1))
    picks = SubsetRandomSampler(TRAIN_PICKS, generator=torch.Generator().manual_seed(3))
    train_loader = DataLoader(train_set, batch_size=4, sampler=picks)
    val_loader = DataLoader(val_set, batch_size=4, sampler=VAL_PICKS)
    model = build_model(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    history = train.fit(
        model, train_loader, val_loader, optimizer, epochs=1, verbose=False, strategy=strategy
    )
    result = {
        "train_drawn": train_set.drawn,
        "val_drawn": val_set.drawn,
        "history": history.records,
        "model": strategy.model_state_dict(model),
    }
    torch.save(result, out / f"rank{strategy.rank}.pt")


def uneven_batches(strategy: Strategy, out: Path) -> None:
    points, labels = blobs(8, seed=0).tensors
    batches = [(points, labels)] * (4 if strategy.rank == 0 else 3)
    model = build_model(0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train.fit(model, batches, None, optimizer, epochs=1, verbose=False, strategy=strategy)


if __name__ == "__main__":
    os.environ.setdefault("TUTORIAL_NONINTERACTIVE", "1")
    case, folder = sys.argv[1], Path(sys.argv[2])
    folder.mkdir(parents=True, exist_ok=True)
    {"subset_sampler": subset_sampler, "uneven_batches": uneven_batches}[case](
        Strategy.from_environment("cpu"), folder
    )
