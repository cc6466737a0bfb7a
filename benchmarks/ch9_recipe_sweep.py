"""Choose chapter 9's training recipes on the validation reviews, each arm its own.

    python benchmarks/ch9_recipe_sweep.py [--seed 0]

Chapter 9 compares fine-tuning chapter 8's GPT with training the same architecture from random
weights. A fair comparison gives each arm the recipe that suits it, chosen without looking at the
test reviews. This script trains, at the small label budget of the ``cpu`` profile and on the
same splits as the chapter (``adapt.labelled_splits``), each candidate learning rate and
pooling of each arm, and LoRA's candidate rates, and prints every run's best validation accuracy
and its epoch. It never measures a test review: the chapter's budget comment quotes this output.

It loads chapter 8's saved ``cpu`` model (run chapter 8 first) and reads the IMDB reviews the
way the chapter does (``TUTORIAL_DATA_DIR``). 13 runs, about 10 minutes on a 2-core machine;
run nothing else beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tutorial_lib import data, lora
from tutorial_lib.llm import adapt, gpt, pretraining

LEARNING_RATES = (3e-4, 1e-3, 3e-3)
LORA_LEARNING_RATES = (3e-3, 6e-3)
BLOCK_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the training seed of every run")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    imdb = data.load_imdb()
    if imdb.source.is_sample:
        print("error: the sweep needs the genuine IMDB reviews (TUTORIAL_DATA_DIR)")
        return 1
    pretrained, tokenizer, _ = pretraining.load_pretrained(pretraining.pretrained_dir("cpu"))
    state = pretrained.state_dict()
    splits = adapt.labelled_splits(
        len(imdb.train.texts), len(imdb.test.texts), (500, 2_000), 500, 2_000
    )
    eot = adapt.end_of_text_id(tokenizer)

    def encoded(indices: list[int]) -> adapt.EncodedReviews:
        texts = [imdb.train.texts[i] for i in indices]
        ids = adapt.encode_reviews(tokenizer, texts, args.max_tokens)
        return adapt.EncodedReviews(ids, [imdb.train.labels[i] for i in indices])

    train_set, val_set = encoded(splits["small"]), encoded(splits["val"])

    def run(name: str, pretrained_weights: bool, pooling: str, rate: float, adapter: bool):
        torch.manual_seed(args.seed)
        model = gpt.GPT(pretrained.config)
        if pretrained_weights:
            model.load_state_dict(state)
        classifier = adapt.GPTClassifier(model, pooling=pooling)
        if adapter:
            lora.inject_lora(classifier, BLOCK_TARGETS, rank=4, alpha=8, modules_to_save=["head"])
        started = time.perf_counter()
        # the validation reviews stand in for the test set: this script never reads a test review
        row = adapt.fine_tune(classifier, train_set, val_set, val_set, pad_id=eot,
                                  learning_rate=rate, epochs=args.epochs,
                                  batch_size=args.batch_size, seed=args.seed)  # fmt: skip
        curve = " ".join(f"{100 * a:.1f}" for a in row["val_accuracies"])
        print(
            f"{name:<11} {pooling:<4} lr {rate:<6g} best validation "
            f"{100 * row['best_val_accuracy']:.1f} % at epoch {row['best_epoch']} "
            f"({time.perf_counter() - started:.0f} s; per epoch: {curve})",
            flush=True,
        )

    print(f"{len(train_set)} labelled reviews, {len(val_set)} validation reviews, seed {args.seed}")
    for rate in LEARNING_RATES:
        run("pre-trained", True, "last", rate, adapter=False)
    for pooling in adapt.POOLINGS:
        for rate in LEARNING_RATES:
            run("random", False, pooling, rate, adapter=False)
    for pooling in adapt.POOLINGS:
        for rate in LORA_LEARNING_RATES:
            run("LoRA r4", True, pooling, rate, adapter=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
