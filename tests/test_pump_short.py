"""The offline CLI on short steady-state files (a pump test bed): 20 min at 1 s, 400 calibration rows.

Files are generated here (fixed seed 4711, not a tuning or evaluation seed of
`models/train/pump_eval_short.py`): two per fault type, held-out types included, and four normal,
written as CSV with random column names and scored by `edge-agent models score pump` itself.
Measured with the first steady detector: point-wise F1 0.941, false alarm rate 5.6 %, no normal
file alarmed, no fault missed; with the per-channel detector (docs/pump-anomaly.md, "Short
calibrations"): F1 0.939, false alarms 8.4 %, one of the four normal files alarmed briefly, no fault
missed, median delay 7 s. The bounds leave a margin for numerical differences between platforms.
"""

from __future__ import annotations

from water_edge.models.train.pump_eval_short import make_cases, report, run_cases
from water_edge.models.train.pump_sim import FAULTS


def test_cli_on_short_steady_files_meets_the_measured_f1_and_false_alarm_rate() -> None:
    results = run_cases(make_cases(4711, FAULTS, per_fault=2, normal=4))
    figures = report(results)["all"]
    assert figures["f1"] >= 0.88, figures
    assert figures["false_alarm_rate"] <= 0.12, figures
    assert figures["normal_files_alarmed"] <= 0.5, figures
    assert figures["missed_alarm_rate"] <= 1 / 14, figures
    for r in results:  # scores are non-negative, calibration rows included
        assert r.scores.min() >= 0
