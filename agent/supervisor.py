"""Runs one polled device: opens it, polls it at a fixed rate, and keeps it alive.

When the device cannot be reached the runner reports it down once (an Event), stands in a
bad-quality reading for every tag at each poll so the centre sees a gap as a gap, and reopens the
driver after a capped, jittered backoff. An unexpected exception from a driver is the one place
with a last-resort handler: it is logged with its traceback, counted, and treated the same way.
`DeviceRunner.status()` is the device's entry in the status document's `drivers` section.

`DeviceRunner.read_now()` answers the signed `read_now` command without disturbing the device's
own reading: a polled device is read once more between two of its polls (never at the same time as
one); a streaming device is not read at all (its transport has one reader, the stream, and a
second one would take its data or break it): the answer is the latest reading of each tag as the
stream delivered it, with its age. See docs/security.md ("read_now").
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
import structlog

from water_edge.agent.frozen_values import FrozenValues, held_upstream
from water_edge.agent.learnt_tags import LearntTags
from water_edge.core import units
from water_edge.core.backoff import Backoff
from water_edge.core.errors import DriverIOError
from water_edge.core.health import Health
from water_edge.core.reading import Event, Reading, bad, now_ns
from water_edge.core.scheduler import FixedRateTicker
from water_edge.drivers.base import DeviceConfig, Driver, Streaming, StreamingDriver

log = structlog.get_logger(__name__)

ReadingSink = Callable[[str, list[Reading]], Awaitable[None]]
EventSink = Callable[[Event], Awaitable[None]]
DriverState = Literal["starting", "up", "down", "stopped"]

# The `latest` values of streaming devices in one `read_now` answer, JSON bytes at most: the whole
# answer must stay under the command result's bound (`agent.remote.result.MAX_DETAIL_BYTES`, 16 KiB),
# or it would be replaced by its size. Tags past it are counted (`latest_left_out`), not listed.
READ_NOW_LATEST_BYTES: Final = 12 * 1024


@dataclass
class DeviceStats:
    state: DriverState = "starting"
    polls: int = 0
    readings: int = 0
    bad_readings: int = 0
    failures: int = 0
    crashes: int = 0
    reconnects: int = 0
    last_read_ns: int | None = None
    last_error: str | None = None
    last_error_ns: int | None = None
    down_since_ns: int | None = None


@dataclass(frozen=True, slots=True)
class RunnerStatus:
    """One device as the runner sees it (`core.health.Health`), with its driver's own health."""

    name: str
    kind: str
    state: DriverState
    poll_interval_ms: int
    polls: int
    readings: int
    bad_readings: int
    overruns: int  # polls that could not keep the rate
    failures: int
    crashes: int  # unexpected exceptions from the driver
    reconnects: int
    last_read_ns: int | None
    last_read_age_s: float | None  # at the time of this status
    last_error: str | None  # why the device is down; None while it is up
    down_since_ns: int | None
    driver: Health
    endpoint: str = ""  # where the device is reached (`DeviceConfig.endpoint_text()`)
    last_error_ns: int | None = None  # when `last_error` last happened (the latest failed attempt)
    last_error_age_s: float | None = None  # at the time of this status
    down_for_s: float | None = None  # at the time of this status
    values_frozen_since_ns: int | None = None  # `frozen_after_s`: the last change before they froze
    values_frozen_for_s: float | None = None  # at the time of this status

    def status_lines(self) -> list[str]:
        last_read = "never" if self.last_read_age_s is None else f"{units.duration(self.last_read_age_s)} ago"
        state = str(self.state)
        if self.state == "down" and self.down_for_s is not None:
            state += f" {units.duration(self.down_for_s)}"
        where = f" {self.endpoint} " if self.endpoint else ""
        line = (
            f"{self.kind:<11} {state:<8}{where} last read {last_read}  polls {self.polls}  bad "
            f"{self.bad_readings}  overruns {self.overruns}  restarts {self.reconnects}"
        )
        if self.state != "up" and self.last_error:
            when = "" if self.last_error_age_s is None else f" {units.duration(self.last_error_age_s)} ago"
            line += f"  error{when}: {self.last_error}"
        if self.state == "up" and self.values_frozen_for_s is not None:
            line += (
                f"  VALUES FROZEN {units.duration(self.values_frozen_for_s)} (held upstream?), "
                "readings stored uncertain"
            )
        return [line]


def bound_latest(answers: dict[str, dict[str, Any]], max_bytes: int = READ_NOW_LATEST_BYTES) -> None:
    """Cut the `latest` maps of streaming devices' `read_now` answers (in place) to `max_bytes` of
    JSON in all, in device then tag order; each answer cut counts what it left out in
    `latest_left_out`, so that an answer is never too long to be sent."""
    room = max_bytes
    for answer in answers.values():
        latest = answer.get("latest")
        if not isinstance(latest, dict):
            continue
        kept: dict[str, Any] = {}
        for tag, entry in latest.items():
            size = len(orjson.dumps({tag: entry}, default=str))
            if size > room:
                break
            kept[tag] = entry
            room -= size
        if len(kept) < len(latest):
            answer["latest"] = kept
            answer["latest_left_out"] = len(latest) - len(kept)
            room = 0  # later devices list nothing rather than a scattered few


# A stream up for this long has proved itself: its next loss is retried from the shortest wait.
STREAM_STABLE_S = 10.0


class DeviceRunner:
    def __init__(
        self,
        config: DeviceConfig,
        driver: Driver,
        on_readings: ReadingSink,
        on_event: EventSink,
        *,
        backoff_min_s: float = 1.0,
        backoff_max_s: float = 60.0,
        guard_s: float | None = None,
        learnt: LearntTags | None = None,
        on_learnt: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        # the tags this device has read, in this run and earlier ones (`agent.learnt_tags`)
        self._learnt, self._on_learnt = learnt, on_learnt
        self.driver = driver
        self.stats = DeviceStats()
        self.ticker = FixedRateTicker(config.poll_interval_ms / 1000)
        self._on_readings = on_readings
        self._on_event = on_event
        self._backoff = Backoff(backoff_min_s, backoff_max_s)
        self._open = False
        self._retry_at = 0.0
        # A driver that hangs despite its own timeouts must not hang the poll loop.
        self._guard_given = guard_s
        self._guard_s = guard_s or max(10.0, 5 * self.ticker.period_s)
        # Set when the poll rate changes, so a long wait for the next tick ends at once.
        self._rescheduled = asyncio.Event()
        self._down_from_last_run = False
        after = config.frozen_after_s
        self.frozen = None if after is None else FrozenValues(after)
        # One read of the driver at a time: a poll and a `read_now` never overlap.
        self._reading = asyncio.Lock()
        # A streaming device's latest reading of each tag, as delivered (what `read_now` answers).
        self._latest: dict[str, Reading] | None = {} if isinstance(driver, Streaming) else None

    @property
    def name(self) -> str:
        return self.config.name

    def resume_down(self, since_ns: int) -> None:
        """The device was down when the agent last stopped (`agent.devices_down`): it starts down,
        so that its coming back is a `driver_up` and its staying down no second `driver_down`."""
        self.stats.state = "down"
        self.stats.down_since_ns = since_ns
        self.stats.last_error = "down when the agent last stopped"
        self._down_from_last_run = True

    def set_poll_interval(self, poll_interval_ms: int) -> None:
        """Poll at a new rate from now on (a live config change); the next poll is one new
        period from now, whatever was left of the old one."""
        overruns = self.ticker.overruns
        self.config = self.config.model_copy(update={"poll_interval_ms": poll_interval_ms})
        self.ticker = FixedRateTicker(poll_interval_ms / 1000)
        self.ticker.overruns = overruns
        self._guard_s = self._guard_given or max(10.0, 5 * self.ticker.period_s)
        self._rescheduled.set()

    def status(self) -> RunnerStatus:
        s, now = self.stats, now_ns()
        frozen_since = None if self.frozen is None else self.frozen.frozen_since_ns
        return RunnerStatus(
            name=self.name,
            kind=self.config.kind,
            state=s.state,
            poll_interval_ms=self.config.poll_interval_ms,
            polls=s.polls,
            readings=s.readings,
            bad_readings=s.bad_readings,
            overruns=self.ticker.overruns,
            failures=s.failures,
            crashes=s.crashes,
            reconnects=s.reconnects,
            last_read_ns=s.last_read_ns,
            last_read_age_s=None if s.last_read_ns is None else round((now - s.last_read_ns) / 1e9, 3),
            last_error=s.last_error,
            down_since_ns=s.down_since_ns,
            driver=self.driver.health(),
            endpoint=self.config.endpoint_text(),
            last_error_ns=s.last_error_ns,
            last_error_age_s=None if s.last_error_ns is None else round((now - s.last_error_ns) / 1e9, 1),
            down_for_s=None if s.down_since_ns is None else round((now - s.down_since_ns) / 1e9, 1),
            values_frozen_since_ns=frozen_since,
            values_frozen_for_s=None if frozen_since is None else round((now - frozen_since) / 1e9, 1),
        )

    async def run(self) -> None:
        try:
            if isinstance(self.driver, Streaming):
                await self._run_streaming(self.driver)
            while True:
                await self._poll_once()
                await self._next_tick()
        finally:
            self.stats.state = "stopped"
            await self._close()

    async def _next_tick(self) -> None:
        self._rescheduled.clear()
        ticker = self.ticker
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ticker.next_delay()):
                await self._rescheduled.wait()
        if ticker is not self.ticker:  # rescheduled: wait one new period before the next poll
            await self._next_tick()

    async def _run_streaming(self, driver: StreamingDriver) -> None:
        """Push devices: submit what the stream yields; on loss, stand in bad readings and reopen."""
        loop = asyncio.get_running_loop()
        while True:
            up_at: float | None = None
            try:
                async with asyncio.timeout(self._guard_s):
                    await driver.open()
                self._open = True
                async for readings in driver.stream():
                    if self.stats.state != "up":
                        # A stream that ends soon after its first batch (a TCP receiver that
                        # accepts and closes at once) keeps its backoff: it is not tried again
                        # every second for ever. One up for STREAM_STABLE_S starts afresh.
                        await self._mark_up(reset_backoff=False)
                        up_at = loop.time()
                    self.stats.polls += 1
                    await self._deliver(readings)
                raise DriverIOError(f"{self.name}: stream ended")
            except (DriverIOError, TimeoutError) as exc:
                if up_at is not None and loop.time() - up_at >= STREAM_STABLE_S:
                    self._backoff.reset()
                await self._mark_down(str(exc) or "timed out", crashed=False)
            except Exception as exc:
                log.exception("driver.crashed", driver=self.name)
                await self._mark_down(f"driver error: {type(exc).__name__}: {exc}", crashed=True)
            await asyncio.sleep(max(0.0, self._retry_at - loop.time()))

    async def _poll_once(self) -> None:
        async with self._reading:
            await self._poll_once_locked()

    async def _poll_once_locked(self) -> None:
        loop = asyncio.get_running_loop()
        self.stats.polls += 1
        try:
            if not self._open:
                if loop.time() < self._retry_at:
                    await self._stand_in(self.stats.last_error or "device down")
                    return
                async with asyncio.timeout(self._guard_s):
                    await self.driver.open()
                self._open = True
            async with asyncio.timeout(self._guard_s):
                readings = await self.driver.read()
        except (DriverIOError, TimeoutError) as exc:
            await self._mark_down(str(exc) or "timed out", crashed=False)
            return
        except Exception as exc:
            log.exception("driver.crashed", driver=self.name)
            await self._mark_down(f"driver error: {type(exc).__name__}: {exc}", crashed=True)
            return
        if self.stats.state != "up":
            # Up means a read worked, not just a connect: a PLC that accepts TCP but cannot
            # answer must not flap between down and up on every poll.
            await self._mark_up()
        await self._deliver(readings)

    async def _deliver(self, readings: list[Reading]) -> None:
        self._account(readings)
        if self.frozen is not None:
            await self._judge_values(self.frozen, readings)
            if self.frozen.frozen_since_ns is not None:
                readings = [held_upstream(r) for r in readings]
        if self._latest is not None:
            latest = self._latest
            for r in readings:
                latest[r.tag] = r
        await self._on_readings(self.config.stream_name, readings)

    async def read_now(self) -> dict[str, Any]:
        """The `read_now` command's answer for this device; never a second read beside its own.

        Polled: one read between two polls (under the poll's lock), submitted like a poll's:
        `{"readings": n}`, or `{"error": why}` (the device down or the read failed; the poll loop
        alone decides the device's state). Streaming: no read at all (see `streaming_answer`)."""
        if self._latest is not None:
            return self.streaming_answer()
        async with self._reading:
            if not self._open:
                return {"error": f"device is {self.stats.state}: {self.stats.last_error or 'not open yet'}"}
            try:
                async with asyncio.timeout(self._guard_s):
                    readings = await self.driver.read()
            except (DriverIOError, TimeoutError) as exc:
                return {"error": str(exc) or "timed out"}
            except Exception as exc:
                log.exception("driver.read_now_crashed", driver=self.name)
                return {"error": f"read failed: {type(exc).__name__}: {exc}"}
            await self._deliver(readings)
        return {"readings": len(readings)}

    def streaming_answer(self) -> dict[str, Any]:
        """A streaming device's `read_now` answer, from what its stream delivered, nothing read:
        `{"streaming": true, "state": ..., "tags": n, "latest": {tag: {"value", "quality",
        "age_s", ["unit"], ["reason"]}}}`, and `error` (why) while it is not up. Nothing is
        submitted: every one of these readings has gone to the pipeline when it came."""
        now = now_ns()
        latest: dict[str, dict[str, Any]] = {}
        for tag, r in sorted((self._latest or {}).items()):
            entry: dict[str, Any] = {
                "value": r.value,
                "quality": r.quality,
                "age_s": round(max(0, now - r.ts_ns) / 1e9, 1),
            }
            if r.unit:
                entry["unit"] = r.unit
            if r.reason:
                entry["reason"] = r.reason
            latest[tag] = entry
        answer: dict[str, Any] = {"streaming": True, "state": self.stats.state, "tags": len(latest)}
        if self.stats.state != "up" and self.stats.last_error:
            answer["error"] = self.stats.last_error
        answer["latest"] = latest
        return answer

    async def _judge_values(self, frozen: FrozenValues, readings: list[Reading]) -> None:
        """`frozen_after_s`: a `values_frozen` / `values_resumed` event when the values stop or
        start changing again while the device answers (`agent.frozen_values`)."""
        now, was_since = now_ns(), frozen.frozen_since_ns
        change = frozen.see(readings, now)
        if change == "frozen":
            since = frozen.frozen_since_ns or now
            detail: dict[str, object] = {
                "unchanged_for_s": round((now - since) / 1e9, 1),
                "tags": len(frozen.moved),
                "reason": "no tag has changed while the device answers: values held upstream "
                "(a protocol gateway's cache, a PLC's stopped scan)?",
            }
            log.warning("driver.values_frozen", driver=self.name, unchanged_for_s=detail["unchanged_for_s"])
            await self._on_event(Event("values_frozen", self.name, now, "warning", detail=detail))
        elif change == "resumed":
            held = {"unchanged_for_s": round((now - (was_since or now)) / 1e9, 1)}
            log.info("driver.values_resumed", driver=self.name, **held)
            await self._on_event(Event("values_resumed", self.name, now, "info", detail=held))

    def _account(self, readings: list[Reading]) -> None:
        if self._learnt is not None and self._learnt.note(self.name, readings):
            self._on_learnt()
        self.stats.readings += len(readings)
        self.stats.bad_readings += sum(1 for r in readings if r.quality == "bad")
        self.stats.last_read_ns = now_ns()

    async def _stand_in(self, reason: str) -> None:
        """A `bad` reading for each tag the driver declares, and each it has read before (a
        meter's records, learnt only once read: down at a start, they would otherwise just stop)."""
        ts = now_ns()
        tags = {tag.name: tag for tag in self._learnt.of(self.name)} if self._learnt is not None else {}
        tags.update((tag.name, tag) for tag in self.driver.tags())
        readings = [bad(self.name, tag.name, ts, reason, tag.unit) for tag in tags.values()]
        self.stats.readings += len(readings)
        self.stats.bad_readings += len(readings)
        await self._on_readings(self.config.stream_name, readings)

    async def _mark_up(self, *, reset_backoff: bool = True) -> None:
        was_down, down_since = self.stats.state == "down", self.stats.down_since_ns
        from_last_run = self._down_from_last_run
        # All of the state changes before the event is awaited: a status read meanwhile must not
        # show the device up with the error and the down time it had.
        self.stats.state = "up"
        self.stats.down_since_ns = None
        self.stats.last_error = self.stats.last_error_ns = None
        self._down_from_last_run = False
        if reset_backoff:
            self._backoff.reset()
        if self.frozen is not None:
            self.frozen.restart(now_ns())
        if not was_down:
            log.info("driver.opened", driver=self.name)
            return
        self.stats.reconnects += 1
        down_for = (now_ns() - (down_since or now_ns())) / 1e9
        log.info("driver.up", driver=self.name, after_s=round(down_for, 1))
        detail: dict[str, object] = {"down_for_s": round(down_for, 3)}
        if from_last_run:  # the count includes time the agent was not running
            detail["down_before_restart"] = True
        await self._on_event(Event("driver_up", self.name, now_ns(), "info", detail=detail))

    async def _mark_down(self, reason: str, *, crashed: bool) -> None:
        self.stats.failures += 1
        self.stats.crashes += int(crashed)
        self.stats.last_error, self.stats.last_error_ns = reason, now_ns()
        went_down = self.stats.state != "down"
        if went_down:
            self.stats.state = "down"
            self.stats.down_since_ns = now_ns()
        await self._close()
        delay = self._backoff.next_delay()
        self._retry_at = asyncio.get_running_loop().time() + delay
        if went_down:
            log.warning("driver.down", driver=self.name, reason=reason, retry_in_s=round(delay, 2))
            await self._on_event(
                Event(
                    "driver_down",
                    self.name,
                    now_ns(),
                    "warning",
                    detail={"reason": reason, "crashed": crashed},
                )
            )
        await self._stand_in(reason)

    async def _close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            await self.driver.aclose()
        except Exception:
            log.exception("driver.close_failed", driver=self.name)
