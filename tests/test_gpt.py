"""tutorial_lib.llm.gpt against transformers' GPT2LMHeadModel, and its KV cache against no cache."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel
from transformers.generation.logits_process import (
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from tutorial_lib.llm import gpt
from tutorial_lib.models import count_parameters

VOCAB = 97


def hf_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    """A GPT-2 of random weights made locally (no weights can be downloaded here)."""
    torch.manual_seed(seed)
    settings = dict(
        vocab_size=VOCAB,
        n_positions=48,
        n_embd=32,
        n_layer=3,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    settings.update(overrides)
    return GPT2LMHeadModel(GPT2Config(**settings)).eval()


def peaked_model(seed: int = 0) -> gpt.GPT:
    """A small GPT whose next-token distributions are far from uniform, so that sampling does
    not hinge on logits that differ in the 7th digit (a fresh model's are all nearly equal)."""
    torch.manual_seed(seed)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=VOCAB, context_length=24, n_layer=2, n_head=2,
                                  n_embd=16))  # fmt: skip
    with torch.no_grad():
        model.wte.weight.mul_(40)
    return model.eval()


def test_logits_equal_gpt2lmheadmodel_after_import():
    hf = hf_gpt2()
    model = gpt.from_hf_gpt2(hf).eval()
    ids = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-5, rtol=0)


def test_parameter_count_equals_gpt2lmheadmodel_with_the_tied_matrix_once():
    hf = hf_gpt2()
    model = gpt.from_hf_gpt2(hf)
    assert count_parameters(model) == sum(p.numel() for p in hf.parameters())
    assert model.lm_head.weight is model.wte.weight
    blocks_and_final_norm = sum(p.numel() for p in [*model.blocks.parameters(),
                                                    *model.ln_f.parameters()])  # fmt: skip
    assert gpt.non_embedding_parameters(model) == blocks_and_final_norm


def test_lm_loss_on_shifted_targets_equals_transformers_loss_with_labels():
    hf = hf_gpt2(seed=3)
    model = gpt.from_hf_gpt2(hf).eval()
    ids = torch.randint(0, VOCAB, (2, 30), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = gpt.lm_loss(model(ids)[:, :-1], ids[:, 1:])
        theirs = hf(ids, labels=ids).loss
    assert float(ours) == pytest.approx(float(theirs), abs=1e-6)


def test_changing_a_token_leaves_the_logits_before_it_unchanged():
    model = gpt.GPT(gpt.GPTConfig(vocab_size=VOCAB, context_length=32, n_layer=2, n_head=2,
                                  n_embd=16)).eval()  # fmt: skip
    ids = torch.randint(0, VOCAB, (1, 20), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 12] = (changed[0, 12] + 1) % VOCAB
    with torch.no_grad():
        before, after = model(ids), model(changed)
    torch.testing.assert_close(before[:, :12], after[:, :12], atol=0, rtol=0)
    assert not torch.allclose(before[:, 12:], after[:, 12:])


def test_first_loss_at_a_fixed_seed_is_the_golden_value():
    """GPT-2's initialisation makes the first loss close to ln(vocab): a change to the
    initialisation or the architecture moves this number."""
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=512, context_length=16, n_layer=2, n_head=2,
                                  n_embd=32))  # fmt: skip
    ids = torch.randint(0, 512, (4, 17), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        loss = float(gpt.lm_loss(model(ids[:, :-1]), ids[:, 1:]))
    assert loss == pytest.approx(6.2413, abs=1e-4)
    assert abs(loss - torch.log(torch.tensor(512.0)).item()) < 0.05


def test_the_residual_projections_start_scaled_by_depth():
    model = gpt.GPT(gpt.GPTConfig(vocab_size=VOCAB, n_layer=8, n_embd=64, n_head=4))
    projection_std = model.blocks[0].mlp.proj.weight.std().item()
    other_std = model.blocks[0].mlp.fc.weight.std().item()
    assert projection_std == pytest.approx(0.02 / 4, rel=0.1)  # 0.02 / √(2 · 8)
    assert other_std == pytest.approx(0.02, rel=0.1)


def test_training_lowers_the_loss_of_a_tiny_model():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=VOCAB, context_length=16, n_layer=1, n_head=2,
                                  n_embd=16))  # fmt: skip
    ids = torch.arange(17).repeat(8, 1) % VOCAB  # one sequence to learn by heart
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = gpt.lm_loss(model(ids[:, :-1]), ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_greedy_generation_equals_transformers_generate():
    hf = hf_gpt2(seed=4)
    model = gpt.from_hf_gpt2(hf)
    prompt = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(5))
    ours = gpt.generate(model, prompt, 20, temperature=0)
    theirs = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=20,
        do_sample=False,
        pad_token_id=0,
    )
    assert torch.equal(ours, theirs)
    assert torch.equal(ours[:, :6], prompt), "the prompt comes first, as in transformers"


@pytest.mark.parametrize(
    "options",
    [
        dict(temperature=0),
        dict(temperature=1.0),
        dict(temperature=0.7, top_k=5),
        dict(temperature=1.0, top_p=0.8),
    ],  # fmt: skip
    ids=["greedy", "sampled", "top-k", "top-p"],
)
def test_cached_and_uncached_generation_give_the_same_tokens(options):
    model = peaked_model()
    prompt = torch.randint(0, VOCAB, (3, 4), generator=torch.Generator().manual_seed(0))
    # 30 new tokens run past the 24-position context: the window slides in both paths
    runs = [
        gpt.generate(
            model,
            prompt,
            30,
            use_cache=use_cache,
            generator=torch.Generator().manual_seed(9),
            **options,
        )  # fmt: skip
        for use_cache in (True, False)
    ]
    assert runs[0].shape == (3, 34)
    assert torch.equal(runs[0], runs[1])


def test_the_cache_gives_the_logits_of_the_whole_sequence():
    model = peaked_model(seed=1)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
    cache = model.new_cache()
    with torch.no_grad():
        whole = model(ids)
        parts = [model(ids[:, :7], cache), model(ids[:, 7:8], cache), model(ids[:, 8:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, atol=1e-4, rtol=1e-5)
    assert cache.length == 20


def test_filters_equal_transformers_logits_warpers():
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(gpt.top_k_filter(logits, 7), TopKLogitsWarper(7)(None, logits.clone()))
    for p in (0.3, 0.9):
        assert torch.equal(gpt.top_p_filter(logits, p), TopPLogitsWarper(p)(None, logits.clone()))


def test_sampling_probabilities_equal_transformers_warpers_in_their_order(monkeypatch):
    """Temperature first, then top-k, then top-p (transformers' order): top-p's nucleus depends
    on the temperature, so applying it later samples from another set of tokens."""
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(3)) * 3
    seen = []

    def capture(probabilities, _count, generator=None):
        seen.append(probabilities)
        return probabilities.argmax(dim=-1, keepdim=True)

    monkeypatch.setattr(torch, "multinomial", capture)
    gpt.next_token(logits, temperature=0.5, top_k=20, top_p=0.8)
    expected = logits.clone()
    for warper in (TemperatureLogitsWarper(0.5), TopKLogitsWarper(20), TopPLogitsWarper(0.8)):
        expected = warper(None, expected)
    torch.testing.assert_close(seen[0], expected.softmax(dim=-1))


def test_an_untied_head_under_a_tied_config_is_refused():
    hf = hf_gpt2()
    hf.lm_head.weight = torch.nn.Parameter(hf.transformer.wte.weight.detach().clone() + 1.0)
    assert hf.config.tie_word_embeddings
    with pytest.raises(ValueError, match="lm_head holds weights of its own"):
        gpt.from_hf_gpt2(hf)


def test_bad_inputs_get_clear_errors():
    model = peaked_model()
    with pytest.raises(ValueError, match="context length 24"):
        model(torch.zeros(1, 25, dtype=torch.long))
    with pytest.raises(ValueError, match="batch, time"):
        model(torch.zeros(25, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        gpt.generate(model, torch.zeros(1, 2, dtype=torch.long), 3, temperature=-1)
    with pytest.raises(ValueError, match="divisible"):
        gpt.GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="activation_function"):
        gpt.from_hf_gpt2(hf_gpt2(activation_function="relu"))


def test_ids_outside_the_vocabulary_get_an_error_that_names_them():
    model = peaked_model()
    with pytest.raises(ValueError, match=f"input_ids holds id {VOCAB} .* vocabulary of"):
        model(torch.tensor([[1, 2, VOCAB]]))
    with pytest.raises(ValueError, match="integer token ids"):
        model(torch.tensor([[1.0, 2.0]]))
    model.train()
    with pytest.raises(ValueError, match="id -3"):
        gpt.generate(model, torch.tensor([[1, -3]]), 2)
    assert model.training


def test_generate_restores_training_mode_when_a_step_raises(monkeypatch):
    model = peaked_model().train()
    monkeypatch.setattr(gpt, "next_token", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    with pytest.raises(RuntimeError):
        gpt.generate(model, torch.tensor([[1, 2]]), 3)
    assert model.training


def test_lm_loss_refuses_targets_not_shaped_like_the_logits():
    logits = torch.randn(2, 3, VOCAB)
    targets = torch.randint(0, VOCAB, (2, 3))
    assert torch.isfinite(gpt.lm_loss(logits, targets))
    with pytest.raises(
        ValueError, match=r"targets shaped \(batch, time\) = \(2, 3\), got \(3, 2\)"
    ):
        gpt.lm_loss(logits, targets.T.contiguous())
    with pytest.raises(ValueError, match="targets holds id"):
        gpt.lm_loss(logits, torch.full((2, 3), VOCAB))
