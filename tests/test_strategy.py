"""The placement decisions of `Strategy` that need no second process: which autocast type a GPU
gets, and which submodules FSDP2 shards as their own units."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from tutorial_lib.models import MnistCNN
from tutorial_lib.training.strategy import _autocast_dtype, fsdp_unit_names


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device of a chosen compute capability on which bf16 tensors can be created (what
    PyTorch's emulation check answers on a T4 or V100)."""

    def with_major(major: int) -> None:
        monkeypatch.setattr(torch.version, "hip", None)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(
            torch.cuda, "get_device_properties", lambda device=None: SimpleNamespace(major=major)
        )
        monkeypatch.setattr(torch.cuda, "_check_bf16_tensor_supported", lambda device: True)

    return with_major


@pytest.mark.parametrize("choice", [None, True])
@pytest.mark.parametrize("major", [7, 6])  # T4 / V100 are 7.x, P100 is 6.0
def test_automatic_precision_is_fp16_where_bf16_is_only_emulated(fake_gpu, choice, major):
    fake_gpu(major)
    assert torch.cuda.is_bf16_supported(), "the fake must look like PyTorch's emulated bf16"
    assert _autocast_dtype(torch.device("cuda"), choice) == torch.float16


@pytest.mark.parametrize("major", [8, 9])  # A100 / H100
def test_automatic_precision_is_bf16_where_the_gpu_computes_it(fake_gpu, major):
    fake_gpu(major)
    assert _autocast_dtype(torch.device("cuda"), None) == torch.bfloat16


def test_forced_precision_ignores_the_capability(fake_gpu):
    fake_gpu(7)
    assert _autocast_dtype(torch.device("cuda"), "bf16") == torch.bfloat16
    assert _autocast_dtype(torch.device("cuda"), False) is None
    assert _autocast_dtype(torch.device("cpu"), None) is None


def _on_meta(build):
    with torch.device("meta"):
        return build()


def test_fsdp_units_are_the_transformer_blocks_of_hugging_face_models():
    bert = _on_meta(
        lambda: BertForSequenceClassification(
            BertConfig(num_hidden_layers=3, hidden_size=32, num_attention_heads=2)
        )
    )
    assert fsdp_unit_names(bert) == [f"bert.encoder.layer.{i}" for i in range(3)]
    gpt2 = _on_meta(lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2)))
    assert fsdp_unit_names(gpt2) == ["transformer.h.0", "transformer.h.1"]
    llama = _on_meta(
        lambda: LlamaForCausalLM(
            LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2)
        )
    )
    assert fsdp_unit_names(llama) == ["model.layers.0", "model.layers.1"]


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.experts = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))  # nested: stays inside


class _Blocks(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(2, 4)
        self.blocks = nn.ModuleList(_Block() for _ in range(3))
        self.mixed = nn.ModuleList([nn.Linear(4, 4), nn.ReLU()])  # not repeated blocks
        self.head = nn.Linear(4, 2)


def test_fsdp_units_skip_nested_lists_mixed_lists_and_frozen_blocks():
    model = _Blocks()
    assert fsdp_unit_names(model) == ["blocks.0", "blocks.1", "blocks.2"]
    model.blocks[1].requires_grad_(False)
    assert fsdp_unit_names(model) == ["blocks.0", "blocks.2"]


def test_a_model_without_repeated_blocks_is_sharded_by_its_children():
    model = MnistCNN()
    children = [name for name, child in model.named_children() if list(child.parameters())]
    assert fsdp_unit_names(model) == children
    assert len(children) >= 2
