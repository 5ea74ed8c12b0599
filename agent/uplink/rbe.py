"""Report by exception: which readings are worth sending, decided once, before the outbox.

Where it sits: between the pipeline and the outbox (`ReportByException` wraps the outbox's
`append`), after the processors' feeds and `edge-agent tail`, which still see every acquisition.
A reading is *reported* (committed to the outbox, then published) when

- its tag has no reported value yet, or its quality, reason or unit changed, or
- its value left the deadband around the last *reported* value: `|v - last| > max(deadband,
  deadband_pct / 100 * |last|)` for numbers (so the percent band has an absolute floor); any change
  for booleans, strings and null; NaN is unchanged only by another NaN;
- or, with `max_interval_s`, when that long has passed (on the acquisition timestamps) since the
  tag was last reported: the **heartbeat** sends the last reported reading again, unchanged, with
  the timestamp of the acquisition that last changed it and `repeat = True`. A stuck sensor thus
  shows as an old timestamp, never as a fresh one.

With `send_previous` (the default), a reported change is preceded by the tag's last held-back
acquisition when its value differs from the last reported one (as a historian's exception
reporting does): a trend that joins the points draws the flat stretch or the slow ramp before a
step, not a line from the last report straight to the step. It is a real acquisition with its own
timestamp, sent late; at deadband 0 there is none (what was held back equals what was reported).

Why before the outbox and not at encode time: the decision must be made once and committed with
the data. The outbox replays rows after a drop, and live rows overtake a backlog; an encoder that
compared each row with what it last encoded would judge a replayed row against itself and drop
the changes the centre never received. Deciding at commit makes every replay identical, keeps the
outbox (SD card writes, backlog bytes after an outage) to what is reported, and the no-loss
promise applies to every reported reading unchanged. The filter's state moves only after the
append committed, so a failed append that the pipeline retries is judged the same way again.

The table of last reported readings is also the "current value" of every tag, which the Sparkplug
births carry (`current()`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from water_edge.agent.uplink.config import RbeConfig
from water_edge.buffer.types import Batch
from water_edge.core.reading import Reading

Key = tuple[str, str]  # (source, tag)


@dataclass(frozen=True, slots=True)
class Band:
    """The reporting rule of one tag."""

    deadband: float
    deadband_pct: float
    max_interval_ns: int | None


@dataclass(frozen=True, slots=True)
class RbeStats:
    """What the filter did since start: readings seen, reported, repeated (heartbeats), held back."""

    seen: int
    reported: int
    repeats: int
    suppressed: int
    tags: int

    def status_lines(self) -> list[str]:
        return [
            f"report by exception: seen {self.seen}  reported {self.reported}  heartbeats {self.repeats}"
            f"  suppressed {self.suppressed}  tags {self.tags}"
        ]


@dataclass(slots=True)
class _Last:
    reading: Reading  # the last reported reading (repeat False): value, quality and its own ts
    reported_ts: int  # acquisition ts at which the tag was last reported (change or heartbeat)
    held: Reading | None = None  # the last acquisition held back since then (`send_previous`)


@dataclass(slots=True)
class Decision:
    """What `decide()` found: the batches to commit and the filter state they imply."""

    batches: list[Batch]
    pending: dict[Key, _Last]
    seen: int
    reported: int
    repeats: int


def _is_number(v: object) -> bool:
    return type(v) is float or type(v) is int


def _changed(new: Reading, last: Reading, band: Band) -> bool:
    if new.quality != last.quality or new.reason != last.reason or new.unit != last.unit:
        return True
    a, b = new.value, last.value
    if type(a) is int and type(b) is int:
        # Exact: above 2^53 neighbouring integers (64-bit counters) are one float, and a change
        # of a few counts would never be seen.
        return abs(a - b) > max(band.deadband, band.deadband_pct / 100.0 * abs(b))
    if _is_number(a) and _is_number(b):
        fa, fb = float(a), float(b)  # type: ignore[arg-type]  # both checked to be int or float
        if math.isnan(fa) or math.isnan(fb):
            return not (math.isnan(fa) and math.isnan(fb))
        if math.isinf(fa) or math.isinf(fb):
            return fa != fb
        return abs(fa - fb) > max(band.deadband, band.deadband_pct / 100.0 * abs(fb))
    return type(a) is not type(b) or a != b


def _both_nan(a: object, b: object) -> bool:
    return type(a) is float and type(b) is float and math.isnan(a) and math.isnan(b)


class ExceptionFilter:
    """The per-tag decision and the table of last reported readings (see the module docstring)."""

    def __init__(self, config: RbeConfig) -> None:
        self._config = config
        self._bands: dict[Key, Band] = {}
        self._last: dict[Key, _Last] = {}
        self.seen = 0
        self.reported = 0
        self.repeats = 0
        self.suppressed = 0

    def band(self, source: str, tag: str) -> Band:
        """The rule for one tag: the first `[[uplink.rbe.tags]]` whose `match` fits `source/tag`."""
        key = (source, tag)
        band = self._bands.get(key)
        if band is None:
            band = self._bands[key] = self._resolve(f"{source}/{tag}")
        return band

    def _resolve(self, name: str) -> Band:
        cfg = self._config
        deadband, pct, interval = cfg.deadband, cfg.deadband_pct, cfg.max_interval_s
        for rule in cfg.tags:
            if fnmatch.fnmatchcase(name, rule.match):
                deadband = deadband if rule.deadband is None else rule.deadband
                pct = pct if rule.deadband_pct is None else rule.deadband_pct
                interval = interval if rule.max_interval_s is None else rule.max_interval_s
                break
        return Band(deadband, pct, None if interval is None else int(interval * 1e9))

    def decide(self, batches: Sequence[Batch]) -> Decision:
        """The batches to commit (readings filtered, empty ones left out) and the state they imply.

        Nothing changes here: pass the state to `commit()` once the batches are committed.
        """
        pending: dict[Key, _Last] = {}
        out: list[Batch] = []
        seen = reported = repeats = 0
        send_previous = self._config.send_previous
        table, bands = self._last, self._bands
        for batch in batches:
            if batch.readings is None:
                out.append(batch)
                continue
            seen += len(batch.readings)
            kept: list[Reading] = []
            for r in batch.readings:
                key = (r.source, r.tag)
                last = pending.get(key) or table.get(key)
                band = bands.get(key) or self.band(r.source, r.tag)
                if last is not None:
                    # Most readings of most polls: the reported value again, nothing else changed.
                    # No deadband can call that a change and there is nothing to hold; only a
                    # heartbeat can be due (the general path below).
                    same, heartbeat_ns = last.reading, band.max_interval_ns
                    v, w = r.value, same.value
                    if (
                        v == w
                        and type(v) is type(w)
                        and r.quality == same.quality
                        and r.reason == same.reason
                        and r.unit == same.unit
                        and (heartbeat_ns is None or r.ts_ns - last.reported_ts < heartbeat_ns)
                    ):
                        if last.held is not None:
                            pending[key] = _Last(same, last.reported_ts)
                        continue
                if last is None or _changed(r, last.reading, band):
                    if last is not None and last.held is not None:
                        kept.append(last.held)  # the value held until this change (`send_previous`)
                        reported += 1
                    plain = dataclasses.replace(r, repeat=False) if r.repeat else r
                    pending[key] = _Last(plain, r.ts_ns)
                    kept.append(plain)
                    reported += 1
                    continue
                # What a later change is to be preceded by: this acquisition when its value differs
                # from the reported one (NaN equal to NaN), else nothing. Inline: every unchanged
                # reading of every tag comes through here.
                v, w = r.value, last.reading.value
                held = None
                if send_previous and not ((v == w and type(v) is type(w)) or _both_nan(v, w)):
                    held = dataclasses.replace(r, repeat=False) if r.repeat else r
                if band.max_interval_ns is not None and r.ts_ns - last.reported_ts >= band.max_interval_ns:
                    pending[key] = _Last(last.reading, r.ts_ns, held)
                    kept.append(dataclasses.replace(last.reading, repeat=True))
                    repeats += 1
                elif held is not last.held:
                    pending[key] = _Last(last.reading, last.reported_ts, held)
            if kept:
                out.append(Batch(batch.stream, readings=kept))
        return Decision(out, pending, seen, reported, repeats)

    def commit(self, decision: Decision) -> None:
        """The batches of `decision` were committed: their readings are now the last reported."""
        self._last.update(decision.pending)
        self.seen += decision.seen
        self.reported += decision.reported
        self.repeats += decision.repeats
        self.suppressed += decision.seen - decision.reported - decision.repeats

    def current(self) -> dict[Key, Reading]:
        """The last reported reading of every tag (a copy): the value a Sparkplug birth carries."""
        return {key: last.reading for key, last in self._last.items()}

    def stats(self) -> RbeStats:
        return RbeStats(self.seen, self.reported, self.repeats, self.suppressed, len(self._last))


class Appender(Protocol):
    async def append(self, batches: Sequence[Batch]) -> list[int]: ...


class ReportByException:
    """An outbox `append` that commits only what the filter reports (wraps the pipeline's outbox)."""

    def __init__(self, outbox: Appender, exceptions: ExceptionFilter) -> None:
        self._outbox = outbox
        self.filter = exceptions

    async def append(self, batches: Sequence[Batch]) -> list[int]:
        decision = self.filter.decide(batches)
        if not decision.batches:
            self.filter.commit(decision)
            return []
        # Raises without committing anything: the filter's state stays as it was for the retry.
        ids = await self._outbox.append(decision.batches)
        self.filter.commit(decision)
        return ids
