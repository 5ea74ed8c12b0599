"""The on-device leak detector: audio windows -> band features -> TFLite -> smoothed probability -> Event.

`LeakScorer` scores a buffer of audio (used by the CLI and by the processor). `LeakProcessor.run`
consumes the audio driver's windows (any rate and channel count; the first channel is used), keeps a
2 s analysis window, runs inference in a worker thread, smooths the probability (exponential moving
average) and applies hysteresis: a leak is declared when the smoothed probability stays at or above
the model's threshold for `on_windows` windows, and cleared when it stays below `threshold - gap`
for `off_windows` windows. Each transition is one `Event(kind="leak" | "leak_cleared")` carrying the
evidence. It also keeps the noise-logger figures (RMS level, band levels, minimum night noise and its
spread over nights) and reports each night's minimum as an `Event(kind="leak_noise_night")`.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.processor import AudioWindowLike
from water_edge.core.reading import Event, Severity
from water_edge.models.leak import features
from water_edge.models.manifest import shipped
from water_edge.models.runtime import Model, ModelSlot, load_model

log = structlog.get_logger(__name__)

DEFAULT_MANIFEST = shipped("water_edge.models.leak", "leak_detector.json")


@dataclass
class Score:
    """One scored buffer: per-window probabilities and the evidence behind them."""

    probabilities: list[float]  # empty when the classifier was not applied (`classified`)
    leak_probability: float  # NaN when not classified
    level_dbfs: float
    band_levels_db: dict[str, float]
    notes: list[str]
    # False: every second of it was a dropout (digital silence, a dead input: `core/dropouts.py`);
    # nothing of the pipe was heard, so the classifier's answer is not kept (not `classified`).
    heard: bool = True

    def not_heard(self) -> None:
        """Drop the classifier's answer on a recording in which nothing was heard: its windows of
        one value score as quiet, and a dead input must not read as "no leak"."""
        self.heard = False
        self.probabilities = []
        self.leak_probability = math.nan

    @property
    def classified(self) -> bool:
        return bool(self.probabilities)

    def to_json(self) -> dict[str, Any]:
        return {
            "leak_probability": round(self.leak_probability, 4) if self.classified else None,
            "window_probabilities": [round(p, 4) for p in self.probabilities],
            "level_dbfs": round(self.level_dbfs, 1),
            "band_levels_db": self.band_levels_db,
            "input": self.notes,
        }


def band_levels(row: npt.NDArray[np.float64]) -> dict[str, float]:
    return {f"{c:g}Hz": round(float(v), 1) for c, v in zip(features.band_centres_hz(), row, strict=False)}


class LeakScorer:
    """Features + model for a buffer of audio; blocking (call it in a worker thread from async code)."""

    def __init__(self, model: Model | None = None, *, slot: ModelSlot | None = None) -> None:
        # The slot lets a verified model be swapped in while the agent runs (`model_update`).
        self.slot = (
            slot
            if slot is not None
            else ModelSlot(model if model is not None else load_model(DEFAULT_MANIFEST))
        )

    @property
    def model(self) -> Model:
        return self.slot.model

    @property
    def threshold(self) -> float:
        t = self.model.manifest.threshold
        return 0.5 if t is None else float(t)

    def probabilities(self, rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        out = self.model.invoke(rows.astype(np.float32))
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def score(self, samples: npt.ArrayLike, sample_rate: int, *, classify: bool = True) -> Score:
        """Score a whole recording: mean probability over its 2 s windows (hop 1 s); with `classify`
        False its levels only (`Score.classified` False)."""
        canon, notes = features.prepare(samples, sample_rate)
        if canon.size < features.NFFT:
            raise ValueError(
                f"recording too short: {canon.size / features.SAMPLE_RATE:.2f} s, need at least "
                f"{features.NFFT / features.SAMPLE_RATE:.2f} s"
            )
        if canon.size < features.WINDOW:
            notes.append(f"shorter than one {features.WINDOW_S:g} s window; scored as one short window")
        rows = features.windows(canon, hop_s=1.0)
        probs = self.probabilities(rows) if classify else np.zeros(0)
        return Score(
            [float(p) for p in probs],
            float(probs.mean()) if probs.size else math.nan,
            features.rms_dbfs(canon),
            band_levels(rows.mean(axis=0)),
            notes,
        )


class Hysteresis:
    """Smoothed probability with on/off thresholds; `update` returns 'on', 'off' or None (no change)."""

    def __init__(
        self,
        threshold: float,
        gap: float = 0.2,
        alpha: float = 0.4,
        on_windows: int = 3,
        off_windows: int = 5,
    ) -> None:
        self.on_level, self.off_level = threshold, max(0.0, threshold - gap)
        self.alpha, self.on_windows, self.off_windows = alpha, on_windows, off_windows
        self.smoothed: float | None = None
        self.active = False
        self._run = 0

    def update(self, p: float) -> str | None:
        self.smoothed = p if self.smoothed is None else self.alpha * p + (1 - self.alpha) * self.smoothed
        s = self.smoothed
        if not self.active:
            self._run = self._run + 1 if s >= self.on_level else 0
            if self._run >= self.on_windows:
                self.active, self._run = True, 0
                return "on"
        else:
            self._run = self._run + 1 if s < self.off_level else 0
            if self._run >= self.off_windows:
                self.active, self._run = False, 0
                return "off"
        return None


@dataclass
class NightNoise:
    """Minimum night noise level per night (the figure commercial noise loggers report) and its spread."""

    start_hour: int = 2
    end_hour: int = 4
    utc_offset_h: float = 0.0
    keep_nights: int = 14
    nights: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=14))
    _current: tuple[str, float] | None = None

    def add(self, ts_ns: int, level_db: float) -> tuple[str, float] | None:
        """Record a window level; returns (night date, minimum dB) once a night has ended."""
        local = datetime.fromtimestamp(ts_ns / 1e9, UTC) + timedelta(hours=self.utc_offset_h)
        in_night = self.start_hour <= local.hour < self.end_hour
        finished = None
        if in_night:
            date = local.date().isoformat()
            if self._current is None or self._current[0] != date:
                finished = self._close()
                self._current = (date, level_db)
            else:
                self._current = (date, min(self._current[1], level_db))
        elif self._current is not None:
            finished = self._close()
        return finished

    def _close(self) -> tuple[str, float] | None:
        done, self._current = self._current, None
        if done is not None:
            self.nights.append(done)
        return done

    def summary(self) -> dict[str, Any]:
        levels = [v for _, v in self.nights]
        return {
            "nights": len(levels),
            "min_night_level_dbfs": round(levels[-1], 1) if levels else None,
            "spread_db": round(float(np.std(levels)), 2) if len(levels) > 1 else None,
        }


class LeakProcessor:
    """Turns a stream of audio windows into leak events; wire with `run(windows, emit)`."""

    def __init__(
        self,
        scorer: LeakScorer | None = None,
        source: str = "leak",
        *,
        alpha: float = 0.4,
        on_windows: int = 3,
        off_windows: int = 5,
        hop_s: float = 1.0,
        night: NightNoise | None = None,
    ) -> None:
        self.scorer = scorer if scorer is not None else LeakScorer()
        self.source = source
        self.hysteresis = Hysteresis(
            self.scorer.threshold, alpha=alpha, on_windows=on_windows, off_windows=off_windows
        )
        self.hop = int(hop_s * features.SAMPLE_RATE)
        self.night = night if night is not None else NightNoise()
        self.trend: deque[float] = deque(maxlen=30)
        self.windows_scored = 0
        self.bad_windows = 0
        self._buf = np.zeros(0)
        self._rate: int | None = None

    def _score_window(self, x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64], float]:
        row = features.window_features(x)
        p = float(self.scorer.probabilities(row[None, :])[0])
        return p, row, features.rms_dbfs(x)

    def _evidence(self, row: npt.NDArray[np.float64], level: float) -> dict[str, Any]:
        return {
            "leak_probability_smoothed": round(self.hysteresis.smoothed or 0.0, 4),
            "probability_trend": [round(p, 3) for p in self.trend],
            "threshold": self.scorer.threshold,
            "level_dbfs": round(level, 1),
            "band_levels_db": band_levels(row[: features.N_BANDS]),
            "model": self.scorer.model.version,
            "night_noise": self.night.summary(),
        }

    async def run(
        self, windows: AsyncIterator[AudioWindowLike], emit: Callable[[Event], Awaitable[None]]
    ) -> None:
        async for win in windows:
            try:
                canon, _ = features.prepare(win.samples, int(win.sample_rate))
            except ValueError as exc:
                self.bad_windows += 1
                log.warning("leak.bad_window", source=self.source, reason=str(exc), count=self.bad_windows)
                continue
            if self._rate is not None and self._rate != win.sample_rate:
                self._buf = np.zeros(0)  # the stream changed format: do not splice two rates together
            self._rate = int(win.sample_rate)
            self._buf = np.concatenate([self._buf, canon])
            # Timestamp of the last sample in the buffer; windows end there.
            end_ns = win.start_ts_ns + int(win.samples.shape[0] / win.sample_rate * 1e9)
            while self._buf.size >= features.WINDOW:
                x = self._buf[: features.WINDOW]
                self._buf = self._buf[self.hop :]
                ts = end_ns - int(self._buf.size / features.SAMPLE_RATE * 1e9)
                p, row, level = await asyncio.to_thread(self._score_window, x)
                self.windows_scored += 1
                self.trend.append(p)
                change = self.hysteresis.update(p)
                night = self.night.add(ts, level)
                if night is not None:
                    await emit(
                        Event(
                            "leak_noise_night",
                            self.source,
                            ts,
                            "info",
                            night[1],
                            {"night": night[0], **self.night.summary()},
                        )
                    )
                if change is not None:
                    await emit(self._event(change, ts, row, level))

    def _event(self, change: str, ts: int, row: npt.NDArray[np.float64], level: float) -> Event:
        s = self.hysteresis.smoothed or 0.0
        if change == "on":
            severity: Severity = "alarm" if s >= 0.9 else "warning"
            log.info("leak.detected", source=self.source, probability=round(s, 3))
            return Event("leak", self.source, ts, severity, round(s, 4), self._evidence(row, level))
        log.info("leak.cleared", source=self.source, probability=round(s, 3))
        return Event("leak_cleared", self.source, ts, "info", round(s, 4), self._evidence(row, level))
