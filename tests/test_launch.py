"""`launch.torchrun` under faults (issue #28): a run past its timeout or interrupted leaves no
worker running, and a failing rank's own traceback comes first in the error, however much the
other ranks printed. Two CPU processes on 127.0.0.1; the worker scripts import nothing heavy."""

from __future__ import annotations

import signal
import textwrap
import time
from pathlib import Path

import pytest

from tutorial_lib.training import launch

SLEEPER = """
    import os, sys, time, pathlib
    out = pathlib.Path(sys.argv[1])
    (out / f"pid{os.environ['RANK']}").write_text(str(os.getpid()))
    print(f"rank {os.environ['RANK']} started", flush=True)
    time.sleep(600)
"""


def script(folder: Path, source: str) -> Path:
    path = folder / "worker.py"
    path.write_text(textwrap.dedent(source))
    return path


def running(pid: int) -> bool:
    """Whether ``pid`` is a living process (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def worker_pids(folder: Path) -> list[int]:
    return [int((folder / f"pid{rank}").read_text()) for rank in (0, 1)]


def assert_all_stopped(pids: list[int], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while any(running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if running(pid)], "workers outlived the launch"


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_a_timed_out_run_stops_its_workers_and_keeps_their_output(tmp_path):
    worker = script(tmp_path, SLEEPER)
    with pytest.raises(RuntimeError) as caught:
        launch.torchrun(worker, str(tmp_path), timeout=25)
    message = str(caught.value)
    assert f"{worker} did not finish within 25 s" in message
    assert "rank 0 started" in message and "rank 1 started" in message
    assert_all_stopped(worker_pids(tmp_path))


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
def test_an_interrupted_run_stops_its_workers(tmp_path):
    worker = script(tmp_path, SLEEPER)
    deadline = time.monotonic() + 90

    def interrupt_once_both_run(signum, frame):
        if all((tmp_path / f"pid{rank}").exists() for rank in (0, 1)) or (
            time.monotonic() > deadline
        ):
            raise KeyboardInterrupt  # what pressing stop in a notebook raises
        signal.setitimer(signal.ITIMER_REAL, 0.5)

    previous = signal.signal(signal.SIGALRM, interrupt_once_both_run)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(KeyboardInterrupt):
            launch.torchrun(worker, str(tmp_path), timeout=120)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert_all_stopped(worker_pids(tmp_path))


def test_the_failing_ranks_traceback_comes_first_however_much_others_print(tmp_path):
    worker = script(
        tmp_path,
        """
        import atexit, os, sys, time, pathlib
        out, rank = pathlib.Path(sys.argv[1]), int(os.environ["RANK"])

        def wait_for(name):
            deadline = time.monotonic() + 60
            while not (out / name).exists() and time.monotonic() < deadline:
                time.sleep(0.05)

        if rank == 1:
            # Python prints the traceback, then runs these (last registered first): rank 0
            # then buries the traceback under its own output before rank 1 exits.
            atexit.register(wait_for, "rank0-printed")
            atexit.register((out / "rank1-failed").touch)
            raise ValueError("rank 1 found a bad shard")
        wait_for("rank1-failed")
        for line in range(3000):
            print(f"rank 0 warning {line}: something noisy", file=sys.stderr)
        sys.stderr.flush()
        (out / "rank0-printed").touch()
        time.sleep(60)
        """,
    )
    with pytest.raises(RuntimeError) as caught:
        launch.torchrun(worker, str(tmp_path), timeout=120)
    message = str(caught.value)
    assert message.startswith(f"{worker} failed (exit 1):\n--- rank 1")
    traceback_at = message.index("ValueError: rank 1 found a bad shard")
    assert traceback_at < message.index("rank 0 warning"), "the root cause comes first"
