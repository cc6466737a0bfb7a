# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Aligning with preferences: a reward model, DPO and RL
#
# Instruction tuning (chapter 11) teaches a model to answer; the models readers use were then
# tuned on **preferences** (偏好对齐): of two answers, which one people prefer. InstructGPT
# {cite:p}`ouyang2022training` learned a **reward model** from such comparisons
# {cite:p}`christiano2017deep` and optimised the model against it with RL (PPO,
# {cite:p}`schulman2017proximal`); **DPO** {cite:p}`rafailov2023direct` showed that the same
# objective can be optimised on the comparisons directly, with no reward model and no sampling
# during training; GRPO {cite:p}`shao2024deepseekmath` made RL cheaper by using a group of
# samples for the same prompt as its own baseline.
#
# This chapter reproduces, on a laptop, the DPO paper's first experiment (its section 6.1):
# **controlled sentiment generation** on IMDB. The prompt is the opening of a movie review; the
# policy must continue it *positively*; a sentiment classifier plays the human whose preferences
# we want, and gives the **gold reward**. Every method is measured as the paper measured it:
# the gold reward it reaches against how far it moved from the model it started from (the KL
# divergence), on prompts from test reviews no step has seen.
#
# **What you will learn**
#
# - sampling continuations from chapter 8's GPT, batched with its KV cache, and the
#   log-probability of a continuation — the quantity every method here is built from;
# - preference pairs, and a **reward model** trained on them with the Bradley-Terry loss
#   (RLHF's second step), and how often it agrees with the gold reward on held-out pairs;
# - the **DPO** loss written from the paper's equation, checked against the package and, in
#   the tests, against Hugging Face TRL's `DPOTrainer`;
# - **RL** against the reward model with a group baseline and a KL penalty (GRPO-style), and
#   what happens to the gold reward while the proxy's climbs {cite:p}`gao2023scaling`;
# - the baselines of the paper, **best-of-n** sampling and **Preferred-FT**, and the
#   **reward-KL frontier** of all four, with seeds where a verdict rests on them.
#
# **Prerequisites**: chapter 8 (the model, sampling, the KV cache), chapter 5 (the bag of
# n-grams, here the gold classifier), chapter 9 (standard errors over seeds) and chapter 11
# (the loss on some tokens only). Chapter 8's saved model is loaded; when it is missing, its
# pre-training runs here first, through the same package function.
#
# **Time**: the next cell prints how long this chapter's `cpu` run took when its record was
# published, in reference minutes ({doc}`../book/setup`): on a machine twice as fast as the
# reference, expect half. `TUTORIAL_PROFILE=smoke` runs every cell in a minute or two, with
# numbers that mean nothing.

# %% [markdown]
# ## Setup

# %% tags=["hide-cell"]
import importlib.util
import subprocess
import sys

# On Colab, install tutorial_lib from the book's repository (reading a fork? use its address).
REPOSITORY = "https://github.com/from-zero-dl/pytorch-from-zero"
if "google.colab" in sys.modules and importlib.util.find_spec("tutorial_lib") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPOSITORY}"], check=True)

# %%
import copy
import math
import pprint
import statistics
import textwrap
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display

from tutorial_lib import data, optim, plots, results, runtime, train
from tutorial_lib.llm import bpe, instruct, preference, pretraining
from tutorial_lib.models import count_parameters


# %%
@dataclass(frozen=True)
class Budget:
    prompt_tokens: int  # a prompt: the first tokens of a review
    new_tokens: int  # tokens sampled after it (fewer when the review ends)
    pair_prompts: int  # training reviews whose prompts make the preference pairs
    val_prompts: int  # training reviews whose prompts choose every recipe (the sweep)
    test_prompts: int  # test reviews whose prompts measure every method
    judge_reviews: int  # training reviews the gold classifier learns from
    judge_val_reviews: int
    judge_epochs: int
    batch_size: int
    reward_learning_rate: float
    reward_epochs: int
    dpo_learning_rate: float
    dpo_epochs: int
    dpo_beta: float  # the β of the seeded DPO runs
    dpo_other_betas: tuple[float, ...]  # one seed each: the frontier at other strengths
    pft_learning_rate: float
    pft_epochs: int
    rl_learning_rate: float
    rl_steps: int
    rl_beta: float
    rl_prompts_per_step: int
    rl_group_size: int
    rl_evaluate_every: int
    best_of: tuple[int, ...]  # n of best-of-n
    seeds: int  # training runs of each seeded method


BUDGETS = {
    "smoke": Budget(
        prompt_tokens=4,
        new_tokens=8,
        pair_prompts=64,
        val_prompts=16,
        test_prompts=32,
        judge_reviews=200,
        judge_val_reviews=40,
        judge_epochs=1,
        batch_size=16,
        reward_learning_rate=3e-3,
        reward_epochs=1,
        dpo_learning_rate=1e-2,
        dpo_epochs=2,
        dpo_beta=0.1,
        dpo_other_betas=(0.3,),
        pft_learning_rate=1e-2,
        pft_epochs=2,
        rl_learning_rate=1e-2,
        rl_steps=6,
        rl_beta=0.05,
        rl_prompts_per_step=4,
        rl_group_size=2,
        rl_evaluate_every=3,
        best_of=(2, 4),
        seeds=2,
    ),
    # cpu: every learning rate was chosen on the validation prompts only (training reviews),
    # each method by its own objective, by benchmarks/ch12_recipe_sweep.py (this budget's data,
    # seed 0, chapter 8's cpu model of 2026-12-07, a 2-core AVX2 EPYC, 2026-12-08):
    #   reward model, val pair loss by epoch: lr 1e-4 .688 .674; 3e-4 .672 .658; 1e-3 .669 .722
    #   DPO β 0.1, val DPO loss by epoch: 1e-4 .672 .659 .653; 3e-4 .642 .641 .638;
    #     1e-3 .636 .666 .673 (the lowest, after one epoch; 3e-4 is within .002 of it and falls
    #     through all three epochs, whose points trace the frontier: 3e-4)
    #   Preferred-FT, val loss on the chosen continuations by epoch: 1e-4 5.00 5.01 5.02;
    #     3e-4 5.03 5.06 5.10; 1e-3 5.14 5.23 5.33 (it overfits from the first epoch: 1e-4, and
    #     two epochs are measured)
    #   RL β 0.05, objective (reward model minus β KL) every 25 steps: 1e-4 .06 .67 .70 .67 .79;
    #     3e-4 .06 .66 .59 .50 .58
    # (the sweep draws its pairs from one generator, the chapter from one per split: the same
    # prompts, other samples). DPO's rate and the two Preferred-FT epochs are judgement calls
    # the numbers above support, not minima. Sizes: DPO and RL runs take ~1.5 min each here;
    # three seeds of the three trained methods
    # and a second DPO β keep the chapter within 30 reference minutes.
    "cpu": Budget(
        prompt_tokens=8,
        new_tokens=24,
        pair_prompts=2_000,
        val_prompts=500,
        test_prompts=500,
        judge_reviews=10_000,
        judge_val_reviews=2_000,
        judge_epochs=3,
        batch_size=32,
        reward_learning_rate=3e-4,
        reward_epochs=2,
        dpo_learning_rate=3e-4,
        dpo_epochs=3,
        dpo_beta=0.1,
        dpo_other_betas=(0.03,),
        pft_learning_rate=1e-4,
        pft_epochs=2,
        rl_learning_rate=1e-4,
        rl_steps=100,
        rl_beta=0.05,
        rl_prompts_per_step=16,
        rl_group_size=4,
        rl_evaluate_every=10,
        best_of=(2, 4, 8, 16),
        seeds=3,
    ),
    # gpu: not swept yet; chapter 8's larger model, longer continuations, more prompts
    "gpu": Budget(
        prompt_tokens=8,
        new_tokens=48,
        pair_prompts=10_000,
        val_prompts=1_000,
        test_prompts=2_000,
        judge_reviews=10_000,
        judge_val_reviews=2_000,
        judge_epochs=5,
        batch_size=64,
        reward_learning_rate=1e-4,
        reward_epochs=2,
        dpo_learning_rate=1e-4,
        dpo_epochs=3,
        dpo_beta=0.1,
        dpo_other_betas=(0.03, 0.3, 1.0),
        pft_learning_rate=1e-4,
        pft_epochs=3,
        rl_learning_rate=3e-5,
        rl_steps=400,
        rl_beta=0.05,
        rl_prompts_per_step=32,
        rl_group_size=8,
        rl_evaluate_every=50,
        best_of=(2, 4, 8, 16, 64),
        seeds=3,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
BUDGET, device, generator = run.budget, run.device, run.generator
pprint.pp(BUDGET, width=100)
print(results.published_time(results.read_published_record("12_preference_tuning", run.profile)))

# %% [markdown]
# ## Chapter 8's model: the reference policy
#
# The DPO paper starts from a GPT-2 fine-tuned on IMDB reviews, its **reference policy**
# π_ref. Chapter 8's GPT was pre-trained on IMDB's training reviews, so it already is one:
# `pretraining.load_or_pretrain` loads it (or repeats chapter 8's pre-training, and says so).
# Every method below starts from a copy of it, and measures its distance from it.

# %%
imdb = data.load_imdb()
chapter_8 = pretraining.load_or_pretrain(
    imdb,
    pretraining.PRETRAINING_RUNS[run.profile],
    pretraining.pretrained_dir(run.profile),
    generator=generator,
)
reference, tokenizer, info = chapter_8.model.to(device).eval(), chapter_8.tokenizer, chapter_8.info
for parameter in reference.parameters():
    parameter.requires_grad_(False)  # π_ref never changes
END = tokenizer.token_to_id(bpe.END_OF_TEXT)
config = reference.config
print(
    f"GPT: {config.n_layer} layers, {config.n_embd} wide, context {config.context_length}, "
    f"vocabulary {config.vocab_size:,}; {count_parameters(reference, trainable_only=False):,} "
    "parameters"
)
print(f"chapter 8's validation: {info['val_bits_per_byte']:.3f} bits per byte")

# %% [markdown]
# ## The reviews, and the gold reward
#
# The reviews split five ways, each with its own seeded draw (`preference.prompt_splits`):
# training reviews whose openings make the preference data; training reviews whose openings
# chose the learning rates (`benchmarks/ch12_recipe_sweep.py`, never a test review); training
# reviews for the gold classifier and its validation; and **test reviews**, whose openings
# measure every method.
#
# The gold reward is a sentiment classifier's **log-odds** that a text is positive,
# `log p(positive) − log p(negative)`: chapter 5's bag of words and word pairs, trained here on
# full training reviews (`instruct.train_ngram_judge`, as chapter 11's judge). It stands for
# the people whose preferences we want; like them, it is not perfect — its accuracy is printed
# on whole reviews, and a continuation of a few dozen tokens is harder to read than a review.

# %%
pair_count, val_count, test_count = BUDGET.pair_prompts, BUDGET.val_prompts, BUDGET.test_prompts
judge_count, judge_val_count = BUDGET.judge_reviews, BUDGET.judge_val_reviews
SEEDS, RL_STEPS = BUDGET.seeds, BUDGET.rl_steps
if imdb.source.is_sample:
    train_size = len(imdb.train.texts)
    pair_count, val_count = train_size * 3 // 10, train_size // 10
    judge_count, judge_val_count = train_size // 2, train_size // 10
    test_count = min(test_count, len(imdb.test.texts))
    SEEDS, RL_STEPS = min(SEEDS, 2), min(RL_STEPS, 2 * BUDGET.rl_evaluate_every)
    runtime.notice(
        f"The bundled sample holds {train_size:,} training reviews: the splits are cut to fit, "
        f"{SEEDS} seeds, {RL_STEPS} RL steps; the figures only show that the code runs."
    )
splits = preference.prompt_splits(
    len(imdb.train.texts),
    len(imdb.test.texts),
    pair_prompts=pair_count,
    val_prompts=val_count,
    judge_reviews=judge_count,
    judge_val_reviews=judge_val_count,
    test_prompts=test_count,
)


def train_texts(name: str) -> list[str]:
    return [imdb.train.texts[i] for i in splits[name]]


def train_labels(name: str) -> list[int]:
    return [imdb.train.labels[i] for i in splits[name]]


judge = instruct.train_ngram_judge(
    train_texts("judge"),
    train_labels("judge"),
    train_texts("judge_val"),
    train_labels("judge_val"),
    epochs=BUDGET.judge_epochs,
)
print(f"gold classifier: {judge.val_accuracy:.1%} accuracy on {judge_val_count:,} whole reviews")
for text in ("A wonderful film, moving and funny.", "A dull, boring mess.", "It was a film."):
    print(f"  gold reward {float(judge.log_odds([text])[0]):+6.2f}  {text}")


def gold(samples: preference.Samples) -> torch.Tensor:
    """The gold reward of each sample: the classifier's log-odds of the prompt and its
    continuation (the text a reader reads)."""
    return judge.log_odds(samples.texts(tokenizer))


# %% [markdown]
# ## Sampling, by hand and from the package
#
# A prompt is the first `prompt_tokens` tokens of a review. Sampling is chapter 8's loop with
# its KV cache, for a whole batch at once (every prompt has the same length, so no padding),
# at **temperature 1 with nothing filtered**: then the model's own log-probabilities are
# exactly those of the sampler, which the KL estimate and DPO's log-ratios below rely on. A
# continuation ends at its first end-of-text token (a review ended there); what the loop
# samples after it is ignored.
#
# By hand first, for eight prompts — then the package's `preference.sample`, with the same
# random generator, must give the same tokens.

# %%
test_prompts = preference.review_prompts(
    tokenizer, [imdb.test.texts[i] for i in splits["test"]], BUDGET.prompt_tokens
)
few = test_prompts[:8].to(device)
by_hand_generator = torch.Generator().manual_seed(123)
with torch.no_grad():
    cache = reference.new_cache()
    logits = reference(few, cache)  # the prompts once
    tokens = few
    for _ in range(BUDGET.new_tokens):
        probabilities = logits[:, -1].float().softmax(dim=-1)
        choice = torch.multinomial(probabilities.cpu(), 1, generator=by_hand_generator)
        tokens = torch.cat([tokens, choice.to(device)], dim=1)
        logits = reference(choice.to(device), cache)  # one new position, the rest cached
packaged = preference.sample(
    reference,
    few.cpu(),
    BUDGET.new_tokens,
    end_id=END,
    generator=torch.Generator().manual_seed(123),
)
print("by hand equals preference.sample:", torch.equal(tokens.cpu(), packaged.ids))
assert torch.equal(tokens.cpu(), packaged.ids)
for text in packaged.texts(tokenizer)[:3]:
    print("  " + textwrap.shorten(text, 84))

# %% [markdown]
# ## Preference pairs
#
# For each training prompt, two continuations from π_ref; the one with the higher gold reward
# is **chosen** (y_w), the other **rejected** (y_l). A pair whose two continuations are the
# same tokens, or whose rewards tie, says nothing about a preference: it is dropped and
# counted. The same is done for the validation prompts (to validate the reward model and pick
# recipes) and, with a second set of samples, for the test prompts (to measure the reward
# model on pairs it never saw).

# %%
pair_prompts = preference.review_prompts(tokenizer, train_texts("pairs"), BUDGET.prompt_tokens)
val_prompts = preference.review_prompts(tokenizer, train_texts("val"), BUDGET.prompt_tokens)


def make_pairs(prompts: torch.Tensor, seed: int) -> preference.Pairs:
    pair_generator = torch.Generator().manual_seed(seed)
    first, second = (
        preference.sample(
            reference, prompts, BUDGET.new_tokens, end_id=END, generator=pair_generator
        )
        for _ in range(2)
    )
    return preference.preference_pairs(first, second, gold(first), gold(second))


started = time.perf_counter()
pairs = {
    "train": make_pairs(pair_prompts, seed=10),
    "val": make_pairs(val_prompts, seed=11),
    "test": make_pairs(test_prompts, seed=12),
}
for name, split_pairs in pairs.items():
    margin = gold(split_pairs.chosen) - gold(split_pairs.rejected)
    print(
        f"{name:>5}: {len(split_pairs):,} pairs ({split_pairs.dropped} dropped), gold margin "
        f"median {margin.median():.2f}"
    )
print(f"{time.perf_counter() - started:.0f} s")
example = 0
print("chosen:  ", textwrap.shorten(pairs["train"].chosen.texts(tokenizer)[example], 78))
print("rejected:", textwrap.shorten(pairs["train"].rejected.texts(tokenizer)[example], 78))

# %% [markdown]
# ## The log-probability of a continuation
#
# Everything below is built from `log π(y | x)`: the sum, over the continuation's tokens that
# count, of the log-probability the model gave each token after everything before it. One
# forward pass over prompt and continuation gives all of them: the logits at position *t*
# predict token *t + 1*. By hand, then against `preference.sequence_logprobs`:

# %%
chosen = pairs["train"].chosen
ids, mask, start = chosen.ids[:4].to(device), chosen.mask[:4].to(device), chosen.prompt_length
with torch.no_grad():
    log_probs = reference(ids[:, :-1]).float().log_softmax(dim=-1)  # position t predicts t+1
    picked = log_probs.gather(2, ids[:, 1:].unsqueeze(-1)).squeeze(-1)  # each real next token
    by_hand = (picked[:, start - 1 :] * mask).sum(dim=1)  # the continuation's tokens only
    packaged = preference.sequence_logprobs(reference, ids, start, mask)
print("log π_ref(y|x), by hand: ", [round(v, 2) for v in by_hand.tolist()])
print("preference.sequence_logprobs:", [round(v, 2) for v in packaged.tolist()])
assert torch.allclose(by_hand, packaged)

# %% [markdown]
# The **KL divergence** of a policy π from π_ref, `E_{y ~ π}[log π(y|x) − log π_ref(y|x)]`, is
# estimated the same way: sample from π, score each sample under both models, average the
# difference (`preference.kl_from_reference`, in nats per continuation, with its standard error
# over the prompts). It is the x-axis of every comparison in this chapter: how far a method
# moved the model to get its reward.
#
# ## A reward model (RLHF's step 2)
#
# The reward model reads a prompt and a continuation and returns one number. It is chapter 8's
# GPT with a one-number head on the last token that counts (`preference.reward_model`, chapter
# 9's classifier with one output, its head starting at zero). The **Bradley-Terry** model says
# that y_w is preferred to y_l with probability `σ(r(x, y_w) − r(x, y_l))`; the loss is its
# negative log-likelihood, `−log σ(r_w − r_l)` {cite:p}`christiano2017deep`. Put the two rewards
# side by side as the logits of a two-class problem — "which answer was preferred?", always the
# first — and that loss is plain cross-entropy, so `train.fit` trains it as it trains every
# classifier in this book, and its accuracy is the share of pairs ranked right:

# %%
rewards_w, rewards_l = torch.tensor([1.5, -0.2, 0.3]), torch.tensor([0.5, 0.4, 0.3])
by_hand = -F.logsigmoid(rewards_w - rewards_l).mean()
as_classes = F.cross_entropy(torch.stack([rewards_w, rewards_l], dim=1), torch.zeros(3).long())
print(f"Bradley-Terry by hand {by_hand:.4f}, as cross-entropy {as_classes:.4f}, package "
      f"{preference.bradley_terry_loss(rewards_w, rewards_l):.4f}")  # fmt: skip

# %%
torch.manual_seed(0)
reward_model = preference.reward_model(reference).to(device)
for parameter in reward_model.parameters():
    parameter.requires_grad_(True)  # the copy of the frozen reference trains
started = time.perf_counter()
reward_history = train.fit(
    preference.PairRewards(reward_model, BUDGET.prompt_tokens),
    preference.pair_loader(
        pairs["train"], BUDGET.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    ),
    preference.pair_loader(pairs["val"], 2 * BUDGET.batch_size),
    torch.optim.AdamW(optim.param_groups(reward_model, BUDGET.reward_learning_rate)),
    BUDGET.reward_epochs,
    device=device,
    monitor="val_loss",
    restore_best=True,
    verbose=False,
)
reward_model.eval()


def pair_accuracy(split_pairs: preference.Pairs) -> tuple[float, float]:
    right = preference.rewards(reward_model, split_pairs.chosen) > preference.rewards(
        reward_model, split_pairs.rejected
    )
    return preference.mean_and_error(right.float())


reward_accuracy = {name: pair_accuracy(pairs[name]) for name in ("val", "test")}
print(f"reward model trained in {time.perf_counter() - started:.0f} s")
for name, (accuracy, error) in reward_accuracy.items():
    print(f"  agrees with the gold reward on {accuracy:.1%} ± {error:.1%} of {name} pairs")

# %% [markdown]
# Two samples of the same model for the same prompt often differ little in sentiment, so many
# pairs are close calls that the gold classifier itself decides on a word or two: the reward
# model is a **proxy**, right on the share of held-out pairs printed above and far from all of
# them. RL will optimise it; the gold reward shows what that buys.
#
# ## Measuring a policy
#
# One function measures every policy the same way: a continuation for each of the test
# prompts (the same random generator for every policy), and then the gold reward (mean ± its
# standard error over prompts), the share of continuations the gold classifier calls positive,
# the KL from π_ref, the proxy's reward, how repetitive the text is, and its **bits per byte**
# under π_ref (how surprising the text is to the model it started as: chapter 8's measure).


# %%
def measure(policy: torch.nn.Module, prompts: torch.Tensor = test_prompts) -> dict:
    drawn = preference.sample(
        policy, prompts, BUDGET.new_tokens, end_id=END, generator=torch.Generator().manual_seed(1)
    )
    gold_rewards = gold(drawn)
    reference_logps = preference.samples_logprobs(reference, drawn)
    continuation_bytes = sum(len(t.encode()) for t in drawn.texts(tokenizer, with_prompt=False))
    return {
        "gold": preference.mean_and_error(gold_rewards),
        "positive": preference.mean_and_error((gold_rewards > 0).float()),
        "kl": preference.mean_and_error(
            preference.samples_logprobs(policy, drawn) - reference_logps
        ),
        "proxy": preference.mean_and_error(preference.rewards(reward_model, drawn)),
        "repetition": float(preference.repetition_rate(drawn).mean()),
        "bits_per_byte": float(-reference_logps.sum() / math.log(2) / max(continuation_bytes, 1)),
        "texts": drawn.texts(tokenizer)[:3],
    }


def describe(m: dict) -> str:
    return (
        f"gold {m['gold'][0]:+.2f} ± {m['gold'][1]:.2f}, positive {m['positive'][0]:.1%}, "
        f"KL {m['kl'][0]:.1f} ± {m['kl'][1]:.1f}"
    )


reference_measure = measure(reference)
print("π_ref:", describe(reference_measure))
print(f"       repetition {reference_measure['repetition']:.1%}, "
      f"{reference_measure['bits_per_byte']:.2f} bits per byte under π_ref")  # fmt: skip

# %% [markdown]
# ## Best-of-n: no training at all
#
# Sample *n* continuations from π_ref and keep the one the reward model scores highest. The
# policy this defines is never trained, and its KL from π_ref is known in closed form,
# `log n − (n − 1)/n` {cite:p}`stiennon2020learning` (an upper bound, close when the *n*
# samples rarely repeat). It is the simplest use of a reward model, and a strong baseline.

# %%
started = time.perf_counter()
largest = max(BUDGET.best_of)
candidates = preference.sample(
    reference,
    test_prompts.repeat_interleave(largest, dim=0),
    BUDGET.new_tokens,
    end_id=END,
    generator=torch.Generator().manual_seed(2),
)
candidate_rewards = preference.rewards(reward_model, candidates)
best_of_n = {}
for n in BUDGET.best_of:
    first_n = (torch.arange(len(test_prompts)).unsqueeze(1) * largest + torch.arange(n)).flatten()
    picked = preference.best_of_n(candidates.select(first_n), candidate_rewards[first_n], n)
    gold_rewards = gold(picked)
    best_of_n[n] = {
        "gold": preference.mean_and_error(gold_rewards),
        "positive": preference.mean_and_error((gold_rewards > 0).float()),
        "kl": (preference.best_of_n_kl(n), 0.0),
    }
    print(f"best of {n:>2}: {describe(best_of_n[n])} (bound)")
print(f"{time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## Preferred-FT
#
# The paper's simplest training baseline: supervised fine-tuning on the **chosen**
# continuations only, with the loss on their tokens (chapter 11's masked loss; the prompt is
# not learned). It learns from the better half of the pairs, but nothing tells it what made
# them better.


# %%
def fresh_policy(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    policy = copy.deepcopy(reference)
    for parameter in policy.parameters():
        parameter.requires_grad_(True)
    return policy


def train_by_epochs(policy, wrapped, loader, learning_rate, epochs, **fit_args) -> list[dict]:
    """Train ``wrapped`` one epoch at a time and measure ``policy`` after each."""
    optimizer = torch.optim.AdamW(optim.param_groups(policy, learning_rate, verbose=False))
    path = []
    for _ in range(epochs):
        # full precision: the policy's log-probabilities meet π_ref's, computed in fp32
        train.fit(wrapped, loader, None, optimizer, 1, device=device, mixed_precision=False,
                  verbose=False, **fit_args)  # fmt: skip
        policy.eval()
        path.append(measure(policy))
    return path


runs = {}  # method -> list of runs (one per seed): each a list of measurements along training
started = time.perf_counter()
runs["Preferred-FT"] = []
for seed in range(SEEDS):
    policy = fresh_policy(seed)
    loader = preference.preferred_ft_loader(
        pairs["train"].chosen, BUDGET.batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    path = train_by_epochs(
        policy, policy, loader, BUDGET.pft_learning_rate, BUDGET.pft_epochs,
        loss_fn=instruct.masked_lm_loss,
    )  # fmt: skip
    runs["Preferred-FT"].append(path)
    print(
        f"seed {seed}: "
        + " → ".join(f"{m['positive'][0]:.0%} at KL {m['kl'][0]:.1f}" for m in path)
    )
print(f"{time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## DPO
#
# DPO {cite:p}`rafailov2023direct` starts from the same objective as RLHF — maximise the reward
# while paying β times the KL from π_ref — whose optimum has a closed form: the reward is
# determined by the optimal policy, `r(x, y) = β log π(y|x)/π_ref(y|x)` up to a term of the
# prompt alone. Put that **implicit reward** into the Bradley-Terry loss, and the prompt's term
# cancels in the difference (its equation 7):
#
# `L_DPO = −log σ( β [log π(y_w|x) − log π_ref(y_w|x)] − β [log π(y_l|x) − log π_ref(y_l|x)] )`
#
# No reward model, no sampling while training: the pairs, and π_ref's log-probabilities of
# them computed once. β sets how hard the policy is held to π_ref. By hand, on a few pairs:


# %%
def dpo_loss(policy_w, policy_l, reference_w, reference_l, beta):
    implicit_w = beta * (policy_w - reference_w)  # the implicit reward of the chosen answer
    implicit_l = beta * (policy_l - reference_l)
    return -F.logsigmoid(implicit_w - implicit_l).mean()


train_pairs = pairs["train"]
reference_logps = tuple(
    preference.samples_logprobs(reference, s) for s in (train_pairs.chosen, train_pairs.rejected)
)
policy = fresh_policy(0)
some = slice(0, 16)
with torch.no_grad():  # nudge the policy so that the loss is not at its starting value, log 2
    policy.lm_head.weight.mul_(1.05)
    policy_logps = [
        preference.sequence_logprobs(policy, s.ids[some], s.prompt_length, s.mask[some])
        for s in (train_pairs.chosen, train_pairs.rejected)
    ]
reference_some = [r[some] for r in reference_logps]
ours = dpo_loss(*policy_logps, *reference_some, beta=BUDGET.dpo_beta)
print(f"DPO loss by hand {ours:.5f}, preference.dpo_loss "
      f"{preference.dpo_loss(*policy_logps, *reference_some, beta=BUDGET.dpo_beta):.5f}, "
      f"at π = π_ref: log 2 = {math.log(2):.5f}")  # fmt: skip
assert torch.allclose(ours, preference.dpo_loss(*policy_logps, *reference_some, BUDGET.dpo_beta))

# %% [markdown]
# As for the reward model, the two implicit rewards are the logits of "which was preferred?",
# so `train.fit` trains DPO through `preference.DPOPairs` with plain cross-entropy (equal to the
# loss above; `tests/test_preference.py` checks it against TRL's `DPOTrainer` on the same
# GPT-2 weights and pairs). The budget's seeds at its β, and one seed at other βs to trace
# the frontier, each measured after every epoch:


# %%
def run_dpo(beta: float, seed: int) -> list[dict]:
    policy = fresh_policy(seed)
    loader = preference.pair_loader(
        train_pairs, BUDGET.batch_size, reference_logprobs=reference_logps, shuffle=True,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    wrapped = preference.DPOPairs(policy, BUDGET.prompt_tokens, beta)
    return train_by_epochs(policy, wrapped, loader, BUDGET.dpo_learning_rate, BUDGET.dpo_epochs)


started = time.perf_counter()
dpo_name = f"DPO β={BUDGET.dpo_beta:g}"
runs[dpo_name] = []
for seed in range(SEEDS):
    runs[dpo_name].append(run_dpo(BUDGET.dpo_beta, seed))
    path = runs[dpo_name][-1]
    print(f"{dpo_name}, seed {seed}: "
          + " → ".join(f"{m['positive'][0]:.0%} at KL {m['kl'][0]:.1f}" for m in path))  # fmt: skip
for beta in BUDGET.dpo_other_betas:
    runs[f"DPO β={beta:g}"] = [run_dpo(beta, 0)]
    path = runs[f"DPO β={beta:g}"][0]
    print(f"DPO β={beta:g}, seed 0: "
          + " → ".join(f"{m['positive'][0]:.0%} at KL {m['kl'][0]:.1f}" for m in path))  # fmt: skip
print(f"{time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## RL against the reward model
#
# RLHF's third step optimises the policy against the **reward model** (the proxy; the gold
# reward is never seen), with a penalty for moving away from π_ref. Each step samples a group
# of continuations for each of a few prompts from the *current* policy, scores them with the
# reward model, and turns the scores into **advantages**: each score minus its group's mean,
# divided by the group's standard deviation — GRPO's baseline {cite:p}`shao2024deepseekmath`,
# which needs no value network. The loss raises the log-probability of continuations that did
# better than their group and lowers the others', and adds β times a per-token estimate of the
# KL (`π_ref/π − log(π_ref/π) − 1`, never negative). The samples were just drawn from the
# policy being updated, so PPO's probability ratio is 1 and its clipping does nothing here.
# One step by hand, then against `preference.grpo_loss`:

# %%
policy = fresh_policy(0)
group = pair_prompts[:2].repeat_interleave(BUDGET.rl_group_size, dim=0)
drawn = preference.sample(policy, group, BUDGET.new_tokens, end_id=END, generator=torch.Generator())
scores = preference.rewards(reward_model, drawn).view(2, BUDGET.rl_group_size)
advantages = (
    (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
).flatten()
policy_tokens = preference.token_logprobs(policy, drawn.ids, drawn.prompt_length)
with torch.no_grad():
    reference_tokens = preference.token_logprobs(reference, drawn.ids, drawn.prompt_length)
advantages = advantages.to(policy_tokens.device)
log_ratio = reference_tokens - policy_tokens
per_token = advantages.unsqueeze(1) * policy_tokens - BUDGET.rl_beta * (
    log_ratio.exp() - log_ratio - 1
)
counted = drawn.mask.to(policy_tokens.device).float()
by_hand = -((per_token * counted).sum(1) / counted.sum(1)).mean()
packaged = preference.grpo_loss(
    policy_tokens, reference_tokens, advantages, drawn.mask, BUDGET.rl_beta
)
print(f"GRPO loss by hand {by_hand:.5f}, preference.grpo_loss {packaged:.5f}")
assert torch.allclose(by_hand, packaged)
print(
    "advantages of the first group:",
    [round(a, 2) for a in advantages[: BUDGET.rl_group_size].tolist()],
)

# %% [markdown]
# `preference.train_rl` repeats that step — prompts drawn from the training prompts, samples
# from the current policy, one AdamW step — and measures the policy on the test prompts every
# few steps: the gold reward, and the proxy's, side by side.

# %%
started = time.perf_counter()
rl_name = f"RL β={BUDGET.rl_beta:g}"
runs[rl_name], rl_steps = [], []
for seed in range(SEEDS):
    policy = fresh_policy(seed)
    history = preference.train_rl(
        policy, reference, lambda s: preference.rewards(reward_model, s), pair_prompts,
        new_tokens=BUDGET.new_tokens, end_id=END, steps=RL_STEPS,
        prompts_per_step=BUDGET.rl_prompts_per_step, group_size=BUDGET.rl_group_size,
        beta=BUDGET.rl_beta, learning_rate=BUDGET.rl_learning_rate,
        generator=torch.Generator().manual_seed(seed), evaluate_every=BUDGET.rl_evaluate_every,
        evaluate=measure,
    )  # fmt: skip
    rl_steps = [step for step, _ in history.evaluations[1:]]
    runs[rl_name].append([m for _, m in history.evaluations[1:]])  # step 0 is π_ref
    path = runs[rl_name][-1]
    every_other = path[1::2] if len(path) > 4 else path  # one line per seed
    steps = " → ".join(f"{m['positive'][0]:.0%} at KL {m['kl'][0]:.0f}" for m in every_other)
    print(f"seed {seed} ({history.seconds:.0f} s): {steps}")
print(f"{time.perf_counter() - started:.0f} s")

# %% [markdown]
# ## The reward-KL frontier
#
# Each point is a policy: its gold reward on the test prompts against its KL from π_ref. A
# method is better where its curve lies higher **at the same KL** — further left for the same
# reward. This is the DPO paper's Figure 2 (left).

# %% mystnb={"image": {"alt": "Reward against KL per method, and RL's two rewards by step"}}
colours = {"Preferred-FT": "tab:green", rl_name: "tab:red"}
dpo_colours = iter(["tab:blue", "tab:cyan", "tab:purple", "tab:olive"])
fig, (frontier, parting) = plt.subplots(1, 2, figsize=(11, 4.2))
ref_point = reference_measure["gold"][0]
for method, method_runs in runs.items():
    colour = colours.get(method) or next(dpo_colours)
    for index, path in enumerate(method_runs):
        kls = [0.0] + [m["kl"][0] for m in path]
        golds = [ref_point] + [m["gold"][0] for m in path]
        frontier.plot(kls, golds, "o-", color=colour, alpha=1.0 if index == 0 else 0.35,
                      markersize=3, label=method if index == 0 else None)  # fmt: skip
bon_kl = [0.0] + [best_of_n[n]["kl"][0] for n in BUDGET.best_of]
bon_gold = [ref_point] + [best_of_n[n]["gold"][0] for n in BUDGET.best_of]
frontier.plot(bon_kl, bon_gold, "s--", color="black", markersize=4, label="best-of-n (KL bound)")
frontier.plot([0], [ref_point], "k*", markersize=10, label="π_ref")
frontier.set(xlabel="KL(π ‖ π_ref), nats per continuation", ylabel="gold reward (log-odds)",
             title="Reward against KL on the test prompts")  # fmt: skip
frontier.legend(fontsize=8)
for index, path in enumerate(runs[rl_name]):
    label = index == 0
    parting.plot(
        rl_steps,
        [m["gold"][0] for m in path],
        "o-",
        color="tab:red",
        alpha=1.0 if label else 0.35,
        label="gold reward" if label else None,
    )
    parting.plot(
        rl_steps,
        [m["proxy"][0] for m in path],
        "s--",
        color="tab:gray",
        alpha=1.0 if label else 0.35,
        label="reward model (proxy)" if label else None,
    )
parting.set(xlabel="RL step", ylabel="reward", title=f"{rl_name}: proxy and gold rewards")
parting.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## At equal KL
#
# DPO and RL are compared where every one of their seeded runs was measured: at the largest KL
# that each run reached, provided it lies above each run's first measured point (a run's
# value there is read off its path, linearly between two measured points,
# `preference.value_at_kl`; nothing is read between π_ref and a first point far from it). The
# values are averaged over seeds, and the standard error is over seeds. What the seeds vary is
# the training: the order of the pairs for DPO, the prompts and samples of every step for RL.
# The pairs, the reward model and the test prompts are the same for every seed, so the
# verdict holds for this set of pairs and this reward model; a second draw of them would add
# its own spread. With so few seeds the standard error is itself uncertain: read a difference
# as a verdict only when it exceeds two standard errors. The KL where they are compared is a
# fixed rule applied to the test measurements, not a choice: no recipe depends on it.
# Preferred-FT is set beside best-of-n at its own, smaller KL.

# %%
compared = [dpo_name, rl_name]
lowest = max(path[0]["kl"][0] for method in compared for path in runs[method])
common_kl = min(max(m["kl"][0] for m in path) for method in compared for path in runs[method])


def seed_mean(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) / math.sqrt(len(values))


comparison, rows = {}, []
if common_kl >= lowest and SEEDS > 1:
    for method in compared:
        at = {
            key: seed_mean(
                [
                    preference.value_at_kl([(m["kl"][0], m[key][0]) for m in path], common_kl)
                    for path in runs[method]
                ]
            )
            for key in ("gold", "positive")
        }
        comparison[method] = at
        rows.append(
            [
                method,
                f"{at['gold'][0]:+.2f} ± {at['gold'][1]:.2f}",
                f"{at['positive'][0]:.1%} ± {at['positive'][1]:.1%}",
            ]
        )
    display(
        plots.markdown_table(
            rows, ["method", f"gold reward at KL {common_kl:.1f}", "positive at that KL"]
        )
    )
    verdicts = {}
    for key, name in (("gold", "mean gold log-odds"), ("positive", "share judged positive")):
        gap = comparison[dpo_name][key][0] - comparison[rl_name][key][0]
        gap_error = math.hypot(comparison[dpo_name][key][1], comparison[rl_name][key][1])
        verdict = "above" if gap > 2 * gap_error else "below" if gap < -2 * gap_error else "level"
        verdicts[key] = {"gap": gap, "standard_error": gap_error, "verdict": verdict}
        print(f"{name}, DPO − RL at KL {common_kl:.1f}: {gap:+.3f} ± {gap_error:.3f}: {verdict}")
elif SEEDS < 2:
    verdicts = {}  # one seed: no standard error over seeds, no verdict
    print("one seed per method: no standard error over seeds, so no verdict")
else:
    verdicts = {}
    print(f"no KL was measured in every run ({lowest:.1f} above {common_kl:.1f}): no verdict")
pft_final = [path[-1] for path in runs["Preferred-FT"]]
pft_kl = statistics.fmean(m["kl"][0] for m in pft_final)
pft_gold = statistics.fmean(m["gold"][0] for m in pft_final)
print(f"Preferred-FT ends at KL {pft_kl:.2f} with gold {pft_gold:+.2f} (mean of {SEEDS} seeds);")
for n in BUDGET.best_of:
    print(
        f"  best of {n:>2}: KL ≤ {best_of_n[n]['kl'][0]:.2f}, gold {best_of_n[n]['gold'][0]:+.2f}"
    )

# %% [markdown]
# The two measures need not agree. The mean log-odds grows with how *strongly* positive the
# continuations read; the share with how *many* are positive at all. A method can push some
# continuations far into the positive while leaving others negative, and win the first while
# losing the second: the paper's reward is the first kind, a reader may care about the second.
#
# ## When the proxy and the gold reward part
#
# RL sees only the reward model. Where the two rewards rise together, the proxy is doing its
# job; where the proxy keeps climbing and the gold reward stalls or falls, the policy has found
# what the proxy rewards and the gold classifier does not — over-optimisation
# {cite:p}`gao2023scaling`. Along each RL run, the first measurement where the gold reward has
# fallen more than two standard errors below its best so far while the proxy is still at or
# above its own best:

# %%
parting_points = []
for seed, path in enumerate(runs[rl_name]):
    best_gold, best_proxy, parted = -math.inf, -math.inf, None
    for step, m in zip(rl_steps, path, strict=True):
        if m["gold"][0] < best_gold - 2 * m["gold"][1] and m["proxy"][0] >= best_proxy:
            parted = step
            break
        best_gold, best_proxy = max(best_gold, m["gold"][0]), max(best_proxy, m["proxy"][0])
    parting_points.append(parted)
    where = f"at step {parted}" if parted is not None else f"not within {RL_STEPS} steps"
    last = path[-1]
    print(f"seed {seed}: parted {where}")
    print(f"  at the end: repetition {last['repetition']:.1%}, "
          f"{last['bits_per_byte']:.2f} bits per byte under π_ref")  # fmt: skip
print(f"π_ref: repetition {reference_measure['repetition']:.1%}, "
      f"{reference_measure['bits_per_byte']:.2f} bits per byte")  # fmt: skip

# %% [markdown]
# Read the last two numbers against π_ref's. Where the repetition rate rises and the bits per
# byte under π_ref *fall*, the policy is not writing stranger text but more of the same: the
# few common phrases that please the classifier, over and over — the first sign of a policy
# optimising its reward rather than the task, even while the gold reward still rises. The
# samples below show what it writes.
#
# ## The same prompts, before and after
#
# The first test prompts, continued by π_ref and by the last policy of each seeded method's
# first seed (the same random generator for each):

# %%
seeded = ["Preferred-FT", dpo_name, rl_name]
shown = {"π_ref": reference_measure["texts"]}
shown.update({method: runs[method][0][-1]["texts"] for method in seeded})
for index in range(min(3, len(test_prompts))):
    print(f"prompt: {tokenizer.decode(test_prompts[index].tolist())!r}")
    for method, texts in shown.items():
        print(textwrap.fill(texts[index], 88, initial_indent=f"  {method}: ",
                            subsequent_indent="    "))  # fmt: skip

# %% [markdown]
# ## The record


# %%
def summary(measures: list[dict]) -> list[dict]:
    """The measurements, with the sample texts of the last one only (what a run ends with)."""
    kept = [{k: v for k, v in m.items() if k != "texts"} for m in measures]
    kept[-1]["texts"] = measures[-1]["texts"]
    return kept


chapter_seconds = time.perf_counter() - run.started
dpo_final = [path[-1] for path in runs[dpo_name]]
record_path = results.write_result_record(
    "12_preference_tuning",
    {
        "data": {
            "source": imdb.source.kind,
            "location": runtime.display_path(imdb.source.location),
            "pairs": {name: len(p) for name, p in pairs.items()},
            "dropped_pairs": {name: p.dropped for name, p in pairs.items()},
            "test_prompts": len(test_prompts),
            "prompt_tokens": BUDGET.prompt_tokens,
            "new_tokens": BUDGET.new_tokens,
            "seeds": SEEDS,
        },
        "pretrained": {
            "val_bits_per_byte": info["val_bits_per_byte"],
            "pretrained_here_seconds": chapter_8.seconds,
            "config": pretraining.config_summary(config),
        },
        "judge_val_accuracy": judge.val_accuracy,
        "reward_model": {
            "pair_accuracy": {
                k: {"mean": m, "standard_error": e} for k, (m, e) in reward_accuracy.items()
            },
            "val_loss": reward_history["val_loss"],
        },
        "reference": summary([reference_measure])[0],
        "best_of_n": {str(n): m for n, m in best_of_n.items()},
        "runs": {
            method: [summary(path) for path in method_runs] for method, method_runs in runs.items()
        },
        "rl_steps": rl_steps,
        "at_equal_kl": {
            "kl": common_kl,
            "methods": {
                method: {key: {"mean": m, "standard_error": e} for key, (m, e) in at.items()}
                for method, at in comparison.items()
            },
            "dpo_minus_rl": verdicts,
        },
        "preferred_ft_final": {"kl": pft_kl, "gold": pft_gold},
        "rl_parting_step": parting_points,
        "metrics": {
            "dpo_positive_share": statistics.fmean(m["positive"][0] for m in dpo_final),
            "reference_positive_share": reference_measure["positive"][0],
            "dpo_kl": statistics.fmean(m["kl"][0] for m in dpo_final),
            "test_size": len(test_prompts),
        },
        "chapter_seconds": chapter_seconds,
    },
)
print(f"result record: {runtime.display_path(record_path)}")
if chapter_8.trained_here:
    print(
        f"this run took {chapter_seconds:.0f} s: {chapter_seconds - chapter_8.seconds:.0f} s for "
        f"this chapter and {chapter_8.seconds:.0f} s repeating chapter 8's pre-training"
    )
else:
    print(f"this run took {chapter_seconds:.0f} s; chapter 8's saved model was loaded")

# %% [markdown]
# ## Summary
#
# - Preference data is pairs of answers to the same prompt with the better one marked; here a
#   gold classifier marks them, in RLHF people do.
# - A reward model is a classifier of "which of the two was preferred" whose logits are the two
#   rewards: the Bradley-Terry loss is cross-entropy. It is a proxy, and this one agrees with
#   the gold reward on the share of held-out pairs printed above.
# - DPO trains on the pairs directly: its loss is the same two-class cross-entropy with the
#   implicit rewards `β log π/π_ref` as logits, and needs π_ref's log-probabilities only once.
# - RL against the reward model samples while it trains; a group of samples per prompt is its
#   own baseline (GRPO), and a KL penalty holds it near π_ref. It optimises the proxy, which is
#   not the gold reward.
# - Every method trades reward against KL: compare them at equal KL, on held-out prompts, with
#   seeds — the frontier and the table above.
#
# ## Exercises
#
# 1. Best-of-n against the gold reward instead of the reward model: how much of best-of-16's
#    gap to the gold classifier's own choice is the proxy's fault?
# 2. Train RL with β = 0 (no KL penalty) for the same steps and look at its samples, its
#    repetition and its bits per byte under π_ref.
# 3. DPO with pairs chosen by the reward model instead of the gold reward: where does its
#    frontier land against the gold-labelled DPO's?
# 4. IPO replaces DPO's `−log σ(h)` by `(h − 1/(2β))²` (Azar et al. 2023). Write it as a loss
#    over `DPOPairs`' two implicit rewards and compare its frontier.
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. Replace `candidate_rewards` by `gold(candidates)` in the best-of-n cell; the gold reward
#    of the kept samples is then the ceiling that a perfect reward model would reach at the same
#    KL bound, and the difference to the proxy's row is what the proxy's mistakes cost.
# 2. `preference.train_rl(..., beta=0.0, ...)` with the same arguments; print
#    `history.evaluations[-1][1]["texts"]` and its `repetition` and `bits_per_byte`, and set its
#    KL beside the penalised runs' at the same step: the penalty is what holds the policy near
#    π_ref.
# 3. Sample `first` and `second` for `pair_prompts` as `make_pairs` does, then
#    `proxy_pairs = preference.preference_pairs(first, second, preference.rewards(reward_model,
#    first), preference.rewards(reward_model, second))`; set `train_pairs = proxy_pairs` and
#    recompute `reference_logps` for them (the cell above `dpo_loss`) before calling `run_dpo`
#    with the same β and seeds, since `run_dpo` reads both names.
# 4. With `h = implicit[:, 0] − implicit[:, 1]` (the logits `DPOPairs` returns, already times
#    β), the loss is `((h / beta − 1 / (2 * beta)) ** 2).mean()` — IPO regresses the log-ratio
#    difference to a fixed margin instead of pushing it without bound; pass it as `loss_fn`.
# ```
#
# ## References
#
# - {cite:t}`rafailov2023direct` — DPO, and the IMDB experiment this chapter reproduces.
# - {cite:t}`christiano2017deep` — learning a reward model from human comparisons.
# - {cite:t}`ouyang2022training` — InstructGPT: SFT, a reward model, then PPO with a KL penalty.
# - {cite:t}`stiennon2020learning` — summarisation from human feedback; best-of-n's KL.
# - {cite:t}`gao2023scaling` — scaling laws for reward-model over-optimisation.
# - {cite:t}`shao2024deepseekmath` — GRPO: a group of samples as the baseline.
# - {cite:t}`schulman2017proximal` — PPO.
