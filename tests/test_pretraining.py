"""Chapter 8's corpus, yardsticks, pre-training loop and hand-over to chapter 9."""

from __future__ import annotations

import dataclasses
import io
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import tutorial_lib
from tutorial_lib import data, train
from tutorial_lib.data.imdb import read_imdb, read_imdb_sample
from tutorial_lib.llm import bpe, gpt, pretraining
from tutorial_lib.training import checkpoints

SAMPLE = Path(tutorial_lib.__file__).parent / "samples" / "imdb_sample.jsonl.gz"


@pytest.fixture(scope="module")
def sample():
    # the bundled sample, whatever TUTORIAL_DATA_DIR says: in the full IMDB a few test reviews
    # repeat a training review's text word for word (chapter 8 counts them)
    return read_imdb_sample(SAMPLE)


def test_pretraining_text_is_disjoint_from_the_test_split(sample):
    documents = [pretraining.clean_review(text) for text in sample.train.texts + sample.unlabelled]
    train_texts, val_texts = pretraining.split_documents(documents, 0.05, seed=0)
    test_texts = {pretraining.clean_review(text) for text in sample.test.texts}
    assert not test_texts & set(train_texts)
    assert not test_texts & set(val_texts)


def test_validation_is_held_out_by_whole_review():
    texts = [f"review {i}" for i in range(200)]
    train_texts, val_texts = pretraining.split_documents(texts, 0.05, seed=0)
    assert len(val_texts) == 10 and len(train_texts) == 190
    assert sorted(train_texts + val_texts) == sorted(texts)
    assert pretraining.split_documents(texts, 0.05, seed=0) == (train_texts, val_texts)
    with pytest.raises(ValueError, match="empty"):
        pretraining.split_documents(texts[:5], 0.05)


def test_clean_review_turns_html_breaks_into_newlines():
    assert pretraining.clean_review("Great.<br /><br />Really.") == "Great.\n\nReally."


def test_documents_are_followed_by_end_of_text():
    tokenizer = bpe.train_tokenizer(["a cat sat", "a dog ran"], 270)
    eot = tokenizer.token_to_id(bpe.END_OF_TEXT)
    stream = pretraining.encode_documents(tokenizer, ["a cat", "a dog"])
    assert stream.dtype == torch.int64
    ends = (stream == eot).nonzero().flatten().tolist()
    assert ends == [len(stream) // 2 - 1, len(stream) - 1]
    assert tokenizer.decode(stream[: ends[0]].tolist()) == "a cat"
    checked = pretraining.encode_documents(tokenizer, ["a cat", "a dog"], check_round_trip=True)
    assert torch.equal(checked, stream)


def test_a_tokenizer_that_loses_text_fails_the_round_trip_check():
    from tokenizers import Tokenizer, models, pre_tokenizers

    lossy = Tokenizer(models.WordLevel({"a": 0, bpe.END_OF_TEXT: 1, "[UNK]": 2}, "[UNK]"))
    lossy.pre_tokenizer = pre_tokenizers.Whitespace()
    with pytest.raises(ValueError, match="document 1 does not decode back"):
        pretraining.encode_documents(lossy, ["a", "a cat"], check_round_trip=True)


def test_chunks_pair_each_position_with_the_next_token():
    tokens = torch.arange(23)
    chunks = pretraining.TokenChunks(tokens, 5)
    assert len(chunks) == 4  # 22 // 5: the last window must have its target too
    x, y = chunks[3]
    assert x.tolist() == [15, 16, 17, 18, 19] and y.tolist() == [16, 17, 18, 19, 20]
    with pytest.raises(ValueError, match="cannot fill"):
        pretraining.TokenChunks(torch.arange(5), 5)


def test_count_baselines_on_a_known_stream():
    train_tokens = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    val_tokens = torch.tensor([0, 1, 0, 1])
    # unigram, add-1 over 3 symbols: P(0) = P(1) = 5/11
    assert pretraining.unigram_nats(train_tokens, val_tokens, 3) == pytest.approx(-math.log(5 / 11))
    # bigram, add-0.5: P(1|0) = (4 + 0.5) / (4 + 1.5), P(0|1) = (3 + 0.5) / (3 + 1.5)
    expected = -(2 * math.log(4.5 / 5.5) + math.log(3.5 / 4.5)) / 3
    assert pretraining.bigram_nats(train_tokens, val_tokens, 3, k=0.5) == pytest.approx(expected)


def test_bits_per_byte_converts_nats_per_token():
    assert pretraining.bits_per_byte(math.log(2), tokens=100, text_bytes=400) == pytest.approx(0.25)
    assert pretraining.text_bytes(["ab", "é"]) == 2 + 1 + 2 + 1


def test_flops_per_token_are_six_per_weight_plus_attention():
    """6 FLOPs per matrix weight (Kaplan et al. 2020) plus attention's 12·n_layer·n_embd·T
    (PaLM's convention): at a context of 256 attention is a third of this model's count, so a
    counter that misses the fused CPU attention kernel (it registers no FLOPs for it) fails."""
    model = gpt.GPT(gpt.GPTConfig(vocab_size=512, context_length=256, n_layer=2, n_head=2,
                                  n_embd=64))  # fmt: skip
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.ndim == 2 and name != "wpe.weight")  # fmt: skip
    attention = 12 * 2 * 64 * 256
    assert pretraining.attention_flops_per_token(model.config) == attention
    assert pretraining.training_flops_per_token(model) == 6 * matrices + attention
    assert pretraining.compute_optimal_parameters(120 * 1e6**2) == pytest.approx(1e6)


def test_run_permutation_gives_every_window_once_before_any_repeats():
    """fit restarts its loader every eval_every steps; the run's order must go on, not restart."""
    sampler = pretraining.RunPermutation(10, torch.Generator().manual_seed(0))
    first, second = iter(sampler), iter(sampler)
    drawn = [next(first) for _ in range(4)] + [next(second) for _ in range(6)]
    assert sorted(drawn) == list(range(10))
    assert len(list(iter(sampler))) == 10
    with pytest.raises(ValueError, match="at least 1"):
        pretraining.RunPermutation(0, torch.Generator())
    # an epoch longer than the split crosses into the next permutation
    longer = list(pretraining.RunPermutation(4, torch.Generator().manual_seed(0), per_iteration=10))
    assert sorted(longer[:4]) == sorted(longer[4:8]) == [0, 1, 2, 3] and len(longer) == 10


def test_pretrain_takes_every_planned_step_on_a_split_shorter_than_an_epoch(sample):
    """20 steps planned in epochs of 10 on a split of 6 batches: 20 taken, and the cosine
    schedule decays to its end (it never did when each epoch stopped with the split)."""
    texts = [pretraining.clean_review(t) for t in sample.train.texts[:20]]
    tokenizer = bpe.train_tokenizer(texts, 300)
    tokens = pretraining.encode_documents(tokenizer, texts)[: 6 * 2 * 16 + 1]
    model = gpt.GPT(gpt.GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=2,
                                  n_embd=16))  # fmt: skip
    config = pretraining.PretrainConfig(batch_size=2, learning_rate=1e-3, steps=20, eval_every=10,
                               warmup_steps=2)  # fmt: skip
    assert len(pretraining.TokenChunks(tokens, 16)) // 2 < config.eval_every
    history = pretraining.pretrain(model, tokens, tokens, config, generator=torch.Generator(),
                          verbose=False)  # fmt: skip
    assert len(history) == 2
    assert history.records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # the schedule's end


def test_pretraining_below_one_pass_sees_no_window_twice(sample):
    texts = [pretraining.clean_review(t) for t in sample.train.texts[:60]]
    tokenizer = bpe.train_tokenizer(texts, 300)
    # 30 windows and 24 draws in 3 "epochs" of 8: redrawn each epoch (DataLoader's shuffling),
    # 24 distinct windows would come up about 3 times in 100,000
    tokens = pretraining.encode_documents(tokenizer, texts)[: 30 * 16 + 1]
    windows = pretraining.TokenChunks(tokens, 16)
    config = pretraining.PretrainConfig(batch_size=4, learning_rate=1e-3, steps=6, eval_every=2,
                               warmup_steps=1)  # fmt: skip
    assert config.steps * config.batch_size < len(windows) == 30
    seen = []
    model = gpt.GPT(gpt.GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=2,
                                  n_embd=16))  # fmt: skip
    original = pretraining.TokenChunks.__getitem__

    def recording(self, index):
        if self.tokens is tokens:
            seen.append(index)
        return original(self, index)

    pretraining.TokenChunks.__getitem__ = recording
    try:
        pretraining.pretrain(model, tokens, tokens[:200], config,
                             generator=torch.Generator().manual_seed(0), verbose=False)  # fmt: skip
    finally:
        pretraining.TokenChunks.__getitem__ = original
    assert len(seen) == config.steps * config.batch_size
    assert len(set(seen)) == len(seen)


def test_the_yardstick_measures_training_throughput():
    yardstick = pretraining.measure_yardstick(seconds=0.5, warmup_steps=1)
    assert yardstick["tokens_per_second"] > 0 and yardstick["steps"] >= 3
    assert "batch 8 x 256" in yardstick["shape"]
    with pytest.raises(ValueError, match="seconds must be positive"):
        pretraining.measure_yardstick(seconds=0)


def test_pretrain_lowers_the_validation_loss_through_fit(sample):
    texts = [pretraining.clean_review(text) for text in sample.train.texts[:80]]
    train_texts, val_texts = pretraining.split_documents(texts, 0.1, seed=0)
    tokenizer = bpe.train_tokenizer(train_texts, 320)
    train_tokens = pretraining.encode_documents(tokenizer, train_texts)
    val_tokens = pretraining.encode_documents(tokenizer, val_texts)
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=320, context_length=32, n_layer=1, n_head=2,
                                  n_embd=32))  # fmt: skip
    config = pretraining.PretrainConfig(batch_size=8, learning_rate=3e-3, steps=60, eval_every=20,
                               warmup_steps=5)  # fmt: skip
    history = pretraining.pretrain(
        model, train_tokens, val_tokens, config, generator=torch.Generator().manual_seed(0),
        verbose=False,
    )  # fmt: skip
    assert len(history) == 3
    assert history["val_loss"][-1] < history["val_loss"][0] < math.log(320)
    assert history["lr"][-1] < 1e-4, "the cosine schedule decays to zero at the last step"
    chunks = DataLoader(pretraining.TokenChunks(val_tokens, 32), batch_size=8)
    final = train.evaluate(model, chunks, gpt.lm_loss)
    assert final["loss"] == pytest.approx(history["val_loss"][-1], rel=1e-5)


def test_evaluate_streams_a_language_model_like_one_big_batch():
    torch.manual_seed(0)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=64, context_length=8, n_layer=1, n_head=1,
                                  n_embd=8)).eval()  # fmt: skip
    tokens = torch.randint(0, 64, (8 * 13 + 1,), generator=torch.Generator().manual_seed(1))
    chunks = pretraining.TokenChunks(tokens, 8)
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
    pretraining.save_pretrained(tmp_path / "gpt", model, tokenizer, {"val_loss": 1.5})
    loaded, loaded_tokenizer, info = pretraining.load_pretrained(tmp_path / "gpt")
    ids = torch.randint(0, 300, (2, 16))
    torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
    assert loaded.lm_head.weight is loaded.wte.weight, "the tie survives the round trip"
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab() and info == {"val_loss": 1.5}
    checkpoints.save_checkpoint(tmp_path / "other" / "model.pt", model={}, config={"n_embd": 3})
    with pytest.raises(checkpoints.CheckpointError, match="save_pretrained"):
        pretraining.load_pretrained(tmp_path / "other")
    with pytest.raises(FileNotFoundError):
        pretraining.load_pretrained(tmp_path / "nowhere")


def test_a_model_beside_another_runs_tokenizer_is_refused(tmp_path, sample):
    """A save interrupted after the tokenizer (or files copied from two runs) leaves a pair
    that does not belong together: loading it must fail, not tokenize with the wrong merges."""
    small = gpt.GPT(gpt.GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=1,
                                  n_embd=8))  # fmt: skip
    first = bpe.train_tokenizer(sample.train.texts[:20], 300)
    second = bpe.train_tokenizer(sample.train.texts[20:40], 300)
    pretraining.save_pretrained(tmp_path / "gpt", small, first)
    bpe.save_tokenizer(second, tmp_path / "gpt" / "tokenizer.json")  # the half-done next save
    with pytest.raises(checkpoints.CheckpointError, match="not the tokenizer saved with"):
        pretraining.load_pretrained(tmp_path / "gpt")


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused(tmp_path, sample):
    tokenizer = bpe.train_tokenizer(sample.train.texts[:20], 300)
    narrow = gpt.GPT(gpt.GPTConfig(vocab_size=200, context_length=16, n_layer=1, n_head=1,
                                   n_embd=8))  # fmt: skip
    with pytest.raises(ValueError, match="300 tokens and the model only 200"):
        pretraining.save_pretrained(tmp_path / "gpt", narrow, tokenizer)
    # a pair written by hand (or an older version) is refused on load too
    bpe.save_tokenizer(tokenizer, tmp_path / "gpt" / "tokenizer.json")
    checkpoints.save_checkpoint(
        tmp_path / "gpt" / "model.pt", model=narrow.state_dict(), config=narrow.config.to_dict(),
        info={}, tokenizer_sha256=pretraining._file_sha256(tmp_path / "gpt" / "tokenizer.json"),
    )  # fmt: skip
    with pytest.raises(checkpoints.CheckpointError, match="300 tokens and the model 200"):
        pretraining.load_pretrained(tmp_path / "gpt")


@pytest.mark.parametrize(
    ("info", "key"),
    [({"bpb": np.float64(1.9)}, "bpb"), ({"where": Path("/x")}, "where"),
     ({"run": {"curve": [1.0, np.float32(2.0)]}}, "curve")],
)  # fmt: skip
def test_save_pretrained_refuses_info_that_would_not_load_naming_the_key(
    tmp_path, sample, info, key
):
    tokenizer = bpe.train_tokenizer(sample.train.texts[:20], 300)
    model = gpt.GPT(gpt.GPTConfig(vocab_size=300, context_length=16, n_layer=1, n_head=1,
                                  n_embd=8))  # fmt: skip
    with pytest.raises(TypeError, match=key):
        pretraining.save_pretrained(tmp_path / "gpt", model, tokenizer, info)
    assert not (tmp_path / "gpt").exists(), "nothing is written"


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


def test_the_pretraining_recipe_refuses_a_clipping_norm_of_zero():
    with pytest.raises(ValueError, match="a norm of 0 would zero every gradient"):
        pretraining.PretrainConfig(batch_size=2, learning_rate=1e-3, steps=4, eval_every=2,
                          warmup_steps=1, grad_clip_norm=0.0)  # fmt: skip


def test_count_baselines_refuse_ids_beyond_the_vocabulary():
    tokens = torch.tensor([0, 1, 2, 1, 0, 2])
    assert (
        pretraining.unigram_nats(tokens, tokens, 3) > 0
        and pretraining.bigram_nats(tokens, tokens, 3, 0.1) > 0
    )
    beyond = torch.tensor([0, 1, 5, 1])
    with pytest.raises(ValueError, match="train_tokens holds id 5"):
        pretraining.unigram_nats(beyond, tokens, 3)
    with pytest.raises(ValueError, match="val_tokens holds id 5"):
        pretraining.bigram_nats(tokens, beyond, 3, 0.1)
    with pytest.raises(ValueError, match="k must be positive"):
        pretraining.bigram_nats(tokens, tokens, 3, 0.0)


def test_load_or_pretrain_loads_and_pretrains_again_only_when_it_must(
    sample, tmp_path, monkeypatch, capsys
):
    run = pretraining.PRETRAINING_RUNS["smoke"]
    folder = tmp_path / "08_gpt_from_zero.smoke"
    made = []  # each call of the real pre-training
    real = pretraining.pretrain_on_imdb
    monkeypatch.setattr(
        pretraining, "pretrain_on_imdb", lambda *a, **k: made.append(1) or real(*a, **k)
    )

    def load():
        return pretraining.load_or_pretrain(
            sample, run, folder, generator=torch.Generator().manual_seed(0)
        )

    first = load()
    assert first.trained_here and first.seconds > 0 and len(made) == 1
    assert "is not at" in capsys.readouterr().out
    again = load()
    assert not again.trained_here and again.seconds == 0.0 and len(made) == 1
    assert capsys.readouterr().out == ""
    assert torch.equal(again.model.lm_head.weight, first.model.lm_head.weight)

    # saved from other data: pre-trained again, and said why
    pretraining.save_pretrained(folder, first.model, first.tokenizer, {**first.info, "data": "x"})
    assert load().trained_here and len(made) == 2
    assert "pre-trained on the x" in capsys.readouterr().out

    # another shape (an older recipe of the profile)
    other = dataclasses.replace(run.model, n_layer=run.model.n_layer + 1)
    pretraining.save_pretrained(folder, gpt.GPT(other), first.tokenizer, first.info)
    assert load().trained_here and len(made) == 3
    assert "another shape" in capsys.readouterr().out

    # unreadable files are an error to act on, not replaced silently
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(checkpoints.CheckpointError, match="Delete the folder"):
        load()
