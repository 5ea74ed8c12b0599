"""Synthetic hydrophone audio: leak noise travelling along a water main to several sensors, over background.

A `PipeScene` describes the pipe (material, diameter), the sensors (channel k sits k * spacing from
sensor A), an optional leak (position from sensor A, size) and the background mix at an SNR.
`HydrophoneSynth(scene).render(n)` returns float32 samples shaped (n, channels), continuous across
calls and identical for the same seed however the calls are split.

Physics, kept simple but honest:
- the leak is Gaussian noise band-limited to the material's leak band (plastic: tens to a few hundred
  Hz; metal: ~0.1-1.5 kHz); larger leaks carry relatively more low frequency;
- it reaches sensor k after |x_leak - x_k| / c, with c from the Korteweg formula (`models.leak.pipes`),
  applied as an integer delay plus a windowed-sinc fractional delay, and is attenuated by
  alpha(f) * distance dB (frequency-dependent, higher in plastic) in the same FIR;
- backgrounds are independent at each sensor except pump tones, which come from the pump end (beyond
  sensor A) and so are coherent with a delay of spacing / c;
- `snr_db` is leak power over background power at the sensor nearest the leak (whole band).
Background levels and spectra are calibrated against real PVC recordings (docs/hydrophone-calibration.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
from scipy import signal

from water_edge.sim import pipes

BACKGROUNDS: Final = ("flow", "pump", "traffic", "transients")
# Whole-band RMS of the background at a sensor; the real PVC test-bed recordings sit at -11.7..-17.8 dBFS.
BACKGROUND_RMS_DBFS: Final = -15.0
# Sensor/preamp noise floor relative to the background (the real recordings flatten ~60 dB down).
FLOOR_DB: Final = -52.0

_BLOCK: Final = 4096
_FIR_HALF: Final = 64  # fractional-delay/attenuation FIR has 2 * _FIR_HALF + 1 taps
_GRID: Final = 2048  # frequency grid for the attenuation design
_POWER_GRID: Final = 1 << 14  # fine enough to resolve the narrow rumble resonance

Array = npt.NDArray[np.float64]

# Relative power weights of background components. Plastic: fitted to the real PVC test-bed recordings
# (a dominant ~11 Hz rumble, weak flow noise, mains/pump tones; docs/hydrophone-calibration.md).
# Metal: no recordings to fit; stiffer pipe walls carry more broadband flow noise.
# v1.1 recalibration (plastic): the real background carries almost nothing between 20 and 600 Hz
# apart from the mains/pump fundamental, so flow noise and transients are much weaker than in v1.0.
_WEIGHTS: Final = {
    False: {"flow": 0.001, "pump": 0.02, "traffic": 0.98, "transients": 0.0005},
    True: {"flow": 0.25, "pump": 0.08, "traffic": 0.65, "transients": 0.02},
}
# Pump/mains harmonic amplitudes relative to the fundamental. Plastic: fitted to the real recordings
# (59.8 Hz fundamental; 120 and 240 Hz about 20 and 28 dB below it). Metal: unchanged, no data.
_HARMONICS: Final = {
    False: (1.0, 0.1, 0.05, 0.04, 0.02),
    True: (1.0, 0.5, 0.3, 0.2, 0.12),
}
# Per-scene variation of each background weight (log-uniform factor); wider than v1.0's x0.5..2 so the
# detector cannot rely on how dominant the traffic rumble is (it differs by up to 9 dB between the real
# recordings of one test bed).
_WEIGHT_SPREAD: Final = (0.25, 4.0)
# Plastic leak noise: a fourth-order low-pass above a knee (Hz at DN150, leak size 1). The real PVC
# leaks add energy at 12-25 Hz; their excess falls ~15-20 dB from 20 to 40 Hz
# (docs/hydrophone-calibration.md).
PLASTIC_LEAK_KNEE_HZ: Final = 20.0
# ...plus a weak broadband part over the whole plastic leak band, this many dB below the main part (the
# orifice and circumferential-crack recordings show +1..+6 dB at 100-200 Hz; it also carries the
# higher-frequency coherence that localisation needs).
PLASTIC_LEAK_HISS_DB: Final = -25.0


@dataclass(frozen=True, slots=True)
class PipeScene:
    """What the sensors hear: pipe, sensor layout, leak (None: no leak) and background at an SNR."""

    material: str
    diameter_mm: float
    spacing_m: float
    leak_position_m: float | None
    leak_size: float
    snr_db: float
    backgrounds: tuple[str, ...]
    sample_rate: int = 16000
    channels: int = 2
    seed: int = 0
    # Night-to-night conditions (`hydrophone_nights`). With `site_seed` the site's character (the
    # background mix, rumble and pump frequencies, sensor floor) comes from it and `seed` only draws
    # the noise, so one site can be heard on many nights. `gains_db` scales a background component
    # on top of the site's mix ("traffic", "pump", "flow", "transients"; the leak keeps its level,
    # set by `snr_db` against the site's nominal background); `rain_db` adds rain noise at that
    # level re the nominal background (None: dry); `vehicles_per_min` adds passing vehicles.
    site_seed: int | None = None
    gains_db: tuple[tuple[str, float], ...] = ()
    rain_db: float | None = None
    rain_gust_s: float = 20.0  # correlation time of the rain's gusting (level sigma 5 dB)
    vehicles_per_min: float = 0.0

    def __post_init__(self) -> None:
        pipes.material(self.material)  # raises ValueError naming the known materials
        if not 10.0 <= self.diameter_mm <= 3000.0:
            raise ValueError(f"diameter_mm {self.diameter_mm} is outside 10..3000")
        if self.spacing_m <= 0 and self.channels > 1:
            raise ValueError("spacing_m must be > 0 with more than one channel")
        if not 0.0 < self.leak_size <= 10.0:
            raise ValueError(f"leak_size {self.leak_size} is outside (0, 10]")
        if not 1 <= self.channels <= 16:
            raise ValueError(f"channels {self.channels} is outside 1..16")
        if not 1000 <= self.sample_rate <= 192000:
            raise ValueError(f"sample_rate {self.sample_rate} is outside 1000..192000")
        unknown = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if unknown:
            raise ValueError(f"unknown background(s) {unknown}; expected some of {list(BACKGROUNDS)}")
        if not math.isfinite(self.snr_db):
            raise ValueError("snr_db must be finite")
        bad_gain = [b for b, _ in self.gains_db if b not in BACKGROUNDS]
        if bad_gain:
            raise ValueError(f"gains_db names unknown background(s) {bad_gain}")
        if self.rain_gust_s <= 0:
            raise ValueError("rain_gust_s must be > 0")
        if not 0.0 <= self.vehicles_per_min <= 60.0:
            raise ValueError(f"vehicles_per_min {self.vehicles_per_min} is outside 0..60")

    @property
    def wave_speed(self) -> float:
        return pipes.wave_speed(self.material, self.diameter_mm)

    def sensor_positions(self) -> list[float]:
        return [k * self.spacing_m for k in range(self.channels)]

    def delays_s(self) -> list[float]:
        """Travel time from the leak to each sensor (empty without a leak)."""
        if self.leak_position_m is None:
            return []
        c = self.wave_speed
        return [abs(self.leak_position_m - x) / c for x in self.sensor_positions()]


def _power(sos: Array, n: int = _POWER_GRID) -> float:
    """Output variance of `sos` driven by unit white noise."""
    _, h = signal.sosfreqz(sos, worN=n)
    return float(np.mean(np.abs(h) ** 2))


def _band_sos(lo: float, hi: float, sr: int, order: int = 2) -> Array:
    nyq = sr / 2
    hi = min(hi, 0.45 * sr)
    lo = max(lo, 1.0)
    if lo >= hi:
        lo = hi / 4
    sos: Array = signal.butter(order, [lo / nyq, hi / nyq], btype="bandpass", output="sos")
    return sos


def _rumble_sos(f0: float, sr: int) -> Array:
    """Traffic/ground rumble: a double resonance at f0 (Q 8) with steep skirts (the real rumble is
    ~20 dB down one octave above its peak and ~35 dB down two octaves above)."""
    b, a = signal.iirpeak(min(f0, 0.4 * sr) / (sr / 2), Q=8.0)
    peak = signal.tf2sos(b, a)
    out: Array = np.vstack([peak, peak, _band_sos(3.0, 4.0 * f0, sr, 1)])
    return out


def _kaiser_shifted(n: Array, centre: float, half: float, beta: float = 8.0) -> Array:
    r = np.clip((n - centre) / half, -1.0, 1.0)
    out: Array = np.i0(beta * np.sqrt(1.0 - r * r)) / np.i0(beta)
    return out


class _Filtered:
    """White noise through a normalised IIR, with state, one independent stream per instance."""

    def __init__(self, sos: Array, rng: np.random.Generator, gain: float) -> None:
        self.sos = sos
        self.rng = rng
        self.gain = gain / math.sqrt(_power(sos))
        self.zi = np.zeros((sos.shape[0], 2))

    def block(self, n: int) -> Array:
        y, self.zi = signal.sosfilt(self.sos, self.rng.standard_normal(n), zi=self.zi)
        out: Array = y * self.gain
        return out


class HydrophoneSynth:
    """Renders a `PipeScene` block by block; deterministic for the scene's seed."""

    def __init__(self, scene: PipeScene) -> None:
        self.scene = scene
        sr = scene.sample_rate
        self._sr = sr
        self._t = 0  # samples rendered internally so far
        self._pending = np.zeros((0, scene.channels), dtype=np.float32)
        seq = np.random.SeedSequence(scene.seed)
        streams = seq.spawn(4 + 2 * scene.channels)
        site = streams[0] if scene.site_seed is None else np.random.SeedSequence([scene.site_seed, 1])
        self._params = np.random.default_rng(site)
        bg_rms = 10 ** (BACKGROUND_RMS_DBFS / 20)
        chosen = [b for b in BACKGROUNDS if b in scene.backgrounds]
        # Each site mixes its backgrounds differently: weights vary x0.25..x4 around the calibrated mix.
        table = _WEIGHTS[pipes.material(scene.material).metal]
        lo_w, hi_w = _WEIGHT_SPREAD
        raw = {
            b: table[b] * math.exp(float(self._params.uniform(math.log(lo_w), math.log(hi_w))))
            for b in BACKGROUNDS
        }
        total = sum(raw[b] for b in chosen) or 1.0
        weight: dict[str, float] = {b: raw[b] / total for b in chosen}
        # The night's conditions scale components after the mix is normalised: the nominal
        # background power (the leak's SNR reference) stays the site's.
        for b, g in scene.gains_db:
            if b in weight:
                weight[b] *= 10 ** (g / 10)
        floor_gain = bg_rms * 10 ** ((FLOOR_DB + float(self._params.uniform(-6.0, 6.0))) / 20)
        if not chosen:  # no background at all: the sensor floor alone is the background
            floor_gain = bg_rms
        self._bg_power = (bg_rms**2 if chosen else 0.0) + floor_gain**2
        c = scene.wave_speed
        self._c = c
        self._build_backgrounds(weight, bg_rms, floor_gain, streams)
        self._build_leak(streams[1], c)
        self._build_night(streams[2], streams[3], bg_rms)

    # ----------------------------------------------------------------- background
    def _build_backgrounds(
        self,
        weight: dict[str, float],
        bg_rms: float,
        floor_gain: float,
        streams: list[np.random.SeedSequence],
    ) -> None:
        sc, sr, p = self.scene, self._sr, self._params
        mat = pipes.material(sc.material)
        scale = (150.0 / sc.diameter_mm) ** 0.3
        # Turbulent flow noise: falls ~12 dB/octave above a corner that is higher in stiff metal pipes.
        flow_fc = float(p.uniform(250.0, 700.0) if mat.metal else p.uniform(20.0, 60.0)) * scale
        rumble_f = float(p.uniform(8.0, 14.0))  # structure-borne traffic/ground rumble resonance
        # A second, weaker rumble mode (the real no-leak recording has one at 15 Hz, ~11 dB below the
        # 11 Hz peak): ratio 1.2..1.8, level -6..-20 dB. It puts background energy into the plastic
        # leak band, so "anything at 15-20 Hz" is not a leak.
        mode_ratio = float(p.uniform(1.2, 1.8))
        mode_db = float(p.uniform(-20.0, -6.0))
        self._noise: list[list[_Filtered]] = []
        self._traffic_from = 0  # index of the first traffic part in each channel's list
        for k in range(sc.channels):
            rng = np.random.default_rng(streams[4 + k])
            parts = [_Filtered(np.array([[1.0, 0, 0, 1.0, 0, 0]]), rng, floor_gain)]
            if "flow" in weight:
                parts.append(
                    _Filtered(_band_sos(12.0, flow_fc, sr, 2), rng, bg_rms * math.sqrt(weight["flow"]))
                )
            self._traffic_from = len(parts) if "traffic" in weight else len(parts) + 2
            if "traffic" in weight:
                # sqrt(1.125): the slow amplitude modulation below adds 12.5 % power; take it back
                w_main = weight["traffic"] / (1.0 + 10 ** (mode_db / 10)) / 1.125
                w_mode = weight["traffic"] - w_main * 1.125
                parts.append(_Filtered(_rumble_sos(rumble_f, sr), rng, bg_rms * math.sqrt(w_main)))
                mode_sos = _rumble_sos(rumble_f * mode_ratio, sr)
                parts.append(_Filtered(mode_sos, rng, bg_rms * math.sqrt(w_mode)))
            self._noise.append(parts)
        self._am_freq = float(p.uniform(0.03, 0.1))
        self._am_phase = p.uniform(0, 2 * np.pi, sc.channels)
        # Pump / mains tones: f0 with decaying harmonics, coherent at all sensors (from beyond sensor A).
        self._tones: list[tuple[float, float, float]] = []
        if "pump" in weight:
            f0 = float(p.choice([50.0, 60.0])) * float(p.uniform(0.97, 1.0))
            amps = np.array(_HARMONICS[mat.metal]) * p.uniform(0.5, 1.5, 5)
            amps = amps * math.sqrt(2 * weight["pump"]) * bg_rms / math.sqrt(np.sum(amps**2))
            for h, amp in enumerate(amps, start=1):
                if h * f0 < 0.45 * sr:
                    self._tones.append((h * f0, float(amp), float(p.uniform(0, 2 * np.pi))))
        self._clicks: list[np.random.Generator] | None = None
        if "transients" in weight:
            self._click_rate = 0.5  # per second, Poisson
            self._click_tau = 0.004
            self._click_sos = _band_sos(5.0, 2000.0 if mat.metal else 150.0, sr, 2)
            # expected power: rate * a^2 * tau / 2 * (filter power gain) == weight * bg^2
            self._click_amp = bg_rms * math.sqrt(
                2 * weight["transients"] / (self._click_rate * self._click_tau * _power(self._click_sos))
            )
            self._click_zi = np.zeros((sc.channels, self._click_sos.shape[0], 2))
            self._clicks = [np.random.default_rng(streams[4 + sc.channels + k]) for k in range(sc.channels)]
            self._click_tail = np.zeros((int(10 * self._click_tau * sr), sc.channels))

    # ---------------------------------------------------------------------- night
    def _build_night(
        self, rain_seq: np.random.SeedSequence, car_seq: np.random.SeedSequence, bg: float
    ) -> None:
        """Rain (broadband, gusting on a ~20 s scale) and passing vehicles (rumble bursts of a few s)."""
        sc, sr = self.scene, self._sr
        metal = pipes.material(sc.material).metal
        self._rain: list[_Filtered] = []
        self._rain_rng = np.random.default_rng(rain_seq)
        self._rain_state = 0.0
        if sc.rain_db is not None:
            sos = _band_sos(150.0 if metal else 60.0, 3000.0 if metal else 1500.0, sr, 2)
            gain = bg * 10 ** (sc.rain_db / 20)
            self._rain = [_Filtered(sos, np.random.default_rng(rain_seq.spawn(1)[0]), gain)]
            self._rain += [
                _Filtered(sos, np.random.default_rng(s), gain) for s in rain_seq.spawn(sc.channels - 1)
            ]
        self._cars: list[tuple[float, float, float]] = []  # (centre s, peak linear gain - 1, width s)
        if sc.vehicles_per_min > 0:
            rng = np.random.default_rng(car_seq)
            self._car_rng = rng
            self._car_next = float(rng.exponential(60.0 / sc.vehicles_per_min))

    def _night_gain(self, t: Array) -> tuple[Array, float]:
        """Traffic multiplier over `t` (passing vehicles) and this block's rain gust factor."""
        sc = self.scene
        gain = np.ones_like(t)
        if sc.vehicles_per_min > 0:
            end = float(t[-1])
            while self._car_next <= end + 10.0:
                peak_db = float(self._car_rng.uniform(4.0, 15.0))
                width = float(self._car_rng.uniform(1.5, 4.0))
                self._cars.append((self._car_next, 10 ** (peak_db / 20) - 1.0, width))
                self._car_next += float(self._car_rng.exponential(60.0 / sc.vehicles_per_min))
            self._cars = [c for c in self._cars if c[0] + 4 * c[2] >= float(t[0])]
            for centre, amp, width in self._cars:
                gain += amp * np.exp(-0.5 * ((t - centre) / width) ** 2)
        # Rain gusts: a log-normal level, AR(1) with a `rain_gust_s` correlation time, sigma 5 dB.
        rho = math.exp(-(t.size / self._sr) / sc.rain_gust_s)
        self._rain_state = rho * self._rain_state + math.sqrt(1 - rho * rho) * float(
            self._rain_rng.standard_normal()
        )
        return gain, 10 ** (5.0 * self._rain_state / 20)

    # ----------------------------------------------------------------------- leak
    def _build_leak(self, stream: np.random.SeedSequence, c: float) -> None:
        sc, sr = self.scene, self._sr
        self._leak: _Filtered | None = None
        self._hiss: _Filtered | None = None
        if sc.leak_position_m is None:
            return
        lo, hi = pipes.leak_band(sc.material, sc.diameter_mm)
        # Bigger leaks: relatively more low-frequency energy (lower upper corner).
        hi = hi / max(0.5, sc.leak_size) ** 0.25
        # Leak noise falls with frequency above a knee: first order in metal; fourth order in plastic
        # (the real PVC leaks add energy mostly at 12-25 Hz, docs/hydrophone-calibration.md). Bigger
        # leaks move the knee down; larger plastic pipes too, like the band.
        metal = pipes.material(sc.material).metal
        scale = (150.0 / sc.diameter_mm) ** 0.3
        knee = (400.0 if metal else PLASTIC_LEAK_KNEE_HZ * scale) / max(0.5, sc.leak_size) ** 0.25
        order = 1 if metal else 4
        tilt = signal.butter(order, min(knee, 0.4 * sr) / (sr / 2), btype="low", output="sos")
        band = _band_sos(lo, hi, sr, 2)
        src_sos = np.vstack([band, tilt])
        hiss = 0.0 if metal else 10 ** (PLASTIC_LEAK_HISS_DB / 10)
        leak_rng = np.random.default_rng(stream)
        self._leak = _Filtered(src_sos, leak_rng, math.sqrt(1.0 / (1.0 + hiss)))
        self._hiss = _Filtered(band, leak_rng, math.sqrt(hiss / (1.0 + hiss))) if hiss else None
        delays = np.array(self.scene.delays_s()) * sr
        self._int_delay = np.floor(delays).astype(int)
        frac = delays - self._int_delay
        taps = np.arange(2 * _FIR_HALF + 1, dtype=np.float64)
        freqs = np.linspace(0, sr / 2, _GRID)
        _, h_src = signal.sosfreqz(src_sos, worN=_GRID)
        _, h_band = signal.sosfreqz(band, worN=_GRID)
        src_pow = np.abs(h_src) ** 2 / _power(src_sos) + hiss * np.abs(h_band) ** 2 / _power(band)
        src_pow /= 1 + hiss
        fir, received = [], []
        for k, x in enumerate(sc.sensor_positions()):
            dist = abs(sc.leak_position_m - x)
            att_db = (
                np.array([pipes.attenuation_db_per_m(sc.material, sc.diameter_mm, f) for f in freqs]) * dist
            )
            mag = 10 ** (-att_db / 20)
            # Zero-phase attenuation FIR (frequency sampling), then shifted by the fractional delay.
            nfft = 4 * (2 * _FIR_HALF + 1)
            grid = np.fft.rfftfreq(nfft, 1 / sr)
            mag_grid = np.interp(grid, freqs, mag)
            centre = _FIR_HALF + frac[k]
            spectrum = mag_grid * np.exp(-2j * np.pi * grid / sr * centre)
            h = np.fft.irfft(spectrum, nfft)[: 2 * _FIR_HALF + 1]
            h *= _kaiser_shifted(taps, centre, _FIR_HALF + 1.0)
            fir.append(h)
            received.append(float(np.mean(src_pow * mag**2)))
        self._fir = fir
        near = int(np.argmin(delays))
        self._leak_gain = math.sqrt(self._bg_power * 10 ** (sc.snr_db / 10) / max(received[near], 1e-30))
        hist = int(self._int_delay.max()) + 2 * _FIR_HALF + 1
        self._hist = np.zeros(hist + _BLOCK)
        self._hist_len = hist

    # --------------------------------------------------------------------- render
    def _block(self) -> npt.NDArray[np.float32]:
        sc, sr, n = self.scene, self._sr, _BLOCK
        out = np.zeros((n, sc.channels))
        t = (self._t + np.arange(n)) / sr
        cars, gust = self._night_gain(t)
        for k, parts in enumerate(self._noise):
            for i, part in enumerate(parts):
                y = part.block(n)
                if i >= self._traffic_from:  # the rumble modes are slowly amplitude-modulated
                    y = y * (1.0 + 0.5 * np.sin(2 * np.pi * self._am_freq * t + self._am_phase[k])) * cars
                out[:, k] += y
        for k, rain in enumerate(self._rain):
            out[:, k] += gust * rain.block(n)
        for k, x in enumerate(sc.sensor_positions()):
            # Tones come from the pump end, one spacing-equivalent beyond sensor A.
            tau = (x + sc.spacing_m) / self._c
            for f, amp, ph in self._tones:
                out[:, k] += amp * np.sin(2 * np.pi * f * (t - tau) + ph)
        if self._clicks is not None:
            self._add_clicks(out)
        if self._leak is not None:
            src = self._leak.block(n)
            if self._hiss is not None:
                src = src + self._hiss.block(n)
            hist = self._hist
            hist[: self._hist_len] = hist[n : n + self._hist_len]
            hist[self._hist_len :] = src
            for k, h in enumerate(self._fir):
                d = int(self._int_delay[k])
                end = self._hist_len + n - d
                seg = hist[end - n - 2 * _FIR_HALF : end]
                out[:, k] += self._leak_gain * np.convolve(seg, h, mode="valid")
        self._t += n
        return out.astype(np.float32)

    def _add_clicks(self, out: Array) -> None:
        assert self._clicks is not None
        n, sr = out.shape[0], self._sr
        tail = self._click_tail
        m = tail.shape[0]
        clicks = np.zeros_like(out)
        clicks[: min(m, n)] += tail[: min(m, n)]
        new_tail = np.zeros_like(tail)
        if m > n:
            new_tail[: m - n] = tail[n:]
        decay = np.exp(-np.arange(m) / (self._click_tau * sr))
        for k, rng in enumerate(self._clicks):
            count = int(rng.poisson(self._click_rate * n / sr))
            starts = rng.integers(0, n, count)
            for s in starts:
                burst = self._click_amp * decay * rng.standard_normal(m)
                end = min(n, s + m)
                clicks[s:end, k] += burst[: end - s]
                rest = burst[end - s :]
                new_tail[: rest.size, k] += rest
            filtered, self._click_zi[k] = signal.sosfilt(self._click_sos, clicks[:, k], zi=self._click_zi[k])
            out[:, k] += filtered
        self._click_tail = new_tail

    def render(self, n_samples: int) -> npt.NDArray[np.float32]:
        """The next `n_samples` samples, float32, shape (n_samples, channels)."""
        if n_samples < 0:
            raise ValueError("n_samples must be >= 0")
        chunks = [self._pending]
        have = self._pending.shape[0]
        while have < n_samples:
            block = self._block()
            chunks.append(block)
            have += block.shape[0]
        allv = np.concatenate(chunks) if len(chunks) > 1 else self._pending
        self._pending = allv[n_samples:]
        return np.ascontiguousarray(allv[:n_samples])

    def render_seconds(self, seconds: float) -> npt.NDArray[np.float32]:
        return self.render(round(seconds * self._sr))
