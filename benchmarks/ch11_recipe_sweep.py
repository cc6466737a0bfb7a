"""Choose chapter 11's learning rates on the validation reviews, each arm its own.

    python benchmarks/ch11_recipe_sweep.py [--seed 0]

Chapter 11 instruction-tunes chapter 8's GPT (fully, and with QLoRA) and the same architecture
from random weights. Each arm gets the learning rate that suits it, chosen without looking at a
test review: this script builds the chapter's instruction data (``instruct.instruction_sets``
with the ``cpu`` budget's sizes, the same splits as chapters 9 and 11), trains each candidate
rate of each arm for two epochs, and prints the validation loss on the assistant's tokens (what
the chapter's runs keep their best epoch by) and the validation reviews' sentiment answered by
generation. The chapter's budget comment quotes this output.

It loads chapter 8's saved ``cpu`` model (run chapter 8 first) and reads the IMDB reviews the
way the chapter does (``TUTORIAL_DATA_DIR``). 6 runs, about 8 minutes on a 2-core machine;
run nothing else beside it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from tutorial_lib import data
from tutorial_lib.llm import adapt, gpt, instruct, pretraining

CANDIDATES = {
    "full, pre-trained": (1e-3, 3e-3),
    "full, random": (1e-3, 3e-3),
    "QLoRA, pre-trained": (3e-3, 1e-2),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the training seed of every run")
    args = parser.parse_args()
    imdb = data.load_imdb()
    if imdb.source.is_sample:
        print("error: the sweep needs the genuine IMDB reviews (TUTORIAL_DATA_DIR)")
        return 1
    pretrained, tokenizer, _ = pretraining.load_pretrained(pretraining.pretrained_dir("cpu"))
    chat_tokenizer = instruct.add_chat_tokens(tokenizer)
    grown = instruct.grow_vocabulary(pretrained, chat_tokenizer.get_vocab_size())
    splits = adapt.labelled_splits(
        len(imdb.train.texts), len(imdb.test.texts), (500, 2_000), 500, 2_000
    )
    sets = instruct.instruction_sets(
        imdb.train,
        imdb.test,
        chat_tokenizer,
        splits,
        review_tokens=64,
        write_tokens=24,
        rating_reviews=400,
        write_reviews=400,
        test_rating_reviews=1_000,
    )
    context = grown.config.context_length
    train_set = instruct.ChatExamples(chat_tokenizer, sets["train"], context)
    val_set = instruct.ChatExamples(chat_tokenizer, sets["val"], context)
    val_sentiment = [e for e in sets["val"] if e["task"] == "sentiment"]
    pad = adapt.end_of_text_id(chat_tokenizer)
    first_new = pretrained.config.vocab_size
    print(f"{len(train_set):,} training examples, {train_set.tokens:,} tokens; seed {args.seed}")
    for arm, rates in CANDIDATES.items():
        for rate in rates:
            torch.manual_seed(args.seed)
            model = gpt.GPT(grown.config)
            if "random" not in arm:
                model.load_state_dict(grown.state_dict())
            instruct.prepare_for_tuning(model, "qlora" if "QLoRA" in arm else "full", first_new)
            started = time.perf_counter()
            run = instruct.instruction_tune(
                model,
                train_set,
                val_set,
                pad_id=pad,
                learning_rate=rate,
                epochs=2,
                batch_size=16,
                seed=args.seed,
            )
            answers = instruct.evaluate_prompts(model, chat_tokenizer, val_sentiment)
            print(
                f"{arm:>20}, lr {rate:g}: val loss {min(run['val_losses']):.4f}, sentiment "
                f"{100 * answers['correct'].float().mean():.1f} % "
                f"({100 * answers['well_formed'].float().mean():.1f} % well formed), "
                f"{time.perf_counter() - started:.0f} s",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
