"""Launching a script under ``torchrun`` from a notebook or a test, bounded in time.

The chapters run in a notebook kernel, which cannot become several processes itself; instead
the notebook writes a script and starts it with ``python -m torch.distributed.run`` (what the
``torchrun`` command runs) through ``subprocess``, on 127.0.0.1 with a free port. A launched
script reports its figures on lines ``RESULT {json}``, read back with :func:`result_lines`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` now (the operating system picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _launch_env(threads_per_process: int) -> dict[str, str]:
    package_root = str(Path(__file__).resolve().parents[1])
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "OMP_NUM_THREADS": str(threads_per_process),
        "TUTORIAL_NONINTERACTIVE": "1",
    }


def _run(command: list[str], threads_per_process: int, timeout: float) -> str:
    try:
        finished = subprocess.run(
            command,
            env=_launch_env(threads_per_process),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{command[2]} did not finish within {timeout} s") from None
    if finished.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[1:3])} failed (exit {finished.returncode}):\n"
            f"{(finished.stdout + finished.stderr)[-4000:]}"
        )
    return finished.stdout


def torchrun(
    script: str | os.PathLike,
    *args: str,
    nproc_per_node: int = 2,
    threads_per_process: int = 1,
    timeout: float = 600,
) -> str:
    """Run ``torchrun --nproc_per_node=N script args`` on this machine and return its output.

    It is ``python -m torch.distributed.run`` (the ``torchrun`` command) of this interpreter, on
    127.0.0.1 with a free port, each process limited to ``threads_per_process`` CPU threads
    (``OMP_NUM_THREADS``), and the checkout of ``tutorial_lib`` on ``PYTHONPATH``.

    Raises:
        RuntimeError: with the end of the output, if the run fails or exceeds ``timeout`` s.
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc_per_node}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(script),
        *args,
    ]
    return _run(command, threads_per_process, timeout)


def python_script(
    script: str | os.PathLike, *args: str, threads: int | None = None, timeout: float = 600
) -> str:
    """Run ``python script args`` (one process, ``threads`` CPU threads, default all) and return
    its output. Raises ``RuntimeError`` as :func:`torchrun`."""
    command = [sys.executable, "-u", str(script), *args]
    return _run(command, threads or os.cpu_count() or 1, timeout)


def measure_scaling(
    script: str | os.PathLike,
    process_counts: Iterable[int],
    *args: str,
    threads_per_process: int = 1,
    timeout: float = 600,
) -> list[dict[str, float]]:
    """Launch ``script`` under ``torchrun`` once per process count and return, per count,
    ``{"processes", "samples_per_second", "efficiency"}``.

    ``script`` must print a line ``RESULT {"samples_per_second": ...}`` (JSON) on rank 0;
    efficiency is the throughput over ``processes ×`` the throughput of the first count (so
    list 1 first for the classic definition; 1.0 is perfect scaling).
    """
    rows = []
    for count in process_counts:
        output = torchrun(
            script,
            *args,
            nproc_per_node=count,
            threads_per_process=threads_per_process,
            timeout=timeout,
        )
        reported = result_lines(output)
        if not reported:
            raise RuntimeError(
                f"{script} printed no RESULT line; its output ends:\n{output[-2000:]}"
            )
        rows.append({"processes": count, "samples_per_second": reported[-1]["samples_per_second"]})
    base = rows[0]["samples_per_second"] / rows[0]["processes"]
    for row in rows:
        row["efficiency"] = row["samples_per_second"] / (row["processes"] * base)
    return rows


def result_lines(output: str) -> list[dict[str, Any]]:
    """Return the JSON objects a launched script printed on lines starting with ``RESULT ``."""
    return [
        json.loads(line[len("RESULT ") :])
        for line in output.splitlines()
        if line.startswith("RESULT ")
    ]
