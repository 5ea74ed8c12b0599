"""`MachineSoundProcessor`: a microphone at a machine in, `machine_sound_anomaly` events out.

1. The audio device's analysis windows (`WindowSource`) are joined into clips of `clip_s` (10 s),
   averaged over the chosen channels (`clips.ClipAssembler`); a clip that cannot be scored in time
   is dropped and counted, never blocks capture.
2. Each clip's 136 features (`features.clip_features`, resampled to 16 kHz) are computed in a
   worker thread; a clip quieter than `running_min_dbfs` means the machine is off: skipped.
3. Running clips go to the machine's history (`store`); state `learning` until
   `calibration.auto_hours` of clips (at least `min_clips`), then the machine is calibrated from its
   own clips (`calibration.recalibrate`) and `armed`.
4. Armed: each clip is scored (in units of the alarm level); `on_clips` of the last `of_clips` above
   1 raise `machine_sound_anomaly` with the evidence (which feature groups moved, which way), the
   recent score trend and when the change began; `off_clips` in a row below `hysteresis` clear it.

A calibration written by the CLI or the signed command is picked up within `RELOAD_EVERY` clips.
A microphone not heard (digital silence) is `microphone_signal_lost` once and
`microphone_signal_restored` when it is heard again, also across restarts (`store.SignalRecord`).
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.instants import iso
from water_edge.core.processor import AudioWindowLike, EventSink, ReadingSource, WindowSource
from water_edge.core.reading import Event, Severity, now_ns
from water_edge.core.tasks import cancel_all
from water_edge.models.alarm_record import AlarmRecord
from water_edge.models.machine_sound.alarm import SoundAlarm, sound_alarm
from water_edge.models.machine_sound.calibration import recalibrate
from water_edge.models.machine_sound.clips import Clip, ClipAssembler
from water_edge.models.machine_sound.config import MachineSoundSection
from water_edge.models.machine_sound.detector import SoundCalibration, explain
from water_edge.models.machine_sound.features import clip_features, rms_dbfs, silent
from water_edge.models.machine_sound.health import MachineSoundHealth, SoundState
from water_edge.models.machine_sound.run_signal import RunSignal
from water_edge.models.machine_sound.store import (
    SignalRecord,
    SoundCalibrationStore,
    machine_dir,
    open_history,
    silent_unconfigured,
)
from water_edge.models.manifest import ModelError
from water_edge.models.pump.store import FeatureHistory, StorageErrors, keep_rows

log = structlog.get_logger(__name__)

FLUSH_CLIPS = 6  # history rows kept in memory before one SQLite transaction (a minute of clips)
RELOAD_EVERY = 30  # clips between checks for a calibration written by the CLI or a command
F64 = npt.NDArray[np.float64]
NOT_HEARD = "microphone not heard (digital silence): check its cable, input and gain"


@dataclass
class _State:
    history: FeatureHistory
    store: SoundCalibrationStore
    cal: SoundCalibration | None = None
    learning_since_ns: int | None = None
    learning_clips: int = 0
    calibrating: bool = False
    pending: list[tuple[int, F64]] = field(default_factory=list)
    scores: deque[tuple[int, float]] = field(default_factory=deque)
    abnormal: deque[F64] = field(default_factory=deque)  # features of recent clips above the level
    since_reload: int = 0


class MachineSoundProcessor:
    """Machine sound monitoring for one machine (one `[[models.machine_sound]]` table)."""

    def __init__(
        self,
        section: MachineSoundSection,
        driver: WindowSource,
        state_dir: Path,
        *,
        max_queued: int = 3,
        run_signal_streams: frozenset[str] = frozenset(),
    ) -> None:
        # Clips come from the device's windows; readings only for the run signal (`running_tag`).
        self.streams = run_signal_streams if section.running_tag else frozenset()
        self._run = (
            None
            if section.running_tag is None
            else RunSignal(section.running_tag, section.running_min, section.running_stale_s)
        )
        self.section = section
        self.name = f"machine_sound:{section.name}"
        self.state_dir = Path(state_dir)
        self._driver = driver
        self._max_queued = max_queued
        self._assembler = ClipAssembler(section.clip_s, section.channels)
        self._alarm = self._new_alarm()
        self._record = AlarmRecord(machine_dir(state_dir, section.name))
        self._signal = SignalRecord(self.state_dir, section.name)
        self._state: _State | None = None
        self.clips = self.clips_dropped = self.clips_stopped = self.clips_silent = 0
        self.clips_saturated = self.clips_no_run_signal = 0
        self._silent_since_ns: int | None = None
        self.scored = self.events = 0
        self.last_score: float | None = None
        self.last_error: str | None = None
        self._calibration_error: str | None = None  # `last_error` of a failed or unreadable calibration
        self._storage = StorageErrors()  # in `last_error` while they last
        self.calibrations_failed = 0  # automatic calibrations that failed since the start
        # Set by the factory on one processor: every machine a table names; a machine not named
        # whose microphone was not heard is closed at the start (`_unconfigured`).
        self.machines: frozenset[str] | None = None

    def _new_alarm(self) -> SoundAlarm:
        return sound_alarm(self.section)

    # -- set-up -----------------------------------------------------------------------------------

    def _open(self) -> _State:
        s = self.section
        state = _State(
            open_history(self.state_dir, s.name, s.history_days),
            SoundCalibrationStore(self.state_dir, s.name),
        )
        try:
            state.cal = state.store.load()
        except ModelError as exc:
            self.last_error = self._calibration_error = str(exc)
            log.error("machine_sound.calibration_unreadable", machine=s.name, error=str(exc))
        if state.cal is not None and (since := self._record.raised_since()) is not None:
            # Raised at the last stop: it clears, or goes on, from here (no second start).
            self._alarm.active, self._alarm.since_ns = True, since
        if state.cal is None:
            span = state.history.span()  # learning survives a restart: its clips are in the history
            if span is not None:
                state.learning_since_ns = span[0]
                state.learning_clips = state.history.count(span[0])
        state.scores = deque(maxlen=s.trend_clips)
        state.abnormal = deque(maxlen=s.of_clips)
        # Not heard at the last stop: not said again; restored when it is heard.
        self._silent_since_ns = self._signal.silent_since()
        if self._silent_since_ns is not None:
            self.last_error = self.last_error or NOT_HEARD
        return state

    # -- run --------------------------------------------------------------------------------------

    async def run(self, source: ReadingSource, emit: EventSink) -> None:
        state = self._state = await asyncio.to_thread(self._open)
        if self.machines is not None:
            await self._unconfigured(self.machines, emit)
        await self._report_history(state, emit)
        queue: asyncio.Queue[Clip] = asyncio.Queue(self._max_queued)

        def offer(window: AudioWindowLike) -> None:
            try:
                clips = self._assembler.feed(window)
            except ValueError as exc:  # the device lacks a configured channel
                self.last_error = str(exc)
                return
            for clip in clips:
                self.clips += 1
                if queue.full():
                    self.clips_dropped += 1
                else:
                    queue.put_nowait(clip)

        remove = self._driver.add_window_listener(offer)
        listening = None if self._run is None else asyncio.create_task(self._read_run_signal(source))
        try:
            while True:
                clip = await queue.get()
                await self._clip(state, clip, emit)
        finally:
            remove()
            if listening is not None:
                await cancel_all([listening])
            await asyncio.to_thread(self._close, state)

    async def _unconfigured(self, machines: frozenset[str], emit: EventSink) -> None:
        """A machine taken out of the config while its microphone was not heard: one line and
        `microphone_unconfigured`, which closes its `microphone_signal_lost` at the centre; its
        record now says heard, so that configured again it starts as heard."""
        for machine, since_ns, where in await asyncio.to_thread(
            silent_unconfigured, self.state_dir, machines
        ):
            action = (
                "the machine is no longer configured: its signal-lost state is cleared (configured again, "
                f"it starts as heard); its calibration and clip history stay in {where}: delete that "
                "directory if it is gone for good"
            )
            log.warning(
                "machine_sound.lost_microphone_unconfigured",
                machine=machine,
                since=iso(since_ns),
                action=action,
            )
            detail = {
                "since": iso(since_ns),
                "reason": "no longer in the config while not heard",
                "action": action,
            }
            await emit(Event("microphone_unconfigured", machine, now_ns(), "info", None, detail))

    async def _read_run_signal(self, source: ReadingSource) -> None:
        assert self._run is not None
        async for _stream, readings in source:
            for reading in readings:
                self._run.take(reading)

    def _stopped(self, clip: Clip, features: F64) -> bool:
        """Whether the machine was off for `clip`: quieter than `running_min_dbfs`, or its run
        signal said so (or said nothing)."""
        floor = self.section.running_min_dbfs
        if floor is not None and float(rms_dbfs(features)) < floor:
            self.clips_stopped += 1
            return True
        if self._run is None:
            return False
        end_ns = clip.start_ts_ns + round(len(clip.samples) / clip.sample_rate * 1e9)
        ran = self._run.ran_through(clip.start_ts_ns, end_ns)
        if ran is None:
            self.clips_no_run_signal += 1
        elif not ran:
            self.clips_stopped += 1
        return not ran

    async def _report_history(self, state: _State, emit: EventSink) -> None:
        """Say so when the machine's history was found damaged and moved aside (at start or while
        running); a machine still learning starts its stretch again, its clips having gone with it."""
        event = state.history.quarantine_event("machine_sound", self.section.name)
        if event is None:
            return
        self.last_error = state.history.quarantine_note
        if state.cal is None and state.history.found_while_running:
            state.learning_clips, state.learning_since_ns = 0, None
        await emit(event)

    def _close(self, state: _State) -> None:
        self._flush(state)
        state.history.close()

    def _flush(self, state: _State) -> None:
        rows, state.pending = state.pending, []
        # A full or read-only card: the machine is still scored, its history has a gap.
        error, written_again = keep_rows(state.history, rows, "machine_sound", machine=self.section.name)
        if error is not None or written_again:  # nothing to write says nothing of the card
            self._storage.history = error
        # Its alarm and microphone records that the card did not take, once it takes writes.
        self._state_not_stored(self._record.retry() or self._signal.retry())

    def _state_not_stored(self, why: str | None) -> None:
        """`last_error` while the alarm or microphone record waits to be written, cleared once both are."""
        self._storage.records = why or self._record.error or self._signal.error
        self.last_error = self._storage.last_error(self.last_error)

    async def _clip(self, state: _State, clip: Clip, emit: EventSink) -> None:
        features = await asyncio.to_thread(clip_features, clip.samples, clip.sample_rate)
        if not np.isfinite(features).all():
            self.last_error = "a clip gave non-finite features (silence or garbage): skipped"
            return
        if await self._silent(bool(silent(features)), clip.start_ts_ns, emit):
            return
        if self._stopped(clip, features):
            return
        if clip.saturated:
            # distorted: never into the history calibrations are computed from; scored once armed
            self.clips_saturated += 1
            if state.cal is None:
                return
        else:
            state.pending.append((clip.start_ts_ns, features))
        if len(state.pending) >= FLUSH_CLIPS:
            await asyncio.to_thread(self._flush, state)
            await self._report_history(state, emit)
        state.since_reload += 1
        if state.since_reload >= RELOAD_EVERY:
            state.since_reload = 0
            await asyncio.to_thread(self._reload, state)
        if state.cal is None:
            await self._learn(state, clip.start_ts_ns, emit)
            await self._report_history(state, emit)
            return
        score = float(state.cal.score(features)[0])
        self.scored += 1
        self.last_score = score
        state.scores.append((clip.start_ts_ns, score))
        if score > 1.0:
            state.abnormal.append(features)
        change = self._alarm.update(clip.start_ts_ns, score)
        if change is not None:
            self.events += 1
            # Recorded first: a stop right after the event must not forget the alarm.
            why = await asyncio.to_thread(self._record.raised, self._alarm.since_ns if change else None)
            self._state_not_stored(why)
            await emit(self._event(state, clip.start_ts_ns, change, score))
            if not change:
                state.abnormal.clear()

    async def _silent(self, is_silent: bool, ts_ns: int, emit: EventSink) -> bool:
        """Whether the clip is digital silence, to be neither learnt nor scored (a silent microphone
        is no anomaly of the machine); `microphone_signal_lost` / `_restored` on each change."""
        self.clips_silent += is_silent
        if is_silent == (self._silent_since_ns is not None):
            return is_silent
        detail: dict[str, Any] = {"machine": self.section.name, "device": self.section.device}
        # Each change recorded once its event is out: a stop in between costs a repeated event after
        # the restart, never a lost one.
        if not is_silent:
            detail["since"] = iso(self._silent_since_ns or ts_ns)
            self._silent_since_ns = None
            self.last_error = None
            await emit(Event("microphone_signal_restored", self.section.name, ts_ns, "info", None, detail))
            self._state_not_stored(await asyncio.to_thread(self._signal.silent, None))
            return False
        self._silent_since_ns = ts_ns
        self.last_error = NOT_HEARD
        log.warning("machine_sound.signal_lost", machine=self.section.name)
        detail["action"] = "check the microphone, its cable, the audio input and its gain"
        await emit(Event("microphone_signal_lost", self.section.name, ts_ns, "warning", None, detail))
        self._state_not_stored(await asyncio.to_thread(self._signal.silent, ts_ns))
        return True

    def _need(self) -> int:
        c = self.section.calibration
        return max(c.min_clips, math.ceil(c.auto_hours * 3600 / self.section.clip_s))

    async def _learn(self, state: _State, ts_ns: int, emit: EventSink) -> None:
        """Count a learning clip; at the stretch's end, calibrate. Emits
        `machine_sound_calibration_failed` when that fails: the machine is not listened to
        for another stretch, and the centre must know."""
        if state.learning_since_ns is None:
            state.learning_since_ns = ts_ns
        state.learning_clips += 1
        need = self._need()
        if state.learning_clips < need:
            return
        since, clips = state.learning_since_ns, state.learning_clips
        failure: ModelError | None = None
        state.calibrating = True
        try:
            await asyncio.to_thread(self._flush, state)
            cal = await asyncio.to_thread(
                recalibrate, self.section, state.history, state.store, state.learning_since_ns, ts_ns
            )
        except ModelError as exc:
            failure = exc
        finally:
            state.calibrating = False
        if failure is not None:  # the event after `calibrating` is false: the centre reads status after it
            self.last_error = self._calibration_error = str(failure)
            self.calibrations_failed += 1
            state.learning_clips, state.learning_since_ns = 0, None  # learn again from here
            log.warning("machine_sound.calibration_failed", machine=self.section.name, error=str(failure))
            detail = {
                "machine": self.section.name,
                "reason": str(failure),
                "from": iso(since),
                "to": iso(ts_ns),
                "clips": clips,
                "failures": self.calibrations_failed,
                "retry_after_clips": need,
            }
            await emit(
                Event("machine_sound_calibration_failed", self.section.name, ts_ns, "warning", None, detail)
            )
            return
        self._arm(state, cal)
        log.info("machine_sound.calibrated", machine=self.section.name, version=cal.version, clips=cal.clips)

    def _arm(self, state: _State, cal: SoundCalibration) -> None:
        if self.last_error is not None and self.last_error == self._calibration_error:
            self.last_error = None  # a calibration in service: its failure before is no error now
        self._calibration_error = None
        state.cal = cal
        state.abnormal.clear()
        raised, since = self._alarm.active, self._alarm.since_ns
        self._alarm = self._new_alarm()  # a raised alarm stays raised until the new calibration clears it
        self._alarm.active, self._alarm.since_ns = raised, since

    def _reload(self, state: _State) -> None:
        try:
            cal = state.store.load()
        except ModelError as exc:
            self.last_error = self._calibration_error = str(exc)
            return
        if cal is not None and (state.cal is None or cal.version != state.cal.version):
            log.info("machine_sound.calibration_reloaded", machine=self.section.name, version=cal.version)
            self._arm(state, cal)

    def _trend(self, state: _State) -> dict[str, Any]:
        pts = list(state.scores)
        out: dict[str, Any] = {"scores": [round(s, 3) for _, s in pts], "clip_s": self.section.clip_s}
        if len(pts) >= 3:
            t = np.array([ts for ts, _ in pts], dtype=np.float64) / 3.6e12  # hours
            s = np.array([v for _, v in pts])
            out["per_hour"] = round(float(np.polyfit(t - t[0], s, 1)[0]), 3)
        return out

    def _event(self, state: _State, ts_ns: int, rising: bool, score: float) -> Event:
        cal = state.cal
        assert cal is not None
        s = self.section
        base = {"machine": s.name, "device": s.device, "threshold": 1.0, "calibration_version": cal.version}
        if not rising:
            log.info("machine_sound.anomaly_cleared", machine=s.name, score=round(score, 3))
            return Event("machine_sound_anomaly_cleared", s.name, ts_ns, "info", round(score, 4), base)
        above = [v for _, v in state.scores if v > 1.0][-s.of_clips :] or [score]
        level = float(np.median(above))
        evidence = cal.evidence(np.vstack(list(state.abnormal))) if state.abnormal else []
        sentence = explain(evidence)
        detail = {
            **base,
            "explanation": sentence,
            "groups": [e for e in evidence if float(e["score"]) >= 1.0] or evidence[:1],
            "trend": self._trend(state),
            "since": iso(self._alarm.since_ns or ts_ns),
        }
        severity: Severity = "alarm" if level >= 2.0 else "warning"
        log.warning("machine_sound.anomaly", machine=s.name, score=round(level, 3), explanation=sentence)
        return Event("machine_sound_anomaly", s.name, ts_ns, severity, round(level, 4), detail)

    # -- health -----------------------------------------------------------------------------------

    def health(self) -> MachineSoundHealth:
        state = self._state
        cal = state.cal if state else None
        status: SoundState = "learning" if cal is None else "alarm" if self._alarm.active else "armed"
        progress = None
        if cal is None and state is not None:
            progress = round(min(1.0, state.learning_clips / self._need()), 3)
        return MachineSoundHealth(
            machine=self.section.name,
            device=self.section.device,
            state=status,
            calibration=None
            if cal is None
            else {
                "version": cal.version,
                "calibrated_at": cal.created,
                "clips": cal.clips,
                "from": cal.from_ts,
                "to": cal.to_ts,
            },
            learning_progress=progress if cal is None else None,
            calibrating=bool(state and state.calibrating),
            clips=self.clips,
            clips_dropped=self.clips_dropped,
            clips_stopped=self.clips_stopped,
            clips_no_run_signal=self.clips_no_run_signal,
            clips_silent=self.clips_silent,
            clips_broken=self._assembler.gaps,
            scored=self.scored,
            events=self.events,
            last_score=None if self.last_score is None else round(self.last_score, 4),
            recent_scores=[round(v, 3) for _, v in list(state.scores)[-10:]] if state else [],
            last_error=self.last_error,
            clips_faulty=self._assembler.faulty,
            clips_saturated=self.clips_saturated,
            calibrations_failed=self.calibrations_failed,
        )
