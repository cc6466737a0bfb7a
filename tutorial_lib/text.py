"""Text to tensors: normalisation, tokenization and a vocabulary for TextCNN (chapter 5), and
tokenized datasets with dynamic padding for BERT (chapter 4)."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import Dataset

PAD, UNK = "<pad>", "<unk>"
_BREAKS = re.compile(r"<br\s*/?>", re.IGNORECASE)
_TOKENS = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def normalize(text: str) -> str:
    """Lower-case ``text`` and replace the ``<br />`` line breaks of IMDB reviews by spaces."""
    return _BREAKS.sub(" ", text).lower()


def tokenize(text: str) -> list[str]:
    """Split normalised text into words (keeping contractions like ``don't``) and ``!``/``?``."""
    return _TOKENS.findall(normalize(text))


@dataclass
class Vocabulary:
    """A word-to-index mapping with ``<pad>`` at 0 and ``<unk>`` at 1."""

    itos: list[str]

    def __post_init__(self) -> None:
        if self.itos[:2] != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r} and {UNK!r}, got {self.itos[:2]}")
        self.stoi = {token: index for index, token in enumerate(self.itos)}

    @classmethod
    def build(
        cls,
        tokenized_texts: Iterable[Sequence[str]],
        min_freq: int = 2,
        max_size: int | None = None,
    ) -> Vocabulary:
        """Build a vocabulary from tokenized *training* texts: every token seen at least
        ``min_freq`` times, most frequent first (ties alphabetically), at most ``max_size``
        words."""
        counts = Counter(token for tokens in tokenized_texts for token in tokens)
        words = sorted(
            (w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w)
        )
        return cls([PAD, UNK, *words[:max_size]])

    @property
    def pad_index(self) -> int:
        return 0

    @property
    def unk_index(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """Return the indices of ``tokens``; unknown tokens map to ``<unk>``."""
        return [self.stoi.get(token, 1) for token in tokens]

    def coverage(self, tokenized_texts: Iterable[Sequence[str]]) -> float:
        """Return the fraction of tokens in ``tokenized_texts`` that the vocabulary knows."""
        known = total = 0
        for tokens in tokenized_texts:
            total += len(tokens)
            known += sum(token in self.stoi for token in tokens)
        return known / total if total else 0.0

    def save(self, path: Path | str) -> Path:
        """Write the vocabulary as JSON and return the path."""
        path = Path(path)
        path.write_text(json.dumps({"itos": self.itos}, ensure_ascii=False), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: Path | str) -> Vocabulary:
        """Read a vocabulary written by :meth:`save`.

        Raises:
            ValueError: if the file is not a saved vocabulary.
        """
        content = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(content, dict) or "itos" not in content:
            raise ValueError(f"{path} is not a vocabulary saved by Vocabulary.save")
        return cls(list(content["itos"]))


TRUNCATIONS = ("head", "head+tail")


Token = TypeVar("Token", str, int)


def truncate(tokens: Sequence[Token], max_length: int, keep: str = "head") -> list[Token]:
    """Return at most ``max_length`` tokens: the first ones (``keep="head"``), or the first
    ``max_length // 2`` and the last ``max_length - max_length // 2`` (``"head+tail"``, which
    keeps the closing verdict of a long review; Sun et al. 2019 found it best for BERT on IMDB).

    Raises:
        ValueError: for an unknown ``keep``.
    """
    if keep not in TRUNCATIONS:
        raise ValueError(f"keep must be one of {TRUNCATIONS}, got {keep!r}")
    if len(tokens) <= max_length:
        return list(tokens)
    if keep == "head":
        return list(tokens[:max_length])
    head_length = max_length // 2
    return list(tokens[:head_length]) + list(tokens[len(tokens) - (max_length - head_length) :])


def with_bigrams(tokens: Sequence[str]) -> list[str]:
    """Return ``tokens`` followed by their bigrams (``"not good"``), the n-grams of a bag-of-n-grams
    model: word order survives only inside each pair."""
    return [*tokens, *(f"{first} {second}" for first, second in pairwise(tokens))]


def encode_texts(
    vocabulary: Vocabulary,
    tokenized_texts: Sequence[Sequence[str]],
    max_length: int,
    keep: str = "head",
) -> torch.Tensor:
    """Return a ``(N, max_length)`` tensor of token indices: each text cut by :func:`truncate`
    (``keep`` says which part survives), then right-padded with ``<pad>``."""
    encoded = torch.full((len(tokenized_texts), max_length), vocabulary.pad_index, dtype=torch.long)
    for row, tokens in enumerate(tokenized_texts):
        ids = vocabulary.encode(truncate(tokens, max_length, keep))
        encoded[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return encoded


def encode_for_bert(
    tokenizer, texts: Sequence[str], max_length: int, keep: str = "head"
) -> dict[str, list[list[int]]]:
    """Tokenize ``texts`` with a BERT-style Hugging Face tokenizer into at most ``max_length``
    ids each, ``[CLS]`` and ``[SEP]`` included, unpadded.

    ``keep="head"`` is the tokenizer's own truncation (the first pieces survive);
    ``keep="head+tail"`` cuts the word pieces with :func:`truncate`, keeping the first and the
    last ones (Sun et al. 2019's best truncation for IMDB), then adds ``[CLS]``/``[SEP]``.

    Returns:
        ``{"input_ids", "token_type_ids", "attention_mask"}``, one list of ints per text.

    Raises:
        ValueError: for an unknown ``keep``, ``max_length`` below 3, or a tokenizer without
            ``[CLS]``/``[SEP]`` tokens.
    """
    if keep not in TRUNCATIONS:
        raise ValueError(f"keep must be one of {TRUNCATIONS}, got {keep!r}")
    if max_length < 3:
        raise ValueError(
            f"max_length must leave room for [CLS], [SEP] and a token; got {max_length}"
        )
    texts = [normalize_whitespace(t) for t in texts]
    if keep == "head":
        encoded = tokenizer(texts, truncation=True, max_length=max_length)
        return {key: list(values) for key, values in encoded.items()}
    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(
            "head+tail truncation needs a BERT-style tokenizer with [CLS] and [SEP] tokens"
        )
    # verbose=False: the pieces are cut below, so the "longer than 512" warning does not apply
    pieces = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    input_ids = [[cls, *truncate(ids, max_length - 2, keep), sep] for ids in pieces]
    return {
        "input_ids": input_ids,
        "token_type_ids": [[0] * len(ids) for ids in input_ids],
        "attention_mask": [[1] * len(ids) for ids in input_ids],
    }


class TokenizedTexts(Dataset):
    """Texts tokenized once by a Hugging Face tokenizer (truncated by :func:`encode_for_bert`,
    *not* padded), with labels.

    ``dataset[i]`` is a dict of lists (``input_ids``, ``attention_mask``, ...) plus ``labels``,
    the form ``transformers.DataCollatorWithPadding`` pads per batch to the longest member.
    """

    def __init__(
        self,
        tokenizer,
        texts: Sequence[str],
        labels: Sequence[int],
        max_length: int,
        keep: str = "head",
    ) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        self.encodings = encode_for_bert(tokenizer, texts, max_length, keep)
        self.labels = list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {key: values[index] for key, values in self.encodings.items()}
        item["labels"] = self.labels[index]
        return item


def normalize_whitespace(text: str) -> str:
    """Replace IMDB's ``<br />`` tags by spaces (case kept: cased tokenizers need it)."""
    return _BREAKS.sub(" ", text)
