"""tutorial_lib.plots.markdown_table: the tables chapters display instead of padded strings."""

import pytest
from IPython.display import Markdown

from tutorial_lib.plots import markdown_table


def test_table_has_header_rule_and_one_line_per_row():
    table = markdown_table(
        [["conv1", 320], ["a long layer name, never cut", 18_496]], ["layer", "n"]
    )
    assert isinstance(table, Markdown)
    assert table.data.splitlines() == [
        "| layer | n |",
        "| :--- | ---: |",
        "| conv1 | 320 |",
        "| a long layer name, never cut | 18496 |",
    ]
    assert repr(table) == table.data  # readable outside a notebook too


def test_alignment_can_be_given_and_pipes_are_escaped():
    table = markdown_table([["a|b", "1.5 s"]], ["name", "time"], align="lr")
    assert table.data.splitlines()[1:] == ["| :--- | ---: |", "| a\\|b | 1.5 s |"]


def test_dollar_signs_are_escaped_so_the_book_does_not_typeset_them_as_math():
    table = markdown_table([["$TUTORIAL_DATA_DIR/x", "$5"]], ["where", "cost"]).data
    assert table.splitlines()[-1] == "| \\$TUTORIAL_DATA_DIR/x | \\$5 |"


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="row 1 has 1 cells but there are 2 headers"):
        markdown_table([["a", 1], ["b"]], ["name", "n"])
    with pytest.raises(ValueError, match="align"):
        markdown_table([["a", 1]], ["name", "n"], align="lc")
