"""Chapter 9: the classifier on chapter 8's GPT, its pooling and batches, and prompting."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import tutorial_lib
from tutorial_lib import lora, metrics, train
from tutorial_lib.data.imdb import read_imdb_sample
from tutorial_lib.llm import adapt, bpe, gpt, pretraining

SAMPLE = Path(tutorial_lib.__file__).parent / "samples" / "imdb_sample.jsonl.gz"
CONFIG = gpt.GPTConfig(vocab_size=300, context_length=64, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture(scope="module")
def sample():
    return read_imdb_sample(SAMPLE)


@pytest.fixture(scope="module")
def tokenizer(sample):
    return bpe.train_tokenizer([pretraining.clean_review(t) for t in sample.train.texts[:100]], 300)


def tiny_gpt(seed: int = 0) -> gpt.GPT:
    torch.manual_seed(seed)
    return gpt.GPT(CONFIG).eval()


def test_hidden_states_are_what_the_output_layer_reads():
    model = tiny_gpt()
    ids = torch.randint(0, 300, (2, 10))
    with torch.no_grad():
        assert torch.equal(model.lm_head(model.hidden_states(ids)), model(ids))


@pytest.mark.parametrize("pooling", adapt.POOLINGS)
def test_padding_does_not_change_a_reviews_logits(pooling):
    classifier = adapt.GPTClassifier(tiny_gpt(), pooling=pooling).eval()
    short, long = torch.randint(1, 300, (5,)), torch.randint(1, 300, (12,))
    batch = adapt.right_padded([short, long], pad_id=0)
    assert batch["input_ids"].shape == (2, 12)
    assert batch["attention_mask"].tolist()[0] == [1] * 5 + [0] * 7
    with torch.no_grad():
        together = classifier(**batch)
        alone = classifier(short.unsqueeze(0))
        other_pad = adapt.right_padded([short, long], pad_id=7)
        assert torch.allclose(together[0], alone[0], atol=1e-6)
        assert torch.allclose(classifier(**other_pad), together, atol=1e-6)


def test_reading_index_minus_one_is_the_trap_pooling_avoids():
    model = tiny_gpt()
    short, long = torch.randint(1, 300, (5,)), torch.randint(1, 300, (12,))
    batch = adapt.right_padded([short, long], pad_id=0)
    with torch.no_grad():
        hidden = model.hidden_states(batch["input_ids"])
        last = adapt.pool(hidden, batch["attention_mask"], "last")
        mean = adapt.pool(hidden, batch["attention_mask"], "mean")
        alone = model.hidden_states(short.unsqueeze(0))[0]
    assert torch.allclose(last[0], alone[-1], atol=1e-6)
    assert not torch.allclose(hidden[0, -1], alone[-1], atol=1e-3)  # [:, -1] reads a pad
    assert torch.allclose(mean[0], alone.mean(dim=0), atol=1e-6)


def test_pool_refuses_left_padding_and_unknown_poolings():
    hidden = torch.randn(1, 4, 8)
    with pytest.raises(ValueError, match="right padding"):
        adapt.pool(hidden, torch.tensor([[0, 1, 1, 1]]), "last")
    with pytest.raises(ValueError, match="right padding"):
        adapt.pool(hidden, torch.tensor([[0, 0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="pooling"):
        adapt.pool(hidden, torch.ones(1, 4, dtype=torch.long), "cls")
    with pytest.raises(ValueError, match="pooling"):
        adapt.GPTClassifier(tiny_gpt(), pooling="max")


def test_train_top_blocks_freezes_the_rest():
    classifier = adapt.GPTClassifier(tiny_gpt())
    trainable = adapt.train_top_blocks(classifier, 1)
    expected = sum(
        p.numel()
        for module in (classifier.backbone.blocks[-1], classifier.backbone.ln_f, classifier.head)
        for p in module.parameters()
    )
    assert trainable == expected
    assert not classifier.backbone.wte.weight.requires_grad
    assert not any(p.requires_grad for p in classifier.backbone.blocks[0].parameters())
    assert adapt.train_top_blocks(classifier, 2) > trainable
    with pytest.raises(ValueError, match=r"\[0, 2\]"):
        adapt.train_top_blocks(classifier, 3)


def test_reviews_are_encoded_as_pre_training_saw_them(tokenizer, sample):
    texts = sample.train.texts[:20]
    eot = adapt.end_of_text_id(tokenizer)
    ids = adapt.encode_reviews(tokenizer, texts, max_length=10_000)
    cleaned = [pretraining.clean_review(text) for text in texts]
    assert torch.equal(torch.tensor(sum(ids, [])), pretraining.encode_documents(tokenizer, cleaned))
    cut = adapt.encode_reviews(tokenizer, texts, max_length=16)
    assert all(len(row) <= 16 and row[-1] == eot for row in cut)
    assert [row[:8] for row in cut if len(row) == 16] == [
        full[:8] for full in ids if len(full) > 16
    ]


def test_the_loader_feeds_fit_and_the_classifier_learns(tokenizer, sample):
    # a learnable task: does the review contain the token " bad" or not
    bad = tokenizer.encode(" bad").ids
    texts = sample.train.texts[:120]
    ids = adapt.encode_reviews(tokenizer, texts, max_length=48)
    labels = [int(any(t in row for t in bad)) for row in ids]
    dataset = adapt.EncodedReviews(ids, labels)
    eot = adapt.end_of_text_id(tokenizer)
    loader = adapt.review_loader(
        dataset, eot, 16, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    batch = next(iter(loader))
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    classifier = adapt.GPTClassifier(tiny_gpt(), pooling="mean")
    before = train.evaluate(classifier, adapt.review_loader(dataset, eot, 32))["loss"]
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=3e-3)
    train.fit(classifier, loader, None, optimizer, 8, monitor="train_loss", verbose=False)
    after = train.evaluate(classifier, adapt.review_loader(dataset, eot, 32))["loss"]
    assert after < 0.8 * before


def test_fine_tune_keeps_the_best_epoch_and_scores_each_test_review(tokenizer, sample):
    bad = tokenizer.encode(" bad").ids
    ids = adapt.encode_reviews(tokenizer, sample.train.texts[:150], max_length=48)
    labels = [int(any(t in row for t in bad)) for row in ids]
    train_set = adapt.EncodedReviews(ids[:100], labels[:100])
    val_set = adapt.EncodedReviews(ids[100:125], labels[100:125])
    test_set = adapt.EncodedReviews(ids[125:], labels[125:])
    eot = adapt.end_of_text_id(tokenizer)

    def run(seed):
        classifier = adapt.GPTClassifier(tiny_gpt(), pooling="mean")
        options = {"learning_rate": 3e-3, "epochs": 3, "batch_size": 16, "seed": seed}
        row = adapt.fine_tune(classifier, train_set, val_set, test_set, pad_id=eot, **options)
        return classifier, row

    classifier, row = run(seed=0)
    assert row["correct"].shape == (25,) and row["correct"].dtype == torch.bool
    assert row["test_accuracy"] == pytest.approx(row["correct"].float().mean().item())
    assert len(row["val_accuracies"]) == 3
    assert row["best_val_accuracy"] == row["val_accuracies"][row["best_epoch"] - 1]
    # the weights kept are the best epoch's: scoring the validation set again gives its accuracy
    again = train.evaluate(classifier, adapt.review_loader(val_set, eot, 16))["accuracy"]
    assert again == pytest.approx(row["best_val_accuracy"])
    assert run(seed=0)[1]["val_accuracies"] == row["val_accuracies"]  # the seed sets the run
    with pytest.raises(ValueError, match="epochs"):
        adapt.fine_tune(classifier, train_set, val_set, test_set, pad_id=eot,
                            learning_rate=1e-3, epochs=0, batch_size=16, seed=0)  # fmt: skip


def test_seeded_accuracy_adds_the_seed_variance_to_the_test_sampling():
    correct = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    mean, error = metrics.seeded_accuracy(correct)
    per_review = torch.tensor([1.0, 2 / 3, 1 / 3, 1.0])
    per_seed = torch.tensor([0.75, 0.5, 1.0])
    expected = per_review.var() / 4 + per_seed.var() / 3  # torch's var has ddof 1
    assert mean == pytest.approx(9 / 12)
    assert error == pytest.approx(math.sqrt(expected))
    # no seed variation: only the test sampling is left
    same = torch.tensor([[1, 0, 1, 1]] * 3)
    assert metrics.seeded_accuracy(same)[1] == pytest.approx(math.sqrt(0.25 / 4))
    for bad in (torch.ones(1, 4), torch.ones(4), torch.full((2, 3), 0.5)):
        with pytest.raises(ValueError, match="run"):
            metrics.seeded_accuracy(bad)


def test_seeded_difference_is_paired_over_the_same_reviews():
    a = torch.tensor([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]])
    b = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 1]])
    gap, error = metrics.seeded_difference(a, b)
    per_review = a.float().mean(0) - b.float().mean(0)
    expected = per_review.var() / 4 + a.float().mean(1).var() / 3 + b.float().mean(1).var() / 3
    assert gap == pytest.approx(9 / 12 - 4 / 12)
    assert error == pytest.approx(math.sqrt(expected))
    # an arm against itself differs by nothing but its own seeds
    assert metrics.seeded_difference(a, a)[0] == 0
    with pytest.raises(ValueError, match="same examples"):
        metrics.seeded_difference(a, b[:, :3])


def test_lora_on_the_gpt_trains_under_five_percent():
    classifier = adapt.GPTClassifier(gpt.GPT(pretraining.PRETRAINING_RUNS["cpu"].model))
    total = sum(p.numel() for p in classifier.parameters())
    trainable = lora.inject_lora(
        classifier, ["qkv", "attn.proj", "fc", "mlp.proj"], 8, 16, modules_to_save=["head"]
    )
    assert len(lora.lora_layers(classifier)) == 4 * 4
    assert trainable / total < 0.05


def test_dataset_checks_its_input():
    with pytest.raises(ValueError, match="labels"):
        adapt.EncodedReviews([[1, 2]], [0, 1])
    with pytest.raises(ValueError, match="no token"):
        adapt.EncodedReviews([[]], [0])


def test_continuation_log_probs_equal_a_direct_computation():
    model = tiny_gpt()
    prompts = [[5, 6, 7], [8, 9, 10, 11, 12], [13]]
    continuations = [[20], [21, 22], [23], [24, 25, 26]]
    scores = adapt.continuation_log_probs(model, prompts, continuations, batch_size=2)
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
        adapt.continuation_log_probs(model, [[1] * 64], [[2, 3]])
    with pytest.raises(ValueError, match="at least one"):
        adapt.continuation_log_probs(model, [[]], [[2]])


def test_class_scores_sum_the_words_of_each_class():
    words = torch.log(torch.tensor([[0.2, 0.1, 0.05, 0.05]]))
    scores = adapt.class_log_probs(words, [0, 1, 0, 1])
    assert scores.exp().tolist()[0] == pytest.approx([0.25 / 0.4, 0.15 / 0.4])
    with pytest.raises(ValueError, match="class"):
        adapt.class_log_probs(words, [0, 0, 0, 2])


def test_calibration_makes_a_content_free_input_neutral():
    content_free = torch.log(torch.tensor([[0.8, 0.2], [0.6, 0.4]]))
    mean_input = content_free.exp().mean(0, keepdim=True).log()  # scores the prior itself
    calibrated = adapt.calibrate(mean_input, content_free)
    assert calibrated.exp()[0].tolist() == pytest.approx([0.5, 0.5])
    # a review the model scores 0.65 / 0.35 is positive before and negative after: the prior
    # for the first class is 0.7
    review = torch.log(torch.tensor([[0.65, 0.35]]))
    after = adapt.calibrate(review, content_free).exp()[0]
    assert after[1] > after[0]
    expected = torch.tensor([0.65 / 0.7, 0.35 / 0.3])
    assert after.tolist() == pytest.approx((expected / expected.sum()).tolist())


def test_prompts_hold_demonstrations_then_the_review(tokenizer):
    template = "\nOverall, the movie was"
    plain = adapt.encode_prompt(tokenizer, "A fine film.", template, 50)
    assert tokenizer.decode(plain) == "A fine film." + template
    shots = adapt.encode_prompt(
        tokenizer, "A fine film.", template, 50, [("Awful.", " terrible"), ("Lovely.", " great")]
    )
    assert tokenizer.decode(shots) == (
        f"Awful.{template} terrible\n\nLovely.{template} great\n\nA fine film.{template}"
    )
    template_length = len(tokenizer.encode(template).ids)
    cut = adapt.encode_prompt(tokenizer, "word " * 100, template, 10)
    assert len(cut) == 10 + template_length
    demo = adapt.encode_prompt(
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


def test_pretraining_runs_fit_their_own_data_and_context():
    """What __post_init__ cannot see: each recipe's schedule fits its steps, the bundled
    sample's recipe is shorter than the profile's, and the smoke run reads a subset."""
    for run in pretraining.PRETRAINING_RUNS.values():
        for recipe in (run.recipe, run.sample_recipe):
            assert recipe.warmup_steps < recipe.steps // 4, "warm-up should be a short ramp"
        assert run.sample_recipe.steps <= run.recipe.steps
        assert run.model.n_embd % run.model.n_head == 0
    assert pretraining.PRETRAINING_RUNS["smoke"].max_documents is not None
    with pytest.raises(ValueError, match="vocab_size"):
        dataclasses.replace(pretraining.PRETRAINING_RUNS["smoke"], vocab_size=512)


def test_pretrain_on_imdb_repeats_chapter_8s_pipeline(sample):
    run = pretraining.PRETRAINING_RUNS["smoke"]
    model, tokenizer, info = pretraining.pretrain_on_imdb(
        sample, run, generator=torch.Generator().manual_seed(0), verbose=False
    )
    assert tokenizer.get_vocab_size() == run.vocab_size
    assert model.config == run.model
    assert info["data"] == sample.source.kind
    untrained = math.log(run.vocab_size)
    assert info["val_nats_per_token"] < untrained


def test_pretraining_documents_reads_a_seeded_subset(sample):
    every = pretraining.PRETRAINING_RUNS["cpu"]
    assert every.max_documents is None
    documents = pretraining.pretraining_documents(sample, every)
    assert documents == [pretraining.clean_review(text) for text in sample.train.texts]
    capped = dataclasses.replace(every, max_documents=20)
    first, again = (pretraining.pretraining_documents(sample, capped) for _ in range(2))
    assert len(first) == 20 and first == again  # seeded: chapters 8, 9 and 10 read the same
    assert set(first) <= set(documents)
    with pytest.raises(ValueError, match="max_documents"):
        dataclasses.replace(every, max_documents=5)


def test_labelled_splits_are_nested_disjoint_and_independent_of_earlier_draws():
    splits = adapt.labelled_splits(1_000, 500, (50, 200), 100, 300, seed=0)
    assert splits["small"] == splits["large"][:50]
    assert not set(splits["large"]) & set(splits["val"])
    assert len(set(splits["val"])) == 100 and len(set(splits["test"])) == 300
    torch.rand(1000)  # a chapter drawing random numbers first (pre-training) changes nothing
    assert adapt.labelled_splits(1_000, 500, (50, 200), 100, 300, seed=0) == splits
    assert adapt.labelled_splits(1_000, 500, (50, 200), 100, 300, seed=1) != splits
    with pytest.raises(ValueError, match="do not fit"):
        adapt.labelled_splits(1_000, 500, (50, 950), 100, 300)
    with pytest.raises(ValueError, match="small <= large"):
        adapt.labelled_splits(1_000, 500, (300, 200), 100, 300)


# --- hardening: bad input to the classifier and the prompting helpers ------------------------


def test_a_mask_narrower_than_the_ids_or_not_zero_one_is_refused():
    classifier = adapt.GPTClassifier(tiny_gpt()).eval()
    ids = torch.randint(0, CONFIG.vocab_size, (2, 6))
    with pytest.raises(ValueError, match="shaped like input_ids"):
        classifier(ids, torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="only 0 .pad. and 1"):
        classifier(ids, torch.full((2, 6), 0.5))
    # a float or bool mask of 0s and 1s means the same as an integer one
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        expected = classifier(ids, mask)
        torch.testing.assert_close(classifier(ids, mask.float()), expected)
        torch.testing.assert_close(classifier(ids, mask.bool()), expected)


def test_calibration_refuses_a_missing_or_impossible_prior():
    scores = torch.log(torch.tensor([[0.7, 0.3], [0.2, 0.8]]))
    with pytest.raises(ValueError, match="at least one content-free input"):
        adapt.calibrate(scores, torch.empty(0, 2))
    with pytest.raises(ValueError, match=r"class\(es\) \[1\] have probability 0"):
        adapt.calibrate(scores, torch.log(torch.tensor([[1.0, 0.0], [1.0, 0.0]])))


def test_calibration_ranks_classes_as_zhao_et_als_affine_map():
    """softmax(W p) with W = diag(p_cf)^-1 (Zhao et al. 2021) gives the same predictions."""
    torch.manual_seed(0)
    probabilities = torch.softmax(torch.randn(50, 2), dim=1)
    content_free = torch.softmax(torch.randn(3, 2), dim=1)
    ours = adapt.calibrate(probabilities.log(), content_free.log()).argmax(dim=1)
    weights = torch.diag(1 / content_free.mean(dim=0))
    theirs = torch.softmax(probabilities @ weights.T, dim=1).argmax(dim=1)
    assert torch.equal(ours, theirs)


def test_ids_outside_the_vocabulary_are_named_and_the_mode_restored():
    model = tiny_gpt().train()
    with pytest.raises(ValueError, match=f"id 300 .* vocabulary of {CONFIG.vocab_size}"):
        adapt.continuation_log_probs(model, [[1, 2, 3]], [[300]])
    with pytest.raises(ValueError, match="id -1"):
        adapt.continuation_log_probs(model, [[1, -1]], [[5]])
    assert model.training, "the model is left in the mode it came in"


def test_continuation_scoring_restores_training_mode_when_a_batch_raises(monkeypatch):
    model = tiny_gpt().train()

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(model, "forward", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        adapt.continuation_log_probs(model, [[1, 2]], [[3]])
    assert model.training
