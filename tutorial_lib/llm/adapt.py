"""Adapting chapter 8's GPT (chapter 9): a classification head and the pooling it reads, the
reviews as right-padded batches, and prompting — classifying by the next-token probabilities of
label words, with and without contextual calibration (Zhao et al. 2021).

The GPT has no attention mask: it is causal, so padding to the *right* of a text changes none
of the text's positions. That is why every batch here is right-padded, and why the classifier
must read the **last real** token rather than ``[:, -1]``, which is a pad token for every text
shorter than its batch's longest (rasbt/LLMs-from-scratch issue 990).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset

from ..text import truncate
from . import bpe
from .gpt import GPT, check_token_ids
from .pretraining import clean_review

Pooling = Literal["last", "mean"]
POOLINGS: tuple[Pooling, ...] = ("last", "mean")


# --- the classifier ---------------------------------------------------------------------------


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Return one vector per text ``(batch, n_embd)`` from hidden states ``(batch, time,
    n_embd)`` and a right-padded ``attention_mask`` ``(batch, time)`` (1 = real token):
    the last real token's state (``"last"``) or the mean over the real tokens (``"mean"``).

    Raises:
        ValueError: for an unknown ``pooling``, or a mask that is not right padding (ones, then
            zeros, at least one real token per text).
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if tuple(attention_mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(
            f"attention_mask {tuple(attention_mask.shape)} must be shaped like the ids, "
            f"(batch, time) = {tuple(hidden.shape[:2])}"
        )
    attention_mask = _zero_one(attention_mask)
    lengths = attention_mask.sum(dim=1)
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    right_padded = (positions < lengths.unsqueeze(1)).to(attention_mask.dtype)
    if not torch.equal(attention_mask, right_padded) or bool((lengths == 0).any()):
        raise ValueError(
            "attention_mask must be right padding (1 for each real token, then 0 for pads) "
            "with at least one real token per text; pad on the right, as review_loader does"
        )
    if pooling == "last":
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), lengths - 1]
    weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / lengths.unsqueeze(-1).to(hidden.dtype)


def _zero_one(mask: torch.Tensor) -> torch.Tensor:
    """A mask of 0s and 1s as integers, whatever its dtype (bool, float or integer).

    Raises:
        ValueError: if it holds anything but 0 and 1.
    """
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (pad) and 1 (real token)")
    return mask.long()


class GPTClassifier(nn.Module):
    """A GPT body with a linear head on one pooled vector per text.

    ``classifier(input_ids, attention_mask)`` returns ``(batch, num_classes)`` logits. The
    GPT's output layer is kept (it is tied to the token embedding) but unused.
    """

    def __init__(self, backbone: GPT, *, num_classes: int = 2, pooling: Pooling = "last") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = nn.Linear(backbone.config.n_embd, num_classes)
        nn.init.normal_(self.head.weight, 0.0, 0.02)  # GPT-2's initialisation, as the body's
        nn.init.zeros_(self.head.bias)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the class logits of right-padded ``input_ids`` (all real without a mask).

        Raises:
            ValueError: if ``attention_mask`` is not shaped like ``input_ids``, holds values
                other than 0 and 1 or is not right padding (see :func:`pool`).
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must be shaped like input_ids "
                f"{tuple(input_ids.shape)}: one entry per token"
            )
        hidden = self.backbone.hidden_states(input_ids)
        return self.head(pool(hidden, attention_mask, self.pooling))


def train_top_blocks(classifier: GPTClassifier, blocks: int) -> int:
    """Freeze ``classifier`` except its last ``blocks`` transformer blocks, the final
    LayerNorm and the head (``blocks=0``: the head and final norm only) and return the number
    of trainable parameters.

    Raises:
        ValueError: if ``blocks`` is negative or larger than the number of blocks.
    """
    layers = classifier.backbone.blocks
    if not 0 <= blocks <= len(layers):
        raise ValueError(f"blocks must be in [0, {len(layers)}], not {blocks}")
    classifier.requires_grad_(False)
    for module in [*layers[len(layers) - blocks :], classifier.backbone.ln_f, classifier.head]:
        module.requires_grad_(True)
    return sum(p.numel() for p in classifier.parameters() if p.requires_grad)


# --- the reviews as batches -------------------------------------------------------------------


def encode_reviews(
    tokenizer: Any, texts: Sequence[str], max_length: int, keep: str = "head+tail"
) -> list[list[int]]:
    """Return the token ids of each review as chapter 8 pre-trained on them (``<br />``
    cleaned, followed by the end-of-text token), cut to ``max_length`` by
    :func:`tutorial_lib.text.truncate` (``"head+tail"`` keeps the end-of-text token and the
    closing verdict).

    Raises:
        ValueError: if the tokenizer has no end-of-text token or ``max_length`` < 1.
    """
    if max_length < 1:
        raise ValueError(f"max_length must be at least 1, not {max_length}")
    end_of_text = end_of_text_id(tokenizer)
    encodings = bpe.encode_texts(tokenizer, [clean_review(text) for text in bpe.documents(texts)])
    return [truncate([*ids, end_of_text], max_length, keep) for ids in encodings]


def end_of_text_id(tokenizer: Any) -> int:
    """Return the id of ``<|endoftext|>``, which also pads (the mask says which are pads).

    Raises:
        ValueError: if the tokenizer has none.
    """
    token = tokenizer.token_to_id(bpe.END_OF_TEXT)
    if token is None:
        raise ValueError(f"the tokenizer has no {bpe.END_OF_TEXT} token; train it with one")
    return token


class EncodedReviews(Dataset):
    """Encoded reviews with their labels: ``dataset[i]`` is ``(ids, label)``."""

    def __init__(self, ids: Sequence[Sequence[int]], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} encoded reviews but {len(labels)} labels")
        if any(len(sequence) == 0 for sequence in ids):
            raise ValueError("a review encodes to no token; every review needs at least one")
        self.ids = [torch.tensor(sequence, dtype=torch.long) for sequence in ids]
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[index], self.labels[index]


def right_padded(sequences: Sequence[torch.Tensor], pad_id: int) -> dict[str, torch.Tensor]:
    """Return ``{"input_ids", "attention_mask"}`` of 1-D id tensors padded on the right to
    the longest."""
    input_ids = pad_sequence(list(sequences), batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(s) for s in sequences])
    mask = (torch.arange(input_ids.shape[1]) < lengths.unsqueeze(1)).long()
    return {"input_ids": input_ids, "attention_mask": mask}


def review_loader(
    dataset: EncodedReviews,
    pad_id: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Return a loader of dict batches (``input_ids``, ``attention_mask``, ``labels``), each
    right-padded to its longest review — the form :func:`tutorial_lib.train.fit` feeds to a
    :class:`GPTClassifier` as keyword arguments."""

    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = right_padded([ids for ids, _ in items], pad_id)
        batch["labels"] = torch.stack([label for _, label in items])
        return batch

    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate
    )


def labelled_splits(
    train_size: int,
    test_size: int,
    label_budgets: tuple[int, int],
    val_reviews: int,
    test_reviews: int,
    seed: int = 0,
) -> dict[str, list[int]]:
    """Return chapter 9's review indices: ``small`` inside ``large`` (the two label budgets)
    and ``val`` (disjoint from both) from the training split, ``test`` from the test split.

    Each split comes from its own generator seeded by ``seed``, never from a generator a
    chapter has used before: whether chapter 8's model was loaded or pre-trained in the same
    run (which draws random numbers) must not change which reviews are labelled or tested.

    Raises:
        ValueError: if the budgets are not ``0 < small <= large``, or the splits do not fit.
    """
    small, large = label_budgets
    if not 0 < small <= large:
        raise ValueError(f"label budgets must satisfy 0 < small <= large, not {label_budgets}")
    if large + val_reviews > train_size or not 0 < test_reviews <= test_size or val_reviews < 1:
        raise ValueError(
            f"{large:,} labelled + {val_reviews:,} validation reviews from {train_size:,} "
            f"training reviews and {test_reviews:,} of {test_size:,} test reviews do not fit "
            "(each split needs at least one review)"
        )
    order = torch.randperm(train_size, generator=torch.Generator().manual_seed(seed)).tolist()
    test_order = torch.randperm(test_size, generator=torch.Generator().manual_seed(seed + 1))
    return {
        "small": order[:small],
        "large": order[:large],
        "val": order[large : large + val_reviews],
        "test": test_order[:test_reviews].tolist(),
    }


def fine_tune(
    classifier: nn.Module,
    train_set: EncodedReviews,
    val_set: EncodedReviews,
    test_set: EncodedReviews,
    *,
    pad_id: int,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Fine-tune ``classifier`` with chapter 4's recipe and measure it: AdamW (decay on
    matrices only) with linear warm-up over the first 10 % of the steps and linear decay,
    ``epochs`` passes over ``train_set`` shuffled by ``seed``, trained by
    :func:`tutorial_lib.train.fit`, which keeps the weights of the epoch with the best accuracy
    on ``val_set``; then one prediction of ``test_set``.

    Returns a dict: ``test_accuracy``, ``best_val_accuracy``, ``val_accuracies`` (per epoch),
    ``best_epoch`` (1-based), ``trainable`` (parameters), ``seconds`` (training),
    ``correct`` (a bool tensor, one entry per test review: what seeded standard errors need).

    Raises:
        ValueError: if ``epochs`` or ``batch_size`` is below 1, or as ``train.fit``.
    """
    from .. import optim, train
    from ..models import count_parameters

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, not {epochs}, {batch_size}")
    shuffling = torch.Generator().manual_seed(seed)
    loader = review_loader(train_set, pad_id, batch_size, shuffle=True, generator=shuffling)
    optimizer, scheduler = optim.adamw_with_linear_warmup(
        classifier, learning_rate, epochs * len(loader), verbose=False
    )
    started = time.perf_counter()
    history = train.fit(
        classifier,
        loader,
        review_loader(val_set, pad_id, 4 * batch_size),
        optimizer,
        epochs,
        scheduler=scheduler,
        restore_best=True,
        verbose=False,
    )
    seconds = time.perf_counter() - started
    logits, labels = train.predict(classifier, review_loader(test_set, pad_id, 4 * batch_size))
    correct = logits.argmax(dim=1) == labels
    val_accuracies = [float(a) for a in history["val_accuracy"]]
    return {
        "test_accuracy": correct.float().mean().item(),
        "best_val_accuracy": max(val_accuracies),
        "val_accuracies": val_accuracies,
        "best_epoch": val_accuracies.index(max(val_accuracies)) + 1,
        "trainable": count_parameters(classifier, trainable_only=True),
        "seconds": seconds,
        "correct": correct,
    }


# --- prompting --------------------------------------------------------------------------------


@torch.no_grad()
def continuation_log_probs(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 32,
) -> torch.Tensor:
    """Return ``(len(prompts), len(continuations))`` log-probabilities: entry (i, j) is
    log P(continuation j | prompt i) under ``model``, the sum over the continuation's tokens.

    One forward pass per batch of prompts serves every one-token continuation; a longer one
    costs one more pass over prompt + continuation.

    Raises:
        ValueError: for an empty prompt or continuation, a prompt and continuation longer
            than the model's context, or an id outside the model's vocabulary.
    """
    if not prompts or not continuations:
        raise ValueError("give at least one prompt and one continuation")
    if any(len(p) == 0 for p in prompts) or any(len(c) == 0 for c in continuations):
        raise ValueError("prompts and continuations need at least one token each")
    vocab_size = model.config.vocab_size
    for what, sequences in (("a prompt", prompts), ("a continuation", continuations)):
        for sequence in sequences:
            check_token_ids(torch.as_tensor(list(sequence)), vocab_size, what=what)
    context = model.config.context_length
    longest = max(len(p) for p in prompts) + max(len(c) for c in continuations) - 1
    if longest > context:
        raise ValueError(
            f"a prompt with its continuation needs {longest} positions, more than the context "
            f"of {context}; shorten the prompts (e.g. fewer review tokens)"
        )
    was_training = model.training
    model.eval()
    try:
        return _continuation_scores(model, prompts, continuations, batch_size)
    finally:
        model.train(was_training)  # also when a batch raises


def _continuation_scores(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int,
) -> torch.Tensor:
    device = next(model.parameters()).device
    scores = torch.empty(len(prompts), len(continuations))
    single = [j for j, c in enumerate(continuations) if len(c) == 1]
    longer = [j for j, c in enumerate(continuations) if len(c) > 1]
    # one pass over the prompts alone serves every one-token continuation at once
    passes = ([((), single)] if single else []) + [(continuations[j][:-1], [j]) for j in longer]
    for start in range(0, len(prompts), batch_size):
        rows = range(start, min(start + batch_size, len(prompts)))
        for appended, columns in passes:
            sequences = [torch.tensor([*prompts[i], *appended], dtype=torch.long) for i in rows]
            input_ids = right_padded(sequences, pad_id=0)["input_ids"].to(device)
            log_probs = model(input_ids).float().log_softmax(dim=-1).cpu()
            for row, i in enumerate(rows):
                first = len(prompts[i]) - 1  # the position that predicts the first token
                for j in columns:
                    steps = torch.arange(first, first + len(continuations[j]))
                    targets = torch.tensor(list(continuations[j]))
                    scores[i, j] = log_probs[row, steps, targets].sum()
    return scores


def class_log_probs(word_scores: torch.Tensor, word_classes: Sequence[int]) -> torch.Tensor:
    """Return ``(n, classes)`` log-probabilities, normalised over the classes, from the
    ``(n, words)`` log-probabilities of label words: a class's score is the log of the summed
    probabilities of its words (``word_classes[j]`` is word j's class).

    Raises:
        ValueError: if ``word_classes`` does not name one class per word, or a class in
            0 … max has no word.
    """
    if len(word_classes) != word_scores.shape[1]:
        raise ValueError(f"{word_scores.shape[1]} words but {len(word_classes)} classes given")
    count = max(word_classes) + 1
    if sorted(set(word_classes)) != list(range(count)):
        raise ValueError(f"every class 0 … {count - 1} needs at least one word: {word_classes}")
    classes = torch.tensor(list(word_classes))
    per_class = torch.stack(
        [word_scores[:, classes == c].logsumexp(dim=1) for c in range(count)], dim=1
    )
    return per_class.log_softmax(dim=1)


def calibrate(class_scores: torch.Tensor, content_free_scores: torch.Tensor) -> torch.Tensor:
    """Return contextual calibration (Zhao et al. 2021) of ``(n, classes)`` class
    log-probabilities: divide each class's probability by its mean probability over
    content-free inputs (``(m, classes)``, e.g. "N/A" in place of the review), renormalised —
    so that a content-free input would score every class alike.

    With two classes this ranks the classes exactly as Zhao et al.'s affine map
    ``softmax(W p)``, ``W = diag(p_cf)⁻¹``, does, so the predictions are the same.

    Raises:
        ValueError: if the two do not have the same number of classes, there is no
            content-free input, or a class has probability 0 on every content-free input
            (dividing by it is undefined: choose label words the model can produce).
    """
    if class_scores.dim() != 2 or content_free_scores.dim() != 2:
        raise ValueError("class scores must be (inputs, classes) log-probabilities")
    if class_scores.shape[1] != content_free_scores.shape[1]:
        raise ValueError(
            f"{class_scores.shape[1]} classes but content-free scores for "
            f"{content_free_scores.shape[1]}"
        )
    if content_free_scores.shape[0] == 0:
        raise ValueError("calibration needs at least one content-free input (e.g. 'N/A')")
    prior = content_free_scores.exp().mean(dim=0).log()
    if not bool(torch.isfinite(prior).all()):
        zero = [int(c) for c in torch.nonzero(~torch.isfinite(prior)).flatten()]
        raise ValueError(
            f"class(es) {zero} have probability 0 (or not a number) on every content-free "
            "input, so there is no prior to divide by; check the label words"
        )
    return (class_scores - prior).log_softmax(dim=1)


def encode_prompt(
    tokenizer: Any,
    review: str,
    template: str,
    review_tokens: int,
    demonstrations: Sequence[tuple[str, str]] = (),
    demonstration_tokens: int | None = None,
    separator: str = "\n\n",
) -> list[int]:
    """Return the ids of a cloze prompt: each demonstration (review, label word) as
    review + template + word + separator, then the review + template, whose next token the
    model is asked for. Every review is cleaned and cut (its head and tail) before the
    template: the one to classify to ``review_tokens`` tokens, each demonstration to
    ``demonstration_tokens`` (default: ``review_tokens``), so a prompt has a known length.

    Raises:
        ValueError: if a token count is < 1 or the template is empty.
    """
    demonstration_tokens = demonstration_tokens or review_tokens
    if min(review_tokens, demonstration_tokens) < 1:
        raise ValueError(
            f"review_tokens ({review_tokens}) and demonstration_tokens "
            f"({demonstration_tokens}) must be at least 1"
        )
    if not template:
        raise ValueError("the template is what the model completes; it cannot be empty")

    def part(text: str) -> list[int]:
        return bpe.encode_texts(tokenizer, [text])[0]

    def cut(text: str, tokens: int) -> list[int]:
        return truncate(part(clean_review(text)), tokens, "head+tail")

    ids: list[int] = []
    for text, word in demonstrations:
        ids += cut(text, demonstration_tokens) + part(template) + part(word) + part(separator)
    return ids + cut(review, review_tokens) + part(template)


__all__ = [
    "POOLINGS",
    "EncodedReviews",
    "GPTClassifier",
    "Pooling",
    "calibrate",
    "class_log_probs",
    "continuation_log_probs",
    "encode_prompt",
    "encode_reviews",
    "end_of_text_id",
    "pool",
    "review_loader",
    "right_padded",
    "train_top_blocks",
]
