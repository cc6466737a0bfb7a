"""Chapter 8's corpus, yardsticks, pre-training loop and hand-over to chapter 9."""

from __future__ import annotations

import io
import math
import tarfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

import tutorial_lib
from tutorial_lib import bpe, data, gpt, lm, train
from tutorial_lib.data.imdb import read_imdb, read_imdb_sample
from tutorial_lib.training import checkpoints

SAMPLE = Path(tutorial_lib.__file__).parent / "samples" / "imdb_sample.jsonl.gz"


@pytest.fixture(scope="module")
def sample():
    # the bundled sample, whatever TUTORIAL_DATA_DIR says: in the full IMDB a few test reviews
    # repeat a training review's text word for word (chapter 8 counts them)
    return read_imdb_sample(SAMPLE)


def test_pretraining_text_is_disjoint_from_the_test_split(sample):
    pretraining = [lm.clean_review(text) for text in sample.train.texts + sample.unlabelled]
    train_texts, val_texts = lm.split_documents(pretraining, 0.05, seed=0)
    test_texts = {lm.clean_review(text) for text in sample.test.texts}
    assert not test_texts & set(train_texts)
    assert not test_texts & set(val_texts)


def test_validation_is_held_out_by_whole_review():
    texts = [f"review {i}" for i in range(200)]
    train_texts, val_texts = lm.split_documents(texts, 0.05, seed=0)
    assert len(val_texts) == 10 and len(train_texts) == 190
    assert sorted(train_texts + val_texts) == sorted(texts)
    assert lm.split_documents(texts, 0.05, seed=0) == (train_texts, val_texts)
    with pytest.raises(ValueError, match="empty"):
        lm.split_documents(texts[:5], 0.05)


def test_clean_review_turns_html_breaks_into_newlines():
    assert lm.clean_review("Great.<br /><br />Really.") == "Great.\n\nReally."


def test_documents_are_followed_by_end_of_text():
    tokenizer = bpe.train_tokenizer(["a cat sat", "a dog ran"], 270)
    eot = tokenizer.token_to_id(bpe.END_OF_TEXT)
    stream = lm.encode_documents(tokenizer, ["a cat", "a dog"])
    assert stream.dtype == torch.int64
    ends = (stream == eot).nonzero().flatten().tolist()
    assert ends == [len(stream) // 2 - 1, len(stream) - 1]
    assert tokenizer.decode(stream[: ends[0]].tolist()) == "a cat"
    checked = lm.encode_documents(tokenizer, ["a cat", "a dog"], check_round_trip=True)
    assert torch.equal(checked, stream)


def test_a_tokenizer_that_loses_text_fails_the_round_trip_check():
    from tokenizers import Tokenizer, models, pre_tokenizers

    lossy = Tokenizer(models.WordLevel({"a": 0, bpe.END_OF_TEXT: 1, "[UNK]": 2}, "[UNK]"))
    lossy.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="document 1 does not decode back"):
        lm.encode_documents(lossy, ["a", "a cat"], check_round_trip=True)


def test_chunks_pair_each_position_with_the_next_token():
    tokens = torch.arange(23)
    chunks = lm.TokenChunks(tokens, 5)
    assert len(chunks) == 4  # 22 // 5: the last window must have its target too
    x, y = chunks[3]
    assert x.tolist() == [15, 16, 17, 18, 19] and y.tolist() == [16, 17, 18, 19, 20]
    with pytest.raises(ValueError, match="cannot fill"):
        lm.TokenChunks(torch.arange(5), 5)


def test_count_baselines_on_a_known_stream():
    train_tokens = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    val_tokens = torch.tensor([0, 1, 0, 1])
    # unigram, add-1 over 3 symbols: P(0) = P(1) = 5/11
    assert lm.unigram_nats(train_tokens, val_tokens, 3) == pytest.approx(-math.log(5 / 11))
    # bigram, add-0.5: P(1|0) = (4 + 0.5) / (4 + 1.5), P(0|1) = (3 + 0.5) / (3 + 1.5)
    expected = -(2 * math.log(4.5 / 5.5) + math.log(3.5 / 4.5)) / 3
    assert lm.bigram_nats(train_tokens, val_tokens, 3, k=0.5) == pytest.approx(expected)


def test_bits_per_byte_converts_nats_per_token():
    assert lm.bits_per_byte(math.log(2), tokens=100, text_bytes=400) == pytest.approx(0.25)
    assert lm.text_bytes(["ab", "é"]) == 2 + 1 + 2 + 1


def test_flops_per_token_match_the_parameter_rule_of_thumb():
    """Without attention's own products the count is 6 FLOPs per weight (Kaplan et al. 2020):
    FlopCounterMode sees every matrix product, so it must land a little above 6·N."""
    model = gpt.GPT(gpt.GPTConfig(vocab_size=512, context_length=32, n_layer=2, n_head=2,
                                  n_embd=64))  # fmt: skip
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.ndim == 2 and name != "wpe.weight")  # fmt: skip
    flops = lm.training_flops_per_token(model)
    attention = 3 * 2 * 2 * 32 * 64 * 2  # QKᵀ and AV, forward and backward, per token, 2 layers
    assert flops == pytest.approx(6 * matrices + attention / 2, rel=0.05)
    assert lm.compute_optimal_parameters(120 * 1e6**2) == pytest.approx(1e6)


def test_pretrain_lowers_the_validation_loss_through_fit(sample):
    texts = [lm.clean_review(text) for text in sample.train.texts[:80]]
    train_texts, val_texts = lm.split_documents(texts, 0.1, seed=0)
    tokenizer = bpe.train_tokenizer(train_texts, 320)
    train_tokens = lm.encode_documents(tokenizer, train_texts)
    val_tokens = lm.encode_documents(tokenizer, val_texts)
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=320, context_length=32, n_layer=1, n_head=2,
                                  n_embd=32))  # fmt: skip
    config = lm.PretrainConfig(batch_size=8, learning_rate=3e-3, steps=60, eval_every=20,
                               warmup_steps=5)  # fmt: skip
    history = lm.pretrain(
        model, train_tokens, val_tokens, config, generator=torch.Generator().manual_seed(0),
        verbose=False,
    )  # fmt: skip
    assert len(history) == 3
    assert history["val_loss"][-1] < history["val_loss"][0] < math.log(320)
    assert history["lr"][-1] < 1e-4, "the cosine schedule decays to zero at the last step"
    chunks = DataLoader(lm.TokenChunks(val_tokens, 32), batch_size=8)
    final = train.evaluate(model, chunks, gpt.lm_loss)
    assert final["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)


def test_evaluate_streams_a_language_model_like_one_big_batch():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=64, context_length=8, n_layer=1, n_head=1,
                                  n_embd=8)).eval()  # fmt: skip
    tokens = torch.randint(0, 64, (8 * 13 + 1,), generator=torch.Generator().manual_seed(1))
    chunks = lm.TokenChunks(tokens, 8)
    result = train.evaluate(model, DataLoader(chunks, batch_size=5), gpt.lm_loss)
    x, y = next(iter(DataLoader(chunks, batch_size=len(chunks))))
    with torch.no_grad():
        logits = model(x)
    assert result["loss"] == pytest.approx(float(gpt.lm_loss(logits, y)), rel=1e-6)
    assert result["accuracy"] == pytest.approx(float((logits.argmax(-1) == y).double().mean()))


def test_the_pretrained_model_and_tokenizer_round_trip(tmp_path, sample):
    tokenizer = bpe.train_tokenizer(sample.train.texts[:20], 300)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=1,
                                  n_embd=8))  # fmt: skip
    lm.save_pretrained(tmp_path / "gpt", model, tokenizer, {"val_loss": 1.5})
    loaded, loaded_tokenizer, info = lm.load_pretrained(tmp_path / "gpt")
    ids = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert loaded.lm_head.weight is loaded.wte.weight, "the tie survives the round trip"
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab() and info == {"val_loss": 1.5}
    checkpoints.save_checkpoint(tmp_path / "other" / "model.pt", model={}, config={"n_embd": 3})
    with pytest.raises(checkpoints.CheckpointError, match="save_pretrained"):
        lm.load_pretrained(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        lm.load_pretrained(tmp_path / "nowhere")


def _archive_with_unlabelled(path):
    with tarfile.open(path, "w:gz") as tar:
        files = {
            "aclImdb/train/pos/1_9.txt": "good",
            "aclImdb/train/neg/2_1.txt": "bad",
            "aclImdb/test/pos/3_8.txt": "fine",
            "aclImdb/test/neg/4_2.txt": "awful",
            "aclImdb/train/unsup/11_0.txt": "second unlabelled",
            "aclImdb/train/unsup/10_0.txt": "first unlabelled",
        }
        for name, text in files.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_imdb_reads_the_unlabelled_reviews_when_the_copy_has_them(tmp_path):
    _archive_with_unlabelled(tmp_path / "aclImdb_v1.tar.gz")
    loaded = read_imdb(tmp_path, data.SOURCE_LOCAL)
    assert loaded.unlabelled == ["first unlabelled", "second unlabelled"]
    assert loaded.source.split_sizes == {"train": 2, "test": 2, "unlabelled": 2}
    assert loaded.train.texts == ["bad", "good"]
    with tarfile.open(tmp_path / "aclImdb_v1.tar.gz") as tar:
        tar.extractall(tmp_path / "folder", filter="data")
    from_folder = read_imdb(tmp_path / "folder", data.SOURCE_LOCAL)
    assert from_folder.unlabelled == loaded.unlabelled


def test_a_copy_without_unlabelled_reviews_has_none(sample):
    assert sample.unlabelled == []
    assert "unlabelled" not in sample.source.split_sizes
