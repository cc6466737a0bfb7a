"""Train chapter 2's CNN on MNIST with train.fit; runs unchanged under python and torchrun."""

import argparse
import json

import torch
from torch.utils.data import DataLoader

from tutorial_lib import data, runtime, train
from tutorial_lib.models import MnistCNN

parser = argparse.ArgumentParser()
parser.add_argument("--batch-size", type=int, default=64)  # per process
parser.add_argument("--train-size", type=int, default=12_000)
parser.add_argument("--val-size", type=int, default=2_000)
parser.add_argument("--epochs", type=int, default=1)
parser.add_argument("--lr", type=float, default=0.05)
parser.add_argument("--device", default=None)  # default: the GPU of LOCAL_RANK, else the CPU
args = parser.parse_args()

generator = runtime.seed_everything(0)
splits = data.budget_splits(
    data.load_mnist(verbose=False), args.train_size, args.val_size, test_size=1, verbose=False
)
transform = data.mnist_transform()
train_loader = DataLoader(
    splits.train.with_transform(transform),
    batch_size=args.batch_size,
    shuffle=True,
    generator=generator,
)
val_loader = DataLoader(splits.val.with_transform(transform), batch_size=256)
model = MnistCNN()
optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
strategy = train.Strategy.from_environment(args.device)  # 1 process, or its place in the job
history = train.fit(
    model, train_loader, val_loader, optimizer, epochs=args.epochs, strategy=strategy
)
if strategy.is_main:
    last = history.records[-1]
    result = {
        "strategy": strategy.describe(),
        "train_examples": len(splits.train),
        "seconds": sum(history["seconds"]),
        "samples_per_second": last["samples_per_second"],
        "val_accuracy": last["val_accuracy"],
        "val_loss": last["val_loss"],
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print("RESULT " + json.dumps(result))  # the line launch.result_lines reads
