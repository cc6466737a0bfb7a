"""The bibliography parses, and every key a chapter or book page cites is in it (a fast check;
the book build would fail on either, but only after executing every chapter)."""

from __future__ import annotations

import re

from conftest import REPO_ROOT
from pybtex.database import parse_file


def test_every_cited_key_is_in_the_bibliography():
    entries = parse_file(str(REPO_ROOT / "book" / "references.bib")).entries
    pages = [*(REPO_ROOT / "chapters").glob("*.py"), *(REPO_ROOT / "book").glob("*.md")]
    cited = {
        key.strip()
        for page in pages
        for keys in re.findall(r"\{cite:[tp]\}`([^`]+)`", page.read_text(encoding="utf-8"))
        for key in keys.split(",")
    }
    assert cited, "no citation found: the pattern no longer matches the pages"
    assert not sorted(cited - set(entries)), "cited but not in book/references.bib"
