"""Rebuild the small real samples bundled in tutorial_lib/samples/ from full local copies.

    python scripts/make_samples.py --source ../shared/data

The selection is deterministic (stratified, seeded) so that rerunning it gives the same files.
CIFAR-10 images are taken only from the part of the source whose pixels are lossless copies of
the originals (data_batch_1 and test positions 0-999 of the copy described in its SOURCE.md).
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import numpy as np

from tutorial_lib.data import balanced_indices, load_cifar10, load_imdb, load_mnist

SAMPLES = Path(__file__).resolve().parents[1] / "tutorial_lib" / "samples"
SEED = 2024
SIZES = {  # examples per split, the same number for every class
    "MNIST": {"train": 1000, "test": 500},
    "CIFAR-10": {"train": 500, "test": 200},
    "IMDB": {"train": 400, "test": 200},
}
CIFAR_LOSSLESS = {"train": 2400, "test": 1000}  # leading examples with lossless pixels


def save_images(loaded, name: str, path: Path, limit: dict[str, int] | None = None) -> None:
    arrays = {}
    for split in ("train", "test"):
        dataset = getattr(loaded, split)
        labels = dataset.labels.numpy()
        pool = np.arange(len(labels)) if limit is None else np.arange(limit[split])
        chosen = pool[
            balanced_indices(labels[pool], SIZES[name][split] // len(dataset.classes), SEED)
        ]
        arrays[f"{split}_images"] = dataset.images[chosen].numpy()
        arrays[f"{split}_labels"] = labels[chosen].astype(np.int64)
    np.savez_compressed(path, **arrays)


def save_imdb(loaded, path: Path) -> None:
    rows = []
    for split in ("train", "test"):
        dataset = loaded.train if split == "train" else loaded.test
        for i in balanced_indices(dataset.labels, SIZES["IMDB"][split] // 2, SEED):
            rows.append(
                {
                    "split": split,
                    "label": dataset.classes[dataset.labels[i]],
                    "id": dataset.ids[i],
                    "rating": dataset.ratings[i],
                    "text": dataset.texts[i],
                }
            )
    with gzip.GzipFile(path, "wb", compresslevel=9, mtime=0) as raw:
        raw.write(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="folder with MNIST/, cifar-10-batches-py/ and aclImdb*",
    )
    args = parser.parse_args()
    options = dict(download=False, allow_sample=False)
    save_images(load_mnist(args.source, **options), "MNIST", SAMPLES / "mnist_sample.npz")
    save_images(
        load_cifar10(args.source, **options),
        "CIFAR-10",
        SAMPLES / "cifar10_sample.npz",
        CIFAR_LOSSLESS,
    )
    save_imdb(load_imdb(args.source, **options), SAMPLES / "imdb_sample.jsonl.gz")
    for path in sorted(SAMPLES.glob("*_sample*")):
        print(f"{path.name}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
