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
# # TextCNN on IMDB, and how it compares with BERT
#
# Convolutions are not only for images. A sentence is a sequence of word vectors, and a
# one-dimensional convolution slid along it detects **n-grams** — "not good", "waste of time",
# "highly recommend" — wherever they occur. Kim (2014) showed that a single such layer with
# max-over-time pooling is a strong text classifier. This chapter builds it from raw text, trains
# it on the 25,000 IMDB training reviews, looks at what its filters detect, and sets it against the
# BERT model of chapter 4.
#
# The source series gives the model (as a `Conv2d` over the embedding matrix, with
# `vocab_size=1000`) but no data pipeline at all. Here every step from review text to tensor is
# shown, and the `Conv2d` form is checked against the `Conv1d` form by code.
#
# **What you will learn**
#
# - turning text into tensors from scratch: normalisation, tokenization, a vocabulary built on the
#   training split only, unknown words, padding and truncation to a length chosen from the data;
# - the TextCNN model — embedding, `Conv1d` filters of widths 3, 4 and 5, ReLU, **max**-over-time
#   pooling, dropout, a linear layer — and the shape of a batch after each step;
# - training it with the shared `fit` loop and reading the result;
# - which n-grams the filters respond to, found on real test reviews;
# - initialising the embedding from BERT's word-piece embeddings, as a measured experiment;
# - what TextCNN and BERT cost and deliver: accuracy, parameters, training time, inference speed.
#
# **Prerequisites**: chapters 1–2 (convolution, the training loop); chapter 4 for the comparison
# (the chapter still runs without it and says so).

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
from torch.utils.data import DataLoader, TensorDataset

from tutorial_lib import data, metrics, plots, results, runtime, train, weights
from tutorial_lib.models import TextCNN, conv1d_as_conv2d, count_parameters
from tutorial_lib.text import Vocabulary, encode_texts, normalize, tokenize, truncate

CHAPTER_STARTED = time.perf_counter()
runtime.print_environment()
generator = runtime.seed_everything(0)
device = runtime.get_device()


@dataclass(frozen=True)
class Budget:
    train_size: int | None  # training reviews after the validation split (None: all)
    val_size: int
    test_size: int | None  # None: all 25,000 test reviews
    max_length: int  # tokens per review after truncation
    epochs: int
    embedding_train_size: int  # reviews per run of the embedding-initialisation experiment
    embedding_epochs: int
    speed_sample: int  # test reviews used to time inference of both models
    bert_model: str  # the checkpoint chapter 4 uses under this profile


BUDGET = runtime.select_budget(
    {
        "smoke": Budget(train_size=300, val_size=100, test_size=200, max_length=64, epochs=1,
                        embedding_train_size=200, embedding_epochs=1, speed_sample=32,
                        bert_model="sentence-transformers/all-MiniLM-L6-v2"),
        "cpu": Budget(train_size=None, val_size=1_000, test_size=None, max_length=256, epochs=6,
                      embedding_train_size=5_000, embedding_epochs=2, speed_sample=512,
                      bert_model="sentence-transformers/all-MiniLM-L6-v2"),
        "gpu": Budget(train_size=None, val_size=1_000, test_size=None, max_length=400, epochs=10,
                      embedding_train_size=24_000, embedding_epochs=3, speed_sample=2_048,
                      bert_model="bert-base-uncased"),
    }
)
BATCH_SIZE = 64
BUDGET

# %% [markdown]
# ## The reviews
#
# The Large Movie Review Dataset (Maas et al., 2011): 25,000 training and 25,000 test reviews,
# half positive (7–10 stars) and half negative (1–4 stars).

# %%
imdb = data.load_imdb()
splits = data.budget_splits(imdb, BUDGET.train_size, BUDGET.val_size, BUDGET.test_size, seed=0)
train_reviews, val_reviews, test_reviews = splits.train, splits.val, splits.test
print(splits.describe())
print(f"a {imdb.train.classes[train_reviews.labels[0]]} review ({train_reviews.ratings[0]} stars):\n{train_reviews.texts[0][:400]}")

# %% [markdown]
# ## From text to tokens
#
# The raw text contains HTML line breaks (`<br />`) and mixed case. We lower-case it, replace the
# breaks by spaces, and split it into words — keeping contractions such as *don't* whole, and
# keeping `!` and `?`, which carry sentiment:

# %%
print(inspect.getsource(normalize))
print(inspect.getsource(tokenize))
example = "This movie was NOT good.<br /><br />I didn't laugh once!"
print(tokenize(example))

# %%
train_tokens = [tokenize(text) for text in train_reviews.texts]
val_tokens = [tokenize(text) for text in val_reviews.texts]
test_tokens = [tokenize(text) for text in test_reviews.texts]
lengths = np.array([len(tokens) for tokens in train_tokens])
percentiles = {p: int(np.percentile(lengths, p)) for p in (50, 75, 90, 95)}
covered = (lengths <= BUDGET.max_length).mean()
print("tokens per training review: " + ", ".join(f"{p}th percentile {v}" for p, v in percentiles.items()))
print(f"max_length {BUDGET.max_length} keeps {100 * covered:.1f}% of the reviews whole; the rest are truncated")

fig, ax = plt.subplots(figsize=(7, 3.5), facecolor="white")
ax.hist(lengths, bins=60, color="#4C72B0")
ax.axvline(BUDGET.max_length, color="crimson", label=f"max_length = {BUDGET.max_length}")
ax.set(title="Review length in tokens (training split)", xlabel="tokens per review", ylabel="reviews")
ax.legend()
plt.show()

# %% [markdown]
# The distribution has a long right tail. Padding every review to the longest would mostly compute
# on padding, so we truncate at `max_length`, which keeps the share of reviews printed above whole.
# From a longer review we keep the **head and the tail** — its first and its last `max_length / 2`
# tokens — rather than the first `max_length`: reviewers often open with the plot and close with
# their verdict, and Sun et al. (2019) found head + tail the best truncation for BERT on IMDB.
# (Exercise 2 measures the difference for TextCNN.) A longer `max_length` (`gpu` profile) costs
# proportionally more compute per review.

# %%
long_review = max(train_tokens[:200], key=len)
kept = truncate(long_review, 16, keep="head+tail")
print(f"a {len(long_review)}-token review cut to 16 tokens, head + tail:\n{' '.join(kept[:8])} ... {' '.join(kept[8:])}")

# %% [markdown]
# ## The vocabulary
#
# The vocabulary is built from the **training split only** — building it on test reviews would
# leak information about the test set into the model. Words seen fewer than twice are dropped (they
# are mostly typos and names, and their embeddings could not be learned anyway); `<pad>` (index 0)
# fills short reviews and `<unk>` (index 1) stands for every word the vocabulary does not know.

# %%
vocabulary = Vocabulary.build(train_tokens, min_freq=2, max_size=30_000)
print(f"vocabulary: {len(vocabulary):,} entries; first ten: {vocabulary.itos[:10]}")
print(f"coverage of training tokens {100 * vocabulary.coverage(train_tokens):.1f}%, "
      f"of test tokens {100 * vocabulary.coverage(test_tokens):.1f}%")
print("encoded:", vocabulary.encode(tokenize(example)))

# %%
def as_tensor_dataset(tokens: list[list[str]], labels: list[int]) -> TensorDataset:
    return TensorDataset(encode_texts(vocabulary, tokens, BUDGET.max_length, keep="head+tail"), torch.tensor(labels))


train_set = as_tensor_dataset(train_tokens, train_reviews.labels)
val_set = as_tensor_dataset(val_tokens, val_reviews.labels)
test_set = as_tensor_dataset(test_tokens, test_reviews.labels)
train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True, generator=generator)
val_loader = DataLoader(val_set, batch_size=256)
test_loader = DataLoader(test_set, batch_size=256)
print("one batch of token ids:", tuple(next(iter(train_loader))[0].shape))

# %% [markdown]
# ## The model
#
# Each token index looks up a learned vector (the **embedding**). A `Conv1d` with the embedding
# dimension as its input channels slides a window of `width` tokens along the review: a width-3
# filter is a trigram detector. ReLU keeps positive evidence, and **max-over-time pooling** keeps
# each filter's strongest response anywhere in the review — *whether* the n-gram occurred, not where
# or how often. (A well-known tutorial implements this model with average pooling while calling it
# max pooling; averaging dilutes one strong "waste of time" over hundreds of neutral positions.)
# The pooled features of all filters go through dropout to the linear classifier.

# %%
print(inspect.getsource(TextCNN))

# %%
model = TextCNN(len(vocabulary), embedding_dim=128, num_filters=100, widths=(3, 4, 5))
ids = next(iter(train_loader))[0][:4]
embedded = model.embedding(ids)
print(f"{'token ids':<34}{tuple(ids.shape)}")
print(f"{'embedding':<34}{tuple(embedded.shape)}")
print(f"{'transposed for Conv1d (N, E, L)':<34}{tuple(embedded.transpose(1, 2).shape)}")
for width, responses in zip(model.widths, model.filter_responses(ids)):
    print(f"{f'Conv1d width {width} + ReLU':<34}{tuple(responses.shape)} -> max over time {tuple(responses.amax(dim=2).shape)}")
print(f"{'concatenated':<34}({ids.shape[0]}, {100 * len(model.widths)})")
print(f"{'logits':<34}{tuple(model(ids).shape)}")
print(f"parameters: {count_parameters(model):,}, of which the embedding holds {count_parameters(model.embedding):,}")

# %% [markdown]
# ### The source series' `Conv2d` form is the same layer
#
# The source series writes each filter as `nn.Conv2d(1, 100, (width, embedding_dim))` applied to the
# embedding matrix seen as a one-channel image of size (length × embedding). The kernel spans the whole
# embedding, so it can only move along the sequence — which is what `Conv1d` does. Copying the weights
# across proves it:

# %%
conv = model.convs[0]
as_2d = conv1d_as_conv2d(conv)
with torch.no_grad():
    out_1d = conv(embedded.transpose(1, 2))  # (N, 100, L - 2)
    out_2d = as_2d(embedded.unsqueeze(1))  # (N, 100, L - 2, 1)
print(f"Conv1d {tuple(out_1d.shape)} vs Conv2d {tuple(out_2d.shape)}: "
      f"max |difference| {(out_1d - out_2d.squeeze(3)).abs().max().item():.1e}")

# %% [markdown]
# ## Training
#
# Adam with a learning rate of $10^{-3}$, cross-entropy, dropout 0.5, early stopping on the
# validation accuracy — all through the same `fit` as chapters 2 and 3.

# %%
runtime.seed_everything(0)
model = TextCNN(len(vocabulary))
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
history = train.fit(model, train_loader, val_loader, optimizer, epochs=BUDGET.epochs, device=device, patience=2)
textcnn_train_seconds = sum(history["seconds"])
fig = plots.training_curves(history, title="TextCNN on IMDB")
plt.show()

# %% [markdown]
# The training accuracy keeps climbing while the validation accuracy levels off after the first
# epochs: the embedding table has millions of parameters and memorises the training reviews
# quickly. Early stopping keeps the epoch with the best validation accuracy.

# %%
logits, targets = train.predict(model, test_loader, device)
predictions = logits.argmax(dim=1)
textcnn_accuracy = metrics.accuracy(targets, predictions)
textcnn_f1 = metrics.macro_f1(targets, predictions)
print(f"TextCNN test accuracy {100 * textcnn_accuracy:.2f}%, macro F1 {textcnn_f1:.4f} on {len(targets):,} test reviews")
fig = plots.confusion_matrix_figure(targets, predictions, imdb.test.classes, title="TextCNN, IMDB test reviews")
plt.show()

# %% [markdown]
# ## Looking inside: what do the filters detect?
#
# Each width-3 filter is a trigram detector, and the classifier weights tell us which ones vote for
# *positive* (weight on "pos" minus weight on "neg" is large) and which for *negative*. For the
# three strongest of each kind, these are the trigrams of real test reviews that excite them most:

# %%
model.eval().cpu()
probe_ids = test_set.tensors[0][: min(len(test_set), 2_000)]
with torch.no_grad():
    width3 = torch.cat([model.filter_responses(chunk)[0] for chunk in probe_ids.split(256)])  # (N, 100, L - 2)
vote = (model.classifier.weight[1] - model.classifier.weight[0])[:100].detach()  # width-3 block


def top_trigrams(filter_index: int, count: int = 4) -> list[str]:
    responses = width3[:, filter_index, :]
    found, seen = [], set()
    for flat in responses.flatten().argsort(descending=True):
        review, position = divmod(flat.item(), responses.shape[1])
        words = " ".join(vocabulary.itos[i] for i in probe_ids[review, position : position + 3].tolist())
        if words not in seen:
            seen.add(words)
            found.append(words)
        if len(found) == count:
            break
    return found


for label, order in (("positive", vote.argsort(descending=True)), ("negative", vote.argsort())):
    for filter_index in order[:3].tolist():
        print(f"{label} filter {filter_index:>2} (vote {vote[filter_index]:+.2f}): " + " | ".join(top_trigrams(filter_index)))

# %% [markdown]
# Read the lists of a trained model (under `smoke` they are noise): the positive filters respond to
# praise — and often to scores that reviewers write into the text, since "8/10" becomes the tokens
# "8 10" — and the negative ones to complaints. The model learned which phrases matter from the
# labels alone; nobody gave it a list of sentiment words.

# %% [markdown]
# ## Initialising the embedding from BERT
#
# A bridge to chapter 4: BERT's first layer is also an embedding table, for a WordPiece vocabulary
# of about 30,000 sub-word units, learned by pre-training on books and Wikipedia. Does a TextCNN
# learn better from those vectors than from random ones? We tokenize with BERT's WordPiece tokenizer
# for both runs, so that only the initialisation differs, on a smaller training subset (the budget
# says how many reviews).

# %%
tokenizer, bert_encoder, bert_source = weights.load_bert(BUDGET.bert_model)
print(f"embeddings from: {bert_source.describe()}")
bert_embeddings = bert_encoder.get_input_embeddings().weight.detach()
print(f"WordPiece vocabulary {bert_embeddings.shape[0]:,} x embedding dimension {bert_embeddings.shape[1]}")
print("WordPiece tokens:", tokenizer.tokenize(example.replace("<br />", " ")))


def wordpiece_ids(texts: list[str]) -> torch.Tensor:
    encoded = tokenizer([t.replace("<br />", " ") for t in texts], truncation=True, max_length=BUDGET.max_length,
                        padding="max_length", add_special_tokens=False, return_tensors="pt")
    return encoded["input_ids"]


embedding_train = data.subset(train_reviews, BUDGET.embedding_train_size, seed=1)
wp_train = DataLoader(TensorDataset(wordpiece_ids(embedding_train.texts), torch.tensor(embedding_train.labels)),
                      batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(0))
wp_val = DataLoader(TensorDataset(wordpiece_ids(val_reviews.texts), torch.tensor(val_reviews.labels)), batch_size=256)
embedding_results = {}
for initialisation in ("random", "BERT word-piece embeddings"):
    runtime.seed_everything(0)
    candidate = TextCNN(bert_embeddings.shape[0], embedding_dim=bert_embeddings.shape[1], padding_idx=tokenizer.pad_token_id)
    if initialisation != "random":
        with torch.no_grad():
            candidate.embedding.weight.copy_(bert_embeddings)
    run = train.fit(candidate, wp_train, wp_val, torch.optim.Adam(candidate.parameters(), lr=1e-3),
                    epochs=BUDGET.embedding_epochs, device=device, verbose=False)
    embedding_results[initialisation] = run["val_accuracy"]
print(f"{len(embedding_train):,} training reviews, WordPiece tokens, validation accuracy per epoch:")
for initialisation, accuracies in embedding_results.items():
    print(f"  {initialisation:<28}" + "  ".join(f"{100 * a:.1f}%" for a in accuracies))

# %% [markdown]
# Compare the two rows epoch by epoch. Pre-trained embeddings can give the model a head start: words
# that are used alike already have similar vectors, so what the classifier learns for "superb"
# transfers to "excellent" before it has seen both in labelled reviews. With more labelled reviews
# and epochs, randomly initialised embeddings have more chance to learn the same; the exercises
# vary that.

# %% [markdown]
# ## TextCNN against BERT
#
# Size and inference speed are measured here, for both models, on the same test reviews at the same
# maximum length. Accuracy and training time of BERT come from the result record that chapter 4
# writes when it runs (the book runs it before this chapter).

# %%
def reviews_per_second(run_batch, batches) -> float:
    started = time.perf_counter()
    count = 0
    with torch.no_grad():
        for batch in batches:
            run_batch(batch)
            count += len(batch)
    return count / (time.perf_counter() - started)


speed_texts = test_reviews.texts[: BUDGET.speed_sample]
textcnn_ids = encode_texts(vocabulary, [tokenize(t) for t in speed_texts], BUDGET.max_length, keep="head+tail")
textcnn_speed = reviews_per_second(model.eval().cpu(), textcnn_ids.split(64))
bert_encoder.eval()
bert_batches = [speed_texts[i : i + 16] for i in range(0, len(speed_texts), 16)]
bert_speed = reviews_per_second(
    lambda texts: bert_encoder(**tokenizer([t.replace("<br />", " ") for t in texts], truncation=True,
                                           max_length=BUDGET.max_length, padding=True, return_tensors="pt")),
    bert_batches,
)
bert_record = results.read_result_record("04_imdb_bert")
if bert_record is None:
    print("No result record of chapter 4 under this profile: run chapter 4 first for BERT's accuracy and training time. "
          "Only size and speed are compared below.")

bert_label = "BERT"
print(f"BERT = {bert_source.model}")
rows = {
    "TextCNN": {"parameters": count_parameters(model), "test_accuracy": textcnn_accuracy,
                "train_seconds": textcnn_train_seconds, "reviews_per_second": textcnn_speed},
    bert_label: {
        "parameters": count_parameters(bert_encoder),
        "test_accuracy": bert_record["metrics"]["test_accuracy"] if bert_record else None,
        "train_seconds": bert_record["training"]["seconds"] if bert_record else None,
        "reviews_per_second": bert_speed,
    },
}
print(f"CPU inference on {len(speed_texts)} test reviews, up to {BUDGET.max_length} tokens")
print(f"{'model':<10}{'parameters':>12}{'test acc':>10}{'train time':>12}{'reviews/s':>11}")
for name, row in rows.items():
    accuracy = f"{100 * row['test_accuracy']:.1f}%" if row["test_accuracy"] is not None else "n/a"
    seconds = f"{row['train_seconds']:.0f} s" if row["train_seconds"] is not None else "n/a"
    print(f"{name:<10}{row['parameters']:>12,}{accuracy:>10}{seconds:>12}{row['reviews_per_second']:>11.0f}")
print(f"TextCNN runs {textcnn_speed / bert_speed:.0f}x as many reviews per second with "
      f"{rows[bert_label]['parameters'] / rows['TextCNN']['parameters']:.1f}x fewer parameters")
if bert_record:
    print(f"(BERT figures from chapter 4: {bert_record['model']['name']}, test subset of "
          f"{bert_record['metrics']['test_size']:,} reviews; TextCNN: {len(test_set):,} reviews)")

fig = plots.bar_chart(["TextCNN", "BERT"], [textcnn_speed, bert_speed], title="Inference speed on the CPU (same reviews)",
                      ylabel="reviews per second (log scale)", log_scale=True, annotate_format="{:.0f}")
plt.show()

# %% [markdown]
# **When is each the right tool?** TextCNN is far cheaper to run (the line under the table gives
# the factor), trains in minutes on a laptop and needs no pre-trained checkpoint; it is a
# strong baseline whenever sentiment is carried by local phrases — the kind the filters above
# learned to detect. BERT reads the whole review with
# attention, so it can weigh "the first half was dull, but the ending is brilliant" as a whole; it
# is the better choice when accuracy matters more than cost, and with a GPU. Always measure the
# cheap baseline first: it tells you what the expensive model has to beat.

# %% [markdown]
# ## The result record

# %%
record_path = results.write_result_record("05_imdb_textcnn", {
    "data": {"source": imdb.source.kind, "location": imdb.source.location, "budget_adjustments": list(splits.adjustments), "train": len(train_set),
             "validation": len(val_set), "test": len(test_set), "max_length": BUDGET.max_length},
    "model": {"name": "TextCNN (widths 3/4/5, 100 filters each, embedding 128)", "parameters": count_parameters(model),
              "vocabulary": len(vocabulary)},
    "metrics": {"test_accuracy": textcnn_accuracy, "test_f1": textcnn_f1, "test_size": len(test_set),
                "embedding_init_val_accuracy": embedding_results},
    "training": {"seconds": textcnn_train_seconds, "epochs_run": len(history)},
    "inference": {"textcnn_reviews_per_second": textcnn_speed, "bert_reviews_per_second": bert_speed,
                  "bert_model": bert_source.model},
    "chapter_seconds": time.perf_counter() - CHAPTER_STARTED,
})
print(f"wrote {record_path}")

# %% [markdown]
# ## Summary
#
# - Text becomes tensors in four steps: normalise, tokenize, map tokens to indices with a vocabulary
#   built on the training split only (`<unk>` for the rest), pad or truncate (head + tail) to a
#   length chosen from the length distribution.
# - TextCNN: embedding, `Conv1d` n-gram detectors of widths 3/4/5, ReLU, **max**-over-time pooling,
#   dropout, linear. The source series' `Conv2d` over the embedding matrix is the same computation.
# - Its filters learn sentiment-bearing n-grams from labels alone, and pre-trained word-piece
#   embeddings give it a head start.
# - Against BERT it is far smaller and faster. Which is more accurate depends on how much BERT you
#   can afford: compare the table's rows, trained on this machine's budgets, with the 5.4% test error
#   that Sun et al. (2019) report for bert-base-uncased fine-tuned on all 25,000 reviews.

# %% [markdown]
# ## Exercises
#
# 1. Replace the max-over-time pooling by average pooling (`responses.mean(dim=2)`). What happens to
#    the validation accuracy?
# 2. Train with `keep="head"` instead of `"head+tail"` in `as_tensor_dataset`, then with `max_length`
#    64 and 512. How do accuracy and training time change?
# 3. Rerun the embedding experiment with 1,000 and with 20,000 training reviews. How does the gap
#    between the two initialisations change? Then freeze the BERT-initialised embedding
#    (`candidate.embedding.weight.requires_grad_(False)`): is it better or worse than fine-tuning it?
# 4. Find the reviews on which TextCNN is most confidently wrong. Do they share a pattern (irony,
#    contrast, a plot summary)?
#
# ```{admonition} Solutions
# :class: dropdown
#
# 1. Subclass `TextCNN` and override `forward` with `.mean(dim=2)`. Averaging over a mostly-padded,
#    mostly-neutral review weakens the signal of the few decisive n-grams; measure the validation
#    curves of both under the same budget.
# 2. The truncation changes only the reviews longer than `max_length` (the share printed above), so
#    compare the test accuracy on those. For the length, set `max_length` in the budget: training time
#    grows roughly linearly with it, and accuracy gains flatten once most reviews fit.
# 3. Change `embedding_train_size` in the budget. The head start of pre-trained vectors matters most
#    when labelled reviews are few. A frozen embedding cannot adapt WordPiece vectors to sentiment,
#    but it cannot overfit either, so which wins depends on the subset size: measure both sizes.
# 4. Sort the test reviews by the softmax probability of the wrong class (`logits.softmax(1)`), and read
#    the top ten with `test_reviews.texts[i]`.
# ```

# %% [markdown]
# ## References
#
# - {cite:t}`kim2014convolutional` — the TextCNN model.
# - {cite:t}`zhang2015sensitivity` — a sensitivity analysis of its hyper-parameters.
# - {cite:t}`maas2011learning` — the IMDB data set.
# - {cite:t}`devlin2019bert` — BERT and its WordPiece embeddings.
# - {cite:t}`sun2019fine` — head + tail truncation, and bert-base-uncased's IMDB test error.
