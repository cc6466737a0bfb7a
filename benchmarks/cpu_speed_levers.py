"""Time one training step (and inference) of the book's models under each CPU speed lever.

    python benchmarks/cpu_speed_levers.py [--steps 8] [--compile] [--only minilm,efficientnet]

The levers: bf16 autocast (this project's ``Strategy(mixed_precision="bf16")``, which on a CPU
with AMX or AVX-512-BF16 may run matrix products in bf16), ``channels_last`` memory layout for
the CNN, and ``torch.compile``. Each row is the median of ``--steps`` timed steps after two
warm-up steps, on the shapes the chapters' ``cpu`` profiles train (random inputs: the speed of a
step does not depend on the values). Speed only: a lever is worth adopting in a chapter only if
the chapter's accuracy holds with it, which its benchmark run has to show.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tutorial_lib import models, runtime, train, weights
from tutorial_lib.compress import median_seconds
from tutorial_lib.llm import gpt
from tutorial_lib.plots import markdown_table


def training_step(model: nn.Module, batch, precision: str | bool, loss_fn=None):
    """Return a function taking one AdamW step of ``model`` on ``batch`` at ``precision``."""
    strategy = train.Strategy.from_environment("cpu", mixed_precision=precision)
    model = strategy.wrap(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    return lambda: train.train_step(model, [batch], optimizer, strategy, loss_fn=loss_fn)


def inference_step(model: nn.Module, inputs, precision: str | bool):
    """Return a function computing ``model``'s logits on ``inputs`` without gradients."""
    strategy = train.Strategy.from_environment("cpu", mixed_precision=precision)

    @torch.no_grad()
    def step():
        with strategy.autocast():
            return train.forward(model, inputs)

    return step


def minilm_cases(args):
    """Chapters 4, 6, 10: MiniLM with a classification head, batch 16 (32 to infer) x 256."""
    _, model, _ = weights.load_bert("sentence-transformers/all-MiniLM-L6-v2", 2, verbose=False)
    vocab = model.config.vocab_size

    def batch(size):
        ids = torch.randint(1000, vocab, (size, 256))
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    for precision in (False, "bf16"):
        model.train()
        labelled = {**batch(16), "labels": torch.randint(0, 2, (16,))}
        yield "MiniLM-L6 train, 16 x 256", precision, training_step(model, labelled, precision)
        model.eval()
        yield "MiniLM-L6 infer, 32 x 256", precision, inference_step(model, batch(32), precision)


def efficientnet_cases(args):
    """Chapter 3: EfficientNet-Lite0 fine-tuned on 64- and 96-pixel images, batch 64."""
    for size in (64, 96):
        images = torch.randn(64, 3, size, size)
        labels = torch.randint(0, 10, (64,))
        for layout in ("contiguous", "channels_last"):
            for precision in (False, "bf16"):
                model, _ = models.image_classifier_for("fine-tune", verbose=False)
                inputs = images
                if layout == "channels_last":
                    model = model.to(memory_format=torch.channels_last)
                    inputs = images.contiguous(memory_format=torch.channels_last)
                name = f"EfficientNet-Lite0 train, 64 x {size} px, {layout}"
                yield name, precision, training_step(model, (inputs, labels), precision)
        if args.compile:
            model, _ = models.image_classifier_for("fine-tune", verbose=False)
            compiled = torch.compile(model)
            name = f"EfficientNet-Lite0 train, 64 x {size} px, torch.compile"
            yield name, False, training_step(compiled, (images, labels), False)


def textcnn_cases(args):
    """Chapter 5: TextCNN over a 30,000-word vocabulary, batch 64 x 256 words."""
    ids = torch.randint(2, 30_000, (64, 256))
    labels = torch.randint(0, 2, (64,))
    for precision in (False, "bf16"):
        model = models.TextCNN(30_000)
        yield "TextCNN train, 64 x 256", precision, training_step(model, (ids, labels), precision)


def gpt_cases(args):
    """Chapter 8: the cpu profile's GPT (4 layers, 128 wide, 4,096 tokens), batch 8 x 256."""
    config = gpt.GPTConfig(vocab_size=4096, context_length=256, n_layer=4, n_head=4, n_embd=128)
    ids = torch.randint(0, 4096, (8, 257))
    batch = (ids[:, :-1], ids[:, 1:])
    for precision in (False, "bf16"):
        model = gpt.GPT(config)
        name = "GPT 4 x 128 train, 8 x 256"
        yield name, precision, training_step(model, batch, precision, loss_fn=gpt.lm_loss)


CASES = {
    "minilm": minilm_cases,
    "efficientnet": efficientnet_cases,
    "textcnn": textcnn_cases,
    "gpt": gpt_cases,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per row (median)")
    parser.add_argument("--compile", action="store_true", help="add torch.compile rows (slow)")
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated model names")
    args = parser.parse_args()
    runtime.seed_everything(0)
    print(runtime.environment_report())
    rows, fp32 = [], {}
    for name in args.only.split(","):
        if name not in CASES:
            parser.error(f"unknown model {name!r}; choose from {', '.join(CASES)}")
        for case, precision, step in CASES[name](args):
            seconds = median_seconds(step, args.steps, warmup=2)
            label = "bf16 autocast" if precision else "fp32"
            # every row is compared with the plain fp32 step of the same model and shape
            reference = case.replace("channels_last", "contiguous")
            reference = reference.replace("torch.compile", "contiguous")
            if not precision and reference == case:
                fp32[case] = seconds
            baseline = fp32.get(reference)
            speedup = f"{baseline / seconds:.2f}x" if baseline else ""
            rows.append([case, label, f"{1000 * seconds:.0f}", speedup])
            print(" | ".join(rows[-1]), flush=True)
    print()
    print(markdown_table(rows, ["step", "precision", "ms (median)", "vs fp32"], align="llrr"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
