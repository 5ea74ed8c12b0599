"""The hydrophone simulator: leak noise arrives with the geometric delay, in the material's band, at the
scene's SNR; output is deterministic and continuous however it is read."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene


def _leak_only(
    material: str, position: float, spacing: float = 100.0, seed: int = 3
) -> tuple[np.ndarray, PipeScene]:
    scene = PipeScene(material, 150.0, spacing, position, 1.0, 30.0, (), seed=seed)
    return HydrophoneSynth(scene).render_seconds(6.0).astype(np.float64), scene


@pytest.mark.parametrize(
    ("material", "position"), [("ductile_iron", 23.0), ("steel", 81.5), ("pvc", 37.3), ("pe", 64.0)]
)
def test_cross_correlation_peak_sits_at_the_geometric_delay(material: str, position: float) -> None:
    x, scene = _leak_only(material, position)
    a, b = x[:, 0], x[:, 1]
    # Plain (unweighted) cross-correlation, independent of the project's localiser.
    cc = signal.correlate(a, b, mode="full", method="fft")
    lags = np.arange(-len(b) + 1, len(a))
    i = int(np.argmax(cc))
    y0, y1, y2 = cc[i - 1 : i + 2]
    peak = lags[i] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2)
    d_a, d_b = scene.delays_s()
    expected = (d_a - d_b) * scene.sample_rate
    assert abs(peak - expected) < 0.5, (peak, expected)


def test_fractional_delays_are_resolved_below_one_sample() -> None:
    # Two leak positions 0.1 sample of delay apart must give correlation peaks that differ by ~0.1 sample.
    c = PipeScene("steel", 150.0, 100.0, 50.0, 1.0, 30.0, ()).wave_speed
    step_m = 0.1 / 16000 * c / 2  # moving the leak by this changes t_A - t_B by 0.1 sample
    peaks = []
    for pos in (50.0, 50.0 + step_m):
        x, _ = _leak_only("steel", pos)
        cc = signal.correlate(x[:, 0], x[:, 1], mode="full", method="fft")
        i = int(np.argmax(cc))
        y0, y1, y2 = cc[i - 1 : i + 2]
        peaks.append(i + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2))
    assert peaks[1] - peaks[0] == pytest.approx(0.1, abs=0.03)


def _fraction_below(x: np.ndarray, hz: float, sr: int = 16000) -> float:
    f, p = signal.welch(x, sr, nperseg=4096)
    return float(p[f < hz].sum() / p.sum())


def test_plastic_leaks_are_low_frequency_and_metal_leaks_wider_band() -> None:
    pvc, _ = _leak_only("pvc", 30.0)
    pe, _ = _leak_only("pe", 30.0)
    iron, _ = _leak_only("ductile_iron", 30.0)
    assert _fraction_below(pvc[:, 0], 400.0) > 0.95
    assert _fraction_below(pe[:, 0], 400.0) > 0.95
    assert _fraction_below(iron[:, 0], 400.0) < 0.6
    assert _fraction_below(iron[:, 0], 3000.0) > 0.95


def test_farther_sensor_hears_the_leak_attenuated_more_in_plastic() -> None:
    pvc, _ = _leak_only("pvc", 10.0)  # 10 m from A, 90 m from B
    iron, _ = _leak_only("ductile_iron", 10.0)
    drop_pvc = 10 * np.log10(np.mean(pvc[:, 0] ** 2) / np.mean(pvc[:, 1] ** 2))
    drop_iron = 10 * np.log10(np.mean(iron[:, 0] ** 2) / np.mean(iron[:, 1] ** 2))
    assert drop_pvc > drop_iron > 0.0


def test_snr_is_leak_over_background_at_the_nearer_sensor() -> None:
    kw = {
        "material": "cast_iron",
        "diameter_mm": 200.0,
        "spacing_m": 150.0,
        "leak_size": 1.0,
        "backgrounds": ("flow", "pump"),
        "seed": 11,
    }
    mixed = HydrophoneSynth(PipeScene(leak_position_m=40.0, snr_db=-3.0, **kw)).render_seconds(20)  # type: ignore[arg-type]
    bg = HydrophoneSynth(PipeScene(leak_position_m=None, snr_db=-3.0, **kw)).render_seconds(20)  # type: ignore[arg-type]
    leak = mixed.astype(np.float64) - bg
    snr = 10 * np.log10(np.mean(leak[:, 0] ** 2) / np.mean(bg[:, 0].astype(np.float64) ** 2))
    assert snr == pytest.approx(-3.0, abs=1.5)


def test_same_seed_same_audio_however_it_is_read_and_other_seed_differs() -> None:
    scene = PipeScene("pvc", 110.0, 60.0, 20.0, 0.5, 0.0, BACKGROUNDS, sample_rate=8000, channels=3, seed=5)
    whole = HydrophoneSynth(scene).render(20000)
    synth = HydrophoneSynth(scene)
    parts = np.concatenate([synth.render(n) for n in (1, 4095, 4097, 0, 7, 11800)])
    assert whole.dtype == np.float32
    assert whole.shape == (20000, 3)
    assert np.array_equal(whole, parts)
    other = HydrophoneSynth(
        PipeScene("pvc", 110.0, 60.0, 20.0, 0.5, 0.0, BACKGROUNDS, sample_rate=8000, channels=3, seed=6)
    ).render(20000)
    assert not np.allclose(whole, other)
    assert np.all(np.isfinite(whole))


@pytest.mark.parametrize(
    "bad",
    [
        {"material": "copper"},
        {"diameter_mm": 1.0},
        {"leak_size": 0.0},
        {"backgrounds": ("wind",)},
        {"channels": 0},
        {"snr_db": float("nan")},
    ],
)
def test_impossible_scenes_are_refused_with_a_reason(bad: dict[str, object]) -> None:
    kw: dict[str, object] = {
        "material": "pvc",
        "diameter_mm": 100.0,
        "spacing_m": 50.0,
        "leak_position_m": 10.0,
        "leak_size": 1.0,
        "snr_db": 0.0,
        "backgrounds": ("flow",),
    }
    kw.update(bad)
    with pytest.raises(ValueError, match=r"\w"):
        PipeScene(**kw)  # type: ignore[arg-type]


def test_plastic_leak_matches_the_real_pvc_leak_shape() -> None:
    # Calibrated against the real PVC recordings (docs/hydrophone-calibration.md): the leak adds energy
    # at 12-25 Hz and almost nothing above; a weak broadband part sits ~25-30 dB down at 100-300 Hz.
    x, _ = _leak_only("pvc", 30.0)
    f, p = signal.welch(x[:, 0], 16000, nperseg=16384)
    assert p[f < 40].sum() / p.sum() > 0.98
    hiss_db = 10 * np.log10(p[(f >= 100) & (f < 300)].sum() / p.sum())
    assert -35.0 < hiss_db < -22.0


def test_plastic_background_is_rumble_dominated_and_quiet_above_100_hz() -> None:
    # The real no-leak recording: ~all power in the 9-20 Hz rumble, 100-600 Hz about 36 dB down.
    for seed in (1, 2):
        scene = PipeScene(
            "pvc", 152.4, 47.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=8000, channels=1, seed=seed
        )
        y = HydrophoneSynth(scene).render_seconds(10)[:, 0].astype(np.float64)
        f, p = signal.welch(y, 8000, nperseg=8192)
        assert p[(f >= 5) & (f < 20)].sum() / p.sum() > 0.9
        assert 10 * np.log10(p[(f >= 100) & (f < 600)].sum() / p.sum()) < -28.0
