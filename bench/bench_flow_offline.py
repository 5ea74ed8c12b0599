"""The offline flow commands on a long export: `models score burst` and `models score flow-leak` on a
simulated district's year of minute rows (525,600 rows, 24 MB of CSV), each in a process of its
own: wall time and peak resident memory. What a technician needs free to check a district's year
on a gateway. Figures, never pass/fail (docs/benchmarks.md, bench_flow_offline)."""

from __future__ import annotations

from pathlib import Path

from bench.figures import Figure, cli_peak_rss, figure, run_alone
from water_edge.sim.district import District, write_csv

COLUMNS = ("--flow", "inflow_a", "--flow", "inflow_b", "--minus", "outflow", "--pressure", "pressure")
TARGET_S = "reference (a year of minute rows, 2 inflows less 1 outflow)"
TARGET_RSS = "reference (a year of minute rows; a 1 GB Pi runs the agent beside it)"


def run(tmpdir: Path) -> list[Figure]:
    path = tmpdir / "district-year-1min.csv"
    write_csv(District(seed=5).simulate(365, interval_min=1), str(path))
    common = ("--csv", str(path), *COLUMNS, "--timezone", "UTC")
    burst_s, burst_mib = cli_peak_rss("models", "score", "burst", *common)
    night_s, night_mib = cli_peak_rss("models", "score", "flow-leak", *common, "--calibrate-days", "14")
    return [
        figure("flow.cli_score_burst_year_1min", burst_s, "s", TARGET_S, digits=1),
        figure("flow.cli_score_burst_year_1min_peak_rss", burst_mib, "MiB", TARGET_RSS, digits=1),
        figure("flow.cli_score_flow_leak_year_1min", night_s, "s", TARGET_S, digits=1),
        figure("flow.cli_score_flow_leak_year_1min_peak_rss", night_mib, "MiB", TARGET_RSS, digits=1),
    ]


if __name__ == "__main__":
    run_alone(run)
