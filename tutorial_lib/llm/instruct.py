"""Chapter 11's instruction tuning: a chat template, a loss on the assistant's tokens only,
instructions built from IMDB's training reviews, and answers read back by generation.

- The template: three special tokens (:data:`USER`, :data:`ASSISTANT`, :data:`END_OF_TURN`)
  added to chapter 8's tokenizer (:func:`add_chat_tokens`), the model's token table grown to
  match (:func:`grow_vocabulary`), a conversation rendered to ids with the mask of the tokens
  the assistant wrote (:func:`render_chat`), and the same template in Jinja for ``transformers``
  (:data:`CHAT_TEMPLATE`, :func:`hf_chat_tokenizer`), which ``tests/test_instruct.py`` holds
  equal to the hand-made one.
- The data: :data:`TASKS` (sentiment, the reviewer's rating, writing a review), each with
  phrasings used in training and phrasings held out for evaluation; :func:`conversations`
  builds the examples from reviews.
- The loss: :func:`sft_targets` (next-token targets, ``-100`` where the loss does not look) and
  :class:`ChatExamples`; training goes through :func:`tutorial_lib.train.fit` in
  :func:`instruction_tune`.
- Parameter-efficient variants: :func:`train_new_token_rows` keeps the old vocabulary frozen
  and trains only the new rows (``peft``'s ``trainable_token_indices``), for LoRA and QLoRA.
- Reading answers: :func:`stream_reply` (greedy or sampled, stopping at the end of the turn,
  with chapter 8's KV cache), :func:`parse_answer` (strict) and :func:`evaluate_prompts`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import bpe
from .gpt import GPT, GPTConfig, next_token
from .pretraining import clean_review

USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
CHAT_TOKENS = (USER, ASSISTANT, END_OF_TURN)
"""The special tokens of the template, in the order :func:`add_chat_tokens` gives them ids."""

IGNORE = -100
"""The target of a position the loss skips: ``F.cross_entropy``'s default ``ignore_index``."""

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "<|user|>{{ message['content'] }}<|end|>"
    "{%- elif message['role'] == 'assistant' -%}"
    "<|assistant|>{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}"
    "{%- else -%}"
    "{{ raise_exception('roles are user and assistant, not ' + message['role']) }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
""":func:`render_chat` as a Jinja chat template, with the assistant's part (its text and the
end-of-turn token) inside ``{% generation %}`` so that ``apply_chat_template`` can return the
same loss mask."""


# --- the template ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTokens:
    """The ids of the template's special tokens."""

    user: int
    assistant: int
    end_of_turn: int


def add_chat_tokens(tokenizer: Any) -> Any:
    """Return a copy of a ``tokenizers.Tokenizer`` with :data:`CHAT_TOKENS` added as special
    tokens, numbered after its vocabulary (the original is left unchanged).

    Raises:
        ValueError: if the tokenizer already holds one of them.
    """
    from tokenizers import AddedToken, Tokenizer

    present = [token for token in CHAT_TOKENS if tokenizer.token_to_id(token) is not None]
    if present:
        raise ValueError(
            f"the tokenizer already has {present}: add the chat tokens to chapter 8's tokenizer "
            "once (a saved chapter 11 tokenizer carries them)"
        )
    grown = Tokenizer.from_str(tokenizer.to_str())
    grown.add_special_tokens([AddedToken(token, special=True) for token in CHAT_TOKENS])
    return grown


def chat_token_ids(tokenizer: Any) -> ChatTokens:
    """Return the ids of the chat tokens in ``tokenizer``.

    Raises:
        ValueError: if one is missing (a tokenizer without :func:`add_chat_tokens`).
    """
    ids = [tokenizer.token_to_id(token) for token in CHAT_TOKENS]
    if None in ids:
        raise ValueError(
            f"the tokenizer has no {CHAT_TOKENS[ids.index(None)]} token: it carries no chat "
            "template (load a chapter 11 model, or call add_chat_tokens first)"
        )
    return ChatTokens(*ids)


@torch.no_grad()
def grow_vocabulary(model: GPT, vocab_size: int) -> GPT:
    """Return a copy of ``model`` whose token table (tied to the output layer) has
    ``vocab_size`` rows: the old rows unchanged and each new row the **mean** of the old ones.

    Why the mean (Hewitt 2021): a new row drawn like the others at random has a dot product with
    the hidden states that no training has shaped, so the new token's logit can start far above
    every real token's; the mean row gives it about the average logit, and the model's outputs
    on ordinary text barely move until training gives the row its own meaning.

    Raises:
        ValueError: if ``vocab_size`` is smaller than the model's vocabulary.
    """
    old = model.config.vocab_size
    if vocab_size < old:
        raise ValueError(f"vocab_size {vocab_size} is below the model's {old}; it can only grow")
    grown = GPT(GPTConfig(**{**model.config.to_dict(), "vocab_size": vocab_size}))
    state = model.state_dict()
    table = state["wte.weight"]
    new_rows = table.mean(dim=0, keepdim=True).expand(vocab_size - old, -1)
    state["wte.weight"] = torch.cat([table, new_rows])
    state["lm_head.weight"] = state["wte.weight"]
    grown.load_state_dict(state)
    return grown.to(table.device)


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Return the ids of ``text`` as ordinary text: any spelling of a special token inside it
    (a review can hold ``<|end|>``) is encoded as the characters it is (:func:`bpe.encode_texts`).
    """
    return bpe.encode_texts(tokenizer, [text])[0]


def _check_messages(messages: Sequence[dict[str, str]]) -> None:
    if isinstance(messages, (str, dict)) or not messages:
        raise ValueError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        expected = "user" if index % 2 == 0 else "assistant"
        if role != expected:
            raise ValueError(
                f"message {index} has role {role!r}; a conversation alternates user and "
                f"assistant turns, starting with the user (expected {expected!r})"
            )
        if not isinstance(message.get("content"), str):
            raise ValueError(f"message {index}'s content must be a string")


def render_chat(
    tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Return ``(ids, assistant_mask)`` of a conversation in the template
    ``<|user|>text<|end|><|assistant|>text<|end|>…`` (``<|assistant|>`` appended when
    ``add_generation_prompt``): the mask is 1 on the tokens the assistant wrote, its end-of-turn
    token included — what the loss learns from — and 0 elsewhere.

    Raises:
        ValueError: if the roles do not alternate user, assistant, … or the tokenizer has no
            chat tokens.
    """
    _check_messages(messages)
    special = chat_token_ids(tokenizer)
    ids: list[int] = []
    mask: list[int] = []
    for message in messages:
        text = encode_text(tokenizer, message["content"])
        if message["role"] == "user":
            ids += [special.user, *text, special.end_of_turn]
            mask += [0] * (len(text) + 2)
        else:
            ids += [special.assistant, *text, special.end_of_turn]
            mask += [0] + [1] * (len(text) + 1)
    if add_generation_prompt:
        ids.append(special.assistant)
        mask.append(0)
    return ids, mask


def hf_chat_tokenizer(tokenizer: Any) -> Any:
    """Return a ``transformers.PreTrainedTokenizerFast`` wrapping ``tokenizer`` with
    :data:`CHAT_TEMPLATE`, end-of-turn as its end-of-sequence token and end-of-text as padding,
    so that ``apply_chat_template`` renders this book's template (its ``save_pretrained`` would
    write a folder ``AutoTokenizer`` reads back; chapter 11 saves with
    ``pretraining.save_pretrained``).

    Raises:
        ValueError: if the tokenizer has no chat tokens.
    """
    from transformers import PreTrainedTokenizerFast

    chat_token_ids(tokenizer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=CHAT_TEMPLATE,
        eos_token=END_OF_TURN,
        pad_token=bpe.END_OF_TEXT,
    )


# --- the tasks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One kind of instruction: phrasings seen in training, phrasings kept for evaluation."""

    name: str
    seen: tuple[str, ...]
    held_out: tuple[str, ...]


TASKS = {
    "sentiment": Task(
        "sentiment",
        seen=(
            "Is this movie review positive or negative?",
            "Classify the sentiment of this review as positive or negative.",
            "Did the reviewer like the film? Answer positive or negative.",
            "Read the review and say whether it is positive or negative.",
        ),
        held_out=(
            "What is the sentiment of the following review, positive or negative?",
            "Tell me if this review is negative or positive.",
        ),
    ),
    "rating": Task(
        "rating",
        seen=(
            "How many stars out of 10 did this reviewer give?",
            "Rate this review from 1 to 10, as its author did.",
            "Guess the reviewer's score on a scale of 1 to 10.",
        ),
        held_out=("On a 10-point scale, which rating goes with this review?",),
    ),
    "write": Task(
        "write",
        seen=(
            "Write a {label} movie review.",
            "Compose a short {label} review of a film.",
            "Give me a {label} review of a movie.",
        ),
        held_out=("I would like to read a {label} review of some movie. Write one.",),
    ),
}
"""The instruction tasks: answer the review's sentiment, the reviewer's rating (IMDB's file
names carry it: 1–4 negative, 7–10 positive), or write a review of the sentiment asked for."""

SENTIMENT_WORDS = ("negative", "positive")
"""The answer of the sentiment task for label 0 and 1 (IMDB's ``neg`` and ``pos``)."""


def cut_review(tokenizer: Any, text: str, max_tokens: int, keep: str = "head+tail") -> str:
    """Return ``text`` (``<br />`` cleaned) cut to about ``max_tokens`` tokens: its beginning and
    its end joined by `` ... `` (``keep="head+tail"``: a long review's verdict is usually at its
    end), or its beginning only (``"head"``). A text that fits is returned whole.

    Raises:
        ValueError: if ``max_tokens`` < 2 or ``keep`` is neither.
    """
    if max_tokens < 2 or keep not in ("head", "head+tail"):
        raise ValueError(
            f"need max_tokens ≥ 2 and keep 'head' or 'head+tail', got {max_tokens}, {keep!r}"
        )
    text = clean_review(text)
    ids = encode_text(tokenizer, text)
    if len(ids) <= max_tokens:
        return text
    if keep == "head":
        return tokenizer.decode(ids[:max_tokens]).rstrip()
    head = tokenizer.decode(ids[: max_tokens // 2]).rstrip()
    tail = tokenizer.decode(ids[len(ids) - (max_tokens - max_tokens // 2) :]).lstrip()
    return f"{head} ... {tail}"


def conversations(
    task: str,
    reviews: Sequence[str],
    labels: Sequence[int],
    ratings: Sequence[int],
    *,
    phrasings: Sequence[str],
    seed: int,
) -> list[dict[str, Any]]:
    """Return one example per review: ``{"messages", "task", "phrasing", "label", "rating",
    "answer"}``, its phrasing drawn at random (``seed``) from ``phrasings``.

    The reviews are already cut (:func:`cut_review`). For ``"sentiment"`` and ``"rating"`` the
    user turn is the instruction, a blank line and the review, and the answer is
    ``"positive"``/``"negative"`` or the rating as digits; for ``"write"`` the user turn asks for
    a review of the review's label and the answer is the review itself.

    Raises:
        ValueError: for an unknown task, no phrasings, or lengths that differ.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; the tasks are {sorted(TASKS)}")
    if not phrasings or isinstance(phrasings, str):
        raise ValueError("phrasings must be a non-empty list of instructions")
    if not len(reviews) == len(labels) == len(ratings):
        raise ValueError(
            f"{len(reviews)} reviews, {len(labels)} labels and {len(ratings)} ratings differ"
        )
    draw = random.Random(seed)
    examples = []
    for review, label, rating in zip(reviews, labels, ratings, strict=True):
        phrasing = draw.choice(list(phrasings))
        word = SENTIMENT_WORDS[label]
        if task == "write":
            user, answer = phrasing.format(label=word), review
        else:
            user = f"{phrasing}\n\n{review}"
            answer = word if task == "sentiment" else str(rating)
        examples.append(
            {
                "messages": [
                    {"role": "user", "content": user},
                    {"role": "assistant", "content": answer},
                ],
                "task": task,
                "phrasing": phrasing,
                "label": int(label),
                "rating": int(rating),
                "answer": answer,
            }
        )
    return examples


def instruction_sets(
    train: Any,
    test: Any,
    tokenizer: Any,
    splits: dict[str, list[int]],
    *,
    review_tokens: int,
    write_tokens: int,
    rating_reviews: int,
    write_reviews: int,
    test_rating_reviews: int,
) -> dict[str, list[dict[str, Any]]]:
    """Return chapter 11's examples, built by :func:`conversations` from ``splits``
    (:func:`tutorial_lib.llm.adapt.labelled_splits`: ``"large"`` and ``"val"`` index ``train``,
    ``"test"`` indexes ``test``):

    - ``"train"``: the sentiment of every ``"large"`` review, the rating of its first
      ``rating_reviews`` and, as "write" answers, the beginnings (``write_tokens``) of its last
      ``write_reviews`` — seen phrasings only; reviews cut to ``review_tokens``;
    - ``"val"``: the same three tasks on the ``"val"`` reviews, in the training mix (every
      review's sentiment, the rating and "write" answer of the same shares), seen phrasings:
      the loss that picks the best epoch and the recipe;
    - ``"sentiment/seen"``, ``"sentiment/held-out"``: the ``"test"`` reviews, the first half
      asked in seen phrasings, the second in held-out ones; ``"rating/seen"`` and
      ``"rating/held-out"`` the same on the first ``test_rating_reviews``.

    Every training and validation example comes from ``train``; only the test sets read ``test``.
    """

    def examples(split: Any, indices: list[int], task: str, phrasings, seed: int, tokens: int):
        keep = "head" if task == "write" else "head+tail"
        reviews = [cut_review(tokenizer, split.texts[i], tokens, keep) for i in indices]
        labels = [split.labels[i] for i in indices]
        ratings = [split.ratings[i] for i in indices]
        return conversations(task, reviews, labels, ratings, phrasings=phrasings, seed=seed)

    large, val, test_indices = splits["large"], splits["val"], splits["test"]
    val_rating = max(1, round(len(val) * rating_reviews / len(large)))
    val_write = max(1, round(len(val) * write_reviews / len(large)))
    sentiment, rating, write = TASKS["sentiment"], TASKS["rating"], TASKS["write"]
    sets = {
        "train": examples(train, large, "sentiment", sentiment.seen, 0, review_tokens)
        + examples(train, large[:rating_reviews], "rating", rating.seen, 1, review_tokens)
        + examples(
            train, large[len(large) - write_reviews :], "write", write.seen, 2, write_tokens
        ),
        # validation mixes the tasks as training does: every review's sentiment, the rating
        # and the "write" answer of the same share of them
        "val": examples(train, val, "sentiment", sentiment.seen, 3, review_tokens)
        + examples(train, val[:val_rating], "rating", rating.seen, 4, review_tokens)
        + examples(train, val[len(val) - val_write :], "write", write.seen, 5, write_tokens),
    }
    half = len(test_indices) // 2
    rated = test_indices[:test_rating_reviews]
    for task, indices, seed in (("sentiment", test_indices, 6), ("rating", rated, 8)):
        middle = len(indices) // 2 if task == "rating" else half
        sets[f"{task}/seen"] = examples(
            test, indices[:middle], task, TASKS[task].seen, seed, review_tokens
        )
        sets[f"{task}/held-out"] = examples(
            test, indices[middle:], task, TASKS[task].held_out, seed + 1, review_tokens
        )
    return sets


def write_prompts(per_label: int, held_out: bool, seed: int) -> list[dict[str, Any]]:
    """Return ``2 × per_label`` "write a review" requests (half positive, half negative) in the
    seen or the held-out phrasings, drawn with ``seed``: ``{"messages", "label", "phrasing"}``."""
    task = TASKS["write"]
    phrasings = task.held_out if held_out else task.seen
    draw = random.Random(seed)
    requests = []
    for label in (1, 0):
        for _ in range(per_label):
            phrasing = draw.choice(list(phrasings))
            content = phrasing.format(label=SENTIMENT_WORDS[label])
            requests.append(
                {
                    "messages": [{"role": "user", "content": content}],
                    "label": label,
                    "phrasing": phrasing,
                }
            )
    return requests


def train_ngram_judge(
    texts: Sequence[str],
    labels: Sequence[int],
    val_texts: Sequence[str],
    val_labels: Sequence[int],
    *,
    epochs: int = 5,
    seed: int = 0,
) -> Any:
    """Train chapter 5's bag of n-grams (words and word pairs, ``nn.EmbeddingBag``) on reviews
    and return a function from texts to the probability that each is positive: the judge of
    the "write a review" task when no chapter 4 classifier is saved.

    The model is trained by :func:`tutorial_lib.train.fit` and keeps its best validation epoch;
    the function carries ``judge.val_accuracy`` and ``judge.log_odds``, a function from texts to
    ``log p(positive) - log p(negative)`` (finite where the probability rounds to 0 or 1).
    """
    from .. import train
    from ..models import BagOfNgrams
    from ..text import Vocabulary, encode_texts, tokenize, with_bigrams

    longest = 511  # 256 words and their bigrams: a generated review is shorter

    def ngrams(batch: Sequence[str]) -> list[list[str]]:
        return [with_bigrams(tokenize(text)[:256]) for text in batch]

    train_ngrams = ngrams(texts)
    vocabulary = Vocabulary.build(train_ngrams, min_freq=3, max_size=100_000)

    def loader(batch_ngrams, batch_labels, shuffle: bool) -> DataLoader:
        ids = encode_texts(vocabulary, batch_ngrams, longest)
        return DataLoader(
            torch.utils.data.TensorDataset(ids, torch.as_tensor(list(batch_labels))),
            batch_size=256,
            shuffle=shuffle,
            generator=torch.Generator().manual_seed(seed) if shuffle else None,
        )

    torch.manual_seed(seed)
    model = BagOfNgrams(len(vocabulary), embedding_dim=64)
    history = train.fit(
        model,
        loader(train_ngrams, labels, True),
        loader(ngrams(val_texts), val_labels, False),
        torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs,
        restore_best=True,
        verbose=False,
    )
    model.eval()

    @torch.no_grad()
    def log_odds(batch: Sequence[str]) -> torch.Tensor:
        logits = model(encode_texts(vocabulary, ngrams(batch), longest))
        return logits[:, 1] - logits[:, 0]

    def judge(batch: Sequence[str]) -> torch.Tensor:
        return log_odds(batch).sigmoid()

    judge.log_odds = log_odds  # log p(positive) - log p(negative): chapter 12's gold reward
    judge.val_accuracy = max(float(a) for a in history["val_accuracy"])
    return judge


# --- the loss -------------------------------------------------------------------------------


def sft_targets(ids: Sequence[int], mask: Sequence[int], masked: bool = True) -> list[int]:
    """Return the next-token targets of a rendered conversation: position *t* predicts token
    *t + 1*, kept where that token is the assistant's (``mask``) and :data:`IGNORE` elsewhere —
    or everywhere but the last position when ``masked`` is False (the loss on every token).

    Raises:
        ValueError: if ``ids`` and ``mask`` differ in length.
    """
    if len(ids) != len(mask):
        raise ValueError(f"{len(ids)} ids but a mask of {len(mask)}")
    targets = list(ids[1:]) + [IGNORE]
    if masked:
        targets = [t if m else IGNORE for t, m in zip(targets, list(mask[1:]) + [0], strict=True)]
    return targets


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean cross-entropy over the positions whose target is not :data:`IGNORE`.

    Raises:
        ValueError: if the shapes disagree or no position has a target.
    """
    if logits.dim() != 3 or tuple(targets.shape) != tuple(logits.shape[:2]):
        raise ValueError(
            f"logits {tuple(logits.shape)} need targets shaped {tuple(logits.shape[:2])}, "
            f"got {tuple(targets.shape)}"
        )
    if not (targets != IGNORE).any():
        raise ValueError("no position of the batch has a target: nothing to learn from")
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)


class ChatExamples(Dataset):
    """Rendered conversations: ``dataset[i]`` is ``(ids, targets)`` as 1-D long tensors.

    Raises:
        ValueError: if a conversation is longer than ``context_length`` (cut the reviews
            shorter) or has no target.
    """

    def __init__(
        self,
        tokenizer: Any,
        examples: Sequence[dict[str, Any]],
        context_length: int,
        masked: bool = True,
    ) -> None:
        self.ids, self.targets = [], []
        for index, example in enumerate(examples):
            ids, mask = render_chat(tokenizer, example["messages"])
            if len(ids) > context_length:
                raise ValueError(
                    f"example {index} renders to {len(ids)} tokens, more than the context of "
                    f"{context_length}: cut its review shorter"
                )
            self.ids.append(torch.tensor(ids))
            self.targets.append(torch.tensor(sft_targets(ids, mask, masked)))
        self.tokens = sum(len(ids) for ids in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ids[index], self.targets[index]


class LengthGroupedBatches(torch.utils.data.Sampler[list[int]]):
    """Batches of conversations of similar length, in random order (``transformers``'
    ``group_by_length``): each pass shuffles the examples, sorts each window of ``window``
    batches' worth of them by length, cuts the window into batches and shuffles the batches.
    Every example is used once per pass, and a batch pads far less than a random one (the
    "write" answers are half as long as the questions).

    Raises:
        ValueError: if ``batch_size`` or ``window`` is below 1.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        generator: torch.Generator,
        window: int = 50,
    ) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError(
                f"batch_size and window must be at least 1, not {batch_size}, {window}"
            )
        self.lengths, self.batch_size = list(lengths), batch_size
        self.generator, self.window = generator, window

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        span = self.window * self.batch_size
        batches = []
        for start in range(0, len(order), span):
            chunk = sorted(order[start : start + span], key=lambda i: -self.lengths[i])
            batches += [
                chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)
            ]
        for index in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[index]


def chat_loader(
    dataset: ChatExamples,
    pad_id: int,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> DataLoader:
    """Return a loader of ``(input_ids, targets)`` batches right-padded to their longest
    conversation (pads are ``pad_id`` with target :data:`IGNORE`): in order, or with
    ``shuffle`` in :class:`LengthGroupedBatches` drawn by ``generator``. One process only (a
    ``torchrun`` job would need each process to draw its own share)."""
    from torch.nn.utils.rnn import pad_sequence

    def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        ids = pad_sequence([i for i, _ in items], batch_first=True, padding_value=pad_id)
        targets = pad_sequence([t for _, t in items], batch_first=True, padding_value=IGNORE)
        return ids, targets

    if not shuffle:
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    batches = LengthGroupedBatches(
        [len(ids) for ids in dataset.ids], batch_size, generator or torch.Generator()
    )
    return DataLoader(dataset, batch_sampler=batches, collate_fn=collate)


def instruction_tune(
    model: nn.Module,
    train_set: ChatExamples,
    val_set: ChatExamples,
    *,
    pad_id: int,
    learning_rate: float,
    epochs: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """Fine-tune ``model`` on ``train_set`` with :func:`masked_lm_loss` through
    :func:`tutorial_lib.train.fit`: AdamW (decay on matrices only, trainable parameters only),
    linear warm-up over 10 % of the steps and linear decay, gradients clipped at 1, shuffled by
    ``seed``; the weights of the epoch with the lowest validation loss are kept.

    Returns a dict: ``val_losses`` (nats per assistant token, per epoch), ``best_epoch``,
    ``trainable`` (parameters), ``seconds``, ``tokens_per_second`` and ``optimizer`` (for
    :func:`training_memory`).

    Raises:
        ValueError: if ``epochs`` or ``batch_size`` is below 1, or as ``train.fit``.
    """
    from .. import optim, train

    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be at least 1, not {epochs}, {batch_size}")
    loader = chat_loader(
        train_set, pad_id, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    optimizer, scheduler = optim.adamw_with_linear_warmup(
        model, learning_rate, epochs * len(loader), verbose=False
    )
    started = time.perf_counter()
    history = train.fit(
        model,
        loader,
        chat_loader(val_set, pad_id, 2 * batch_size),
        optimizer,
        epochs,
        loss_fn=masked_lm_loss,
        scheduler=scheduler,
        monitor="val_loss",
        restore_best=True,
        grad_clip_norm=1.0,
        verbose=False,
    )
    seconds = time.perf_counter() - started
    val_losses = [float(v) for v in history["val_loss"]]
    return {
        "val_losses": val_losses,
        "best_epoch": val_losses.index(min(val_losses)) + 1,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "seconds": seconds,
        "tokens_per_second": epochs * train_set.tokens / seconds,
        "optimizer": optimizer,
    }


# --- training only what is new: LoRA and QLoRA --------------------------------------------


class NewTokenRows(nn.Module):
    """A grown token table with its first ``first_new`` rows frozen (a buffer) and the rest
    trainable (a parameter): ``peft``'s ``trainable_token_indices`` for the rows a template
    added. Read as an embedding (``forward(ids)``) and, through :class:`TiedOutput`, as the
    output layer it is tied to."""

    def __init__(self, embedding: nn.Embedding, first_new: int) -> None:
        super().__init__()
        if not 0 < first_new < embedding.num_embeddings:
            raise ValueError(
                f"first_new must split the {embedding.num_embeddings} rows, not {first_new}"
            )
        weight = embedding.weight.detach()
        self.register_buffer("old_rows", weight[:first_new].clone())
        self.new_rows = nn.Parameter(weight[first_new:].clone())

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.old_rows, self.new_rows])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class TiedOutput(nn.Module):
    """The output layer reading the same :class:`NewTokenRows` table (GPT ties the two)."""

    def __init__(self, table: NewTokenRows) -> None:
        super().__init__()
        self.table = table

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.table.weight)


def train_new_token_rows(model: GPT, first_new: int) -> int:
    """Replace ``model``'s tied token table and output layer by :class:`NewTokenRows` and
    :class:`TiedOutput`, so that only the rows from ``first_new`` on train, and return how many
    parameters that makes trainable. Call it after :func:`tutorial_lib.lora.inject_lora`, which
    freezes everything it does not adapt.

    Raises:
        ValueError: if ``model`` does not tie its output layer to its token table.
    """
    if model.lm_head.weight is not model.wte.weight:
        raise ValueError("the model's output layer is not tied to its token table")
    table = NewTokenRows(model.wte, first_new)
    model.wte = table
    model.lm_head = TiedOutput(table)
    return table.new_rows.numel()


LORA_TARGETS = ("qkv", "proj", "fc")
"""Every linear layer of chapter 8's blocks: attention's ``qkv`` and ``proj``, the MLP's ``fc``
and ``proj`` (QLoRA adapts all of them, Dettmers et al. 2023)."""

METHODS = ("full", "lora", "qlora")


def prepare_for_tuning(
    model: GPT,
    method: str,
    first_new: int,
    rank: int = 8,
    alpha: float = 16.0,
    group_size: int = 32,
) -> int:
    """Set ``model`` up, in place, for one way of instruction tuning and return its trainable
    parameters: ``"full"`` trains everything; ``"lora"`` freezes the model, puts LoRA of
    ``rank`` on :data:`LORA_TARGETS` and trains the token rows from ``first_new`` on (the chat
    tokens, :func:`train_new_token_rows`); ``"qlora"`` first stores those linear layers' weights
    in 4 bits (:class:`tutorial_lib.compress.Linear4bit`, groups of ``group_size``), then does the
    same as ``"lora"``.

    Raises:
        ValueError: for an unknown ``method``.
    """
    from .. import compress, lora

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method == "full":
        model.requires_grad_(True)
    else:
        if method == "qlora":
            compress.quantize_to_4bit_(model, LORA_TARGETS, group_size)
        lora.inject_lora(model, LORA_TARGETS, rank=rank, alpha=alpha)
        train_new_token_rows(model, first_new)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def training_memory(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Return the bytes of what training holds besides activations: ``weights`` (parameters
    and buffers, 4-bit codes as stored), ``gradients`` (one per trainable parameter) and
    ``optimizer`` (the state tensors the optimiser has allocated, after at least one step)."""
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    weights = sum(t.numel() * t.element_size() for t in tensors.values())
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    state = sum(
        value.numel() * value.element_size()
        for per_parameter in optimizer.state.values()
        for value in per_parameter.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    )
    return {"weights": weights, "gradients": gradients, "optimizer": state}


# --- reading answers ------------------------------------------------------------------------


@torch.inference_mode()
def stream_reply(
    model: GPT,
    prompt_ids: Sequence[int],
    stop_id: int,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[int]:
    """Yield the reply to ``prompt_ids`` token by token (greedy when ``temperature`` is 0),
    with chapter 8's KV cache, until ``stop_id`` (not yielded), ``max_new_tokens`` tokens or
    the end of the context.

    Raises:
        ValueError: if the prompt is empty or already fills the context.
    """
    context = model.config.context_length
    if not 0 < len(prompt_ids) < context:
        raise ValueError(
            f"the prompt has {len(prompt_ids)} tokens; it needs 1 to {context - 1} to leave "
            "room for a reply"
        )
    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache()
        device = next(model.parameters()).device
        logits = model(torch.tensor([list(prompt_ids)], device=device), cache)
        for _ in range(min(max_new_tokens, context - len(prompt_ids))):
            token = next_token(logits[:, -1], temperature, top_p=top_p, generator=generator)
            if token.item() == stop_id:
                return
            yield token.item()
            if cache.length >= context:
                return
            logits = model(token, cache)
    finally:
        model.train(was_training)


def fit_to_context(
    tokenizer: Any, messages: Sequence[dict[str, str]], context_length: int, reply_room: int
) -> tuple[list[dict[str, str]], int]:
    """Return ``(messages, dropped)``: the conversation without its oldest exchanges (a user
    turn and the assistant's answer), as few as needed for it, rendered with the generation
    prompt, to leave ``reply_room`` positions of the context free; ``dropped`` counts the turns
    left out. The last user turn is always kept.

    Raises:
        ValueError: if the last user turn alone leaves no room: shorten it.
    """
    kept = list(messages)
    dropped = 0
    while True:
        ids, _ = render_chat(tokenizer, kept, add_generation_prompt=True)
        if len(ids) + reply_room <= context_length:
            return kept, dropped
        if len(kept) <= 1:
            raise ValueError(
                f"the last message alone takes {len(ids)} of the {context_length} positions, "
                f"leaving fewer than {reply_room} for the reply: shorten it"
            )
        kept, dropped = kept[2:], dropped + 2


def reply(
    model: GPT,
    tokenizer: Any,
    messages: Sequence[dict[str, str]],
    max_new_tokens: int,
    **sampling: Any,
) -> tuple[str, bool]:
    """Return ``(text, finished)``: the assistant's next turn after ``messages`` and whether it
    ended with the end-of-turn token (rather than running out of tokens)."""
    ids, _ = render_chat(tokenizer, messages, add_generation_prompt=True)
    stop = chat_token_ids(tokenizer).end_of_turn
    room = min(max_new_tokens, model.config.context_length - len(ids))
    tokens = list(stream_reply(model, ids, stop, max_new_tokens, **sampling))
    return tokenizer.decode(tokens), len(tokens) < room


_RATING = re.compile(r"(10|[1-9])")


def parse_answer(task: str, text: str) -> int | None:
    """Return the answer in ``text``, read strictly — the label (0/1) for ``"sentiment"``, the
    rating (1–10) for ``"rating"`` — or ``None`` when the text is anything else (a word around
    the answer, two answers, a different capitalisation)."""
    if task == "sentiment":
        return SENTIMENT_WORDS.index(text) if text in SENTIMENT_WORDS else None
    if task == "rating":
        return int(text) if _RATING.fullmatch(text) else None
    raise ValueError(f"answers of task {task!r} are not parsed; the tasks are sentiment, rating")


@torch.inference_mode()
def batch_replies(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    stop_id: int,
    max_new_tokens: int,
    *,
    batch_size: int = 64,
    temperature: float = 0.0,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> list[tuple[list[int], bool]]:
    """Return the reply to each prompt as ``(tokens, finished)`` — what :func:`stream_reply`
    gives one prompt at a time (greedy when ``temperature`` is 0), and whether the reply ended
    with ``stop_id`` — computed in batches of prompts of **equal length**, so that one KV cache
    serves a whole batch with no padding and no position shifted.

    Raises:
        ValueError: if a prompt is empty or fills the context, or ``batch_size`` < 1.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    context = model.config.context_length
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        if not 0 < len(prompt) < context:
            raise ValueError(
                f"prompt {index} has {len(prompt)} tokens; it needs 1 to {context - 1} to leave "
                "room for a reply"
            )
        by_length.setdefault(len(prompt), []).append(index)
    replies: list[tuple[list[int], bool]] = [([], False)] * len(prompts)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for length, indices in sorted(by_length.items()):
            steps = min(max_new_tokens, context - length)
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                cache = model.new_cache()
                logits = model(
                    torch.tensor([list(prompts[i]) for i in chunk], device=device), cache
                )
                tokens: list[list[int]] = [[] for _ in chunk]
                done = [False] * len(chunk)
                for step in range(steps):
                    chosen = next_token(
                        logits[:, -1], temperature, top_p=top_p, generator=generator
                    ).squeeze(1)
                    for row, token in enumerate(chosen.tolist()):
                        if not done[row]:
                            if token == stop_id:
                                done[row] = True
                            else:
                                tokens[row].append(token)
                    if all(done) or step + 1 == steps or cache.length >= context:
                        break
                    logits = model(chosen.unsqueeze(1), cache)
                for row, index in enumerate(chunk):
                    replies[index] = (tokens[row], done[row])
    finally:
        model.train(was_training)
    return replies


def evaluate_prompts(
    model: GPT, tokenizer: Any, examples: Sequence[dict[str, Any]], max_new_tokens: int = 4
) -> dict[str, torch.Tensor]:
    """Answer each example's user turn greedily (:func:`batch_replies`) and return, one entry
    per example, ``answers`` (the parsed answer, −1 when malformed), ``well_formed`` (parsed, and
    the turn ended) and ``correct`` (well formed and equal to the label or rating)."""
    prompts = [
        render_chat(tokenizer, example["messages"][:1], add_generation_prompt=True)[0]
        for example in examples
    ]
    stop = chat_token_ids(tokenizer).end_of_turn
    answers, well_formed, correct = [], [], []
    for example, (tokens, finished) in zip(
        examples, batch_replies(model, prompts, stop, max_new_tokens), strict=True
    ):
        parsed = parse_answer(example["task"], tokenizer.decode(tokens))
        truth = example["label"] if example["task"] == "sentiment" else example["rating"]
        answers.append(-1 if parsed is None else parsed)
        well_formed.append(parsed is not None and finished)
        correct.append(parsed == truth and finished)
    return {
        "answers": torch.tensor(answers),
        "well_formed": torch.tensor(well_formed),
        "correct": torch.tensor(correct),
    }


__all__ = [
    "ASSISTANT",
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "END_OF_TURN",
    "IGNORE",
    "LengthGroupedBatches",
    "LORA_TARGETS",
    "METHODS",
    "SENTIMENT_WORDS",
    "TASKS",
    "USER",
    "ChatExamples",
    "ChatTokens",
    "NewTokenRows",
    "Task",
    "TiedOutput",
    "add_chat_tokens",
    "batch_replies",
    "instruction_sets",
    "train_ngram_judge",
    "write_prompts",
    "chat_loader",
    "chat_token_ids",
    "conversations",
    "cut_review",
    "encode_text",
    "evaluate_prompts",
    "fit_to_context",
    "grow_vocabulary",
    "hf_chat_tokenizer",
    "instruction_tune",
    "masked_lm_loss",
    "parse_answer",
    "prepare_for_tuning",
    "render_chat",
    "reply",
    "sft_targets",
    "stream_reply",
    "train_new_token_rows",
]
