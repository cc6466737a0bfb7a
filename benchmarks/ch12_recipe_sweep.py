"""Choose chapter 12's learning rates on validation prompts, each method its own, by its own
objective.

    python benchmarks/ch12_recipe_sweep.py [--seed 0]

Chapter 12 trains four things on preference data built from chapter 8's samples: a reward model
(Bradley-Terry), DPO, Preferred-FT and RL against the reward model. No test prompt is used here:
the preference pairs come from training-review prompts, and every candidate is scored on pairs
and prompts from the chapter's validation reviews (``preference.prompt_splits``, the ``cpu``
budget's sizes) by what its method minimises or maximises: the reward model by its validation
pair loss, DPO by its validation DPO loss, Preferred-FT by its validation loss on the preferred
continuations, RL by its objective, the reward model's score minus β times the KL from the
reference. The chapter's budget comment quotes this output.

It loads chapter 8's saved ``cpu`` model (run chapter 8 first) and reads the IMDB reviews the
way the chapter does (``TUTORIAL_DATA_DIR``). About 10 minutes on a 2-core machine; run nothing
else beside it.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from tutorial_lib import data, optim, train
from tutorial_lib.llm import bpe, instruct, preference, pretraining

PROMPT_TOKENS, NEW_TOKENS, BETA_DPO, BETA_RL = 8, 24, 0.1, 0.05
CANDIDATES = {
    "reward model": (1e-4, 3e-4, 1e-3),
    "DPO": (1e-4, 3e-4, 1e-3),
    "Preferred-FT": (1e-4, 3e-4, 1e-3),
    "RL": (1e-4, 3e-4),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="the training seed of every run")
    args = parser.parse_args()
    imdb = data.load_imdb()
    if imdb.source.is_sample:
        print("error: the sweep needs the genuine IMDB reviews (TUTORIAL_DATA_DIR)")
        return 1
    reference, tokenizer, _ = pretraining.load_pretrained(pretraining.pretrained_dir("cpu"))
    reference.eval()
    end = tokenizer.token_to_id(bpe.END_OF_TEXT)
    splits = preference.prompt_splits(
        len(imdb.train.texts), len(imdb.test.texts), pair_prompts=2_000, val_prompts=500,
        judge_reviews=10_000, judge_val_reviews=2_000, test_prompts=500,
    )  # fmt: skip

    def texts(indices):
        return [imdb.train.texts[i] for i in indices]

    judge = instruct.train_ngram_judge(
        texts(splits["judge"]), [imdb.train.labels[i] for i in splits["judge"]],
        texts(splits["judge_val"]), [imdb.train.labels[i] for i in splits["judge_val"]],
        epochs=3,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(0)

    def pairs_of(indices):
        prompts = preference.review_prompts(tokenizer, texts(indices), PROMPT_TOKENS)
        first, second = (
            preference.sample(reference, prompts, NEW_TOKENS, end_id=end, generator=generator)
            for _ in range(2)
        )
        gold = [judge.log_odds(s.texts(tokenizer)) for s in (first, second)]
        return prompts, preference.preference_pairs(first, second, *gold)

    _, pairs = pairs_of(splits["pairs"])
    val_prompts, val_pairs = pairs_of(splits["val"])
    train_prompts = pairs.chosen.ids[:, :PROMPT_TOKENS]
    reference_logps = {
        name: tuple(preference.samples_logprobs(reference, s) for s in (p.chosen, p.rejected))
        for name, p in (("train", pairs), ("val", val_pairs))
    }
    print(f"{len(pairs):,} training pairs, {len(val_pairs):,} validation pairs; seed {args.seed}")

    def optimizer_for(model, rate):
        return torch.optim.AdamW(optim.param_groups(model, rate, verbose=False))

    def loader_generator():
        return torch.Generator().manual_seed(args.seed)

    proxy = None
    for rate in CANDIDATES["reward model"]:
        torch.manual_seed(args.seed)
        model = preference.reward_model(reference)
        started = time.perf_counter()
        history = train.fit(
            preference.PairRewards(model, PROMPT_TOKENS),
            preference.pair_loader(pairs, 32, shuffle=True, generator=loader_generator()),
            preference.pair_loader(val_pairs, 64),
            optimizer_for(model, rate),
            2,
            monitor="val_loss",
            restore_best=True,
            verbose=False,
        )
        best = min(history["val_loss"])
        print(
            f"reward model lr {rate:g}: val pair loss by epoch "
            f"{[round(v, 4) for v in history['val_loss']]}, accuracy "
            f"{[round(v, 3) for v in history['val_accuracy']]} "
            f"({time.perf_counter() - started:.0f} s)"
        )
        if proxy is None or best < proxy[0]:
            proxy = (best, model)
    reward_model = proxy[1]

    for rate in CANDIDATES["DPO"]:
        policy = copy.deepcopy(reference)
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        history = train.fit(
            preference.DPOPairs(policy, PROMPT_TOKENS, BETA_DPO),
            preference.pair_loader(
                pairs, 32, reference_logprobs=reference_logps["train"], shuffle=True,
                generator=loader_generator(),
            ),
            preference.pair_loader(val_pairs, 64, reference_logprobs=reference_logps["val"]),
            optimizer_for(policy, rate),
            3,
            monitor="val_loss",
            verbose=False,
        )  # fmt: skip
        print(
            f"DPO β {BETA_DPO} lr {rate:g}: val DPO loss by epoch "
            f"{[round(v, 4) for v in history['val_loss']]} ({time.perf_counter() - started:.0f} s)"
        )

    for rate in CANDIDATES["Preferred-FT"]:
        policy = copy.deepcopy(reference)
        torch.manual_seed(args.seed)
        started = time.perf_counter()
        history = train.fit(
            policy,
            preference.preferred_ft_loader(
                pairs.chosen, 32, shuffle=True, generator=loader_generator()
            ),
            preference.preferred_ft_loader(val_pairs.chosen, 64, shuffle=False),
            optimizer_for(policy, rate),
            3,
            loss_fn=instruct.masked_lm_loss,
            monitor="val_loss",
            verbose=False,
        )
        print(
            f"Preferred-FT lr {rate:g}: val loss by epoch "
            f"{[round(v, 4) for v in history['val_loss']]} ({time.perf_counter() - started:.0f} s)"
        )

    def objective(policy):
        drawn = preference.sample(
            policy, val_prompts, NEW_TOKENS, end_id=end, generator=torch.Generator().manual_seed(1)
        )
        kl, _ = preference.kl_from_reference(policy, reference, drawn)
        score = float(preference.rewards(reward_model, drawn).mean())
        return round(score - BETA_RL * kl, 3), round(score, 3), round(kl, 2)

    for rate in CANDIDATES["RL"]:
        policy = copy.deepcopy(reference)
        torch.manual_seed(args.seed)
        history = preference.train_rl(
            policy, reference, lambda s: preference.rewards(reward_model, s), train_prompts,
            new_tokens=NEW_TOKENS, end_id=end, steps=100, prompts_per_step=16, group_size=4,
            beta=BETA_RL, learning_rate=rate, generator=torch.Generator().manual_seed(args.seed),
            evaluate_every=25, evaluate=objective,
        )  # fmt: skip
        print(
            f"RL β {BETA_RL} lr {rate:g}: (objective, reward-model score, KL) every 25 steps "
            f"{[e for _, e in history.evaluations]} ({history.seconds:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
