"""`FlowLeakProcessor`: district meter readings in, `flow_leak` events out, one step at a time.

Per `[[models.flow_leak]]` district: readings of the inflow, outflow and pressure tags update their
latest values; every `sample_s` of reading time a net-flow sample is taken (all flow tags fresh and
good, else skipped and counted); samples inside the local night window are kept for that night.
When the night window ends the night's MNF (`mnf.minimum_night_flow`, pressure-corrected when a
pressure tag is mapped; its glitches left out and counted, `mnf.night_figures`) goes to the
district's `StepDetector` and to the fixed-threshold reference:
a declared rise is a `flow_leak` event (added m3/h, the night it began, the night flow and the new
baseline, what the reference rule says), carrying the site's acoustic evidence when a hydrophone
there raised a leak within 3 nights (severity then `critical`). Every night also gives an info
`night_flow` event with the figures. State (`<state_dir>/flow_leak/<name>/state.json`) survives
restarts. Reading time drives everything, so a replayed history behaves as a live one.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import statistics
from collections import deque
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any

import structlog

from water_edge.core.files import read_json_state
from water_edge.core.local_zone import zone
from water_edge.core.processor import EventSink
from water_edge.core.reading import Event, Reading, Severity, numeric_value
from water_edge.core.sampling import SampleTimes
from water_edge.models.flow_leak.burst import BurstDetector, BurstParams, SlotRow
from water_edge.models.flow_leak.config import FlowLeakSection
from water_edge.models.flow_leak.detector import FixedThreshold, StepDetector, StepParams
from water_edge.models.flow_leak.holiday_dates import public_holidays
from water_edge.models.flow_leak.mnf import is_error_code, night_figures
from water_edge.models.flow_leak.volume import VolumeRate
from water_edge.models.json_record import JsonRecord
from water_edge.models.leak.fusion import SiteEvidence
from water_edge.models.nightwindow import NightWindow

log = structlog.get_logger(__name__)
NS = 1_000_000_000
STEPS_KEPT = 15  # steps between samples due that `_District.interval_s` is the median of


@dataclass(frozen=True)
class DistrictHealth:
    state: str  # learning | armed
    nights: int
    learning_needs: int
    baseline_m3h: float | None
    last_night: str | None
    last_night_flow_m3h: float | None
    rises: int
    samples: int
    skipped_samples: int
    volume_resets: int = 0  # a volume register that went down (a meter replaced, rolled over)
    error_codes: int = 0  # readings holding a meter's error code (mnf.ERROR_CODES), taken as missing
    spikes: int = 0  # net-flow samples skipped as glitches (glitch.py: by the bursts and the night)
    last_error: str | None = None  # why its state could not be stored (a full or failing card)
    burst_state: str | None = None  # learning | armed | burst; None: burst detection off
    burst_learned_days: int = 0
    bursts: int = 0
    burst_since: str | None = None  # the onset of the burst in progress (local time)
    clock_steps_back: int = 0  # readings found stamped earlier than before: sampling went on from them
    # What the baseline's noise lets this district report (None while learning): its night-to-night
    # noise, and the rise its detector is set for (`StepDetector.min_step`).
    night_noise_pct: float | None = None
    smallest_rise_m3h: float | None = None


@dataclass(frozen=True)
class FlowLeakHealth:
    districts: dict[str, DistrictHealth]

    def status_lines(self) -> list[str]:
        lines = []
        for name, d in self.districts.items():
            if d.baseline_m3h is None:
                lines.append(f"{name}: learning, {d.nights}/{d.learning_needs} nights")
            else:
                last = "" if d.last_night_flow_m3h is None else f", last night {d.last_night_flow_m3h:.1f}"
                lines.append(f"{name}: armed, baseline {d.baseline_m3h:.1f} m3/h{last}, {d.rises} rise(s)")
                if d.smallest_rise_m3h is not None and d.night_noise_pct is not None:
                    lines.append(
                        f"{name}: night-to-night noise {d.night_noise_pct:.1f} %: set for rises of "
                        f"{d.smallest_rise_m3h:.1f} m3/h and more"
                    )
            if d.burst_state == "burst":
                lines.append(f"{name}: BURST since {d.burst_since} (local time)")
            elif d.burst_state == "learning":
                lines.append(f"{name}: bursts: learning, {d.burst_learned_days} days")
            if d.spikes:
                lines.append(f"{name}: {d.spikes} glitched sample(s) skipped")
            if d.clock_steps_back:
                back = d.clock_steps_back
                lines.append(
                    f"{name}: clock stepped back {back} time(s): sampling went on from the readings' time"
                )
            if d.last_error is not None:
                lines.append(f"{name}: {d.last_error}")
        return lines


@dataclass
class _District:
    cfg: FlowLeakSection
    window: NightWindow
    step: StepDetector
    fixed: FixedThreshold
    state_path: Path
    times: SampleTimes  # when a net-flow sample is due (reading time)
    latest: dict[str, tuple[int, float]] = field(default_factory=dict)
    meters: dict[str, VolumeRate] = field(default_factory=dict)  # the volume tags
    flows: dict[str, tuple[int, float]] = field(default_factory=dict)  # ... as flows (reading time)
    night: date | None = None
    ts: list[int] = field(default_factory=list)
    flow: list[float] = field(default_factory=list)
    pressure: list[float] = field(default_factory=list)
    p_ref: float | None = None
    nights: int = 0
    last_night: str | None = None
    last_flow: float | None = None
    samples: int = 0
    skipped: int = 0
    error_codes: int = 0
    spikes: int = 0
    learning_pressure: list[float] = field(default_factory=list)
    last_error: str | None = None
    burst: BurstDetector | None = None
    burst_slots: int = 0  # the detector's slot count when its state was last stored
    burst_error: str | None = None  # why the burst state could not be stored (kept apart: hourly)
    # The state and burst files: one the card did not take is written again once it takes writes.
    record: JsonRecord | None = None
    burst_record: JsonRecord | None = None
    last_due: int | None = None  # the last sample due (reading time), kept or skipped
    steps: deque[int] = field(default_factory=lambda: deque(maxlen=STEPS_KEPT))  # between samples due

    def interval_s(self) -> float:
        """How often samples come: `sample_s`, or the readings' own interval when they are rarer
        (an hourly meter gives a sample an hour, `SampleTimes`): the median of the last steps."""
        return statistics.median(self.steps) / NS if self.steps else self.cfg.sample_s


class FlowLeakProcessor:
    name = "flow_leak"

    def __init__(
        self, sections: Sequence[FlowLeakSection], state_dir: Path, *, streams: frozenset[str] | None = None
    ) -> None:
        self.state_dir = Path(state_dir)
        # The streams its tags come in (`WantsStreams`); None (built without a context): every one.
        if streams is not None:
            self.streams = streams
        self.districts: list[_District] = []
        self._routes: dict[str, list[tuple[_District, str]]] = {}
        for cfg in sections:
            d = _District(
                cfg,
                NightWindow(cfg.night_start, cfg.night_end, zone(cfg.timezone)),
                StepDetector(self._params(cfg)),
                FixedThreshold(cfg.baseline_nights, cfg.reference_rise_pct),
                self.state_dir / "flow_leak" / cfg.name / "state.json",
                SampleTimes(cfg.sample_s),
                meters={tag: VolumeRate() for tag in cfg.volume},
            )
            d.record = JsonRecord(d.state_path, "flow_leak.state")
            d.burst_record = JsonRecord(self._burst_path(d), "flow_leak.burst")
            self._restore(d)
            if cfg.burst.enabled:
                d.burst = self._restore_burst(d)
            self.districts.append(d)
            for tag in {*cfg.inflow, *cfg.outflow, *([cfg.pressure] if cfg.pressure else [])}:
                self._routes.setdefault(tag, []).append((d, tag))

    @staticmethod
    def _params(cfg: FlowLeakSection) -> StepParams:
        return StepParams(
            baseline_nights=cfg.baseline_nights,
            min_added_pct=cfg.min_added_pct,
            min_added_m3h=cfg.min_added_m3h,
            min_added_sigma=cfg.min_added_sigma,
            h=cfg.h,
            track_nights=cfg.track_nights,
            sigma_nights=cfg.sigma_nights,
        )

    @staticmethod
    def _burst_params(cfg: FlowLeakSection) -> BurstParams:
        calendar = {"holidays", "holidays_country", "holidays_subdivision"}
        keys = cfg.burst.model_dump(exclude={"enabled", *calendar})
        holidays = frozenset(cfg.burst.holidays)
        if cfg.burst.holidays_country is not None:  # known: the config check asked the same already
            holidays |= public_holidays(cfg.burst.holidays_country, cfg.burst.holidays_subdivision)
        return BurstParams(**keys, holidays=holidays)

    @staticmethod
    def _burst_path(d: _District) -> Path:
        return d.state_path.with_name("burst.json")

    # -- state ----------------------------------------------------------------------------------

    def _restore(self, d: _District) -> None:
        data = read_json_state(d.state_path, "flow_leak.state")
        if not isinstance(data, dict):
            return
        try:
            step = StepDetector.from_dict(data.get("step", {}), self._params(d.cfg))
            fixed = data.get("fixed", {})
            learning = [float(v) for v in fixed.get("learning", [])]
            threshold, above = fixed.get("threshold"), bool(fixed.get("above", False))
            learning_pressure = [float(v) for v in data.get("learning_pressure", [])]
            nights = int(data.get("nights", 0))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            # JSON of another shape (a damaged card, a foreign file): learnt again, never a crash.
            log.warning(
                "flow_leak.state_unusable", district=d.cfg.name, path=str(d.state_path), error=str(exc)
            )
            d.last_error = f"state unusable, learning again: {exc} ({d.state_path})"
            return
        d.step, d.fixed.learning, d.fixed.threshold, d.fixed.above = step, learning, threshold, above
        d.p_ref, d.learning_pressure, d.nights = data.get("p_ref"), learning_pressure, nights
        d.last_night, d.last_flow = data.get("last_night"), data.get("last_flow")

    def _restore_burst(self, d: _District) -> BurstDetector:
        params = self._burst_params(d.cfg)
        stored = read_json_state(self._burst_path(d), "flow_leak.burst")
        try:
            return BurstDetector.from_dict(stored if isinstance(stored, dict) else {}, params)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            path = str(self._burst_path(d))
            log.warning("flow_leak.burst_state_unusable", district=d.cfg.name, path=path, error=str(exc))
            d.burst_error = f"burst state unusable, learning again: {exc} ({path})"
            return BurstDetector.from_dict({}, params)

    def _save(self, d: _District) -> None:
        data = {
            "step": d.step.to_dict(),
            "fixed": {"learning": d.fixed.learning, "threshold": d.fixed.threshold, "above": d.fixed.above},
            "p_ref": d.p_ref,
            "learning_pressure": d.learning_pressure,
            "nights": d.nights,
            "last_night": d.last_night,
            "last_flow": d.last_flow,
        }
        # The night is judged all the same; a restart before the card has room again starts from
        # the last state it could store.
        assert d.record is not None
        why = d.record.save(data)
        d.last_error = None if why is None else f"state not stored: {why}"

    def _retry(self) -> None:
        """Write the state and burst files the card did not take, once it takes writes (blocking)."""
        for d in self.districts:
            if d.record is not None and d.record.waiting and d.record.retry() is None:
                d.last_error = None
            if d.burst_record is not None and d.burst_record.waiting and d.burst_record.retry() is None:
                d.burst_error = None

    # -- run ------------------------------------------------------------------------------------

    async def run(
        self,
        readings: AsyncIterable[Reading] | AsyncIterable[tuple[str, list[Reading]]],
        emit: EventSink,
    ) -> None:
        async for item in readings:
            batch = [item] if isinstance(item, Reading) else item[1]
            for r in batch:
                for event in await self._reading(r):
                    await emit(event)
            if any(r is not None and r.waiting for d in self.districts for r in (d.record, d.burst_record)):
                await asyncio.to_thread(self._retry)  # tries the card at most every few seconds

    async def _reading(self, r: Reading) -> list[Event]:
        routes = self._routes.get(f"{r.source}/{r.tag}") or self._routes.get(r.tag)
        if not routes:
            return []
        events: list[Event] = []
        for d, tag in routes:
            due = d.times.reading(r.ts_ns)
            if due.stepped_back_ns:
                self._stepped_back(d, r.ts_ns, due.stepped_back_ns)
            for ts in due.samples:
                events += await self._sample(d, ts)
            value = numeric_value(r)
            if value is not None and is_error_code(value):
                d.error_codes += 1  # missing, like a bad reading: the last good value ages out
            elif value is not None:
                d.latest[tag] = (r.ts_ns, value)
        return events

    @staticmethod
    def _stepped_back(d: _District, ts: int, back_ns: int) -> None:
        """The gateway's clock was stepped back to `ts`: what was stamped after it, it stamped
        running ahead. The night in progress keeps its samples from before `ts`, so that none is
        out of time order (a step back past its start leaves it none: it is sampled as the clock
        comes to it); the latest values and the volume registers' readings stamped after `ts` are
        forgotten, so a tag not read again is missing, not fresh until reading time catches up."""
        keep = bisect.bisect_left(d.ts, ts)
        dropped = len(d.ts) - keep
        del d.ts[keep:], d.flow[keep:], d.pressure[keep:]
        if not d.ts:
            d.night = None
        d.last_due = None
        d.latest = {tag: got for tag, got in d.latest.items() if got[0] <= ts}
        d.flows = {tag: got for tag, got in d.flows.items() if got[0] <= ts}
        for meter in d.meters.values():
            if meter.last is not None and meter.last[0] > ts:
                meter.last = None  # its next reading starts the register again
        log.warning(
            "flow_leak.clock_stepped_back",
            district=d.cfg.name,
            step_s=round(back_ns / NS, 1),
            night_samples_dropped=dropped,
        )

    async def _sample(self, d: _District, ts: int) -> list[Event]:
        events: list[Event] = []
        if d.last_due is not None and ts > d.last_due:
            d.steps.append(ts - d.last_due)
        d.last_due = ts
        self._volume_flows(d)
        night = d.window.night_of(ts)
        if d.night is not None and night != d.night:
            events += await asyncio.to_thread(self._close_night, d)
        d.night = night
        if night is None and d.burst is None:
            return events
        stale = int(d.cfg.stale_after_s * NS)

        def fresh(tag: str) -> float | None:
            got = (d.flows if tag in d.meters else d.latest).get(tag)
            return got[1] if got is not None and ts - got[0] <= stale else None

        flows = [fresh(t) for t in d.cfg.inflow], [fresh(t) for t in d.cfg.outflow]
        d.samples += 1
        if any(v is None for v in (*flows[0], *flows[1])):
            d.skipped += 1
            return events
        net = sum(v for v in flows[0] if v is not None) - sum(v for v in flows[1] if v is not None)
        if d.burst is not None and d.burst.glitch(net):
            d.spikes += 1  # kept out of the night too (the night has its own rule: `_close_night`)
            return events
        p = fresh(d.cfg.pressure) if d.cfg.pressure else None
        if d.burst is not None:
            events += await self._burst_sample(d, ts, net, math.nan if p is None else p)
        if night is None:
            return events
        d.ts.append(ts)
        d.flow.append(net)
        d.pressure.append(math.nan if p is None else p)
        return events

    async def _burst_sample(self, d: _District, ts: int, net: float, pressure: float) -> list[Event]:
        assert d.burst is not None
        local = datetime.fromtimestamp(ts / NS, d.window.tz).replace(tzinfo=None)
        unlearnt = len(d.burst.unlearnt)
        events = [e for row in d.burst.add(local, net, pressure) if (e := self._burst_event(d, row, ts))]
        for start, flow in d.burst.unlearnt[unlearnt:]:
            d.spikes += 1
            log.warning(
                "flow_leak.burst_glitch_unlearnt",
                district=d.cfg.name,
                slot_local=start.isoformat(timespec="minutes"),
                flow_m3h=round(flow, 3),
            )
        # Stored hourly and at every event: a restart loses at most an hour of profile
        if events or d.burst.slots_closed - d.burst_slots >= max(1, 60 // d.cfg.burst.slot_minutes):
            d.burst_slots = d.burst.slots_closed
            state = d.burst.to_dict()
            assert d.burst_record is not None
            why = await asyncio.to_thread(d.burst_record.save, state)
            d.burst_error = None if why is None else f"burst state not stored: {why}"
        return events

    def _burst_event(self, d: _District, row: SlotRow, ts: int) -> Event | None:
        if not row.event:
            return None
        onset = None if row.onset is None else row.onset.isoformat(timespec="minutes")
        detail: dict[str, Any] = {
            "district": d.cfg.name,
            "onset_local": onset,
            "onset_utc": None if row.onset is None else _utc(row.onset, d.window.tz),
            "slot_local": row.start.isoformat(timespec="minutes"),
            "slot_utc": _utc(row.start, d.window.tz),
            "added_m3h": None if row.size is None else round(row.size, 3),
            "flow_m3h": None if row.flow is None else round(row.flow, 3),
            "expected_m3h": None if row.expected is None else round(row.expected, 3),
        }
        if row.event == "burst":
            assert d.burst is not None
            b = d.burst.min_burst
            detail["min_burst_m3h"] = None if b is None else round(b, 3)
            detail["day_kind"] = d.burst.params.day_kind(row.start.date())  # the profile it is judged on
            if row.pressure_drop is not None:
                detail["pressure_drop"] = round(row.pressure_drop, 3)
            big = row.size is not None and b is not None and row.size >= 3 * b
            log.warning("flow_leak.burst", district=d.cfg.name, added_m3h=detail["added_m3h"], onset=onset)
            return Event("burst", d.cfg.name, ts, "critical" if big else "alarm", detail["added_m3h"], detail)
        detail["how"] = "repaired" if row.event == "cleared" else "accepted as the new level"
        detail["duration_h"] = None if row.duration_h is None else round(row.duration_h, 2)
        detail["volume_lost_m3"] = None if row.volume_m3 is None else round(row.volume_m3, 1)
        return Event("burst_cleared", d.cfg.name, ts, "info", detail["added_m3h"], detail)

    @staticmethod
    def _volume_flows(d: _District) -> None:
        """The flow through each volume register since its reading at the previous sample."""
        for tag, meter in d.meters.items():
            got = d.latest.get(tag)
            if got is None:
                continue
            resets = meter.resets
            flow = meter.rate(*got)
            if flow is not None:
                d.flows[tag] = (got[0], flow)
            elif meter.resets > resets:
                d.flows.pop(tag, None)
                log.warning("flow_leak.volume_reset", district=d.cfg.name, tag=tag, volume=got[1])

    def _close_night(self, d: _District) -> list[Event]:
        night = d.night
        assert night is not None
        measured = night_figures(
            d.ts,
            d.flow,
            d.pressure,
            window_min=d.window.minutes_on(night),
            average_minutes=d.cfg.average_minutes,
            interval_s=d.interval_s(),
        )
        mnf, pressure = measured.flow, measured.pressure
        d.spikes += measured.glitches
        d.ts, d.flow, d.pressure = [], [], []
        value = mnf
        if mnf is not None and d.cfg.pressure and pressure is not None and pressure > 0:
            if d.p_ref is None:
                d.learning_pressure.append(pressure)
                if len(d.learning_pressure) >= d.cfg.baseline_nights:
                    d.p_ref = sorted(d.learning_pressure)[len(d.learning_pressure) // 2]
            ref = d.p_ref or pressure
            value = mnf * (ref / pressure) ** d.cfg.pressure_exponent
        row = d.step.update(night, value)
        ref_row = d.fixed.update(night, value)
        d.nights += 1
        d.last_night, d.last_flow = night.isoformat(), None if value is None else round(value, 3)
        self._save(d)
        ts = d.times.next_ns or 0
        figures: dict[str, Any] = {
            "district": d.cfg.name,
            "night": night.isoformat(),
            "night_flow_m3h": None if mnf is None else round(mnf, 3),
            "night_flow_corrected_m3h": None if value is None else round(value, 3),
            "pressure": None if pressure is None else round(pressure, 3),
            "baseline_m3h": None if row.baseline is None else round(row.baseline, 3),
            "state": d.step.state,
            "reference_rule": {"threshold_m3h": ref_row.baseline, "alarm": d.fixed.above},
        }
        events = [Event("night_flow", d.cfg.name, ts, "info", figures["night_flow_corrected_m3h"], figures)]
        if row.event == "leak":
            assert row.added is not None
            detail = {
                **figures,
                "added_m3h": round(row.added, 3),
                "began_night": None if row.onset is None else row.onset.isoformat(),
                "new_baseline_m3h": None if d.step.baseline is None else round(d.step.baseline, 3),
                "rise": d.step.rises,
            }
            severity: Severity = "alarm"
            evidence = SiteEvidence(self.state_dir, d.cfg.fusion_site)
            evidence.record("night_flow", night, {"district": d.cfg.name, "added_m3h": round(row.added, 3)})
            acoustic = evidence.recent("acoustic", night)
            if acoustic is not None:
                detail["acoustic"] = acoustic
                severity = "critical"
            log.warning(
                "flow_leak.rise",
                district=d.cfg.name,
                added_m3h=round(row.added, 2),
                began=detail["began_night"],
            )
            events.append(Event("flow_leak", d.cfg.name, ts, severity, round(row.added, 3), detail))
        return events

    def health(self) -> FlowLeakHealth:
        return FlowLeakHealth(
            {
                d.cfg.name: DistrictHealth(
                    state=d.step.state,
                    nights=d.nights,
                    learning_needs=d.cfg.baseline_nights,
                    baseline_m3h=None if d.step.baseline is None else round(d.step.baseline, 3),
                    last_night=d.last_night,
                    last_night_flow_m3h=d.last_flow,
                    rises=d.step.rises,
                    samples=d.samples,
                    skipped_samples=d.skipped,
                    volume_resets=sum(m.resets for m in d.meters.values()),
                    error_codes=d.error_codes,
                    spikes=d.spikes,
                    clock_steps_back=d.times.steps_back,
                    night_noise_pct=None
                    if d.step.sigma is None
                    else round(math.expm1(d.step.sigma) * 100, 2),
                    smallest_rise_m3h=None if d.step.level is None else round(d.step.min_step, 3),
                    last_error=d.last_error or d.burst_error,
                    burst_state=None if d.burst is None else d.burst.state,
                    burst_learned_days=0 if d.burst is None else d.burst.learned_days,
                    bursts=0 if d.burst is None else d.burst.bursts,
                    burst_since=None
                    if d.burst is None or d.burst.alarm_since is None
                    else d.burst.alarm_since.isoformat(timespec="minutes"),
                )
                for d in self.districts
            }
        )


def _utc(local: datetime, tz: tzinfo) -> str:
    """A district's local wall time as UTC (`2026-10-25T00:30Z`), for a centre that files events
    by UTC: the local hour repeated when clocks go back reads as its first occurrence."""
    return local.replace(tzinfo=tz).astimezone(UTC).isoformat(timespec="minutes").replace("+00:00", "Z")
