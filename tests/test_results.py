"""Result records under concurrent writers and failed writes (issue 10)."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from tutorial_lib import results

WRITERS, WRITES_EACH = 4, 5


def _write_records(writer: int, results_folder: str, start) -> None:
    import os

    os.environ[results.RESULTS_DIR_ENV] = results_folder
    start.wait(timeout=30)  # all writers begin together, so their writes overlap
    for attempt in range(WRITES_EACH):
        results.write_result_record(
            "02_mnist_cnn", {"writer": writer, "attempt": attempt, "padding": "x" * 2_000_000}
        )


def test_concurrent_writers_of_one_record_never_crash_or_leave_temporary_files(tmp_path):
    # Four processes rewrite the same record; with a fixed temporary name they renamed each
    # other's half-written files away (FileNotFoundError) and left .part files behind.
    context = multiprocessing.get_context("fork")
    start = context.Barrier(WRITERS)
    writers = [
        context.Process(target=_write_records, args=(k, str(tmp_path), start))
        for k in range(WRITERS)
    ]
    for process in writers:
        process.start()
    for process in writers:
        process.join(timeout=60)
    assert [process.exitcode for process in writers] == [0] * WRITERS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["02_mnist_cnn.smoke.json"]
    record = json.loads((tmp_path / "02_mnist_cnn.smoke.json").read_text(encoding="utf-8"))
    assert record["attempt"] == WRITES_EACH - 1 and len(record["padding"]) == 2_000_000


def test_a_record_json_cannot_hold_leaves_the_earlier_record_and_no_temporary_file(
    tmp_path, monkeypatch
):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    path = results.write_result_record("02_mnist_cnn", {"accuracy": 0.5})
    with pytest.raises(TypeError):
        results.write_result_record("02_mnist_cnn", {"accuracy": object()})
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert json.loads(path.read_text(encoding="utf-8"))["accuracy"] == 0.5


@pytest.mark.parametrize(
    "content", [b"{not json", b"[1, 2]", b"\xff\xfe not UTF-8"], ids=["cut", "list", "binary"]
)
def test_a_malformed_result_record_is_named(tmp_path, monkeypatch, content):
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    path = tmp_path / "02_mnist_cnn.cpu.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is not a result record") as caught:
        results.read_result_record("02_mnist_cnn", "cpu")
    assert str(path) in str(caught.value)
