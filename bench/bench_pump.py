"""Pump anomaly benchmark: scoring cost per sample per pump, calibration on 24 h of 1 s data (time,
and the peak of what it allocates: numpy reports its buffers to tracemalloc), and the offline
short-calibration path (the steady detector, and the whole CLI on a 20-minute rig run)."""

from __future__ import annotations

import contextlib
import io
import time
import tracemalloc
from pathlib import Path

import numpy as np

from bench.figures import cli_peak_rss
from water_edge.agent.cli import main as cli
from water_edge.models.pump import steady
from water_edge.models.pump.detector import calibrate, repeat_runs, score, score_latest, select
from water_edge.models.runtime import load_model
from water_edge.models.train.pump_eval_short import write_csv
from water_edge.models.train.pump_sim import SIGNALS, Scenario, simulate
from water_edge.sim.rig import simulate_run

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "pump" / "pump_scorer.json"


def run(tmpdir: Path) -> list[dict[str, object]]:
    model = load_model(MANIFEST)
    window = int(model.manifest.extra.get("window", 32))
    x, _ = simulate(Scenario(seed=3, hours=24.0, fault=None))
    names = list(SIGNALS)
    tracemalloc.start()
    t0 = time.perf_counter()
    cal = calibrate(x, names, model, window=window, model_version=model.version)
    calib_s = time.perf_counter() - t0
    calib_peak_mib = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()

    # Streaming, as the agent runs it: one sample at a time, its runs of identical readings carried
    # on from the sample before, then the last row of the last `window` rows scored.
    rows = select(x[:2000], names, cal)
    runs, state = np.empty(rows.shape, dtype=np.float32), None
    t0 = time.perf_counter()
    for i in range(len(rows)):
        run, state = repeat_runs(rows[i : i + 1], state)
        runs[i] = run[0]
        if i >= window:
            score_latest(rows[i - window + 1 : i + 1], cal, model, runs[i - window + 1 : i + 1])
    stream_ms = (time.perf_counter() - t0) * 1000 / (len(rows) - window)

    t0 = time.perf_counter()
    score(select(x[:36000], names, cal), cal, model)
    batch_ms = (time.perf_counter() - t0) * 1000 / 36000

    rig, _, _ = simulate_run(11, 1200, "outlet_valve", onset_s=700, ramp_s=60, duration_s=300)
    t0 = time.perf_counter()
    steady.detect(steady.fit(rig[:400]), rig, 400)
    steady_ms = (time.perf_counter() - t0) * 1000 / len(rig)
    path = write_csv(tmpdir / "rig.csv", rig, 11)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        cli(["models", "score", "pump", "--csv", str(path), "--calibrate-rows", "400"])
    cli_s = time.perf_counter() - t0
    week = _write_week(tmpdir / "week.csv", x)
    week_mb = week.stat().st_size / 1e6
    week_rss_mib = _peak_rss(week, "--calibrate-rows", "86400")
    explained_rss_mib = _peak_rss(week, "--calibrate-rows", "86400", "--explain")
    short_rss_mib = _peak_rss(week, "--calibrate-rows", "400")
    short_explained_rss_mib = _peak_rss(week, "--calibrate-rows", "400", "--explain")
    return [
        {
            "name": "pump.cli_score_week_1s_peak_rss",
            "value": round(week_rss_mib, 1),
            "unit": "MiB",
            "target": f"reference (a week at 1 s, {week_mb:.0f} MB of CSV, 1 day calibration; whole process)",
        },
        {
            "name": "pump.cli_score_week_1s_explain_peak_rss",
            "value": round(explained_rss_mib, 1),
            "unit": "MiB",
            "target": "reference (the same with --explain)",
        },
        {
            "name": "pump.cli_score_week_1s_400_rows_peak_rss",
            "value": round(short_rss_mib, 1),
            "unit": "MiB",
            "target": "reference (the same, 400 calibration rows: the steady detector, most rows marked)",
        },
        {
            "name": "pump.cli_score_week_1s_400_rows_explain_peak_rss",
            "value": round(short_explained_rss_mib, 1),
            "unit": "MiB",
            "target": "reference (the same with --explain)",
        },
        {
            "name": "pump.steady_fit_and_score_per_row",
            "value": round(steady_ms, 4),
            "unit": "ms",
            "target": "reference (1200-row rig run, 400 calibration rows)",
        },
        {
            "name": "pump.cli_score_rig_run_1200_rows",
            "value": round(cli_s, 3),
            "unit": "s",
            "target": "reference (models score pump --csv, model load included)",
        },
        {
            "name": "pump.score_streaming_per_sample",
            "value": round(stream_ms, 3),
            "unit": "ms",
            "target": "<= 1 ms per sample per pump",
        },
        {
            "name": "pump.score_batch_per_sample",
            "value": round(batch_ms, 4),
            "unit": "ms",
            "target": "<= 1 ms per sample per pump",
        },
        {"name": "pump.calibrate_24h_1s", "value": round(calib_s, 2), "unit": "s", "target": "<= 60 s"},
        {
            "name": "pump.calibrate_24h_1s_peak_alloc",
            "value": round(calib_peak_mib, 1),
            "unit": "MiB",
            "target": "fits a Pi beside the agent",
        },
    ]


def _write_week(path: Path, day: np.ndarray) -> Path:
    """A week of 1 s rows: the simulated day seven times."""
    start = np.datetime64("2024-03-04T00:00:00")
    with path.open("w", encoding="utf-8") as fh:
        fh.write(",".join(["time", *SIGNALS]) + "\n")
        for d in range(7):
            stamps = (start + np.arange(d * len(day), (d + 1) * len(day)).astype("timedelta64[s]")).astype(
                str
            )
            fh.write("".join(f"{t.replace('T', ' ')},{','.join(f'{v:.4f}' for v in row)}\n"
                             for t, row in zip(stamps, day, strict=True)))  # fmt: skip
    return path


def _peak_rss(path: Path, *options: str) -> float:
    """`models score pump --csv PATH OPTIONS` in a process of its own: its peak resident memory, MiB."""
    return cli_peak_rss("models", "score", "pump", "--csv", str(path), *options)[1]


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in run(Path(tmp)):
            print(row)
