"""Chapter 12's preference tuning: samples whose log-probabilities are the sampler's own, pairs
that prefer the higher score, the Bradley-Terry and DPO losses equal to their equations and, as
two-class cross-entropy, trained by fit; GRPO's advantages and loss; best-of-n; tiny models whose
preferences move the way the method says."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tutorial_lib import optim, train
from tutorial_lib.llm import bpe, preference
from tutorial_lib.llm.gpt import GPT, GPTConfig

TEXTS = [
    "A wonderful film, the acting was great and I loved every minute of it.",
    "Terrible plot, bad acting; I want my two hours back. Avoid this movie.",
    "The director's best work: moving, funny and beautifully shot.",
    "Boring and far too long. The ending made no sense at all.",
] * 5
VOCAB = 24
END = 0  # the end-of-text id of the tiny models


def tiny_model(seed: int = 0, vocab_size: int = VOCAB) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, context_length=16, n_layer=1, n_head=2, n_embd=16))


def samples_of(rows: list[list[int]], prompt_length: int) -> preference.Samples:
    ids = torch.tensor(rows)
    return preference.Samples(
        ids, prompt_length, preference.continuation_mask(ids[:, prompt_length:], END)
    )


def test_a_continuation_counts_up_to_and_including_its_first_end_of_text():
    continuation = torch.tensor([[5, 6, 0, 7, 0], [0, 3, 3, 3, 3], [1, 2, 3, 4, 5]])
    mask = preference.continuation_mask(continuation, END)
    assert mask.tolist() == [
        [True, True, True, False, False],
        [True, False, False, False, False],  # an empty continuation: the review ends at once
        [True] * 5,
    ]


def test_review_prompts_are_the_first_tokens_and_short_reviews_are_refused():
    tokenizer = bpe.train_tokenizer(TEXTS, vocab_size=300)
    prompts = preference.review_prompts(tokenizer, TEXTS[:3], 4)
    assert prompts.shape == (3, 4)
    assert prompts[0].tolist() == bpe.encode_texts(tokenizer, [TEXTS[0]])[0][:4]
    with pytest.raises(ValueError, match="only"):
        preference.review_prompts(tokenizer, ["Bad."], 8)
    with pytest.raises(ValueError, match="at least 1"):
        preference.review_prompts(tokenizer, TEXTS, 0)


def test_samples_texts_drop_what_follows_the_end_and_an_empty_continuation_is_empty():
    tokenizer = bpe.train_tokenizer(TEXTS, vocab_size=300)
    end = tokenizer.token_to_id(bpe.END_OF_TEXT)
    prompt = bpe.encode_texts(tokenizer, ["A wonderful"])[0]
    more = bpe.encode_texts(tokenizer, [" film"])[0]
    rows = [prompt + more + [end, *more], prompt + [end, *more, *more]]
    ids = torch.tensor(rows)
    samples = preference.Samples(
        ids, len(prompt), preference.continuation_mask(ids[:, len(prompt) :], end)
    )
    assert samples.texts(tokenizer) == ["A wonderful film", "A wonderful"]
    assert samples.texts(tokenizer, with_prompt=False) == [" film", ""]


def test_sampled_tokens_follow_the_probabilities_that_sequence_logprobs_reports():
    """Sampling is at temperature 1 with nothing filtered: over many draws of one token, the
    frequencies match exp(log π) — what the KL estimate and DPO's log-ratios rely on."""
    model = tiny_model().eval()
    prompts = torch.tensor([[3, 4, 5]]).repeat(4_000, 1)
    drawn = preference.sample(
        model, prompts, 1, end_id=END, generator=torch.Generator().manual_seed(0)
    )
    counts = torch.bincount(drawn.continuation[:, 0], minlength=VOCAB).double()
    every = torch.cat([prompts[:VOCAB], torch.arange(VOCAB).unsqueeze(1)], dim=1)
    with torch.no_grad():
        logps = preference.sequence_logprobs(model, every, 3, torch.ones(VOCAB, 1, dtype=bool))
    expected = logps.exp().double() * len(prompts)
    assert math.isclose(float(logps.exp().sum()), 1.0, rel_tol=1e-5)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 60, f"χ² {chi_square:.1f} on {VOCAB - 1} degrees of freedom"


def test_sampling_is_seeded_batched_alike_and_checks_its_arguments():
    model = tiny_model().eval()
    prompts = torch.randint(1, VOCAB, (10, 3), generator=torch.Generator().manual_seed(1))

    def draw(batch_size):
        return preference.sample(
            model,
            prompts,
            6,
            end_id=END,
            generator=torch.Generator().manual_seed(2),
            batch_size=batch_size,
        )

    one, again = draw(10), draw(10)
    assert torch.equal(one.ids, again.ids) and torch.equal(one.ids[:, :3], prompts)
    assert one.ids.shape == (10, 9) and one.mask.shape == (10, 6)
    with pytest.raises(ValueError, match="context"):
        preference.sample(model, prompts, 14, end_id=END, generator=torch.Generator())
    with pytest.raises(ValueError, match="new_tokens"):
        preference.sample(model, prompts, 0, end_id=END, generator=torch.Generator())


def test_the_kl_estimate_is_zero_against_itself_and_matches_the_exact_kl_of_one_token():
    model, other = tiny_model(0).eval(), tiny_model(1).eval()
    with torch.no_grad():
        other.lm_head.weight.mul_(8)  # a sharper model, far from the first (tied: wte too)
    prompts = torch.tensor([[3, 4, 5]]).repeat(3_000, 1)
    drawn = preference.sample(model, prompts, 1, end_id=END, generator=torch.Generator())
    assert preference.kl_from_reference(model, model, drawn) == (0.0, 0.0)
    kl, error = preference.kl_from_reference(model, other, drawn)
    with torch.no_grad():
        p, q = (m(prompts[:1])[0, -1].log_softmax(-1) for m in (model, other))
    exact = float((p.exp() * (p - q)).sum())
    assert exact > 0.05 and abs(kl - exact) < 4 * error, (kl, error, exact)


def test_pairs_prefer_the_higher_score_and_drop_ties_and_identical_continuations():
    first = samples_of([[1, 2, 5, 6], [1, 3, 5, 0], [2, 2, 7, 7], [4, 4, 0, 9]], 2)
    second = samples_of([[1, 2, 6, 6], [1, 3, 5, 0], [2, 2, 8, 8], [4, 4, 0, 3]], 2)
    # pair 1: the same tokens; pair 3: the same up to the end (what follows does not count)
    pairs = preference.preference_pairs(
        first, second, torch.tensor([1.0, 2.0, 0.5, 1.0]), torch.tensor([3.0, 1.0, 0.2, 2.0])
    )
    assert len(pairs) == 2 and pairs.dropped == 2
    assert pairs.chosen.ids.tolist() == [[1, 2, 6, 6], [2, 2, 7, 7]]
    assert pairs.rejected.ids.tolist() == [[1, 2, 5, 6], [2, 2, 8, 8]]
    tie = preference.preference_pairs(first, second, torch.ones(4), torch.tensor([1, 1, 2, 1.0]))
    assert len(tie) == 1 and tie.dropped == 3
    with pytest.raises(ValueError, match="no preference"):
        preference.preference_pairs(first, second, torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="same prompt"):
        other = samples_of([[9, 2, 5, 6], [1, 3, 5, 0], [2, 2, 7, 7], [4, 4, 0, 9]], 2)
        preference.preference_pairs(first, other, torch.ones(4), torch.zeros(4))


def random_pairs(count: int, seed: int = 0) -> preference.Pairs:
    generator = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, VOCAB, (count, 3), generator=generator)
    chosen = torch.cat([prompts, torch.randint(1, VOCAB, (count, 5), generator=generator)], 1)
    rejected = torch.cat([prompts, torch.randint(1, VOCAB, (count, 5), generator=generator)], 1)
    chosen[:, 3] = 7  # the preferred answers start with token 7, the others never do
    rejected[:, 3] = torch.where(rejected[:, 3] == 7, 8, rejected[:, 3])
    chosen[::3, 6] = END  # some end early
    return preference.Pairs(samples_of(chosen.tolist(), 3), samples_of(rejected.tolist(), 3))


def test_dpo_loss_is_the_papers_equation_and_refuses_a_beta_of_zero_or_below():
    logps = torch.tensor([[-3.0, -5.0, -4.0, -4.5], [-2.0, -2.5, -2.2, -2.0]])
    loss = preference.dpo_loss(*logps.T.unbind(0), beta=0.1)
    margins = 0.1 * ((logps[:, 0] - logps[:, 2]) - (logps[:, 1] - logps[:, 3]))
    assert torch.allclose(loss, torch.log1p(torch.exp(-margins)).mean())
    for beta in (0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="beta"):
            preference.dpo_loss(*logps.T.unbind(0), beta=beta)


def test_dpo_as_two_class_cross_entropy_equals_dpo_loss():
    policy, reference = tiny_model(0), tiny_model(1)
    pairs = random_pairs(6)
    reference_logps = tuple(
        preference.samples_logprobs(reference, s) for s in (pairs.chosen, pairs.rejected)
    )
    inputs, targets = next(
        iter(preference.pair_loader(pairs, 6, reference_logprobs=reference_logps))
    )
    implicit = preference.DPOPairs(policy, 3, beta=0.3)(**inputs)
    policy_logps = [preference.samples_logprobs(policy, s) for s in (pairs.chosen, pairs.rejected)]
    expected = preference.dpo_loss(*policy_logps, *reference_logps, beta=0.3)
    assert torch.allclose(F.cross_entropy(implicit, targets), expected, atol=1e-6)


def test_dpo_through_fit_learns_the_preference_and_starts_at_log_2():
    policy, reference = tiny_model(0), tiny_model(0)
    pairs = random_pairs(48)
    reference_logps = tuple(
        preference.samples_logprobs(reference, s) for s in (pairs.chosen, pairs.rejected)
    )
    loader = preference.pair_loader(pairs, 16, reference_logprobs=reference_logps)
    wrapped = preference.DPOPairs(policy, 3, beta=0.5)
    start = train.evaluate(wrapped, loader)
    assert math.isclose(start["loss"], math.log(2), rel_tol=1e-5)  # the policy is the reference
    optimizer = torch.optim.AdamW(optim.param_groups(policy, 1e-2, verbose=False))
    history = train.fit(wrapped, loader, loader, optimizer, 8, verbose=False)
    assert history["val_loss"][-1] < 0.5 * start["loss"] and history["val_accuracy"][-1] == 1.0
    # the policy now puts more mass on token 7 after the prompt than the reference
    prompt = pairs.chosen.ids[:1, :3]
    with torch.no_grad():
        after, before = (m(prompt)[0, -1].softmax(-1)[7] for m in (policy, reference))
    assert after > 2 * before


def test_the_reward_model_learns_bradley_terry_through_fit():
    model = preference.reward_model(tiny_model(0))
    pairs = random_pairs(48)
    loader = preference.pair_loader(pairs, 16)
    scorer = preference.PairRewards(model, 3)
    inputs, targets = next(iter(loader))
    scores = scorer(**inputs)
    assert torch.equal(scores, torch.zeros_like(scores)), "a zero head: every reward starts at 0"
    assert torch.allclose(
        F.cross_entropy(scores, targets), preference.bradley_terry_loss(*scores.unbind(1))
    )
    optimizer = torch.optim.AdamW(optim.param_groups(model, 3e-3, verbose=False))
    history = train.fit(scorer, loader, loader, optimizer, 10, verbose=False)
    assert history["val_loss"][-1] < 0.3 and history["val_accuracy"][-1] == 1.0
    chosen, rejected = (preference.rewards(model, s) for s in (pairs.chosen, pairs.rejected))
    assert bool((chosen > rejected).all())


def test_preferred_ft_targets_only_the_continuation_tokens_that_count():
    chosen = samples_of([[1, 2, 3, 4, 0, 5], [1, 2, 6, 7, 8, 9]], 2)
    ids, targets = next(iter(preference.preferred_ft_loader(chosen, 2, shuffle=False)))
    assert ids.tolist() == [[1, 2, 3, 4, 0], [1, 2, 6, 7, 8]]
    assert targets.tolist() == [[-100, 3, 4, 0, -100], [-100, 6, 7, 8, 9]]


def test_group_advantages_centre_and_scale_each_group():
    scores = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    advantages = preference.group_advantages(scores)
    assert torch.allclose(advantages.mean(dim=1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(advantages[0].std(), torch.tensor(1.0), atol=1e-4)
    assert torch.equal(advantages[1], torch.zeros(4)), "equal rewards teach nothing"
    with pytest.raises(ValueError, match="group"):
        preference.group_advantages(torch.ones(3, 1))


def test_grpo_loss_is_the_policy_gradient_with_a_kl_penalty():
    policy = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.7, -1.2]], requires_grad=True)
    reference = torch.tensor([[-1.2, -1.5, -0.5], [-0.3, -0.9, -3.0]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    advantages = torch.tensor([1.0, -1.0])
    loss = preference.grpo_loss(policy, reference, advantages, mask, beta=0.0)
    loss.backward()
    # -mean_i A_i / |y_i| Σ_t log π_t: the gradient is -A_i / (|y_i| n) on each counted token
    expected = torch.tensor([[-0.25, -0.25, 0.0], [1 / 6, 1 / 6, 1 / 6]])
    assert torch.allclose(policy.grad, expected)
    same = preference.grpo_loss(reference, reference, torch.zeros(2), mask, beta=1.0)
    assert float(same) == 0.0, "no advantage and no divergence: nothing to pay"
    penalty = preference.grpo_loss(policy.detach(), reference, torch.zeros(2), mask, beta=1.0)
    ratio = reference - policy.detach()
    kl = ((ratio.exp() - ratio - 1) * mask).sum(1) / mask.sum(1)
    assert torch.allclose(penalty, kl.mean()) and float(penalty) > 0
    with pytest.raises(ValueError, match="beta"):
        preference.grpo_loss(policy, reference, advantages, mask, beta=-1.0)


def test_rl_raises_the_reward_it_is_given_and_its_kl():
    """A reward that counts token 7 in the continuation: the policy learns to write it."""
    policy, reference = tiny_model(0), tiny_model(0)
    prompts = torch.randint(1, VOCAB, (32, 3), generator=torch.Generator().manual_seed(0))

    def count_sevens(samples: preference.Samples) -> torch.Tensor:
        return ((samples.continuation == 7) & samples.mask).sum(dim=1).float()

    history = preference.train_rl(
        policy,
        reference,
        count_sevens,
        prompts,
        new_tokens=6,
        end_id=END,
        steps=40,
        prompts_per_step=8,
        group_size=4,
        beta=0.01,
        learning_rate=1e-2,
        generator=torch.Generator().manual_seed(0),
    )
    first, last = history.step_reward[:5], history.step_reward[-5:]
    assert sum(last) > 3 * sum(first), (first, last)
    assert history.step_kl[-1] > 0.5
    with pytest.raises(ValueError, match="group_size"):
        preference.train_rl(
            policy, reference, count_sevens, prompts, new_tokens=6, end_id=END, steps=1,
            prompts_per_step=8, group_size=1, beta=0.1, learning_rate=1e-3,
            generator=torch.Generator(),
        )  # fmt: skip


def test_best_of_n_keeps_the_highest_score_of_each_prompt_and_its_kl_bound():
    candidates = samples_of([[1, 5], [1, 6], [1, 7], [2, 5], [2, 6], [2, 7]], 1)
    best = preference.best_of_n(candidates, torch.tensor([0.1, 0.9, 0.5, 2.0, 1.0, -1.0]), 3)
    assert best.ids.tolist() == [[1, 6], [2, 5]]
    assert preference.best_of_n_kl(1) == 0.0
    assert math.isclose(preference.best_of_n_kl(4), math.log(4) - 0.75)
    with pytest.raises(ValueError, match="per prompt"):
        preference.best_of_n(candidates, torch.zeros(6), 4)


def test_samples_refuse_a_mask_without_a_first_token_and_wrong_shapes():
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="at least one token"):
        preference.Samples(ids, 2, torch.tensor([[False, True, True], [True, True, True]]))
    with pytest.raises(ValueError, match="shaped"):
        preference.Samples(ids, 2, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="prompt"):
        preference.Samples(ids, 5, torch.ones(2, 0, dtype=torch.bool))


def test_a_reward_model_is_a_trainable_copy_with_one_number_per_text():
    backbone = tiny_model(0).requires_grad_(False)  # the chapter's frozen reference
    model = preference.reward_model(backbone)
    assert model.backbone is not backbone and isinstance(model.head, nn.Linear)
    assert model.head.out_features == 1
    assert all(p.requires_grad for p in model.parameters()), "the copy trains"
    assert not any(p.requires_grad for p in backbone.parameters()), "the reference stays frozen"
    ids = torch.randint(1, VOCAB, (3, 6), generator=torch.Generator().manual_seed(0))
    assert model(ids, torch.ones_like(ids)).shape == (3, 1)


def test_dpo_equals_trls_dpo_trainer_on_the_same_gpt2_and_pairs(tmp_path):
    """TRL's DPOTrainer computes its loss from the model itself (its sequence log-probabilities
    inside ``compute_loss``), so the honest comparison is the whole trainer: a random
    ``GPT2LMHeadModel`` and a reference, pairs of text that TRL tokenizes and collates itself,
    and the same batch through :class:`DPOPairs` on the same weights imported into our GPT."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    from tutorial_lib.llm.gpt import from_hf_gpt2

    tokenizer = bpe.train_tokenizer(TEXTS, vocab_size=300)
    end = tokenizer.token_to_id(bpe.END_OF_TEXT)
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=bpe.END_OF_TEXT, pad_token=bpe.END_OF_TEXT
    )
    config = GPT2Config(
        vocab_size=300, n_positions=32, n_embd=16, n_layer=2, n_head=2,
        bos_token_id=end, eos_token_id=end,
    )  # fmt: skip
    torch.manual_seed(0)
    hf_policy, hf_reference = GPT2LMHeadModel(config), GPT2LMHeadModel(config)
    pairs = Dataset.from_list(
        [
            {"prompt": "A wonderful", "chosen": " film, the acting", "rejected": " plot bad"},
            {"prompt": "Terrible plot", "chosen": " I loved", "rejected": " avoid this movie."},
            {"prompt": "The director", "chosen": "'s best work", "rejected": " made no sense"},
        ]
    )
    args = DPOConfig(
        output_dir=str(tmp_path), beta=0.3, per_device_train_batch_size=1, report_to=[],
        use_cpu=True, disable_tqdm=True, bf16=False,  # TRL's default autocasts the reference
    )  # fmt: skip
    trainer = DPOTrainer(
        model=hf_policy,
        ref_model=hf_reference,
        args=args,
        train_dataset=pairs,
        processing_class=hf_tokenizer,
    )
    policy, reference = from_hf_gpt2(hf_policy).eval(), from_hf_gpt2(hf_reference).eval()
    trainer.model.eval()
    compared = 0
    for batch in trainer.get_train_dataloader():
        with torch.no_grad():
            trl_loss = trainer.compute_loss(trainer.model, batch)
        completion = batch["completion_mask"].bool()
        prompt_length = int(completion[0].nonzero()[0])
        assert int(completion[1].nonzero()[0]) == prompt_length, "one prompt for both answers"
        mask = completion[:, prompt_length:]
        both = preference.Samples(batch["input_ids"], prompt_length, mask)
        chosen, rejected = both.select([0]), both.select([1])
        reference_logps = tuple(
            preference.samples_logprobs(reference, s) for s in (chosen, rejected)
        )
        loader = preference.pair_loader(
            preference.Pairs(chosen, rejected), 1, reference_logprobs=reference_logps
        )
        inputs, targets = next(iter(loader))
        with torch.no_grad():
            ours = F.cross_entropy(
                preference.DPOPairs(policy, prompt_length, 0.3)(**inputs), targets
            )
        assert abs(float(trl_loss) - float(ours)) < 1e-5, (float(trl_loss), float(ours))
        compared += 1
    assert compared == 3


def test_prompt_splits_are_disjoint_seeded_and_refuse_what_does_not_fit():
    splits = preference.prompt_splits(
        1_000, 300, pair_prompts=200, val_prompts=50, judge_reviews=400, judge_val_reviews=100,
        test_prompts=250,
    )  # fmt: skip
    train_side = [splits[name] for name in ("pairs", "val", "judge", "judge_val")]
    assert [len(s) for s in train_side] == [200, 50, 400, 100] and len(splits["test"]) == 250
    assert len(set().union(*map(set, train_side))) == 750, "the training splits are disjoint"
    again = preference.prompt_splits(
        1_000, 300, pair_prompts=200, val_prompts=50, judge_reviews=400, judge_val_reviews=100,
        test_prompts=250,
    )  # fmt: skip
    assert again == splits
    with pytest.raises(ValueError, match="need"):
        preference.prompt_splits(
            500, 300, pair_prompts=200, val_prompts=50, judge_reviews=400, judge_val_reviews=1,
            test_prompts=10,
        )  # fmt: skip


def test_repetition_rate_counts_repeated_tokens_of_what_counts():
    samples = samples_of([[1, 5, 6, 7, 8], [1, 5, 5, 5, 5], [1, 5, 5, 0, 5]], 1)
    assert preference.repetition_rate(samples).tolist() == pytest.approx([0.0, 0.75, 1 / 3])


def test_value_at_kl_interpolates_where_a_run_first_reaches_the_kl():
    path = [(0.0, -1.0), (2.0, 1.0), (6.0, 3.0), (5.0, 4.0)]
    assert preference.value_at_kl(path, 1.0) == pytest.approx(0.0)
    assert preference.value_at_kl(path, 4.0) == pytest.approx(2.0)
    assert preference.value_at_kl(path, 7.0) is None, "never reached"
    assert preference.value_at_kl(path[1:], 1.0) is None, "below the first measured point"
    with pytest.raises(ValueError, match="two"):
        preference.value_at_kl(path[:1], 1.0)


def test_bad_scores_and_mismatched_reference_logprobs_are_refused_with_what_to_do():
    first = samples_of([[1, 2, 5, 6], [1, 3, 5, 0]], 2)
    second = samples_of([[1, 2, 6, 6], [1, 3, 7, 0]], 2)
    with pytest.raises(ValueError, match="finite"):
        preference.preference_pairs(
            first, second, torch.tensor([1.0, float("nan")]), torch.zeros(2)
        )
    pairs = preference.preference_pairs(first, second, torch.ones(2), torch.zeros(2))
    with pytest.raises(ValueError, match="reference_logprobs"):
        preference.pair_loader(pairs, 2, reference_logprobs=(torch.zeros(3), torch.zeros(3)))
    with pytest.raises(ValueError, match="reference_logprobs"):
        preference.pair_loader(
            pairs, 2, reference_logprobs=(torch.zeros(2), torch.tensor([0.0, float("-inf")]))
        )
    with pytest.raises(ValueError, match="finite"):
        preference.group_advantages(torch.tensor([[1.0, float("inf")]]))
    policy, reference = tiny_model(0), tiny_model(0)
    prompts = torch.randint(1, VOCAB, (4, 3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="one finite score per sample"):
        preference.train_rl(
            policy, reference, lambda s: torch.zeros(len(s), 1), prompts, new_tokens=3,
            end_id=END, steps=1, prompts_per_step=2, group_size=2, beta=0.1,
            learning_rate=1e-3, generator=torch.Generator(),
        )  # fmt: skip


def test_token_logprobs_equal_one_forward_pass_per_prefix():
    model = tiny_model(0).eval()
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = preference.token_logprobs(model, ids, 3)
        for t in range(3, 7):  # token t given tokens 0 .. t-1, each prefix on its own
            expected = model(ids[:, :t])[:, -1].log_softmax(-1).gather(1, ids[:, t : t + 1])
            assert torch.allclose(got[:, t - 3], expected.squeeze(1), atol=1e-5)


def test_grpo_kl_penalty_averages_to_the_exact_kl_of_the_policy_from_the_reference():
    """Schulman's estimator is unbiased for KL(π ‖ π_ref) on samples from π: with no advantage
    and β = 1 the loss is its mean, which must match the exact one-token KL (a swapped sign or
    ratio would estimate KL(π_ref ‖ π) or go negative)."""
    model, other = tiny_model(0).eval(), tiny_model(1).eval()
    with torch.no_grad():
        other.lm_head.weight.mul_(8)
    prompts = torch.tensor([[3, 4, 5]]).repeat(4_000, 1)
    drawn = preference.sample(
        model, prompts, 1, end_id=END, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        policy, reference = (preference.token_logprobs(m, drawn.ids, 3) for m in (model, other))
        p, q = (m(prompts[:1])[0, -1].log_softmax(-1) for m in (model, other))
    penalty = preference.grpo_loss(policy, reference, torch.zeros(len(drawn)), drawn.mask, 1.0)
    ratio = reference - policy
    error = float((ratio.exp() - ratio - 1).std() / math.sqrt(len(drawn)))
    exact = float((p.exp() * (p - q)).sum())
    reverse = float((q.exp() * (q - p)).sum())
    assert abs(float(penalty) - exact) < 4 * error < abs(exact - reverse), (penalty, exact, reverse)
