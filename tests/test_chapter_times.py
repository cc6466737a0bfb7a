"""The README's chapter times are measurements: the genuine-data column is the published
records' wall time, and the fresh-clone column is held to the book build by tests/test_book.py."""

from __future__ import annotations

import json

import pytest
from chapter_times import parse_duration, readme_chapter_times
from conftest import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45 s", 45), ("2 min 5 s", 125), ("13.6 min", 816), ("3 min", 180), ("not measured", None)],
)
def test_durations_are_read_as_the_readme_writes_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5 minutes", "2 min 5", "fast"])
def test_a_duration_in_another_form_is_refused(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_readme_times_every_chapter():
    assert sorted(readme_chapter_times()) == [int(path.name[:2]) for path in CHAPTERS]


def test_readme_genuine_data_times_are_the_published_records():
    """Each figure of the genuine-data column is the wall time of that chapter's published
    ``cpu`` record, rounded as the README writes it; "not measured" only without a record."""
    readme = readme_chapter_times()
    for notebook in CHAPTERS:
        stated = readme[int(notebook.name[:2])]["genuine_cpu"]
        path = REPO_ROOT / "results" / "published" / f"{notebook.stem}.cpu.json"
        if not path.is_file():
            assert stated is None, f"README times {notebook.stem} on genuine data: no record"
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        measured = record.get("benchmark", {}).get("wall_seconds") or record["chapter_seconds"]
        assert stated is not None and abs(stated - measured) <= max(0.05 * measured, 5), (
            f"README states {stated} s for {notebook.stem} on genuine data; its published "
            f"record measured {measured:.0f} s ({path.name})"
        )


def test_readme_reference_minutes_are_the_published_records():
    """The reference-minutes column is each published record's benchmark figure (the wall time
    scaled by the machine's yardstick), "no yardstick" for records measured before it."""
    readme = readme_chapter_times()
    for notebook in CHAPTERS:
        stated = readme[int(notebook.name[:2])]["reference_minutes"]
        path = REPO_ROOT / "results" / "published" / f"{notebook.stem}.cpu.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        measured = record.get("benchmark", {}).get("reference_minutes")
        if measured is None:
            assert stated is None, f"README gives {notebook.stem} reference minutes: no yardstick"
        else:
            assert stated is not None and abs(stated - measured) <= 0.1, (
                f"README states {stated} reference minutes for {notebook.stem}; its record "
                f"says {measured}"
            )
