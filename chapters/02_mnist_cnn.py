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
# - training with `tutorial_lib.train.fit`: progress, history, early stopping, checkpoints;
# - reading a trained classifier: curves, confusion matrix, mistakes, filters and feature maps;
# - how the choice of optimiser changes training, measured rather than asserted;
# - fine-tuning with few examples: frozen features vs. full fine-tuning vs. training from scratch;
# - saving a model and loading it back to classify a single image.
#
# **Prerequisites**: chapter 1 (convolution, pooling, output sizes, cross-entropy), and the idea
# of gradient descent.

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
import copy
import inspect
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from torch import nn
from torch.utils.data import DataLoader

from tutorial_lib import data, metrics, plots, results, runtime, train
from tutorial_lib.models import MnistCNN, count_parameters, freeze

CHAPTER_STARTED = time.perf_counter()
runtime.print_environment()
generator = runtime.seed_everything(0)
device = runtime.get_device()


@dataclass(frozen=True)
class Budget:
    train_size: int | None  # training images after the validation split (None: all of them)
    val_size: int
    test_size: int | None  # None: the whole test set
    epochs: int
    compare_train_size: int  # images per run in the optimiser comparison
    compare_epochs: int
    pretrain_epochs: int  # digits 0-4, for the fine-tuning experiment
    shots_per_class: int  # labelled examples per new digit (5-9)
    finetune_epochs: int


BUDGET = runtime.select_budget(
    {
        "smoke": Budget(train_size=512, val_size=256, test_size=512, epochs=1, compare_train_size=256,
                        compare_epochs=1, pretrain_epochs=1, shots_per_class=5, finetune_epochs=3),
        "cpu": Budget(train_size=None, val_size=5_000, test_size=None, epochs=3, compare_train_size=6_000,
                      compare_epochs=1, pretrain_epochs=1, shots_per_class=10, finetune_epochs=40),
        "gpu": Budget(train_size=None, val_size=5_000, test_size=None, epochs=8, compare_train_size=20_000,
                      compare_epochs=2, pretrain_epochs=3, shots_per_class=10, finetune_epochs=40),
    }
)
BATCH_SIZE = 64  # the source series' batch size
BUDGET

# %% [markdown]
# ## The data
#
# MNIST holds 70,000 images in all: **60,000 for training and 10,000 for testing**, each a
# $28 \times 28$ grey-level digit. The loader prints where it found them and how many there are.

# %%
mnist = data.load_mnist()
print(mnist.source.describe())

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
print(f"training pixels: mean {mean[0]:.4f}, std {std[0]:.4f}  (the constants in tutorial_lib: {data.MNIST_MEAN[0]}, {data.MNIST_STD[0]})")
transform = data.mnist_transform()
example = transform(train_images.images[0])
print(f"after the transform: dtype {example.dtype}, range [{example.min():.2f}, {example.max():.2f}]")

# %% [markdown]
# (Under the `smoke` profile the subset is small and its statistics wander a little; on the full
# 60,000 images they are 0.1307 and 0.3081, which the test suite checks.)

# %%
train_set = train_images.with_transform(transform)
val_set = val_images.with_transform(transform)
test_set = test_images.with_transform(transform)
train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
val_loader = DataLoader(val_set, batch_size=512)
test_loader = DataLoader(test_set, batch_size=512)

fig = plots.image_grid([train_images.images[i] for i in range(16)],
                       titles=[f"label {train_images.labels[i].item()}" for i in range(16)],
                       suptitle="The first training digits", size=1.2)
plt.show()

# %% [markdown]
# ## The network
#
# The network is the source series' design. It lives in `tutorial_lib.models`; this is its
# source:

# %%
print(inspect.getsource(MnistCNN))

# %% [markdown]
# Following one batch through the layers shows what each does to the shape: the convolutions
# (padding 1) keep $28 \times 28$ and change the channel count, each pooling halves the size, and
# `Flatten` turns $64 \times 7 \times 7$ into 3,136 numbers for the linear layers.

# %%
model = MnistCNN()
batch, _ = next(iter(train_loader))
x = batch
print(f"{'input':<28}{tuple(x.shape)}")
for layer in [*model.features, *model.classifier]:
    x = layer(x)
    print(f"{str(layer)[:27]:<28}{tuple(x.shape)}  {count_parameters(layer):>9,} parameters")
print(f"{'total':<28}{'':<20}{count_parameters(model):>9,} parameters")

# %% [markdown]
# ## Training with the shared loop
#
# `tutorial_lib.train.fit` is the loop of every chapter. One epoch of it does what any PyTorch
# training loop does — forward pass, loss, `zero_grad`, `backward`, optimiser step — and around
# that it keeps a history, evaluates on the validation set, saves checkpoints, and stops early
# when the validation accuracy stops improving. The heart of it:

# %%
source = inspect.getsource(train.fit)
step_start = source.index("            inputs, targets = split_batch")
print(source[step_start : source.index("            size = _batch_size", step_start)])

# %% [markdown]
# We train with AdamW and a one-cycle learning-rate schedule (warm up, then anneal), which gets
# this network to its accuracy in a few epochs. The best epoch by validation accuracy is saved
# and loaded back at the end.

# %%
runtime.seed_everything(0)
model = MnistCNN()
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, epochs=BUDGET.epochs, steps_per_epoch=len(train_loader))
checkpoint_dir = Path(tempfile.mkdtemp(prefix="mnist-cnn-"))
history = train.fit(model, train_loader, val_loader, optimizer, epochs=BUDGET.epochs, scheduler=scheduler,
                    device=device, patience=2, checkpoint_dir=checkpoint_dir)
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
# ## How good is it?
#
# Now, and only now, the test set:

# %%
logits, targets = train.predict(model, test_loader, device)
predictions = logits.argmax(dim=1)
test_accuracy = metrics.accuracy(targets, predictions)
print(f"test accuracy: {100 * test_accuracy:.2f}% on {len(targets):,} test images "
      f"({(predictions != targets).sum().item()} mistakes)")
print(metrics.format_report(metrics.per_class_report(targets, predictions, data.MNIST_CLASSES)))

# %%
fig = plots.confusion_matrix_figure(targets, predictions, data.MNIST_CLASSES, title="MNIST test set: true vs. predicted digit")
plt.show()

# %% [markdown]
# Everything off the diagonal is a mistake; the largest off-diagonal cells name the pairs of digits
# that share strokes and get confused. Looking at the misclassified digits themselves:

# %%
wrong = (predictions != targets).nonzero().flatten()[:16]
if len(wrong):
    fig = plots.image_grid([test_images.images[i] for i in wrong],
                           titles=[f"true {targets[i].item()} → {predictions[i].item()}" for i in wrong],
                           suptitle="Misclassified test digits", size=1.3)
    plt.show()
else:
    print("no misclassified digits in this test set")

# %% [markdown]
# Many of these are ambiguous even to a person: open loops, a stroke cut short, an unusual slant.

# %% [markdown]
# ## Looking inside
#
# The first layer's 32 kernels are $3 \times 3$ and can be drawn directly. Compare them with the
# hand-made kernels of chapter 1: many are edge detectors of some orientation.

# %%
fig = plots.conv_filters(model.features[0].cpu(), title="The 32 learned 3x3 kernels of the first layer")
plt.show()

# %% [markdown]
# Their responses to one test digit — the first layer's feature maps after ReLU — show each
# kernel picking out strokes of one direction, or the background, or the outline:

# %%
fig = plots.feature_maps(model.features[:2], test_set[0][0], title=f"First-layer feature maps of a test digit (label {targets[0].item()})")
plt.show()

# %% [markdown]
# ## Does the optimiser matter?
#
# The source series trains with SGD at learning rate 0.001 and momentum 0.9. Is that a good
# choice? Each optimiser below trains a fresh network with the same seed on the same
# stratified subset, for the same number of epochs, and is scored on the validation set.

# %%
compare_loader = DataLoader(data.subset(train_images, BUDGET.compare_train_size, seed=1).with_transform(transform),
                            batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0))
optimizers = {
    "SGD lr 0.001, momentum 0.9 (source)": lambda params: torch.optim.SGD(params, lr=0.001, momentum=0.9),
    "SGD lr 0.05, momentum 0.9": lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    "Adam lr 0.001": lambda params: torch.optim.Adam(params, lr=0.001),
}
comparison = {}
for name, make_optimizer in optimizers.items():
    runtime.seed_everything(0)
    candidate = MnistCNN()
    run = train.fit(candidate, compare_loader, val_loader, make_optimizer(candidate.parameters()),
                    epochs=BUDGET.compare_epochs, device=device, verbose=False)
    comparison[name] = run.records[-1]
print(f"{len(compare_loader.dataset):,} training images, {BUDGET.compare_epochs} epoch(s) each")
print(f"{'optimiser':<38}{'train loss':>11}{'val accuracy':>14}")
for name, record in comparison.items():
    print(f"{name:<38}{record['train_loss']:>11.4f}{100 * record['val_accuracy']:>13.2f}%")
fig = plots.bar_chart(list(comparison), [100 * r["val_accuracy"] for r in comparison.values()],
                      title="Validation accuracy after the same training budget", ylabel="validation accuracy (%)",
                      annotate_format="{:.1f}")
fig.axes[0].tick_params(axis="x", labelsize=7)
plt.show()

# %% [markdown]
# With the same budget, the source's SGD settings learn the slowest: a learning rate of 0.001 is
# small for plain SGD on this network, so after one pass it is still far from the others. Raising
# the learning rate, or using Adam, which adapts the step size per parameter, gets much further
# with the same number of steps. Given enough epochs, all three would converge; the difference is
# how much compute they need.

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
# - *full fine-tuning*: start from all pre-trained weights (with a fresh last layer) and train everything;
# - *from scratch*: a randomly initialised network trained on the same few examples.

# %%
def digits_as_task(dataset: data.ImageDataset, first_digit: int) -> data.ImageDataset:
    """The examples of digits first_digit..first_digit+4, relabelled 0..4."""
    keep = ((dataset.labels >= first_digit) & (dataset.labels < first_digit + 5)).nonzero().flatten()
    chosen = dataset.select(keep)
    names = tuple(str(d) for d in range(first_digit, first_digit + 5))
    return data.ImageDataset(chosen.images, chosen.labels - first_digit, names, dataset.transform)


old_train = digits_as_task(train_set, 0)
new_train_pool = digits_as_task(train_set, 5)
few_shot = new_train_pool.select(data.balanced_indices(new_train_pool.labels, BUDGET.shots_per_class, seed=0))
new_test = digits_as_task(test_set, 5)
print(f"pre-training on digits 0-4: {len(old_train):,} images")
print(f"new task, digits 5-9: {len(few_shot)} labelled examples ({BUDGET.shots_per_class} per digit); test on {len(new_test):,}")

runtime.seed_everything(0)
pretrained = MnistCNN(num_classes=5)
pretrain_loader = DataLoader(old_train, batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0))
train.fit(pretrained, pretrain_loader, None, torch.optim.Adam(pretrained.parameters(), lr=1e-3),
          epochs=BUDGET.pretrain_epochs, device=device, monitor="train_loss")

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
    train.fit(adapted, few_shot_loader, None, torch.optim.Adam(trainable, lr=1e-3), epochs=BUDGET.finetune_epochs,
              device=device, monitor="train_loss", verbose=False)
    result = train.evaluate(adapted, new_test_loader, device=device)
    rows.append((strategy, count_parameters(adapted, trainable_only=True), result["accuracy"]))
print(f"{'strategy':<30}{'trainable parameters':>22}{'test accuracy, digits 5-9':>28}")
for strategy, trainable_count, accuracy in rows:
    print(f"{strategy:<30}{trainable_count:>22,}{100 * accuracy:>27.2f}%")

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
print(f"true label {label}, predicted {probabilities.argmax().item()} with probability {probabilities.max().item():.4f}")
assert torch.equal(restored(test_set[1][0].unsqueeze(0)).argmax(), model.cpu()(test_set[1][0].unsqueeze(0)).argmax())

# %% [markdown]
# ## The result record
#
# Every chapter ends by writing its figures to a JSON record (`results/02_mnist_cnn.<profile>.json`),
# which `benchmarks/run_chapter.py` collects and later chapters can read:

# %%
record_path = results.write_result_record("02_mnist_cnn", {
    "data": {"source": mnist.source.kind, "location": mnist.source.location, "budget_adjustments": list(splits.adjustments), "train": len(train_set),
             "validation": len(val_set), "test": len(test_set)},
    "model": {"name": "MnistCNN", "parameters": count_parameters(model)},
    "metrics": {"test_accuracy": test_accuracy, "best_val_accuracy": max(history["val_accuracy"]),
                "optimizer_comparison_val_accuracy": {name: r["val_accuracy"] for name, r in comparison.items()},
                "few_shot_test_accuracy": {strategy: accuracy for strategy, _, accuracy in rows}},
    "training": {"epochs_run": len(history), "seconds": train_seconds,
                 "samples_per_second": sum(history["samples_per_second"]) / len(history)},
    "chapter_seconds": time.perf_counter() - CHAPTER_STARTED,
})
print(f"wrote {record_path}")

# %% [markdown]
# ## Summary
#
# - MNIST has 60,000 training and 10,000 test images; a validation split comes out of the training
#   part, and the test set is used once, at the end.
# - Normalising with the data's own mean and standard deviation (0.1307, 0.3081) centres the inputs.
# - The network's convolutions hold few parameters and most of the compute; its first linear layer
#   holds most of the parameters.
# - One loop, `train.fit`, trains every model of this book: it records a history, validates,
#   checkpoints, stops early and restores the best weights.
# - The optimiser and its learning rate decide how much compute a result costs: the source's SGD
#   settings are the slowest of the three we measured.
# - Pre-trained features make learning from a few examples possible; that is fine-tuning.

# %% [markdown]
# ## Exercises
#
# 1. Train with the source's normalisation (mean 0.5, std 0.5) instead. Does the accuracy change
#    after the same number of epochs?
# 2. Remove the second convolution block (conv64 + pool) and adjust the first linear layer. How do the
#    parameter count and the test accuracy change?
# 3. In the fine-tuning experiment, vary `shots_per_class` from 1 to 50. Where does training from
#    scratch catch up?
# 4. Save a checkpoint after one epoch and resume training with `train.fit(..., resume=True)`. Check
#    that the history continues at epoch 2.
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. Replace the transform by `v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize((0.5,), (0.5,))])`.
#    The network still trains — normalisation is not magic — but its inputs are then off-centre
#    (background at -1, not near 0). Compare the two histories epoch by epoch rather than only the
#    final accuracy.
# 2. With one block the feature map is $32 \times 14 \times 14 = 6{,}272$ values, so the first linear
#    layer becomes `nn.Linear(6272, 128)` and the model grows to $320 + 6272 \cdot 128 + 128 + 1290 = 804{,}554$
#    parameters — almost twice as many, for a network with a smaller receptive field. Measure the
#    test accuracy of both under the same budget.
# 3. Loop over `shots_per_class` in `(1, 5, 10, 50)` and rerun the three strategies; the gap closes
#    as the few-shot set grows, because there is then enough data to learn useful features from scratch.
# 4. Call `train.fit(model, ..., epochs=1, checkpoint_dir=d)` and then
#    `train.fit(model, ..., epochs=3, checkpoint_dir=d, resume=True)`; the returned history's
#    `history["epoch"]` is `[1, 2, 3]`.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`lecun1998gradient` — MNIST and convolutional networks for digit recognition.
# - {cite:t}`kingma2015adam` — the Adam optimiser; {cite:t}`loshchilov2019decoupled` — AdamW.
# - {cite:t}`smith2019super` — the one-cycle learning-rate schedule.
# - {cite:t}`yosinski2014transferable` — how transferable the features of a trained network are.
