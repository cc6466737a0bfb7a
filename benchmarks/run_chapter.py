"""Execute one chapter notebook under a profile and print the result record it wrote.

    python benchmarks/run_chapter.py chapters/02_mnist_cnn.ipynb --profile cpu

Every figure quoted in an issue note or on the results page can be re-measured with this one
command. The record lands in results/<chapter>.<profile>.json (or TUTORIAL_RESULTS_DIR).
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
from tutorial_lib.results import read_result_record, results_dir  # noqa: E402
from tutorial_lib.runtime import PROFILES  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    args = parser.parse_args()

    os.environ["TUTORIAL_PROFILE"] = args.profile
    os.environ.setdefault("TUTORIAL_NONINTERACTIVE", "1")
    notebook = nbformat.read(args.notebook, as_version=4)
    started = time.perf_counter()
    NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(args.notebook.parent)}}).execute()
    wall = time.perf_counter() - started
    executed = results_dir() / f"{args.notebook.stem}.{args.profile}.executed.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, executed)
    print(f"executed notebook with its outputs: {executed}")
    record = read_result_record(args.notebook.stem, args.profile)
    print(f"{args.notebook.name} under '{args.profile}': executed in {wall:.1f} s (kernel start included)")
    if record is None:
        print("the chapter wrote no result record")
        return 1
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
