"""`AudioLeakProcessor`: every hydrophone of one audio device against its own baseline, night by night.

Per channel (a *sensor*, `<device>.<channel>`), during the night window (local time, `timezone`):
one row of band levels and tonality per second (`levels.second_bands`) and the classifier's
probability (it runs every `classifier_every_s`, day and night, for the status), cut into checks of
`check_minutes`. Each finished check is stored
(`store.SensorStore`), and then either

- **learning**: once `baseline_nights` nights are stored and no baseline exists, the baseline is
  learned from them and saved as version 1 (`leak_baseline` event, info);
- **armed**: judged against the baseline (`judge.judge`) and fed to the sensor's `Confirmation`:
  `leak_warning` (first positive), `leak` (confirmed), `leak_cleared` (quiet nights, or a warning
  that was not confirmed). When two sensors of the device are positive in one check and the pipe
  is configured (`material`, `spacing_m`), their last `correlate_s` seconds are correlated and
  the position goes into the event. When the site's night flow rose within 3 nights
  (`fusion.SiteEvidence`), the event carries it and its severity rises.
- **not heard**: a check of digital silence, or whose bands lie `judge.SIGNAL_LOST_DB` below the
  baseline, is not judged (a dead input must never read as a leak): `hydrophone_signal_lost` once,
  `hydrophone_signal_restored` when it is heard again; silent nights are not learned from.
- **sensor faults**: a second that overlaps a window the audio driver marked with a sensor fault on
  the sensor's channel (`AudioWindow.faults`: digital silence, DC, mains hum only, a copy of the
  other channel) or holding a dropout (50 ms of one value, `core.dropouts`, judged on the second
  itself) is left out of the check (counted, `fault_seconds`): a dropout of zeros is not the pipe's
  quiet. A check left with too few seconds is neither stored nor judged; when the faults
  filled it, that is `hydrophone_signal_lost` with the fault as the reason. A second saturated at
  full scale (`clipping`) is the pipe, distorted: it is judged (a leak may be that loud) but its
  check (`CheckStats.saturated_s`) is never learnt from (`saturated_seconds`).

A baseline written by `edge-agent models calibrate leak` or the `leak_calibration` command is
picked up at the next check; a warning or leak in progress stays open under it. Each sensor's
confirmation is kept in `leak/<sensor>/confirmation.json` (`resume.py`), so a restart goes on with
the warning or leak in progress: not raised again, cleared once; so is the night since which it is
not heard: a restart neither loses it again nor forgets to say it is restored. Windows come from the device's
`WindowSource` on the event loop; a processor that falls behind drops windows (counted), never
blocks capture. Blocking work (FFTs, TFLite, file I/O, correlation) runs in worker threads.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.dropouts import holds_dropout
from water_edge.core.local_zone import zone
from water_edge.core.night_length import minutes
from water_edge.core.processor import AudioWindowLike, EventSink, ReadingSource, WindowSource
from water_edge.core.reading import Event, Severity, now_ns
from water_edge.core.sensor_faults import describe
from water_edge.models.leak import features
from water_edge.models.leak.baseline import Baseline, BaselineError, CheckStats
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.configured import judge_params, new_confirmation
from water_edge.models.leak.detector import LeakScorer
from water_edge.models.leak.fusion import SiteEvidence
from water_edge.models.leak.judge import SIGNAL_LOST_DB, Confirmation, Judgement, judge
from water_edge.models.leak.levels import SECOND, Decimator, second_bands
from water_edge.models.leak.resume import forget_other_devices, lost_since, record, resumed, say_unconfigured
from water_edge.models.leak.store import SensorStore, last_nights
from water_edge.models.nightwindow import NightWindow
from water_edge.models.runtime import load_model

log = structlog.get_logger(__name__)

NS = 1_000_000_000
FloatArray = npt.NDArray[np.float64]


def _dropout(second: FloatArray) -> str | None:
    """`dropout` when one second of the sensor's audio (canonical rate) holds a dropout, judged on
    the second itself: the driver's window-wide mark would cost the two or three seconds around it.
    A second of one value throughout is left to the driver's `silence` / `dc` (its windows) and to
    the check's own silence: a dead input is reported as not heard, not as stalling."""
    if second.size == 0 or second.max() == second.min():
        return None
    return "dropout" if holds_dropout(second, SECOND) else None


@dataclass(frozen=True)
class SensorHealth:
    """One hydrophone: its state, its baseline (version, nights, quality, age) and counters."""

    state: str  # learning | armed | warning | leak | missing (a configured channel the device lacks)
    baseline_version: int | None
    baseline_nights: int | None
    baseline_quality: str | None
    baseline_age_days: float | None
    nights_heard: int
    learning_needs: int
    checks: int
    last_rise_db: float | None  # the strongest judged band's rise in the last check
    signal_lost_since: str | None = None  # night since which the hydrophone is not heard
    last_error: str | None = None  # why its stored baseline cannot be used (a damaged file)
    fault_seconds: int = 0  # night seconds left out: the audio driver saw a sensor fault in them
    saturated_seconds: int = 0  # night seconds saturated at full scale: judged, never learnt from
    baseline_sample_rate_hz: int | None = None  # the rate of the audio its baseline was learnt from
    baseline_sample_rates_hz: tuple[int, ...] = ()  # the rates it was learnt from, when they differ


@dataclass(frozen=True)
class LeakHealth:
    windows_scored: int  # classifier windows
    windows_dropped: int
    leak_probability: float | None  # the classifier's latest, before any judgement
    sensors: dict[str, SensorHealth] = field(default_factory=dict)
    classifier: str | None = None  # "<name> <version>" in service (model_update swaps it)
    classifier_off: str | None = None  # why the classifier is not applied (audio below its rate)
    sample_rate: int | None = None  # the device's, once heard

    def status_lines(self) -> list[str]:
        lines = [
            f"{self.windows_scored} windows scored, leak probability {self.leak_probability}"
            + ("" if self.classifier is None else f", classifier {self.classifier}")
            + ("" if self.classifier_off is None else f" (not applied: {self.classifier_off})")
        ]
        for name, s in self.sensors.items():
            if s.state == "missing":
                lines.append(f"{name}: MISSING: {s.last_error}")
                continue
            if s.baseline_version is None:
                lines.append(f"{name}: learning, {s.nights_heard}/{s.learning_needs} nights heard")
            else:
                age = "" if s.baseline_age_days is None else f", {s.baseline_age_days:.0f} d old"
                lines.append(
                    f"{name}: {s.state}, baseline v{s.baseline_version} "
                    f"({s.baseline_nights} nights, {s.baseline_quality}{age})"
                )
            if s.signal_lost_since is not None:
                lines[-1] += f", SIGNAL LOST since {s.signal_lost_since}"
            if s.fault_seconds:
                lines[-1] += f", {s.fault_seconds} s with a sensor fault left out"
            if s.saturated_seconds:
                lines[-1] += f", {s.saturated_seconds} s saturated (not learnt from: lower the gain)"
            made = s.baseline_sample_rate_hz
            if made is not None and self.sample_rate is not None and made != self.sample_rate:
                lines[-1] += (
                    f", BASELINE LEARNT AT {made} Hz, the device now at {self.sample_rate} Hz "
                    "(the top bands differ: recalibrate)"
                )
            if s.baseline_sample_rates_hz:
                rates = " and ".join(str(r) for r in s.baseline_sample_rates_hz)
                lines[-1] += (
                    f", BASELINE FROM NIGHTS AT {rates} Hz (the device's rate changed while it learnt: "
                    "recalibrate at one rate)"
                )
            if s.last_error is not None:
                lines.append(f"{name}: {s.last_error}")
        return lines


@dataclass
class _Sensor:
    name: str
    channel: int
    store: SensorStore
    decimator: Decimator
    confirmation: Confirmation
    baseline: Baseline | None = None
    nights_heard: int = 0
    checks: int = 0
    levels: list[FloatArray] = field(default_factory=list)
    tonal: list[FloatArray] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    pending: FloatArray = field(default_factory=lambda: np.zeros(0))
    tail: FloatArray = field(default_factory=lambda: np.zeros(0))  # last 2 s, for the classifier
    ring: deque[FloatArray] = field(default_factory=deque)  # last correlate_s seconds, for locating
    last: Judgement | None = None
    signal_lost_since: str | None = None  # night of the first check not heard, while it lasts
    last_error: str | None = None
    night_quiet: deque[tuple[str, float]] = field(default_factory=lambda: deque(maxlen=30))
    faulty: deque[tuple[int, int, str]] = field(default_factory=deque)  # (from, to ns, fault) marked
    fault_seconds: int = 0  # night seconds left out for a sensor fault, since start
    check_faults: dict[str, int] = field(default_factory=dict)  # this check: fault -> seconds
    saturated: deque[tuple[int, int]] = field(default_factory=deque)  # (from, to ns) marked clipping
    saturated_seconds: int = 0  # night seconds saturated at full scale, since start
    check_saturated: int = 0  # this check's
    rate_said: tuple[int, int] | None = None  # (baseline version, rate) a mismatch was logged for
    saved: dict[str, Any] | None = None  # the confirmation record as last stored (`resume.py`)
    unsaved: bool = False  # the confirmation changed since: stored once its events are emitted
    checks_not_stored: int = 0  # checks in a row the card refused: the log says so at the first


class AudioLeakProcessor:
    """See the module docstring."""

    streams: frozenset[str] = frozenset()  # no readings feed: windows come from the device

    def __init__(
        self,
        section: LeakModelSection,
        driver: WindowSource,
        state_dir: Path,
        *,
        max_queued: int = 64,
        scorer: LeakScorer | None = None,
    ) -> None:
        self.section = section
        if scorer is None:
            scorer = LeakScorer(load_model(section.model)) if section.model else LeakScorer()
        self.scorer = scorer
        self.slot = scorer.slot  # `model_update` commands swap the classifier here
        self.name = f"leak:{section.device}"
        self.state_dir = Path(state_dir)
        self.window = NightWindow(section.night_start, section.night_end, zone(section.timezone))
        self.params = judge_params(section)
        self.evidence = SiteEvidence(self.state_dir, section.site) if section.site else None
        self._driver = driver
        self._max_queued = max_queued
        self.sensors: list[_Sensor] = []
        self.windows_dropped = 0
        self.windows_scored = 0
        self.last_probability: float | None = None
        self.bad_windows = 0
        self.missing: dict[str, str] = {}  # configured channel -> why it is not listened to
        self._rate: int | None = None
        self._next_ns: int | None = None  # where the next new sample starts (UTC ns)
        self._second_ns: int | None = None  # start of the next whole second of canonical audio
        self._check: tuple[date, int] | None = None
        self._since_clf = 0.0
        # Set by the factory on one processor: every device a leak table names; the sensors of any
        # other device are closed at the start if they were lost (`resume.forget_other_devices`).
        self.leak_devices: frozenset[str] | None = None
        self._unconfigured: list[Event] = []  # said with the first window's events (`_setup`)

    # -- wiring ---------------------------------------------------------------------------------

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        queue: asyncio.Queue[AudioWindowLike] = asyncio.Queue(self._max_queued)

        def offer(window: AudioWindowLike) -> None:
            if queue.full():
                self.windows_dropped += 1
            else:
                queue.put_nowait(window)

        remove = self._driver.add_window_listener(offer)
        try:
            if self.leak_devices is not None:
                devices = self.leak_devices
                for event in await asyncio.to_thread(forget_other_devices, self.state_dir, devices, now_ns()):
                    await emit(event)
            await self.consume(_drain(queue), emit)
        finally:
            remove()

    async def consume(self, windows: AsyncIterator[AudioWindowLike], emit: EventSink) -> None:
        """Process analysis windows in order (tests and replays call this directly)."""
        async for win in windows:
            events = await asyncio.to_thread(self._window, win)
            # Sensors of this device taken out of the config while not heard (`_setup`) first.
            closed, self._unconfigured = self._unconfigured, []
            for event in closed + events:
                await emit(event)
            # Stored once its events are out: a stop in between costs a repeated event after the
            # restart, never a lost one (as `driver_down`).
            if any(s.unsaved for s in self.sensors):
                await asyncio.to_thread(self._save_confirmations)

    def _save_confirmations(self) -> None:
        for s in self.sensors:
            if not s.unsaved:
                continue
            kept = self._record(s)
            why = s.store.save_confirmation(kept)
            # Not stored (a full card): tried again at the next check, not at every window.
            s.saved, s.unsaved = (kept if why is None else None), False
            if why is not None:
                s.last_error = f"confirmation not stored: {why}"

    @staticmethod
    def _version(s: _Sensor) -> int | None:
        return None if s.baseline is None else s.baseline.version

    def _record(self, s: _Sensor) -> dict[str, Any]:
        """The sensor's record as `confirmation.json` keeps it: its confirmation, and since when it
        is not heard."""
        return record(s.name, self._version(s), s.confirmation, s.signal_lost_since)

    # -- per window (worker thread) -------------------------------------------------------------

    def _setup(self, win: AudioWindowLike) -> None:
        names = list(win.channel_names) or [f"ch{i}" for i in range(win.samples.shape[1])]
        wanted = self.section.channels or names
        self.sensors = []
        has = ", ".join(names)
        missing = {
            f"{self.section.device}.{name}": f"channel {name!r} is not one of the device's ({has})"
            for name in wanted
            if name not in names
        }
        if missing != self.missing:  # said once, not at every window
            for sensor, why in missing.items():
                log.warning("leak.channel_missing", sensor=sensor, reason=why)
        self.missing = missing
        for name in wanted:
            if name not in names:
                continue
            sensor = f"{self.section.device}.{name}"
            store = SensorStore(self.state_dir, sensor, self.section.keep_nights)
            s = _Sensor(
                sensor, names.index(name), store, Decimator(int(win.sample_rate)), self.new_confirmation()
            )
            try:
                s.baseline = store.load()
            except BaselineError as exc:
                log.error("leak.baseline_unreadable", sensor=sensor, error=str(exc))
                s.last_error = f"baseline unreadable, learning again: {exc}"
            s.saved, unusable = resumed(store, self._version(s), s.confirmation)
            s.signal_lost_since = lost_since(s.saved)  # not heard at the last stop: not said again
            s.last_error = s.last_error or unusable
            s.nights_heard = len(store.nights())
            self.sensors.append(s)
        configured = {f"{self.section.device}.{n}" for n in wanted}
        self._unconfigured += say_unconfigured(self.state_dir, self.section.device, configured, now_ns())
        self._rate = int(win.sample_rate)

    def _classifier_hears(self) -> bool:
        return self._rate is None or features.classifier_hears(self._rate)

    def new_confirmation(self) -> Confirmation:
        """A sensor's confirmation as configured (`[models.leak.detection]`), from quiet."""
        return new_confirmation(self.section)

    def _window(self, win: AudioWindowLike) -> list[Event]:
        samples = np.asarray(win.samples, dtype=np.float64)
        if samples.ndim != 2 or samples.shape[0] == 0 or not np.all(np.isfinite(samples)):
            self.bad_windows += 1
            return []
        rate = int(win.sample_rate)
        if rate != self._rate:
            self._setup(win)
            self._next_ns = None
        start = int(win.start_ts_ns)
        n = samples.shape[0]
        end = start + n * NS // rate
        if self._next_ns is not None and end <= self._next_ns:  # nothing new: the clock stepped back
            self._next_ns = None
        if self._next_ns is not None and start < self._next_ns:  # overlapping windows: new part only
            skip = round((self._next_ns - start) * rate / NS)
            samples = samples[skip:]
            if samples.shape[0] == 0:
                return []
        elif (
            self._next_ns is None
            or start > self._next_ns + NS // 2
            or getattr(win, "dropped_before", 0) > 0  # frames lost before it: not a continuous clip
        ):  # first window or a gap
            for s in self.sensors:
                s.decimator, s.pending = Decimator(rate), np.zeros(0)
            self._second_ns = start
        self._next_ns = end
        faults = tuple(getattr(win, "faults", ()) or ())
        events: list[Event] = []
        for s in self.sensors:
            fault = faults[s.channel] if s.channel < len(faults) else None
            if fault == "clipping":
                s.saturated.append((start, end))
            elif fault is not None and (fault != "dropout" or not s.decimator.ratio):
                # Dropouts are found per second (`_second`), exactly when the rate is a multiple of
                # 8 kHz; a resampler (44.1 kHz) blurs a held value, so there the window's mark counts.
                s.faulty.append((start, end, str(fault)))
            canon = s.decimator.feed(samples[:, s.channel]) if s.channel < samples.shape[1] else np.zeros(0)
            s.pending = np.concatenate([s.pending, canon])
        whole = min(s.pending.size for s in self.sensors) // SECOND if self.sensors else 0
        for _ in range(whole):
            assert self._second_ns is not None
            events += self._second(self._second_ns)
            self._second_ns += NS
        return events

    def _second(self, ts: int) -> list[Event]:
        night = self.window.night_of(ts)
        key = None if night is None else (night, self._check_index(night, ts))
        events: list[Event] = []
        if self._check is not None and key != self._check:
            events += self._finish_check(*self._check)
        self._check = key
        # The classifier runs day and night (its latest probability is in the status); only the
        # night's windows go into the checks.
        self._since_clf += 1
        score_now = self._since_clf >= self.section.classifier_every_s
        if score_now:
            self._since_clf = 0
        keep = int(self.section.correlate_s)
        for s in self.sensors:
            x, s.pending = s.pending[:SECOND], s.pending[SECOND:]
            if (fault := self._fault_in(s, ts) or _dropout(x)) is not None:
                # not the pipe: neither scored, nor in the check, nor correlated across
                s.tail, s.ring = np.zeros(0), deque()
                if key is not None:
                    s.fault_seconds += 1
                    s.check_faults[fault] = s.check_faults.get(fault, 0) + 1
                continue
            # Asked every second, night or day: it also forgets the marks of past windows.
            if self._saturated_in(s, ts) and key is not None:
                s.saturated_seconds += 1
                s.check_saturated += 1
            x = x - x.mean()
            s.tail = np.concatenate([s.tail, x])[-features.WINDOW :]
            p = None
            if score_now and s.tail.size >= features.WINDOW and self._classifier_hears():
                p = float(self.scorer.probabilities(features.window_features(s.tail)[None, :])[0])
                self.windows_scored += 1
                self.last_probability = round(p, 4)
            if key is None:
                continue
            levels, tonal = second_bands(x)
            s.levels.append(levels[0])
            s.tonal.append(tonal[0])
            if p is not None:
                s.probs.append(p)
            s.ring.append(x)
            while len(s.ring) > keep:
                s.ring.popleft()
        return events

    @staticmethod
    def _fault_in(s: _Sensor, ts: int) -> str | None:
        """The sensor fault of a marked window overlapping the second from `ts`, if any."""
        while s.faulty and s.faulty[0][1] <= ts:
            s.faulty.popleft()
        for start, end, fault in s.faulty:
            if start < ts + NS and end > ts:
                return fault
        return None

    @staticmethod
    def _saturated_in(s: _Sensor, ts: int) -> bool:
        """Whether a window marked saturated overlaps the second from `ts`."""
        while s.saturated and s.saturated[0][1] <= ts:
            s.saturated.popleft()
        return any(start < ts + NS and end > ts for start, end in s.saturated)

    def _check_index(self, night: date, ts: int) -> int:
        start_min = minutes(self.section.night_start)
        local_start = datetime(night.year, night.month, night.day, start_min // 60, start_min % 60)
        start_ns = int(local_start.replace(tzinfo=self.window.tz).timestamp() * NS)
        return max(0, int((ts - start_ns) // int(self.section.check_minutes * 60 * NS)))

    # -- a finished check -----------------------------------------------------------------------

    def _finish_check(self, night: date, index: int) -> list[Event]:
        need = min(60, int(self.section.check_minutes * 30))  # at least half a check, or a minute
        events: list[Event] = []
        positive: list[_Sensor] = []
        for s in self.sensors:
            levels, tonal, probs = s.levels, s.tonal, s.probs
            faults, s.check_faults = s.check_faults, {}
            saturated, s.check_saturated = s.check_saturated, 0
            s.levels, s.tonal, s.probs = [], [], []
            if len(levels) < need:
                if sum(faults.values()) >= need:
                    events += self._fault_lost(s, faults, night)
                continue
            check = CheckStats.from_levels(
                np.array(levels),
                night=night.isoformat(),
                index=index,
                start_ns=self._second_ns - len(levels) * NS if self._second_ns else 0,
                probabilities=probs,
                tonality=np.array(tonal),
                saturated_s=saturated,
                sample_rate=self._rate,
            )
            not_stored = self._store_check(s, check)
            s.checks += 1
            try:
                stored = s.store.load()  # a new calibration (CLI, command) takes effect here
                s.last_error = not_stored
            except BaselineError as exc:
                log.error("leak.baseline_unreadable", sensor=s.name, error=str(exc))
                s.last_error = f"baseline unreadable: {exc}"
                stored = s.baseline
            if stored is not None and (s.baseline is None or stored.version != s.baseline.version):
                # A warning or leak in progress stays open under the new baseline, which then
                # confirms or clears it: dropped here, the centre's leak was never cleared.
                fresh = self.new_confirmation()
                fresh.restore(s.confirmation.to_dict(), counters=False)
                s.baseline, s.confirmation = stored, fresh
            if s.baseline is None:
                # Nights of digital silence (no hydrophone on the input) are not nights heard, nor
                # are checks of a saturated input (distorted bands) learnt from.
                stored_checks = self._stored_checks(s)
                heard = [c for c in stored_checks or [] if not c.silent and not c.saturated_s]
                if stored_checks is not None:  # unreadable: the count stays as it was
                    s.nights_heard = len({c.night for c in heard})
                events += self._signal(s, check.silent, check, None, night)
                events += self._learn(s, night, heard)
                continue
            if (stored_checks := self._stored_checks(s)) is not None:
                s.nights_heard = len({c.night for c in stored_checks})
            self._say_other_rate(s, s.baseline, check)
            j = judge(check, s.baseline, self.params)
            events += self._signal(s, j.signal_lost, check, s.baseline, night)
            if not s.night_quiet or s.night_quiet[-1][0] != check.night:
                s.night_quiet.append((check.night, round(j.quiet_db, 1)))
            events += self._confirm(s, check, j, night)
            if s.last is not None and s.last.positive:
                positive.append(s)
        self._mark_changed()
        if len(positive) >= 2:
            self._locate(positive, events)
        return events

    def _mark_changed(self) -> None:
        """Mark each sensor whose record (confirmation, lost signal) changed in the check: stored
        once the check's events are out (`consume`)."""
        for s in self.sensors:
            if self._record(s) != s.saved:
                s.unsaved = True

    def _confirm(self, s: _Sensor, check: CheckStats, j: Judgement, night: date) -> list[Event]:
        """The judged check through the sensor's confirmation: its events (its record is marked to be
        stored when it changed, in `_finish_check`)."""
        events: list[Event] = []
        episode = s.confirmation.since_night
        changes = s.confirmation.transitions(check.night, j)
        j = s.last = s.confirmation.last or j  # positive by accumulated evidence, if it was
        for change in changes:
            since = episode if change in ("cleared", "expired") else s.confirmation.since_night
            events.append(self._event(s, change, j, night, check.saturated_s, since_night=since))
        return events

    @staticmethod
    def _store_check(s: _Sensor, check: CheckStats) -> str | None:
        """Keep the check for later baselines; why not, when the card refuses (full, failing).
        The check is judged all the same: the baseline in service is in memory."""
        try:
            s.store.append(check)
        except OSError as exc:
            if not s.checks_not_stored:  # once while the card refuses them, not at every check
                log.error("leak.check_not_stored", sensor=s.name, error=str(exc))
            s.checks_not_stored += 1
            return f"check not stored: {exc.strerror or exc} ({s.store.checks_path})"
        if s.checks_not_stored:
            log.info("leak.check_stored_again", sensor=s.name, checks_not_stored=s.checks_not_stored)
            s.checks_not_stored = 0
        return None

    @staticmethod
    def _stored_checks(s: _Sensor) -> list[CheckStats] | None:
        """The sensor's stored checks; None when they cannot be read (logged; learning waits)."""
        try:
            return s.store.checks()
        except OSError as exc:
            log.error("leak.checks_unreadable", sensor=s.name, error=str(exc))
            return None

    def _learn(self, s: _Sensor, night: date, heard: list[CheckStats]) -> list[Event]:
        """Learn the baseline from the last `baseline_nights` finished nights the sensor was heard."""
        done = [c for c in heard if c.night != night.isoformat()]
        if len({c.night for c in done}) < self.section.baseline_nights:
            return []
        checks = last_nights(done, self.section.baseline_nights)
        try:
            baseline = Baseline.learn(
                checks,
                sensor=s.name,
                material=self.section.material,
                spread_tol_db=self.params.spread_tol_db,
                max_unsteady_bands=self.params.max_unsteady_bands,
            )
        except BaselineError as exc:  # nothing heard on those nights: keep learning
            log.error("leak.baseline_not_learned", sensor=s.name, error=str(exc))
            return []
        try:
            s.baseline = s.store.save(baseline)
        except BaselineError as exc:  # a full card: learning tries again at the next check
            log.error("leak.baseline_not_stored", sensor=s.name, error=str(exc))
            s.last_error = f"baseline not stored: {exc}"
            return []
        log.info(
            "leak.baseline_learned", sensor=s.name, version=s.baseline.version, nights=len(baseline.nights)
        )
        return [Event("leak_baseline", s.name, self._now(), "info", None, self._baseline_detail(s.baseline))]

    def _signal(
        self, s: _Sensor, lost: bool, check: CheckStats, baseline: Baseline | None, night: date
    ) -> list[Event]:
        """`hydrophone_signal_lost` when a sensor stops being heard, `..._restored` when it is again."""
        if lost == (s.signal_lost_since is not None):
            return []
        detail: dict[str, Any] = {"sensor": s.name, "night": night.isoformat()}
        if not lost:
            detail["since_night"] = s.signal_lost_since
            s.signal_lost_since = None
            log.info("leak.signal_restored", sensor=s.name)
            return [Event("hydrophone_signal_restored", s.name, self._now(), "info", None, detail)]
        s.signal_lost_since = night.isoformat()
        drop = None if baseline is None else float(np.median(check.p10 - baseline.level))
        detail.update(
            quiet_level_db=round(check.quiet_db, 1),
            below_baseline_db=None if drop is None else round(-drop, 1),
            baseline_version=None if baseline is None else baseline.version,
            reason="digital silence"
            if check.silent
            else f"its bands {SIGNAL_LOST_DB:g} dB or more below the baseline",
            action="check the hydrophone, its cable, its gain and the audio input",
        )
        log.warning("leak.signal_lost", sensor=s.name, reason=detail["reason"])
        return [Event("hydrophone_signal_lost", s.name, self._now(), "warning", None, detail)]

    @staticmethod
    def _say_other_rate(s: _Sensor, baseline: Baseline, check: CheckStats) -> None:
        """Log once per baseline and rate that a check is judged against a baseline learnt at
        another sample rate (the status says so while it lasts)."""
        made, now = baseline.sample_rate, check.sample_rate
        if made is None or now is None or made == now or s.rate_said == (baseline.version, now):
            return
        s.rate_said = (baseline.version, now)
        log.warning(
            "leak.baseline_other_rate",
            sensor=s.name,
            baseline_version=baseline.version,
            baseline_rate_hz=made,
            rate_hz=now,
            action="recalibrate: the top bands differ with the sample rate",
        )

    def _fault_lost(self, s: _Sensor, faults: dict[str, int], night: date) -> list[Event]:
        """`hydrophone_signal_lost` for a check the driver's sensor faults filled (once, as `_signal`)."""
        if s.signal_lost_since is not None:
            return []
        s.signal_lost_since = night.isoformat()
        fault = max(faults, key=lambda f: faults[f])
        # the audio driver's sensor fault (`AudioWindow.faults`), as the lost-signal event words it
        reason = describe(fault) if fault == "silence" else f"sensor fault: {describe(fault)}"
        log.warning("leak.signal_lost", sensor=s.name, reason=reason)
        detail: dict[str, Any] = {
            "sensor": s.name,
            "night": night.isoformat(),
            "reason": reason,
            "fault_seconds": dict(sorted(faults.items())),
            "action": "check the hydrophone, its cable, its gain and the audio input",
        }
        return [Event("hydrophone_signal_lost", s.name, self._now(), "warning", None, detail)]

    def _baseline_detail(self, b: Baseline) -> dict[str, Any]:
        return {
            "sensor": b.sensor,
            "version": b.version,
            "nights": b.nights,
            "quality": b.quality(self.section.baseline_nights),
            "night_quiet_db": b.night_quiet_db,
        }

    def _now(self) -> int:
        return self._second_ns or 0

    def _event(
        self, s: _Sensor, change: str, j: Judgement, night: date, saturated_s: int, *, since_night: str | None
    ) -> Event:
        """The event of a transition; `since_night` (the episode's first positive night) pairs a
        `leak_cleared` with the `leak_warning` and `leak` it ends."""
        b = s.baseline
        assert b is not None
        detail: dict[str, Any] = {
            "sensor": s.name,
            "night": night.isoformat(),
            "since_night": since_night,
            "baseline_version": b.version,
            "baseline_quality": b.quality(self.section.baseline_nights),
            "baseline_night_quiet_db": b.night_quiet_db,
            "night_quiet_trend_db": [q for _, q in s.night_quiet],
            **j.evidence(),
        }
        if saturated_s:  # judged all the same (a leak may be that loud); the technician should know
            detail["input_saturated_s"] = saturated_s
        ts = self._now()
        if change == "warning":
            log.warning("leak.warning", sensor=s.name, bands=[r["band_hz"] for r in j.risen])
            return Event("leak_warning", s.name, ts, "warning", round(j.score, 3), detail)
        if change == "leak":
            severity: Severity = "alarm"
            if self.evidence is not None:
                self.evidence.record("acoustic", night, {"sensor": s.name, "score": round(j.score, 3)})
                flow = self.evidence.recent("night_flow", night)
                if flow is not None:
                    detail["night_flow"] = flow
                    severity = "critical"
            log.warning("leak.detected", sensor=s.name, since=since_night, severity=severity)
            return Event("leak", s.name, ts, severity, round(j.score, 3), detail)
        detail["reason"] = "not confirmed" if change == "expired" else "quiet nights"
        log.info("leak.cleared", sensor=s.name, reason=detail["reason"], since_night=since_night)
        return Event("leak_cleared", s.name, ts, "info", round(j.score, 3), detail)

    def _locate(self, positive: list[_Sensor], events: list[Event]) -> None:
        """Two positive sensors on one pipe: GCC between the first two channels, into their events."""
        sec = self.section
        if sec.spacing_m is None or sec.material is None:
            return
        a, b = sorted(positive, key=lambda s: s.channel)[:2]
        if not a.ring or not b.ring:
            return
        from water_edge.models.leak.localise import locate

        xa, xb = np.concatenate(list(a.ring)), np.concatenate(list(b.ring))
        n = min(xa.size, xb.size)
        try:
            loc = locate(
                xa[-n:], xb[-n:], SECOND, sec.spacing_m, material=sec.material, diameter_mm=sec.diameter_mm
            )
        except ValueError as exc:
            log.warning("leak.locate_failed", error=str(exc))
            return
        position = {**loc.to_json(), "from_sensor": a.name, "towards_sensor": b.name}
        for i, e in enumerate(events):
            if e.kind in ("leak", "leak_warning") and e.source in (a.name, b.name):
                events[i] = Event(
                    e.kind, e.source, e.ts_ns, e.severity, e.score, {**e.detail, "position": position}
                )

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> LeakHealth:
        sensors = {}
        now = datetime.now(UTC)
        for s in self.sensors:
            b = s.baseline
            state = (
                "learning"
                if b is None
                else {"quiet": "armed"}.get(s.confirmation.state, s.confirmation.state)
            )
            sensors[s.name] = SensorHealth(
                state=state,
                baseline_version=None if b is None else b.version,
                baseline_nights=None if b is None else len(b.nights),
                baseline_quality=None if b is None else b.quality(self.section.baseline_nights),
                baseline_age_days=None if b is None else round(b.age_days(now), 2),
                nights_heard=s.nights_heard,
                learning_needs=self.section.baseline_nights,
                checks=s.checks,
                last_rise_db=None if s.last is None else round(max(s.last.rise_db.values(), default=0.0), 1),
                signal_lost_since=s.signal_lost_since,
                last_error=s.last_error,
                fault_seconds=s.fault_seconds,
                saturated_seconds=s.saturated_seconds,
                baseline_sample_rate_hz=None if b is None else b.sample_rate,
                baseline_sample_rates_hz=() if b is None else b.mixed_rates,
            )
        for name, why in self.missing.items():
            sensors[name] = SensorHealth("missing", None, None, None, None, 0, 0, 0, None, None, why)
        model = self.slot.health().model
        off = None
        if not self._classifier_hears():
            off = f"audio at {self._rate} Hz, below its {features.SAMPLE_RATE} Hz"
        return LeakHealth(
            self.windows_scored,
            self.windows_dropped,
            self.last_probability,
            sensors,
            None if model is None else f"{model.name} {model.version}",
            off,
            self._rate,
        )


async def _drain(queue: asyncio.Queue[AudioWindowLike]) -> AsyncIterator[AudioWindowLike]:
    while True:
        yield await queue.get()
