# ---
# jupyter:
#   jupytext:
#     comment_magics: false
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
# # Scaling out: one training loop from a laptop to a cluster
#
# Every chapter so far trained on one device. One device sets the pace of fine-tuning bert-base
# on the full IMDB set, and a 7-billion-parameter model does not even fit on one (its training
# states alone need about 108 GB, as a cell below computes). This chapter takes
# the loop of chapter 2 to many processes — many GPUs in one machine, many machines — with
# PyTorch's own distributed engine: `torch.distributed`, launched by `torchrun`,
# `DistributedDataParallel` (DDP) and, for models that do not fit, FSDP2
# (`torch.distributed.fsdp.fully_shard`). The training script does not change.
#
# **What you will learn**
#
# - data parallelism from zero: each process computes the gradient of its share of the batch,
#   and one `all_reduce` averages them — written by hand, then checked against DDP;
# - how `torchrun` starts processes (rank, local rank, world size, rendezvous), with the exact
#   commands for 1 GPU, 8 GPUs, 4 nodes × 8 GPUs and a SLURM job;
# - that `train.fit` runs unchanged under `torchrun`, and what global batch it then trains with;
# - memory arithmetic: weights, gradients, Adam states and activations, where DDP stops fitting
#   and sharding (FSDP, ZeRO-3) takes over, and what activation checkpointing costs;
# - communication arithmetic: what a ring all-reduce moves, and the scaling efficiency it allows
#   over NVLink, PCIe and Ethernet;
# - why a large global batch needs its learning rate scaled and warmed up.
#
# **Prerequisites**: chapter 2 (the training loop, `train.fit`); chapter 4 helps for the BERT
# figures. No GPU is needed: everything here runs with 2 processes on a CPU, and the one cell that
# measures GPU scaling runs only where GPUs are present.
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
import contextlib
import io
import os
import pprint
import runpy
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from IPython.display import display
from torch import nn
from torch.utils.data import DataLoader
from torchvision.models import resnet18
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
)

from tutorial_lib import data, plots, results, runtime, train
from tutorial_lib.models import MnistCNN, count_parameters
from tutorial_lib.training import launch
from tutorial_lib.training.strategy import fsdp_unit_names


# %%
@dataclass(frozen=True)
class Budget:
    train_size: int  # MNIST training images for the 1- vs. 2-process runs
    val_size: int
    epochs: int
    large_batch_train_size: int  # the large-batch experiment
    large_batch_epochs: int
    bert_layers: int  # the BERT whose activations we measure (12 = bert-base)
    bert_hidden: int
    sequence_length: int
    timing_repeats: int  # forward/backward timings: the median of this many


BUDGETS = {
    "smoke": Budget(
        train_size=512,
        val_size=256,
        epochs=1,
        large_batch_train_size=512,
        large_batch_epochs=1,
        bert_layers=2,
        bert_hidden=128,
        sequence_length=32,
        timing_repeats=3,
    ),
    "cpu": Budget(
        train_size=8_000,
        val_size=2_000,
        epochs=1,
        large_batch_train_size=4_000,
        large_batch_epochs=3,
        bert_layers=12,
        bert_hidden=768,
        sequence_length=128,
        timing_repeats=5,
    ),
    "gpu": Budget(
        train_size=50_000,
        val_size=5_000,
        epochs=2,
        large_batch_train_size=20_000,
        large_batch_epochs=4,
        bert_layers=12,
        bert_hidden=768,
        sequence_length=128,
        timing_repeats=3,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(results.published_time(results.read_published_record("07_scaling_out", run.profile)))
BUDGET, device, generator = run.budget, run.device, run.generator
pprint.pp(BUDGET, width=100)  # one field a line when the budget is long

# %% [markdown]
# The scripts this chapter launches are files beside it, in `chapters/scripts/`, which the page
# prints before running each one. A notebook opened on its own (on Colab) fetches them first.

# %%
SCRIPTS = Path("scripts").resolve()  # the book and the tests run this notebook from chapters/
SCRIPT_NAMES = ("allreduce_by_hand.py", "train_mnist.py", "fsdp_bert.py")
REPOSITORY_FILES = REPOSITORY.replace("github.com", "raw.githubusercontent.com") + "/main"
if not all((SCRIPTS / name).is_file() for name in SCRIPT_NAMES):
    SCRIPTS = run.scratch_dir("scaling-out-scripts")
    for name in SCRIPT_NAMES:
        urllib.request.urlretrieve(f"{REPOSITORY_FILES}/chapters/scripts/{name}", SCRIPTS / name)
print(f"scripts: {', '.join(SCRIPT_NAMES)} in {SCRIPTS.name}/")

# %% [markdown]
# ## Data parallelism from zero
#
# Data parallelism keeps a full copy of the model in every process and splits each batch between
# them. If process $r$ of $N$ computes the gradient $g_r$ of the mean loss over its $b$ examples,
# the gradient of the mean loss over all $Nb$ examples is simply the average
# $\frac{1}{N}\sum_r g_r$. One collective operation, **all-reduce**, sums a tensor over all
# processes and hands every process the result; divide by $N$ and every process holds the same
# averaged gradient, takes the same optimiser step, and the copies stay identical.
#
# A notebook is one process, so we launch two copies of a script with `torchrun`. The script
# below computes the averaged gradient three ways: by hand with
# `torch.distributed.all_reduce`, with `DistributedDataParallel`, and in one process over the
# whole batch.

# %%
allreduce_script = SCRIPTS / "allreduce_by_hand.py"
plots.show_source(allreduce_script)

# %%
started = time.perf_counter()
by_hand = launch.result_lines(launch.torchrun(allreduce_script, nproc_per_node=2))[-1]
print(f"{by_hand['world_size']} processes, {time.perf_counter() - started:.1f} s with start-up")
print(f"largest gradient difference, by hand vs. DDP:          {by_hand['hand_vs_ddp']:.2e}")
print(
    f"largest gradient difference, by hand vs. whole batch:  {by_hand['hand_vs_whole_batch']:.2e}"
)

# %% [markdown]
# The hand-written average equals DDP's gradient and the one-process gradient of the whole batch,
# up to float rounding (differences of order $10^{-8}$ come from summing in another order).
# That is all data parallelism is. DDP adds engineering: it all-reduces gradients in *buckets*
# of about 25 MB while the backward pass is still computing the earlier layers, so communication
# overlaps computation {cite:p}`li2020pytorch`; it broadcasts rank 0's weights at the start so
# every copy begins equal; and it can skip the all-reduce on gradient-accumulation micro-steps
# (`no_sync`).
#
# The launch command, `python -m torch.distributed.run --nproc_per_node=2 script.py`, is the
# `torchrun` command. It started two processes and gave each its identity in environment
# variables:
#
# | variable | meaning | here |
# |---|---|---|
# | `WORLD_SIZE` | number of processes in the job | 2 |
# | `RANK` | this process's number in the job, 0 … `WORLD_SIZE`−1 | 0 or 1 |
# | `LOCAL_RANK` | its number on this machine: which GPU it uses | 0 or 1 |
# | `MASTER_ADDR`, `MASTER_PORT` | where the processes meet (*rendezvous*) | 127.0.0.1, free port |
#
# `init_process_group` reads them and connects the processes through a *c10d store* on the
# master address; the *backend* then carries the collectives: `gloo` on CPUs, `nccl` between
# NVIDIA GPUs.

# %% [markdown]
# ## The same with `train.fit`
#
# The loop of this book does this for you. Under `torchrun` (it recognises the variables above)
# `fit` initialises the process group, wraps the model in DDP, gives each process its share of
# the training set through a `DistributedSampler`, averages gradients, evaluates on the *whole*
# validation set with every process holding the same numbers, and lets only rank 0 print and
# write checkpoints. Each optimiser step of `fit` is one call of `train.train_step` on a group of
# `accumulation_steps` batches; here it is — the same lines run on one CPU and on 32 GPUs, and the
# placement decisions live in the `Strategy` object it is given:

# %%
plots.show_source(train.train_step)

# %% [markdown]
# `strategy.sync_gradients` is DDP's `no_sync` on every micro-step but the last of an optimiser
# step, so with `accumulation_steps=k` the processes communicate once per $k$ micro-batches. The
# **global batch** — the number of examples behind one optimiser step — is
#
# $$\text{global batch} = \text{per-process batch} \times \text{number of processes} \times
# \text{accumulation steps}.$$
#
# The training script below is an ordinary chapter-2-style script: nothing in it mentions
# processes, except that only rank 0 prints the result line at the end. We run it with the same
# global batch of 64 three ways: as one process with a batch of 64 — inside this notebook's
# kernel, exactly as `python train_mnist.py` would — first on one CPU thread, then on all the
# cores through PyTorch's threads; and with `torchrun` as two processes with a batch of 32 and
# half the cores each.

# %%
train_script = SCRIPTS / "train_mnist.py"
plots.show_source(train_script)

# %%
global_batch = 64
common = [
    "--train-size",
    str(BUDGET.train_size),
    "--val-size",
    str(BUDGET.val_size),
    "--epochs",
    str(BUDGET.epochs),
]
on_cpu = ["--device", "cpu"]  # the comparison is about this machine's cores, GPU or not
cores = os.cpu_count() or 1


# %%
def run_in_this_process(script: Path, *args: str, threads: int) -> str:
    """Run ``python script args`` inside this kernel with ``threads`` CPU threads (no second torch
    start-up) and return what it printed."""
    saved_argv, saved_threads, captured = sys.argv, torch.get_num_threads(), io.StringIO()
    sys.argv = [str(script), *args]
    torch.set_num_threads(threads)
    try:
        with contextlib.redirect_stdout(captured):
            runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved_argv
        torch.set_num_threads(saved_threads)
    return captured.getvalue()


# %%
runs, walls = {}, {}
for threads in sorted({1, cores}):
    started = time.perf_counter()
    output = run_in_this_process(
        train_script, "--batch-size", str(global_batch), *common, *on_cpu, threads=threads
    )
    runs[f"1 process x {threads} thread(s)"] = launch.result_lines(output)[-1]
    walls[f"1 process x {threads} thread(s)"] = time.perf_counter() - started
two_name = f"2 processes x {max(1, cores // 2)} thread(s)"
started = time.perf_counter()
two_output = launch.torchrun(
    train_script,
    "--batch-size",
    str(global_batch // 2),
    *common,
    *on_cpu,
    nproc_per_node=2,
    threads_per_process=max(1, cores // 2),
)
walls[two_name] = time.perf_counter() - started
runs[two_name] = launch.result_lines(two_output)[-1]
print("the epoch lines of the 2-process run (printed by rank 0 only):")
print("\n".join(line for line in two_output.splitlines() if line.startswith("epoch")))
rows = [
    [
        name,
        f"{run['seconds']:.1f}",
        f"{run['samples_per_second']:.0f}",
        f"{walls[name]:.1f}",
        f"{100 * run['val_accuracy']:.2f}%",
    ]
    for name, run in runs.items()
]
headers = ["run (global batch 64)", "train s", "samples/s", "wall s", "val accuracy"]
display(plots.markdown_table(rows, headers, align="lrrrr"))

# %% [markdown]
# All runs train with a global batch of 64 — one process × 64, or two × 32 — for the same
# number of optimiser steps on the same data; compare their validation accuracies in the table.
# The numbers are not identical for two reasons: the shuffling differs (a `DistributedSampler`
# draws its own permutation), and the arithmetic differs — two processes sum each half-batch's
# gradient and then all-reduce the halves, one process sums all 64 in one go, and float addition
# in another order rounds differently (the $10^{-8}$ of the first cell); over hundreds of steps
# such differences grow. Even two one-process runs with 1 and 2 threads reduce in different
# orders. (With
# shuffling off, two processes × $b$ give the parameters of one process × $2b$ to float precision;
# the tests of `tutorial_lib` check exactly that, and also that a two-"node" run on one machine
# equals a one-node run, that a killed and resumed run continues bitwise, and FSDP2.)
#
# ### Why two processes are not faster here

# %%
one_thread, all_threads = runs["1 process x 1 thread(s)"], runs[f"1 process x {cores} thread(s)"]
two_processes = runs[two_name]
same_cores_overhead = two_processes["seconds"] / all_threads["seconds"] - 1
speedup_over_one_core = one_thread["seconds"] / two_processes["seconds"]
gradient_megabytes = 4 * two_processes["parameters"] / 1e6
steps = two_processes["train_examples"] // global_batch * BUDGET.epochs
print(f"CPU cores on this machine: {cores}")
print(
    f"2 processes vs. 1 process on the same {cores} cores: {100 * same_cores_overhead:+.0f}% "
    "training time"
)
print(
    f"2 processes (2 cores) vs. 1 process on 1 core: {speedup_over_one_core:.2f}x as fast\n"
    f"(2.00x would be perfect; parallel efficiency {50 * speedup_over_one_core:.0f}%)"
)
print(
    f"per optimiser step the 2 processes all-reduce {gradient_megabytes:.2f} MB of fp32 gradients"
)
print(f"{steps} steps: {steps * gradient_megabytes:.0f} MB through gloo")
print(
    f"start-up of the 2-process job (launcher, a torch import per process, data loading): "
    f"{walls[two_name] - two_processes['seconds']:.1f} s"
)

# %% [markdown]
# Data parallelism speeds training up by adding *hardware*: $N$ GPUs do $N$ times the arithmetic.
# Against one process on one core, the second process brings a second core, and the speed-up
# above is what data parallelism gives for it, minus its overhead. Against one process that
# already uses every core through intra-op threads, it brings nothing: this machine has the same
# cores either way, so the arithmetic per second cannot grow.
# What the second process adds is overhead: the gradient all-reduce above after every step, a
# second copy of the model and data, a second start-up (the largest item here). Whatever the sign
# of the measured difference, it says how well each arrangement uses the same cores, not what a
# second GPU would give: one process's threads synchronise on every operation and suffer most
# when other programs share the cores, while two single-threaded processes synchronise once per
# step. On real GPUs the all-reduce runs over NVLink or a network while the next layers compute;
# the sections below compute how much that costs.
#
# ## `torchrun` from one GPU to many machines
#
# The script above is launched like this, unchanged, on every scale:
#
# ```bash
# # one process: one GPU (or the CPU)
# python train_mnist.py
#
# # one machine, 8 GPUs: 8 processes, LOCAL_RANK 0..7 picks the GPU
# torchrun --standalone --nproc_per_node=8 train_mnist.py
#
# # 4 machines x 8 GPUs = 32 processes; run the same command on every machine
# torchrun --nnodes=4 --nproc_per_node=8 \
#     --rdzv-backend=c10d --rdzv-endpoint=node-0.cluster:29500 --rdzv-id=mnist-42 \
#     train_mnist.py
# ```
#
# `--standalone` starts a private rendezvous on a free local port. With several machines, every
# `torchrun` contacts the *rendezvous endpoint* (any host all nodes can reach, usually the first
# node), they agree on the job, and ranks 0–31 are handed out; `--rdzv-id` names the job so two
# jobs cannot meet by mistake. (The older static form, `--nnodes=4 --node_rank=R
# --master_addr=... --master_port=...`, also works; the tests of this book run it as two "nodes" on
# one machine.) On a SLURM cluster one `torchrun` runs per node:
#
# ```bash
# #!/bin/bash
# #SBATCH --job-name=mnist-ddp
# #SBATCH --nodes=4
# #SBATCH --ntasks-per-node=1          # one torchrun per node; it starts the 8 workers
# #SBATCH --gpus-per-node=8
# #SBATCH --cpus-per-task=32
# #SBATCH --time=01:00:00
#
# head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
# srun torchrun --nnodes="$SLURM_NNODES" --nproc_per_node=8 \
#     --rdzv-backend=c10d --rdzv-endpoint="$head_node:29500" --rdzv-id="$SLURM_JOB_ID" \
#     train_mnist.py --batch-size 64
# ```
#
# **Hugging Face Accelerate** is another API over the same engine: its `Accelerator.prepare`
# wraps the model in DDP or FSDP and the loaders in distributed samplers, and
# `accelerator.backward(loss)` replaces `loss.backward()`. Its launcher wraps `torchrun`;
# `accelerate launch --multi_gpu --num_machines=4 --machine_rank=$R --num_processes=32
# --main_process_ip=node-0.cluster --main_process_port=29500 train.py` is the equivalent of the
# four-node command above. We do not need a second loop for it: `train.fit` plays the same role
# here.

# %% [markdown]
# ## Memory: when one GPU cannot hold the model
#
# Training with Adam keeps, for every parameter, the weight, its gradient and Adam's two moment
# estimates. In fp32 that is $4 + 4 + 8 = 16$ bytes per parameter. Mixed precision in the
# ZeRO accounting {cite:p}`rajbhandari2020zero` keeps bf16 weights and gradients for the
# arithmetic plus an fp32 master copy and the two fp32 moments: $2 + 2 + 12 = 16$ bytes as well.
# (PyTorch's `autocast`, which `fit` uses, keeps fp32 weights and gradients and casts on the fly:
# also 16 bytes.) Mixed precision saves *activation* memory and time, not model-state memory.
#
# We count the parameters of this book's models and two larger ones exactly, by building them on
# PyTorch's `meta` device (shapes without storage, so a 7B model costs no memory):

# %%
GIGABYTE = 1e9
BYTES_PER_PARAMETER = {"fp32 + Adam": 4 + 4 + 8, "bf16 mixed + Adam": 2 + 2 + 12}


def bert_config(layers: int, hidden: int) -> BertConfig:
    return BertConfig(
        num_hidden_layers=layers,
        hidden_size=hidden,
        num_attention_heads=max(2, hidden // 64),
        intermediate_size=4 * hidden,
    )


def meta_parameters(build) -> int:
    with torch.device("meta"):
        return count_parameters(build())


# %%
model_sizes = {
    "MnistCNN (chapter 2)": count_parameters(MnistCNN()),
    "ResNet-18 (chapter 3)": meta_parameters(lambda: resnet18(num_classes=10)),
    "MiniLM-L6 BERT (chapters 4, 6)": meta_parameters(
        lambda: BertForSequenceClassification(bert_config(6, 384))
    ),
    "bert-base (chapter 4, gpu)": meta_parameters(
        lambda: BertForSequenceClassification(bert_config(12, 768))
    ),
    "BERT-large": meta_parameters(lambda: BertForSequenceClassification(bert_config(24, 1024))),
    "7B decoder (Llama-2-7B shape)": meta_parameters(lambda: LlamaForCausalLM(LlamaConfig())),
}
GPU_MEMORY_GB = 80  # assumption: an 80 GB data-centre GPU (A100 80GB, H100 80GB)
GPUS = 8
rows = []
for name, parameters in model_sizes.items():
    per_gpu = 16 * parameters / GIGABYTE
    fits = "DDP" if per_gpu < GPU_MEMORY_GB else "FSDP/ZeRO-3 only"
    rows.append([name, f"{parameters:,}", f"{per_gpu:.2f} GB", f"{per_gpu / GPUS:.2f} GB", fits])
headers = ["model", "parameters", "DDP: per GPU", f"FSDP over {GPUS}", f"fits {GPU_MEMORY_GB} GB?"]
display(plots.markdown_table(rows, headers, align="lrrrl"))
largest_ddp_model = GPU_MEMORY_GB * GIGABYTE / 16
print(
    f"DDP stops fitting an {GPU_MEMORY_GB} GB GPU at {largest_ddp_model / 1e9:.1f} billion "
    "parameters, before a single activation is stored"
)

# %% [markdown]
# DDP replicates all 16 bytes per parameter in every GPU, so it stops at about 5 billion
# parameters on an 80 GB GPU — less once activations need room. **Sharding** splits the model
# states instead: ZeRO stage 1 shards the optimiser states, stage 2 also the gradients, stage 3
# also the weights {cite:p}`rajbhandari2020zero`; with stage 3 each of $N$ GPUs holds $16/N$ bytes
# per parameter and gathers a unit's full weights just before the unit runs, freeing them after.
# PyTorch's implementation of stage 3 is FSDP {cite:p}`zhao2023pytorch`; FSDP2's `fully_shard` is
# what `train.Strategy.from_environment(parallel="fsdp")` applies. What a "unit" is decides the
# memory: if the whole encoder were one unit, all its weights would be gathered at once and the
# sharding would save little. `Strategy.wrap` therefore makes every transformer block a unit —
# the modules of an `nn.ModuleList` of repeated blocks (BERT's `encoder.layer[i]`, Llama's
# `model.layers[i]`, GPT-2's `transformer.h[i]`) — and the root, which keeps the embeddings and
# the head, last. For the 7B shape that rule gives:

# %%
with torch.device("meta"):
    llama = LlamaForCausalLM(LlamaConfig())
llama_units = fsdp_unit_names(llama)
block_parameters = max(count_parameters(llama.get_submodule(unit)) for unit in llama_units)
root_parameters = model_sizes["7B decoder (Llama-2-7B shape)"] - sum(
    count_parameters(llama.get_submodule(unit)) for unit in llama_units
)
sharded_gb = 16 * model_sizes["7B decoder (Llama-2-7B shape)"] / GIGABYTE / GPUS
print(f"FSDP units: {len(llama_units)} blocks ({llama_units[0]} … {llama_units[-1]}) + the root")
print(
    f"one block: {block_parameters:,} parameters, {4 * block_parameters / GIGABYTE:.2f} GB of "
    f"fp32 weights when gathered;\nthe root: {root_parameters:,} "
    f"({4 * root_parameters / GIGABYTE:.2f} GB)"
)
print(f"sharded model states per GPU over {GPUS} GPUs: {sharded_gb:.1f} GB")

# %% [markdown]
# So each of 8 GPUs holds its eighth of the model states (the figure above) and, on top of it,
# the gathered weights (and, in backward, the unsharded gradients) of the block that is computing
# — FSDP2 also prefetches the next block's weights, so one or two blocks at a time — plus the
# root's gathered weights and the activations. With the whole decoder as one unit, all its
# blocks' weights would be gathered at once; the block rule is what keeps the per-GPU figure
# near $16/N$ bytes per parameter.
#
# The same code runs on two CPU processes over gloo: a 2-layer BERT is sharded, trains one AdamW
# step on half the batch in each process, and its gathered weights are compared with one
# unsharded process that trains on the whole batch.

# %%
fsdp_script = SCRIPTS / "fsdp_bert.py"
plots.show_source(fsdp_script)

# %%
started = time.perf_counter()
fsdp_run = launch.result_lines(launch.torchrun(fsdp_script, nproc_per_node=2))[-1]
print(f"{fsdp_run['strategy']}, {time.perf_counter() - started:.1f} s with start-up")
print("FSDP units:", ", ".join(fsdp_run["units"]))
print(
    f"parameters: {fsdp_run['parameters']:,} in all; held per process: "
    + ", ".join(f"{held:,}" for held in fsdp_run["held_per_rank"])
)
held_share = max(fsdp_run["held_per_rank"]) / fsdp_run["parameters"]
agrees = fsdp_run["largest_difference"] < 1e-5
print(
    "largest weight difference after one step, sharded vs. one process: "
    f"{fsdp_run['largest_difference']:.1e} "
    + ("(equal up to float rounding)" if agrees else "(more than float rounding: investigate)")
)
print(f"each process holds at most {100 * held_share:.1f}% of the parameters")

# %% [markdown]
# The units are the encoder layers and the root, which holds the rest. FSDP2 splits every tensor
# along its first dimension between the processes (the last shard is shorter where the rows do
# not divide), so each process holds about $1/N$ of the weights and of Adam's states, and a step
# on sharded weights computes what one process with the whole batch computes.
#
# ### Activations and activation checkpointing
#
# Activations — every intermediate tensor the backward pass needs — grow with batch size and
# sequence length. We measure them directly: `torch.autograd.graph.saved_tensors_hooks` sees every
# tensor the forward pass saves for backward; we add up their sizes (parameters excluded).


# %%
def saved_activation_bytes(model: nn.Module, inputs: dict) -> int:
    """Bytes of the tensors a forward pass saves for backward (each storage counted once)."""
    parameter_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def remember(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameter_storages:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(remember, lambda tensor: tensor):
        model(**inputs).logits.sum()
    return sum(saved.values())


def step_seconds(model: nn.Module, inputs: dict, backward: bool = True) -> float:
    """Seconds of one forward pass, and of the backward pass too with ``backward``."""
    started = time.perf_counter()
    loss = model(**inputs).logits.sum()
    if backward:
        loss.backward()
    return time.perf_counter() - started


def set_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Switch activation checkpointing on or off (transformers 5 renamed the methods from
    ``gradient_checkpointing_*``; older versions have only those names)."""
    action = "enable" if enabled else "disable"
    method = getattr(model, f"activation_checkpointing_{action}", None)
    (method or getattr(model, f"gradient_checkpointing_{action}"))()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


# %% [markdown]
# With these helpers, one small BERT is measured twice, as it is and with activation
# checkpointing: the bytes saved for backward, and the time of a forward and a training step.

# %%
torch.manual_seed(0)
bert = BertForSequenceClassification(bert_config(BUDGET.bert_layers, BUDGET.bert_hidden)).train()
bert.config.use_cache = False  # an encoder keeps no cache; transformers warns when it is on
batch = {"input_ids": torch.randint(0, bert.config.vocab_size, (1, BUDGET.sequence_length))}
plain_bytes = saved_activation_bytes(bert, batch)
set_checkpointing(bert, True)
checkpointed_bytes = saved_activation_bytes(bert, batch)
# One untimed pass of each kind pays for one-off allocations; then the two kinds alternate, so
# a change in the machine's load during the measurement hits both alike.
timings = {"forward": [], "plain": [], "checkpointed": []}
for repeat in range(1 + BUDGET.timing_repeats):
    for kind in timings:
        set_checkpointing(bert, kind == "checkpointed")
        seconds = step_seconds(bert, batch, backward=kind != "forward")
        if repeat:
            timings[kind].append(seconds)
forward_seconds, plain_seconds, checkpointed_seconds = (
    median(timings[kind]) for kind in ("forward", "plain", "checkpointed")
)

# %%
checkpointing_ratio = checkpointed_seconds / plain_seconds
print(
    f"BERT with {BUDGET.bert_layers} layers, hidden size {BUDGET.bert_hidden}, "
    f"{count_parameters(bert):,} parameters, one sequence of {BUDGET.sequence_length} tokens, "
    "fp32:"
)
print(
    f"  activations saved for backward: {plain_bytes / 1e6:.1f} MB "
    f"-> {checkpointed_bytes / 1e6:.1f} MB with activation checkpointing "
    f"({plain_bytes / checkpointed_bytes:.0f}x less)"
)
print(
    f"  medians of {BUDGET.timing_repeats} alternating timings: forward alone "
    f"{forward_seconds:.3f} s, forward + backward {plain_seconds:.3f} s;\n"
    f"  recomputing the forward adds about {100 * forward_seconds / plain_seconds:.0f}% of "
    "arithmetic"
)
print(
    f"  measured with checkpointing: {checkpointed_seconds:.3f} s "
    f"({100 * (checkpointing_ratio - 1):+.0f}%); the spread of the timings of each kind:\n    "
    + ", ".join(f"{kind} {min(t):.3f}-{max(t):.3f} s" for kind, t in timings.items())
)
if checkpointing_ratio >= 1:
    print("  here checkpointing cost time, as the recomputation predicts")
else:
    print(
        "  here checkpointing was faster: the extra forward pass was outweighed by something this "
        "measurement does not separate (for example writing and re-reading the larger saved "
        "activations without checkpointing)"
    )
per_sequence_gb = plain_bytes / GIGABYTE
print(
    f"  a per-GPU batch of 32 such sequences: {32 * per_sequence_gb:.2f} GB of fp32 activations "
    f"(about half in bf16)"
)

# %% [markdown]
# Activation memory is linear in the batch: double the per-GPU batch and it doubles, which is why
# gradient accumulation (smaller micro-batches, same global batch) is the first remedy when
# activations do not fit. **Activation checkpointing** keeps only each layer's input and recomputes
# the layer's inside during backward: the saved activations shrink by the factor printed above,
# and the arithmetic grows by one more forward pass (the share printed above). Whether the step
# takes that much longer is a measurement, and the lines above say what this run found: a median
# of a few timings of one sequence on this machine, for a model that may be tiny (the `smoke`
# profile), where memory traffic, allocation and other programs on the same cores can outweigh
# the extra arithmetic in either direction. Measure it on the hardware and batch you train with
# before deciding.
#
# ## Communication: what an all-reduce costs
#
# The standard all-reduce is a **ring**: the $N$ GPUs pass chunks to their neighbour, first
# summing (reduce-scatter), then distributing the sums (all-gather). Each GPU sends and receives
# $2\frac{N-1}{N}$ times the gradient size per step: 1× at $N = 2$, 1.75× at $N = 8$, and never
# more than 2× however many GPUs join — it grows with $N$, but is bounded, which is why data
# parallelism scales at all. The time is that volume over the link's bandwidth, plus a latency
# per hop that does grow with $N$ (the ring has $2(N-1)$ steps), which we leave out.
#
# The bandwidths below are **round, illustrative figures per direction, not measurements**:
# NVLink 3 on an A100 is quoted at 600 GB/s in total, 300 GB/s each way; PCIe 4.0 × 16 is 32 GB/s
# each way in theory, of which we take 25; 100 Gb/s Ethernet is 12.5 GB/s in theory. Measure your
# own cluster with `nccl-tests` before trusting any of them.

# %%
LINK_GB_PER_SECOND = {"NVLink": 300.0, "PCIe 4.0 x16": 25.0, "100 Gb/s Ethernet": 12.5}


def ring_allreduce_seconds(gradient_bytes: float, processes: int, gb_per_second: float) -> float:
    """Seconds for a ring all-reduce: each process moves 2(N-1)/N x the bytes over its link."""
    return 2 * (processes - 1) / processes * gradient_bytes / (gb_per_second * GIGABYTE)


BACKWARD_SHARE = 2 / 3  # assumption: backward is about two thirds of a step's compute


def scaling_efficiency(
    compute_seconds: float,
    communication_seconds: float,
    overlap: bool = False,
    accumulation_steps: int = 1,
) -> float:
    """Useful fraction of a step: compute / (compute + the communication not hidden).

    With ``overlap`` the all-reduce runs during the backward pass of the last micro-batch (DDP's
    buckets), so at best it hides ``BACKWARD_SHARE`` of one micro-batch's compute and the rest is
    exposed; gradients are reduced once per ``accumulation_steps`` micro-batches."""
    compute = accumulation_steps * compute_seconds
    hidden = min(communication_seconds, BACKWARD_SHARE * compute_seconds) if overlap else 0.0
    return compute / (compute + communication_seconds - hidden)


# %% [markdown]
# Three settings for chapter 4's `gpu` model, bert-base, from one node with NVLink to four nodes
# on Ethernet:

# %%
bert_base_gradient_bytes = 4 * model_sizes["bert-base (chapter 4, gpu)"]  # DDP reduces fp32 grads
STEP_COMPUTE_SECONDS = 0.05  # assumption: one bert-base step (32 x 128 tokens) on one GPU
scenarios = {
    "8 GPUs, NVLink": ring_allreduce_seconds(
        bert_base_gradient_bytes, 8, LINK_GB_PER_SECOND["NVLink"]
    ),
    "8 GPUs, PCIe only": ring_allreduce_seconds(
        bert_base_gradient_bytes, 8, LINK_GB_PER_SECOND["PCIe 4.0 x16"]
    ),
    # 4 nodes: reduce inside each node over NVLink, then a ring over the 4 nodes' network cards
    "4 nodes x 8 GPUs, 100 Gb/s Ethernet": (
        ring_allreduce_seconds(bert_base_gradient_bytes, 8, LINK_GB_PER_SECOND["NVLink"])
        + ring_allreduce_seconds(
            bert_base_gradient_bytes, 4, LINK_GB_PER_SECOND["100 Gb/s Ethernet"]
        )
    ),
}
print(
    f"bert-base: {bert_base_gradient_bytes / 1e6:.0f} MB of fp32 gradients per step; "
    f"compute per step assumed {1000 * STEP_COMPUTE_SECONDS:.0f} ms"
)

# %%
communication_table = {}
for setting, seconds in scenarios.items():
    row = {
        "allreduce_ms": 1000 * seconds,
        "efficiency": scaling_efficiency(STEP_COMPUTE_SECONDS, seconds),
        "hidden_ms": 1000 * min(seconds, BACKWARD_SHARE * STEP_COMPUTE_SECONDS),
        "efficiency_overlapped": scaling_efficiency(STEP_COMPUTE_SECONDS, seconds, overlap=True),
        "efficiency_overlapped_accumulation_4": scaling_efficiency(
            STEP_COMPUTE_SECONDS, seconds, overlap=True, accumulation_steps=4
        ),
    }
    communication_table[setting] = row
rows = [
    [
        setting,
        f"{row['allreduce_ms']:.1f} ms",
        f"{row['allreduce_ms'] - row['hidden_ms']:.1f} ms",
        f"{100 * row['efficiency']:.0f}%",
        f"{100 * row['efficiency_overlapped']:.0f}%",
        f"{100 * row['efficiency_overlapped_accumulation_4']:.0f}%",
    ]
    for setting, row in communication_table.items()
]
headers = [
    "setting",
    "all-reduce",
    "exposed if overlapped",
    "no overlap",
    "overlapped",
    "+ accum 4",
]
display(plots.markdown_table(rows, headers, align="lrrrrr"))
print(
    f"overlap can hide at most the backward pass: {BACKWARD_SHARE:.2f} x "
    f"{1000 * STEP_COMPUTE_SECONDS:.0f} ms = {1000 * BACKWARD_SHARE * STEP_COMPUTE_SECONDS:.0f} ms "
    "per step\n(an upper bound: the last bucket can only start when backward ends)"
)

# %% [markdown]
# Read the table against the assumed 50 ms of compute. Within one NVLink machine the all-reduce
# of bert-base's gradients is a few milliseconds. Over PCIe, or between machines over 100 Gb/s
# Ethernet, it is comparable to the computation itself, and without overlap efficiency falls
# accordingly. DDP's buckets start all-reducing the last layers' gradients while the first layers
# still compute, so communication can hide behind the backward pass — but only behind it: at
# most about two thirds of a step's compute, here 33 ms. An all-reduce longer than that stays
# partly exposed however well it overlaps (the "exposed" column), and the "overlapped" column is
# an upper bound, since the last bucket cannot start before backward ends. Gradient accumulation
# helps the other way, by communicating once per several micro-batches. Faster networks
# (InfiniBand at 200–400 Gb/s per GPU) are what real clusters buy for exactly this reason.
#
# ## Large batches need their learning rate scaled
#
# Eight processes × 32 examples is a global batch of 256: eight times fewer optimiser steps per
# epoch. With the learning rate unchanged the model then learns less per epoch. The **linear
# scaling rule** multiplies the learning rate by the batch factor $k$; because a large rate is
# unstable while the weights are still random, it is reached by a **warm-up**, a linear ramp over
# the first steps {cite:p}`goyal2017accurate`. The rule is about the global batch, so we can test it
# in one process: the distributed runs above computed the same update as one process with the
# same global batch (their speed, of course, differed).

# %%
mnist = data.load_mnist()
splits = data.budget_splits(mnist, BUDGET.large_batch_train_size, BUDGET.val_size, test_size=1)
transform = data.mnist_transform()
large_batch_train, large_batch_val = (
    split.with_transform(transform) for split in (splits.train, splits.val)
)
val_loader = DataLoader(large_batch_val, batch_size=256)
BASE_BATCH, BASE_LR, FACTOR = 32, 0.01, 8


# %%
def large_batch_run(batch_size: int, lr: float, warmup_steps: int = 0) -> train.History:
    runtime.seed_everything(0)
    loader = DataLoader(
        large_batch_train,
        batch_size=batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    model = MnistCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ramp = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    )
    return train.fit(
        model,
        loader,
        val_loader,
        optimizer,
        epochs=BUDGET.large_batch_epochs,
        scheduler=ramp,
        verbose=False,
    )


# %%
large_steps_per_epoch = len(large_batch_train) // (BASE_BATCH * FACTOR) + 1
large_batch_runs = {
    f"batch {BASE_BATCH}, lr {BASE_LR}": large_batch_run(BASE_BATCH, BASE_LR),
    f"batch {BASE_BATCH * FACTOR}, lr {BASE_LR} (unscaled)": large_batch_run(
        BASE_BATCH * FACTOR, BASE_LR
    ),
    f"batch {BASE_BATCH * FACTOR}, lr {BASE_LR * FACTOR:g} (linear scaling)": large_batch_run(
        BASE_BATCH * FACTOR, BASE_LR * FACTOR
    ),
    f"batch {BASE_BATCH * FACTOR}, lr {BASE_LR * FACTOR:g} + warm-up": large_batch_run(
        BASE_BATCH * FACTOR, BASE_LR * FACTOR, warmup_steps=large_steps_per_epoch
    ),
}

# %% mystnb={"image": {"alt": "Validation accuracy per epoch: base batch vs 8x batch, lr scalings"}}
fig, axis = plt.subplots(figsize=(7, 4), facecolor="white")
for name, history in large_batch_runs.items():
    axis.plot(history["epoch"], [100 * a for a in history["val_accuracy"]], marker="o", label=name)
    print(
        f"{name}, validation accuracy per epoch: "
        + ", ".join(f"{100 * a:.2f}%" for a in history["val_accuracy"])
    )
axis.set(
    title=f"MNIST, {len(large_batch_train):,} images: large batches and the learning rate",
    xlabel="epoch",
    ylabel="validation accuracy (%)",
)
axis.legend(fontsize=8)
plt.show()

# %% [markdown]
# Compare the runs epoch by epoch. With the learning rate unchanged, the large batch takes eight
# times fewer steps of the same size and lags behind. Scaling the rate gives it back steps of
# the right size; the warm-up spends the first epoch ramping up to that rate instead of starting
# there. Whether the unwarmed scaled rate copes varies from run to run: a rate eight times larger
# applied to random weights can throw the network into a poor region that takes epochs to leave
# (read its first epochs above), which is what the warm-up prevents, at the price of a slow first
# epoch. MNIST with a batch of 256 is a mild case; Goyal et al. needed the warm-up for ImageNet
# batches of 8,192.
#
# ## Scaling on the GPUs present
#
# With CUDA devices, the next cell launches the training script on 1, 2, 4, … of them with a fixed
# per-GPU batch (so the global batch grows with the GPUs) and reports throughput and scaling
# efficiency. Its code, `launch.measure_scaling`, is tested on the CPU with two processes. Know
# what it measures: chapter 2's MnistCNN has 0.42 M parameters, so each step all-reduces about
# 1.7 MB of gradients (printed near the start of the chapter), and a GPU computes its step so
# quickly that the Python, the data loading on the CPU (one CPU thread per process,
# `measure_scaling`'s default) and the launcher around it weigh as much.
# The efficiency it reports is therefore mostly that of this overhead, not of communication; it
# is not the measured counterpart of the bert-base arithmetic above, which would need a model
# with hundreds of megabytes of gradients.

# %%
gpu_scaling = None
if runtime.cuda_only_note("scaling over the GPUs of this machine"):
    counts = [count for count in (1, 2, 4, 8) if count <= torch.cuda.device_count()]
    gpu_scaling = launch.measure_scaling(train_script, counts, "--batch-size", "256", *common)
    for row in gpu_scaling:
        print(
            f"{row['processes']} GPU(s): {row['samples_per_second']:,.0f} samples/s, "
            f"efficiency {100 * row['efficiency']:.0f}%"
        )

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record(
    "07_scaling_out",
    {
        "data": {
            "source": mnist.source.describe(),
            "sizes": splits.sizes(),
            "adjustments": list(splits.adjustments),
        },
        "allreduce_by_hand": by_hand,
        "one_vs_two_processes": {
            "global_batch": global_batch,
            "cpu_cores": cores,
            "runs": runs,
            "wall_seconds": walls,
            "two_processes_vs_one_on_same_cores_overhead": same_cores_overhead,
            "two_processes_speedup_over_one_core": speedup_over_one_core,
        },
        "memory": {
            "parameters": model_sizes,
            "bytes_per_parameter": BYTES_PER_PARAMETER,
            "activation_bytes_per_sequence": plain_bytes,
            "activation_bytes_checkpointed": checkpointed_bytes,
            "checkpointing_time_ratio": checkpointing_ratio,
            "timing_repeats": BUDGET.timing_repeats,
        },
        "communication": {
            "assumed_gb_per_second": LINK_GB_PER_SECOND,
            "assumed_step_seconds": STEP_COMPUTE_SECONDS,
            "bert_base": communication_table,
        },
        "large_batch_val_accuracy": {
            name: h["val_accuracy"] for name, h in large_batch_runs.items()
        },
        "gpu_scaling": gpu_scaling,
        "chapter_seconds": run.seconds(),
    },
)
print(f"wrote {record_path.name}")

# %% [markdown]
# ## Summary
#
# - Data parallelism is one idea: each process computes the gradient of its share of the batch and
#   an all-reduce averages them; DDP does exactly that, in buckets overlapped with backward.
# - `torchrun` starts the processes and tells each its `RANK`, `LOCAL_RANK` and `WORLD_SIZE`; the
#   same script runs as `python script.py`, on 8 GPUs and on 4 × 8 GPUs.
# - `train.fit` runs unchanged under `torchrun`; global batch = per-process batch × processes ×
#   accumulation steps, and only rank 0 prints and writes checkpoints.
# - Adam training needs about 16 bytes per parameter before activations, in fp32 and in mixed
#   precision alike; DDP stops fitting an 80 GB GPU near 5 billion parameters, and sharding (FSDP,
#   ZeRO-3) divides the model states by the number of GPUs.
# - A ring all-reduce moves $2\frac{N-1}{N}$ × the gradient bytes per step; over fast links it is
#   cheap, over slow ones overlap and accumulation decide the scaling efficiency.
# - More processes on the same cores add overhead, not speed; a larger global batch needs a scaled,
#   warmed-up learning rate.

# %% [markdown]
# ## Exercises
#
# 1. In the all-reduce script, give rank 0 ten examples and rank 1 six. Is the hand-written
#    average still the whole-batch gradient? What would have to change?
# 2. Using the memory arithmetic, how many 80 GB GPUs does FSDP need for the model states of a
#    70-billion-parameter model? How much does each hold?
# 3. With the communication calculator, find the per-step compute time at which 4 nodes over
#    100 Gb/s Ethernet reach 90% efficiency for bert-base without overlap.
# 4. Run the training script with `--batch-size 16` on 2 processes with `accumulation_steps=2`
#    added to its `fit` call. What is the global batch, and which run above should it match?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. No: averaging the two means weights each rank's examples equally per rank, so rank 1's six
#    examples count as much as rank 0's ten. The correct gradient weights each mean by its share:
#    all-reduce `grad * local_count` and divide by the all-reduced total count. This is why
#    `DistributedSampler` gives every rank the same number of examples.
# 2. $16 \times 70 \cdot 10^9 = 1{,}120$ GB of model states; at 80 GB per GPU at least 14 GPUs
#    (80 GB each if perfectly sharded; in practice 16, leaving room for activations and for the
#    gathered layer).
# 3. Efficiency $= c / (c + t)$ with $t$ the all-reduce time from the table; 90% needs
#    $c = 9t$, i.e. nine times the printed all-reduce time of the 4-node row.
# 4. $16 \times 2 \times 2 = 64$, the global batch of both runs above; with shuffling off it would
#    give the same parameters as one process with batch 64 (the tests check this).
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`li2020pytorch` — PyTorch Distributed: DDP's design (buckets, overlap, `no_sync`).
# - {cite:t}`rajbhandari2020zero` — ZeRO: the memory accounting and the three sharding stages.
# - {cite:t}`zhao2023pytorch` — PyTorch FSDP, the ZeRO-3 implementation behind `fully_shard`.
# - {cite:t}`goyal2017accurate` — large minibatch SGD: linear learning-rate scaling with warm-up.
