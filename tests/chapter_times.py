"""The README's table of chapter times, read back so that tests can hold it to measurements.

The table sits under the marker ``<!-- chapter-times -->`` in README.md: one row per chapter
(its number), the time of ``make book`` on a fresh clone (bundled samples, offline) and the time
of the ``cpu`` run on the genuine data that the chapter's published record holds.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "<!-- chapter-times -->"
_DURATION = re.compile(r"^(?:(?P<minutes>\d+(?:\.\d+)?) min)?\s*(?:(?P<seconds>\d+) s)?$")


def parse_duration(text: str) -> float | None:
    """Return the seconds that ``"2 min 5 s"``, ``"13.6 min"`` or ``"45 s"`` state.

    Returns None for ``"not measured"``.

    Raises:
        ValueError: for any other text.
    """
    text = text.strip()
    if text == "not measured":
        return None
    match = _DURATION.match(text)
    if not text or match is None or not any(match.groupdict().values()):
        raise ValueError(f"not a duration like '2 min 5 s', '13.6 min' or '45 s': {text!r}")
    return 60 * float(match["minutes"] or 0) + float(match["seconds"] or 0)


def parse_reference_minutes(text: str) -> float | None:
    """Return the minutes that ``"28.1"`` states, or None for ``"no yardstick"``.

    Raises:
        ValueError: for any other text.
    """
    text = text.strip()
    if text == "no yardstick":
        return None
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"not reference minutes like '28.1' or 'no yardstick': {text!r}") from None


def readme_chapter_times(readme: Path = REPO_ROOT / "README.md") -> dict[int, dict]:
    """Return ``{chapter number: {"fresh_clone": seconds, "genuine_cpu": seconds,
    "reference_minutes": minutes or None}}`` (None where the record has no yardstick).

    Raises:
        ValueError: when the README has no table under the marker.
    """
    text = readme.read_text(encoding="utf-8")
    if MARKER not in text:
        raise ValueError(f"README.md has no {MARKER} table")
    rows = {}
    for line in text.split(MARKER, 1)[1].lstrip().splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if cells[0].isdigit():
            rows[int(cells[0])] = {
                "fresh_clone": parse_duration(cells[2]),
                "genuine_cpu": parse_duration(cells[3]),
                "reference_minutes": parse_reference_minutes(cells[4]),
            }
    if not rows:
        raise ValueError(f"the table under {MARKER} in README.md has no chapter row")
    return rows
