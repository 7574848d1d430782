"""harness.report.markdown: the markdown cells and tables the report is made of."""

import math

from harness.report import markdown as report_md


def test_cells_give_percentages_and_dashes_for_missing():
    assert report_md.pct(0.12345) == "12.35" and report_md.pct(None) == "-" and report_md.pct(math.nan) == "-"
    assert report_md.ci_cell(0.5, 0.4, 0.6) == "50.00 [40.0, 60.0]" and report_md.ci_cell(0.5) == "50.00"


def test_table_has_a_header_rule_and_one_line_per_row():
    text = report_md.table(["a", "b"], [["1", "2"], ["3", "4"]])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |", "| 3 | 4 |"]
