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
# # Convolution math, from the formula to the layer
#
# A convolutional layer (卷积层) is a small weight tensor, the kernel (卷积核), slid over an image,
# taking a weighted sum at every position: a convolution (卷积). Everything else in this series —
# the MNIST classifier, ResNet, even TextCNN — is built from that one operation, so this chapter
# takes it apart: we write it ourselves twice, check every line against PyTorch, and count what it
# costs.
#
# **What you will learn**
#
# - what `nn.Conv2d` computes, element by element, and why it is a *cross-correlation*;
# - the output-size formula, and what padding (填充), stride (步幅), dilation (空洞) and groups
#   (分组) do to it;
# - two implementations of the layer — explicit loops and `unfold` (im2col) — that match
#   `torch.nn.functional.conv2d` to the last digit;
# - $1 \times 1$ convolutions, max and average pooling, parameter and multiply-accumulate (乘加运算)
#   counts, and receptive fields (感受野);
# - the backward pass of a convolution — the gradients for the input and for the kernel are
#   themselves convolutions — checked against autograd, and a kernel learned by gradient descent;
# - what classic hand-made kernels (edges, blur, sharpen) do to a real handwritten digit.
#
# **Prerequisites**: Python, basic tensor operations in PyTorch (`torch.tensor`, indexing,
# `.shape`), and matrix multiplication. No GPU is needed.
#
# The source series this book follows introduces the same material; where it is wrong — it
# writes the flipped-kernel formula of true convolution for a layer that does not flip — we say
# so and show the difference in code.
#
# **Time**: the cell that declares the budget prints how long this chapter's `cpu` run took
# when its record was published, in reference minutes ({doc}`../book/setup`): on a machine
# twice as fast as the reference, expect half. `TUTORIAL_PROFILE=smoke` runs every cell in a
# minute or two, with numbers that mean nothing.

# %% [markdown]
# ## Setup
#
# On Colab the first cell installs this book's helper package, `tutorial_lib`; everywhere else it
# is already installed (see {doc}`../book/setup`). The second cell declares this chapter's
# budget for each run profile — `smoke` (CI, tiny and meaningless numbers), `cpu` or `gpu` — and
# `runtime.start_chapter` prints the environment, seeds every random generator, picks the device
# and returns the budget of this run. Every chapter opens this way.

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
import textwrap
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display
from torch import nn

from tutorial_lib import conv, data, plots, results, runtime
from tutorial_lib.models import MnistCNN, count_parameters


# %%
@dataclass(frozen=True)
class Budget:
    timing_batch: int  # images in the loops / im2col / F.conv2d timing
    timing_size: int  # their height and width
    timing_repeats: int  # runs per implementation; the median is reported


BUDGETS = {
    "smoke": Budget(timing_batch=1, timing_size=12, timing_repeats=2),
    "cpu": Budget(timing_batch=4, timing_size=28, timing_repeats=5),
    "gpu": Budget(timing_batch=4, timing_size=28, timing_repeats=5),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(results.published_time(results.read_published_record("01_convolution_math", run.profile)))
BUDGET = run.budget
pprint.pp(BUDGET, width=100)  # one field a line when the budget is long

# %% [markdown]
# ## What a convolutional layer computes
#
# An `nn.Conv2d(C_in, C_out, k)` layer holds a weight tensor $w$ of shape
# $(C_{out}, C_{in}, k_h, k_w)$ and a bias $b$ of length $C_{out}$. For an input $x$ of shape
# $(N, C_{in}, H, W)$, output channel $o$ at position $(i, j)$ is
#
# $$
# y[n, o, i, j] = b[o] + \sum_{c=0}^{C_{in}-1} \sum_{u=0}^{k_h-1} \sum_{v=0}^{k_w-1}
#     x[n, c, i + u, j + v] \; w[o, c, u, v].
# $$
#
# In words: put the kernel on the image with its top-left corner at $(i, j)$, multiply what
# overlaps, add everything up. Every output channel has its own kernel, and each kernel spans
# *all* input channels. Here is that formula as loops — the function lives in `tutorial_lib.conv`,
# and what you read is its actual source:

# %%
plots.show_source(conv.cross_correlate2d_loops)

# %% [markdown]
# If that is really what `nn.Conv2d` does, it must give the same numbers as the layer. Let us
# check on a random input, with the layer's own weights:

# %%
layer = nn.Conv2d(in_channels=3, out_channels=4, kernel_size=3)
x = torch.randn(2, 3, 8, 8)
ours = conv.cross_correlate2d_loops(x, layer.weight, layer.bias)
theirs = layer(x)
print("output shape:", tuple(ours.shape))
print("largest difference from nn.Conv2d:", (ours - theirs).abs().max().item())

# %% [markdown]
# The difference is rounding noise of 32-bit floats (around $10^{-7}$): the loops *are* the layer.
# The test suite checks the same thing on random shapes, strides, paddings, dilations and group
# counts: `hypothesis` draws 60 configurations per run (`tests/test_conv.py` in the repository).

# %% [markdown]
# ## Cross-correlation is not convolution
#
# In signal processing, the convolution of an image $x$ with a kernel $w$ flips the kernel:
#
# $$
# (x * w)[i, j] = \sum_{u=0}^{k_h-1} \sum_{v=0}^{k_w-1} x[i - u, j - v] \; w[u, v].
# $$
#
# Substituting $u' = k_h - 1 - u$ and $v' = k_w - 1 - v$ turns it into a cross-correlation with
# the flipped kernel $\tilde w[u', v'] = w[k_h - 1 - u', k_w - 1 - v']$, **shifted by $k - 1$**:
#
# $$
# (x * w)[i + k_h - 1, \; j + k_w - 1] = \sum_{u', v'} x[i + u', j + v'] \; \tilde w[u', v']
# = (x \star \tilde w)[i, j].
# $$
#
# So the two sides agree only after the output index moves by $k_h - 1$ rows and $k_w - 1$
# columns: the convolution's first complete output sits at $(k_h - 1, k_w - 1)$, the
# cross-correlation's at $(0, 0)$. A few lines of loops check the identity, index by index:

# %%
signal = torch.randn(5, 6)
small_kernel = torch.randn(2, 3)
k_h, k_w = small_kernel.shape
flipped = small_kernel.flip(0, 1)
worst = 0.0
for i in range(signal.shape[0] - k_h + 1):
    for j in range(signal.shape[1] - k_w + 1):
        taps = [(u, v) for u in range(k_h) for v in range(k_w)]
        # left side: the textbook convolution at the shifted index (i + k_h - 1, j + k_w - 1)
        convolution = sum(
            signal[i + k_h - 1 - u, j + k_w - 1 - v] * small_kernel[u, v] for u, v in taps
        )
        correlation = sum(signal[i + u, j + v] * flipped[u, v] for u, v in taps)
        worst = max(worst, abs(convolution - correlation).item())
print(f"largest difference over all {(5 - k_h + 1) * (6 - k_w + 1)} valid positions: {worst:.1e}")

# %% [markdown]
# The source series' convolution article writes this flipped formula and calls it what a CNN
# computes. PyTorch
# (like every deep-learning library) computes the formula of the previous section, without the
# flip — mathematically a **cross-correlation** (互相关). For a learned kernel the difference
# does not matter (the network would simply learn the flipped kernel), but when you apply a
# *given* kernel — an edge detector, a blur — it does. Take an asymmetric kernel:

# %%
image = torch.arange(16.0).view(1, 1, 4, 4)
kernel = torch.tensor([[[[1.0, 2.0], [0.0, -1.0]]]])
print(f"F.conv2d:\n{F.conv2d(image, kernel)[0, 0]}")
print(f"cross-correlation (ours):\n{conv.cross_correlate2d_im2col(image, kernel)[0, 0]}")
print(f"true convolution (flipped kernel):\n{conv.convolve2d_true(image, kernel)[0, 0]}")

# %% [markdown]
# `F.conv2d` agrees with the cross-correlation; the true convolution gives other numbers. For a
# kernel that is symmetric under a half-turn — a box blur, a Laplacian — the two coincide.
#
# ### The source series' worked example
#
# The source series' numeric examples are in its TextCNN article, and they use the *unflipped*
# formula — the cross-correlation; the flipped formula appears only in its convolution article,
# which gives no numeric example. We check the first of them here: it convolves the
# $3 \times 3$ input $1, 2, \ldots, 9$ with the $2 \times 2$ kernel that has ones on its diagonal,
# and states that the top-left output is $1 + 5 = 6$:

# %%
worked_input = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
diagonal_kernel = torch.eye(2).view(1, 1, 2, 2)
worked_output = conv.cross_correlate2d_loops(worked_input, diagonal_kernel)
print(worked_input[0, 0])
print(f"output:\n{worked_output[0, 0]}")
assert worked_output[0, 0, 0, 0].item() == 6.0

# %% [markdown]
# The numbers agree with what `nn.Conv2d` computes. This diagonal kernel happens to be symmetric
# under the half-turn flip, so the flipped formula would give $6$ as well; the asymmetric kernel
# above shows that in general it does not.

# %% [markdown]
# ## The output size
#
# With kernel size $k$, padding $p$ (zeros added on each side), stride $s$ (how far the kernel
# jumps) and dilation $d$ (the gap between kernel taps), the output length along one axis is
#
# $$
# H_{out} = \left\lfloor \frac{H + 2p - d\,(k - 1) - 1}{s} \right\rfloor + 1 .
# $$
#
# The dilated kernel covers $d(k-1)+1$ pixels; the formula counts how many positions it can take
# on the padded input, one every $s$ pixels. A few cases, each checked against the shape
# `F.conv2d` really returns:

# %%
cases = [
    dict(kernel_size=3, stride=1, padding=0, dilation=1),
    dict(kernel_size=3, stride=1, padding=1, dilation=1),  # "same" padding for k = 3
    dict(kernel_size=3, stride=2, padding=1, dilation=1),  # halves the size
    dict(kernel_size=5, stride=1, padding=2, dilation=1),
    dict(kernel_size=3, stride=1, padding=2, dilation=2),  # 5-pixel span, 9 weights
    dict(kernel_size=2, stride=2, padding=0, dilation=1),  # like 2x2 pooling
]
probe = torch.zeros(1, 1, 28, 28)
rows = []
for case in cases:
    formula = conv.conv_output_size(28, **case)
    k = case["kernel_size"]
    actual = F.conv2d(
        probe,
        torch.zeros(1, 1, k, k),
        stride=case["stride"],
        padding=case["padding"],
        dilation=case["dilation"],
    ).shape[-1]
    rows.append([k, case["stride"], case["padding"], case["dilation"], formula, actual])
display(plots.markdown_table(rows, ["k", "s", "p", "d", "formula", "F.conv2d"]))

# %% [markdown]
# Two rules of thumb fall out: $p = (k-1)/2$ with stride 1 keeps the size ("same" padding, odd
# $k$), and stride 2 halves it. A kernel that does not fit is an error, not a silent empty
# output:

# %%
try:
    conv.conv_output_size(2, kernel_size=3)
except ValueError as error:
    print(textwrap.fill(f"ValueError: {error}", width=100))

# %% [markdown]
# ## Padding, stride, dilation and groups
#
# **Groups** split the channels into $g$ independent sets: each output channel only sees the
# $C_{in}/g$ input channels of its group, so the weight tensor shrinks to
# $(C_{out}, C_{in}/g, k_h, k_w)$. With $g = C_{in} = C_{out}$ every channel is filtered on its own:
# a **depthwise** convolution (深度可分离卷积 when followed by a $1 \times 1$ "pointwise" one, as
# in MobileNet). Our implementations handle all of it; compare them with PyTorch on one
# configuration that uses every option at once:

# %%
x = torch.randn(2, 6, 11, 9)
weight = torch.randn(9, 2, 3, 3)  # 9 output channels, 6 input channels in 3 groups of 2
bias = torch.randn(9)
options = dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=3)
reference = F.conv2d(x, weight, bias, **options)
for implementation in (conv.cross_correlate2d_loops, conv.cross_correlate2d_im2col):
    difference = (implementation(x, weight, bias, **options) - reference).abs().max().item()
    print(
        f"{implementation.__name__:<26} shape {tuple(reference.shape)}"
        f"  max |difference| {difference:.1e}"
    )

# %% [markdown]
# What groups buy is parameters and compute. A standard $3 \times 3$ convolution from 64 to 64
# channels against its depthwise-separable replacement, on a $56 \times 56$ feature map (特征图):

# %%
standard_params = conv.conv2d_parameter_count(64, 64, 3)
separable_params = conv.conv2d_parameter_count(64, 64, 3, groups=64) + conv.conv2d_parameter_count(
    64, 64, 1
)
standard_macs = conv.conv2d_macs(64, 64, 3, (56, 56))
separable_macs = conv.conv2d_macs(64, 64, 3, (56, 56), groups=64) + conv.conv2d_macs(
    64, 64, 1, (56, 56)
)
display(
    plots.markdown_table(
        [
            ["standard 3x3", f"{standard_params:,}", f"{standard_macs / 1e6:.1f} M"],
            ["depthwise 3x3 + 1x1", f"{separable_params:,}", f"{separable_macs / 1e6:.1f} M"],
            [
                "reduction",
                f"{standard_params / separable_params:.1f}x",
                f"{standard_macs / separable_macs:.1f}x",
            ],
        ],
        ["convolution, 64 to 64 channels", "parameters", "multiply-adds"],
        align="lrr",
    )
)

# %% [markdown]
# ### $1 \times 1$ convolutions
#
# The pointwise half of that pair is a $1 \times 1$ convolution. Its kernel sees one pixel, so it
# cannot detect any spatial pattern; what it does is mix channels: at every pixel, the $C_{in}$
# values go through the same linear map to $C_{out}$ values. It is a linear layer applied to each
# pixel's channel vector — the cheap way to change the channel count (ResNet's bottlenecks,
# MobileNet's pointwise step). The check: the layer and an `nn.Linear` holding the same weights.

# %%
pointwise = nn.Conv2d(64, 16, kernel_size=1)
per_pixel_linear = nn.Linear(64, 16)
with torch.no_grad():
    per_pixel_linear.weight.copy_(pointwise.weight[:, :, 0, 0])
    per_pixel_linear.bias.copy_(pointwise.bias)
feature_map = torch.randn(2, 64, 7, 7)
channels_last = feature_map.permute(0, 2, 3, 1)  # (N, H, W, C): one channel vector per pixel
linear_output = per_pixel_linear(channels_last).permute(0, 3, 1, 2)
difference = (pointwise(feature_map) - linear_output).abs().max().item()
print(
    f"1x1 conv {tuple(pointwise(feature_map).shape)}, max |difference| from the per-pixel linear "
    f"layer: {difference:.1e}"
)
print(f"parameters {count_parameters(pointwise):,} = 64 * 16 + 16")

# %% [markdown]
# ## im2col: convolution as one matrix product
#
# Loops over output positions are easy to read and slow to run. The trick every fast
# implementation starts from is *im2col*: copy every receptive-field patch into a column of a
# matrix (`F.unfold` does exactly that), flatten each kernel into a row, and a single matrix
# product computes all outputs at once.

# %%
x = torch.randn(1, 3, 5, 5)
columns = F.unfold(x, kernel_size=3)
print(
    "input",
    tuple(x.shape),
    "-> columns",
    tuple(columns.shape),
    "= (N, C_in * k * k, number of positions)",
)
plots.show_source(conv.cross_correlate2d_im2col)

# %% [markdown]
# The price is memory: each input pixel is copied into up to $k^2$ columns. The gain is that the
# heavy lifting becomes a matrix multiplication, which libraries run at close to peak speed.
# Because it is built from differentiable operations, autograd gives its gradients for free —
# the test suite checks them against those of `F.conv2d`.

# %% [markdown]
# ## The backward pass
#
# Training needs the gradient of a loss $L$ with respect to the layer's input (to pass it on to
# the layers below) and to its kernel (to update it), given the gradient $\delta = \partial L /
# \partial y$ that arrives from above. Differentiating $y[i, j] = \sum_{u,v} x[i+u, j+v]\,w[u, v]$
# (stride 1, one channel; channels add up the same way) gives two convolutions:
#
# - **weight gradient** — every output position used $w[u, v]$ once, on the input pixel
#   $x[i+u, j+v]$: $\;\partial L / \partial w[u, v] = \sum_{i, j} x[i+u, j+v]\, \delta[i, j]$, the
#   cross-correlation of the input with the output gradient;
# - **input gradient** — pixel $x[a, b]$ fed every output $y[a-u, b-v]$ with weight $w[u, v]$:
#   $\;\partial L / \partial x[a, b] = \sum_{u, v} \delta[a-u, b-v]\, w[u, v]$, a *true* convolution
#   of $\delta$ with the kernel, over the whole padded range ("full" convolution) — in the
#   cross-correlation form of this chapter: pad $\delta$ by $k - 1$ and correlate it with the
#   **flipped** kernel. Here the flip of the previous section comes back.
#
# With many channels, the input gradient sums over output channels and the weight gradient over the
# batch, which the code handles by swapping the channel and batch axes. All three gradients (with
# the bias's, a plain sum of $\delta$), computed with our own im2col correlation and compared with
# what autograd computes for `F.conv2d`:

# %%
x = torch.randn(2, 3, 7, 6, requires_grad=True)
weight = torch.randn(4, 3, 3, 3, requires_grad=True)
bias = torch.randn(4, requires_grad=True)
upstream = torch.randn(2, 4, 5, 4)  # dL/dy for the (2, 4, 5, 4) output, as if from the layers above
(F.conv2d(x, weight, bias) * upstream).sum().backward()  # autograd: L = sum(y * upstream)

k = weight.shape[-1]
with torch.no_grad():
    # input gradient: full correlation of dL/dy with the flipped kernel, channels in/out swapped
    flipped_kernel = weight.transpose(0, 1).flip(-2, -1)  # (C_in, C_out, k, k), flipped
    grad_input = conv.cross_correlate2d_im2col(upstream, flipped_kernel, padding=k - 1)
    # weight gradient: correlation of the input with dL/dy, batch and channel axes swapped
    grad_weight = conv.cross_correlate2d_im2col(x.transpose(0, 1), upstream.transpose(0, 1))
    grad_weight = grad_weight.transpose(0, 1)
    grad_bias = upstream.sum(dim=(0, 2, 3))
checks = {
    "input": (grad_input, x.grad),
    "weight": (grad_weight, weight.grad),
    "bias": (grad_bias, bias.grad),
}
for name, (ours, autograd) in checks.items():
    difference = (ours - autograd).abs().max().item()
    print(
        f"dL/d{name:<7} shape {str(tuple(ours.shape)):<15} max |ours - autograd| {difference:.1e}"
    )

# %% [markdown]
# So the backward pass of a convolution costs about two more convolutions of the same size, which
# is why a training step takes roughly three times the compute of a forward pass. (With stride $s$
# the same formulas hold with $\delta$ dilated by $s$; PyTorch's `conv_transpose2d` is exactly the
# input-gradient computation, used as a layer of its own in upsampling networks.)

# %% [markdown]
# ## Pooling
#
# Pooling (池化) summarises each window by its maximum or its mean, one channel at a time, with no
# weights. The source series' example: $2 \times 2$ max pooling with stride 2 of the
# numbers 1 to 16.

# %%
grid = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
print(f"input:\n{grid[0, 0]}")
print(f"max pooling:\n{conv.pool2d(grid, 2, mode='max')[0, 0]}")
print(f"average pooling:\n{conv.pool2d(grid, 2, mode='avg')[0, 0]}")
assert conv.pool2d(grid, 2).squeeze().tolist() == [[6.0, 8.0], [14.0, 16.0]]
assert torch.equal(conv.pool2d(grid, 2, mode="avg"), F.avg_pool2d(grid, 2))

# %% [markdown]
# Max pooling keeps the strongest response in each window (is there an edge *somewhere* here?),
# which makes the output tolerant of small shifts; average pooling smooths.

# %% [markdown]
# ## From scores to a loss: the cross-entropy example
#
# A classifier ends with one score (logit) per class; softmax turns them into probabilities, and
# the cross-entropy loss is minus the log-probability of the true class. The source series'
# example is a three-class prediction that gives the true class probability 0.7, so the loss is
# $-\ln 0.7 \approx 0.357$. In PyTorch, `F.cross_entropy` takes the logits; any logits whose
# softmax is $(0.7, 0.2, 0.1)$ — for instance their logarithms — give the same loss:

# %%
probabilities = torch.tensor([[0.7, 0.2, 0.1]])
logits = probabilities.log()
true_class = torch.tensor([0])
loss = F.cross_entropy(logits, true_class)
print("softmax(logits):", F.softmax(logits, dim=1))
print(f"cross-entropy: {loss.item():.4f}   (-ln 0.7 = {-torch.log(torch.tensor(0.7)).item():.4f})")

# %% [markdown]
# ## Classic kernels on a real digit
#
# Before networks learned their kernels, people designed them by hand. Applying a few to a real
# MNIST digit shows what a single convolution can see. The digit comes through
# `tutorial_lib.data`, which prints where it found MNIST (a local copy, the official download, or
# — announced loudly — a small bundled sample).

# %% mystnb={"image": {"alt": "An MNIST digit filtered by Sobel, Laplacian, blur, sharpen kernels"}}
mnist = data.load_mnist()
digit = mnist.test.images[0].float() / 255  # (1, 28, 28), pixels in [0, 1]
print("label of this digit:", mnist.test.labels[0].item())

classic_kernels = {
    "Sobel x (vertical edges)": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "Sobel y (horizontal edges)": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "Laplacian (all edges)": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "box blur": [[1 / 9] * 3] * 3,
    "sharpen": [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
}
kernels = torch.tensor(list(classic_kernels.values())).unsqueeze(
    1
)  # (5, 1, 3, 3): five output channels
responses = conv.cross_correlate2d_im2col(digit.unsqueeze(0), kernels, padding=1)[0]
fig = plots.image_grid(
    [digit, *responses],
    titles=["input digit", *classic_kernels],
    ncols=6,
    size=2.2,
    suptitle="3x3 kernels applied to a real MNIST digit (red: positive, blue: negative)",
    symmetric=True,
)
plt.show()

# %% [markdown]
# The Sobel kernels respond with opposite signs on the two sides of each stroke — left/right for
# $x$, top/bottom for $y$ — and stay at zero on flat background and flat ink. The Laplacian marks
# every outline; the blur softens the strokes; the sharpen kernel (identity plus a negative
# Laplacian) exaggerates the contrast at their borders. Chapter 2 draws the $3 \times 3$ kernels a
# CNN's first layer learns on its own, next to its feature maps, to compare with these.

# %% [markdown]
# ## Learning a kernel by gradient descent
#
# Can gradient descent find such a kernel by itself? Give it the Sobel-$x$ responses of some digits
# as targets, start from a random $3 \times 3$ kernel, and minimise the mean squared error with the
# gradients of the previous section — nothing else:

# %%
learning_digits = mnist.test.images[:64].float() / 255  # (64, 1, 28, 28)
sobel_x = kernels[:1]  # (1, 1, 3, 3)
targets = F.conv2d(learning_digits, sobel_x, padding=1)
torch.manual_seed(0)
learned = (0.1 * torch.randn(1, 1, 3, 3)).requires_grad_()
losses = []
for _ in range(300):
    loss = F.mse_loss(F.conv2d(learning_digits, learned, padding=1), targets)
    loss.backward()
    with torch.no_grad():
        learned -= 1.5 * learned.grad  # plain gradient descent, learning rate 1.5
        learned.grad.zero_()
    losses.append(loss.item())
print(
    f"mean squared error: {losses[0]:.4f} at the start, {losses[-1]:.2e} after {len(losses)} steps"
)
print(f"learned kernel:\n{learned.detach()[0, 0].numpy().round(3)}")
print(f"largest difference from Sobel x: {(learned - sobel_x).abs().max().item():.1e}")

# %% [markdown]
# The loss is a quadratic function of the nine weights, so gradient descent slides down to its one
# minimum, and with enough varied pixels that minimum is the Sobel kernel itself. (The learning
# rate matters even here: at 3.0 the steps overshoot and the loss explodes — try it.)
# A CNN does the
# same with a loss that only says which digit it was, and finds whatever kernels serve that goal.

# %% [markdown]
# ## Counting the MNIST network of chapter 2
#
# Chapter 2 trains the network of the source series: two $3 \times 3$ convolutions (32 and 64
# channels, padding 1), each followed by ReLU and $2 \times 2$ max pooling, then two linear layers.
# Its parameters, multiply-accumulates per image (one per weight per output position) and the
# receptive field of its last pooled feature, all counted by code:

# %%
model = MnistCNN()
print(model)
macs = conv.model_macs(model, (1, 28, 28))
rows = [
    [name, f"{count_parameters(module):,}", f"{macs[name]:,}"]
    for name, module in model.named_modules()
    if name in macs
]
rows.append(["total", f"{count_parameters(model):,}", f"{sum(macs.values()):,}"])
display(plots.markdown_table(rows, ["layer", "parameters", "multiply-adds"], align="lrr"))
field = conv.receptive_field_of(model)
print(f"receptive field of one feature after the second pooling: {field} x {field} pixels")

# %% [markdown]
# The split is lopsided in an instructive way: the convolutions do almost all of the *compute*
# while the first linear layer holds almost all of the *parameters* — it connects every one of the
# $64 \times 7 \times 7 = 3{,}136$ features to 128 units. Weight sharing (权值共享) is what makes
# convolutions cheap in parameters. Each final feature sees a $10 \times 10$ patch of the
# $28 \times 28$ digit, enough for a stroke or a loop but not the whole digit; the linear
# layers combine them.

# %% [markdown]
# ## How fast are loops, im2col and `F.conv2d`?
#
# The three implementations compute the same numbers. Timing them on the same input (the
# first convolution of the MNIST network, on the CPU, median of several runs; sizes from this
# chapter's budget):


# %% mystnb={"image": {"alt": "Bar chart: time of loops, im2col and F.conv2d, log scale"}}
def median_seconds(function, repeats: int) -> float:
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return sorted(timings)[len(timings) // 2]


timing_input = torch.randn(BUDGET.timing_batch, 32, BUDGET.timing_size, BUDGET.timing_size)
timing_weight = torch.randn(64, 32, 3, 3)
implementations = {
    "loops": lambda: conv.cross_correlate2d_loops(timing_input, timing_weight, padding=1),
    "im2col": lambda: conv.cross_correlate2d_im2col(timing_input, timing_weight, padding=1),
    "F.conv2d": lambda: F.conv2d(timing_input, timing_weight, padding=1),
}
with torch.no_grad():
    seconds = {
        name: median_seconds(run, BUDGET.timing_repeats) for name, run in implementations.items()
    }
print(
    f"input {tuple(timing_input.shape)}, weight {tuple(timing_weight.shape)}, "
    f"{torch.get_num_threads()} CPU threads"
)
rows = [
    [name, f"{value * 1e3:.2f} ms", f"{value / seconds['F.conv2d']:.0f}x"]
    for name, value in seconds.items()
]
display(plots.markdown_table(rows, ["implementation", "median time", "vs F.conv2d"], align="lrr"))
fig = plots.bar_chart(
    list(seconds),
    [value * 1e3 for value in seconds.values()],
    title="Same convolution, three implementations (CPU)",
    ylabel="median time per call (ms, log scale)",
    log_scale=True,
)
plt.show()

# %% [markdown]
# The loops run one small multiply-and-sum per output value in Python and lose by orders of
# magnitude; im2col turns the work into one matrix product and gets within a small factor of
# `F.conv2d`, which calls an optimised library: on x86 CPUs oneDNN, whose fp32 convolutions are
# direct, JIT-generated kernels rather than im2col; on NVIDIA GPUs cuDNN, which chooses among
# several algorithms, implicit GEMM (im2col's matrix product without building the matrix) among
# them. (Under the `smoke` profile the input is tiny and the ratios are mostly overhead.)

# %% [markdown]
# Like every chapter, this one ends by writing its measured figures to a result record
# (`results/01_convolution_math.<profile>.json`), which `benchmarks/run_chapter.py` collects:

# %%
record_path = results.write_result_record(
    "01_convolution_math",
    {
        "timing": {
            "input_shape": list(timing_input.shape),
            "weight_shape": list(timing_weight.shape),
            "median_ms": {name: value * 1e3 for name, value in seconds.items()},
            "repeats": BUDGET.timing_repeats,
        },
        "mnist_cnn": {
            "parameters": count_parameters(model),
            "multiply_adds": sum(macs.values()),
            "receptive_field": conv.receptive_field_of(model),
        },
        "data": {
            "source": mnist.source.kind,
            "location": runtime.display_path(mnist.source.location),
        },
    },
)
print(f"wrote {runtime.display_path(record_path)}")

# %% [markdown]
# ## Summary
#
# - `nn.Conv2d` computes a cross-correlation: a sliding weighted sum with no kernel flip. True
#   convolution flips the kernel; the two agree only for kernels symmetric under a half-turn.
# - Output size: $\lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1$. Padding $(k-1)/2$ keeps the size,
#   stride 2 halves it, dilation widens the view without adding weights, groups split the channels.
# - im2col turns a convolution into one matrix product — the same numbers as the loops, orders of
#   magnitude faster.
# - Pooling takes the maximum or mean of each window and has no parameters. A $1 \times 1$
#   convolution is a linear layer applied to every pixel's channels.
# - Backward: the kernel's gradient is the correlation of the input with the output gradient; the
#   input's gradient is a full convolution of the output gradient with the kernel (correlation with
#   the flipped kernel). Gradient descent with them recovers a Sobel kernel from its outputs.
# - In a small CNN, convolutions carry the compute and the first linear layer the parameters.

# %% [markdown]
# ## Exercises
#
# 1. A $224 \times 224$ input passes a $7 \times 7$ convolution with stride 2 and padding 3, then a
#    $3 \times 3$ max pooling with stride 2 and padding 1 (the stem of ResNet). What is the size
#    after each? Check with `conv.conv_output_size`.
# 2. Show that a $5 \times 5$ convolution and two stacked $3 \times 3$ convolutions have the same
#    receptive field. Which has fewer parameters for 64 input and 64 output channels?
# 3. Write the true convolution of the worked example with the kernel $[[1, 2], [3, 4]]$ by hand,
#    then check it with `conv.convolve2d_true`.
# 4. Change the box blur into a $5 \times 5$ one and apply it to the digit. What padding keeps
#    the $28 \times 28$ size?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. $\lfloor (224 + 6 - 6 - 1)/2 \rfloor + 1 = 112$, then
#    $\lfloor (112 + 2 - 2 - 1)/2 \rfloor + 1 = 56$: `conv.conv_output_size(224, 7, 2, 3)` and
#    `conv.conv_output_size(112, 3, 2, 1)`.
# 2. `conv.receptive_field([conv.LayerGeometry(5)])` and
#    `conv.receptive_field([conv.LayerGeometry(3)] * 2)` are both 5. Parameters (with bias):
#    $64 \cdot 64 \cdot 25 + 64 = 102{,}464$ against
#    $2 \cdot (64 \cdot 64 \cdot 9 + 64) = 73{,}856$.
# 3. Flip the kernel to $[[4, 3], [2, 1]]$ and slide it: the top-left output is
#    $4 \cdot 1 + 3 \cdot 2 + 2 \cdot 4 + 1 \cdot 5 = 23$, and the full output is
#    $[[23, 33], [53, 63]]$.
# 4. `torch.full((1, 1, 5, 5), 1 / 25)` with `padding=2`, since $(5 - 1)/2 = 2$.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`dumoulin2016guide` — the output-size arithmetic, with pictures of every case.
# - {cite:t}`goodfellow2016deep`, chapter 9 — convolution vs. cross-correlation, pooling.
# - {cite:t}`lecun1998gradient` — convolutional networks trained on MNIST.
# - {cite:t}`chellapilla2006high` — convolution as a matrix product (im2col) for speed.
# - {cite:t}`howard2017mobilenets` — depthwise-separable convolutions.
