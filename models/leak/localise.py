"""Leak position from two hydrophones on one pipe: generalised cross-correlation -> delay -> position.

Sensor A is channel 0 at x = 0, sensor B at x = D. A leak at x reaches A after x / c and B after
(D - x) / c, so the delay tau = t_A - t_B = (2x - D) / c and x = (D + c*tau) / 2. (The textbook
form x = (D - c*tau)/2 uses tau = t_B - t_A; `delay_s` here is t_A - t_B: positive when the sound
reaches B first.)

The cross-spectrum is weighted before the inverse FFT: PHAT (phase transform, 1/|G_ab|: sharp peaks,
robust to the coloured leak spectrum) or SCOT (1/sqrt(G_aa G_bb): less sensitive to bins where only
one sensor hears noise), restricted to the band that carries leak noise in this pipe material. The
peak is refined with a parabola through its three samples (sub-sample delay). Uncertainty combines
the wave-speed uncertainty (dx = |tau| * dc / 2) and the peak's half-width (dx = c * w / 2) in
quadrature. Peaks that barely stand out (peak-to-sidelobe ratio) and delays beyond D / c are flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from water_edge.models.leak import pipes

Weighting = Literal["phat", "scot", "none"]
FloatArray = npt.NDArray[np.float64]

# Below this peak-to-sidelobe ratio (dB) the correlation peak is not trusted.
WEAK_PSR_DB = 6.0


@dataclass
class Location:
    """Result of one localisation; `to_json` is what the CLI prints."""

    position_m: float
    uncertainty_m: float
    delay_s: float
    confidence: float
    psr_db: float
    wave_speed_m_s: float
    distance_m: float
    band_hz: tuple[float, float]
    weighting: str
    warnings: list[str] = field(default_factory=list)
    correlation: FloatArray | None = None
    lags_s: FloatArray | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "position_m": round(self.position_m, 2), "uncertainty_m": round(self.uncertainty_m, 2),
            "delay_s": round(self.delay_s, 6), "confidence": round(self.confidence, 3),
            "peak_to_sidelobe_db": round(self.psr_db, 1), "wave_speed_m_s": round(self.wave_speed_m_s, 1),
            "distance_m": self.distance_m, "band_hz": [round(b, 1) for b in self.band_hz],
            "weighting": self.weighting, "warnings": self.warnings,
        }  # fmt: skip


def gcc(
    a: FloatArray,
    b: FloatArray,
    sample_rate: float,
    band_hz: tuple[float, float],
    *,
    weighting: Weighting = "phat",
    max_lag_s: float | None = None,
    segment: int = 8192,
) -> tuple[FloatArray, FloatArray]:
    """Generalised cross-correlation of a against b (lags in seconds, positive: a lags b).

    Cross- and auto-spectra are averaged over half-overlapping Hann segments (Welch) before
    weighting, which keeps PHAT stable on noise-like signals.
    """
    n = min(a.size, b.size)
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    max_lag = n - 1 if max_lag_s is None else min(n - 1, math.ceil(max_lag_s * sample_rate))
    seg = int(min(max(segment, 4 * max_lag + 4), n))
    nfft = 1 << math.ceil(math.log2(2 * seg))
    hop = max(seg // 2, 1)
    win = np.hanning(seg)
    g_ab = np.zeros(nfft // 2 + 1, dtype=np.complex128)
    g_aa = np.zeros(nfft // 2 + 1)
    g_bb = np.zeros(nfft // 2 + 1)
    for s in range(0, n - seg + 1, hop):
        fa = np.fft.rfft(a[s : s + seg] * win, nfft)
        fb = np.fft.rfft(b[s : s + seg] * win, nfft)
        g_ab += fa * np.conj(fb)
        g_aa += np.abs(fa) ** 2
        g_bb += np.abs(fb) ** 2
    eps = 1e-12 * (g_aa.max() + g_bb.max() + 1e-30)
    if weighting == "phat":
        w = 1.0 / (np.abs(g_ab) + eps)
    elif weighting == "scot":
        w = 1.0 / (np.sqrt(g_aa * g_bb) + eps)
    else:
        w = np.ones_like(g_aa)
    freqs = np.fft.rfftfreq(nfft, 1.0 / sample_rate)
    w = w * ((freqs >= band_hz[0]) & (freqs <= band_hz[1]))
    cc = np.fft.irfft(g_ab * w, nfft)
    cc = np.concatenate([cc[-max_lag:], cc[: max_lag + 1]]) if max_lag > 0 else cc[:1]
    lags = np.arange(-max_lag, max_lag + 1) / sample_rate
    return lags, cc


def _peak(lags: FloatArray, cc: FloatArray, sample_rate: float) -> tuple[float, float, float]:
    """Sub-sample peak lag, its half-power half-width (s) and peak-to-sidelobe ratio (dB)."""
    i = int(np.argmax(cc))
    frac = 0.0
    if 0 < i < cc.size - 1:
        y0, y1, y2 = cc[i - 1], cc[i], cc[i + 1]
        den = y0 - 2 * y1 + y2
        if den < 0:
            frac = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
    peak = float(cc[i])
    half = peak / 2
    lo = i
    while lo > 0 and cc[lo] > half:
        lo -= 1
    hi = i
    while hi < cc.size - 1 and cc[hi] > half:
        hi += 1
    width_s = max((hi - lo) / 2, 0.5) / sample_rate
    guard = max(hi - lo, 3)
    mask = np.ones(cc.size, dtype=bool)
    mask[max(0, i - guard) : i + guard + 1] = False
    side = cc[mask]
    sidelobe = float(np.max(np.abs(side))) if side.size else 0.0
    psr = 20 * math.log10(max(peak, 1e-30) / max(sidelobe, 1e-30))
    return float(lags[i]) + frac / sample_rate, width_s, psr


def locate(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    sample_rate: float,
    distance_m: float,
    *,
    material: str | None = None,
    diameter_mm: float = 150.0,
    wave_speed_m_s: float | None = None,
    speed_rel_uncertainty: float | None = None,
    weighting: Weighting = "phat",
    band_hz: tuple[float, float] | None = None,
) -> Location:
    """Position of the leak from sensor A given both sensors' signals (aligned, same rate)."""
    if distance_m <= 0 or not math.isfinite(distance_m):
        raise ValueError(f"sensor distance {distance_m} m must be a positive number")
    if wave_speed_m_s is None:
        if material is None:
            raise ValueError("give a pipe material or a wave speed")
        c = pipes.wave_speed(material, diameter_mm)
    else:
        if not 50.0 <= wave_speed_m_s <= 2000.0:
            raise ValueError(f"wave speed {wave_speed_m_s} m/s is outside 50..2000 m/s")
        c = wave_speed_m_s
    mat = pipes.material(material) if material else None
    if speed_rel_uncertainty is None:
        speed_rel_uncertainty = mat.speed_rel_uncertainty if mat else 0.03
    if band_hz is None:
        band_hz = (
            pipes.leak_band(material, diameter_mm) if material else (10.0, min(2000.0, 0.45 * sample_rate))
        )
    band_hz = (band_hz[0], min(band_hz[1], 0.49 * sample_rate))
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    if xa.ndim != 1 or xb.ndim != 1 or min(xa.size, xb.size) < 0.5 * sample_rate:
        raise ValueError("need two 1-D signals of at least 0.5 s each")
    # Search a little beyond the span so an outside source shows up as such rather than wrapping.
    max_lag_s = 1.2 * distance_m / c
    seconds = min(xa.size, xb.size) / sample_rate
    if seconds < 2 * max_lag_s:  # the correlation would rest on a sliver of overlap, or none
        raise ValueError(
            f"sensors {distance_m:g} m apart hear a sound up to {distance_m / c:.3g} s apart at "
            f"{c:.0f} m/s: {seconds:.2f} s of recording cannot tell where between them (check the "
            f"distance, or record at least {2 * max_lag_s:.3g} s)"
        )
    lags, cc = gcc(xa, xb, sample_rate, band_hz, weighting=weighting, max_lag_s=max_lag_s)
    tau, width_s, psr = _peak(lags, cc, sample_rate)
    position = (distance_m + c * tau) / 2
    unc = math.hypot(abs(tau) * c * speed_rel_uncertainty / 2, c * width_s / 2)
    warnings = []
    if psr < WEAK_PSR_DB:
        warnings.append(
            f"weak correlation peak (peak-to-sidelobe {psr:.1f} dB < {WEAK_PSR_DB:g} dB): "
            "no clear leak signal common to both sensors; position unreliable"
        )
    if abs(tau) >= 0.98 * distance_m / c:
        side = "A" if tau < 0 else "B"
        warnings.append(
            f"delay at the span's limit: the source is likely at or beyond sensor {side}, "
            "outside the sensor span"
        )
    position = min(max(position, 0.0), distance_m)
    confidence = float(np.clip((psr - 3.0) / 12.0, 0.0, 1.0))
    return Location(
        position, unc, tau, confidence, psr, c, distance_m, band_hz, weighting, warnings, cc, lags
    )
