"""The shipped detector on the five real PVC recordings (Aghashahi, Sela & Banks, Data in Brief 48 (2023)
109148, CC BY 4.0), read from ../shared/data: never used in training, only to calibrate the simulator."""

from __future__ import annotations

import math

import pytest

from models.leak.detector import LeakScorer
from models.train.leak_eval import REAL_DIR, REAL_FILES, real_report

pytestmark = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real recordings not present at {REAL_DIR}")


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    return real_report(LeakScorer())


def test_every_real_recording_is_read_and_scored(report: dict[str, dict[str, float]]) -> None:
    scores = report["scores"]
    assert set(scores) == set(REAL_FILES)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values())


@pytest.mark.xfail(
    strict=True,
    reason="measured with model 1.0.0: all five real recordings score ~1e-6..6e-5 (the model sees them as "
    "no-leak); orifice-leak 1.398e-6 sits just below no-leak 1.418e-6. See docs/leak-detection.md.",
)
def test_every_real_leak_scores_above_the_no_leak_recording(report: dict[str, dict[str, float]]) -> None:
    scores = report["scores"]
    assert all(scores[name] > scores["no-leak"] for name in REAL_FILES if name != "no-leak")
