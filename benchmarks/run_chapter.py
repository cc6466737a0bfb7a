"""Execute one chapter notebook under a profile and print the result record it wrote.

    python benchmarks/run_chapter.py chapters/02_mnist_cnn.ipynb --profile cpu [--publish]

Every figure quoted in an issue note or on the results page can be re-measured with this one
command. The record lands in results/<chapter>.<profile>.json (or TUTORIAL_RESULTS_DIR). With
--publish a copy, plus the wall time, the command and the machine's yardstick of this run, goes
to results/published/, the folder the book's results page is built from; commit it there.

Before and after the chapter it measures the machine's yardstick (~20 s each,
pretraining.measure_yardstick: chapter 8's cpu GPT in training, tokens/s; the record keeps both
and their mean), so that the wall time can be read as reference minutes: minutes on the 2-core
AVX2 machine of results.REFERENCE_TOKENS_PER_SECOND. Run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tutorial_lib.files import atomic_write_text
from tutorial_lib.results import (
    PUBLISHED_DIR,
    REFERENCE_MINUTES_TARGET,
    read_result_record,
    reference_minutes,
    results_dir,
    unpublishable_reason,
)
from tutorial_lib.runtime import PROFILES

REPO_ROOT = Path(__file__).resolve().parents[1]


def benchmark_block(wall_seconds: float, command: str, yardstick: dict) -> dict:
    """Return what a published record says of the run that measured it: the command, its wall
    time, the machine's yardstick and the wall time in reference minutes."""
    return {
        "command": command,
        "wall_seconds": round(wall_seconds, 1),
        "yardstick": yardstick,
        "reference_minutes": round(
            reference_minutes(wall_seconds, yardstick["tokens_per_second"]), 1
        ),
    }


def bracketed_yardstick(before: dict, after: dict) -> dict:
    """Return the yardstick of a run measured before and after it: the mean of the two
    throughputs, with both kept (``before``, ``after``). On a shared virtual machine one
    20-second reading moved by a quarter within minutes (7,557 and 6,037 tokens/s around two
    runs of chapter 12 on 2026-12-08); the mean of two, minutes apart, is steadier."""
    return {
        **before,
        "tokens_per_second": (before["tokens_per_second"] + after["tokens_per_second"]) / 2,
        "before": before["tokens_per_second"],
        "after": after["tokens_per_second"],
    }


def publish_record(record: dict, benchmark: dict, folder: Path = REPO_ROOT / PUBLISHED_DIR) -> Path:
    """Copy ``record`` with this run's ``benchmark`` block (:func:`benchmark_block`) into
    ``folder`` as ``<chapter>.<profile>.json`` (replacing an earlier one) and return the path.

    Raises:
        ValueError: for a ``smoke`` run or a run on the bundled samples (recognised by
            :func:`tutorial_lib.results.unpublishable_reason`); their numbers only say that the
            code runs, so they never reach the results page.
    """
    why = unpublishable_reason(record)
    if why is not None:
        raise ValueError(
            f"not publishing {record['chapter']}: it ran on {why}, so its figures "
            "mean nothing; run it on the real data under the cpu or gpu profile"
        )
    published = {**record, "benchmark": benchmark}
    path = folder / f"{record['chapter']}.{record['profile']}.json"
    return atomic_write_text(path, json.dumps(published, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="copy the record into results/published/ for the book's results page",
    )
    args = parser.parse_args()

    os.environ["TUTORIAL_PROFILE"] = args.profile
    os.environ.setdefault("TUTORIAL_NONINTERACTIVE", "1")
    from tutorial_lib.llm.pretraining import measure_yardstick

    yardstick = measure_yardstick()
    print(
        f"yardstick: {yardstick['tokens_per_second']:,.0f} tokens/s "
        f"({yardstick['shape']}, median of {yardstick['steps']} steps)"
    )
    notebook = nbformat.read(args.notebook, as_version=4)
    started = time.perf_counter()
    NotebookClient(
        notebook,
        timeout=args.timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(args.notebook.parent)}},
    ).execute()
    wall = time.perf_counter() - started
    after = measure_yardstick()
    print(f"yardstick after the chapter: {after['tokens_per_second']:,.0f} tokens/s")
    yardstick = bracketed_yardstick(yardstick, after)
    executed = results_dir() / f"{args.notebook.stem}.{args.profile}.executed.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, executed)
    print(f"executed notebook with its outputs: {executed}")
    record = read_result_record(args.notebook.stem, args.profile)
    notebook_path = args.notebook.as_posix()
    command = f"python benchmarks/run_chapter.py {notebook_path} --profile {args.profile}"
    benchmark = benchmark_block(wall, command, yardstick)
    print(
        f"{args.notebook.name} under '{args.profile}': executed in {wall:.1f} s "
        f"(kernel start included), {benchmark['reference_minutes']:.1f} reference minutes "
        f"(target: at most {REFERENCE_MINUTES_TARGET} under cpu)"
    )
    if record is None:
        print("the chapter wrote no result record")
        return 1
    print(json.dumps(record, indent=2))
    if args.publish:
        try:
            path = publish_record(record, benchmark)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(f"published: {path.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
