"""The shipped detector on the five real PVC recordings (Aghashahi, Sela & Banks, Data in Brief 48 (2023)
109148, CC BY 4.0), read from ../shared/data: never used in training, only to calibrate the simulator."""

from __future__ import annotations

import math

import pytest

from water_edge.models.leak.detector import LeakScorer
from water_edge.models.train.leak_eval import REAL_DIR, REAL_FILES, real_report

pytestmark = pytest.mark.skipif(not REAL_DIR.is_dir(), reason=f"real recordings not present at {REAL_DIR}")


@pytest.fixture(scope="module")
def report() -> dict[str, object]:
    return real_report(LeakScorer())


def test_every_real_recording_is_read_and_scored(report: dict[str, dict[str, float]]) -> None:
    scores = report["scores"]
    assert set(scores) == set(REAL_FILES)
    assert all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in scores.values())


def test_every_real_leak_scores_above_the_no_leak_recording(report: dict[str, dict[str, float]]) -> None:
    # Measured with model 1.1.0: no-leak 0.00634, orifice 0.0174, gasket 0.0180, circumferential crack
    # 0.0181, longitudinal crack 0.00825 (model 1.0.0: orifice 1.398e-6 < no-leak 1.418e-6). All five are
    # still far below the 0.36 threshold: the ordering holds, a detection would not be raised.
    scores = report["scores"]
    print("real PVC recordings, leak_probability:", scores)
    assert all(scores[name] > scores["no-leak"] for name in REAL_FILES if name != "no-leak")


@pytest.fixture(scope="module")
def protocol() -> dict[str, object]:
    from water_edge.models.train.leak_field_eval import real_protocol

    return real_protocol(LeakScorer())


def test_real_protocol_the_quiet_second_half_raises_no_leak(protocol: dict[str, object]) -> None:
    # The fixed protocol of docs/leak-detection.md: baseline from the first half of no-leak.
    print("real protocol:", protocol)
    assert protocol["quiet_half_raises_no_leak"] is True


def test_real_protocol_the_leaks_that_are_louder_than_the_baseline_are_raised(
    protocol: dict[str, object],
) -> None:
    # Measured (8 s checks, PVC bands): orifice 4/4 checks positive, circumferential crack 4/5:
    # both raise a leak. Gasket: 1/4 (a warning, not confirmed); longitudinal crack: 0/4 — it is
    # quieter than the baseline in most bands (docs/leak-detection.md, "Real recordings").
    raised = protocol["leaks_raised"]
    assert isinstance(raised, list)
    assert {"orifice-leak", "circumferential-crack"} <= set(raised)
