"""tutorial_lib.plots.show_source: the package's code shown on the page, highlighted."""

import inspect
from pathlib import Path

import pytest

from tutorial_lib import conv, plots
from tutorial_lib.compress import Int8Linear


def test_a_function_is_shown_as_a_python_code_block_of_its_exact_source():
    listing = plots.show_source(conv.cross_correlate2d_loops)
    markdown = listing._repr_markdown_()
    assert markdown.startswith("```python\ndef cross_correlate2d_loops(")
    assert markdown.endswith("\n```")
    assert repr(listing) == listing.code
    assert listing.code == inspect.getsource(conv.cross_correlate2d_loops).rstrip()


def test_a_method_is_dedented_and_several_objects_share_one_block():
    listing = plots.show_source(Int8Linear.forward, conv.cross_correlate2d_im2col)
    assert listing.code.startswith("def forward(")
    assert "\n\n\ndef cross_correlate2d_im2col(" in listing.code
    assert listing._repr_markdown_().count("```") == 2


def test_a_path_shows_the_file_and_backticks_inside_cannot_close_the_block(tmp_path: Path):
    script = tmp_path / "script.py"
    script.write_text('print("```")\nx = 1\n', encoding="utf-8")
    markdown = plots.show_source(script)._repr_markdown_()
    assert markdown.startswith("````python\n") and markdown.endswith("\n````")
    assert 'print("```")\nx = 1' in markdown


def test_what_has_no_source_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="at least one"):
        plots.show_source()
    with pytest.raises(TypeError, match="not 3"):
        plots.show_source(3)
    with pytest.raises(FileNotFoundError):
        plots.show_source(Path("no/such/script.py"))
