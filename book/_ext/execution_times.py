"""Write how long each notebook took to execute in this build to ``execution_times.json``.

myst-nb measures every notebook it executes; this extension keeps those measurements beside the
site (``_build/html/execution_times.json``: document name to seconds and success), so that a
build's chapter times are read from the build rather than typed. The book test compares the
README's timing table with the file of the build it makes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from myst_nb.sphinx_ import NbMetadataCollector
from sphinx.application import Sphinx

TIMES_FILE = "execution_times.json"


def write_execution_times(app: Sphinx, exception: Exception | None) -> None:
    """Write ``{docname: {"seconds": ..., "succeeded": ...}}`` for every executed notebook."""
    if exception is not None:
        return
    times = {
        docname: {
            "seconds": data["exec_data"]["runtime"],
            "succeeded": data["exec_data"]["succeeded"],
        }
        for docname, data in sorted(NbMetadataCollector.get_doc_data(app.env).items())
        if data.get("exec_data")
    }
    (Path(app.outdir) / TIMES_FILE).write_text(json.dumps(times, indent=2) + "\n", "utf-8")


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("build-finished", write_execution_times)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
