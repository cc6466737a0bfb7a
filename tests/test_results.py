"""Result records under concurrent writers and failed writes (issue 10)."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing

import pytest
import torch
from conftest import REPO_ROOT

from tutorial_lib import results
from tutorial_lib.data.containers import SOURCE_SAMPLE, source_kind

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


def _load_module(name: str, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


published_results = _load_module(
    "published_results", REPO_ROOT / "book" / "_ext" / "published_results.py"
)
run_chapter = _load_module("run_chapter", REPO_ROOT / "benchmarks" / "run_chapter.py")


def _record(profile: str = "cpu", source: str = "local copy") -> dict:
    return {
        "chapter": "07_scaling_out",
        "profile": profile,
        "written_at": "2026-11-30T10:00:00+00:00",
        "device": "cpu",
        "machine": {"platform": "Linux", "cpu_count": 2},
        "versions": {"torch": "2.14.1"},
        "data": {"source": source, "train": 800},
        "metrics": {"test_accuracy": 0.9},
    }


SAMPLE_SOURCES = {
    "kind": "bundled sample",
    "describe line": "MNIST: bundled sample at <site-packages>/tutorial_lib/samples/mnist.npz "
    "(train 800, test 200)",
}


@pytest.mark.parametrize("source", SAMPLE_SOURCES.values(), ids=SAMPLE_SOURCES.keys())
def test_sample_runs_never_reach_the_results_page_however_the_source_is_written(tmp_path, source):
    command = "python benchmarks/run_chapter.py chapters/07_scaling_out.ipynb --profile cpu"
    with pytest.raises(ValueError, match="bundled sample data"):
        run_chapter.publish_record(_record(source=source), {"command": command}, folder=tmp_path)
    assert not list(tmp_path.iterdir())
    nested = _record()
    nested["data"] = {"images": {"source": source}, "texts": {"source": "local copy"}}
    with pytest.raises(ValueError, match="bundled sample data"):
        run_chapter.publish_record(nested, {"command": command}, folder=tmp_path)
    # a record placed in results/published/ by hand is refused by the page's directive too
    (tmp_path / "07_scaling_out.cpu.json").write_text(json.dumps(_record(source=source)))
    with pytest.raises(ValueError, match=r"07_scaling_out\.cpu\.json ran on the bundled sample"):
        published_results.load_published_records(tmp_path)


def test_the_results_page_refuses_a_hand_placed_smoke_record_and_keeps_real_ones(tmp_path):
    real = "MNIST: local copy at $TUTORIAL_DATA_DIR/MNIST/raw (train 60,000, test 10,000)"
    (tmp_path / "07_scaling_out.cpu.json").write_text(json.dumps(_record(source=real)))
    assert len(published_results.load_published_records(tmp_path)) == 1
    (tmp_path / "07_scaling_out.smoke.json").write_text(json.dumps(_record(profile="smoke")))
    with pytest.raises(ValueError, match=r"07_scaling_out\.smoke\.json ran on the smoke profile"):
        published_results.load_published_records(tmp_path)


def test_source_kind_reads_kinds_and_describe_lines_alike():
    assert source_kind("bundled sample") == SOURCE_SAMPLE
    assert source_kind(SAMPLE_SOURCES["describe line"]) == SOURCE_SAMPLE
    assert source_kind("IMDB: official download at ~/data/aclImdb (train 25,000, test 25,000)") == (
        "official download"
    )
    assert source_kind("my own scrape of reviews") is None


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


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def test_no_published_record_holds_a_machine_path():
    # the measuring machine's folders mean nothing to a reader: records store the display form
    # ($TUTORIAL_DATA_DIR/..., paths inside the checkout), written by runtime.display_path
    published = sorted((REPO_ROOT / results.PUBLISHED_DIR).glob("*.json"))
    assert published, "no published record found"
    for path in published:
        record = json.loads(path.read_text(encoding="utf-8"))
        record.pop("benchmark", None)  # the command that measured it, quoted as run
        absolute = [s for s in _strings(record) if s.startswith(("/", "~")) or ":\\" in s]
        assert not absolute, f"{path.name} holds machine paths: {absolute}"


def test_a_published_record_is_read_from_the_checkout():
    record = results.read_published_record("02_mnist_cnn", "cpu")
    assert record is not None and record["chapter"] == "02_mnist_cnn"
    assert results.read_published_record("02_mnist_cnn", "no-such-profile") is None


def test_reference_minutes_scale_by_the_yardstick():
    # the reference machine itself, a machine twice as fast, and one half as fast
    assert results.reference_minutes(600, results.REFERENCE_TOKENS_PER_SECOND) == 10
    assert results.reference_minutes(600, 2 * results.REFERENCE_TOKENS_PER_SECOND) == 20
    assert results.reference_minutes(600, results.REFERENCE_TOKENS_PER_SECOND / 2) == 5
    for seconds, yardstick in ((-1, 3600), (60, 0), (float("nan"), 3600), (60, float("inf"))):
        with pytest.raises(ValueError, match="seconds"):
            results.reference_minutes(seconds, yardstick)


def test_records_say_which_cpu_and_kernels_they_ran_on(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTORIAL_RESULTS_DIR", str(tmp_path))
    path = results.write_result_record("00_test", {"metrics": {}})
    machine = json.loads(path.read_text())["machine"]
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert machine["quantized_engine"] == torch.backends.quantized.engine
    assert isinstance(machine["native_bf16"], bool)
    assert machine["cpu_model"] and machine["cpu_model"] != "unknown"


def test_a_chapter_states_its_published_time_in_reference_minutes():
    record = {
        "profile": "cpu",
        "written_at": "2026-12-07T10:00:00+00:00",
        "benchmark": {"wall_seconds": 900.0, "yardstick": {"tokens_per_second": 7_200.0}},
    }
    line = results.published_time(record)
    assert "30 reference minutes" in line and "15 min" in line and "7,200" in line
    for text in (line, results.published_time(None)):  # printed in the book's code column
        assert max(len(part) for part in text.splitlines()) <= 90, text
    old = {"profile": "cpu", "written_at": "2026-12-01", "benchmark": {"wall_seconds": 600}}
    assert "10 min" in results.published_time(old)
    assert "no reference minutes" in results.published_time(old)
    assert max(len(part) for part in results.published_time(old).splitlines()) <= 90
    assert "no published record" in results.published_time(None)
    with pytest.raises(ValueError, match="wall time"):
        results.published_time({"benchmark": {"yardstick": {"tokens_per_second": 1.0}}})
