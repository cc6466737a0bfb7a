"""Byte-level BPE (Sennrich et al. 2016; GPT-2's byte-level form, Radford et al. 2019): written
out in :class:`ByteLevelBPE`, and trained for real with Hugging Face ``tokenizers``.

Both work the same way. Text is first cut into pre-tokens with GPT-2's pattern (words with their
leading space, numbers, punctuation runs, whitespace), each pre-token becomes its UTF-8 bytes,
and training repeatedly merges the most frequent adjacent pair of symbols into a new symbol
until the vocabulary has the size asked for. Because the 256 bytes are all in the vocabulary
from the start, every string can be encoded and ``decode(encode(text)) == text`` always holds —
no unknown token, whatever the language.

:class:`ByteLevelBPE` numbers its symbols as ``tokenizers``' ``BpeTrainer`` does (special
tokens first, then the 256 bytes in the order of the printable characters GPT-2 maps them to,
then the merges), and breaks ties between equally frequent pairs the same way (the pair of
smaller ids wins), so the two learn the same merges; ``tests/test_bpe.py`` checks it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from itertools import pairwise
from pathlib import Path

import regex

from tutorial_lib.files import atomic_write_text

END_OF_TEXT = "<|endoftext|>"
"""The special token put between documents (GPT-2's name for it)."""

GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
)
"""GPT-2's pre-tokenization pattern, the one ``tokenizers``' ``ByteLevel`` pre-tokenizer uses."""

_SPLIT = regex.compile(GPT2_SPLIT_PATTERN)


def documents(texts: Iterable[str], what: str = "texts") -> Iterable[str]:
    """Return ``texts`` unchanged, refusing a single ``str``: iterating over a string gives its
    characters, so a corpus passed as one text would silently become one document per
    character.

    Raises:
        TypeError: if ``texts`` is a ``str`` (or ``bytes``).
    """
    if isinstance(texts, (str, bytes)):
        raise TypeError(
            f"{what} must be a list (or other iterable) of documents, not one "
            f"{type(texts).__name__} of {len(texts):,} characters; wrap a single text as [text]"
        )
    return texts


def encode_texts(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Return the token ids of each text, with any special token's *string* inside a text
    (e.g. a review that quotes ``<|endoftext|>``) encoded as the ordinary text it is.

    ``tokenizers`` matches added special tokens in raw input, so the literal characters would
    otherwise become the real end-of-text id — a document boundary in the middle of a review.
    Here they are encoded as two pieces of plain text, which decode back to the same
    characters.

    Raises:
        TypeError: if ``texts`` is a single ``str``.
    """
    texts = list(documents(texts))
    specials = [token.content for token in tokenizer.get_added_tokens_decoder().values()]
    specials = [token for token in specials if len(token) > 1]
    encoded = [encoding.ids for encoding in tokenizer.encode_batch(texts)]
    for index, text in enumerate(texts):
        if any(token in text for token in specials):
            encoded[index] = _encode_quoting_specials(tokenizer, text, specials)
    return encoded


def _encode_quoting_specials(tokenizer, text: str, specials: list[str]) -> list[int]:
    for token in specials:
        if token in text:
            pieces = text.split(token)
            half = len(token) // 2
            quoted = _encode_quoting_specials(tokenizer, token[:half], specials)
            quoted += _encode_quoting_specials(tokenizer, token[half:], specials)
            ids: list[int] = []
            for position, piece in enumerate(pieces):
                if position:
                    ids += quoted
                if piece:
                    ids += _encode_quoting_specials(tokenizer, piece, specials)
            return ids
    return tokenizer.encode(text).ids


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Return GPT-2's map from each byte to a printable character: printable Latin-1 bytes map
    to themselves, the other 68 to the characters from U+0100 on. It only makes merges and
    vocabularies readable (``Ġ`` is a space); it changes nothing about what is learned."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def pre_tokenize(text: str) -> list[str]:
    """Return the pre-tokens of ``text`` (their concatenation is ``text``)."""
    return _SPLIT.findall(text)


class ByteLevelBPE:
    """A byte-level BPE tokenizer in plain Python: :meth:`train`, :meth:`encode`,
    :meth:`decode`.

    ``vocab[i]`` is the byte string of token ``i``; ``merges`` lists the learned pairs in the
    order they were learned (``merges[r]`` made token ``first_merge_id + r``).
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]] = (),
        special_tokens: Sequence[str] = (END_OF_TEXT,),
    ) -> None:
        self.special_tokens = list(special_tokens)
        byte_order = sorted(range(256), key=lambda byte: bytes_to_unicode()[byte])
        first_byte_id = len(self.special_tokens)
        self.byte_ids = {byte: first_byte_id + rank for rank, byte in enumerate(byte_order)}
        self.vocab: dict[int, bytes] = {
            index: token.encode("utf-8") for index, token in enumerate(self.special_tokens)
        }
        self.vocab.update({index: bytes([byte]) for byte, index in self.byte_ids.items()})
        self.first_merge_id = len(self.vocab)
        self.merges: list[tuple[int, int]] = []
        self.ranks: dict[tuple[int, int], int] = {}
        for pair in merges:
            self._add_merge(pair)

    def _add_merge(self, pair: tuple[int, int]) -> int:
        new_id = len(self.vocab)
        self.vocab[new_id] = self.vocab[pair[0]] + self.vocab[pair[1]]
        self.ranks[pair] = len(self.merges)
        self.merges.append(pair)
        return new_id

    def __len__(self) -> int:
        return len(self.vocab)

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = (END_OF_TEXT,),
    ) -> ByteLevelBPE:
        """Learn merges on ``texts`` until the vocabulary holds ``vocab_size`` tokens, or
        until no adjacent pair of symbols is left to merge.

        Raises:
            ValueError: if ``vocab_size`` is smaller than the special tokens plus 256 bytes.
            TypeError: if ``texts`` is a single ``str`` rather than a collection of texts.
        """
        tokenizer = cls(special_tokens=special_tokens)
        if vocab_size < len(tokenizer):
            raise ValueError(
                f"vocab_size {vocab_size} is smaller than the {len(tokenizer)} tokens every "
                "byte-level BPE starts with (the special tokens and the 256 bytes)"
            )
        # Count each distinct pre-token once, with its frequency: merges never cross them.
        counts = Counter(piece for text in documents(texts) for piece in pre_tokenize(text))
        words = [(tokenizer._bytes_as_ids(piece), count) for piece, count in counts.items()]
        pair_counts: Counter[tuple[int, int]] = Counter()
        for symbols, count in words:
            _count_pairs(pair_counts, symbols, count)
        while len(tokenizer) < vocab_size and pair_counts:
            # The most frequent pair; among equals, the one of smaller ids (as tokenizers does).
            best = min(pair_counts, key=lambda pair: (-pair_counts[pair], pair))
            new_id = tokenizer._add_merge(best)
            for index, (symbols, count) in enumerate(words):
                if best[0] not in symbols:  # cheap test first: most words lack the pair
                    continue
                merged = _merge(symbols, best, new_id)
                if len(merged) < len(symbols):  # only the words that changed change the counts
                    _count_pairs(pair_counts, symbols, -count)
                    _count_pairs(pair_counts, merged, count)
                    words[index] = (merged, count)
        return tokenizer

    def _bytes_as_ids(self, piece: str) -> list[int]:
        return [self.byte_ids[byte] for byte in piece.encode("utf-8")]

    def encode(self, text: str) -> list[int]:
        """Return the token ids of ``text``: in each pre-token, apply the merge learned
        earliest among the pairs present, again and again, until none applies."""
        ids: list[int] = []
        for piece in pre_tokenize(text):
            symbols = self._bytes_as_ids(piece)
            while len(symbols) > 1:
                pairs = set(pairwise(symbols))
                earliest = min(pairs, key=lambda pair: self.ranks.get(pair, len(self.ranks)))
                if earliest not in self.ranks:
                    break
                symbols = _merge(symbols, earliest, self.first_merge_id + self.ranks[earliest])
            ids += symbols
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Return the text of ``ids`` (bytes that are not valid UTF-8 on their own, as a cut
        sequence can produce, become U+FFFD)."""
        return b"".join(self.vocab[index] for index in ids).decode("utf-8", errors="replace")

    def merge_strings(self) -> list[tuple[str, str]]:
        """Return the merges as pairs of printable strings, the form ``tokenizers`` saves."""
        mapping = bytes_to_unicode()

        def readable(index: int) -> str:
            return "".join(mapping[byte] for byte in self.vocab[index])

        return [(readable(first), readable(second)) for first, second in self.merges]


def _count_pairs(pair_counts: Counter, symbols: list[int], count: int) -> None:
    """Add ``count`` to the count of every adjacent pair in ``symbols`` (drop pairs at zero)."""
    for pair in pairwise(symbols):
        pair_counts[pair] += count
        if pair_counts[pair] == 0:
            del pair_counts[pair]


def _merge(symbols: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` in ``symbols``, left to right, by ``new_id``."""
    merged, index = [], 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(new_id)
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


# --- the library version: Hugging Face tokenizers ----------------------------------------


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    special_tokens: Sequence[str] = (END_OF_TEXT,),
):
    """Train a byte-level BPE ``tokenizers.Tokenizer`` on ``texts`` and return it.

    GPT-2's set-up: the ``ByteLevel`` pre-tokenizer (no prefix space, GPT-2's pattern), the
    whole byte alphabet as the initial alphabet (so nothing is ever unknown), the ``ByteLevel``
    decoder, and ``special_tokens`` first in the vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(documents(texts), trainer)
    return tokenizer


def tokenizer_merges(tokenizer) -> list[tuple[str, str]]:
    """Return the merges of a trained ``tokenizers`` BPE tokenizer, in the order learned."""
    merges = json.loads(tokenizer.to_str())["model"]["merges"]
    return [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in merges]


def save_tokenizer(tokenizer, path: Path | str) -> Path:
    """Write ``tokenizer`` as its JSON file (atomically) and return the path."""
    return atomic_write_text(Path(path), tokenizer.to_str())


def load_tokenizer(path: Path | str):
    """Return the ``tokenizers.Tokenizer`` saved at ``path`` (plain JSON: nothing runs).

    Raises:
        FileNotFoundError: if there is no file at ``path``.
        ValueError: if the file is not a tokenizer's JSON.
    """
    from tokenizers import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a malformed file
        raise ValueError(
            f"{path} is not a tokenizers JSON file ({error}); delete it and train again"
        ) from None


__all__ = [
    "END_OF_TEXT",
    "GPT2_SPLIT_PATTERN",
    "ByteLevelBPE",
    "bytes_to_unicode",
    "load_tokenizer",
    "pre_tokenize",
    "save_tokenizer",
    "tokenizer_merges",
    "train_tokenizer",
]
