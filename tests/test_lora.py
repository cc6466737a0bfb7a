"""The hand-written LoRA of chapter 6, checked against itself and against Hugging Face peft."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from tutorial_lib.lora import (
    LoRAEmbedding,
    LoRALinear,
    adapter_state_dict,
    copy_lora_to_peft,
    inject_lora,
    load_adapter,
    lora_layers,
    save_adapter,
)
from tutorial_lib.training.checkpoints import CheckpointError

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def tiny_bert(num_labels: int = 2) -> nn.Module:
    """A randomly initialised 2-layer BERT classifier (no download), in eval mode."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return transformers.BertForSequenceClassification(config).eval()


def tiny_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, 100, (3, 10), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 7:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def randomise_lora(model: nn.Module, seed: int = 2) -> None:
    """Give every B a non-zero value so that the low-rank path changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.5)


def test_wrapped_layer_starts_equal_to_the_base_and_freezes_it():
    torch.manual_seed(0)
    base = nn.Linear(8, 5)
    reference = copy.deepcopy(base)
    layer = LoRALinear(base, rank=2, alpha=4)
    x = torch.randn(4, 8)
    torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=0)
    assert layer.lora_A.shape == (2, 8) and layer.lora_B.shape == (5, 2)
    assert torch.count_nonzero(layer.lora_A) == layer.lora_A.numel()  # A random, B zero
    assert not base.weight.requires_grad and not base.bias.requires_grad
    assert layer.scaling == 2.0


def test_a_is_initialised_like_nn_linear():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(400, 3), rank=50, alpha=1)
    bound = (
        1 / 400**0.5
    )  # kaiming_uniform_(a=sqrt(5)) draws from U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert layer.lora_A.abs().max() <= bound
    assert layer.lora_A.abs().max() > 0.95 * bound


def test_only_a_and_b_receive_gradients():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), rank=3, alpha=3)
    layer(torch.randn(5, 6)).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    assert layer.lora_B.grad is not None and layer.lora_B.grad.abs().sum() > 0
    # B is zero, so the gradient of A is zero at the start, but it exists
    assert layer.lora_A.grad is not None


def test_update_is_alpha_over_rank_times_b_a():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = LoRALinear(base, rank=2, alpha=6)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(3, 6)
    expected = base(x) + 3.0 * x @ (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer(x), expected)


def test_merged_output_equals_unmerged_and_merge_is_not_applied_twice():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), rank=2, alpha=4)
    with torch.no_grad():
        layer.lora_B.normal_()
    original_weight = layer.base.weight.detach().clone()
    x = torch.randn(3, 6)
    unmerged = layer(x)
    layer.merge()
    layer.merge()  # a no-op: the flag says the update is already in the weight
    assert layer.merged
    torch.testing.assert_close(layer.base.weight, original_weight + layer.delta_weight())
    torch.testing.assert_close(layer(x), unmerged)
    layer.unmerge()
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.base.weight, original_weight)
    torch.testing.assert_close(layer(x), unmerged)


def test_dropout_acts_on_the_low_rank_path_only():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(6, 4), rank=2, alpha=2, dropout=0.5)
    x = torch.randn(8, 6)
    layer.train()
    torch.testing.assert_close(layer(x), layer.base(x))  # B = 0: dropout cannot show
    with torch.no_grad():
        layer.lora_B.normal_()
    assert not torch.allclose(layer(x), layer(x))  # two dropout masks
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x))


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"rank": 0, "alpha": 1}, ValueError),
        ({"rank": 2.0, "alpha": 1}, ValueError),
        ({"rank": 2, "alpha": 0}, ValueError),
        ({"rank": 2, "alpha": 1, "dropout": 1.0}, ValueError),
    ],
)
def test_bad_hyperparameters_are_refused(arguments, error):
    with pytest.raises(error):
        LoRALinear(nn.Linear(4, 4), **arguments)


def test_only_linear_layers_can_be_wrapped():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(4, 4, 1), rank=1, alpha=1)


def test_an_embedding_layer_starts_equal_to_the_base_and_updates_by_b_a_transposed():
    torch.manual_seed(0)
    base = nn.Embedding(20, 6, padding_idx=0)
    layer = LoRAEmbedding(base, rank=3, alpha=6)
    ids = torch.tensor([[0, 3, 19, 3], [7, 7, 1, 2]])
    torch.testing.assert_close(layer(ids), base(ids), rtol=0, atol=0)  # A starts at zero
    assert torch.count_nonzero(layer.lora_B) > 0, "B starts normal, as in peft"
    with torch.no_grad():
        layer.lora_A.normal_()
    expected_table = base.weight + 2.0 * (layer.lora_B @ layer.lora_A).T
    torch.testing.assert_close(layer.delta_weight(), expected_table - base.weight)
    torch.testing.assert_close(layer(ids), expected_table[ids])
    layer(ids).sum().backward()
    assert base.weight.grad is None and layer.lora_A.grad is not None
    assert torch.count_nonzero(layer.lora_A.grad[:, 5]) == 0, "an unused token's column stays"
    # id 0 is the padding row: used twice in the batch, it still receives no gradient, as
    # nn.Embedding's padding_idx promises (and peft's LoRA embedding keeps)
    assert torch.count_nonzero(layer.lora_A.grad[:, 0]) == 0, "the padding row learns nothing"
    assert torch.count_nonzero(layer.lora_A.grad[:, 3]) > 0
    unmerged = layer(ids).detach()
    layer.merge()
    layer.merge()  # a no-op: the update is added once
    torch.testing.assert_close(layer(ids), unmerged)
    with pytest.raises(TypeError, match="nn.Embedding"):
        LoRAEmbedding(nn.Linear(4, 4), rank=1, alpha=1)
    with pytest.raises(ValueError, match="max_norm"):
        LoRAEmbedding(nn.Embedding(5, 3, max_norm=1.0), rank=1, alpha=1)


def test_a_bad_dropout_leaves_a_model_with_an_embedding_target_unchanged():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="dropout"):
        inject_lora(model, ["0", "1"], rank=2, alpha=2, dropout=1.5)
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())


def randomise_embedding_lora(model: nn.Module, seed: int = 3) -> None:
    """A starts at zero in an embedding's LoRA: give it values so the update is not zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if isinstance(layer, LoRAEmbedding):
                layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator) * 0.5)


def test_embedding_lora_equals_peft_unmerged_and_merged():
    model = tiny_bert()
    peft_base, unadapted = copy.deepcopy(model), copy.deepcopy(model)
    targets = ["word_embeddings", "query", "value"]
    trainable = inject_lora(model, targets, rank=4, alpha=8, modules_to_save=["classifier"])
    assert isinstance(model.bert.embeddings.word_embeddings, LoRAEmbedding)
    randomise_lora(model)
    randomise_embedding_lora(model)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=targets, modules_to_save=["classifier"]
    )
    peft_model = peft.get_peft_model(peft_base, config).eval()
    assert copy_lora_to_peft(model, peft_model) == 2 * 5 + 2
    assert trainable == peft_model.get_nb_trainable_parameters()[0]
    batch = tiny_batch()
    with torch.no_grad():
        ours = model(**batch).logits
        torch.testing.assert_close(ours, peft_model(**batch).logits)
        assert not torch.allclose(ours, unadapted(**batch).logits)
    for layer in lora_layers(model).values():
        layer.merge()
    merged_peft = peft_model.merge_and_unload().eval()
    embeddings = "bert.embeddings.word_embeddings"
    torch.testing.assert_close(
        model.get_submodule(embeddings).base.weight, merged_peft.get_submodule(embeddings).weight
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, merged_peft(**batch).logits)


def test_injection_freezes_all_but_lora_and_modules_to_save():
    model = tiny_bert()
    trainable = inject_lora(
        model, ["query", "value"], rank=4, alpha=8, modules_to_save=["classifier"]
    )
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(lora_layers(model)) == 4  # 2 layers x (query, value)
    assert all(
        name.endswith(("lora_A", "lora_B")) or name.startswith("classifier.") for name in names
    )
    lora_count = 4 * 4 * (32 + 32)
    assert (
        trainable
        == lora_count + 32 * 2 + 2
        == sum(p.numel() for p in model.parameters() if p.requires_grad)
    )


def test_injection_errors_leave_the_model_unchanged():
    model = tiny_bert()
    with pytest.raises(ValueError, match="querry"):
        inject_lora(model, ["querry"], rank=2, alpha=2)
    with pytest.raises(TypeError, match="LayerNorm"):
        inject_lora(model, ["LayerNorm"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="head"):
        inject_lora(model, ["query"], rank=2, alpha=2, modules_to_save=["head"])
    with pytest.raises(ValueError, match="rank"):
        inject_lora(model, ["query"], rank=0, alpha=2)
    assert not lora_layers(model)
    assert all(p.requires_grad for p in model.parameters())
    inject_lora(model, ["query"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="already"):
        inject_lora(model, ["query"], rank=2, alpha=2)


def test_injected_model_starts_equal_to_the_base_model():
    model = tiny_bert()
    reference = copy.deepcopy(model)
    inject_lora(model, ["query", "value"], rank=2, alpha=4)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, reference(**batch).logits, rtol=0, atol=0)


@pytest.mark.parametrize("modules_to_save", [[], ["classifier"]])
def test_outputs_and_trainable_count_equal_peft(modules_to_save):
    model = tiny_bert()
    peft_base, unadapted = copy.deepcopy(model), copy.deepcopy(model)
    trainable = inject_lora(
        model, ["query", "value"], rank=4, alpha=8, modules_to_save=modules_to_save
    )
    randomise_lora(model)
    if modules_to_save:
        with torch.no_grad():  # a trained head, so that copying it matters
            model.classifier.weight.mul_(3)
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        modules_to_save=modules_to_save or None,
    )
    peft_model = peft.get_peft_model(peft_base, config).eval()
    copied = copy_lora_to_peft(model, peft_model)
    assert copied == 2 * 4 + 2 * len(modules_to_save)
    peft_trainable, _ = peft_model.get_nb_trainable_parameters()
    assert trainable == peft_trainable
    batch = tiny_batch()
    with torch.no_grad():
        ours, theirs = model(**batch).logits, peft_model(**batch).logits
    torch.testing.assert_close(ours, theirs)
    with torch.no_grad():
        assert not torch.allclose(ours, unadapted(**batch).logits)  # the copied update matters


def test_merged_model_equals_peft_merge_and_unload():
    model = tiny_bert()
    peft_model = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["value"])
    )
    inject_lora(model, ["value"], rank=2, alpha=2)
    randomise_lora(model)
    copy_lora_to_peft(model, peft_model)
    for layer in lora_layers(model).values():
        layer.merge()
    merged_peft = peft_model.merge_and_unload().eval()
    for name, layer in lora_layers(model).items():
        torch.testing.assert_close(layer.base.weight, merged_peft.get_submodule(name).weight)
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, merged_peft(**batch).logits)


def test_adapter_round_trip_restores_the_outputs(tmp_path):
    model = tiny_bert()
    fresh = copy.deepcopy(model)
    inject_lora(model, ["query", "value"], rank=3, alpha=3, modules_to_save=["classifier"])
    randomise_lora(model)
    with torch.no_grad():
        model.classifier.bias.fill_(0.7)
    path = save_adapter(model, tmp_path / "adapter.pt")
    assert set(adapter_state_dict(model)) == set(torch.load(path, weights_only=True))
    assert not list(tmp_path.glob(".*.part"))  # the atomic write left no temporary file
    batch = tiny_batch()
    inject_lora(fresh, ["query", "value"], rank=3, alpha=3, modules_to_save=["classifier"])
    with torch.no_grad():
        before = fresh(**batch).logits
        load_adapter(fresh, path)
        after, expected = fresh(**batch).logits, model(**batch).logits
    assert not torch.allclose(before, expected)
    torch.testing.assert_close(after, expected)
    # only the adapter was saved: far fewer numbers than the model has
    saved = sum(t.numel() for t in torch.load(path, weights_only=True).values())
    assert (
        saved
        == sum(p.numel() for p in model.parameters() if p.requires_grad)
        < 0.2 * sum(p.numel() for p in model.parameters())
    )


def test_load_adapter_refuses_mismatches_and_merged_layers(tmp_path):
    model = tiny_bert()
    inject_lora(model, ["query"], rank=2, alpha=2)
    state = adapter_state_dict(model)
    other_rank = tiny_bert()
    inject_lora(other_rank, ["query"], rank=3, alpha=3)
    with pytest.raises(ValueError, match="rank"):
        load_adapter(other_rank, state)
    other_targets = tiny_bert()
    inject_lora(other_targets, ["value"], rank=2, alpha=2)
    with pytest.raises(ValueError, match="missing"):
        load_adapter(other_targets, state)
    next(iter(lora_layers(model).values())).merge()
    with pytest.raises(ValueError, match="unmerge"):
        load_adapter(model, state)
    with pytest.raises(FileNotFoundError):
        load_adapter(model, tmp_path / "absent.pt")


def test_a_state_dict_taken_after_merge_loads_back_without_applying_the_update_twice():
    model = tiny_bert()
    inject_lora(model, ["query", "value"], rank=2, alpha=4)
    randomise_lora(model)
    for layer in lora_layers(model).values():
        layer.merge()
    batch = tiny_batch()
    with torch.no_grad():
        expected = model(**batch).logits
    fresh = tiny_bert()
    inject_lora(fresh, ["query", "value"], rank=2, alpha=4)
    fresh.load_state_dict(model.state_dict())
    assert all(layer.merged for layer in lora_layers(fresh).values())
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, expected)
    # and the other way round: unmerged weights loaded into a merged model are unmerged
    unmerged = tiny_bert()
    inject_lora(unmerged, ["query", "value"], rank=2, alpha=4)
    randomise_lora(unmerged, seed=3)
    model.load_state_dict(unmerged.state_dict())
    assert not any(layer.merged for layer in lora_layers(model).values())
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, unmerged(**batch).logits)


def test_a_state_dict_without_the_merged_flag_still_loads_as_unmerged():
    """State dicts written before the flag was saved have no ``_extra_state`` entry."""
    model = tiny_bert()
    inject_lora(model, ["value"], rank=2, alpha=2)
    randomise_lora(model)
    old_format = {
        key: value for key, value in model.state_dict().items() if not key.endswith("_extra_state")
    }
    fresh = tiny_bert()
    inject_lora(fresh, ["value"], rank=2, alpha=2)
    next(iter(lora_layers(fresh).values())).merge()
    fresh.load_state_dict(old_format)
    assert not any(layer.merged for layer in lora_layers(fresh).values())
    batch = tiny_batch()
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, model(**batch).logits)


def test_inject_lora_refuses_no_targets_and_a_second_call():
    model = tiny_bert()
    with pytest.raises(ValueError, match="target_modules is empty"):
        inject_lora(model, [], rank=2, alpha=2)
    assert all(p.requires_grad for p in model.parameters()), "nothing may be frozen"
    inject_lora(model, ["query"], rank=2, alpha=2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    with pytest.raises(ValueError, match="already carries LoRA.*one call"):
        inject_lora(model, ["value"], rank=2, alpha=2)
    assert {name for name, p in model.named_parameters() if p.requires_grad} == trainable
    assert all(name.endswith(".query") for name in lora_layers(model))


def peft_twin(model: nn.Module, **config) -> nn.Module:
    return peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(**config)).eval()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"r": 2, "lora_alpha": 8}, r"scales the update by 4.*by 1 .*lora_alpha=2"),
        ({"r": 2, "lora_alpha": 2, "use_rslora": True}, "scales the update by 1.41"),
        ({"r": 3, "lora_alpha": 3}, "rank r=3, the model's LoRA layer rank 2"),
        ({"r": 2, "lora_alpha": 2, "use_dora": True}, "DoRA"),
        ({"r": 2, "lora_alpha": 2, "lora_bias": True}, "LoRA bias"),
    ],
    ids=["alpha", "rslora", "rank", "dora", "bias"],
)
def test_copy_to_peft_refuses_an_adapter_that_computes_something_else(config, message):
    base = tiny_bert()
    model = copy.deepcopy(base)
    inject_lora(model, ["query", "value"], rank=2, alpha=2)
    randomise_lora(model)
    peft_model = peft_twin(base, target_modules=["query", "value"], **config)
    before = {name: t.clone() for name, t in peft_model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        copy_lora_to_peft(model, peft_model)
    after = peft_model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "nothing copied"


@pytest.mark.parametrize(
    ("config", "missing"),
    [
        ({"target_modules": ["query"]}, r"4 trained tensors.*value\.lora_A"),
        ({"target_modules": ["query", "value"]}, r"2 trained tensors.*classifier\.weight"),
    ],
    ids=["fewer targets", "no modules_to_save"],
)
def test_copy_to_peft_lists_what_it_could_not_copy(config, missing):
    base = tiny_bert()
    model = copy.deepcopy(base)
    inject_lora(model, ["query", "value"], rank=2, alpha=2, modules_to_save=["classifier"])
    randomise_lora(model)
    if "value" not in config["target_modules"]:
        config = {**config, "modules_to_save": ["classifier"]}
    peft_model = peft_twin(base, r=2, lora_alpha=2, **config)
    with pytest.raises(ValueError, match=missing):
        copy_lora_to_peft(model, peft_model)


ADAPTER_SPOILERS = {
    "truncated": lambda path: path.write_bytes(path.read_bytes()[: path.stat().st_size // 2]),
    "empty": lambda path: path.write_bytes(b""),
    "text": lambda path: path.write_text("hello world\n"),
    "list": lambda path: torch.save([torch.ones(2)], path),
    "code": lambda path: path.write_bytes(pickle.dumps(RunsCode())),
}


class RunsCode:
    """A pickle that would call a function when unpickled without weights_only."""

    def __reduce__(self):
        return (print, ("this pickle ran code",))


@pytest.mark.parametrize("spoil", ADAPTER_SPOILERS.values(), ids=ADAPTER_SPOILERS.keys())
def test_a_broken_adapter_file_is_named_and_never_advises_unsafe_loading(tmp_path, spoil):
    model = tiny_bert()
    inject_lora(model, ["query"], rank=2, alpha=2)
    path = save_adapter(model, tmp_path / "adapter.pt")
    spoil(path)
    with pytest.raises(CheckpointError, match="adapter") as caught:
        load_adapter(model, path)
    assert str(path) in str(caught.value)
    assert "weights_only=False" not in str(caught.value)
    # torch's own message (it advises weights_only=False for the code pickle) stays out
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


@pytest.mark.parametrize("alpha", [float("inf"), float("nan"), 0.0, -2.0])
def test_a_scaling_that_is_not_a_positive_finite_number_is_refused(alpha):
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        inject_lora(model, ["0"], rank=2, alpha=alpha)
    assert isinstance(model[0], nn.Linear) and model[0].weight.requires_grad, "unchanged"


def test_multihead_attentions_out_proj_is_refused_it_would_never_be_called():
    """nn.MultiheadAttention passes out_proj.weight to its functional form instead of calling
    out_proj, so a wrapper there would train adapters that change no output."""
    model = nn.ModuleDict({"attention": nn.MultiheadAttention(8, 2, batch_first=True)})
    with pytest.raises(TypeError, match="reads its weight directly"):
        inject_lora(model, ["out_proj"], rank=2, alpha=4)
    assert isinstance(model["attention"].out_proj, nn.Linear)
