"""Distributed edge cases of `train.fit` (issue #28): samplers that pick a split, and ranks
with different numbers of batches. Two CPU processes on gloo, 127.0.0.1, bounded in time."""

from __future__ import annotations

from pathlib import Path

import distributed_edge_worker
import pytest
import torch
from distributed_worker import blobs, build_model
from torch.utils.data import DataLoader, Subset, WeightedRandomSampler

from tutorial_lib import train
from tutorial_lib.training import launch
from tutorial_lib.training.strategy import Strategy

WORKER = Path(distributed_edge_worker.__file__)
TIMEOUT_SECONDS = 120

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="this torch build has no torch.distributed"
)


def test_a_split_made_with_samplers_stays_split_under_torchrun(tmp_path):
    launch.torchrun(WORKER, "subset_sampler", str(tmp_path), timeout=TIMEOUT_SECONDS)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    trained_on = [set(rank["train_drawn"]) for rank in ranks]
    assert trained_on[0] | trained_on[1] == set(distributed_edge_worker.TRAIN_PICKS)
    assert not trained_on[0] & trained_on[1], "each rank trains on its own half of the picks"
    assert [len(rank["train_drawn"]) for rank in ranks] == [8, 8]
    for rank in ranks:  # every rank evaluates exactly the validation picks, nothing else
        assert sorted(rank["val_drawn"]) == distributed_edge_worker.VAL_PICKS
    model = build_model(0.0)
    model.load_state_dict(ranks[0]["model"])
    val_picks = Subset(blobs(64, seed=1), distributed_edge_worker.VAL_PICKS)
    expected = train.evaluate(model, DataLoader(val_picks, batch_size=16), device="cpu")
    for rank in ranks:
        assert rank["history"][-1]["val_accuracy"] == expected["accuracy"]
        assert rank["history"][-1]["val_loss"] == pytest.approx(expected["loss"], rel=1e-6)


def test_ranks_with_different_batch_counts_are_told_so(tmp_path):
    with pytest.raises(RuntimeError) as caught:
        launch.torchrun(WORKER, "uneven_batches", str(tmp_path), timeout=TIMEOUT_SECONDS)
    message = str(caught.value)
    assert "the ranks' batch counts per epoch differ (rank 0: 4, rank 1: 3)" in message
    assert "Received data size" not in message


def test_a_sampler_without_fixed_indices_is_refused_not_replaced():
    """The refusal happens in shard_loader, before any collective: checked in one process."""
    strategy = Strategy(torch.device("cpu"), rank=0, world_size=2)
    weighted = WeightedRandomSampler(torch.ones(64), num_samples=16)
    loader = DataLoader(blobs(64, seed=0), batch_size=4, sampler=weighted)
    with pytest.raises(ValueError, match="WeightedRandomSampler cannot be split"):
        strategy.shard_loader(loader, training=True)
