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
# # Adapting your GPT: fine-tuning it for sentiment, LoRA on it, and prompting it
#
# Chapter 8 pre-trained a small GPT on IMDB's reviews with their labels thrown away. This
# chapter asks the question the whole series is built on, with a model you built yourself:
# **what does pre-training buy?** The two-step recipe of the source series — pre-train on
# unlabelled text, then adapt with a little labelled data (微调, fine-tuning), or with no change
# to the weights at all (提示学习, prompt learning) — is measured here on one test set. The
# comparison that answers the question is simple: the same architecture, the same labelled
# reviews, the same budget, once starting from chapter 8's weights and once from random ones.
# {cite:t}`howard2018universal` ran it on IMDB with an LSTM and found pre-training on the task's
# own domain worth a large share of the error at a hundred labels.
#
# **What you will learn**
#
# - putting a classification head on a decoder-only model: which position's output to read — the
#   **last real token**, not `[:, -1]`, which for right-padded batches is a pad — against mean
#   pooling, and which layers to train;
# - the central measurement: pre-trained against randomly initialised, at two label budgets, with
#   standard errors that say which differences are real;
# - chapter 6's LoRA on a model it was not written for, on its blocks and on its token
#   embedding: accuracy, trainable share, adapter size, and why a low-rank update may want a
#   different pooling than full fine-tuning;
# - prompting without changing a weight: a cloze template, label words, contextual calibration
#   {cite:p}`zhao2021calibrate` and few-shot demonstrations {cite:p}`brown2020language` — and
#   what a model of this size can and cannot do with them.
#
# **Prerequisites**: chapter 8 (the model, its tokenizer and how it was trained), chapter 6 (LoRA)
# and chapter 4 (fine-tuning a classifier, warm-up). Chapter 8's saved model is loaded; when it
# is missing, its pre-training runs here first, through the same package function.

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
import math
import pprint
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display

from tutorial_lib import (
    data,
    gpt,
    gpt_adapt,
    lm,
    lora,
    metrics,
    optim,
    plots,
    results,
    runtime,
    train,
)
from tutorial_lib.models import count_parameters


# %%
@dataclass(frozen=True)
class Budget:
    label_budgets: tuple[int, int]  # labelled training reviews: a few hundred, a few thousand
    val_reviews: int  # labelled reviews that pick each run's best epoch
    test_reviews: int  # test reviews every accuracy is measured on
    max_tokens: int  # tokens read per review (head and tail, end-of-text included)
    batch_size: int
    epochs: int
    learning_rate: float  # full fine-tuning and the random-initialisation baseline
    lora_learning_rate: float  # LoRA trains few parameters and takes a larger step
    lora_rank: int
    lora_epochs: int  # LoRA moves fewer parameters and needs more steps
    prompt_reviews: int  # test reviews the prompts are measured on
    prompt_review_tokens: int  # tokens of the review being classified inside a prompt
    shots: tuple[int, ...]  # demonstrations per few-shot prompt
    sample_epochs: int  # epochs when the data is the bundled sample
    seeds: int  # runs per arm, per pooling and of LoRA at the small label budget (2 on the sample)


BUDGETS = {
    "smoke": Budget(
        label_budgets=(32, 64),
        val_reviews=32,
        test_reviews=64,
        max_tokens=32,
        batch_size=16,
        epochs=1,
        learning_rate=1e-3,
        lora_learning_rate=3e-3,
        lora_rank=4,
        lora_epochs=1,
        prompt_reviews=32,
        prompt_review_tokens=8,
        shots=(1,),
        sample_epochs=1,
        seeds=2,
    ),
    # cpu: from runs on a 2-core machine with chapter 8's cpu model (500 labels, 128 tokens,
    # test accuracy on 2,000 reviews): lr 3e-4 / 4 epochs 66.3 %, 1e-3 / 8 epochs 70.8 %,
    # 3e-3 / 8 epochs 64.8 %; 256 tokens gave 72.6 % on validation at twice the cost. LoRA
    # (rank 8, 2,400-step model): lr 3e-3 61.3 %, 1e-2 diverged (50.2 %), LayerNorms trained
    # too 60.0 %, against 71.9 % for full fine-tuning. LoRA with the embedding (3,200-step
    # model, test % / best validation %): rank 4, lr 3e-3, 8 epochs 67.3 / 70.4; lr 6e-3
    # 68.6 / 68.6; 16 epochs 68.8 / 72.2; embedding rank 8 67.7 / 72.2 (4.9 % trainable);
    # rank 8 everywhere 66.9 / 68.4 (7.4 %); the embedding alone trained in full 65.9 / 69.0.
    "cpu": Budget(
        label_budgets=(500, 2_000),
        val_reviews=500,
        test_reviews=2_000,
        max_tokens=128,
        batch_size=16,
        epochs=8,
        learning_rate=1e-3,
        lora_learning_rate=3e-3,
        lora_rank=4,
        lora_epochs=16,
        prompt_reviews=1_000,
        prompt_review_tokens=96,
        shots=(2, 4),
        sample_epochs=1,  # the sample only shows that the code runs; a fresh clone's build is short
        seeds=3,
    ),
    "gpu": Budget(
        label_budgets=(500, 5_000),
        val_reviews=1_000,
        test_reviews=25_000,
        max_tokens=512,
        batch_size=32,
        epochs=6,
        learning_rate=3e-4,
        lora_learning_rate=1e-3,
        lora_rank=16,
        lora_epochs=12,
        prompt_reviews=5_000,
        prompt_review_tokens=256,
        shots=(2, 4, 8),
        sample_epochs=3,
        seeds=3,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
BUDGET, device, generator = run.budget, run.device, run.generator
pprint.pp(BUDGET, width=100)

# %% [markdown]
# ## Chapter 8's model
#
# Chapter 8 saved its model and tokenizer under `results/models/`. When they are missing (this
# notebook opened alone, on Colab for instance) or were pre-trained on other data than this run
# reads, the cell below repeats chapter 8's pre-training with the same package function and the
# same recipe (`lm.PRETRAINING_RUNS`), and says so; on the `cpu` profile that adds about the
# time chapter 8's training cell took.

# %%
imdb = data.load_imdb()
saved = lm.pretrained_dir(run.profile)
pretrain_seconds, pretrained_here = 0.0, False
try:
    pretrained, tokenizer, info = lm.load_pretrained(saved)
except FileNotFoundError:
    info = None
if info is not None and info.get("data") != imdb.source.kind:
    runtime.notice(
        f"Chapter 8's saved model was pre-trained on the {info.get('data')}, and this run "
        f"reads the {imdb.source.kind}: pre-training again on the same data."
    )
    info = None
elif info is None:
    runtime.notice(
        f"Chapter 8's model is not at {runtime.display_path(saved)}: running chapter 8's "
        "pre-training first (lm.pretrain_on_imdb), then saving it there."
    )
if info is None:
    started = time.perf_counter()
    pretrained, tokenizer, info = lm.pretrain_on_imdb(
        imdb, lm.PRETRAINING_RUNS[run.profile], generator=generator, verbose=False
    )
    pretrain_seconds, pretrained_here = time.perf_counter() - started, True
    lm.save_pretrained(saved, pretrained, tokenizer, info)
config = pretrained.config
print(
    f"GPT: {config.n_layer} layers, {config.n_embd} wide, context {config.context_length}, "
    f"vocabulary {config.vocab_size:,}; {count_parameters(pretrained):,} parameters"
)
print(f"chapter 8's validation: {info['val_bits_per_byte']:.3f} bits per byte")
pretrained_state = {k: v.clone() for k, v in pretrained.state_dict().items()}  # for every run

# %% [markdown]
# ## The labelled reviews
#
# Chapter 8 pre-trained on all 25,000 training reviews *without* their labels. Here we take
# labels back for a few of them: two label budgets, a few hundred and a few thousand reviews,
# drawn at random from the training split (the smaller inside the larger), a separate set of
# training reviews to pick each run's best epoch, and test reviews — which no step of chapter 8
# or 9 has seen — to measure on. Each review is cut to `max_tokens` tokens, its beginning and its
# end (the verdict of a long review is usually at its end), and closes with the end-of-text
# token, exactly as chapter 8 saw it.

# %%
order = torch.randperm(len(imdb.train.texts), generator=generator).tolist()
small_budget, large_budget = BUDGET.label_budgets
if imdb.source.is_sample:
    # Two seeds even here, so that the averaging below runs wherever the chapter does.
    EPOCHS, SEEDS = BUDGET.sample_epochs, min(BUDGET.seeds, 2)
    LORA_EPOCHS = EPOCHS
    runtime.notice(
        f"The bundled sample holds {len(imdb.train.texts):,} training reviews: the label budgets "
        f"are cut to fit and training runs {EPOCHS} epochs; the figures only show that it runs."
    )
    large_budget = min(large_budget, len(order) // 2)
    small_budget = min(small_budget, large_budget // 2)
else:
    EPOCHS, LORA_EPOCHS, SEEDS = BUDGET.epochs, BUDGET.lora_epochs, BUDGET.seeds
val_count = min(BUDGET.val_reviews, len(order) - large_budget)
labelled = {
    "small": order[:small_budget],
    "large": order[:large_budget],
    "val": order[large_budget : large_budget + val_count],
}
test_order = torch.randperm(len(imdb.test.texts), generator=generator).tolist()
test_index = test_order[: BUDGET.test_reviews]
eot = gpt_adapt.end_of_text_id(tokenizer)


def encoded(split: data.TextDataset, indices: list[int]) -> gpt_adapt.EncodedReviews:
    texts = [split.texts[i] for i in indices]
    ids = gpt_adapt.encode_reviews(tokenizer, texts, BUDGET.max_tokens)
    return gpt_adapt.EncodedReviews(ids, [split.labels[i] for i in indices])


sets = {name: encoded(imdb.train, indices) for name, indices in labelled.items()}
sets["test"] = encoded(imdb.test, test_index)
for name, dataset in sets.items():
    positive = sum(dataset.labels.tolist()) / len(dataset)
    cut = sum(len(ids) == BUDGET.max_tokens for ids in dataset.ids) / len(dataset)
    print(f"{name:>5}: {len(dataset):>6,} reviews, {positive:.0%} positive, {cut:.0%} cut")

# %% [markdown]
# ## Which position to read
#
# A classifier needs one vector per review; a GPT gives one per position. Position *t* has seen
# tokens 0 … *t* only, so the natural summary is the **last real token** — here the end-of-text
# token, which in pre-training was the place to predict what follows a finished review. Batches
# are padded on the right to their longest review. Because attention is causal, padding on the
# right changes none of a review's positions, but it does mean that `hidden[:, -1]` is a pad for
# every review shorter than the longest (the trap of rasbt/LLMs-from-scratch, issue 990). The
# alternative is the **mean** over the real positions. Both, by hand, against the package:


# %%
def last_real_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    last = attention_mask.sum(dim=1) - 1  # right padding: the count of real tokens, minus one
    return hidden[torch.arange(hidden.shape[0]), last]


def mean_of_real_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1)


pretrained.eval()
by_length = sorted(sets["val"].ids, key=len)
reviews = [by_length[int(q * (len(by_length) - 1))] for q in (0.0, 0.05, 0.1, 1.0)]
batch = gpt_adapt.right_padded(reviews, eot)  # review 0 is the shortest review
with torch.no_grad():
    hidden = pretrained.hidden_states(batch["input_ids"])
    alone = pretrained.hidden_states(reviews[0].unsqueeze(0))[0, -1]
mask = batch["attention_mask"]
for ours, pooling in ((last_real_token, "last"), (mean_of_real_tokens, "mean")):
    same = torch.allclose(ours(hidden, mask), gpt_adapt.pool(hidden, mask, pooling), atol=1e-6)
    print(f"our {pooling}-token pooling = gpt_adapt.pool: {same}")
print("real tokens per review in this batch:", mask.sum(dim=1).tolist())
print(
    f"review 0 read alone vs in the batch, last real token: "
    f"{(last_real_token(hidden, mask)[0] - alone).abs().max():.1e}; "
    f"[:, -1]: {(hidden[0, -1] - alone).abs().max():.1e}"
)

# %% [markdown]
# The last real token of a review is the same vector whether the review is read alone or in a
# padded batch; `[:, -1]` differs whenever the review is shorter than its batch's longest.
# `gpt_adapt.GPTClassifier` puts a linear head on one of the two poolings; a test checks that
# padding does not change a review's logits.
#
# ## Fine-tuning, one function for every run
#
# Every run below goes through the same function: a classifier on a copy of a backbone, AdamW
# (decay on matrices only) with linear warm-up over the first 10 % of the steps and linear decay
# — chapter 4's recipe — trained by `train.fit`, which keeps the weights of the epoch with the
# best validation accuracy, and then measured once on the test reviews.


# %%
def backbone(pretrained_weights: bool, seed: int = 0) -> gpt.GPT:
    torch.manual_seed(seed)  # the same random start for every run of one seed
    model = gpt.GPT(config)
    if pretrained_weights:
        model.load_state_dict(pretrained_state)
    return model


def fine_tune(classifier, train_set, learning_rate, seed: int | None = None, epochs=None):
    epochs = epochs or EPOCHS
    shuffling = generator if seed is None else torch.Generator().manual_seed(seed)
    loader = gpt_adapt.review_loader(
        train_set, eot, BUDGET.batch_size, shuffle=True, generator=shuffling
    )
    optimizer, scheduler = optim.adamw_with_linear_warmup(  # chapter 4's recipe
        classifier, learning_rate, epochs * len(loader), verbose=False
    )
    started = time.perf_counter()
    history = train.fit(
        classifier,
        loader,
        gpt_adapt.review_loader(sets["val"], eot, 4 * BUDGET.batch_size),
        optimizer,
        epochs,
        scheduler=scheduler,
        restore_best=True,
        verbose=False,
    )
    seconds = time.perf_counter() - started
    test = train.evaluate(classifier, gpt_adapt.review_loader(sets["test"], eot, 64))
    return {
        "test_accuracy": test["accuracy"],
        "standard_error": metrics.standard_error(test["accuracy"], len(sets["test"])),
        "best_val_accuracy": max(history["val_accuracy"]),
        "trainable": count_parameters(classifier, trainable_only=True),
        "seconds": seconds,
    }


def pm(row: dict) -> str:  # accuracy ± standard error, in points
    return f"{100 * row['test_accuracy']:.1f} ± {100 * row['standard_error']:.1f}"


# %% [markdown]
# ### Pooling, and which layers train
#
# First the two design choices, on the small label budget: last-token against mean pooling
# (everything trains), then training only the top block, the final LayerNorm and the head
# against training everything. One run's validation accuracy moves with its shuffling and its
# head's random start by about as much as the two poolings differ, so each pooling is trained
# `SEEDS` times, with different seeds, and the choice goes by their mean. A row of several runs
# shows the mean of their accuracies; its standard error stays the binomial one of a single
# accuracy, because every seed is measured on the same test reviews.


# %%
def mean_of_runs(runs: list[dict]) -> dict:
    """One row for several seeds: mean accuracies, summed time, each seed's test accuracy."""
    accuracy = sum(r["test_accuracy"] for r in runs) / len(runs)
    return {
        "test_accuracy": accuracy,
        "standard_error": metrics.standard_error(accuracy, len(sets["test"])),
        "best_val_accuracy": sum(r["best_val_accuracy"] for r in runs) / len(runs),
        "trainable": runs[0]["trainable"],
        "seconds": sum(r["seconds"] for r in runs),
        "seed_test_accuracies": [r["test_accuracy"] for r in runs],
        "seed_val_accuracies": [r["best_val_accuracy"] for r in runs],
    }


def seeded_runs(pretrained_weights: bool, pooling: str, train_set) -> list[dict]:
    runs = []
    for seed in range(SEEDS):
        classifier = gpt_adapt.GPTClassifier(backbone(pretrained_weights, seed), pooling=pooling)
        runs.append(fine_tune(classifier, train_set, BUDGET.learning_rate, seed=seed))
    return runs


# %%
pooling_runs = {
    pooling: seeded_runs(True, pooling, sets["small"]) for pooling in gpt_adapt.POOLINGS
}
design = {f"{p} token, all layers": mean_of_runs(runs) for p, runs in pooling_runs.items()}
best_pooling = max(
    gpt_adapt.POOLINGS, key=lambda p: design[f"{p} token, all layers"]["best_val_accuracy"]
)
classifier = gpt_adapt.GPTClassifier(backbone(True), pooling=best_pooling)
gpt_adapt.train_top_blocks(classifier, 1)
design[f"{best_pooling} token, top block + head"] = fine_tune(
    classifier, sets["small"], BUDGET.learning_rate
)
display(plots.markdown_table(
    [(name + (f" ({SEEDS} runs)" if "seed_test_accuracies" in row else ""),
      f"{row['trainable']:,}", f"{100 * row['best_val_accuracy']:.1f}", pm(row))
     for name, row in design.items()],
    ["classifier", "trainable parameters", "best validation %", "test % ± SE"], align="lrrr",
))  # fmt: skip
for pooling in gpt_adapt.POOLINGS:  # how far one run's validation accuracy moves
    seeds = design[f"{pooling} token, all layers"]["seed_val_accuracies"]
    print(f"{pooling} token, best validation % per seed: {[round(100 * a, 1) for a in seeds]}")
print(f"pooling chosen on the mean validation accuracy: {best_pooling} token")

# %% [markdown]
# The pooling for the rest of the chapter is chosen on the validation reviews, not on the test
# reviews, so the test accuracies below stay honest estimates. Whether training the top block
# alone costs accuracy is in the table, within its standard errors: a frozen lower stack keeps
# what pre-training learnt and trains a fraction of the parameters.
#
# ## What pre-training buys
#
# Now the chapter's central table: the same classifier (chosen pooling, every layer training),
# the same labelled reviews, the same recipe and epochs — once from chapter 8's weights and
# once from a random initialisation, at both label budgets. At the small budget, where the
# question is sharpest and a run is cheap, each arm is the mean of `SEEDS` runs, as above (the
# pre-trained arm *is* the chosen pooling's runs above); from random, the seed also sets the
# starting weights.


# %%
central = {("small", "pre-trained"): design[f"{best_pooling} token, all layers"]}
central[("small", "random")] = mean_of_runs(seeded_runs(False, best_pooling, sets["small"]))
for start in ("pre-trained", "random"):
    classifier = gpt_adapt.GPTClassifier(backbone(start == "pre-trained"), pooling=best_pooling)
    single_run = fine_tune(classifier, sets["large"], BUDGET.learning_rate, seed=0)
    central[("large", start)] = mean_of_runs([single_run])
for start in ("pre-trained", "random"):
    seeds = ", ".join(f"{100 * a:.1f}" for a in central[("small", start)]["seed_test_accuracies"])
    print(f"{len(sets['small']):,} labels, {start}, test % per seed: {seeds}")

# %%
rows = []
for budget_name, train_set in (("small", sets["small"]), ("large", sets["large"])):
    ours, scratch = central[(budget_name, "pre-trained")], central[(budget_name, "random")]
    gap = ours["test_accuracy"] - scratch["test_accuracy"]
    gap_error = math.hypot(ours["standard_error"], scratch["standard_error"])
    runs = len(ours["seed_test_accuracies"])
    rows.append((
        f"{len(train_set):,}" + (f" (mean of {runs} runs)" if runs > 1 else ""), pm(ours),
        pm(scratch), f"{100 * gap:+.1f} ± {100 * gap_error:.1f}",
        f"{ours['seconds'] + scratch['seconds']:.0f} s",
    ))  # fmt: skip
display(plots.markdown_table(
    rows, ["labelled reviews", "pre-trained %", "random init %", "gap (points)", "time"],
    align="rrrrr",
))  # fmt: skip

# %%
for budget_name, train_set in (("small", sets["small"]), ("large", sets["large"])):
    ours, scratch = central[(budget_name, "pre-trained")], central[(budget_name, "random")]
    gap = ours["test_accuracy"] - scratch["test_accuracy"]
    gap_error = math.hypot(ours["standard_error"], scratch["standard_error"])
    verdict = (
        "more than two standard errors: pre-training helps"
        if gap > 2 * gap_error
        else "within two standard errors: not distinguishable on this test set"
        if abs(gap) <= 2 * gap_error
        else "random initialisation is better by more than two standard errors"
    )
    print(f"{len(train_set):>6,} labels: {100 * gap:+.1f} points, {verdict}")
small_gap, large_gap = (
    central[(name, "pre-trained")]["test_accuracy"] - central[(name, "random")]["test_accuracy"]
    for name in ("small", "large")
)
print(
    "the gap is "
    + ("larger" if small_gap > large_gap else "not larger")
    + f" with fewer labels ({100 * small_gap:+.1f} vs. {100 * large_gap:+.1f} points)"
)

# %% mystnb={"image": {"alt": "Test accuracy against labelled reviews, pre-trained and random"}}
fig, ax = plt.subplots(figsize=(6, 4), facecolor="white")
sizes = [len(sets["small"]), len(sets["large"])]
for start, style in (("pre-trained", "o-"), ("random", "s--")):
    rows_ = [central[(name, start)] for name in ("small", "large")]
    ax.errorbar(sizes, [100 * r["test_accuracy"] for r in rows_],
                yerr=[200 * r["standard_error"] for r in rows_], fmt=style, capsize=4,
                label=f"{start} initialisation")  # fmt: skip
ax.axhline(50, color="gray", linestyle=":", label="chance")
ax.set(xscale="log", title="What pre-training buys (bars: ±2 standard errors)",
       xlabel="labelled training reviews", ylabel="test accuracy (%)")  # fmt: skip
ax.legend()
plt.show()

# %% [markdown]
# The standard error of each accuracy is the binomial one, √(a(1 − a)/n) on the n test reviews;
# the gap's combines the two as if independent, which is conservative here (both runs are
# measured on the *same* reviews, so their errors are correlated and the true uncertainty of the
# gap is smaller). The seeds printed above the table show the other source of noise: training
# itself. Averaging the small budget's runs shrinks that one, not the test set's; the large
# budget's row is a single run. ULMFiT found the gap largest where labels are scarcest; whether
# this model, pre-trained for minutes, shows that is what the last printed line says.
#
# ## LoRA on your own model
#
# Chapter 6 wrote LoRA for MiniLM; nothing in it is specific to BERT. It wraps the `nn.Linear`
# layers whose names end with the given suffixes: here all four of every block — the fused
# query/key/value projection, attention's output projection, and the two MLP layers — at rank
# `lora_rank`, with the new head trained in full. With so few parameters moving, LoRA takes
# more steps to get where it is going: `lora_epochs` (16 on the `cpu` budget, twice full
# fine-tuning's 8, chosen on the validation reviews).
#
# Where could that fall short? If the design table shows the top block alone well behind full
# fine-tuning, part of the gain comes from the lower layers — and the lowest is the **token
# embedding**, the largest single table of this model (its share is printed below). Full
# fine-tuning moves each sentiment word's row; LoRA on the blocks cannot. An embedding table
# takes a low-rank update too (`lora.LoRAEmbedding`, checked against `peft`'s): every token gets
# `rank` numbers of its own, mixed by one shared matrix of `rank` × width. So two LoRA runs, the
# blocks alone and the blocks plus the embedding (`wte`), at the same rank.
#
# One more choice is LoRA's own: the pooling. Last-token pooling asks the attention layers to
# carry the verdict to one position; full fine-tuning can rewire them for that, a low-rank update
# may not, while mean pooling reads every position as it is. So LoRA on the blocks is trained
# with both poolings (seed 0) and keeps the better on the validation reviews; the chosen pooling
# then runs with the other seeds too, so that LoRA's row is the mean of as many runs as full
# fine-tuning's, with the same seeds, and the gap between them is not one run's luck. The
# embedding run reuses that choice, once.

# %%
BLOCK_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]
total = count_parameters(gpt_adapt.GPTClassifier(backbone(True)))
table = pretrained.wte.weight
print(f"token embedding {tuple(table.shape)}: {table.numel() / total:.0%} of the parameters")


def lora_run(targets: list[str], pooling: str, seed: int = 0) -> dict:
    """LoRA at `lora_rank` on `targets`, the head trained in full; the row and adapter size."""
    classifier = gpt_adapt.GPTClassifier(backbone(True, seed), pooling=pooling)
    rank = BUDGET.lora_rank
    lora.inject_lora(classifier, targets, rank=rank, alpha=2 * rank, modules_to_save=["head"])
    learning_rate = BUDGET.lora_learning_rate
    row = fine_tune(classifier, sets["small"], learning_rate, seed=seed, epochs=LORA_EPOCHS)
    with tempfile.TemporaryDirectory() as folder:
        saved_adapter = lora.save_adapter(classifier, Path(folder) / "adapter.pt")
        return {**row, "pooling": pooling, "adapter_bytes": saved_adapter.stat().st_size}


block_runs = {pooling: lora_run(BLOCK_TARGETS, pooling) for pooling in gpt_adapt.POOLINGS}
lora_pooling = max(gpt_adapt.POOLINGS, key=lambda p: block_runs[p]["best_val_accuracy"])
for pooling, row in block_runs.items():
    print(f"LoRA on the blocks, {pooling} token: best validation "
          f"{100 * row['best_val_accuracy']:.1f} %")  # fmt: skip
print(f"LoRA's pooling, chosen on validation: {lora_pooling} token")
chosen_runs = [block_runs[lora_pooling]]
chosen_runs += [lora_run(BLOCK_TARGETS, lora_pooling, seed) for seed in range(1, SEEDS)]
lora_rows = {
    "LoRA, blocks": {
        **mean_of_runs(chosen_runs),
        "pooling": lora_pooling,
        "adapter_bytes": chosen_runs[0]["adapter_bytes"],
    },
    "LoRA, blocks + embedding": lora_run([*BLOCK_TARGETS, "wte"], lora_pooling),
}
per_seed = ", ".join(f"{100 * r['test_accuracy']:.1f}" for r in chosen_runs)
print(f"LoRA on the blocks, {lora_pooling} token, test % per seed: {per_seed}")

# %%
full_row = central[("small", "pre-trained")]
full_runs = len(full_row["seed_test_accuracies"])
full_label = f"full fine-tuning, {best_pooling} token" + (
    f" (mean of {full_runs} runs)" if full_runs > 1 else ""
)
# parameters(), not the state dict: the tied output matrix is the token embedding, stored once
model_bytes = sum(p.numel() * p.element_size() for p in pretrained.parameters())
rows = [(full_label, f"{full_row['trainable']:,}", f"{full_row['trainable'] / total:.1%}",
         f"{model_bytes / 1e6:.1f} MB", pm(full_row))]  # fmt: skip
same_pooling = design[f"{lora_pooling} token, all layers"]
if lora_pooling != best_pooling:  # full fine-tuning with LoRA's pooling, from the design table
    same_runs = len(same_pooling["seed_test_accuracies"])
    rows.append((f"full fine-tuning, {lora_pooling} token (mean of {same_runs} runs)",
                 f"{same_pooling['trainable']:,}", f"{same_pooling['trainable'] / total:.1%}",
                 f"{model_bytes / 1e6:.1f} MB", pm(same_pooling)))  # fmt: skip
for name, row in lora_rows.items():
    runs = len(row.get("seed_test_accuracies", [None]))
    rows.append((f"{name}, rank {BUDGET.lora_rank}, {row['pooling']} token"
                 + (f" (mean of {runs} runs)" if runs > 1 else ""),
                 f"{row['trainable']:,}", f"{row['trainable'] / total:.1%}",
                 f"{row['adapter_bytes'] / 1e3:.0f} kB", pm(row)))  # fmt: skip
display(plots.markdown_table(
    rows, ["method", "trainable", "share", "to store per task", "test % ± SE"], align="lrrrr"
))  # fmt: skip


def gap_line(full: dict, full_name: str, row: dict, name: str) -> str:
    gap = full["test_accuracy"] - row["test_accuracy"]
    error = math.hypot(full["standard_error"], row["standard_error"])
    verdict = (
        "within two standard errors: not distinguishable here"
        if abs(gap) <= 2 * error
        else "more than two standard errors apart"
    )
    return f"{full_name} minus {name}: {100 * gap:+.1f} ± {100 * error:.1f} points\n    ({verdict})"


for name, row in lora_rows.items():
    print(gap_line(full_row, f"full ({best_pooling})", row, name))
    if lora_pooling != best_pooling:
        print(gap_line(same_pooling, f"full ({lora_pooling})", row, name))

# %% [markdown]
# One caution about the embedding's adapter: GPT's token embedding is *tied* to its output layer
# (chapter 8), one matrix for both. Unmerged, the adapter changes only the lookup; merged
# (`merge()`), it would change the output layer too. A classifier never uses the output layer,
# so here the two are the same model, but a merged adapter on the embedding of a model that
# still generates text would change what it writes.

# %% [markdown]
# ## Beside the book's other classifiers
#
# Chapters 4 and 5 measured MiniLM — pre-trained by others on a billion sentence pairs — and a
# TextCNN on the same task. Their published `cpu` records are quoted below as they were
# measured: with **their** label budgets and test sets, so the rows are comparable in kind, not to
# the decimal.

# %%
quoted = []
for chapter, name in (("04_imdb_bert", "MiniLM fine-tuned (ch. 4)"),
                      ("05_imdb_textcnn", "TextCNN (ch. 5)")):  # fmt: skip
    record = results.read_published_record(chapter, "cpu")
    if record is None:
        print(f"{chapter}: no published record in this checkout")
        continue
    test_accuracy, test_size = record["metrics"]["test_accuracy"], record["metrics"]["test_size"]
    error = metrics.standard_error(test_accuracy, test_size)
    quoted.append((name, f"{record['data']['train']:,}", f"{test_size:,}",
                   f"{100 * test_accuracy:.1f} ± {100 * error:.1f}"))  # fmt: skip
    if chapter == "05_imdb_textcnn":
        bag = record["metrics"]["bag_of_ngrams_test_accuracy"]
        quoted.append(
            (
                "bag of n-grams (ch. 5)",
                f"{record['data']['train']:,}",
                f"{test_size:,}",
                f"{100 * bag:.1f} ± {100 * metrics.standard_error(bag, test_size):.1f}",
            )
        )
for budget_name, train_set in (("small", sets["small"]), ("large", sets["large"])):
    quoted.append(
        (
            "our GPT, fine-tuned (this chapter)",
            f"{len(train_set):,}",
            f"{len(sets['test']):,}",
            pm(central[(budget_name, "pre-trained")]),
        )
    )
display(plots.markdown_table(
    quoted, ["model", "labelled reviews", "test reviews", "test % ± SE"], align="lrrr"
))  # fmt: skip

# %% [markdown]
# ## Prompting, without changing a weight
#
# A language model can also be asked. Append a template to the review and compare the
# probabilities of **label words** for the next token: if "… Overall, the movie was" is more
# likely followed by " great" than by " terrible", call the review positive. Nothing is trained;
# the labels only measure. Each class may have several words (its score is the summed
# probability of its words); `gpt_adapt.continuation_log_probs` scores a word of several tokens
# by the sum of their log-probabilities.

# %%
template = "\nOverall, the movie was"
verbalizer = {" terrible": 0, " bad": 0, " great": 1, " good": 1}
word_ids = [tokenizer.encode(word).ids for word in verbalizer]
word_classes = list(verbalizer.values())
print(
    "tokens per label word:",
    ", ".join(f"{w.strip()} {len(ids)}" for w, ids in zip(verbalizer, word_ids, strict=True)),
)
prompt_index = test_index[: BUDGET.prompt_reviews]
prompt_texts = [imdb.test.texts[i] for i in prompt_index]
prompt_labels = torch.tensor([imdb.test.labels[i] for i in prompt_index])
content_free = ["N/A", "", "[MASK]"]  # Zhao et al. (2021)'s inputs that carry no sentiment


def prompt_accuracy(demonstrations=(), demonstration_tokens=None):
    def scores(texts):
        prompts = [
            gpt_adapt.encode_prompt(tokenizer, text, template, BUDGET.prompt_review_tokens,
                                    demonstrations, demonstration_tokens)
            for text in texts
        ]  # fmt: skip
        words = gpt_adapt.continuation_log_probs(pretrained, prompts, word_ids, batch_size=64)
        return gpt_adapt.class_log_probs(words, word_classes)

    raw = scores(prompt_texts)
    calibrated = gpt_adapt.calibrate(raw, scores(content_free))
    out = {}
    for name, class_scores in (("raw", raw), ("calibrated", calibrated)):
        predictions = class_scores.argmax(dim=1)
        accuracy = (predictions == prompt_labels).float().mean().item()
        out[name] = {
            "accuracy": accuracy,
            "standard_error": metrics.standard_error(accuracy, len(prompt_labels)),
            "positive_share": predictions.float().mean().item(),
        }
    return out


started = time.perf_counter()
prompting = {"zero-shot": prompt_accuracy()}
print(f"zero-shot on {len(prompt_texts):,} reviews in {time.perf_counter() - started:.0f} s")

# %% [markdown]
# **Few-shot** prompts put k labelled reviews, each followed by the template and its label word,
# before the review to classify {cite:p}`brown2020language`. The context is only
# `context_length` tokens, so the demonstrations share what the review being classified leaves;
# they are drawn from the small labelled set, balanced between the classes, in a random order.
# A k that leaves fewer than 8 tokens per demonstration is skipped.

# %%
positive_words = [w for w, c in verbalizer.items() if c == 1]
negative_words = [w for w, c in verbalizer.items() if c == 0]
longest_word = max(len(ids) for ids in word_ids)
overhead = len(tokenizer.encode(template).ids) + longest_word + len(tokenizer.encode("\n\n").ids)
query_length = BUDGET.prompt_review_tokens + len(tokenizer.encode(template).ids)
room = config.context_length - query_length - (longest_word - 1)  # what the demonstrations share
by_label = {c: [i for i in labelled["small"] if imdb.train.labels[i] == c] for c in (0, 1)}
for k in BUDGET.shots:
    demo_tokens = room // k - overhead
    if demo_tokens < 8:
        print(f"k = {k}: {demo_tokens} tokens per demonstration would be left; skipped")
        continue
    picks = [by_label[j % 2][j // 2] for j in range(k)]
    order_k = torch.randperm(k, generator=torch.Generator().manual_seed(k)).tolist()
    demos = [(imdb.train.texts[picks[j]],
              positive_words[0] if imdb.train.labels[picks[j]] else negative_words[0])
             for j in order_k]  # fmt: skip
    started = time.perf_counter()
    prompting[f"{k}-shot ({demo_tokens} tokens each)"] = prompt_accuracy(demos, demo_tokens)
    print(f"k = {k}: {time.perf_counter() - started:.0f} s")

# %%
display(plots.markdown_table(
    [(name, f"{100 * r['raw']['accuracy']:.1f} ± {100 * r['raw']['standard_error']:.1f}",
      f"{r['raw']['positive_share']:.0%}",
      f"{100 * r['calibrated']['accuracy']:.1f} ± {100 * r['calibrated']['standard_error']:.1f}",
      f"{r['calibrated']['positive_share']:.0%}")
     for name, r in prompting.items()],
    ["prompt", "accuracy %", "called positive", "calibrated %", "called positive"],
    align="lrrrr",
))  # fmt: skip
zero = prompting["zero-shot"]
gain = zero["calibrated"]["accuracy"] - zero["raw"]["accuracy"]
gain_error = math.hypot(zero["raw"]["standard_error"], zero["calibrated"]["standard_error"])
print(
    f"zero-shot: {100 * zero['raw']['accuracy']:.1f} % raw, "
    f"{100 * zero['calibrated']['accuracy']:.1f} % calibrated; calibration "
    + (
        "helps by more than two standard errors"
        if gain > 2 * gain_error
        else "hurts by more than two standard errors"
        if gain < -2 * gain_error
        else "makes no difference this test set can resolve"
    )
)
best_prompt = max(r["calibrated"]["accuracy"] for r in prompting.values())
best_tuned = central[("small", "pre-trained")]["test_accuracy"]
print(
    f"best prompt {100 * best_prompt:.1f} % against fine-tuning on "
    f"{len(sets['small']):,} labels {100 * best_tuned:.1f} % (chance: 50 %)"
)

# %% [markdown]
# "Called positive" shows the model's bias: a raw prompt often calls nearly every review one
# class, because " great" or " bad" is simply a likelier word after the template whatever came
# before. Calibration divides that prior out. Whatever the printed figures, keep the scale in
# mind: {cite:t}`brown2020language` found in-context learning to emerge with model size, weak
# below a billion parameters and strong at 175 billion; this model has a few million, trained on
# a few million tokens. Prompting can only ask for what pre-training put there; fine-tuning
# reads the same features through a trained head, and the last printed line compares the two.
#
# ## The result record

# %%
chapter_seconds = run.seconds()
record_path = results.write_result_record(
    "09_adapting_gpt",
    {
        "data": {
            "source": imdb.source.kind,
            "location": runtime.display_path(imdb.source.location),
            "label_budgets": [len(sets["small"]), len(sets["large"])],
            "val_reviews": len(sets["val"]),
            "test_reviews": len(sets["test"]),
            "max_tokens": BUDGET.max_tokens,
        },
        "pretrained": {
            "val_bits_per_byte": info["val_bits_per_byte"],
            "pretrained_here_seconds": pretrain_seconds,
            "config": lm.config_summary(config),
        },
        "design": design,
        "pooling": best_pooling,
        "central": {f"{budget} / {start}": row for (budget, start), row in central.items()},
        "lora": {name: {**row, "rank": BUDGET.lora_rank} for name, row in lora_rows.items()},
        "lora_pooling_val_accuracy": {p: r["best_val_accuracy"] for p, r in block_runs.items()},
        "prompting": prompting,
        "metrics": {
            "test_accuracy": central[("large", "pre-trained")]["test_accuracy"],
            "test_size": len(sets["test"]),
            "small_budget_gap": central[("small", "pre-trained")]["test_accuracy"]
            - central[("small", "random")]["test_accuracy"],
        },
        "chapter_seconds": chapter_seconds,
    },
)
print(f"result record: {runtime.display_path(record_path)}")
if pretrained_here:
    print(
        f"this run took {chapter_seconds:.0f} s: {chapter_seconds - pretrain_seconds:.0f} s for "
        f"this chapter and {pretrain_seconds:.0f} s repeating chapter 8's pre-training"
    )
else:
    print(f"this run took {chapter_seconds:.0f} s; chapter 8's saved model was loaded")

# %% [markdown]
# ## Summary
#
# - A decoder-only model classifies from one pooled position; with right padding that must be
#   the last **real** token (or the mean of the real ones), never `[:, -1]`.
# - The same architecture from random weights, on the same labels and budget, is the fair
#   yardstick for pre-training; the table above measures the gap at two label budgets with its
#   standard error.
# - Chapter 6's LoRA adapts this GPT, training a few percent of its parameters and storing a
#   small adapter per task; on a model this small, adapting the token embedding as well is
#   what the table above measures the worth of.
# - Prompting a small model asks it for what pre-training gave it; calibration removes the label
#   words' prior; in-context learning needs far more scale than a laptop can train.
#
# ## Exercises
#
# 1. Fine-tune with `hidden[:, -1]` instead of the last real token (write a tiny `nn.Module`
#    that does it) and measure what the trap costs.
# 2. Vary the label budget further down (50, 100 reviews) and plot the pre-trained and random
#    accuracies against it.
# 3. Try other verbalizers (" excellent" / " awful") and another template, and see how much the
#    zero-shot accuracy moves — and whether calibration makes it move less.
# 4. Give LoRA on the blocks the pooling it did not choose, at rank 16 instead of 4, and see how
#    much of its gap to full fine-tuning with that pooling a four times larger adapter closes.
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. `class LastColumn(nn.Module)` whose `forward(input_ids, attention_mask)` returns
#    `head(backbone.hidden_states(input_ids)[:, -1])`; pass it to `fine_tune`. Shorter reviews
#    then read pad positions, which mostly hurts accuracy on batches of mixed lengths.
# 2. Loop over `order[:n]` for each n, build `encoded(imdb.train, ...)`, and call `fine_tune` on a
#    pre-trained and a random `backbone`; the gap usually widens as n shrinks.
# 3. Change `verbalizer` and `template` and rerun the prompting cells; Zhao et al. (2021) found
#    calibration reduces the variance across such choices.
# 4. `lora_run` reads the rank from `BUDGET`: set
#    `BUDGET = dataclasses.replace(BUDGET, lora_rank=16)` (after `import dataclasses`), call
#    `lora_run(BLOCK_TARGETS, pooling)` with the other pooling, and compare its test accuracy with
#    the design table's row for that pooling; the trainable parameters of the blocks grow 4×.
# ```
#
# ## References
#
# - {cite:t}`howard2018universal` — ULMFiT: pre-train on the task's domain, then fine-tune.
# - {cite:t}`radford2018improving` — GPT-1: a decoder pre-trained, then fine-tuned with a head on
#   the last token.
# - {cite:t}`hu2022lora` — LoRA.
# - {cite:t}`brown2020language` — GPT-3: in-context (few-shot) learning, growing with scale.
# - {cite:t}`zhao2021calibrate` — contextual calibration of prompts.
# - {cite:t}`raschka2024build` — a GPT fine-tuned for classification, written to be read.
# - {cite:t}`maas2011learning` — the IMDB reviews.
