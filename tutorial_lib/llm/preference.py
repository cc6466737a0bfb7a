"""Chapter 12: aligning chapter 8's GPT with preferences, measured as Rafailov et al. (2023,
section 6.1) measured DPO: continue the opening of a movie review *positively*.

- Sampling: :func:`review_prompts` (the first tokens of reviews), :func:`sample` (batched, with
  the KV cache, at temperature 1 without top-k or top-p, so that the model's log-probabilities
  are exactly those of the sampler) into :class:`Samples`, whose continuation ends at its first
  end-of-text token.
- :func:`token_logprobs` and :func:`sequence_logprobs`: ``log π(y | x)`` of each continuation;
  :func:`kl_from_reference`: the sampled estimate of ``KL(π ‖ π_ref)`` with its standard error.
- :func:`preference_pairs`: two samples per prompt, the one with the higher gold reward
  preferred (ties and identical continuations dropped and counted).
- The reward model: :func:`reward_model` (a GPT with a one-number head,
  :class:`~tutorial_lib.llm.adapt.GPTClassifier`), trained on :func:`pair_loader` batches by
  :func:`tutorial_lib.train.fit` through :class:`PairRewards`. Its two rewards per pair are
  logits of "which answer is preferred", so cross-entropy towards the first is exactly the
  Bradley-Terry loss, :func:`bradley_terry_loss`.
- DPO: :func:`dpo_loss` (the paper's equation 7) and :class:`DPOPairs`, the same two-class form
  with the implicit rewards ``β (log π - log π_ref)`` as the logits, trained by ``fit``.
- Preferred-FT: :func:`preferred_ft_loader` (the preferred continuations with the loss on their
  tokens only).
- RL against the reward model: :func:`group_advantages`, :func:`grpo_loss` (a policy gradient
  with a group baseline and a per-token KL penalty to the reference, Shao et al. 2024) and
  :func:`train_rl`, which samples from the current policy at every step.
- Best-of-n: :func:`best_of_n` and :func:`best_of_n_kl` (``log n - (n - 1) / n``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import bpe
from .adapt import GPTClassifier
from .gpt import GPT, check_token_ids, generate
from .pretraining import clean_review

IGNORE = -100  # F.cross_entropy's ignore_index: a position without a target


# --- prompts and samples --------------------------------------------------------------------


def review_prompts(tokenizer: Any, texts: Sequence[str], prompt_tokens: int) -> torch.Tensor:
    """Return ``(len(texts), prompt_tokens)`` token ids: the first ``prompt_tokens`` tokens of
    each review as chapter 8 encoded it (cleaned of HTML line breaks).

    Raises:
        ValueError: if ``prompt_tokens < 1`` or a review is shorter than ``prompt_tokens``.
    """
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be at least 1, not {prompt_tokens}")
    rows = []
    encoded = bpe.encode_texts(tokenizer, [clean_review(text) for text in texts])
    for index, ids in enumerate(encoded):
        ids = ids[:prompt_tokens]
        if len(ids) < prompt_tokens:
            raise ValueError(
                f"review {index} has only {len(ids)} tokens; prompts need {prompt_tokens}: "
                "leave out reviews that short"
            )
        rows.append(ids)
    if not rows:
        raise ValueError("no reviews to make prompts of")
    return torch.tensor(rows, dtype=torch.long)


def prompt_splits(
    train_size: int,
    test_size: int,
    *,
    pair_prompts: int,
    val_prompts: int,
    judge_reviews: int,
    judge_val_reviews: int,
    test_prompts: int,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Return chapter 12's review indices, disjoint where they must be: from the training split
    ``pairs`` (the prompts of the preference data), ``val`` (prompts that choose every recipe),
    ``judge`` and ``judge_val`` (the gold classifier's reviews); from the test split ``test``
    (the prompts every method is measured on). Each split has its own seeded generator, as in
    :func:`tutorial_lib.llm.adapt.labelled_splits`.

    Raises:
        ValueError: if a count is below 1 or the splits do not fit.
    """
    counts = (pair_prompts, val_prompts, judge_reviews, judge_val_reviews, test_prompts)
    if min(counts) < 1:
        raise ValueError(f"every split needs at least one review, got {counts}")
    needed = pair_prompts + val_prompts + judge_reviews + judge_val_reviews
    if needed > train_size or test_prompts > test_size:
        raise ValueError(
            f"the splits need {needed:,} training and {test_prompts:,} test reviews; the data "
            f"has {train_size:,} and {test_size:,}"
        )
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed)).tolist()
    test = torch.randperm(test_size, generator=torch.Generator().manual_seed(seed + 1)).tolist()
    bounds = [0, pair_prompts, val_prompts, judge_reviews, judge_val_reviews]
    starts = [sum(bounds[: i + 1]) for i in range(len(bounds))]
    names = ["pairs", "val", "judge", "judge_val"]
    splits = {name: order[starts[i] : starts[i + 1]] for i, name in enumerate(names)}
    splits["test"] = test[:test_prompts]
    return splits


@dataclass(frozen=True)
class Samples:
    """Prompts with one sampled continuation each.

    ``ids`` is ``(n, prompt_length + new_tokens)``; ``mask`` ``(n, new_tokens)`` is True for the
    continuation tokens that count: up to and including the first end-of-text token (a review
    ended there, and what follows would be a new one), all of them when there is none.
    """

    ids: torch.Tensor
    prompt_length: int
    mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.ids.dim() != 2 or not 0 < self.prompt_length < self.ids.shape[1]:
            raise ValueError(
                f"ids {tuple(self.ids.shape)} must be (n, prompt + continuation) with a prompt "
                f"of 1 to {self.ids.shape[-1] - 1} tokens, not {self.prompt_length}"
            )
        expected = (self.ids.shape[0], self.ids.shape[1] - self.prompt_length)
        if tuple(self.mask.shape) != expected or self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor shaped {expected}")
        if not self.mask[:, 0].all():
            raise ValueError("every continuation needs at least one token (an empty one)")

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def continuation(self) -> torch.Tensor:
        """The ``(n, new_tokens)`` continuation ids."""
        return self.ids[:, self.prompt_length :]

    @property
    def attention_mask(self) -> torch.Tensor:
        """``(n, length)`` ones on the prompt and the tokens that count: right padding."""
        prompt = torch.ones(len(self), self.prompt_length, dtype=torch.long)
        return torch.cat([prompt, self.mask.long()], dim=1)

    def select(self, index: torch.Tensor | Sequence[int]) -> Samples:
        """Return the samples at ``index``."""
        index = torch.as_tensor(index, dtype=torch.long)
        return Samples(self.ids[index], self.prompt_length, self.mask[index])

    def texts(self, tokenizer: Any, with_prompt: bool = True) -> list[str]:
        """Decode each sample (the prompt and the continuation's tokens that count, without the
        end-of-text token), or the continuation only."""
        texts = []
        for row, keep in zip(self.ids.tolist(), self.mask.tolist(), strict=True):
            continuation = [t for t, k in zip(row[self.prompt_length :], keep, strict=True) if k]
            ids = (row[: self.prompt_length] if with_prompt else []) + continuation
            texts.append(tokenizer.decode(ids, skip_special_tokens=True))
        return texts


def continuation_mask(continuation: torch.Tensor, end_id: int) -> torch.Tensor:
    """Return the bool mask of the tokens that count in ``(n, new_tokens)`` continuations: each
    up to and including its first ``end_id``."""
    ended_before = (continuation == end_id).long().cumsum(dim=1) - (continuation == end_id).long()
    return ended_before == 0


def sample(
    model: GPT,
    prompts: torch.Tensor,
    new_tokens: int,
    *,
    end_id: int,
    generator: torch.Generator,
    batch_size: int = 256,
) -> Samples:
    """Sample one continuation of ``new_tokens`` tokens for each row of ``prompts`` from
    ``model`` (at temperature 1, nothing filtered: ``log π`` below is the sampler's own), in
    batches that share one KV cache, and return them as :class:`Samples`.

    Raises:
        ValueError: if ``prompts`` is not a non-empty ``(n, length)`` tensor of the model's ids,
            ``new_tokens < 1``, or prompt and continuation exceed the model's context.
    """
    if prompts.dim() != 2 or prompts.shape[0] == 0 or prompts.shape[1] == 0:
        raise ValueError(f"prompts must be a non-empty (n, length) tensor, not {prompts.shape}")
    if new_tokens < 1:
        raise ValueError(f"new_tokens must be at least 1, not {new_tokens}")
    if prompts.shape[1] + new_tokens > model.config.context_length:
        raise ValueError(
            f"{prompts.shape[1]} prompt tokens and {new_tokens} new ones exceed the context of "
            f"{model.config.context_length}"
        )
    check_token_ids(prompts, model.config.vocab_size)
    device = next(model.parameters()).device
    if device.type != "cpu":  # a CPU generator cannot drive sampling on an accelerator
        seed = int(torch.randint(2**62, (1,), generator=generator))
        generator = torch.Generator(device).manual_seed(seed)
    rows = [
        generate(model, chunk.to(device), new_tokens, temperature=1.0, generator=generator).cpu()
        for chunk in prompts.split(batch_size)
    ]
    ids = torch.cat(rows)
    length = prompts.shape[1]
    return Samples(ids, length, continuation_mask(ids[:, length:], end_id))


# --- log-probabilities and KL ---------------------------------------------------------------


def token_logprobs(model: nn.Module, ids: torch.Tensor, prompt_length: int) -> torch.Tensor:
    """Return ``(n, length - prompt_length)``: ``log π(token | everything before it)`` of each
    continuation token of ``ids`` (with gradients when called with them), on the model's
    device."""
    ids = ids.to(next(model.parameters()).device)
    logits = model(ids[:, :-1])[:, prompt_length - 1 :]
    targets = ids[:, prompt_length:]
    return torch.gather(logits.float().log_softmax(dim=-1), 2, targets.unsqueeze(-1)).squeeze(-1)


def sequence_logprobs(
    model: nn.Module,
    ids: torch.Tensor,
    prompt_length: int,
    mask: torch.Tensor,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Return ``(n,)``: ``log π(y | x)``, the sum of the log-probabilities of the continuation
    tokens that ``mask`` keeps. ``batch_size`` splits the work and measures: without gradients,
    in evaluation mode (no dropout), on the CPU."""
    if batch_size is None:
        logps = token_logprobs(model, ids, prompt_length)
        return (logps * mask.to(logps.device)).sum(dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat(
                [
                    sequence_logprobs(model, i.to(device), prompt_length, m.to(device)).cpu()
                    for i, m in zip(ids.split(batch_size), mask.split(batch_size), strict=True)
                ]
            )
    finally:
        model.train(was_training)


def samples_logprobs(model: nn.Module, samples: Samples, batch_size: int = 256) -> torch.Tensor:
    """:func:`sequence_logprobs` of :class:`Samples`, without gradients, in batches."""
    return sequence_logprobs(model, samples.ids, samples.prompt_length, samples.mask, batch_size)


def mean_and_error(values: torch.Tensor) -> tuple[float, float]:
    """Return the mean of ``values`` and its standard error (sample standard deviation / √n)."""
    values = values.double().flatten()
    if values.numel() < 2:
        raise ValueError("a standard error needs at least two values")
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def kl_from_reference(
    policy: nn.Module, reference: nn.Module, samples: Samples, batch_size: int = 256
) -> tuple[float, float]:
    """Estimate ``KL(π ‖ π_ref) = E_{y ~ π}[log π(y|x) - log π_ref(y|x)]`` in nats per
    continuation from ``samples`` drawn from ``policy``, and return ``(mean, standard error)``
    over the samples (one per prompt)."""
    gap = samples_logprobs(policy, samples, batch_size) - samples_logprobs(
        reference, samples, batch_size
    )
    return mean_and_error(gap)


def repetition_rate(samples: Samples) -> torch.Tensor:
    """Return ``(n,)``: the share of each continuation's counted tokens that repeat a token
    earlier in the same continuation (``1 - distinct / tokens``): 0 for all-different tokens,
    near 1 for a loop of one word."""
    rates = []
    for row, keep in zip(samples.continuation.tolist(), samples.mask.tolist(), strict=True):
        tokens = [t for t, k in zip(row, keep, strict=True) if k]
        rates.append(1 - len(set(tokens)) / len(tokens))
    return torch.tensor(rates)


def value_at_kl(path: Sequence[tuple[float, float]], kl: float) -> float | None:
    """Read a training run's value (a reward, a share) at a given KL: ``path`` is the run's
    measured ``(KL, value)`` points in training order; return the value linearly interpolated
    where the path first reaches ``kl``, or ``None`` if it never does (below its first point
    or beyond its last: nothing was measured there).

    Raises:
        ValueError: for fewer than two points or a negative ``kl``.
    """
    if len(path) < 2 or kl < 0:
        raise ValueError("need at least two (KL, value) points and a KL of at least 0")
    for (kl_a, value_a), (kl_b, value_b) in zip(path, path[1:], strict=False):
        if min(kl_a, kl_b) <= kl <= max(kl_a, kl_b):
            if kl_a == kl_b:
                return max(value_a, value_b)
            return value_a + (value_b - value_a) * (kl - kl_a) / (kl_b - kl_a)
    return None


# --- preference pairs -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Preference pairs: ``chosen[i]`` was preferred to ``rejected[i]`` (same prompt);
    ``dropped`` counts the pairs left out as ties or identical continuations."""

    chosen: Samples
    rejected: Samples
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.chosen)


def preference_pairs(
    first: Samples,
    second: Samples,
    first_scores: torch.Tensor,
    second_scores: torch.Tensor,
) -> Pairs:
    """Pair ``first[i]`` with ``second[i]`` (two samples for the same prompt) and prefer the one
    with the higher score. A pair whose two continuations are the same tokens, or whose scores
    tie, says nothing about a preference: it is dropped, and counted in ``Pairs.dropped``.

    Raises:
        ValueError: if the two sets have different prompts or shapes, the scores do not match
            them, or no pair is left.
    """
    if first.ids.shape != second.ids.shape or first.prompt_length != second.prompt_length:
        raise ValueError("the two sample sets must have the same shape and prompt length")
    if not torch.equal(first.ids[:, : first.prompt_length], second.ids[:, : first.prompt_length]):
        raise ValueError("pair i must continue the same prompt in both sets")
    if first_scores.shape != (len(first),) or second_scores.shape != (len(second),):
        raise ValueError(f"need one score per sample: ({len(first)},) each")
    if not (torch.isfinite(first_scores).all() and torch.isfinite(second_scores).all()):
        raise ValueError("a score is not a finite number: it cannot decide a preference")
    # identical: the same tokens that count (what follows an end-of-text does not)
    same = (first.mask == second.mask).all(dim=1)
    same &= ((first.continuation == second.continuation) | ~first.mask).all(dim=1)
    keep = ~same & (first_scores != second_scores)
    if not keep.any():
        raise ValueError("every pair is a tie or two identical continuations: no preference")
    first_wins = (first_scores > second_scores)[keep]
    a, b = first.select(keep.nonzero().squeeze(1)), second.select(keep.nonzero().squeeze(1))
    pick = first_wins.unsqueeze(1)
    chosen = Samples(
        torch.where(pick, a.ids, b.ids), a.prompt_length, torch.where(pick, a.mask, b.mask)
    )
    rejected = Samples(
        torch.where(pick, b.ids, a.ids), a.prompt_length, torch.where(pick, b.mask, a.mask)
    )
    return Pairs(chosen, rejected, dropped=int((~keep).sum()))


def pair_loader(
    pairs: Pairs,
    batch_size: int,
    *,
    reference_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Batches ``(inputs, targets)`` of preference pairs for :func:`tutorial_lib.train.fit`:
    ``inputs`` holds ``chosen``, ``rejected`` and their masks (and, for DPO, the reference's
    ``(chosen, rejected)`` log-probabilities); ``targets`` is 0 for every pair — "the first
    answer is the preferred one" — so that cross-entropy on the two rewards is the
    Bradley-Terry loss and ``fit``'s accuracy is the share of pairs ranked right.

    Raises:
        ValueError: if the pairs are empty or ``reference_logprobs`` is not two finite ``(n,)``
            tensors for the ``n`` pairs (computed for other pairs, say).
    """
    if len(pairs) == 0:
        raise ValueError("no pairs to batch")
    if reference_logprobs is not None:
        if len(reference_logprobs) != 2 or any(
            r.shape != (len(pairs),) or not torch.isfinite(r).all() for r in reference_logprobs
        ):
            raise ValueError(
                f"reference_logprobs must be (chosen, rejected), two finite tensors of shape "
                f"({len(pairs)},): the reference's log-probabilities of these pairs"
            )
    tensors = [pairs.chosen.ids, pairs.chosen.mask, pairs.rejected.ids, pairs.rejected.mask]
    if reference_logprobs is not None:
        tensors += list(reference_logprobs)
    dataset = TensorDataset(*tensors, torch.zeros(len(pairs), dtype=torch.long))
    names = ["chosen", "chosen_mask", "rejected", "rejected_mask", "ref_chosen", "ref_rejected"]

    def collate(rows):
        columns = [torch.stack(column) for column in zip(*rows, strict=True)]
        return dict(zip(names, columns[:-1], strict=False)), columns[-1]

    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )


# --- the reward model -----------------------------------------------------------------------


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """The Bradley-Terry loss of a reward model: ``-log σ(r(x, y_w) - r(x, y_l))``, averaged
    over pairs (Christiano et al. 2017; Ouyang et al. 2022, eq. 1)."""
    return -F.logsigmoid(chosen - rejected).mean()


def reward_model(backbone: GPT) -> GPTClassifier:
    """Return a reward model: a copy of ``backbone`` with a one-number head on the last token
    that counts (``GPTClassifier`` with ``num_classes=1``), every parameter trainable (also when
    ``backbone`` is frozen). Its head starts at zero, so every reward starts at 0."""
    model = GPTClassifier(copy.deepcopy(backbone), num_classes=1, pooling="last")
    nn.init.zeros_(model.head.weight)
    return model.requires_grad_(True)  # a copy of a frozen reference trains all the same


def rewards(model: GPTClassifier, samples: Samples, batch_size: int = 256) -> torch.Tensor:
    """Return the ``(n,)`` rewards that ``model`` gives ``samples``, without gradients."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = [
                model(ids.to(device), mask.to(device))[:, 0].float().cpu()
                for ids, mask in zip(
                    samples.ids.split(batch_size),
                    samples.attention_mask.split(batch_size),
                    strict=True,
                )
            ]
    finally:
        model.train(was_training)
    return torch.cat(out)


class PairRewards(nn.Module):
    """Score both answers of each pair with a reward model: ``(batch, 2)`` rewards, the chosen
    one first. Cross-entropy towards class 0 is :func:`bradley_terry_loss`."""

    def __init__(self, model: GPTClassifier, prompt_length: int) -> None:
        super().__init__()
        self.model, self.prompt_length = model, prompt_length

    def forward(
        self,
        chosen: torch.Tensor,
        chosen_mask: torch.Tensor,
        rejected: torch.Tensor,
        rejected_mask: torch.Tensor,
    ) -> torch.Tensor:
        def attention(mask: torch.Tensor) -> torch.Tensor:
            prompt = mask.new_ones(mask.shape[0], self.prompt_length)
            return torch.cat([prompt, mask], dim=1).long()

        ids = torch.cat([chosen, rejected])
        both = self.model(ids, torch.cat([attention(chosen_mask), attention(rejected_mask)]))[:, 0]
        return torch.stack(both.chunk(2), dim=1)


# --- DPO ------------------------------------------------------------------------------------


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """The DPO loss of Rafailov et al. (2023, eq. 7), averaged over pairs::

        -log σ(β [log π(y_w|x) - log π_ref(y_w|x)] - β [log π(y_l|x) - log π_ref(y_l|x)])

    from the sequence log-probabilities of the preferred (``chosen``, ``y_w``) and the other
    (``rejected``, ``y_l``) answer under the policy and the frozen reference.

    Raises:
        ValueError: if ``beta`` is not positive (β is the strength of the pull towards the
            reference; at 0 the loss is constant).
    """
    check_beta(beta)
    chosen_reward = beta * (policy_chosen - reference_chosen)
    rejected_reward = beta * (policy_rejected - reference_rejected)
    return -F.logsigmoid(chosen_reward - rejected_reward).mean()


def check_beta(beta: float) -> None:
    """Raise ``ValueError`` unless ``beta`` is a positive finite number."""
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive number, not {beta!r}")


class DPOPairs(nn.Module):
    """The policy's implicit rewards ``β (log π(y|x) - log π_ref(y|x))`` of both answers of each
    pair, ``(batch, 2)``, the chosen one first: cross-entropy towards class 0 is
    :func:`dpo_loss`, so :func:`tutorial_lib.train.fit` trains DPO as a two-class problem and its
    accuracy is the share of pairs whose implicit rewards rank them right."""

    def __init__(self, policy: GPT, prompt_length: int, beta: float) -> None:
        super().__init__()
        check_beta(beta)
        self.policy, self.prompt_length, self.beta = policy, prompt_length, beta

    def forward(
        self,
        chosen: torch.Tensor,
        chosen_mask: torch.Tensor,
        rejected: torch.Tensor,
        rejected_mask: torch.Tensor,
        ref_chosen: torch.Tensor,
        ref_rejected: torch.Tensor,
    ) -> torch.Tensor:
        logps = sequence_logprobs(
            self.policy,
            torch.cat([chosen, rejected]),
            self.prompt_length,
            torch.cat([chosen_mask, rejected_mask]),
        )
        policy_chosen, policy_rejected = logps.chunk(2)
        return self.beta * torch.stack(
            [policy_chosen - ref_chosen, policy_rejected - ref_rejected], dim=1
        )


# --- Preferred-FT ---------------------------------------------------------------------------


def preferred_ft_loader(
    chosen: Samples, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
) -> DataLoader:
    """Batches ``(ids, targets)`` for :func:`tutorial_lib.train.fit` with ``gpt.lm_loss``-style
    next-token cross-entropy on the continuation tokens that count (``-100`` elsewhere): the
    "Preferred-FT" baseline of the DPO paper, supervised fine-tuning on the preferred answers."""
    targets = chosen.ids[:, 1:].clone()
    targets[:, : chosen.prompt_length - 1] = IGNORE
    targets[:, chosen.prompt_length - 1 :][~chosen.mask] = IGNORE
    dataset = TensorDataset(chosen.ids[:, :-1], targets)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator)


# --- RL against the reward model ------------------------------------------------------------


def group_advantages(scores: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Return GRPO's advantages of ``(prompts, group)`` rewards: each reward minus its group's
    mean, divided by the group's standard deviation (Shao et al. 2024, §4.1.2). The group of
    samples for the same prompt is the baseline: no value network.

    Raises:
        ValueError: if a group has fewer than two samples.
    """
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be (prompts, group ≥ 2), not {tuple(scores.shape)}")
    if not torch.isfinite(scores).all():
        raise ValueError("a reward is not a finite number: check the reward function")
    centred = scores - scores.mean(dim=1, keepdim=True)
    return centred / (scores.std(dim=1, keepdim=True) + eps)


def grpo_loss(
    policy_logprobs: torch.Tensor,
    reference_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """GRPO's objective for one on-policy update, as a loss to minimise::

        -mean_i (1/|y_i|) Σ_t [A_i log π(y_t | ...) - β KL_t]

    with ``KL_t = π_ref/π - log(π_ref/π) - 1`` per token (Schulman's unbiased, positive
    estimator, as GRPO uses it) and ``A_i`` the sample's :func:`group_advantages`. The samples
    were just drawn from the policy, so PPO's ratio is 1 and its clipping does nothing: the
    gradient is the policy gradient ``A ∇log π`` plus the KL penalty's.

    ``policy_logprobs``, ``reference_logprobs`` and ``mask`` are ``(n, new_tokens)`` (see
    :func:`token_logprobs`), ``advantages`` ``(n,)``.

    Raises:
        ValueError: if ``beta`` is negative (0 turns the penalty off) or the shapes disagree.
    """
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be ≥ 0 (0: no KL penalty), not {beta!r}")
    if policy_logprobs.shape != reference_logprobs.shape or policy_logprobs.shape != mask.shape:
        raise ValueError("log-probabilities and mask must all be (n, new_tokens)")
    if advantages.shape != policy_logprobs.shape[:1]:
        raise ValueError(f"need one advantage per sample, ({policy_logprobs.shape[0]},)")
    log_ratio = reference_logprobs - policy_logprobs
    kl = torch.exp(log_ratio) - log_ratio - 1
    per_token = advantages.to(kl.device).unsqueeze(1) * policy_logprobs - beta * kl
    mask = mask.to(kl.device).float()
    return -((per_token * mask).sum(dim=1) / mask.sum(dim=1)).mean()


@dataclass
class RLHistory:
    """What :func:`train_rl` measured: per step, the mean reward-model score of the samples
    it trained on and their KL estimate from the reference (nats per continuation); and per
    evaluation, the step, and ``evaluate``'s result."""

    step_reward: list[float]
    step_kl: list[float]
    evaluations: list[tuple[int, Any]]
    seconds: float


def train_rl(
    policy: GPT,
    reference: GPT,
    reward_fn: Callable[[Samples], torch.Tensor],
    prompts: torch.Tensor,
    *,
    new_tokens: int,
    end_id: int,
    steps: int,
    prompts_per_step: int,
    group_size: int,
    beta: float,
    learning_rate: float,
    generator: torch.Generator,
    evaluate_every: int | None = None,
    evaluate: Callable[[GPT], Any] | None = None,
    grad_clip_norm: float = 1.0,
) -> RLHistory:
    """Train ``policy`` against ``reward_fn`` (the reward model) with :func:`grpo_loss`: each
    step draws ``prompts_per_step`` prompts, samples ``group_size`` continuations of each from
    the *current* policy, scores them, and takes one AdamW step. ``evaluate(policy)`` runs
    before the first step and every ``evaluate_every`` steps.

    Raises:
        ValueError: for ``steps``, ``prompts_per_step`` below 1, ``group_size`` below 2, a
            negative ``beta``, or more prompts per step than ``prompts`` holds.
    """
    if steps < 1 or prompts_per_step < 1 or group_size < 2:
        raise ValueError("need steps ≥ 1, prompts_per_step ≥ 1 and group_size ≥ 2")
    if prompts_per_step > len(prompts):
        raise ValueError(f"{prompts_per_step} prompts per step, but only {len(prompts)} prompts")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be ≥ 0 (0: no KL penalty), not {beta!r}")
    from ..optim import param_groups

    optimizer = torch.optim.AdamW(param_groups(policy, learning_rate, verbose=False))
    reference.eval()
    policy.eval()
    history = RLHistory([], [], [], 0.0)
    started = time.perf_counter()
    for step in range(steps + 1):
        if evaluate is not None and evaluate_every and step % evaluate_every == 0:
            history.evaluations.append((step, evaluate(policy)))
        if step == steps:
            break
        chosen = torch.randperm(len(prompts), generator=generator)[:prompts_per_step]
        batch = prompts[chosen].repeat_interleave(group_size, dim=0)
        samples = sample(policy, batch, new_tokens, end_id=end_id, generator=generator)
        scores = reward_fn(samples)
        if scores.shape != (len(samples),) or not torch.isfinite(scores).all():
            raise ValueError(
                f"reward_fn must return one finite score per sample, shape ({len(samples)},); "
                f"got {tuple(scores.shape)}"
            )
        advantages = group_advantages(scores.view(prompts_per_step, group_size)).flatten()
        with torch.no_grad():
            reference_tokens = token_logprobs(reference, samples.ids, samples.prompt_length)
        # evaluation mode throughout (no dropout): the log-probabilities are the sampler's own,
        # which is what makes the update on-policy; gradients flow all the same
        policy_tokens = token_logprobs(policy, samples.ids, samples.prompt_length)
        loss = grpo_loss(policy_tokens, reference_tokens, advantages, samples.mask, beta)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the RL loss became {loss.item()}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip_norm)
        optimizer.step()
        mask = samples.mask.to(policy_tokens.device)
        gap = ((policy_tokens.detach() - reference_tokens) * mask).sum(dim=1)
        history.step_reward.append(float(scores.mean()))
        history.step_kl.append(float(gap.mean()))
    policy.eval()
    history.seconds = time.perf_counter() - started
    return history


# --- best-of-n ------------------------------------------------------------------------------


def best_of_n(candidates: Samples, scores: torch.Tensor, n: int) -> Samples:
    """From ``candidates`` holding ``n`` samples per prompt (prompt-major: rows ``i*n`` to
    ``i*n + n - 1`` continue prompt ``i``), keep the one with the highest score per prompt.

    Raises:
        ValueError: if the rows are not a whole number of groups of ``n``.
    """
    if n < 1 or len(candidates) % n or scores.shape != (len(candidates),):
        raise ValueError(f"need n ≥ 1 samples per prompt and one score each; got {n}")
    best = scores.view(-1, n).argmax(dim=1) + torch.arange(0, len(candidates), n)
    return candidates.select(best)


def best_of_n_kl(n: int) -> float:
    """The KL divergence of best-of-n sampling from the sampler, ``log n - (n - 1) / n`` nats
    (Stiennon et al. 2020, app. G.3). Beirami et al. (2024) show it is an upper bound that is
    close when the candidates rarely repeat."""
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    return math.log(n) - (n - 1) / n


__all__ = [
    "DPOPairs",
    "PairRewards",
    "Pairs",
    "RLHistory",
    "Samples",
    "best_of_n",
    "best_of_n_kl",
    "bradley_terry_loss",
    "check_beta",
    "continuation_mask",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "kl_from_reference",
    "mean_and_error",
    "pair_loader",
    "preference_pairs",
    "preferred_ft_loader",
    "prompt_splits",
    "review_prompts",
    "reward_model",
    "repetition_rate",
    "rewards",
    "sample",
    "samples_logprobs",
    "sequence_logprobs",
    "token_logprobs",
    "train_rl",
    "value_at_kl",
]
