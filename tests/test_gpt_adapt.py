"""Chapter 9: the classifier on chapter 8's GPT, its pooling and batches, and prompting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tutorial_lib
from tutorial_lib import bpe, gpt, gpt_adapt, lm, lora, metrics, train
from tutorial_lib.data.imdb import read_imdb_sample

SAMPLE = Path(tutorial_lib.__file__).parent / "samples" / "imdb_sample.jsonl.gz"
CONFIG = gpt.GPTConfig(vocab_size=300, context_length=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def sample():
    return read_imdb_sample(SAMPLE)


@pytest.fixture(scope="module")
def tokenizer(sample):
    return bpe.train_tokenizer([lm.clean_review(t) for t in sample.train.texts[:100]], 300)


def tiny_gpt(seed: int = 0) -> gpt.GPT:
    torch.manual_seed(seed)
    return gpt.GPT(CONFIG).eval()


def test_hidden_states_are_what_the_output_layer_reads():
    model = tiny_gpt()
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.equal(model.lm_head(model.hidden_states(ids)), model(ids))


@pytest.mark.parametrize("pooling", gpt_adapt.POOLINGS)
def test_padding_does_not_change_a_reviews_logits(pooling):
    classifier = gpt_adapt.GPTClassifier(tiny_gpt(), pooling=pooling).eval()
    short, long = torch.randint(1, 300, (5,)), torch.randint(1, 300, (12,))
    batch = gpt_adapt.right_padded([short, long], pad_id=0)
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].tolist()[0] == [1] * 5 + [0] * 7
    with torch.no_grad():
        together = classifier(**batch)
        alone = classifier(short.unsqueeze(0))
        other_pad = gpt_adapt.right_padded([short, long], pad_id=7)
        assert torch.allclose(together[0], alone[0], atol=1e-6)
        assert torch.allclose(classifier(**other_pad), together, atol=1e-6)


def test_reading_index_minus_one_is_the_trap_pooling_avoids():
    model = tiny_gpt()
    short, long = torch.randint(1, 300, (5,)), torch.randint(1, 300, (12,))
    batch = gpt_adapt.right_padded([short, long], pad_id=0)
    with torch.no_grad():
        hidden = model.hidden_states(batch["input_ids"])
        last = gpt_adapt.pool(hidden, batch["attention_mask"], "last")
        mean = gpt_adapt.pool(hidden, batch["attention_mask"], "mean")
        alone = model.hidden_states(short.unsqueeze(0))[0]
    assert torch.allclose(last[0], alone[-1], atol=1e-6)
    assert not torch.allclose(hidden[0, -1], alone[-1], atol=1e-3)  # [:, -1] reads a pad
    assert torch.allclose(mean[0], alone.mean(dim=0), atol=1e-6)


def test_pool_refuses_left_padding_and_unknown_poolings():
    hidden = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="right padding"):
        gpt_adapt.pool(hidden, torch.tensor([[0, 1, 1, 1]]), "last")
    with pytest.raises(ValueError, match="right padding"):
        gpt_adapt.pool(hidden, torch.tensor([[0, 0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="pooling"):
        gpt_adapt.pool(hidden, torch.ones(1, 4, dtype=torch.long), "cls")
    with pytest.raises(ValueError, match="pooling"):
        gpt_adapt.GPTClassifier(tiny_gpt(), pooling="max")


def test_train_top_blocks_freezes_the_rest():
    classifier = gpt_adapt.GPTClassifier(tiny_gpt())
    trainable = gpt_adapt.train_top_blocks(classifier, 1)
    expected = sum(
        p.numel()
        for module in (classifier.backbone.blocks[-1], classifier.backbone.ln_f, classifier.head)
        for p in module.parameters()
    )
    assert trainable == expected
    assert not classifier.backbone.wte.weight.requires_grad
    assert not any(p.requires_grad for p in classifier.backbone.blocks[0].parameters())
    assert gpt_adapt.train_top_blocks(classifier, 2) > trainable
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        gpt_adapt.train_top_blocks(classifier, 3)


def test_reviews_are_encoded_as_pre_training_saw_them(tokenizer, sample):
    texts = sample.train.texts[:20]
    eot = gpt_adapt.end_of_text_id(tokenizer)
    ids = gpt_adapt.encode_reviews(tokenizer, texts, max_length=10_000)
    cleaned = [lm.clean_review(text) for text in texts]
    assert torch.equal(torch.tensor(sum(ids, [])), lm.encode_documents(tokenizer, cleaned))
    cut = gpt_adapt.encode_reviews(tokenizer, texts, max_length=16)
    assert all(len(row) <= 16 and row[-1] == eot for row in cut)
    assert [row[:8] for row in cut if len(row) == 16] == [
        full[:8] for full in ids if len(full) > 16
    ]


def test_the_loader_feeds_fit_and_the_classifier_learns(tokenizer, sample):
    # a learnable task: does the review contain the token " bad" or not
    bad = tokenizer.encode(" bad").ids
    texts = sample.train.texts[:120]
    ids = gpt_adapt.encode_reviews(tokenizer, texts, max_length=48)
    labels = [int(any(t in row for t in bad)) for row in ids]
    dataset = gpt_adapt.EncodedReviews(ids, labels)
    eot = gpt_adapt.end_of_text_id(tokenizer)
    loader = gpt_adapt.review_loader(
        dataset, eot, 16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    classifier = gpt_adapt.GPTClassifier(tiny_gpt(), pooling="mean")
    before = train.evaluate(classifier, gpt_adapt.review_loader(dataset, eot, 32))["loss"]
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    train.fit(classifier, loader, None, optimizer, 8, monitor="train_loss", verbose=False)
    after = train.evaluate(classifier, gpt_adapt.review_loader(dataset, eot, 32))["loss"]
    assert after < 0.8 * before


def test_lora_on_the_gpt_trains_under_five_percent():
    classifier = gpt_adapt.GPTClassifier(gpt.GPT(lm.PRETRAINING_RUNS["cpu"].model))
    total = sum(p.numel() for p in classifier.parameters())
    trainable = lora.inject_lora(
        classifier, ["qkv", "attn.proj", "fc", "mlp.proj"], 8, 16, modules_to_save=["head"]
    )
    assert len(lora.lora_layers(classifier)) == 4 * 4
    assert trainable / total < 0.05


def test_dataset_checks_its_input():
    with pytest.raises(ValueError, match="labels"):
        gpt_adapt.EncodedReviews([[1, 2]], [0, 1])
    with pytest.raises(ValueError, match="no token"):
        gpt_adapt.EncodedReviews([[]], [0])


def test_continuation_log_probs_equal_a_direct_computation():
    model = tiny_gpt()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    continuations = [[20], [21, 22], [23], [24, 25, 26]]
    scores = gpt_adapt.continuation_log_probs(model, prompts, continuations, batch_size=2)
    for i, prompt in enumerate(prompts):
        for j, continuation in enumerate(continuations):
            sequence = torch.tensor([prompt + continuation])
            with torch.no_grad():
                log_probs = F.log_softmax(model(sequence)[0], dim=-1)
            expected = sum(
                log_probs[len(prompt) - 1 + k, token].item() for k, token in enumerate(continuation)
            )
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-5)


def test_continuations_must_fit_the_context():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="context"):
        gpt_adapt.continuation_log_probs(model, [[1] * 64], [[2, 3]])
    with pytest.raises(ValueError, match="at least one"):
        gpt_adapt.continuation_log_probs(model, [[]], [[2]])


def test_class_scores_sum_the_words_of_each_class():
    words = torch.log(torch.tensor([[0.2, 0.1, 0.05, 0.05]]))
    scores = gpt_adapt.class_log_probs(words, [0, 1, 0, 1])
    assert scores.exp().tolist()[0] == pytest.approx([0.25 / 0.4, 0.15 / 0.4])
    with pytest.raises(ValueError, match="class"):
        gpt_adapt.class_log_probs(words, [0, 0, 0, 2])


def test_calibration_makes_a_content_free_input_neutral():
    content_free = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]]))
    mean_input = content_free.exp().mean(0, keepdim=True).log()  # scores the prior itself
    calibrated = gpt_adapt.calibrate(mean_input, content_free)
    assert calibrated.exp()[0].tolist() == pytest.approx([0.5, 0.5])
    # a review the model scores 0.65 / 0.35 is positive before and negative after: the prior
    # for the first class is 0.7
    review = torch.log(torch.tensor([[0.65, 0.35]]))
    after = gpt_adapt.calibrate(review, content_free).exp()[0]
    assert after[1] > after[0]
    expected = torch.tensor([0.65 / 0.7, 0.35 / 0.3])
    assert after.tolist() == pytest.approx((expected / expected.sum()).tolist())


def test_prompts_hold_demonstrations_then_the_review(tokenizer):
    template = "\nOverall, the movie was"
    plain = gpt_adapt.encode_prompt(tokenizer, "A fine film.", template, 50)
    assert tokenizer.decode(plain) == "A fine film." + template
    shots = gpt_adapt.encode_prompt(
        tokenizer, "A fine film.", template, 50, [("Awful.", " terrible"), ("Lovely.", " great")]
    )
    assert tokenizer.decode(shots) == (
        f"Awful.{template} terrible\n\nLovely.{template} great\n\nA fine film.{template}"
    )
    template_length = len(tokenizer.encode(template).ids)
    cut = gpt_adapt.encode_prompt(tokenizer, "word " * 100, template, 10)
    assert len(cut) == 10 + template_length
    demo = gpt_adapt.encode_prompt(
        tokenizer, "word " * 100, template, 10, [("film " * 100, " great")], 6
    )
    word_and_separator = len(tokenizer.encode(" great").ids) + len(tokenizer.encode("\n\n").ids)
    assert len(demo) == 6 + template_length + word_and_separator + 10 + template_length


def test_standard_error_is_the_binomial_one():
    assert metrics.standard_error(0.9, 2_500) == pytest.approx(math.sqrt(0.09 / 2_500))
    with pytest.raises(ValueError):
        metrics.standard_error(0.5, 0)
    with pytest.raises(ValueError):
        metrics.standard_error(1.5, 10)


def test_pretraining_runs_are_consistent():
    for run in lm.PRETRAINING_RUNS.values():
        assert run.model.vocab_size == run.vocab_size
    with pytest.raises(ValueError, match="vocab_size"):
        dataclasses.replace(lm.PRETRAINING_RUNS["smoke"], vocab_size=512)


def test_pretrain_on_imdb_repeats_chapter_8s_pipeline(sample):
    run = lm.PRETRAINING_RUNS["smoke"]
    model, tokenizer, info = lm.pretrain_on_imdb(
        sample, run, generator=torch.Generator().manual_seed(0), verbose=False
    )
    assert tokenizer.get_vocab_size() == run.vocab_size
    assert model.config == run.model
    assert info["data"] == sample.source.kind
    untrained = math.log(run.vocab_size)
    assert info["val_nats_per_token"] < untrained


def test_pretraining_documents_reads_a_seeded_subset(sample):
    every = lm.PRETRAINING_RUNS["cpu"]
    assert every.max_documents is None
    documents = lm.pretraining_documents(sample, every)
    assert documents == [lm.clean_review(text) for text in sample.train.texts]
    capped = dataclasses.replace(every, max_documents=20)
    first, again = (lm.pretraining_documents(sample, capped) for _ in range(2))
    assert len(first) == 20 and first == again  # seeded: chapters 8, 9 and 10 read the same
    assert set(first) <= set(documents)
    with pytest.raises(ValueError, match="max_documents"):
        dataclasses.replace(every, max_documents=5)
