"""The one text-table formatter (`elastic.tables`): alignment, widths, bad rows."""

import pytest

from elastic.tables import format_table


def test_columns_take_the_widest_cell_and_align():
    text = format_table(["id", "MFLOPs", "description"], [["0", "0.76", "vit-ti"], ["12", "10.57", "a -> b"]])
    assert text.splitlines() == [
        "id  MFLOPs  description",
        " 0    0.76  vit-ti",
        "12   10.57  a -> b",
    ]


def test_explicit_alignment_and_no_trailing_spaces():
    text = format_table(["kind", "P", "x"], [["anchor", "*", "1"], ["stitch", "", "22"]], align=["<", "<", ">"])
    assert text.splitlines() == ["kind    P   x", "anchor  *   1", "stitch     22"]
    assert all(line == line.rstrip() for line in text.splitlines())


def test_bad_rows_and_alignments_are_refused():
    with pytest.raises(ValueError, match="cells"):
        format_table(["a", "b"], [["1"]])
    with pytest.raises(ValueError, match="align"):
        format_table(["a", "b"], [["1", "2"]], align=["<"])
