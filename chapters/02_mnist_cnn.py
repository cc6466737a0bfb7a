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
# # A CNN for MNIST, and the training loop of this book
#
# Chapter 1 took one convolution apart. Here we stack them into the source series' network —
# conv32, pool, conv64, pool, fc128, fc10 — and train it on the real MNIST digits. Along the way
# we meet the one training loop that every later chapter reuses, look inside the trained network,
# and take a first step towards fine-tuning: reusing what a network learned on some digits to
# learn others from a handful of examples.
#
# **What you will learn**
#
# - how MNIST is really split (60,000 training and 10,000 test images — not 70,000 training
#   images as the source series says) and how to carve a validation set out of the training part;
# - why and how inputs are normalised, with statistics computed from the data;
# - the shape of a batch after every layer, and where the parameters are;
# - the training step and the epoch (轮次) loop, written by hand and run, and then
#   `tutorial_lib.train.fit` as the same loop with the plumbing added (progress, history, early
#   stopping, checkpoints);
# - the update rules of SGD with momentum (动量), Adam and AdamW, each checked against
#   `torch.optim`; one-cycle (单周期) and linear warm-up (学习率预热) learning-rate schedules as
#   formulas;
# - reading a trained classifier: curves, confusion matrix, precision (精确率), recall (召回率), F1
#   and ROC/AUC, mistakes, filters and feature maps; binary cross-entropy (二元交叉熵) as two-class
#   cross-entropy (交叉熵);
# - how the choice of optimiser changes training, measured rather than asserted;
# - fine-tuning with few examples: frozen features vs. full fine-tuning vs. training from scratch;
# - saving a model and loading it back to classify a single image.
#
# **Prerequisites**: chapter 1 (convolution, pooling, output sizes, cross-entropy), and the idea
# of gradient descent.
#
# **Time**: the cell that declares the budget prints how long this chapter's `cpu` run took
# when its record was published, in reference minutes ({doc}`../book/setup`): on a machine
# twice as fast as the reference, expect half. `TUTORIAL_PROFILE=smoke` runs every cell in a
# minute or two, with numbers that mean nothing.

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
import inspect
import math
import pprint
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import display
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score, roc_curve
from torch import nn
from torch.utils.data import DataLoader
from transformers import get_linear_schedule_with_warmup

from tutorial_lib import data, metrics, optim, plots, results, runtime, train
from tutorial_lib.models import MnistCNN, count_parameters, freeze


# %%
@dataclass(frozen=True)
class Budget:
    train_size: int | None  # training images after the validation split (None: all of them)
    val_size: int
    test_size: int | None  # None: the whole test set
    manual_train_size: int  # images for the hand-written loop and its check against fit
    epochs: int
    compare_train_size: int  # images per run in the optimiser comparison
    compare_epochs: int
    pretrain_epochs: int  # digits 0-4, for the fine-tuning experiment
    shots_per_class: int  # labelled examples per new digit (5-9)
    finetune_epochs: int


BUDGETS = {
    "smoke": Budget(
        train_size=512,
        val_size=256,
        test_size=512,
        manual_train_size=256,
        epochs=1,
        compare_train_size=256,
        compare_epochs=1,
        pretrain_epochs=1,
        shots_per_class=5,
        finetune_epochs=3,
    ),
    # cpu: sizes capped explicitly at MNIST's official 55,000 + 5,000 / 10,000, so the chapter's
    # time does not depend on which copy of the data a machine happens to have
    "cpu": Budget(
        train_size=55_000,
        val_size=5_000,
        test_size=10_000,
        manual_train_size=6_000,
        # 3 epochs: 99.28 % (49 s of training at 3,357 images/s, chapter 92 s); 5 epochs:
        # 99.45 % (163 s at 1,701 images/s on a machine half as fast, chapter 246 s)
        epochs=5,
        compare_train_size=6_000,
        compare_epochs=1,
        pretrain_epochs=1,
        shots_per_class=10,
        finetune_epochs=40,
    ),
    "gpu": Budget(
        train_size=None,
        val_size=5_000,
        test_size=None,
        manual_train_size=12_000,
        epochs=8,
        compare_train_size=20_000,
        compare_epochs=2,
        pretrain_epochs=3,
        shots_per_class=10,
        finetune_epochs=40,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(results.published_time(results.read_published_record("02_mnist_cnn", run.profile)))
BUDGET, device, generator = run.budget, run.device, run.generator
BATCH_SIZE = 64  # the source series' batch size
pprint.pp(BUDGET, width=100)  # one field a line when the budget is long

# %% [markdown]
# The `gpu` budget, chosen on a machine with CUDA unless `TUTORIAL_PROFILE` says otherwise, trains
# on every training image left after validation for 8 epochs and gives the optimiser comparison and
# the pre-training more data and epochs.
#
# The training cells run unchanged on N GPUs: `train.fit` recognises `torchrun` and trains
# with DDP, one process per GPU, and a global batch N times the one here; the schedules below are
# sized with `train.optimizer_steps_per_epoch`, which counts this process's share of the batches,
# and a global batch N times larger usually wants its learning rate scaled and warmed up
# ({doc}`07_scaling_out`). This notebook as a whole is not a `torchrun` script: every process
# would print, plot and write the result record. Chapter 7 writes such a script,
# `train_mnist.py` (this chapter's network trained with `fit`; only rank 0 prints), and starts it
# with `torchrun --standalone --nproc_per_node=N train_mnist.py`.

# %% [markdown]
# ## The data
#
# MNIST holds 70,000 images in all: **60,000 for training and 10,000 for testing**, each a
# $28 \times 28$ grey-level digit. The loader prints where it found them and how many there are.

# %%
mnist = data.load_mnist()

# %% [markdown]
# The test set is for the final score only. To choose epochs, compare optimisers and stop early
# we need data the model does not train on, so we set aside a stratified **validation** split from
# the training images (same digit proportions as the whole).

# %%
splits = data.budget_splits(mnist, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
train_images, val_images, test_images = splits.train, splits.val, splits.test
print(splits.describe())

# %% [markdown]
# ### Normalisation
#
# Pixels are stored as integers 0–255. `ToDtype(..., scale=True)` maps them to $[0, 1]$; then
# `Normalize(mean, std)` subtracts the mean and divides by the standard deviation, so inputs are
# centred near 0 with unit spread — the scale at which default weight initialisations and
# learning rates work best. The source series normalises with mean 0.5 and std 0.5 while saying
# pixels end in $[0, 1]$; in fact that maps them to $[-1, 1]$, and MNIST's real statistics are
# different. We compute them from the training images:

# %%
mean, std = data.channel_stats(train_images.images)
print(
    f"training pixels: mean {mean[0]:.4f}, std {std[0]:.4f} "
    f"(the constants in tutorial_lib: {data.MNIST_MEAN[0]}, {data.MNIST_STD[0]})"
)
transform = data.mnist_transform()
example = transform(train_images.images[0])
print(
    f"after the transform: dtype {example.dtype}, range [{example.min():.2f}, {example.max():.2f}]"
)

# %% [markdown]
# (Under the `smoke` profile the subset is small and its statistics wander a little; on the full
# 60,000 images they are 0.1307 and 0.3081, which the test suite checks.)

# %% mystnb={"image": {"alt": "Sixteen MNIST training digits, each titled with its label"}}
train_set = train_images.with_transform(transform)
val_set = val_images.with_transform(transform)
test_set = test_images.with_transform(transform)
train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
val_loader = DataLoader(val_set, batch_size=512)
test_loader = DataLoader(test_set, batch_size=512)

fig = plots.image_grid(
    [train_images.images[i] for i in range(16)],
    titles=[f"label {train_images.labels[i].item()}" for i in range(16)],
    suptitle="The first training digits",
    size=1.2,
)
plt.show()

# %% [markdown]
# ## The network
#
# The network is the source series' design. It lives in `tutorial_lib.models`; this is its
# source:

# %%
plots.show_source(MnistCNN)

# %% [markdown]
# Following one batch through the layers shows what each does to the shape: the convolutions
# (padding 1) keep $28 \times 28$ and change the channel count, each pooling halves the size, and
# `Flatten` turns $64 \times 7 \times 7$ into 3,136 numbers for the linear layers.

# %%
model = MnistCNN()
batch, _ = next(iter(train_loader))
x = batch
rows = [["input", f"`{tuple(x.shape)}`", ""]]
for layer in [*model.features, *model.classifier]:
    x = layer(x)
    rows.append([f"`{layer}`", f"`{tuple(x.shape)}`", f"{count_parameters(layer):,}"])
rows.append(["total", "", f"{count_parameters(model):,}"])
display(plots.markdown_table(rows, ["layer", "output shape", "parameters"], align="llr"))

# %% [markdown]
# ## The training loop, by hand
#
# Training is one step repeated: compute the network's scores for a batch (the **forward pass**),
# measure how wrong they are with the loss, compute the gradient of the loss with respect to every
# parameter (the **backward pass**), and move each parameter a little against its gradient (the
# optimiser's **step**). In PyTorch each of these is one line:

# %%
loss_fn = nn.CrossEntropyLoss()


def training_step(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer
) -> tuple[float, int]:
    """One optimiser step on one batch; returns the batch's mean loss and its correct count."""
    logits = model(images)  # forward pass: (N, 10) class scores
    loss = loss_fn(logits, labels)  # mean cross-entropy over the batch
    optimizer.zero_grad()  # .grad accumulates across backward calls: clear the last step's
    loss.backward()  # autograd fills p.grad = d(loss)/dp for every parameter p
    optimizer.step()  # p <- p - (update computed from p.grad by the optimiser's rule)
    return loss.item(), int((logits.argmax(dim=1) == labels).sum())


runtime.seed_everything(0)
model = MnistCNN()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
images, labels = next(iter(train_loader))
for step in range(5):
    step_loss, _ = training_step(model, images, labels, optimizer)
    print(f"step {step}: loss on this batch before the update {step_loss:.4f}")

# %% [markdown]
# The loss on the same batch falls step by step: the mechanics work. An **epoch** is one pass over
# the training set, one step per batch, with the network in training mode (`model.train()`, which
# matters for layers that behave differently in training, such as dropout, explained in chapter 4,
# and batch normalisation, in chapter 3; this network has neither); evaluation runs in
# `model.eval()` mode without
# building a graph for gradients (`torch.no_grad()`):


# %%
def train_one_epoch(
    model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer
) -> tuple[float, float]:
    """One pass over loader; returns the mean training loss and accuracy."""
    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in loader:
        images, labels = images.to(device), labels.to(device)
        batch_loss, batch_correct = training_step(model, images, labels, optimizer)
        loss_sum += batch_loss * len(labels)  # weight by batch size: the last batch may be smaller
        correct += batch_correct
        seen += len(labels)
    return loss_sum / seen, correct / seen


@torch.no_grad()
def accuracy_on(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    for images, labels in loader:
        correct += int((model(images.to(device)).argmax(dim=1) == labels.to(device)).sum())
    return correct / len(loader.dataset)


# %%
manual_set = data.subset(train_images, BUDGET.manual_train_size, seed=2).with_transform(transform)


def manual_loader() -> DataLoader:  # the same shuffled order every time it is called
    return DataLoader(
        manual_set, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


runtime.seed_everything(0)
manual_model = MnistCNN().to(device)
manual_optimizer = torch.optim.SGD(manual_model.parameters(), lr=0.05, momentum=0.9)
started = time.perf_counter()
manual_loss, manual_accuracy = train_one_epoch(manual_model, manual_loader(), manual_optimizer)
print(
    f"one epoch on {len(manual_set):,} images in {time.perf_counter() - started:.1f} s:\n"
    f"train loss {manual_loss:.4f}, train accuracy {100 * manual_accuracy:.2f}%, "
    f"validation accuracy {100 * accuracy_on(manual_model, val_loader):.2f}%"
)

# %% [markdown]
# That is a complete training loop. `tutorial_lib.train.fit`, which every later chapter uses, is
# this same loop with the plumbing a real run needs: a progress bar and a history of loss, accuracy,
# learning rate and speed per epoch; validation after every epoch; a learning-rate scheduler
# stepped after every optimiser step; early stopping with the best weights restored; checkpoints
# and resuming; gradient clipping; mixed precision (on CUDA, or on a CPU with native bf16); and
# batches that are either
# `(inputs, labels)` pairs or the dicts of Hugging Face tokenizers. Its signature lists them:

# %%
for name, parameter in inspect.signature(train.fit).parameters.items():
    has_default = parameter.default is not inspect.Parameter.empty
    print(f"  {name}" + (f" = {parameter.default!r}" if has_default else ""))

# %% [markdown]
# "The same loop" is a claim we can check: train a network with the same seed, the same data order
# and the same optimiser through `fit` for one epoch, and compare its weights with those of our
# loop above. On a GPU `fit` would switch on mixed precision by default, which our loop does not
# have, so we switch it off (`mixed_precision=False`) to compare the same arithmetic.

# %%
runtime.seed_everything(0)
fit_model = MnistCNN()
fit_optimizer = torch.optim.SGD(fit_model.parameters(), lr=0.05, momentum=0.9)
_ = train.fit(  # only the weights are compared; the history is not needed
    fit_model,
    manual_loader(),
    None,
    fit_optimizer,
    epochs=1,
    device=device,
    monitor="train_loss",
    mixed_precision=False,  # our loop computes in fp32; so must fit, for the weights to agree
    verbose=False,
)
weight_difference = max(
    (ours - fits).abs().max().item()
    for ours, fits in zip(manual_model.parameters(), fit_model.parameters(), strict=True)
)
print(
    f"largest difference between the weights after our loop and after train.fit: "
    f"{weight_difference:.1e}"
)

# %% [markdown]
# Each optimiser step of `fit` is one call of `train.train_step`: the forward pass, the loss, the
# backward pass and the optimiser's step of our `training_step`, plus what `fit`'s options need —
# several micro-batches per step (gradient accumulation), autocast and a gradient scaler (mixed
# precision), clipping, the scheduler, and the averaging between processes of chapter 7, all
# asked of the `Strategy` it is given:

# %%
plots.show_source(train.train_step)

# %% [markdown]
# Given one batch and none of those options, it is our step; checked on one batch from the same
# starting weights:

# %%
runtime.seed_everything(0)
our_model, package_model = MnistCNN().to(device), MnistCNN().to(device)
package_model.load_state_dict(our_model.state_dict())
our_sgd = torch.optim.SGD(our_model.parameters(), lr=0.05, momentum=0.9)
package_sgd = torch.optim.SGD(package_model.parameters(), lr=0.05, momentum=0.9)
images, labels = next(iter(manual_loader()))
our_loss, _ = training_step(our_model, images.to(device), labels.to(device), our_sgd)
full_precision = train.Strategy.from_environment(device, mixed_precision=False)
package_step = train.train_step(package_model, [(images, labels)], package_sgd, full_precision)
step_difference = max(
    (ours - package).abs().max().item()
    for ours, package in zip(our_model.parameters(), package_model.parameters(), strict=True)
)
print(f"loss: our step {our_loss:.6f}, train.train_step {package_step.loss:.6f}")
print(f"largest difference between the weights after the two steps: {step_difference:.1e}")

# %% [markdown]
# For the real run we train with AdamW (its update rule is written out below) and a one-cycle
# learning-rate schedule (warm up, then anneal; its formula follows the training), which gets this
# network to its accuracy in a few epochs. The best epoch by validation accuracy is saved and
# loaded back at the end.

# %% mystnb={"image": {"alt": "Loss and accuracy per epoch of MnistCNN, training and validation"}}
runtime.seed_everything(0)
model = MnistCNN()
# the book's one optimiser grouping: weight decay on weight matrices, none on biases
optimizer = torch.optim.AdamW(optim.param_groups(model, lr=3e-3, weight_decay=1e-4))
scheduler = torch.optim.lr_scheduler.OneCycleLR(
    optimizer,
    max_lr=3e-3,
    epochs=BUDGET.epochs,
    steps_per_epoch=train.optimizer_steps_per_epoch(train_loader),  # right under torchrun too
)
checkpoint_dir = run.scratch_dir("mnist-cnn")
history = train.fit(
    model,
    train_loader,
    val_loader,
    optimizer,
    epochs=BUDGET.epochs,
    scheduler=scheduler,
    device=device,
    patience=2,
    checkpoint_dir=checkpoint_dir,
)
train_seconds = sum(history["seconds"])
fig = plots.training_curves(history, title="MnistCNN on MNIST (AdamW, one-cycle)")
plt.show()

# %% [markdown]
# Read the two panels together: a validation loss that rises while the training loss keeps falling
# would mean overfitting; validation accuracy close to training accuracy means the network
# generalises. (Training accuracy is averaged over an epoch while the weights still change, so it
# lags behind.) The one-cycle schedule makes the last epoch, at the smallest learning rate, usually
# the best.

# %% [markdown]
# ### Learning-rate schedules as formulas
#
# A schedule sets the learning rate $\eta_t$ of step $t$ out of $T$. `OneCycleLR`
# {cite:p}`smith2019super`, with PyTorch's defaults (`pct_start=0.3`, `div_factor=25`,
# `final_div_factor=10^4`, cosine annealing), rises from $\eta_{max}/25$ to $\eta_{max}$ over the
# first 30 % of the steps and then falls to $\eta_{max}/(25 \cdot 10^4)$, each phase along a half
# cosine:
#
# $$
# \eta_t = \eta_{end} + \tfrac{1}{2}(\eta_{start} - \eta_{end})\,\bigl(1 + \cos(\pi p)\bigr),
# \qquad p = \frac{t - t_{start}}{t_{end} - t_{start}} \in [0, 1],
# $$
#
# with phase 1 from step 0 to $0.3T - 1$ and phase 2 from there to $T - 1$. (With Adam-type
# optimisers it also cycles $\beta_1$ between 0.95 and 0.85, the other way round.) The **linear
# warm-up** of chapter 4 (`transformers.get_linear_schedule_with_warmup`) rises linearly over $W$
# warm-up steps, then falls linearly to zero: $\eta_t = \eta \, t / W$ for $t < W$, and
# $\eta_t = \eta \, \max\bigl(0, (T - t)/(T - W)\bigr)$ after. Both formulas, against the
# schedulers:


# %%
def one_cycle_lr(
    step: int,
    total: int,
    max_lr: float,
    pct_start: float = 0.3,
    div: float = 25.0,
    final_div: float = 1e4,
) -> float:
    initial_lr, final_lr = max_lr / div, max_lr / div / final_div
    peak = pct_start * total - 1  # last step of the warm-up phase
    if step <= peak:
        phase_start, phase_end, p = initial_lr, max_lr, step / peak
    else:
        phase_start, phase_end, p = max_lr, final_lr, (step - peak) / (total - 1 - peak)
    return phase_end + (phase_start - phase_end) / 2 * (1 + math.cos(math.pi * p))


def linear_warmup_lr(step: int, total: int, warmup: int, lr: float) -> float:
    return lr * step / warmup if step < warmup else lr * max(0.0, (total - step) / (total - warmup))


def scheduler_rates(make_scheduler, steps: int, lr: float) -> list[float]:
    probe = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler, rates = make_scheduler(probe), []
    for _ in range(steps):
        rates.append(probe.param_groups[0]["lr"])
        probe.step()
        scheduler.step()
    return rates


# %% mystnb={"image": {"alt": "Learning rate per step: one-cycle and linear warm-up schedules"}}
total_steps, warmup_steps = 200, 20
library_rates = {
    "one-cycle": scheduler_rates(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=3e-3, total_steps=total_steps),
        total_steps,
        3e-3,
    ),
    "linear warm-up": scheduler_rates(
        lambda o: get_linear_schedule_with_warmup(o, warmup_steps, total_steps), total_steps, 3e-3
    ),
}
formula_rates = {
    "one-cycle": [one_cycle_lr(t, total_steps, 3e-3) for t in range(total_steps)],
    "linear warm-up": [
        linear_warmup_lr(t, total_steps, warmup_steps, 3e-3) for t in range(total_steps)
    ],
}
fig, ax = plt.subplots(figsize=(7, 3.2), facecolor="white")
for name in library_rates:
    worst = max(abs(a - b) for a, b in zip(library_rates[name], formula_rates[name], strict=True))
    print(
        f"{name:<15} largest difference between formula and scheduler over {total_steps} steps: "
        f"{worst:.1e}"
    )
    ax.plot(library_rates[name], label=name)
ax.set(
    title="Learning-rate schedules (peak 3e-3, 200 steps)",
    xlabel="optimiser step",
    ylabel="learning rate",
)
ax.legend()
plt.show()

# %% [markdown]
# Both start small, because the first updates of a randomly initialised network have large,
# unreliable gradients and Adam's estimates of their scale are still poor; both end near zero, so
# that the last steps settle into a minimum instead of bouncing around it.

# %% [markdown]
# ## How good is it?
#
# Now, and only now, the test set:

# %%
logits, targets = train.predict(model, test_loader, device)
predictions = logits.argmax(dim=1)
test_accuracy = metrics.accuracy(targets, predictions)
print(
    f"test accuracy: {100 * test_accuracy:.2f}% on {len(targets):,} test images "
    f"({(predictions != targets).sum().item()} mistakes)"
)
print(metrics.format_report(metrics.per_class_report(targets, predictions, data.MNIST_CLASSES)))

# %% [markdown]
# ### Precision, recall, F1 and ROC/AUC
#
# The table's columns, for one class $c$ counted over the test set: among the images predicted as
# $c$, the share that really are $c$ is the **precision** $TP/(TP+FP)$; among the images that are
# $c$, the share predicted as $c$ is the **recall** $TP/(TP+FN)$; **F1** is their harmonic mean
# $2PR/(P+R)$, high only when both are. Counted by hand for the digit with the lowest F1, and
# checked against scikit-learn:

# %%
report_rows = metrics.per_class_report(targets, predictions, data.MNIST_CLASSES)
digit = min(range(10), key=lambda c: report_rows[c]["f1"])
true_positives = int(((predictions == digit) & (targets == digit)).sum())
false_positives = int(((predictions == digit) & (targets != digit)).sum())
false_negatives = int(((predictions != digit) & (targets == digit)).sum())
precision = true_positives / max(true_positives + false_positives, 1)
recall = true_positives / max(true_positives + false_negatives, 1)
f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
library_p, library_r, library_f1, _ = precision_recall_fscore_support(
    targets, predictions, labels=[digit], zero_division=0
)
print(f"digit {digit}: TP {true_positives}, FP {false_positives}, FN {false_negatives}")
print(f"by hand:      precision {precision:.4f}, recall {recall:.4f}, F1 {f1:.4f}")
print(
    f"scikit-learn: precision {library_p[0]:.4f}, recall {library_r[0]:.4f}, F1 {library_f1[0]:.4f}"
)

# %% [markdown]
# Precision and recall depend on a decision rule (here: the class with the highest score). The
# **ROC curve** looks at all rules at once: score every image by the network's probability for
# digit $c$, sweep a threshold from high to low, and plot the true-positive rate (recall) against
# the false-positive rate $FP/(FP+TN)$. Its area, the **AUC**, is the probability that a randomly
# chosen image of $c$ gets a higher score than a randomly chosen other image — 1.0 for a perfect
# ranking, 0.5 for chance. That definition can be computed directly, by comparing every positive
# with every negative:

# %% mystnb={"image": {"alt": "ROC curve of one digit against the rest, above the chance line"}}
probabilities = torch.softmax(logits, dim=1)
is_digit = (targets == digit).numpy()
digit_scores = probabilities[:, digit].numpy()
positive_scores, negative_scores = digit_scores[is_digit], digit_scores[~is_digit]
# AUC = P(positive scores higher than negative); ties count half
pairs_won = (positive_scores[:, None] > negative_scores[None, :]).mean() + 0.5 * (
    positive_scores[:, None] == negative_scores[None, :]
).mean()
print(
    f"digit {digit} vs. the rest: AUC by pairwise comparison {pairs_won:.5f}, "
    f"scikit-learn roc_auc_score {roc_auc_score(is_digit, digit_scores):.5f}"
)
macro_auc = roc_auc_score(targets.numpy(), probabilities.numpy(), multi_class="ovr")
print(f"mean one-vs-rest AUC over the ten digits: {macro_auc:.5f}")
false_positive_rate, true_positive_rate, _ = roc_curve(is_digit, digit_scores)
fig, ax = plt.subplots(figsize=(4.5, 4), facecolor="white")
floor = 1e-4  # a log axis cannot show 0: false-positive rates below it are drawn at it
ax.plot(np.maximum(false_positive_rate, floor), true_positive_rate, label=f"digit {digit} vs. rest")
chance = np.logspace(-4, 0, 50)
ax.plot(chance, chance, linestyle=":", color="grey", label="chance")
ax.set(
    title=f"ROC curve, digit {digit}",
    xlabel="false-positive rate (log scale)",
    ylabel="true-positive rate",
    xscale="log",
    xlim=(floor, 1),
)
ax.legend(loc="lower right")
plt.show()

# %% [markdown]
# An AUC near 1 says the ranking is almost perfect even for the weakest digit: its remaining
# mistakes are images that score just above or below the others, which the threshold sweep shows.
#
# ### Two classes: binary cross-entropy is softmax cross-entropy
#
# With two classes a network can output one logit $z$ and use the **binary cross-entropy**
# $-[y \log \sigma(z) + (1-y) \log(1 - \sigma(z))]$ with the sigmoid $\sigma$, or two logits
# $(z_0, z_1)$ and softmax cross-entropy, as chapters 4 and 5 do. They are the same loss: the
# softmax probability of class 1 is $e^{z_1}/(e^{z_0} + e^{z_1}) = \sigma(z_1 - z_0)$, so two-class
# cross-entropy is binary cross-entropy on the logit difference. Checked on random logits:

# %%
torch.manual_seed(0)
two_logits, binary_labels = torch.randn(8, 2), torch.randint(0, 2, (8,))
softmax_ce = F.cross_entropy(two_logits, binary_labels)
logit_difference = two_logits[:, 1] - two_logits[:, 0]
binary_ce = F.binary_cross_entropy_with_logits(logit_difference, binary_labels.float())
print(f"softmax cross-entropy {softmax_ce:.6f}, binary cross-entropy on z1 - z0 {binary_ce:.6f}")

# %% [markdown]
# One logit is the same model with one parameter vector fewer; two logits keep the code of the
# multi-class case. Back to the ten digits:

# %% mystnb={"image": {"alt": "Confusion matrix of true against predicted digit, MNIST test set"}}
fig = plots.confusion_matrix_figure(
    targets, predictions, data.MNIST_CLASSES, title="MNIST test set: true vs. predicted digit"
)
plt.show()

# %% [markdown]
# Everything off the diagonal is a mistake; the largest off-diagonal cells name the pairs of digits
# that share strokes and get confused. Looking at the misclassified digits themselves:

# %% mystnb={"image": {"alt": "Misclassified test digits titled with true and predicted label"}}
wrong = (predictions != targets).nonzero().flatten()[:16]
if len(wrong):
    fig = plots.image_grid(
        [test_images.images[i] for i in wrong],
        titles=[f"true {targets[i].item()} → {predictions[i].item()}" for i in wrong],
        suptitle="Misclassified test digits",
        size=1.3,
    )
    plt.show()
else:
    print("no misclassified digits in this test set")

# %% [markdown]
# Look for what they share before reading more into the accuracy: open loops, a stroke cut short
# and an unusual slant are common causes, but the grid above is the evidence, not a count.

# %% [markdown]
# ## Looking inside
#
# The first layer's 32 kernels are $3 \times 3$ and can be drawn directly. Compare them with the
# hand-made kernels of chapter 1. Some may look like oriented edge or blob detectors, but a
# $3 \times 3$ kernel is nine numbers, and reading them by eye is a suggestion, not a
# measurement: the feature maps below show what each one responds to.

# %% mystnb={"image": {"alt": "The 32 learned 3x3 kernels of the first layer, red + and blue -"}}
fig = plots.conv_filters(
    model.features[0].cpu(), title="The 32 learned 3x3 kernels of the first layer"
)
plt.show()

# %% [markdown]
# Their responses to one test digit — the first layer's feature maps after ReLU — show where each
# kernel fires; look for maps that light up on strokes of one direction, on the background or
# on the outline, keeping in mind that this is one digit, read by eye:

# %% mystnb={"image": {"alt": "First-layer feature maps of one test digit, one per channel"}}
fig = plots.feature_maps(
    model.features[:2],
    test_set[0][0],
    title=f"First-layer feature maps of a test digit (label {targets[0].item()})",
)
plt.show()

# %% [markdown]
# ## What the optimisers compute
#
# Every `torch.optim` optimiser turns the gradient $g_t = \nabla_\theta L$ of step $t$ into an
# update of the parameters $\theta$. The three this book uses, as PyTorch implements them:
#
# - **SGD with momentum** (the heavy-ball method of {cite:t}`polyak1964some`, brought to deep
#   learning by {cite:t}`sutskever2013importance`) keeps a running sum of gradients
#   $b_t = \mu\, b_{t-1} + g_t$ (with $b_1 = g_1$) and steps $\theta_t = \theta_{t-1} - \eta\, b_t$.
#   In a direction where the gradient keeps its sign the steps grow towards $\eta/(1-\mu)$ times the
#   gradient (10× for $\mu = 0.9$); where it flips, they cancel. This is PyTorch's form; Sutskever
#   et al. write $v_t = \mu\, v_{t-1} - \eta\, g_t$, $\theta_t = \theta_{t-1} + v_t$, with the
#   rate inside the sum. The two give the same steps while $\eta$ is constant and differ once a
#   schedule changes it (PyTorch's `SGD` documentation notes the difference).
# - **Adam** {cite:p}`kingma2015adam` keeps moving averages of the gradient and of its square,
#   $m_t = \beta_1 m_{t-1} + (1-\beta_1) g_t$ and $v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2$,
#   starting at 0. Because they start at 0 they are too small early on, by the factor $1 - \beta^t$;
#   the **bias correction** divides it out: $\hat m_t = m_t/(1-\beta_1^t)$,
#   $\hat v_t = v_t/(1-\beta_2^t)$ ({cite:t}`kingma2015adam`, section 3). Both are too small, but
#   $v$ by far more, so without the correction the first steps are too *large*: the cell below
#   prints by how much. The step is
#   $\theta_t = \theta_{t-1} - \eta\, \hat m_t / (\sqrt{\hat v_t} + \epsilon)$: about $\eta$ per
#   parameter whatever the gradient's scale.
# - **AdamW** {cite:p}`loshchilov2019decoupled` adds weight decay *decoupled* from the gradient: it
#   first shrinks every parameter, $\theta \leftarrow \theta - \eta\lambda\theta$, then takes the
#   Adam step. (Adam's own `weight_decay` instead adds $\lambda\theta$ to $g_t$, where the division
#   by $\sqrt{\hat v_t}$ rescales it — weakening the decay exactly for the parameters with large
#   gradients.)
#
# Written as code and run side by side with `torch.optim` for three steps on the same parameters and
# gradients:


# %%
def sgd_momentum_update(theta, grad, state, lr, momentum):
    state["buffer"] = grad.clone() if "buffer" not in state else momentum * state["buffer"] + grad
    return theta - lr * state["buffer"]


def adamw_update(theta, grad, state, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """Adam when weight_decay is 0, AdamW otherwise (decoupled decay lr * weight_decay * theta)."""
    beta1, beta2 = betas
    state["t"] = state.get("t", 0) + 1
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * grad
    state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * grad**2
    m_hat = state["m"] / (1 - beta1 ** state["t"])  # bias correction
    v_hat = state["v"] / (1 - beta2 ** state["t"])
    theta = theta - lr * weight_decay * theta  # decoupled weight decay (AdamW)
    return theta - lr * m_hat / (v_hat.sqrt() + eps)


# %%
torch.manual_seed(0)
start = torch.randn(5)
gradients = [torch.randn(5) for _ in range(3)]
rules = {
    "SGD, momentum 0.9": (
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        lambda th, g, st: sgd_momentum_update(th, g, st, lr=0.1, momentum=0.9),
    ),
    "Adam": (
        lambda p: torch.optim.Adam(p, lr=0.1),
        lambda th, g, st: adamw_update(th, g, st, lr=0.1),
    ),
    "AdamW, weight decay 0.1": (
        lambda p: torch.optim.AdamW(p, lr=0.1, weight_decay=0.1),
        lambda th, g, st: adamw_update(th, g, st, lr=0.1, weight_decay=0.1),
    ),
}
rows = []
for name, (make_library, by_hand) in rules.items():
    parameter = nn.Parameter(start.clone())
    library = make_library([parameter])
    theta, state = start.clone(), {}
    for gradient in gradients:
        parameter.grad = gradient.clone()
        library.step()
        theta = by_hand(theta, gradient, state)
    difference, moved = (parameter.detach() - theta).abs().max(), (theta - start).abs().max()
    rows.append([name, f"{difference:.1e}", f"{moved:.3f}"])
headers = ["optimiser", "largest difference after 3 steps", "parameter moved by"]
display(plots.markdown_table(rows, headers, align="lrr"))

# %%
first_m, first_v = (1 - 0.9) * gradients[0], (1 - 0.999) * gradients[0] ** 2
uncorrected_step = 0.1 * first_m / (first_v.sqrt() + 1e-8)  # lr 0.1, as above
corrected_step = 0.1 * (first_m / (1 - 0.9)) / ((first_v / (1 - 0.999)).sqrt() + 1e-8)
print(
    f"first Adam step (lr 0.1): m = {first_m.abs().mean():.3f} on average, a tenth of "
    f"|g| = {gradients[0].abs().mean():.3f},\nwhile sqrt(v) = {first_v.sqrt().mean():.4f} is "
    f"only sqrt(0.001) = {0.001**0.5:.4f} times |g|\n"
    f"step with bias correction: {corrected_step.abs().mean():.4f} per parameter (lr x sign(g));"
    f"\nwithout: {uncorrected_step.abs().mean():.4f}, "
    f"{(uncorrected_step / corrected_step).mean():.2f}x larger"
)

# %% [markdown]
# The hand-written rules and `torch.optim` agree to rounding. With these definitions the comparison
# below can be read: it changes only the rule and the learning rate.
#
# ## Does the optimiser matter?
#
# The source series trains with SGD at learning rate 0.001 and momentum 0.9. Is that a good
# choice? Each optimiser below trains a fresh network with the same seed on the same
# stratified subset, for the same number of epochs, and is scored on the validation set.

# %%
compare_loader = DataLoader(
    data.subset(train_images, BUDGET.compare_train_size, seed=1).with_transform(transform),
    batch_size=BATCH_SIZE,
    shuffle=True,
    generator=torch.Generator().manual_seed(0),
)
optimizers = {
    "SGD lr 0.001, momentum 0.9 (source)": lambda params: torch.optim.SGD(
        params, lr=0.001, momentum=0.9
    ),
    "SGD lr 0.05, momentum 0.9": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "Adam lr 0.001": lambda params: torch.optim.Adam(params, lr=0.001),
}
comparison = {}
for name, make_optimizer in optimizers.items():
    runtime.seed_everything(0)
    candidate = MnistCNN()
    compare_history = train.fit(
        candidate,
        compare_loader,
        val_loader,
        make_optimizer(candidate.parameters()),
        epochs=BUDGET.compare_epochs,
        device=device,
        verbose=False,
    )
    comparison[name] = compare_history.records[-1]

# %% mystnb={"image": {"alt": "Bar chart: validation accuracy of each optimiser, same budget"}}
print(f"{len(compare_loader.dataset):,} training images, {BUDGET.compare_epochs} epoch(s) each")
rows = [
    [name, f"{record['train_loss']:.4f}", f"{100 * record['val_accuracy']:.2f}%"]
    for name, record in comparison.items()
]
display(plots.markdown_table(rows, ["optimiser", "train loss", "val accuracy"], align="lrr"))
behind = min(comparison, key=lambda name: comparison[name]["val_accuracy"])
print(f"lowest validation accuracy after this budget: {behind}")
fig = plots.bar_chart(
    list(comparison),
    [100 * r["val_accuracy"] for r in comparison.values()],
    title="Validation accuracy after the same training budget",
    ylabel="validation accuracy (%)",
    annotate_format="{:.1f}",
)
fig.axes[0].tick_params(axis="x", labelsize=7)
plt.show()

# %% [markdown]
# The line above names the setting that is furthest behind after this budget. A learning rate of
# 0.001 is small for SGD with momentum on this network (its steps are about $0.001/(1-0.9) = 0.01$
# times the gradient), so where the source's setting trails, that is the reason; raising the rate,
# or using Adam, which adapts the step size per parameter, covers more ground in the same number of
# steps. This comparison measures one budget only: it does not tell how the three compare with
# more epochs.

# %% [markdown]
# ## A first taste of fine-tuning
#
# Fine-tuning (微调) means starting from a network trained on one task and adapting it to another.
# MNIST lets us try it in miniature:
#
# 1. **pre-train** a network on digits 0–4 only (the "old task", plenty of data);
# 2. **adapt** it to digits 5–9 (the "new task") from just a few labelled examples per digit.
#
# Three ways to use those few examples, each scored on all test images of digits 5–9:
#
# - *frozen features + new head*: keep the pre-trained convolutional layers fixed and train a
#   fresh classifier on top;
# - *full fine-tuning*: start from all pre-trained weights (with a fresh last layer) and train
#   everything;
# - *from scratch*: a randomly initialised network trained on the same few examples.


# %%
def digits_as_task(dataset: data.ImageDataset, first_digit: int) -> data.ImageDataset:
    """The examples of digits first_digit..first_digit+4, relabelled 0..4."""
    keep = (
        ((dataset.labels >= first_digit) & (dataset.labels < first_digit + 5)).nonzero().flatten()
    )
    chosen = dataset.select(keep)
    names = tuple(str(d) for d in range(first_digit, first_digit + 5))
    return data.ImageDataset(chosen.images, chosen.labels - first_digit, names, dataset.transform)


old_train = digits_as_task(train_set, 0)
new_train_pool = digits_as_task(train_set, 5)
few_shot = new_train_pool.select(
    data.balanced_indices(new_train_pool.labels, BUDGET.shots_per_class, seed=0)
)
new_test = digits_as_task(test_set, 5)
print(f"pre-training on digits 0-4: {len(old_train):,} images")
print(
    f"new task, digits 5-9: {len(few_shot)} labelled examples "
    f"({BUDGET.shots_per_class} per digit); test on {len(new_test):,}"
)

runtime.seed_everything(0)
pretrained = MnistCNN(num_classes=5)
pretrain_loader = DataLoader(
    old_train, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0)
)
pretrain_history = train.fit(
    pretrained,
    pretrain_loader,
    None,
    torch.optim.Adam(pretrained.parameters(), lr=1e-3),
    epochs=BUDGET.pretrain_epochs,
    device=device,
    monitor="train_loss",
)

# %% [markdown]
# Now the three contenders. Each gets a new 5-way last layer and the same few examples, the same
# optimiser and the same number of epochs:


# %%
def new_task_model(strategy: str) -> nn.Module:
    runtime.seed_everything(1)
    if strategy == "from scratch":
        return MnistCNN(num_classes=5)
    adapted = copy.deepcopy(pretrained)
    if strategy == "frozen features + new head":
        freeze(adapted.features)
        adapted.classifier = MnistCNN(num_classes=5).classifier  # fresh, trainable head
    else:
        adapted.classifier[-1] = nn.Linear(128, 5)  # fresh last layer, everything trainable
    return adapted


few_shot_loader = DataLoader(few_shot, batch_size=len(few_shot), shuffle=True)
new_test_loader = DataLoader(new_test, batch_size=512)
rows = []
for strategy in ("frozen features + new head", "full fine-tuning", "from scratch"):
    adapted = new_task_model(strategy)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    train.fit(
        adapted,
        few_shot_loader,
        None,
        torch.optim.Adam(trainable, lr=1e-3),
        epochs=BUDGET.finetune_epochs,
        device=device,
        monitor="train_loss",
        verbose=False,
    )
    result = train.evaluate(adapted, new_test_loader, device=device)
    rows.append((strategy, count_parameters(adapted, trainable_only=True), result["accuracy"]))
display(
    plots.markdown_table(
        [[strategy, f"{count:,}", f"{100 * accuracy:.2f}%"] for strategy, count, accuracy in rows],
        ["strategy", "trainable parameters", "test accuracy, digits 5-9"],
        align="lrr",
    )
)

# %% [markdown]
# With so few examples, training from scratch has little to go on. The pre-trained
# convolutional layers already detect strokes, loops and corners — features that digits 5–9 share
# with 0–4 — so both pre-trained variants start from a much better representation. This is the
# idea behind every fine-tuning chapter that follows, at a far larger scale: ImageNet features for
# CIFAR-10 in chapter 3, and a language model's features for movie reviews in chapter 4. (Under the
# `smoke` profile the numbers are too noisy to rank anything.)

# %% [markdown]
# ## Saving the model and using it
#
# A trained model is its `state_dict`: the tensors of its parameters. We save it, build a fresh
# network, load the weights back (with `weights_only=True`, which refuses to run arbitrary
# pickled code) and classify a single image.

# %%
saved_path = train.save_model(model, checkpoint_dir / "mnist_cnn.pt")
print(f"saved {saved_path.name}: {saved_path.stat().st_size / 1e6:.2f} MB")
restored = train.load_model(MnistCNN(), saved_path).eval()
image, label = test_set[0]
with torch.no_grad():
    probabilities = torch.softmax(restored(image.unsqueeze(0)), dim=1)[0]
print(
    f"true label {label}, predicted {probabilities.argmax().item()} "
    f"with probability {probabilities.max().item():.4f}"
)
assert torch.equal(
    restored(test_set[1][0].unsqueeze(0)).argmax(),
    model.cpu()(test_set[1][0].unsqueeze(0)).argmax(),
)

# %% [markdown]
# ## The result record
#
# Every chapter ends by writing its figures to a JSON record
# (`results/02_mnist_cnn.<profile>.json`), which `benchmarks/run_chapter.py` collects and later
# chapters can read:

# %%
record_path = results.write_result_record(
    "02_mnist_cnn",
    {
        "data": {
            "source": mnist.source.kind,
            "location": runtime.display_path(mnist.source.location),
            "budget_adjustments": list(splits.adjustments),
            "train": len(train_set),
            "validation": len(val_set),
            "test": len(test_set),
        },
        "model": {"name": "MnistCNN", "parameters": count_parameters(model)},
        "metrics": {
            "test_accuracy": test_accuracy,
            "best_val_accuracy": max(history["val_accuracy"]),
            "optimizer_comparison_val_accuracy": {
                name: r["val_accuracy"] for name, r in comparison.items()
            },
            "few_shot_test_accuracy": {strategy: accuracy for strategy, _, accuracy in rows},
        },
        "training": {
            "epochs_run": len(history),
            "seconds": train_seconds,
            "samples_per_second": sum(history["samples_per_second"]) / len(history),
        },
        "chapter_seconds": run.seconds(),
    },
)
print(f"wrote {runtime.display_path(record_path)}")

# %% [markdown]
# ## Summary
#
# - MNIST has 60,000 training and 10,000 test images; a validation split comes out of the training
#   part, and the test set is used once, at the end.
# - Normalising with the data's own mean and standard deviation (0.1307, 0.3081) centres the inputs.
# - The network's convolutions hold few parameters and most of the compute; its first linear layer
#   holds most of the parameters.
# - A training step is forward, loss, `zero_grad`, `backward`, `step`; an epoch repeats it over
#   the data. `train.fit` is that loop — it gives the same weights as our hand-written one — plus
#   history, validation, schedules, early stopping, checkpoints and mixed precision.
# - SGD with momentum sums gradients; Adam divides bias-corrected gradient averages by their root
#   mean square; AdamW also shrinks each weight by $\eta\lambda\theta$. Warm-up and one-cycle
#   schedules start small and end near zero.
# - Precision, recall and F1 describe one decision rule per class; ROC/AUC describes the ranking
#   over all thresholds. Two-class softmax cross-entropy is binary cross-entropy on $z_1 - z_0$.
# - The optimiser and its learning rate decide how much compute a result costs: the source's SGD
#   settings are the slowest of the three we measured.
# - Pre-trained features make learning from a few examples possible; that is fine-tuning.

# %% [markdown]
# ## Exercises
#
# 1. Train with the source's normalisation (mean 0.5, std 0.5) instead. Does the accuracy change
#    after the same number of epochs?
# 2. Remove the second convolution block (conv64 + pool) and adjust the first linear layer. How do
#    the parameter count and the test accuracy change?
# 3. In the fine-tuning experiment, vary `shots_per_class` from 1 to 50. Where does training from
#    scratch catch up?
# 4. Save a checkpoint after one epoch and resume training with `train.fit(..., resume=True)`. Check
#    that the history continues at epoch 2.
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. Import torchvision's transforms (`from torchvision.transforms import v2`) and replace the
#    transform by
#    `v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.5,), (0.5,))])`. The
#    network still trains — normalisation is not magic — but its inputs are then off-centre
#    (background at -1, not near 0). Compare the two histories epoch by epoch rather than only the
#    final accuracy.
# 2. With one block the feature map is $32 \times 14 \times 14 = 6{,}272$ values, so the first
#    linear layer becomes `nn.Linear(6272, 128)` and the model grows to
#    $320 + 6272 \cdot 128 + 128 + 1290 = 804{,}554$ parameters — almost twice as many, for a
#    network with a smaller receptive field. Measure the test accuracy of both under the same
#    budget.
# 3. Loop over `shots_per_class` in `(1, 5, 10, 50)` and rerun the three strategies; the gap closes
#    as the few-shot set grows, because there is then enough data to learn useful features from
#    scratch.
# 4. Call `train.fit(model, ..., epochs=1, checkpoint_dir=d)` and then
#    `train.fit(model, ..., epochs=3, checkpoint_dir=d, resume=True)`; the returned history's
#    `history["epoch"]` is `[1, 2, 3]`.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`lecun1998gradient` — MNIST and convolutional networks for digit recognition.
# - {cite:t}`kingma2015adam` — the Adam optimiser; {cite:t}`loshchilov2019decoupled` — AdamW.
# - {cite:t}`polyak1964some` — the heavy-ball (momentum) method; {cite:t}`sutskever2013importance` —
#   momentum in deep learning.
# - {cite:t}`smith2019super` — the one-cycle learning-rate schedule.
# - {cite:t}`yosinski2014transferable` — how transferable the features of a trained network are.
