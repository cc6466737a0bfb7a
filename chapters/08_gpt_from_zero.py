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
# # A GPT from zero: tokenizer, decoder, pre-training on IMDB's reviews, generation
#
# Every language model so far in this book was borrowed: chapters 4 and 6 fine-tuned MiniLM,
# which its authors distilled from a larger model and then trained on over a billion sentence
# pairs (chapter 4). This chapter builds one from nothing
# and pre-trains (预训练) it ourselves. The recipe is the one the series is named after: first learn
# from **unlabelled** text with a self-supervised task — predict the next token — then adapt the
# model with a little labelled data (chapter 9). The model is a decoder-only transformer with
# GPT-2's architecture {cite:p}`radford2019language`, the family today's large models descend
# from; the text is IMDB's own training reviews with their labels thrown away. ULMFiT
# {cite:p}`howard2018universal` pre-trained on general text (Wikitext-103) and then fine-tuned the
# language model on the task's own reviews before classifying, and found that second step worth
# much; here the task's text is all the model ever reads.
#
# A laptop CPU will not make a good writer of reviews in a quarter of an hour, and the chapter does
# not pretend otherwise. What it does is measure: it sets the model against the simplest language
# models there are (counting words, counting pairs of words), in a unit that does not depend on the
# tokenizer, and prints whether and where the transformer overtakes them.
#
# **What you will learn**
#
# - byte-level BPE, the tokenizer of GPT-2: written by hand (count pairs, merge, repeat), then
#   trained with Hugging Face `tokenizers` — and checked to learn exactly the same merges;
# - choosing the vocabulary size by measurement: bytes per token against the output layer's share
#   of the compute;
# - GPT-2's architecture: causal self-attention written by hand and checked against the package,
#   pre-LayerNorm blocks, tied embeddings, GPT-2's initialisation — and the whole model checked
#   against `transformers.GPT2LMHeadModel`, logit for logit;
# - pre-training with the book's one loop, `train.fit`, and AdamW, warm-up and cosine decay;
# - honest yardsticks: nats per token, perplexity and **bits per byte**, against unigram and
#   bigram count models on the same text; compute accounting in FLOPs, and the compute-optimal
#   model size of Hoffmann et al. (2022) for this budget;
# - generation: greedy decoding, temperature, top-k and top-p sampling, and a key/value cache
#   that gives the same tokens, faster.
#
# **Prerequisites**: chapter 2 (the training loop), chapter 4 (tokens, attention masks,
# transformers), chapter 7 for running the same `fit` on N GPUs. Attention is explained from its
# formula here.
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
import dataclasses
import math
import pprint
import statistics
import textwrap
import time
from collections import Counter
from dataclasses import dataclass
from itertools import pairwise

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from IPython.display import display
from torch import nn

from tutorial_lib import data, plots, results, runtime, train
from tutorial_lib.llm import bpe, gpt, pretraining
from tutorial_lib.models import count_parameters


# %%
@dataclass(frozen=True)
class Budget:
    pretraining: (
        pretraining.PretrainingRun
    )  # tokenizer size, model, recipe (package: chapter 9 reuses it)
    vocab_sizes_compared: tuple[int, ...]  # sizes whose bytes per token are measured
    vocab_study_reviews: int  # reviews each compared tokenizer learns from and is measured on
    bpe_demo_reviews: int  # reviews the hand-written BPE learns from
    bpe_demo_merges: int
    new_tokens: int  # tokens generated in the key/value-cache measurement


# The pre-training runs live in the package (pretraining.PRETRAINING_RUNS, with the
# measurements that chose them), so that chapter 9, opened alone, can repeat exactly this run.
BUDGETS = {
    "smoke": Budget(
        pretraining=pretraining.PRETRAINING_RUNS["smoke"],
        vocab_sizes_compared=(280, 300, 340),
        vocab_study_reviews=60,
        bpe_demo_reviews=30,
        bpe_demo_merges=20,
        new_tokens=20,
    ),
    "cpu": Budget(
        pretraining=pretraining.PRETRAINING_RUNS["cpu"],
        vocab_sizes_compared=(1024, 2048, 4096, 8192),
        vocab_study_reviews=2_000,
        bpe_demo_reviews=200,
        bpe_demo_merges=200,
        new_tokens=200,
    ),
    "gpu": Budget(
        pretraining=pretraining.PRETRAINING_RUNS["gpu"],
        vocab_sizes_compared=(4096, 8192, 16_384, 32_768),
        vocab_study_reviews=5_000,
        bpe_demo_reviews=200,
        bpe_demo_merges=200,
        new_tokens=200,
    ),
}
run = runtime.start_chapter(BUDGETS, seed=0)  # environment report, seeding, device, budget
print(results.published_time(results.read_published_record("08_gpt_from_zero", run.profile)))
BUDGET, device, generator = run.budget, run.device, run.generator
MODEL, VOCAB_SIZE = BUDGET.pretraining.model, BUDGET.pretraining.vocab_size
pprint.pp(BUDGET, width=100)  # one field a line when the budget is long

# %% [markdown]
# The `gpu` budget trains a 12-layer, 512-wide model with a 16k vocabulary on all 75,000 training
# reviews (labelled and unlabelled, when the copy has them) with bf16 autocast, which `fit` turns
# on by itself on a CUDA device. The pre-training cell goes through `train.fit`, so chapter 7's
# recipe runs it on N GPUs unchanged: `torchrun --standalone --nproc_per_node=N
# chapters/08_gpt_from_zero.py` (the `.py` file is the script), with a global batch N times the
# one here.

# %% [markdown]
# ## The text: IMDB's reviews without their labels
#
# Pre-training needs text, not labels. We take IMDB's 25,000 training reviews (the `smoke`
# profile, a test run, a seeded subset of them), drop the labels, and add the 50,000 unlabelled
# reviews of `aclImdb/train/unsup/` when the copy has them and the budget wants them; the
# package's `pretraining.pretraining_documents` does it, so that chapters 9 and 10 read the
# same text.
# **No test review** is ever used: chapter 9 measures on them. The HTML line breaks become
# newlines, and 5 % of the reviews are held out, whole, for validation — holding out by review
# rather than by token keeps a review from being half in training, half in validation.

# %%
imdb = data.load_imdb()
documents = pretraining.pretraining_documents(
    imdb, BUDGET.pretraining
)  # pretraining.clean_review on each
unlabelled_used = len(imdb.unlabelled) if BUDGET.pretraining.use_unlabelled else 0
train_texts, val_texts = pretraining.split_documents(documents, val_fraction=0.05, seed=0)
print(
    f"pre-training text: {len(documents) - unlabelled_used:,} of the {len(imdb.train.texts):,} "
    f"training reviews (labels dropped)\n  + {unlabelled_used:,} unlabelled reviews"
    + ("" if imdb.unlabelled else " (this copy has no train/unsup/)")
)
print(f"held out whole: {len(train_texts):,} reviews to train on, {len(val_texts):,} to validate")
test_texts = {pretraining.clean_review(text) for text in imdb.test.texts}
shared = sum(text in test_texts for text in documents)
print(f"pre-training reviews whose exact text is also a test review: {shared}")
if imdb.source.is_sample:
    PRETRAIN = BUDGET.pretraining.sample_recipe
    runtime.notice(
        f"The bundled sample holds {len(documents):,} reviews, too few for the "
        f"{BUDGET.pretraining.recipe.steps:,}-step recipe of this profile: pre-training runs "
        f"{PRETRAIN.steps:,} steps instead. The figures below only show that the code runs."
    )
else:
    PRETRAIN = BUDGET.pretraining.recipe

# %% [markdown]
# The reviews come as separate files, so none of the pre-training reviews *is* a test review;
# the count above checks whether any has the same **text** as one (IMDB holds a few duplicated
# reviews; the number is what this copy has).

# %% [markdown]
# ## Tokens: byte-level BPE by hand
#
# A language model predicts the next **token**. Characters make long sequences; whole words make a
# vocabulary that never ends ("Spielbergian", typos, emoji). Byte-pair encoding (字节对编码,
# {cite:t}`sennrich2016neural`) finds the middle: start from single symbols and repeatedly
# **merge the most frequent adjacent pair** into a new symbol, until the vocabulary has the size
# we want. GPT-2's version starts from the 256 **bytes** of UTF-8 rather than from characters, so
# any text at all — accents, Chinese, emoji — can be encoded, with no unknown token.
#
# Merges never cross the boundaries of **pre-tokens**: GPT-2 first cuts text into words (with
# their leading space), numbers, runs of punctuation and whitespace, so that "dog." and "dog!"
# share the token for " dog".

# %%
example = "This movie wasn't bad at all!! 10/10, would watch again."
pprint.pp(bpe.pre_tokenize(example), width=100, compact=True)

# %% [markdown]
# Now the algorithm, on a toy corpus. Each pre-token is a tuple of symbol ids, counted once with
# its frequency; one step counts every adjacent pair (weighted by how often its word occurs),
# picks the most frequent, and replaces it everywhere by a new id.


# %%
def count_pairs(words: dict[tuple[int, ...], int]) -> Counter:
    pairs = Counter()
    for word, count in words.items():
        for pair in pairwise(word):
            pairs[pair] += count
    return pairs


def merge(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    merged, i = [], 0
    while i < len(word):
        if word[i : i + 2] == pair:
            merged.append(new_id)
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return tuple(merged)


def learn_merges(texts, n_merges, first_id, byte_ids):
    pieces = Counter(piece for text in texts for piece in bpe.pre_tokenize(text))
    words = {tuple(byte_ids[b] for b in piece.encode("utf-8")): n for piece, n in pieces.items()}
    merges = []
    for new_id in range(first_id, first_id + n_merges):
        pairs = count_pairs(words)
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))  # ties: the smaller ids
        merges.append(best)
        words = {merge(word, best, new_id): count for word, count in words.items()}
    return merges


toy = ["low lower lowest", "newer wider newest", "low low lowest"]
toy_bpe = bpe.ByteLevelBPE()  # only its numbering: special token 0, then the 256 bytes
toy_merges = learn_merges(toy, 6, toy_bpe.first_merge_id, toy_bpe.byte_ids)
symbols = dict(toy_bpe.vocab)  # id -> its bytes
for number, (a, b) in enumerate(toy_merges):
    symbols[toy_bpe.first_merge_id + number] = symbols[a] + symbols[b]
    print(f"merge {number + 1}: {symbols[a]!r} + {symbols[b]!r} -> {symbols[a] + symbols[b]!r}")

# %% [markdown]
# The first merges join the pairs that occur most — the corpus is full of *low* and *-est*, and
# the printed merges build them up piece by piece. The ids follow the numbering of Hugging Face
# `tokenizers` (special tokens first, then the bytes in the order of the printable characters
# GPT-2 maps them to, then the merges), and ties go to the pair of smaller ids, as its trainer
# breaks them. That lets us check our
# merges against the library exactly. First against the package's `bpe.ByteLevelBPE` (the same
# algorithm, with the counts updated only for the words a merge changes, so that thousands of
# merges stay affordable), then the package against `tokenizers`' `BpeTrainer`, on real reviews;
# the cell prints each one's time:

# %%
demo_reviews = train_texts[: BUDGET.bpe_demo_reviews]
started = time.perf_counter()
ours = learn_merges(demo_reviews, 20, toy_bpe.first_merge_id, toy_bpe.byte_ids)
hand_seconds = time.perf_counter() - started
started = time.perf_counter()
package_bpe = bpe.ByteLevelBPE.train(demo_reviews, 1 + 256 + BUDGET.bpe_demo_merges)
package_seconds = time.perf_counter() - started
started = time.perf_counter()
library_bpe = bpe.train_tokenizer(demo_reviews, 1 + 256 + BUDGET.bpe_demo_merges)
library_seconds = time.perf_counter() - started
assert ours == package_bpe.merges[:20], "the chapter's merges differ from the package's"
same = package_bpe.merge_strings() == bpe.tokenizer_merges(library_bpe)
print(
    f"our 20 merges on {len(demo_reviews)} reviews = the package's first 20 ({hand_seconds:.1f} s)"
)
print(
    f"package ({package_seconds:.1f} s) vs tokenizers ({library_seconds:.2f} s), "
    f"{BUDGET.bpe_demo_merges} merges: "
    f"{'the same merges, in the same order' if same else 'DIFFERENT merges'}"
)
encoded_alike = all(package_bpe.encode(t) == library_bpe.encode(t).ids for t in val_texts[:300])
print(f"same token ids on {min(300, len(val_texts))} validation reviews: {encoded_alike}")
print("the first ten merges:", " ".join("".join(m) for m in package_bpe.merge_strings()[:10]))

# %% [markdown]
# `Ġ` is how GPT-2 prints a space byte, so a merge starting with `Ġ` is the start of a word.
# Encoding applies the learned merges in the order they were
# learned, and decoding concatenates the bytes of each token — so decoding undoes encoding for
# every string:

# %%
tricky = "Amélie — 千与千寻 🎬 naïve,  two  spaces\nand a new line"
ids = package_bpe.encode(tricky)
print(f"{len(tricky.encode('utf-8'))} bytes -> {len(ids)} tokens; round trip exact:",
      package_bpe.decode(ids) == tricky)  # fmt: skip

# %% [markdown]
# ## The real tokenizer, and how large its vocabulary should be
#
# A larger vocabulary packs more bytes into each token, so a context of 256 tokens covers more
# text and each training step sees more of it. But every token costs a row in the embedding and a
# column in the output layer, whose matrix product with each position's vector grows with the
# vocabulary. We measure both for a few sizes: bytes per token on held-out reviews, and the share
# of a forward pass's FLOPs that the output layer takes in this chapter's model shape.

# %%
study_train = train_texts[: BUDGET.vocab_study_reviews]
study_val = val_texts[: max(1, BUDGET.vocab_study_reviews // 10)]
study_bytes = pretraining.text_bytes(study_val) - len(study_val)  # text only, no end-of-text
vocab_rows = []
for size in BUDGET.vocab_sizes_compared:
    candidate = bpe.train_tokenizer(study_train, size)
    tokens = sum(len(e.ids) for e in candidate.encode_batch(study_val))
    shape = dataclasses.replace(MODEL, vocab_size=size)
    per_token = pretraining.training_flops_per_token(gpt.GPT(shape))
    head = 3 * 2 * shape.n_embd * size  # the output layer's multiply-adds, ×3 for training
    vocab_rows.append(
        {"vocab": size, "bytes_per_token": study_bytes / tokens, "output_share": head / per_token}
    )
display(plots.markdown_table(
    [(f"{r['vocab']:,}", f"{r['bytes_per_token']:.2f}", f"{r['output_share']:.0%}")
     for r in vocab_rows],
    ["vocabulary", "bytes per token", "output layer's share of the FLOPs"], align="rrr",
))  # fmt: skip
gains = [b["bytes_per_token"] - a["bytes_per_token"] for a, b in pairwise(vocab_rows)]
shrinking = all(later < earlier for earlier, later in pairwise(gains))
print(
    "bytes per token gained by each larger size: "
    + ", ".join(f"{gain:+.2f}" for gain in gains)
    + (" (each step buys less)" if shrinking else " (the gains do not shrink steadily here)")
)

# %% [markdown]
# Read the two columns together: each larger vocabulary packs more bytes into a token (the line
# under the table says whether each step buys less than the one before), while the output
# layer's share of every training step's compute grows. Where the gain in bytes stops paying for
# that share is a judgement per machine and budget; exercise 1 measures it end to end, in bits
# per byte after training. Now the real tokenizer, trained on the pre-training split only (never
# on validation or test text), and a check that **every** review decodes back to itself exactly:

# %%
started = time.perf_counter()
tokenizer = bpe.train_tokenizer(train_texts, VOCAB_SIZE)
tokenizer_seconds = time.perf_counter() - started
train_tokens = pretraining.encode_documents(tokenizer, train_texts, check_round_trip=True)
val_tokens = pretraining.encode_documents(tokenizer, val_texts, check_round_trip=True)
val_bytes = pretraining.text_bytes(val_texts)
non_ascii = sum(not text.isascii() for text in train_texts + val_texts)
print(
    f"vocabulary {tokenizer.get_vocab_size():,}, trained in {tokenizer_seconds:.1f} s; "
    f"every review decodes back exactly ({non_ascii:,} hold non-ASCII text)"
)
print(
    f"train {len(train_tokens):,} tokens, validation {len(val_tokens):,} tokens, "
    f"{val_bytes / len(val_tokens):.2f} bytes per token"
)
print("the first review as tokens:")
pprint.pp([tokenizer.id_to_token(i) for i in train_tokens[:16].tolist()], width=100, compact=True)

# %% [markdown]
# ## The model: GPT-2's decoder, written out
#
# A GPT reads token ids and, at every position t, outputs scores (logits) for the token at t + 1.
# It is a stack of identical **blocks** on top of two embeddings — one vector per token id and one
# per position — and under a final LayerNorm and an output layer.
#
# The heart of a block is **causal self-attention** (因果自注意力, {cite:t}`vaswani2017attention`).
# Each position emits a query q, a key k and a value v (three linear maps of its vector). Position
# t's output is an average of the values of positions 0 … t, weighted by
# softmax(q_t · k_s / √d_head) — how well its query matches each key, d_head being the width
# of one head's query. *Causal* means the weights of
# later positions are forced to zero (their scores set to −∞ before the softmax), so the
# prediction for token t + 1 never sees it. With several **heads**, the vector is split into
# `n_head` parts that attend independently, and their outputs are put side by side and mixed by a
# last linear map. Written out:


# %%
def causal_self_attention(x: torch.Tensor, qkv: nn.Linear, proj: nn.Linear, n_head: int):
    batch, time, channels = x.shape
    q, k, v = qkv(x).split(channels, dim=2)
    q, k, v = (t.view(batch, time, n_head, -1).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-2, -1) / math.sqrt(k.shape[-1])  # (batch, heads, time, time)
    future = torch.ones(time, time, dtype=torch.bool).triu(diagonal=1)
    weights = scores.masked_fill(future, float("-inf")).softmax(dim=-1)
    y = (weights @ v).transpose(1, 2).reshape(batch, time, channels)
    return proj(y)


attention = gpt.CausalSelfAttention(MODEL).eval()
x = torch.randn(2, 16, MODEL.n_embd)
with torch.no_grad():
    difference = causal_self_attention(x, attention.qkv, attention.proj, MODEL.n_head)
    difference = (difference - attention(x)).abs().max().item()
print(f"ours vs gpt.CausalSelfAttention (scaled_dot_product_attention): {difference:.1e}")

# %% [markdown]
# The package computes the same thing with `F.scaled_dot_product_attention`, which fuses the
# product, the mask and the softmax and never stores the `time × time` weights — on a GPU a
# FlashAttention kernel. A **block** wraps attention and a small MLP (4× wider, GELU) each in a
# residual connection, with a LayerNorm (层归一化) before each: it rescales each position's vector
# to mean 0 and variance 1 (then applies a learned scale and shift), so that the input to each
# sub-layer stays in a stable range however deep the stack. GPT-2 puts the norms **before** the
# sub-layers ("pre-LN"), so the residual path from the embeddings to the final LayerNorm is a
# plain sum of what the blocks add. Written with our attention function, and checked against the
# package's `gpt.Block`:


# %%
def block_forward(x: torch.Tensor, block: gpt.Block, n_head: int) -> torch.Tensor:
    attn = block.attn
    x = x + causal_self_attention(block.ln_1(x), attn.qkv, attn.proj, n_head)
    hidden = F.gelu(block.mlp.fc(block.ln_2(x)), approximate="tanh")  # GPT-2's GELU
    return x + block.mlp.proj(hidden)


block = gpt.Block(MODEL).eval()
with torch.no_grad():
    difference = (block_forward(x, block, MODEL.n_head) - block(x)).abs().max().item()
print(f"ours vs gpt.Block: {difference:.1e}")

# %% [markdown]
# Two more details complete GPT-2. The output layer **shares its weight matrix** with the token
# embedding {cite:p}`press2017using`: one matrix both reads and writes tokens, which saves
# `vocab × d` parameters — at this size the largest single matrix. And GPT-2's initialisation
# draws weights from N(0, 0.02) but scales the two layers of each block that write into the
# residual stream by 1/√(2 · n_layer), so the sum of 2 · n_layer such contributions does not grow
# with depth. The whole model is `gpt.GPT`, one file in the package. Before trusting it, we
# check it against the reference implementation, `transformers`' `GPT2LMHeadModel`: build a small
# GPT-2 there (random weights — no GPT-2 checkpoint can be downloaded here), copy its weights
# into ours, and compare the logits.

# %%
from transformers import GPT2Config, GPT2LMHeadModel

torch.manual_seed(0)
reference = GPT2LMHeadModel(
    GPT2Config(
        vocab_size=MODEL.vocab_size,
        n_positions=MODEL.context_length,
        n_embd=MODEL.n_embd,
        n_layer=MODEL.n_layer,
        n_head=MODEL.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )  # fmt: skip
).eval()
reference.loss_type = "ForCausalLM"  # the next-token loss, named: transformers need not guess
imported = gpt.from_hf_gpt2(reference).eval()
context = MODEL.context_length
batch = train_tokens[: 2 * context].view(2, context)  # two windows of real text
with torch.no_grad():
    gap = (imported(batch) - reference(batch).logits).abs().max().item()
    reference_loss = reference(batch, labels=batch).loss.item()
    our_loss = gpt.lm_loss(imported(batch)[:, :-1], batch[:, 1:]).item()
print(f"largest logit difference vs GPT2LMHeadModel: {gap:.1e}")
print(f"loss with labels: transformers {reference_loss:.6f}, ours {our_loss:.6f}")

# %% [markdown]
# Now the model we will train, and where its parameters are:

# %%
torch.manual_seed(0)
model = gpt.GPT(MODEL)
total = count_parameters(model)  # the tied output matrix is the token embedding: counted once
non_embedding = gpt.non_embedding_parameters(model)
parts = {
    "token embedding (= output layer)": model.wte.weight.numel(),
    "position embedding": model.wpe.weight.numel(),
    "blocks": sum(p.numel() for p in model.blocks.parameters()),
    "final LayerNorm": sum(p.numel() for p in model.ln_f.parameters()),
}
display(plots.markdown_table(
    [(name, f"{count:,}", f"{count / total:.1%}") for name, count in parts.items()],
    ["part", "parameters", "share"], align="lrr",
))  # fmt: skip
print(f"{total:,} parameters, {non_embedding:,} of them outside the embeddings")
with torch.no_grad():
    first_loss = gpt.lm_loss(model(batch[:, :-1]), batch[:, 1:]).item()
print(
    f"loss before training {first_loss:.3f} nats; a uniform guess over {VOCAB_SIZE:,} "
    f"tokens scores ln {VOCAB_SIZE:,} = {math.log(VOCAB_SIZE):.3f}"
)

# %% [markdown]
# The untrained model's loss is close to that of a uniform guess — the sign of a sound
# initialisation: no token is favoured before the model has seen any text.
#
# ## Yardsticks first: count models, and bits per byte
#
# What is a good loss? The loss in **nats per token** (the mean of −ln p(next token)) depends on
# the tokenizer: a larger vocabulary has fewer, harder tokens. **Bits per byte** divides the total
# by the bytes of text and converts to bits, so it compares any two models of the same text.
# Perplexity, e^loss, reads as "as uncertain as a uniform choice among that many tokens".
#
# Before training a transformer, train the cheapest language models there are, on the same split.
# The **unigram** model predicts each token with its frequency and ignores the context. The
# **bigram** model predicts from the previous token alone: P(b | a) = (count(a, b) + k) /
# (count(a) + k · V), where the add-k smoothing gives unseen pairs a little probability. Its one
# setting, k, is chosen on validation — the best the baseline can do, which makes beating it a
# fair bar.

# %%
unigram = pretraining.unigram_nats(train_tokens, val_tokens, VOCAB_SIZE)
bigram_by_k = {k: pretraining.bigram_nats(train_tokens, val_tokens, VOCAB_SIZE, k)
               for k in (0.003, 0.01, 0.03, 0.1, 0.3)}  # fmt: skip
best_k = min(bigram_by_k, key=bigram_by_k.get)
bigram = bigram_by_k[best_k]


def in_bits_per_byte(nats_per_token: float) -> float:
    return pretraining.bits_per_byte(nats_per_token, len(val_tokens), val_bytes)


baseline_rows = [
    ("uniform over the vocabulary", math.log(VOCAB_SIZE)),
    ("unigram (add-1)", unigram),
    (f"bigram (add-k, k = {best_k:g})", bigram),
]
display(plots.markdown_table(
    [(name, f"{nats:.3f}", f"{math.exp(nats):,.0f}", f"{in_bits_per_byte(nats):.3f}")
     for name, nats in baseline_rows],
    ["model", "nats per token", "perplexity", "bits per byte"], align="lrrr",
))  # fmt: skip

# %% [markdown]
# The table prints how far a single token of context gets the bigram model below the unigram.
# Our transformer has to beat it, with a context of up to `context_length` tokens instead of
# one.
#
# ## What the budget buys: compute accounting
#
# Training a transformer costs about 6 FLOPs per parameter per token — 2 for the forward pass's
# multiply-adds, 4 for the backward pass {cite:p}`kaplan2020scaling` — plus attention's own
# products, `QKᵀ` and the weights times the values, which grow with the context. Rather than
# trusting the rule, we count: PyTorch's `FlopCounterMode` records every matrix product of a
# forward pass. One trap: it registers no FLOPs for the fused attention kernel PyTorch runs on a
# CPU, so `pretraining.training_flops_per_token` counts under the *math* backend of
# `scaled_dot_product_attention`, which computes attention as two ordinary matrix products. That
# count is the convention of the PaLM paper {cite:p}`chowdhery2022palm` (appendix B): 6·N +
# 12 · n_layer · n_embd · T per token, the whole T × T score matrix even though the causal mask
# uses half of it (Kaplan et al. count the scores only). {cite:t}`hoffmann2022training`
# found that for a fixed compute budget C the loss is lowest when the parameters N and the
# training tokens D grow together, about 20 tokens per parameter; with C ≈ 6·N·D that gives
# N ≈ √(C / 120).

# %%
flops_per_token = pretraining.training_flops_per_token(model)
tokens_per_step = PRETRAIN.batch_size * MODEL.context_length
planned_tokens = PRETRAIN.steps * tokens_per_step
matrices = sum(p.numel() for name, p in model.named_parameters()
               if p.ndim == 2 and name != "wpe.weight")  # fmt: skip
attention = pretraining.attention_flops_per_token(MODEL)
print(f"FLOPs per training token: {flops_per_token / 1e6:.1f} M counted; "
      f"6 × {matrices / 1e6:.2f} M matrix weights = {6 * matrices / 1e6:.1f} M,\n"
      f"attention 12 × {MODEL.n_layer} layers × {MODEL.n_embd} × {MODEL.context_length} "
      f"= {attention / 1e6:.1f} M ({attention / flops_per_token:.0%} of the count)")  # fmt: skip
print(f"planned: {PRETRAIN.steps:,} steps × {tokens_per_step:,} tokens = {planned_tokens:,} tokens"
      f" = {planned_tokens / len(train_tokens):.2f} passes over the training split")  # fmt: skip

# %% [markdown]
# The count is the two formulas' sum: the 6·N rule leaves attention out, and at a context of 256
# tokens and a width of 128, attention's 12 · 128 · 256 per layer is not small beside the layer's
# 6 · 12 · 128² matrix FLOPs — the share printed above. It grows with the context length.
# `pretraining.pretrain` draws its windows as one seeded permutation of the training split for
# the whole run, so "passes" is exact: below one, no window is seen twice.
#
# ## Pre-training
#
# The recipe is GPT-3's, as nanoGPT {cite:p}`karpathy2022nanogpt` uses it: AdamW
# {cite:p}`loshchilov2019decoupled` with β₂ = 0.95 and weight decay 0.1 on the matrices only (the
# book's one grouping, `optim.param_groups`), a linear warm-up, then a cosine decay of the rate,
# and gradients clipped to norm 1. One difference: GPT-3 and nanoGPT stop the decay at a tenth of
# the peak rate, ours (transformers' cosine schedule) goes on to zero. Each step takes
# `batch_size` windows of `context_length` tokens, in one seeded random order of the training
# windows for the whole run; the target at every position is the next token, so one window gives
# `context_length` training examples. `pretraining.pretrain` is that recipe around `train.fit`,
# where one "epoch" of `fit` is `eval_every` steps followed by a validation pass on the same first
# `val_batches` batches of the validation windows; `fit`'s epoch line reports tokens per second.

# %%
torch.manual_seed(0)
model = gpt.GPT(MODEL)
started = time.perf_counter()
history = pretraining.pretrain(
    model,
    train_tokens,
    val_tokens,
    PRETRAIN,
    generator=generator,
    val_batches=BUDGET.pretraining.val_batches,
)
pretrain_seconds = time.perf_counter() - started
val_chunks = torch.utils.data.DataLoader(
    pretraining.TokenChunks(val_tokens, MODEL.context_length), batch_size=PRETRAIN.batch_size
)
final = train.evaluate(model, val_chunks, gpt.lm_loss)
val_nats = final["loss"]
val_bpb = in_bits_per_byte(val_nats)
train_seconds = sum(history["seconds"])
tokens_per_second = PRETRAIN.steps * tokens_per_step / train_seconds
print(
    f"trained {PRETRAIN.steps:,} steps in {pretrain_seconds / 60:.1f} min "
    f"({tokens_per_second:,.0f} tokens/s, {tokens_per_second * flops_per_token / 1e9:.1f} GFLOP/s)"
)
print(
    f"whole validation split: {val_nats:.3f} nats/token, perplexity {math.exp(val_nats):,.0f}, "
    f"{val_bpb:.3f} bits/byte (bigram {in_bits_per_byte(bigram):.3f})"
)

# %% mystnb={"image": {"alt": "Validation bits per byte against training tokens"}}
tokens_seen = [r["epoch"] * PRETRAIN.eval_every * tokens_per_step for r in history.records]
curve = [in_bits_per_byte(loss) for loss in history["val_loss"]]
fig, ax = plt.subplots(figsize=(7, 4), facecolor="white")
ax.plot([t / 1e6 for t in tokens_seen], curve, marker="o", label="GPT, validation")
for name, level, style in (("unigram", unigram, ":"), ("bigram", bigram, "--")):
    ax.axhline(in_bits_per_byte(level), color="gray", linestyle=style, label=name)
ax.set(title="Pre-training on IMDB reviews", xlabel="training tokens (millions)",
       ylabel="validation bits per byte")  # fmt: skip
ax.legend()
plt.show()

# %% [markdown]
# Where does the transformer overtake the bigram model? The curve is evaluated every
# `eval_every` steps on the first `val_batches` validation batches, not the whole split, so the
# fair line to cross is the bigram's loss on those same tokens (per token: the two are compared
# on identical targets, so no conversion to bytes is needed). The crossing is the first
# evaluation below it:

# %%
curve_windows = BUDGET.pretraining.val_batches * PRETRAIN.batch_size
curve_tokens = val_tokens[: curve_windows * MODEL.context_length + 1]  # the curve's windows
bigram_on_curve = pretraining.bigram_nats(train_tokens, curve_tokens, VOCAB_SIZE, best_k)
crossing = next((i for i, loss in enumerate(history["val_loss"]) if loss < bigram_on_curve), None)
bigram_bpb = in_bits_per_byte(bigram)
print(
    f"bigram on the curve's {len(curve_tokens) - 1:,} tokens: {bigram_on_curve:.3f} nats/token "
    f"(whole split {bigram:.3f})"
)
elapsed = [sum(history["seconds"][: i + 1]) for i in range(len(history))]
if crossing is not None:
    print(
        f"below the bigram on the curve's tokens after {tokens_seen[crossing] / 1e6:.2f} M "
        f"training tokens ({elapsed[crossing] / 60:.1f} min of training),\n"
        f"and {bigram_bpb - val_bpb:.3f} bits/byte below it on the whole split at the end"
    )
else:
    print(
        f"not below the bigram's {bigram_bpb:.3f} bits/byte within this budget:\n"
        f"{val_bpb - bigram_bpb:.3f} above it at the end, on {tokens_seen[-1] / 1e6:.2f} M "
        "training tokens"
    )

# %% [markdown]
# If the curve ended above the bigram's line, note what its flattening means: the learning rate
# decays to zero over the planned steps, so the last points flatten whatever the model could still
# learn. The last evaluation is therefore no forecast; the way to find out is to train longer —
# raise `steps` in the budget (the whole schedule stretches with it) and read where the two lines
# cross (exercise 6).

# %% [markdown]
# The budget in the light of the scaling law: the compute we spent, and the model size
# Hoffmann et al. would have chosen for it.

# %%
spent = flops_per_token * PRETRAIN.steps * tokens_per_step
optimal = pretraining.compute_optimal_parameters(spent)
print(
    f"compute spent: {spent:.2e} FLOPs; compute-optimal size for it ≈ {optimal:,.0f} parameters,"
    f"\ntrained on {pretraining.CHINCHILLA_TOKENS_PER_PARAMETER * optimal:,.0f} tokens"
)
print(
    f"this model: {total:,} parameters on {PRETRAIN.steps * tokens_per_step:,} tokens "
    f"= {PRETRAIN.steps * tokens_per_step / total:.1f} tokens per parameter"
)

# %% [markdown]
# At a budget this small the rule's constants are extrapolated far below the range Hoffmann et
# al. fitted (their smallest models had tens of millions of parameters), so read the comparison
# as a direction: a tokens-per-parameter ratio below 20 says a smaller model trained longer would
# likely do better on the same compute, above 20 a larger one.
#
# ## Generation
#
# A language model generates by feeding its own predictions back: score the next token, choose
# one, append it, repeat. **Greedy** decoding takes the most likely token each time and tends to
# loop. **Sampling** draws from softmax(logits / T): a temperature T below 1 sharpens the
# distribution, above 1 flattens it. **Top-k** keeps only the k most likely tokens, and **top-p**
# (nucleus) sampling the smallest set whose probabilities reach p {cite:p}`holtzman2020curious`,
# which cuts the long tail of unlikely tokens that makes samples derail. One step, by hand:


# %%
def sample_next(logits: torch.Tensor, temperature: float, top_k: int, rng: torch.Generator):
    logits = logits / temperature
    kth_best = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    logits = logits.masked_fill(logits < kth_best, float("-inf"))
    return torch.multinomial(logits.softmax(dim=-1), 1, generator=rng)


prompt = torch.tensor([tokenizer.encode("This movie was").ids])
with torch.no_grad():
    last_logits = model(prompt)[:, -1, :]
ours = [sample_next(last_logits, 0.8, 40, torch.Generator().manual_seed(s)) for s in range(20)]
package = [gpt.next_token(last_logits, 0.8, top_k=40, generator=torch.Generator().manual_seed(s))
           for s in range(20)]  # fmt: skip
print("our sampler = gpt.next_token on 20 seeds:", all(map(torch.equal, ours, package)))
print("likely next tokens:", [tokenizer.decode([i]) for i in last_logits.topk(8).indices[0]])

# %% [markdown]
# ### The key/value cache
#
# Generating token t + 1 runs the model on all t tokens so far, although the keys and values of
# the first t − 1 positions were already computed at the previous step: causal attention means
# they cannot change. A **key/value cache** (KV 缓存) keeps them, so each step runs the model on one
# new position, attends with its query to all cached keys, and appends its own key and value. The
# package's `gpt.KVCache` does this per layer; `gpt.generate(..., use_cache=False)` is the
# uncached loop. Both must give the same tokens — here with seeded sampling, which any difference
# in the logits would throw off — and we time them at `new_tokens` tokens:

# %%
new_tokens = min(BUDGET.new_tokens, MODEL.context_length - prompt.shape[1])
outputs, seconds = {}, {True: [], False: []}
# One untimed run of each pays one-off costs; then the two alternate, so that a change in the
# machine's load hits both alike, and the median of three runs is kept.
for repeat in range(4):
    for use_cache in (True, False):
        started = time.perf_counter()
        outputs[use_cache] = gpt.generate(
            model, prompt, new_tokens, temperature=0.8, top_k=40, use_cache=use_cache,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        if repeat:
            seconds[use_cache].append(time.perf_counter() - started)
timings = {use_cache: new_tokens / statistics.median(runs) for use_cache, runs in seconds.items()}
cache_speedup = timings[True] / timings[False]
print(f"same tokens with and without the cache: {torch.equal(outputs[True], outputs[False])}")
print(f"{new_tokens} new tokens, median of 3 runs: {timings[True]:,.0f} tokens/s with the "
      f"cache, {timings[False]:,.0f} without ({cache_speedup:.1f}× faster)")  # fmt: skip

# %% [markdown]
# The cache turns the cost of step t from a pass over t positions into a pass over one; the
# longer the text, the larger the gain. Its price is memory: two tensors of
# `batch × heads × length × head_dim` per layer. Because GPT-2's positions are learned up to
# `context_length`, a text longer than the context cannot slide inside the cache; `generate`
# then recomputes the last `context_length` tokens at each step, exactly as the uncached loop.
#
# Finally, what the model writes, from the same prompt at three temperatures (top-p 0.95):

# %%
for temperature in (0.5, 0.8, 1.1):
    continuation = gpt.generate(
        model, prompt, 60, temperature=temperature, top_p=0.95,
        generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    text = tokenizer.decode(continuation[0].tolist()).replace("\n", " ")
    print(textwrap.fill(f"T = {temperature}: {text}", 100, subsequent_indent="    "))

# %% [markdown]
# Read the samples with the bits per byte above in mind, and compare the temperatures: whether the
# low one repeats itself, whether the high one drifts into rarer tokens, whether any sample stays
# on one subject. Whether the model has also learned something *useful*, such as which words go
# with praise and which with disappointment, is the question of chapter 9.
#
# ## Saving the model for chapter 9
#
# The weights and the configuration go into one checkpoint, written atomically and read back
# with `torch.load(..., weights_only=True)`; the tokenizer is its own JSON file.

# %%
saved = pretraining.save_pretrained(
    pretraining.pretrained_dir(run.profile),
    model,
    tokenizer,
    {"val_nats_per_token": val_nats, "val_bits_per_byte": val_bpb, "data": imdb.source.kind},
)
reloaded, _, info = pretraining.load_pretrained(saved)
with torch.no_grad():
    same_after_reload = torch.equal(reloaded(batch[:, :32]), model.eval()(batch[:, :32]))
print(f"saved to {runtime.display_path(saved)}")
print(f"the reloaded model gives the same logits: {same_after_reload}")

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record(
    "08_gpt_from_zero",
    {
        "data": {
            "source": imdb.source.kind,
            "location": runtime.display_path(imdb.source.location),
            "train_reviews": len(train_texts),
            "val_reviews": len(val_texts),
            "unlabelled_reviews_used": unlabelled_used,
            "train_tokens": len(train_tokens),
            "val_tokens": len(val_tokens),
            "val_bytes_per_token": val_bytes / len(val_tokens),
        },
        "tokenizer": {
            "vocab_size": VOCAB_SIZE,
            "seconds": tokenizer_seconds,
            "hand_written_bpe_equals_tokenizers": same,
            "vocab_study": vocab_rows,
        },
        "model": {
            "name": "GPT (GPT-2 architecture)",
            "config": pretraining.config_summary(MODEL),
            "parameters": total,
            "non_embedding_parameters": non_embedding,
            "max_logit_difference_vs_transformers": gap,
        },
        "training": {
            "recipe": pretraining.config_summary(PRETRAIN),
            "seconds": train_seconds,
            "tokens": PRETRAIN.steps * tokens_per_step,
            "tokens_per_second": tokens_per_second,
            "flops_per_token": flops_per_token,
            "attention_flops_per_token": attention,
            "compute_flops": spent,
            "compute_optimal_parameters": optimal,
            "val_curve_bits_per_byte": curve,
        },
        "metrics": {
            "val_nats_per_token": val_nats,
            "val_perplexity": math.exp(val_nats),
            "val_bits_per_byte": val_bpb,
            "unigram_bits_per_byte": in_bits_per_byte(unigram),
            "bigram_bits_per_byte": bigram_bpb,
            "bigram_k": best_k,
            "bigram_nats_on_curve_tokens": bigram_on_curve,
            "below_bigram_after_tokens": tokens_seen[crossing] if crossing is not None else None,
        },
        "generation": {
            "new_tokens": new_tokens,
            "tokens_per_second_cached": timings[True],
            "tokens_per_second_uncached": timings[False],
            "cache_speedup": cache_speedup,
            "cache_gives_same_tokens": bool(torch.equal(outputs[True], outputs[False])),
        },
        "chapter_seconds": run.seconds(),
    },
)
print(f"wrote {runtime.display_path(record_path)}")

# %% [markdown]
# ## Summary
#
# - Byte-level BPE starts from the 256 bytes and merges the most frequent adjacent pair, again and
#   again; it can encode any text and decode it back exactly. Our twenty-line version learns the
#   same merges as `tokenizers`, which does it in Rust (the cell printed both times).
# - The vocabulary size trades bytes per token against the cost of the output layer; measure both.
# - GPT-2 is embeddings, a stack of pre-LayerNorm blocks of causal self-attention and an MLP, a
#   final LayerNorm and an output layer tied to the token embedding; ours gives the logits of
#   `GPT2LMHeadModel` once the weights are copied.
# - Pre-training is next-token prediction with the book's one loop, `fit`, and GPT-2's recipe.
#   Bits per byte compares it with count models on the same text; the chapter printed whether the
#   transformer got below the bigram model within this budget, and where.
# - Sampling with temperature, top-k and top-p shapes what the model writes; a key/value cache
#   gives the same tokens for a fraction of the compute.
#
# ## Exercises
#
# 1. Train the model with `vocab_size=1024` and with `8192` (change the budget) and compare the
#    validation **bits per byte** — not the loss per token. Which vocabulary wins on this budget?
# 2. Remove the 1/√(2 · n_layer) scaling of the residual projections in a copy of `gpt.GPT` and
#    compare the first few hundred steps of the loss curve.
# 3. Untie the output layer from the token embedding (`model.lm_head.weight =
#    nn.Parameter(model.wte.weight.clone())`). How many parameters does that add, and what does it
#    do to the validation loss on this budget?
# 4. Time a few training steps after `model = torch.compile(model)` (exclude the first steps,
#    which compile). Is it faster on your machine?
# 5. Write greedy decoding with the cache by hand: run the prompt once with `model.new_cache()`,
#    then loop feeding one token. Check that it gives `gpt.generate(..., temperature=0)`'s tokens.
# 6. Train four times longer: `PRETRAIN = dataclasses.replace(PRETRAIN, steps=11_200)` before the
#    pre-training cell (the recipe is frozen too; `eval_every` divides 11,200). After how
#    many tokens, and how many minutes on your machine, does the transformer cross the bigram's
#    line, and how far below it does it end?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. The budget is frozen; build a new one and rerun the chapter from the tokenizer on:
#    `recipe = BUDGET.pretraining`, then
#    `run_v = dataclasses.replace(recipe, vocab_size=v,
#    model=dataclasses.replace(recipe.model, vocab_size=v))` (the run checks that the two
#    agree), `BUDGET = dataclasses.replace(BUDGET, pretraining=run_v)` and
#    `MODEL, VOCAB_SIZE = run_v.model, v`. A smaller vocabulary makes each step cheaper (a
#    smaller output layer) but each token carries fewer bytes, so compare `val_bpb`; the
#    vocabulary table above predicts the trade.
# 2. Copy `gpt.GPT.__init__` without the loop over `proj.weight`. The effect grows with depth;
#    with four layers it is small, so try `n_layer=8` too.
# 3. It adds `vocab_size × n_embd` parameters (4,096 × 128 = 524,288 on the `cpu` budget, a
#    third more), all in a layer that costs no extra compute. Whether a second matrix helps on a
#    few million tokens is not something to guess: the validation bits per byte says.
# 4. Compile once, run three steps, then time ten; the first call compiles for tens of seconds on a
#    CPU. Whether it wins depends on the machine and the model size.
# 5. `cache = model.new_cache(); logits = model(prompt, cache)`, then repeatedly
#    `token = logits[:, -1].argmax(-1, keepdim=True)` and `logits = model(token, cache)`,
#    collecting the tokens; compare with `torch.equal`.
# 6. The crossing cell prints the tokens and the `elapsed` list the minutes. At equal tokens the
#    longer schedule tends to lag the short one at first — its rate is still near the peak where
#    the short one's has decayed — and to pass it as its own rate decays. 11,200 steps of 2,048
#    tokens are about three passes over the training split, so windows now repeat.
# ```
#
# ## References
#
# - {cite:t}`radford2019language` — GPT-2: the architecture, byte-level BPE, the initialisation.
# - {cite:t}`vaswani2017attention` — the transformer and scaled dot-product attention.
# - {cite:t}`sennrich2016neural` — byte-pair encoding for subword units.
# - {cite:t}`press2017using` — tying the output layer to the input embedding.
# - {cite:t}`kaplan2020scaling` — the 6·N FLOPs per token rule; non-embedding parameters.
# - {cite:t}`chowdhery2022palm` — PaLM: counting attention's FLOPs (appendix B).
# - {cite:t}`hoffmann2022training` — compute-optimal models: about 20 tokens per parameter.
# - {cite:t}`howard2018universal` — ULMFiT: pre-training a language model on the task's domain.
# - {cite:t}`holtzman2020curious` — nucleus (top-p) sampling.
# - {cite:t}`karpathy2022nanogpt` and {cite:t}`raschka2024build` — GPTs written to be read.
# - {cite:t}`maas2011learning` — the IMDB reviews.
