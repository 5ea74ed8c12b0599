"""`PumpProcessor`: PLC readings in, `pump_anomaly` / `pump_anomaly_cleared` events out.

Per configured pump (`PumpModelConfig`):

1. readings whose `source/tag` (or bare `tag`) is mapped to a role update that role's latest value;
2. every `sample_interval_s` of reading time a sample is taken: the latest value of each role,
   NaN where it is missing, bad or older than `stale_after_s`;
3. a sample while the pump is stopped (`running_role` below `running_min`) is skipped and breaks the
   window (a restart does not splice onto the last run);
4. running samples go to the pump's rolling history (`models.pump.store.FeatureHistory`);
5. state `learning`: after `calibration.auto_hours` of running samples the pump is calibrated from
   its history (in a worker thread, awaited: readings wait in the processor's bounded feed, which
   holds minutes of a station's tags, so the result does not depend on thread timing), the
   calibration is stored with the next version and the state becomes `armed`;
6. state `armed`/`alarm`: once the pump's window is full (the scorer's 32 samples after
   calibration or a restart), each sample is scored against the calibration (off the event loop)
   and fed to persistence/hysteresis; a rise emits `pump_anomaly` naming the signals that moved, a clear
   emits `pump_anomaly_cleared`;
7. the frozen test's runs of identical readings are longer than the window: each running sample
   extends or breaks them (`detector.repeat_runs`), carried from sample to sample and, at a
   restart, taken up from the end of the history. Samples not taken (the pump stopped, the agent
   down) neither break nor extend a run, like a missing cell: a register frozen across a stop
   reads the same value after it.

A calibration written by `edge-agent models calibrate pump` while the agent runs is picked up
within `RELOAD_EVERY` samples. Reading time (not the wall clock) drives sampling, so a replayed
feed behaves exactly as a live one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog

from water_edge.core.instants import iso
from water_edge.core.memory import release_memory
from water_edge.core.reading import Event, Reading, Severity, numeric_value
from water_edge.core.sampling import SampleTimes
from water_edge.models.alarm_record import AlarmRecord
from water_edge.models.manifest import ModelError, shipped
from water_edge.models.pump.config import LARGEST_SIGNAL, ROLE_WORDS, PumpModelConfig
from water_edge.models.pump.detector import (
    Alarm,
    Calibration,
    Runs,
    Scorer,
    calibrate,
    contributors,
    held_together,
    repeat_runs,
    score_latest,
)
from water_edge.models.pump.health import PumpHealth, PumpState, PumpStatus
from water_edge.models.pump.store import (
    NS,
    CalibrationStore,
    FeatureHistory,
    StorageErrors,
    keep_rows,
    pump_dir,
)

log = structlog.get_logger(__name__)

DEFAULT_MANIFEST = shipped("water_edge.models.pump", "pump_scorer.json")
FLUSH_ROWS = 60  # history rows buffered in memory before one SQLite transaction
RELOAD_EVERY = 60  # samples between checks for a calibration written by the CLI


def recalibrate(
    cfg: PumpModelConfig,
    history: FeatureHistory,
    store: CalibrationStore,
    model: Scorer,
    *,
    window: int,
    model_version: str,
    from_ns: int | None = None,
    to_ns: int | None = None,
) -> Calibration:
    """Calibrate a pump from its history between `from_ns` and `to_ns` and store the next version.

    Blocking (numpy + TFLite): from the loop, run it in a thread. `CalibrationError` (a
    `ModelError`) when there are fewer than `calibration.min_samples` rows. A range of more than
    `MAX_CALIBRATION_ROWS` rows is thinned to blocks spread over it (`FeatureHistory.calibration_rows`):
    what calibration holds is bounded whatever the range. The heap it freed is given back to the
    system afterwards (`release_memory`): the agent runs under a memory cap.
    """
    from water_edge.models.pump.detector import CalibrationError

    try:
        rows = history.calibration_rows(from_ns, to_ns)
        need = cfg.calibration.min_samples
        if rows.in_range < need or rows.first_ns is None or rows.last_ns is None:
            raise CalibrationError(
                f"pump {cfg.name}: {rows.in_range} history rows in the range, need at least {need}"
            )
        c = cfg.calibration
        cal = calibrate(
            rows.values,
            history.channels,
            model,
            window=window,
            model_version=model_version,
            quantile=c.quantile,
            margin=c.margin,
            size_factor=c.size_factor,
            from_ts=iso(rows.first_ns),
            to_ts=iso(rows.last_ns),
            starts=rows.starts,
            frozen=rows.frozen,
        )
        del rows
        return store.save(cal)
    finally:
        release_memory()


@dataclass
class _Pump:
    cfg: PumpModelConfig
    roles: list[str]
    history: FeatureHistory
    store: CalibrationStore
    alarm: Alarm
    record: AlarmRecord  # the alarm raised or not, across restarts
    times: SampleTimes  # when a sample is due (reading time)
    latest: dict[str, tuple[int, float]] = field(default_factory=dict)  # role -> (ts_ns, value)
    window: deque[npt.NDArray[np.float64]] = field(default_factory=deque)
    runs: Runs | None = None  # runs of identical readings per role, after the last running sample
    run_window: deque[npt.NDArray[np.float32]] = field(default_factory=deque)  # beside `window`
    pending: list[tuple[int, npt.NDArray[np.float64]]] = field(default_factory=list)
    cal: Calibration | None = None
    learning_since_ns: int | None = None
    learning_rows: int = 0
    calibrating: bool = False
    calibrations_failed: int = 0  # automatic calibrations that failed since the start
    samples: int = 0
    stopped_samples: int = 0
    scored: int = 0
    events: int = 0
    last_score: float | None = None
    last_error: str | None = None
    calibration_error: str | None = None  # `last_error` of a failed or unreadable calibration
    storage: StorageErrors = field(default_factory=StorageErrors)  # in `last_error` while they last
    since_reload: int = 0


class PumpProcessor:
    """Pump anomaly detection for the pumps of one gateway. See the module docstring."""

    name = "pump_anomaly"

    def __init__(
        self,
        pumps: Sequence[PumpModelConfig],
        state_dir: Path,
        *,
        model: Scorer | None = None,
        model_version: str | None = None,
        window: int | None = None,
        streams: frozenset[str] | None = None,
    ) -> None:
        names = [p.name for p in pumps]
        if len(set(names)) != len(names):
            raise ValueError("pump names must be unique")
        self.state_dir = Path(state_dir)
        # The streams its signals come in (`WantsStreams`); None (built without a context): every one.
        if streams is not None:
            self.streams = streams
        self._model = model
        self._model_version = model_version
        self._window = window
        self._configs = list(pumps)
        self.pumps: dict[str, _Pump] = {}
        self._routes: dict[str, list[tuple[_Pump, str]]] = {}

    # -- set-up ---------------------------------------------------------------------------------

    def _load_model(self) -> None:
        if self._model is not None:
            self._window = self._window or 32
            self._model_version = self._model_version or "unknown"
            return
        from water_edge.models.runtime import load_model

        manifests = {p.model or DEFAULT_MANIFEST for p in self._configs}
        if len(manifests) > 1:
            raise ModelError("all pumps of one processor must use the same scorer model")
        loaded = load_model(manifests.pop())
        self._model = loaded
        self._model_version = loaded.version
        self._window = int(loaded.manifest.extra.get("window", 32))

    def _open(self) -> None:
        for cfg in self._configs:
            roles = [str(r) for r in cfg.signals]
            history = FeatureHistory.for_pump(self.state_dir, cfg.name, roles, cfg.history_days)
            store = CalibrationStore(self.state_dir, cfg.name)
            alarm = Alarm(cfg.persistence, cfg.clear_after, cfg.hysteresis)
            record = AlarmRecord(pump_dir(self.state_dir, cfg.name))
            pump = _Pump(cfg, roles, history, store, alarm, record, SampleTimes(cfg.sample_interval_s))
            try:
                pump.cal = store.load()
            except ModelError as exc:
                pump.last_error = pump.calibration_error = str(exc)
                log.error("pump.calibration_unreadable", pump=cfg.name, error=str(exc))
            if pump.cal is not None and pump.cal.channels != [r for r in roles if r in pump.cal.channels]:
                pump.cal = None  # the mapping changed since: learn again
            if pump.cal is not None and record.raised_since() is not None:
                pump.alarm.active = True  # raised at the last stop: it clears, or goes on, from here
            if pump.cal is not None:
                pump.runs = self._runs_from_history(pump, pump.cal)
            if pump.cal is None:
                span = history.span()  # learning survives a restart: the rows are in the history
                if span is not None:
                    pump.learning_since_ns = span[0]
                    pump.learning_rows = history.count(span[0])
            self.pumps[cfg.name] = pump
            for role, tag in cfg.signals.items():
                self._routes.setdefault(tag, []).append((pump, role))

    @staticmethod
    def _runs_from_history(pump: _Pump, cal: Calibration) -> Runs | None:
        """Where the runs of identical readings stood at the last kept sample: a register frozen
        before a restart is still counted from when it froze (the history's float32 rows are the
        precision runs are compared at). Twice the longest limit is enough to hold an alarm."""
        need = 2 * int(max(cal.frozen_limit, default=0.0))
        if need == 0:
            return None
        try:
            rows = pump.history.tail(need)
        except ModelError as exc:
            pump.last_error = str(exc)
            return None
        return repeat_runs(rows)[1] if len(rows) else None

    def _ensure_open(self) -> None:
        if not self.pumps:
            self._load_model()
            self._open()

    # -- run ------------------------------------------------------------------------------------

    async def run(
        self,
        readings: AsyncIterable[Reading] | AsyncIterable[tuple[str, list[Reading]]],
        emit: Callable[[Event], Awaitable[None]],
    ) -> None:
        """Consume readings (single `Reading`s, or the `(stream, [Reading])` batches of a
        `ReadingFeed`) until the source ends; emit events as they happen."""
        if not self.pumps:
            await asyncio.to_thread(self._ensure_open)
            for pump in self.pumps.values():
                await self._report_history(pump, emit)
        try:
            async for item in readings:
                if isinstance(item, Reading):
                    await self._reading(item, emit)
                else:
                    for reading in item[1]:
                        await self._reading(reading, emit)
        finally:
            for pump in self.pumps.values():
                await asyncio.to_thread(self._flush, pump)

    async def _reading(self, r: Reading, emit: Callable[[Event], Awaitable[None]]) -> None:
        routes = self._routes.get(f"{r.source}/{r.tag}") or self._routes.get(r.tag)
        if not routes:
            return
        for pump, role in routes:
            due = pump.times.reading(r.ts_ns)
            if due.stepped_back_ns:
                await self._stepped_back(pump, r.ts_ns, due.stepped_back_ns)
            for ts_ns in due.samples:
                await self._sample(pump, ts_ns, emit)
            value = _number(r)
            if value is not None:
                pump.latest[role] = (r.ts_ns, value)

    async def _stepped_back(self, pump: _Pump, ts_ns: int, back_ns: int) -> None:
        """The gateway's clock was stepped back to `ts_ns`: what was stamped after it, it stamped
        running ahead. Those history rows are deleted (the rows sampled as that time comes again
        would be mixed with them), a learning stretch starts again from here (a calibration
        learns from one clock), and the latest values stamped after `ts_ns` are forgotten. The
        scoring window and an alarm go on: the pump ran on, only its clock moved."""
        pump.latest = {role: got for role, got in pump.latest.items() if got[0] <= ts_ns}
        pump.pending = [(t, row) for t, row in pump.pending if t <= ts_ns]
        try:
            deleted = await asyncio.to_thread(pump.history.forget_after, ts_ns)
        except ModelError as exc:
            deleted = 0
            pump.last_error = str(exc)
        relearn = pump.cal is None and pump.learning_rows > 0
        if relearn:
            pump.learning_rows, pump.learning_since_ns = 0, None
        log.warning(
            "pump.clock_stepped_back",
            pump=pump.cfg.name,
            step_s=round(back_ns / NS, 1),
            history_rows_deleted=deleted,
            learning_restarted=relearn,
        )

    def _row(self, pump: _Pump, ts_ns: int) -> npt.NDArray[np.float64]:
        stale = int(pump.cfg.stale_after_s * NS)
        row = np.full(len(pump.roles), np.nan)
        for i, role in enumerate(pump.roles):
            got = pump.latest.get(role)
            if got is not None and ts_ns - got[0] <= stale:
                row[i] = got[1]
        return row

    def _running(self, pump: _Pump, row: npt.NDArray[np.float64]) -> bool:
        role = pump.cfg.running_role
        if role is None:
            return True
        value = row[pump.roles.index(role)]
        return bool(np.isfinite(value) and value >= pump.cfg.running_min)

    async def _sample(self, pump: _Pump, ts_ns: int, emit: Callable[[Event], Awaitable[None]]) -> None:
        row = self._row(pump, ts_ns)
        pump.samples += 1
        if not self._running(pump, row) or not np.isfinite(row).any():
            pump.stopped_samples += 1
            pump.window.clear()
            pump.run_window.clear()
            return
        run_rows, pump.runs = repeat_runs(row[None], pump.runs)
        pump.pending.append((ts_ns, row))
        if len(pump.pending) >= FLUSH_ROWS:
            await asyncio.to_thread(self._flush, pump)
            await self._report_history(pump, emit)
        pump.since_reload += 1
        if pump.since_reload >= RELOAD_EVERY:
            pump.since_reload = 0
            await asyncio.to_thread(self._reload, pump)
        if pump.cal is None:
            await self._learn(pump, ts_ns, emit)
            await self._report_history(pump, emit)
            return
        assert self._window is not None
        pump.window.append(row)
        pump.run_window.append(run_rows[0])
        while len(pump.window) > self._window:
            pump.window.popleft()
            pump.run_window.popleft()
        if len(pump.window) < self._window:
            return  # a window padded with its first sample is not a shape the scorer was trained on
        total, channel, residual, run = await asyncio.to_thread(self._score, pump)
        pump.scored += 1
        pump.last_score = total
        change = pump.alarm.update(total, pump.cal.threshold)
        if change is not None:
            pump.events += 1
            # Recorded first: a stop right after the event must not forget the alarm.
            pump.storage.records = await asyncio.to_thread(pump.record.raised, ts_ns if change else None)
            pump.last_error = pump.storage.last_error(pump.last_error)
            await emit(self._event(pump, ts_ns, change, total, channel, residual, run))

    async def _learn(self, pump: _Pump, ts_ns: int, emit: Callable[[Event], Awaitable[None]]) -> None:
        """Count a learning sample; at the stretch's end, calibrate. Emits `pump_calibration_failed`
        when that fails (the pump is then not watched for another stretch: the centre
        must know, not only the gateway's status)."""
        if pump.learning_since_ns is None:
            pump.learning_since_ns = ts_ns
        pump.learning_rows += 1
        need = max(
            pump.cfg.calibration.min_samples,
            int(pump.cfg.calibration.auto_hours * 3600 / pump.cfg.sample_interval_s),
        )
        if pump.learning_rows < need:
            return
        since = pump.learning_since_ns
        failure: ModelError | None = None
        pump.calibrating = True
        try:
            await asyncio.to_thread(self._flush, pump)
            cal = await asyncio.to_thread(
                recalibrate,
                pump.cfg,
                pump.history,
                pump.store,
                self._scorer(),
                window=self._window or 32,
                model_version=self._model_version or "unknown",
                from_ns=since,
                to_ns=ts_ns,
            )
        except ModelError as exc:
            failure = exc
        finally:
            pump.calibrating = False
        if failure is not None:  # the event after `calibrating` is false: the centre reads status after it
            pump.last_error = pump.calibration_error = str(failure)
            pump.calibrations_failed += 1
            samples = pump.learning_rows
            pump.learning_rows = 0  # keep learning: try again after another stretch
            pump.learning_since_ns = None
            log.warning("pump.calibration_failed", pump=pump.cfg.name, error=str(failure))
            detail = {
                "pump": pump.cfg.name,
                "reason": str(failure),
                "from": iso(since),
                "to": iso(ts_ns),
                "samples": samples,
                "failures": pump.calibrations_failed,
                "retry_after_samples": need,
            }
            await emit(Event("pump_calibration_failed", pump.cfg.name, ts_ns, "warning", None, detail))
            return
        self._arm(pump, cal)
        log.info(
            "pump.calibrated",
            pump=pump.cfg.name,
            version=cal.version,
            rows=cal.n_samples,
            threshold=round(cal.threshold, 4),
        )

    async def _report_history(self, pump: _Pump, emit: Callable[[Event], Awaitable[None]]) -> None:
        """Say so when the pump's history was found damaged and moved aside (at start or while
        running); a pump still learning starts its stretch again, its rows having gone with it."""
        event = pump.history.quarantine_event("pump", pump.cfg.name)
        if event is None:
            return
        pump.last_error = pump.history.quarantine_note
        if pump.cal is None and pump.history.found_while_running:
            pump.learning_rows, pump.learning_since_ns = 0, None
        await emit(event)

    def _arm(self, pump: _Pump, cal: Calibration) -> None:
        if pump.last_error is not None and pump.last_error == pump.calibration_error:
            pump.last_error = None  # a calibration in service: its failure before is no error now
        pump.calibration_error = None
        pump.cal = cal
        pump.window.clear()
        pump.run_window.clear()
        raised = pump.alarm.active  # a raised alarm stays raised until the new calibration clears it
        pump.alarm = Alarm(pump.cfg.persistence, pump.cfg.clear_after, pump.cfg.hysteresis)
        pump.alarm.active = raised

    def _reload(self, pump: _Pump) -> None:
        try:
            cal = pump.store.load()
        except ModelError as exc:
            pump.last_error = pump.calibration_error = str(exc)
            return
        if cal is not None and (pump.cal is None or cal.version != pump.cal.version):
            log.info("pump.calibration_reloaded", pump=pump.cfg.name, version=cal.version)
            self._arm(pump, cal)

    def _scorer(self) -> Scorer:
        assert self._model is not None
        return self._model

    def _score(
        self, pump: _Pump
    ) -> tuple[float, npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float32]]:
        cal = pump.cal
        assert cal is not None
        cols = [pump.roles.index(c) for c in cal.channels]
        x = np.array(pump.window)[:, cols]  # the rows stacked (as `np.vstack`, without its per-row checks)
        runs = np.array(pump.run_window)[:, cols]
        scored = score_latest(x, cal, self._scorer(), runs)
        return float(scored.score[-1]), scored.channel[-1], scored.residual, scored.run[-1]

    def _flush(self, pump: _Pump) -> None:
        rows, pump.pending = pump.pending, []
        # A full or read-only card: the pump is still scored, its history has a gap.
        error, written_again = keep_rows(pump.history, rows, "pump", pump=pump.cfg.name)
        if error is not None or written_again:  # nothing to write says nothing of the card
            pump.storage.history = error
        pump.storage.records = pump.record.retry()  # once the card takes writes
        pump.last_error = pump.storage.last_error(pump.last_error)

    def _event(  # noqa: PLR0917
        self,
        pump: _Pump,
        ts_ns: int,
        rising: bool,
        total: float,
        channel: npt.NDArray[np.float64],
        residual: npt.NDArray[np.float64],
        run: npt.NDArray[np.float32],
    ) -> Event:
        cal = pump.cal
        assert cal is not None
        signals, sentence = contributors(
            cal, channel, residual[-min(len(residual), 8) :], words=ROLE_WORDS, run=run
        )
        detail: dict[str, Any] = {
            "pump": pump.cfg.name,
            "signals": signals,
            "explanation": sentence,
            "threshold": round(cal.threshold, 4),
            "calibration_version": cal.version,
        }
        if rising:
            severity: Severity = "alarm" if total >= 2 * cal.threshold else "warning"
            if held_together(cal, run):
                # The pump is not what failed: nobody to send to it, but it is no longer watched.
                detail["cause"] = "readings_held_upstream"
                severity = "warning"
            log.warning("pump.anomaly", pump=pump.cfg.name, score=round(total, 4), explanation=sentence)
            return Event("pump_anomaly", pump.cfg.name, ts_ns, severity, round(total, 4), detail)
        log.info("pump.anomaly_cleared", pump=pump.cfg.name, score=round(total, 4))
        return Event(
            "pump_anomaly_cleared",
            pump.cfg.name,
            ts_ns,
            "info",
            round(total, 4),
            {"pump": pump.cfg.name, "threshold": round(cal.threshold, 4), "calibration_version": cal.version},
        )

    # -- health ---------------------------------------------------------------------------------

    def health(self) -> PumpHealth:
        pumps: dict[str, PumpStatus] = {}
        for name, pump in self.pumps.items():
            cal = pump.cal
            need = max(
                pump.cfg.calibration.min_samples,
                int(pump.cfg.calibration.auto_hours * 3600 / pump.cfg.sample_interval_s),
            )
            state: PumpState = "learning" if cal is None else "alarm" if pump.alarm.active else "armed"
            pumps[name] = PumpStatus(
                state=state,
                calibration=None
                if cal is None
                else {
                    "version": cal.version,
                    "calibrated_at": cal.created,
                    "rows": cal.n_samples,
                    "threshold": round(cal.threshold, 6),
                    "from": cal.from_ts,
                    "to": cal.to_ts,
                    "model_version": cal.model_version,
                },
                learning_progress=(
                    None if cal is not None else round(min(1.0, pump.learning_rows / need), 3)
                ),
                calibrating=pump.calibrating,
                samples=pump.samples,
                stopped_samples=pump.stopped_samples,
                scored=pump.scored,
                events=pump.events,
                last_score=None if pump.last_score is None else round(pump.last_score, 4),
                last_error=pump.last_error,
                clock_steps_back=pump.times.steps_back,
                calibrations_failed=pump.calibrations_failed,
            )
        return PumpHealth(self._model_version, pumps)


def _number(r: Reading) -> float | None:
    value = numeric_value(r)
    return value if value is not None and abs(value) < LARGEST_SIGNAL else None
