"""One result record per chapter run: the figures a benchmark or a later chapter quotes."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tutorial_lib.data.containers import SOURCE_SAMPLE, source_kind
from tutorial_lib.files import atomic_write_text
from tutorial_lib.runtime import (
    RESULTS_DIR_ENV,
    _configured_or_checkout_folder,
    get_device,
    get_profile,
    package_version,
    project_root,
)

PUBLISHED_DIR = Path("results") / "published"
"""Where published result records live, relative to the top of the checkout: written by
``benchmarks/run_chapter.py --publish``, read by the book's results page."""


REFERENCE_TOKENS_PER_SECOND = 3_600
"""The yardstick of the reference machine
(:func:`tutorial_lib.llm.pretraining.measure_yardstick`): chapter 8's ``cpu`` GPT trained at
3,610 tokens/s on the 2-core AVX2 AMD EPYC of 2026-12-07, the slowest machine this book has run
on. A chapter's ``cpu`` run is held to 30 reference minutes."""

REFERENCE_MINUTES_TARGET = 30
"""The most reference minutes a chapter's ``cpu`` run may take: one sitting for a reader."""


def reference_minutes(seconds: float, tokens_per_second: float) -> float:
    """Return ``seconds`` measured on a machine whose yardstick is ``tokens_per_second`` as
    minutes on the reference machine (:data:`REFERENCE_TOKENS_PER_SECOND`): a machine twice
    as fast turns 10 measured minutes into 20 reference minutes.

    Raises:
        ValueError: if either number is not finite, ``seconds`` is negative or the yardstick
            is not positive.
    """
    import math

    if not (math.isfinite(seconds) and math.isfinite(tokens_per_second)):
        raise ValueError(f"seconds and the yardstick must be finite, not {seconds}, "
                         f"{tokens_per_second}")  # fmt: skip
    if seconds < 0 or tokens_per_second <= 0:
        raise ValueError(
            f"seconds must be at least 0 and the yardstick positive, not {seconds}, "
            f"{tokens_per_second}"
        )
    return seconds / 60 * tokens_per_second / REFERENCE_TOKENS_PER_SECOND


def cpu_model() -> str:
    """Return the CPU's model name as the operating system reports it (``/proc/cpuinfo`` on
    Linux), else :func:`platform.processor`, else ``"unknown"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_details() -> dict[str, Any]:
    """Return what says where a record ran: the platform, the CPU model and the instruction set
    PyTorch's CPU kernels use (``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX2``,
    ``AVX512``), whether bf16 is native, the quantized engine, cores and threads."""
    from tutorial_lib.runtime import cpu_has_native_bf16

    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_model": cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": cpu_has_native_bf16(),
        "quantized_engine": torch.backends.quantized.engine,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }


def results_dir() -> Path:
    """Return the folder for result records: ``TUTORIAL_RESULTS_DIR`` if set, else ``results/``
    at the top of the checkout, else ``./results``."""
    return _configured_or_checkout_folder(RESULTS_DIR_ENV, "results")


def _versions() -> dict[str, str]:
    packages = ("torch", "torchvision", "transformers", "scikit-learn", "numpy")
    return {package: package_version(package) for package in packages}


def write_result_record(chapter: str, record: dict[str, Any]) -> Path:
    """Write ``record`` plus the run's context (profile, device, machine, versions, time) as
    ``<results_dir>/<chapter>.<profile>.json`` and return the path.

    ``record`` should hold the chapter's data source and sizes, model, metrics and timings.

    Raises:
        TypeError: if ``record`` holds something JSON cannot represent.
    """
    device = get_device()
    full = {
        "chapter": chapter,
        "profile": get_profile(),
        "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "machine": machine_details(),
        "versions": _versions(),
        **record,
    }
    path = results_dir() / f"{chapter}.{full['profile']}.json"
    return atomic_write_text(path, json.dumps(full, indent=2, sort_keys=False) + "\n")


def read_result_record(chapter: str, profile: str | None = None) -> dict[str, Any] | None:
    """Return the record a chapter wrote under ``profile`` (default: the current one), or
    ``None`` when there is none.

    Raises:
        ValueError: naming the file, if it is not JSON or not a JSON object (a record written by
            something else, or edited by hand).
    """
    path = results_dir() / f"{chapter}.{profile or get_profile()}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not a result record: invalid JSON ({error}); delete it and run the "
            f"chapter {chapter} again to write it afresh"
        ) from None
    if not isinstance(record, dict):
        raise ValueError(
            f"{path} is not a result record: it holds a JSON {type(record).__name__}, not an "
            f"object; delete it and run the chapter {chapter} again"
        )
    return record


def read_published_record(chapter: str, profile: str) -> dict[str, Any] | None:
    """Return the published record of ``chapter`` under ``profile`` (``results/published/``
    of this checkout, measured by ``benchmarks/run_chapter.py --publish``), or ``None`` when
    there is none — e.g. in a notebook opened alone, away from a checkout.

    Raises:
        ValueError: naming the file, if it is not a JSON object.
    """
    root = project_root()
    path = (root or Path.cwd()) / PUBLISHED_DIR / f"{chapter}.{profile}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a published record: invalid JSON ({error})") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} is not a published record: not a JSON object")
    return record


def published_time(record: dict[str, Any] | None) -> str:
    """Return one sentence on how long a chapter's published run took: its measured minutes,
    the machine's yardstick and the reference minutes they make, or what is missing.

    Raises:
        ValueError: if the record's benchmark block holds a yardstick but no wall time.
    """
    if record is None:
        return (
            "This chapter has no published record in this checkout,\n"
            "so its time on the reference machine is not known here."
        )
    benchmark = record.get("benchmark") or {}
    seconds = benchmark.get("wall_seconds", record.get("chapter_seconds"))
    date = str(record.get("written_at", ""))[:10] or "an unknown date"
    profile = record.get("profile", "?")
    yardstick = (benchmark.get("yardstick") or {}).get("tokens_per_second")
    if seconds is None:
        if yardstick is not None:
            raise ValueError("a published record with a yardstick must hold its wall time")
        return f"The published {profile} record ({date}) holds no time."
    measured = seconds / 60
    if yardstick is None:
        return (
            f"Its {profile} run took {measured:.0f} min when it was published ({date}),\n"
            "on a machine measured before the book had a yardstick: no reference minutes yet."
        )
    reference = reference_minutes(seconds, yardstick)
    return (
        f"Its {profile} run took {reference:.0f} reference minutes when it was published "
        f"({date}):\n{measured:.0f} min on a machine whose yardstick is {yardstick:,.0f} "
        f"tokens/s (the reference: {REFERENCE_TOKENS_PER_SECOND:,});\n"
        "a machine twice as fast takes half as long."
    )


def unpublishable_reason(record: dict[str, Any]) -> str | None:
    """Return why ``record``'s figures must not reach the results page, or ``None``.

    A ``smoke`` run only proves that the code runs, and a run on the bundled samples is not
    representative: the reason is ``"the smoke profile"`` or ``"the bundled sample data"``.
    The data sources are recognised by their kind, whether a record names the kind or a whole
    :meth:`~tutorial_lib.data.DataSource.describe` line, at any depth of its ``data``.
    """
    if record.get("profile") == "smoke":
        return "the smoke profile"
    if any(source_kind(source) == SOURCE_SAMPLE for source in _data_sources(record.get("data"))):
        return "the bundled sample data"
    return None


def _data_sources(value: Any) -> list[str]:
    """Every ``source`` string in a record's ``data`` (one per data set a chapter used)."""
    if isinstance(value, dict):
        found = [value["source"]] if isinstance(value.get("source"), str) else []
        for key, item in value.items():
            if key != "source":
                found.extend(_data_sources(item))
        return found
    if isinstance(value, list):
        return [source for item in value for source in _data_sources(item)]
    return []
