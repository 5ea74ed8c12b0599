"""The localiser finds a simulated leak from two sensors and says when it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from water_edge.models.leak import pipes
from water_edge.models.leak.localise import locate
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene


def test_korteweg_wave_speeds_fall_in_the_documented_ranges() -> None:
    for metal in ("ductile_iron", "steel", "cast_iron"):
        assert 1000 <= pipes.wave_speed(metal, 150) <= 1400
    for plastic in ("pvc", "pe"):
        assert 250 <= pipes.wave_speed(plastic, 150) <= 500
    assert pipes.material("Ductile Iron").name == "ductile_iron"
    with pytest.raises(ValueError, match="unknown pipe material"):
        pipes.material("copper")


@pytest.mark.parametrize(
    ("group", "materials"), [("metal", ("ductile_iron", "steel", "cast_iron")), ("plastic", ("pvc", "pe"))]
)
def test_median_position_error_is_within_2_percent_of_spacing(group: str, materials: tuple[str, ...]) -> None:
    rng = np.random.default_rng(2024 if group == "metal" else 2025)
    errors = []
    for i in range(8):
        mat = materials[i % len(materials)]
        spacing = float(rng.uniform(80, 250) if group == "metal" else rng.uniform(30, 120))
        pos = float(rng.uniform(0.1, 0.9) * spacing)
        scene = PipeScene(mat, 150.0, spacing, pos, 1.0, float(rng.uniform(0, 10)), BACKGROUNDS, seed=100 + i)
        x = HydrophoneSynth(scene).render_seconds(6)
        loc = locate(x[:, 0], x[:, 1], 16000, spacing, wave_speed_m_s=scene.wave_speed)
        errors.append(abs(loc.position_m - pos) / spacing)
        assert loc.uncertainty_m > 0
    assert float(np.median(errors)) <= 0.02, errors


@pytest.mark.parametrize("weighting", ["phat", "scot"])
def test_both_weightings_locate_a_low_snr_plastic_leak(weighting: str) -> None:
    scene = PipeScene("pvc", 150.0, 100.0, 70.0, 1.0, -5.0, BACKGROUNDS, seed=9)
    x = HydrophoneSynth(scene).render_seconds(8)
    loc = locate(x[:, 0], x[:, 1], 16000, 100.0, material="pvc", diameter_mm=150.0, weighting=weighting)  # type: ignore[arg-type]
    assert loc.position_m == pytest.approx(70.0, abs=2.0)
    assert loc.delay_s > 0  # the leak is nearer B, so B hears it first
    assert not loc.warnings
    # material-derived speed carries the 10 % PVC speed uncertainty into the position
    assert loc.uncertainty_m >= abs(loc.delay_s) * loc.wave_speed_m_s * 0.10 / 2


def test_without_a_leak_the_peak_is_reported_weak() -> None:
    scene = PipeScene("ductile_iron", 150.0, 200.0, None, 1.0, 0.0, BACKGROUNDS, seed=4)
    x = HydrophoneSynth(scene).render_seconds(6)
    loc = locate(x[:, 0], x[:, 1], 16000, 200.0, material="ductile_iron")
    assert any("weak correlation peak" in w for w in loc.warnings)
    assert loc.confidence < 0.3


def test_a_source_beyond_sensor_b_is_flagged_outside_the_span() -> None:
    scene = PipeScene("pe", 110.0, 60.0, 85.0, 1.0, 5.0, BACKGROUNDS, seed=8)
    x = HydrophoneSynth(scene).render_seconds(6)
    loc = locate(x[:, 0], x[:, 1], 16000, 60.0, material="pe", diameter_mm=110.0)
    assert any("outside the sensor span" in w and "sensor B" in w for w in loc.warnings)
    assert loc.position_m == pytest.approx(60.0, abs=1.0)


def test_bad_arguments_are_refused() -> None:
    x = np.zeros(16000)
    with pytest.raises(ValueError, match="distance"):
        locate(x, x, 16000, -5.0, material="pvc")
    with pytest.raises(ValueError, match="material or a wave speed"):
        locate(x, x, 16000, 50.0)
    with pytest.raises(ValueError, match=r"0\.5 s"):
        locate(x[:100], x[:100], 16000, 50.0, material="pvc")
