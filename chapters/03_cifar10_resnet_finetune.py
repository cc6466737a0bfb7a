# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Fine-tuning ResNet-18 on CIFAR-10
#
# A network trained on ImageNet's 1.28 million photographs has learned, in its convolutional
# layers, a general vocabulary of edges, textures and object parts. **Transfer learning** reuses
# that vocabulary for a new task with far less data. This chapter takes torchvision's ResNet-18,
# puts a new 10-class head on it, and compares three ways of training it on CIFAR-10: a linear
# probe, full fine-tuning, and training from scratch.
#
# The source series attempts this with a `ResNetWithLinearLayer` imported from `transformers`
# (no such class exists), defines an augmentation pipeline it never applies, evaluates on an
# undefined `val_loader` and prints an accuracy of 96% that no code produced. Everything below
# runs, and every number is computed on this page.
#
# **What you will learn**
#
# - what ImageNet pre-training gives a new task, and what the new task still needs;
# - data augmentation (random crop with padding, horizontal flip, colour jitter) for training only;
# - how to load `resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)`, what preprocessing its weights
#   expect, and how to replace its `fc` head;
# - three strategies — linear probe, full fine-tuning with discriminative learning rates, from
#   scratch — trained with AdamW, a warm-up + cosine schedule (one-cycle), label smoothing and early
#   stopping, compared in a table and a plot;
# - evaluating a classifier: per-class accuracy, confusion matrix, the most confident mistakes.
#
# **Prerequisites**: chapters 1 and 2 (convolutions, the shared `fit` loop, a first taste of
# fine-tuning).

# %% [markdown]
# ## Setup

# %%
import importlib.util
import subprocess
import sys

if "google.colab" in sys.modules and importlib.util.find_spec("tutorial_lib") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "git+https://github.com/from-zero-dl/pytorch-from-zero"],
        check=True,
    )

# %%
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import ResNet18_Weights

from tutorial_lib import data, metrics, plots, results, runtime, train
from tutorial_lib.models import count_parameters, resnet18_for
from tutorial_lib.optim import param_groups

CHAPTER_STARTED = time.perf_counter()
runtime.print_environment()
generator = runtime.seed_everything(0)
device = runtime.get_device()


@dataclass(frozen=True)
class Budget:
    train_size: int | None  # training images after the validation split (None: all)
    val_size: int
    test_size: int | None  # None: the whole test set
    batch_size: int
    probe_epochs: int
    finetune_epochs: int
    scratch_epochs: int
    patience: int  # early stopping on validation accuracy
    gpu_224_epochs: int  # the 224-pixel recipe, CUDA only


BUDGET = runtime.select_budget(
    {
        "smoke": Budget(train_size=256, val_size=200, test_size=300, batch_size=64, probe_epochs=1,
                        finetune_epochs=1, scratch_epochs=1, patience=2, gpu_224_epochs=1),
        "cpu": Budget(train_size=None, val_size=1_000, test_size=None, batch_size=128, probe_epochs=3,
                      finetune_epochs=15, scratch_epochs=15, patience=4, gpu_224_epochs=0),
        "gpu": Budget(train_size=None, val_size=2_000, test_size=None, batch_size=128, probe_epochs=5,
                      finetune_epochs=15, scratch_epochs=15, patience=4, gpu_224_epochs=5),
    }
)
BUDGET

# %% [markdown]
# ## Transfer learning in one picture
#
# ResNet-18 is a stack of convolutional stages that turn a $224 \times 224$ photograph into 512
# numbers (after global average pooling), followed by one linear layer, `fc`, that maps them to
# ImageNet's 1,000 classes. Pre-training gives the stages; the new task needs a new `fc` with 10
# outputs, and — depending on how different the new images are — some adjustment of the stages:
#
# | strategy | backbone | head | trainable parameters |
# |---|---|---|---|
# | linear probe | pretrained, frozen | new, trained | the head only |
# | full fine-tuning | pretrained, trained with a small learning rate | new, larger learning rate | all |
# | from scratch | random, trained | new, trained | all |
#
# First, the weights. `tutorial_lib.weights.load_resnet18` looks in torch's cache, then downloads;
# offline it says so and the network keeps its random initialisation.

# %%
probe_model, weights_source = resnet18_for("linear probe")
PRETRAINED = weights_source.pretrained
print(f"ImageNet weights available: {PRETRAINED}")
if not PRETRAINED:
    print("=> Without them, 'linear probe' trains a head on random features and 'fine-tune' starts "
          "from random weights: the comparison below then shows the training recipe only, not transfer learning.")

# %% [markdown]
# The weights carry their own preprocessing — the resizing and the normalisation statistics of the
# ImageNet images they were trained on:

# %%
print(ResNet18_Weights.IMAGENET1K_V1.transforms())

# %% [markdown]
# A pretrained backbone expects its inputs normalised like ImageNet's (mean 0.485/0.456/0.406,
# std 0.229/0.224/0.225), so we use those statistics whenever the weights are pretrained, and
# CIFAR-10's own otherwise. The resizing is a different matter: ImageNet images are
# $224 \times 224$, CIFAR-10's $32 \times 32$. We train at 32 pixels, as is — 49 times fewer pixels,
# hence roughly 49 times less compute per image — at the cost of a backbone whose last stage sees a
# $1 \times 1$ feature map instead of $7 \times 7$. Upsampling to 224 pixels recovers the published
# accuracy but is only affordable on a GPU (the last section of this chapter does it there).

# %%
mean, std = (data.IMAGENET_MEAN, data.IMAGENET_STD) if PRETRAINED else (data.CIFAR10_MEAN, data.CIFAR10_STD)
print(f"normalising with mean {mean}, std {std}")

# %% [markdown]
# ## The data
#
# CIFAR-10 has 50,000 training and 10,000 test images of 10 classes at $32 \times 32$ pixels.
# The loader prints which copy it uses and how many images it holds — a partial copy or a bundled
# sample is announced, and the numbers below then refer to it.

# %%
cifar = data.load_cifar10()
splits = data.budget_splits(cifar, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
train_images, val_images, test_images = splits.train, splits.val, splits.test
print(splits.describe())

# %% [markdown]
# ### Augmentation, for training only
#
# With a few thousand images, a network this size memorises the training set within a few epochs.
# Augmentation shows it a slightly different version of each image every epoch: a random
# $32 \times 32$ crop of the image padded by 4 pixels (small shifts), a horizontal flip (a mirrored
# cat is still a cat — a vertical flip would not be) and a little colour jitter. Validation and test
# images are never augmented: they must measure the model, not the randomness.

# %%
train_transform = data.cifar10_transforms(train=True, color_jitter=True, mean=mean, std=std)
eval_transform = data.cifar10_transforms(train=False, mean=mean, std=std)
train_set = train_images.with_transform(train_transform)
val_set = val_images.with_transform(eval_transform)
test_set = test_images.with_transform(eval_transform)


def to_displayable(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation so an augmented image can be shown."""
    return (image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)


original = train_images.images[0]
views = [original] + [to_displayable(train_set[0][0]) for _ in range(7)]
fig = plots.image_grid(views, titles=["original"] + [f"augmented {k}" for k in range(1, 8)], ncols=8,
                       suptitle=f"One training image ({cifar.train.classes[train_images.labels[0]]}) and seven random augmentations",
                       size=1.5)
plt.show()

# %%
train_loader = DataLoader(train_set, batch_size=BUDGET.batch_size, shuffle=True, generator=generator)
val_loader = DataLoader(val_set, batch_size=500)
test_loader = DataLoader(test_set, batch_size=500)

# %% [markdown]
# ## The recipe
#
# All three strategies share one recipe, so that only the strategy differs:
#
# - **AdamW**, Adam with decoupled weight decay, leaving biases and batch-norm weights undecayed;
# - a **one-cycle** schedule: the learning rate warms up over the first 30% of the steps, then
#   follows a cosine down to almost zero — a warm-up protects pretrained weights from the first,
#   noisy gradients of a randomly initialised head;
# - **label smoothing** 0.1: the target puts 0.9 on the true class and spreads 0.1 over all classes,
#   which discourages over-confident logits;
# - **early stopping** on validation accuracy, keeping the best epoch's weights.

# %%
loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)


def train_strategy(strategy: str, model: nn.Module, epochs: int, backbone_lr: float, head_lr: float):
    groups = param_groups(model, lr=backbone_lr, weight_decay=0.05, head=model.fc, head_lr=head_lr, verbose=False)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[group["lr"] for group in groups], epochs=epochs, steps_per_epoch=len(train_loader), pct_start=0.3
    )
    print(f"--- {strategy}: {count_parameters(model, trainable_only=True):,} trainable of {count_parameters(model):,} parameters")
    started = time.perf_counter()
    history = train.fit(model, train_loader, val_loader, optimizer, epochs=epochs, loss_fn=loss_fn, scheduler=scheduler,
                        device=device, patience=BUDGET.patience, checkpoint_dir=Path(tempfile.mkdtemp(prefix="resnet-")))
    return history, time.perf_counter() - started

# %% [markdown]
# ## Strategy 1: the linear probe
#
# The backbone is frozen: its parameters get no gradient, and we keep it in evaluation mode so
# that its batch-norm statistics stay those of pre-training. Only the new head learns. This
# measures how linearly separable CIFAR-10 is in the pretrained feature space.

# %%
class FrozenBackboneProbe(nn.Module):
    """Wraps a ResNet whose backbone is frozen: batch norm stays in eval mode during training."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet
        self.fc = resnet.fc

    def train(self, mode: bool = True):
        super().train(False)
        self.fc.train(mode)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.resnet(images)


runtime.seed_everything(0)
histories, seconds, models = {}, {}, {}
models["linear probe"] = FrozenBackboneProbe(probe_model)
histories["linear probe"], seconds["linear probe"] = train_strategy(
    "linear probe", models["linear probe"], BUDGET.probe_epochs, backbone_lr=0.0, head_lr=3e-3)

# %% [markdown]
# ## Strategy 2: full fine-tuning with discriminative learning rates
#
# Everything trains, but not at the same speed: the pretrained backbone gets a learning rate ten
# times smaller than the new head, so that it adapts its features rather than overwriting them
# while the head is still random. `optim.param_groups`, the one place this book builds
# optimiser groups, makes them (and keeps biases and batch-norm weights free of weight decay):

# %%
runtime.seed_everything(0)
models["fine-tune"], _ = resnet18_for("fine-tune", verbose=False)
fine_tune_groups = param_groups(models["fine-tune"], lr=2e-4, weight_decay=0.05,
                                head=models["fine-tune"].fc, head_lr=2e-3)
backbone_lr = 2e-4 if PRETRAINED else 2e-3  # from random weights there is nothing to protect
histories["fine-tune"], seconds["fine-tune"] = train_strategy(
    "fine-tune", models["fine-tune"], BUDGET.finetune_epochs, backbone_lr=backbone_lr, head_lr=2e-3)

# %% [markdown]
# ## Strategy 3: from scratch
#
# The same architecture and recipe, from random initialisation:

# %%
runtime.seed_everything(0)
models["from scratch"], _ = resnet18_for("from scratch", verbose=False)
histories["from scratch"], seconds["from scratch"] = train_strategy(
    "from scratch", models["from scratch"], BUDGET.scratch_epochs, backbone_lr=2e-3, head_lr=2e-3)

# %% [markdown]
# ## The comparison
#
# Each strategy's best epoch (by validation accuracy) is scored once on the test set:

# %%
test_results = {}
for strategy, model in models.items():
    logits, targets = train.predict(model, test_loader, device)
    test_results[strategy] = (logits, targets)

print(f"pretrained ImageNet weights: {'yes' if PRETRAINED else 'no (random initialisation)'}; "
      f"{len(train_set):,} training images at 32 px")
print(f"{'strategy':<16}{'trainable':>12}{'epochs':>8}{'train time':>12}{'best val':>10}{'test acc':>10}")
summary = {}
for strategy, (logits, targets) in test_results.items():
    accuracy = metrics.accuracy(targets, logits.argmax(dim=1))
    summary[strategy] = {
        "test_accuracy": accuracy,
        "best_val_accuracy": max(histories[strategy]["val_accuracy"]),
        "epochs_run": len(histories[strategy]),
        "train_seconds": seconds[strategy],
        "trainable_parameters": count_parameters(models[strategy], trainable_only=True),
    }
    row = summary[strategy]
    print(f"{strategy:<16}{row['trainable_parameters']:>12,}{row['epochs_run']:>8}{row['train_seconds']:>10.0f} s"
          f"{100 * row['best_val_accuracy']:>9.1f}%{100 * accuracy:>9.1f}%")

fig, ax = plt.subplots(figsize=(7, 4), facecolor="white")
for strategy, history in histories.items():
    ax.plot(history["epoch"], [100 * v for v in history["val_accuracy"]], "-o", label=strategy)
ax.set(title="Validation accuracy per epoch, three strategies", xlabel="epoch", ylabel="validation accuracy (%)")
ax.grid(alpha=0.3)
ax.legend()
ax.xaxis.get_major_locator().set_params(integer=True)
plt.show()

# %% [markdown]
# How to read this table depends on the first line of its output. **With ImageNet weights**, the
# linear probe shows how much of CIFAR-10 the frozen features already separate, and full
# fine-tuning, which adapts those features at a small learning rate, beats training from scratch
# on the same images and epochs — that gap is what pre-training is worth. **Without them**
# (offline), "fine-tune" and "from scratch" are the same experiment — same learning rates, two
# different random initialisations — so their difference shows only the run-to-run noise, and the
# linear probe trains a head on random features, which is as weak as that sounds: the table then
# measures the training recipe alone. (Under the `smoke` profile,
# with a few hundred images and one epoch, none of these numbers mean anything.)

# %% [markdown]
# ## Looking at the best model
#
# The model with the best validation accuracy, evaluated class by class:

# %%
best_strategy = max(summary, key=lambda name: summary[name]["best_val_accuracy"])
logits, targets = test_results[best_strategy]
predictions = logits.argmax(dim=1)
print(f"best strategy by validation accuracy: {best_strategy}")
print(metrics.format_report(metrics.per_class_report(targets, predictions, cifar.test.classes)))
fig = plots.confusion_matrix_figure(targets, predictions, cifar.test.classes, title=f"CIFAR-10 test set, {best_strategy}")
plt.show()

# %% [markdown]
# Recall is the per-class accuracy: the classes with the lowest recall are the hard ones. The
# largest off-diagonal cells of the matrix name the pairs that look alike at $32 \times 32$ pixels
# (cat and dog, automobile and truck, deer and horse are the usual suspects — check which ones
# your run confuses).
#
# The most instructive mistakes are the confident ones — wrong, with high probability:

# %%
probabilities = torch.softmax(logits, dim=1)
confidence, _ = probabilities.max(dim=1)
wrong = (predictions != targets).nonzero().flatten()
most_confident = wrong[confidence[wrong].argsort(descending=True)][:12]
classes = cifar.test.classes
fig = plots.image_grid(
    [test_images.images[i] for i in most_confident],
    titles=[f"{classes[targets[i]]} → {classes[predictions[i]]}\n{100 * confidence[i]:.0f}%" for i in most_confident],
    ncols=6, size=1.8, suptitle="The most confident mistakes (true → predicted, confidence)",
)
plt.show()

# %% [markdown]
# Many are understandable at this resolution: an animal seen from an unusual angle, an object
# cut off by the frame, a background that belongs to another class (water for ships, sky for
# planes).

# %% [markdown]
# ## On a GPU: the 224-pixel recipe
#
# The published CIFAR-10 accuracies of fine-tuned ImageNet models (above 96% for ResNet-18 class
# models) come from feeding the backbone images at the resolution it was trained on. Upsampling
# each $32 \times 32$ image to $224 \times 224$ multiplies the compute by 49, which a GPU absorbs
# with mixed precision (float16 matrix multiplications, which `train.fit` switches on for CUDA)
# and the channels-last memory layout (which tensor cores prefer). This cell runs only when CUDA
# is present.

# %%
if runtime.cuda_only_note("fine-tuning ResNet-18 at 224x224 pixels with mixed precision and channels-last"):
    runtime.seed_everything(0)
    big_model, big_source = resnet18_for("fine-tune", verbose=False)
    big_model = big_model.to(device, memory_format=torch.channels_last)
    big_train = DataLoader(train_images.with_transform(data.cifar10_transforms(True, size=224, mean=mean, std=std)),
                           batch_size=128, shuffle=True, num_workers=4, generator=generator)
    big_test = DataLoader(test_images.with_transform(data.cifar10_transforms(False, size=224, mean=mean, std=std)),
                          batch_size=256, num_workers=4)
    groups = param_groups(big_model, lr=1e-3 / 5, weight_decay=0.05, head=big_model.fc, head_lr=1e-3)
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in groups],
                                                    epochs=BUDGET.gpu_224_epochs, steps_per_epoch=len(big_train), pct_start=0.2)
    big_history = train.fit(big_model, big_train, None, optimizer, epochs=BUDGET.gpu_224_epochs, loss_fn=loss_fn,
                            scheduler=scheduler, device=device, monitor="train_loss")
    big_accuracy = train.evaluate(big_model, big_test, device=device)["accuracy"]
    summary["fine-tune 224 px (GPU)"] = {"test_accuracy": big_accuracy, "epochs_run": len(big_history),
                                         "train_seconds": sum(big_history["seconds"]), "pretrained": big_source.pretrained}
    print(f"224-pixel fine-tuning: test accuracy {100 * big_accuracy:.2f}% after {len(big_history)} epochs "
          f"({sum(big_history['seconds']):.0f} s)")

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record("03_cifar10_resnet_finetune", {
    "data": {"source": cifar.source.kind, "location": cifar.source.location, "budget_adjustments": list(splits.adjustments), "train": len(train_set),
             "validation": len(val_set), "test": len(test_set)},
    "model": {"name": "torchvision resnet18", "weights": weights_source.describe(), "pretrained": PRETRAINED,
              "parameters": count_parameters(models["from scratch"]), "input_pixels": 32},
    "metrics": {"best_strategy": best_strategy, "strategies": summary},
    "chapter_seconds": time.perf_counter() - CHAPTER_STARTED,
})
print(f"wrote {record_path}")

# %% [markdown]
# ## Summary
#
# - Transfer learning reuses a pretrained backbone and trains a new head; how much of the backbone
#   to train is the strategy: nothing (linear probe), everything at a small learning rate (full
#   fine-tuning), or everything from random weights (from scratch).
# - Pretrained weights come with their preprocessing: ImageNet normalisation, and ideally the
#   resolution they were trained at — which at $224 \times 224$ costs 49 times the compute of
#   CIFAR-10's native 32 pixels.
# - Augmentation applies to training only; validation and test images measure the model as it is.
# - AdamW with a warm-up + cosine schedule, label smoothing and early stopping on validation
#   accuracy form one recipe shared by all strategies, so that the comparison isolates the strategy.
# - When the pretrained weights cannot be loaded, the chapter says so and the comparison shows the
#   recipe only — never a transfer-learning result that did not happen.

# %% [markdown]
# ## Exercises
#
# 1. Train the linear probe without the `FrozenBackboneProbe` wrapper (so batch norm runs in training
#    mode). Which numbers change, and why, even though no backbone weight receives a gradient?
# 2. Set the backbone learning rate of full fine-tuning equal to the head's. What happens to the
#    validation curve of the first epochs when the weights are pretrained?
# 3. Remove the colour jitter, then the random crop. How does the gap between training and validation
#    accuracy change?
# 4. Replace `model.maxpool` by `nn.Identity()` for the from-scratch model. What does that do to the
#    size of the last feature map at 32 pixels, to the compute, and to the accuracy?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. In training mode, batch norm normalises with the statistics of each batch and updates its
#    running mean and variance, which are buffers, not parameters: the "frozen" backbone's outputs
#    drift towards CIFAR-10 statistics. `count_parameters(..., trainable_only=True)` is unchanged,
#    but the features, and so the probe's accuracy, are not those of the pretrained network.
# 2. Large updates from a still-random head's gradients disturb the pretrained features; the first
#    epochs' validation accuracy can drop or stall before recovering. Compare the two histories.
# 3. Without augmentation the training accuracy climbs faster while the validation accuracy stops
#    earlier: the gap widens, which is overfitting.
# 4. The last stage then sees a $2 \times 2$ map instead of $1 \times 1$, and every stage works on four
#    times as many positions, so compute grows about fourfold
#    (`tutorial_lib.conv.model_macs(model, (3, 32, 32))` counts it). Measure the accuracy under the same
#    budget of epochs.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`he2016deep` — residual networks (ResNet).
# - {cite:t}`kornblith2019better` — how well ImageNet models transfer, linear probes vs. fine-tuning.
# - {cite:t}`krizhevsky2009learning` — the CIFAR-10 data set.
# - {cite:t}`loshchilov2019decoupled` — AdamW; {cite:t}`szegedy2016rethinking` — label smoothing.
