"""Launching a script under ``torchrun`` from a notebook or a test, bounded in time.

The chapters run in a notebook kernel, which cannot become several processes itself; instead
the notebook writes a script and starts it with ``python -m torch.distributed.run`` (what the
``torchrun`` command runs) through ``subprocess``, on 127.0.0.1 with a free port. A launched
script reports its figures on lines ``RESULT {json}``, read back with :func:`result_lines`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` now (the operating system picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _launch_env(threads_per_process: int) -> dict[str, str]:
    package_root = str(Path(__file__).resolve().parents[2])  # the checkout
    paths = [package_root, *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(paths),
        "OMP_NUM_THREADS": str(threads_per_process),
        "TUTORIAL_NONINTERACTIVE": "1",
    }


STOP_GRACE_SECONDS = 15.0
"""How long a stopped launch may take to end its workers after SIGTERM before it is killed."""


def _run(
    command: list[str],
    threads_per_process: int,
    timeout: float,
    script: str | os.PathLike,
    rank_logs: Path | None = None,
) -> str:
    """Run ``command`` and return its standard output. On a timeout, a failure or an
    interruption (KeyboardInterrupt) nothing it started is left running.

    ``rank_logs`` is the ``--log-dir`` of a torchrun launch whose workers' standard error goes
    to per-rank files (``--redirects``); a failure then shows the failing rank's first.
    """
    process = subprocess.Popen(
        command,
        env=_launch_env(threads_per_process),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so that it can be stopped whole
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        stdout, stderr = _stop(process)
        raise RuntimeError(
            f"{script} did not finish within {timeout} s and was stopped, with every process "
            f"it started. Its output so far:\n{_failure_report(stdout, stderr, rank_logs)}"
        ) from None
    except BaseException:  # KeyboardInterrupt: the workers must not outlive the notebook cell
        _stop(process)
        raise
    if process.returncode != 0:
        raise RuntimeError(
            f"{script} failed (exit {process.returncode}):\n"
            f"{_failure_report(stdout, stderr, rank_logs)}"
        )
    return stdout


def _stop(process: subprocess.Popen) -> tuple[str, str]:
    """End ``process`` and everything it started; return its whole output.

    torchrun stops its workers when it gets SIGTERM, so it gets that first. Killed outright
    it could not: its workers, each started in a session of its own, would be re-parented to
    init and keep running. So the workers are noted beforehand and killed after the grace
    period if they are still there, and so is the launcher's process group.
    """
    started = _descendants(process.pid)
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        return process.communicate(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        pass
    for pid, start_time in {**started, **_descendants(process.pid)}.items():
        if _start_time(pid) == start_time:  # still the same process, not a reused pid
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    try:
        return process.communicate(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired as still_open:  # a pipe held by something unkillable
        return _text(still_open.stdout), _text(still_open.stderr)


def _text(output: str | bytes | None) -> str:
    if isinstance(output, bytes):
        return output.decode(errors="replace")
    return output or ""


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks (Linux ``/proc``), or ``None`` if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """``{pid: start time}`` of every living process below ``root`` (empty without ``/proc``)."""
    proc = Path("/proc")
    children: dict[int, list[int]] = {}
    for entry in proc.glob("[0-9]*") if proc.is_dir() else ():
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found: dict[int, int] = {}
    waiting = list(children.get(root, []))
    while waiting:
        pid = waiting.pop()
        start_time = _start_time(pid)
        if start_time is not None:
            found[pid] = start_time
        waiting.extend(children.get(pid, []))
    return found


def _failure_report(stdout: str, stderr: str, rank_logs: Path | None) -> str:
    """What a reader needs to see of a failed launch: the error output of the rank that failed
    first (then of the others), then the end of the launcher's output."""
    parts = [
        f"--- rank {local_rank}, the end of its error output ---\n{text[-4000:]}"
        for local_rank, text in _rank_errors(rank_logs, stderr)
    ]
    if not parts:
        return (stdout + stderr)[-4000:]
    return "\n".join([*parts, f"--- the launcher's output (end) ---\n{(stdout + stderr)[-2000:]}"])


_ROOT_CAUSE = re.compile(r"Root Cause.*?local_rank\s*:\s*(\d+)", re.DOTALL)


def _rank_errors(rank_logs: Path | None, launcher_stderr: str) -> list[tuple[int, str]]:
    """``(local rank, standard error)`` of the ranks that wrote any: first the rank torchrun
    names as the root cause, then those with a traceback, then the rest."""
    if rank_logs is None:
        return []
    errors = {}
    for path in rank_logs.glob("**/attempt_*/*/stderr.log"):
        with contextlib.suppress(OSError, ValueError):
            text = path.read_text(errors="replace")
            if text.strip():
                errors[int(path.parent.name)] = text
    root_cause = _ROOT_CAUSE.search(launcher_stderr)
    first = int(root_cause[1]) if root_cause else None
    return sorted(
        errors.items(), key=lambda item: (item[0] != first, "Traceback" not in item[1], item[0])
    )


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

    Each worker's standard error goes to a file of its own (``--redirects``), so that when a
    run fails the error names the failing rank and shows its traceback first, however much the
    other ranks printed. A run that exceeds ``timeout`` or is interrupted is stopped with all
    its workers (SIGTERM to the launcher, then SIGKILL to whatever is left).

    Raises:
        RuntimeError: naming ``script``, with the failing rank's error output and the end of
            the output, if the run fails or exceeds ``timeout`` s.
    """
    with tempfile.TemporaryDirectory(prefix="torchrun-logs-") as rank_logs:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc_per_node}",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            f"--log-dir={rank_logs}",
            "--redirects=2",  # each rank's stderr to its own file; stdout stays on the console
            str(script),
            *args,
        ]
        return _run(command, threads_per_process, timeout, script, Path(rank_logs))


def python_script(
    script: str | os.PathLike, *args: str, threads: int | None = None, timeout: float = 600
) -> str:
    """Run ``python script args`` (one process, ``threads`` CPU threads, default all) and return
    its output. Raises ``RuntimeError`` as :func:`torchrun`."""
    command = [sys.executable, "-u", str(script), *args]
    return _run(command, threads or os.cpu_count() or 1, timeout, script)


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
