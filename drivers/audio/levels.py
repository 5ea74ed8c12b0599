"""Level telemetry as noise loggers report it: RMS, peak and octave-band levels per interval, and
the minimum night level with its spread over recent nights.

Everything is built from whole seconds of audio counted from the first frame the meter saw, so
an interval covers exactly `interval_s * sample_rate` frames and a test can recompute it from the
file. A second cut by a gap is discarded; an interval missing seconds is reported `uncertain`.
Levels are dBFS with full scale = amplitude 1.0 (a full-scale sine reads -3.01 dBFS); with a
per-channel calibration offset they are also given in dB (re 1 uPa for a hydrophone).
A second in which a channel shows a sensor fault (`drivers.audio.faults`) makes that channel's
interval `uncertain` (`bad` when every second of it was not the pipe at all: silence, DC, hum, a
copied channel) and is left out of its night minimum.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Final

import numpy as np
import numpy.typing as npt

from water_edge.core import dsp
from water_edge.core.reading import BAD, GOOD, UNCERTAIN, Quality, Reading
from water_edge.core.sensor_faults import describe
from water_edge.drivers.audio.faults import classify
from water_edge.drivers.audio.ring import Chunk
from water_edge.drivers.audio.window import Clock

# Faults of a second that still holds the pipe: saturated (distorted), or with a dropout in it.
PIPE_IN_PART: Final = frozenset({"clipping", "dropout"})
FLOOR_DB: Final = -200.0  # the level of digital silence, instead of -inf
F64 = npt.NDArray[np.float64]


def db(power: F64 | float) -> F64:
    """10*log10 of a power (mean square), floored so silence reads FLOOR_DB rather than -inf."""
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-20)), FLOOR_DB)


def band_label(fc: float) -> str:
    return f"{fc:g}"


def welch_nfft(sample_rate: int) -> int:
    """The largest power of two <= sample_rate/4: ~4 Hz bins, fine enough for the 31.5 Hz band."""
    return 1 << int(math.log2(sample_rate / 4))


def local_clock(tz: tzinfo) -> Callable[[float], time.struct_time]:
    """`time.localtime` in `tz` rather than the process's own zone."""

    def localtime(t: float) -> time.struct_time:
        return datetime.fromtimestamp(t, tz).timetuple()

    return localtime


class NightTracker:
    """Minimum of the 1-s RMS levels in a nightly local-time window, reported once per night."""

    def __init__(
        self,
        start_hhmm: str,
        end_hhmm: str,
        history: int,
        channels: int,
        localtime: Callable[[float], time.struct_time] = time.localtime,
    ) -> None:
        self._start = _minutes(start_hhmm)
        self._length = (_minutes(end_hhmm) - self._start) % 1440
        self._localtime = localtime
        self._night: tuple[int, int, int] | None = None
        self._min: F64 = np.full(channels, np.inf)
        self._history: deque[F64] = deque(maxlen=history)

    def feed(self, ts_ns: int, level_db: F64) -> tuple[F64, F64 | None] | None:
        """Feed one 1-s level per channel (+inf: a second not to count, a sensor fault); returns
        (night minimum, spread) when a night closes. A channel with no second counted in a night
        has +inf as its minimum, and NaN as its spread while fewer than 2 of its nights counted."""
        t = ts_ns / 1e9
        local = self._localtime(t)
        minute = local.tm_hour * 60 + local.tm_min
        inside = (minute - self._start) % 1440 < self._length
        night = None
        if inside:
            started = self._localtime(t - ((minute - self._start) % 1440) * 60 - local.tm_sec)
            night = (started.tm_year, started.tm_mon, started.tm_mday)
        result = None
        if self._night is not None and night != self._night:
            result = self._close()
        if night is not None:
            self._night = night
            self._min = np.minimum(self._min, level_db)
        return result

    def _close(self) -> tuple[F64, F64 | None]:
        minimum = self._min.copy()
        self._history.append(minimum)
        self._night = None
        self._min = np.full_like(self._min, np.inf)
        spread = None
        if len(self._history) >= 2:
            history = np.stack(self._history)
            spread = np.array(
                [
                    np.std(col[np.isfinite(col)], ddof=1)
                    if np.count_nonzero(np.isfinite(col)) >= 2
                    else np.nan
                    for col in history.T
                ]
            )
        return minimum, spread


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


class LevelMeter:
    def __init__(
        self,
        source: str,
        clock: Clock,
        channel_names: Sequence[str],
        *,
        interval_s: int,
        bands_hz: Sequence[float],
        calibration_db: Sequence[float] | None,
        night: NightTracker,
    ) -> None:
        self.source = source
        self.clock = clock
        self.names = list(channel_names)
        self.sr = clock.sample_rate
        self.interval_s = interval_s
        self.calibration: F64 | None = None if calibration_db is None else np.asarray(calibration_db, float)
        self.night = night
        self.nfft = welch_nfft(self.sr)
        freqs = np.fft.rfftfreq(self.nfft, 1 / self.sr)
        self.df = self.sr / self.nfft
        self.bands = [(fc, (freqs >= fc / 2**0.5) & (freqs < fc * 2**0.5)) for fc in bands_hz]
        ch = len(self.names)
        self._sec = np.zeros((self.sr, ch), dtype=np.float32)
        self._fill = 0
        self._started = False
        self._origin = 0  # absolute index of the first frame seen: seconds count from here
        self._next = 0
        self._interval = 0
        self._seconds = 0
        self._ms_sum = np.zeros(ch)
        self._peak = np.zeros(ch)
        self._psd_sum = np.zeros((len(freqs), ch))
        self._nonfinite: dict[int, int] = {}  # interval -> frames that held NaN or inf (read as 0)
        self._faults: list[dict[str, int]] = [{} for _ in range(ch)]  # this interval: fault -> seconds

    def feed(self, chunks: Sequence[Chunk], nonfinite: npt.NDArray[np.int64] | None = None) -> list[Reading]:
        """Readings of the intervals `chunks` complete; `nonfinite`: absolute indices of their frames
        that held NaN or infinite samples (the driver has set them to 0), to mark those intervals."""
        out: list[Reading] = []
        if chunks and not self._started:
            self._started = True
            self._origin = chunks[0].start
        if nonfinite is not None and nonfinite.size:
            intervals, counts = np.unique(
                (nonfinite - self._origin) // (self.sr * self.interval_s), return_counts=True
            )
            for interval, count in zip(intervals.tolist(), counts.tolist(), strict=True):
                self._nonfinite[interval] = self._nonfinite.get(interval, 0) + count
        for chunk in chunks:
            frames, start = chunk.frames, chunk.start
            if self._fill and start != self._next:
                self._fill = 0  # a gap cut this second: drop it
            self._next = start + len(frames)
            if self._fill == 0:
                # seconds start on whole-second boundaries counted from the origin
                skip = (self._origin - start) % self.sr
                frames, start = frames[skip:], start + skip
            while len(frames):
                take = min(self.sr - self._fill, len(frames))
                self._sec[self._fill : self._fill + take] = frames[:take]
                self._fill += take
                frames = frames[take:]
                start += take
                if self._fill == self.sr:
                    self._fill = 0
                    out.extend(self._second((start - self.sr - self._origin) // self.sr))
        return out

    def _second(self, k: int) -> list[Reading]:
        out: list[Reading] = []
        interval = k // self.interval_s
        if interval != self._interval and self._seconds:
            out.extend(self._emit())
        self._interval = interval
        x = self._sec.astype(np.float64)
        ms = np.mean(x * x, axis=0)
        self._ms_sum += ms
        self._peak = np.maximum(self._peak, np.max(np.abs(x), axis=0))
        _, psd = dsp.welch(x, fs=self.sr, nperseg=self.nfft, axis=0)
        self._psd_sum += psd
        self._seconds += 1
        level = db(ms)
        for c, fault in enumerate(classify(self._sec, self.sr)):
            if fault is not None:
                self._faults[c][fault] = self._faults[c].get(fault, 0) + 1
                level[c] = np.inf  # not the pipe's level: out of the night minimum
        ts = self.clock.ts(self._origin + k * self.sr)
        closed = self.night.feed(ts, level)
        if closed is not None:
            out.extend(self._night_readings(ts, *closed))
        if k % self.interval_s == self.interval_s - 1:
            out.extend(self._emit())
        return out

    def _emit(self) -> list[Reading]:
        n = self._seconds
        end_index = self._origin + (self._interval + 1) * self.interval_s * self.sr
        ts = self.clock.ts(end_index)
        quality: Quality = GOOD
        why = []
        if n < self.interval_s:
            why.append(f"incomplete interval: {n} of {self.interval_s} s of audio")
        if nonfinite := self._nonfinite.pop(self._interval, 0):
            why.append(f"{nonfinite} frame(s) held NaN or infinite samples, read as 0")
        for stale in [k for k in self._nonfinite if k < self._interval]:  # in seconds cut by a gap
            del self._nonfinite[stale]
        if why:
            quality = UNCERTAIN
        rms = db(self._ms_sum / n)
        peak = db(self._peak**2)
        psd = self._psd_sum / n
        out: list[Reading] = []
        for c, name in enumerate(self.names):
            c_quality, c_why = quality, list(why)
            if faults := self._faults[c]:
                # not the pipe all along: bad; saturated (the pipe, distorted) or in part: uncertain
                not_pipe = sum(s for f, s in faults.items() if f not in PIPE_IN_PART)
                c_quality = BAD if not_pipe >= n else UNCERTAIN
                c_why.append(
                    "sensor fault: "
                    + ", ".join(f"{describe(f)} in {s} of {n} s" for f, s in sorted(faults.items()))
                )
            reason = "; ".join(c_why) or None

            def put(
                tag: str,
                value: float,
                unit: str,
                *,
                c_name: str = name,
                q: Quality = c_quality,
                r: str | None = reason,
            ) -> None:
                out.append(Reading(self.source, f"{c_name}.{tag}", ts, round(float(value), 2), q, unit, r))

            put("rms_dbfs", rms[c], "dBFS")
            put("peak_dbfs", peak[c], "dBFS")
            cal = None if self.calibration is None else float(self.calibration[c])
            if cal is not None:
                put("rms_db", rms[c] + cal, "dB")
            for fc, mask in self.bands:
                level = float(db(float(np.sum(psd[mask, c])) * self.df))
                if cal is None:
                    put(f"band_{band_label(fc)}hz_dbfs", level, "dBFS")
                else:
                    put(f"band_{band_label(fc)}hz_db", level + cal, "dB")
        self._seconds = 0
        self._faults = [{} for _ in self.names]
        self._ms_sum[:] = 0
        self._peak[:] = 0
        self._psd_sum[:] = 0
        return out

    def _night_readings(self, ts: int, minimum: F64, spread: F64 | None) -> list[Reading]:
        out = []
        for c, name in enumerate(self.names):
            if not np.isfinite(minimum[c]):  # no second of this night without a sensor fault
                continue
            if self.calibration is None:
                out.append(
                    Reading(
                        self.source, f"{name}.night_min_dbfs", ts, round(float(minimum[c]), 2), GOOD, "dBFS"
                    )
                )
            else:
                value = float(minimum[c] + self.calibration[c])
                out.append(Reading(self.source, f"{name}.night_min_db", ts, round(value, 2), GOOD, "dB"))
            if spread is not None and np.isfinite(spread[c]):
                out.append(
                    Reading(
                        self.source, f"{name}.night_min_spread_db", ts, round(float(spread[c]), 2), GOOD, "dB"
                    )
                )
        return out

    def tag_names(self) -> list[tuple[str, str]]:
        """(tag, unit) of every interval reading, for the supervisor's stand-in bad readings."""
        tags: list[tuple[str, str]] = []
        for name in self.names:
            tags += [(f"{name}.rms_dbfs", "dBFS"), (f"{name}.peak_dbfs", "dBFS")]
            if self.calibration is not None:
                tags.append((f"{name}.rms_db", "dB"))
            suffix, unit = ("db", "dB") if self.calibration is not None else ("dbfs", "dBFS")
            tags += [(f"{name}.band_{band_label(fc)}hz_{suffix}", unit) for fc, _ in self.bands]
        return tags
