"""The one optimiser grouping: decay only on matrices, an optional head at its own rate."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tutorial_lib.models import MnistCNN, freeze
from tutorial_lib.optim import param_groups


def test_groups_cover_each_trainable_parameter_once_with_the_head_at_its_rate(capsys):
    model = MnistCNN()
    freeze(model.features[0])
    head = model.classifier[3]
    groups = param_groups(model, lr=1e-4, weight_decay=0.05, head=head, head_lr=1e-3)
    ids = [id(p) for group in groups for p in group["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(ids) == sorted(trainable) and len(ids) == len(set(ids))
    head_ids = {id(p) for p in head.parameters()}
    for group in groups:
        in_head = {id(p) in head_ids for p in group["params"]}
        assert len(in_head) == 1
        assert group["lr"] == (1e-3 if in_head.pop() else 1e-4)
        assert group["weight_decay"] == (0.05 if all(p.ndim > 1 for p in group["params"]) else 0.0)
    torch.optim.AdamW(groups)  # a valid optimiser definition
    printed = capsys.readouterr().out
    assert "head, decay" in printed and "1,280 parameters" in printed  # the 128 x 10 weights


def test_without_a_head_biases_and_norm_weights_get_no_decay():
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    groups = param_groups(model, lr=0.1, weight_decay=0.01, verbose=False)
    by_name = {group["name"]: group for group in groups}
    assert set(by_name) == {"model, decay", "model, no decay"}
    assert {tuple(p.shape) for p in by_name["model, decay"]["params"]} == {(8, 4), (2, 8)}
    assert (
        by_name["model, no decay"]["weight_decay"] == 0.0
        and len(by_name["model, no decay"]["params"]) == 4
    )


def test_bad_calls_say_what_is_wrong():
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="submodule"):
        param_groups(model, lr=0.1, head=nn.Linear(2, 2))
    with pytest.raises(ValueError, match="head_lr needs"):
        param_groups(model, lr=0.1, head_lr=1.0)
    with pytest.raises(ValueError, match="no trainable parameter"):
        param_groups(freeze(model), lr=0.1)
