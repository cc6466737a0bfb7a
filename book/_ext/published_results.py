"""The ``published-results`` directive of the results page (``book/results.md``).

It reads the result records committed in ``results/published/*.json`` (copied there by
``benchmarks/run_chapter.py --publish``) and renders them as tables when the book builds: an
overview with one row per chapter and profile, then every figure of each record. Nothing on the
page is typed by hand; with no published record the page says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import Directive
from sphinx import addnodes
from sphinx.application import Sphinx

from tutorial_lib.results import PUBLISHED_DIR, unpublishable_reason
from tutorial_lib.runtime import PROFILES

REQUIRED_KEYS = ("chapter", "profile", "written_at", "device", "machine", "versions")
CONTEXT_KEYS = {*REQUIRED_KEYS, "benchmark", "chapter_seconds"}
GROUP_ORDER = ("data", "model", "metrics", "training", "inference")
SKIPPED_KEYS = {"location"}
"""Where a data set lay on the measuring machine says nothing to a reader; its source does."""

# A virtual environment's packages, absolute or relative to the checkout (".venv/lib/...").
_SITE_PACKAGES = re.compile(
    r"(?:(?<=[\s(])|^)(?![^\s()]*://)[^\s()]*?lib/python[\d.]+/site-packages/"
)
# A path starts after a space, quote or bracket, never inside a URL or a relative path.
_HOME = re.compile(r"(?<![\w.~/:-])(?:/(?:home|Users)/[^/\s]+/|/root/)")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~/:<>-])/(?:[\w.+@-]+/)+([\w.+@-]+)")


def load_published_records(folder: Path) -> list[dict[str, Any]]:
    """Return the records of ``folder/*.json`` in book order (chapter, then smoke, cpu, gpu).

    Returns an empty list when the folder does not exist or holds no record.

    Raises:
        ValueError: if a file is not JSON, lacks a field every record has, or holds a ``smoke``
            run or a run on the bundled samples (placed there by hand: ``run_chapter.py
            --publish`` refuses them), naming the file.
    """
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a result record: invalid JSON ({error})") from error
        missing = [
            key for key in REQUIRED_KEYS if not isinstance(record, dict) or key not in record
        ]
        if missing:
            raise ValueError(
                f"{path} is not a result record written by write_result_record: "
                f"it lacks {', '.join(missing)}"
            )
        why = unpublishable_reason(record)
        if why is not None:
            raise ValueError(
                f"{path} ran on {why}, so its figures are not a measurement and cannot appear "
                "on the results page; delete it, and publish a cpu or gpu run on real data with "
                "benchmarks/run_chapter.py --publish"
            )
        records.append(record)

    def book_order(record: dict[str, Any]) -> tuple[str, int, str]:
        profile = record["profile"]
        rank = PROFILES.index(profile) if profile in PROFILES else len(PROFILES)
        return record["chapter"], rank, profile

    return sorted(records, key=book_order)


def readable_path(text: str) -> str:
    """Return ``text`` with absolute paths of the measuring machine shortened: a virtual
    environment's packages become ``<site-packages>/``, the home folder ``~/`` and any other
    absolute path ``.../`` and its last component.

    This is not :func:`tutorial_lib.runtime.display_path`, on purpose: that function shortens
    one path of *this* machine by resolving it against this machine's folders (the data and
    results variables, the checkout, site-packages, the temporary and home folders). The text
    here was written on another machine, inside a sentence, and its folders do not exist where
    the book builds, so only the path's own shape can be used.
    """
    text = _SITE_PACKAGES.sub("<site-packages>/", text)
    text = _HOME.sub("~/", text)
    return _ABSOLUTE_PATH.sub(lambda match: f".../{match.group(1)}", text)


def format_value(key_path: tuple[str, ...], value: Any) -> str:
    """Return ``value`` as a reader sees it; the key path chooses the unit (``accuracy`` and
    ``f1`` as percentages, ``seconds`` in s, ``per_second`` as a rate, ``_ms`` in ms)."""
    names = " ".join(key_path).lower()
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and ("accuracy" in names or "f1" in names) and 0 <= value <= 1:
            return f"{value:.1%}"
        if "per_second" in names:
            return f"{value:,.0f} /s"
        if "seconds" in names:
            return f"{value:,.1f} s"
        if "_ms" in names:
            return f"{value:,.2f} ms"
        return f"{value:,}" if isinstance(value, int) else f"{value:.4g}"
    if isinstance(value, list):
        integers = all(isinstance(item, int) and not isinstance(item, bool) for item in value)
        if integers and "shape" in names:
            return " × ".join(str(item) for item in value)
        if not value:
            return "none"
        return "; ".join(format_value(key_path, item) for item in value)
    if isinstance(value, dict):  # e.g. one run of a learning-rate sweep
        return ", ".join(
            f"{key.replace('_', ' ')} {format_value((*key_path, key), item)}"
            for key, item in value.items()
        )
    if isinstance(value, str):
        return readable_path(value)
    return readable_path(json.dumps(value))


def flatten(key_path: tuple[str, ...], value: Any) -> list[tuple[tuple[str, ...], Any]]:
    """Return ``(key path, leaf value)`` pairs of a nested dict, in the record's own order."""
    if isinstance(value, dict):
        pairs = []
        for key, item in value.items():
            if key not in SKIPPED_KEYS:
                pairs.extend(flatten((*key_path, str(key)), item))
        return pairs
    return [(key_path, value)]


def label(key_path: tuple[str, ...]) -> str:
    """``("metrics", "test_accuracy")`` -> ``"metrics › test accuracy"``."""
    return " › ".join(part.replace("_", " ") for part in key_path)


def wall_seconds(record: dict[str, Any]) -> float | None:
    """The chapter's wall time: the benchmark's (kernel start included) when published with it,
    else the chapter's own ``chapter_seconds``, else ``None``."""
    benchmark = record.get("benchmark") or {}
    value = benchmark.get("wall_seconds", record.get("chapter_seconds"))
    return float(value) if isinstance(value, (int, float)) else None


def reference_minutes(record: dict[str, Any]) -> float | None:
    """The published run's wall time in reference minutes (benchmarks/run_chapter.py measured
    the machine's yardstick before the chapter), or ``None`` for a record without one."""
    benchmark = record.get("benchmark") or {}
    value = benchmark.get("reference_minutes")
    return float(value) if isinstance(value, (int, float)) else None


def time_summary(record: dict[str, Any]) -> str:
    """``"842.0 s (24 reference min)"``; ``"… (no yardstick)"`` for older records."""
    wall = wall_seconds(record)
    if wall is None:
        return "—"
    reference = reference_minutes(record)
    suffix = f"{reference:.0f} reference min" if reference is not None else "no yardstick"
    return f"{format_value(('seconds',), wall)} ({suffix})"


def data_summary(record: dict[str, Any]) -> str:
    """Source and split sizes, e.g. ``local copy: train 55,000 / test 10,000``."""
    data = record.get("data") or {}
    sizes = " / ".join(
        f"{split} {data[split]:,}"
        for split in ("train", "validation", "test")
        if isinstance(data.get(split), int)
    )
    source = str(data.get("source", "—"))
    return f"{source}: {sizes}" if sizes else source


def model_summary(record: dict[str, Any]) -> str:
    model = record.get("model") or {}
    name = str(model.get("name") or model.get("backbone") or "—")  # chapter 3 names a backbone
    parameters = model.get("parameters")
    return f"{name} ({parameters:,} parameters)" if isinstance(parameters, int) else name


def headline_accuracy(record: dict[str, Any]) -> str:
    """The record's test accuracy, or that of its best method (chapter 3's ``best_method``,
    chapter 6's ``best_lora``, among ``methods``), or ``—``."""
    metrics = record.get("metrics") or {}
    if isinstance(metrics.get("test_accuracy"), (int, float)):
        return format_value(("test_accuracy",), float(metrics["test_accuracy"]))
    methods = metrics.get("methods")
    best = metrics.get("best_method") or metrics.get("best_lora")
    if isinstance(methods, dict) and isinstance(methods.get(best), dict):
        for key, value in methods[best].items():
            if "test_accuracy" in key and isinstance(value, (int, float)):
                return f"{format_value((key,), float(value))} ({best})"
    return "—"


def machine_summary(record: dict[str, Any]) -> str:
    machine = record["machine"]
    if not isinstance(machine, dict):
        return readable_path(str(machine))
    parts = [str(machine.get("platform", "unknown platform"))]
    if machine.get("cpu_model"):
        parts.append(str(machine["cpu_model"]))
    elif machine.get("processor"):
        parts.append(str(machine["processor"]))
    if machine.get("cpu_capability"):
        bf16 = ", native bf16" if machine.get("native_bf16") else ""
        parts.append(f"kernels {machine['cpu_capability']}{bf16}")
    if machine.get("quantized_engine"):
        parts.append(f"int8 engine {machine['quantized_engine']}")
    if machine.get("cpu_count"):
        parts.append(f"{machine['cpu_count']} CPU cores")
    if machine.get("torch_threads"):
        parts.append(f"{machine['torch_threads']} torch threads")
    return ", ".join(parts)


def overview_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    """One row per record: chapter, profile, test accuracy, wall time, data, model, device, date."""
    rows = []
    for record in records:
        rows.append(
            [
                record["chapter"],
                record["profile"],
                headline_accuracy(record),
                time_summary(record),
                data_summary(record),
                model_summary(record),
                str(record["device"]),
                str(record["written_at"])[:10],
            ]
        )
    return rows


OVERVIEW_HEADER = [
    "Chapter",
    "Profile",
    "Test accuracy",
    "Wall time (reference)",
    "Data",
    "Model",
    "Device",
    "Measured",
]


def detail_rows(record: dict[str, Any]) -> list[tuple[str, str]]:
    """Every figure of one record as ``(label, value)``: where and when it was measured first,
    then data, model, metrics, training, inference and whatever else the chapter recorded."""
    versions = record["versions"]
    rows = [
        ("measured at (UTC)", str(record["written_at"])),
        ("device", str(record["device"])),
        ("machine", machine_summary(record)),
        (
            "library versions",
            ", ".join(f"{name} {version}" for name, version in versions.items())
            if isinstance(versions, dict)
            else str(versions),
        ),
    ]
    if wall_seconds(record) is not None:
        rows.append(("wall time", time_summary(record)))
    benchmark = record.get("benchmark") or {}
    yardstick = (benchmark.get("yardstick") or {}).get("tokens_per_second")
    if isinstance(yardstick, (int, float)):
        rows.append(("machine's yardstick", f"{yardstick:,.0f} tokens/s (reference: 3,600)"))
    if benchmark.get("command"):
        rows.append(("measured with", str(benchmark["command"])))
    groups = [key for key in GROUP_ORDER if key in record]
    groups += [key for key in record if key not in CONTEXT_KEYS and key not in GROUP_ORDER]
    for group in groups:
        for key_path, value in flatten((group,), record[group]):
            rows.append((label(key_path), format_value(key_path, value)))
    return rows


def _table(
    header: list[str],
    rows: list[list[nodes.Node | str]],
    title: nodes.Node | None = None,
    classes: tuple[str, ...] = (),
) -> nodes.table:
    table = nodes.table(classes=["published-results", *classes])
    if title is not None:
        table += title
    group = nodes.tgroup(cols=len(header))
    table += group
    for _ in header:
        group += nodes.colspec(colwidth=1)
    head = nodes.thead()
    group += head
    head += _row(header)
    body = nodes.tbody()
    group += body
    for row in rows:
        body += _row(row)
    return table


def _row(cells: list[nodes.Node | str]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        paragraph = nodes.paragraph()
        paragraph += cell if isinstance(cell, nodes.Node) else nodes.Text(cell)
        entry += paragraph
        row += entry
    return row


def _chapter_link(chapter: str, docname: str, known_docs: set[str]) -> nodes.Node:
    """A link titled with the chapter's own title, or the plain name when no such page exists."""
    target = f"chapters/{chapter}"
    if target not in known_docs:
        return nodes.Text(chapter)
    reference = addnodes.pending_xref(
        "",
        refdomain="std",
        reftype="doc",
        reftarget=f"/{target}",
        refexplicit=False,
        refwarn=True,
        refdoc=docname,
    )
    reference += nodes.inline("", chapter)
    return reference


def _no_records_paragraph() -> nodes.paragraph:
    paragraph = nodes.paragraph(classes=["no-published-results"])
    paragraph += nodes.Text("No result record has been published yet: ")
    paragraph += nodes.literal(text=PUBLISHED_DIR.as_posix() + "/")
    paragraph += nodes.Text(" holds no JSON file, so there are no measured figures to show. ")
    paragraph += nodes.Text("Run a chapter with ")
    paragraph += nodes.literal(text="benchmarks/run_chapter.py --publish")
    paragraph += nodes.Text(" to add one.")
    return paragraph


class PublishedResults(Directive):
    """Render ``results/published/*.json`` (or say that there is none)."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        env = self.state.document.settings.env
        folder = Path(env.srcdir) / PUBLISHED_DIR
        env.note_dependency(str(folder))
        try:
            records = load_published_records(folder)
        except ValueError as error:
            raise self.error(str(error)) from error
        for path in folder.glob("*.json"):
            env.note_dependency(str(path))
        if not records:
            return [_no_records_paragraph()]
        known_docs = set(env.found_docs)
        overview = []
        for row in overview_rows(records):
            overview.append([_chapter_link(row[0], env.docname, known_docs), *row[1:]])
        output: list[nodes.Node] = [
            _table(OVERVIEW_HEADER, overview, classes=("results-overview",))
        ]
        for record in records:
            title = nodes.title()
            title += _chapter_link(record["chapter"], env.docname, known_docs)
            measured = str(record["written_at"])[:10]
            title += nodes.Text(f" — profile {record['profile']}, measured {measured}")
            rows = [
                # a command is shown as code, so that "--profile" is not typeset as a dash
                [name, nodes.literal(text=value) if name == "measured with" else value]
                for name, value in detail_rows(record)
            ]
            output.append(
                _table(["Figure", "Value"], rows, title=title, classes=("results-record",))
            )
        return output


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("published-results", PublishedResults)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
