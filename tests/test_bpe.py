"""The hand-written byte-level BPE against Hugging Face tokenizers, on real review text."""

from __future__ import annotations

from pathlib import Path

import pytest

import tutorial_lib
from tutorial_lib.data.imdb import read_imdb_sample
from tutorial_lib.llm import bpe, pretraining

SAMPLE = Path(tutorial_lib.__file__).parent / "samples" / "imdb_sample.jsonl.gz"


@pytest.fixture(scope="module")
def reviews() -> list[str]:
    sample = read_imdb_sample(SAMPLE)  # the bundled sample, whatever TUTORIAL_DATA_DIR says
    return [pretraining.clean_review(text) for text in sample.train.texts[:120]]


NON_ASCII = [
    "Amélie — a café in Montmartre, naïve and très charmant… 10/10!",
    "千与千寻 is the best film I've seen 🎬🍿",
    "tabs\tand\u00a0no-break spaces,\n\nnew lines   and  runs of   spaces ",
    "",
]


def test_hand_written_bpe_learns_the_merges_tokenizers_learns(reviews):
    vocab_size = 1 + 256 + 150
    hand = bpe.ByteLevelBPE.train(reviews, vocab_size)
    library = bpe.train_tokenizer(reviews, vocab_size)
    assert len(hand) == library.get_vocab_size() == vocab_size
    assert hand.merge_strings() == bpe.tokenizer_merges(library)


def test_both_encode_alike_and_decode_back_every_text(reviews):
    hand = bpe.ByteLevelBPE.train(reviews[:60], 1 + 256 + 100)
    library = bpe.train_tokenizer(reviews[:60], 1 + 256 + 100)
    for text in reviews + NON_ASCII:
        ids = hand.encode(text)
        assert ids == library.encode(text).ids
        assert hand.decode(ids) == text
        assert library.decode(library.encode(text).ids) == text


def test_pre_tokens_put_back_together_are_the_text():
    for text in NON_ASCII:
        assert "".join(bpe.pre_tokenize(text)) == text
    assert bpe.pre_tokenize("I don't like it!!") == ["I", " don", "'t", " like", " it", "!!"]


def test_bytes_to_unicode_is_a_bijection_onto_printable_characters():
    mapping = bpe.bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(character.isprintable() for character in mapping.values())
    assert mapping[ord(" ")] == "Ġ"


def test_a_merge_joins_the_most_frequent_pair_first():
    hand = bpe.ByteLevelBPE.train(["abab abab ab"], 1 + 256 + 1)
    assert hand.merge_strings() == [("a", "b")]
    assert hand.decode(hand.encode("abab")) == "abab"
    assert len(hand.encode("abab")) == 2


def test_too_small_a_vocabulary_is_refused():
    with pytest.raises(ValueError, match="256 bytes"):
        bpe.ByteLevelBPE.train(["text"], 100)


def test_the_tokenizer_round_trips_through_its_json_file(tmp_path, reviews):
    library = bpe.train_tokenizer(reviews[:30], 300)
    path = bpe.save_tokenizer(library, tmp_path / "tokenizer.json")
    loaded = bpe.load_tokenizer(path)
    assert loaded.encode(reviews[0]).ids == library.encode(reviews[0]).ids
    (tmp_path / "broken.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="broken.json"):
        bpe.load_tokenizer(tmp_path / "broken.json")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        bpe.load_tokenizer(tmp_path / "missing.json")


def test_a_quoted_end_of_text_inside_a_text_stays_text():
    """tokenizers matches special tokens in raw input; a review quoting `<|endoftext|>` must
    not get a document boundary in its middle."""
    texts = ["a review", "it said <|endoftext|> twice: <|endoftext|>", "<|endoftext|>"]
    tokenizer = bpe.train_tokenizer(["some text to learn from, a review or two"] * 3, 300)
    end_of_text = tokenizer.token_to_id(bpe.END_OF_TEXT)
    encoded = bpe.encode_texts(tokenizer, texts)
    assert encoded[0] == tokenizer.encode("a review").ids
    for ids, text in zip(encoded, texts, strict=True):
        assert end_of_text not in ids
        assert tokenizer.decode(ids) == text
    stream = pretraining.encode_documents(tokenizer, texts, check_round_trip=True)
    assert (stream == end_of_text).sum() == len(texts), "one boundary per document, no more"


@pytest.mark.parametrize(
    "call",
    [
        lambda text: bpe.train_tokenizer(text, 300),
        lambda text: bpe.ByteLevelBPE.train(text, 300),
        lambda text: pretraining.split_documents(text, 0.1),
        lambda text: pretraining.encode_documents(bpe.train_tokenizer(["ab cd"], 260), text),
        lambda text: bpe.encode_texts(bpe.train_tokenizer(["ab cd"], 260), text),
    ],
    ids=["train_tokenizer", "ByteLevelBPE.train", "split_documents", "encode_documents",
         "encode_texts"],
)  # fmt: skip
def test_a_corpus_passed_as_one_string_is_refused(call):
    with pytest.raises(TypeError, match="wrap a single text as"):
        call("one long review, not a list of them " * 5)
