"""`core.export_layout` as the readers of `models score flow-leak` and `burst` meet it: the separator
and where the table begins, on an export as Excel writes it. (`score pump`: test_pump_reading.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import edge_agent
from water_edge.sim.district import District, write_csv

pytestmark = pytest.mark.slow


def test_flow_leak_reads_a_german_unicode_text_export_with_title_lines_and_a_units_row(
    tmp_path: Path,
) -> None:
    """Tab-separated with decimal commas, every line of data has as many commas as tabs: the
    separator counted on a line was ',', no data row was found, and the file was refused because
    its title had no separator. It reads as the plain file."""
    plain = tmp_path / "plain.csv"
    columns = District(3, mean_demand_m3h=300.0).simulate(20)
    write_csv(columns, str(plain), time_format="%d.%m.%Y %H:%M")
    german = tmp_path / "german.txt"
    write_csv(columns, str(german), sep="\t", decimal=",", time_format="%d.%m.%Y %H:%M")
    header, *rows = german.read_text().splitlines()
    assert rows[0].count("\t") == rows[0].count(",")
    lines = ["Messstelle DMA Nord", "Zeitraum 01.01.2024 - 20.01.2024", "", header, "\tm³/h\tm³/h\tm³/h\tbar"]
    german.write_text("\r\n".join([*lines, *rows]) + "\r\n", encoding="utf-16")
    args = ["--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--timezone", "UTC"]
    want = edge_agent("models", "score", "flow-leak", "--csv", str(plain), *args, "--calibrate-days", "7")
    got = edge_agent("models", "score", "flow-leak", "--csv", str(german), *args, "--calibrate-days", "7")
    assert want.returncode == 0, want.stderr
    assert got.returncode == 0, got.stderr
    assert got.stdout == want.stdout
    assert "skipping 2 line(s) before the header" in got.stderr
    assert "skipping 1 row(s) under the header" in got.stderr
