"""Trustworthy timestamps: follows the clock's synchronisation and says what it means for readings.

Until the clock is synchronised (`core.timesync`), the pipeline marks every reading: a good one
becomes `uncertain` with reason `clock not synchronised`, any other gets that reason in front of
its own (`clock not synchronised; timeout`): its timestamp may be years off. When the clock
then steps to the right time (NTP on a gateway without RTC), readings stamped before the step are
moved by the step (the monotonic clock kept counting through it, so `ts + step` is when they were
really taken) wherever that is safe: those still in memory, and those in the outbox that the uplink
has never leased (nobody has seen them). They keep `uncertain`, with reason `clock restamped`;
the `clock_synchronised` event (when the source first says synchronised) carries the step, so the
centre can move the rows it already got.
Only the first forward step after the marking began is undone (a second step cannot be told apart
from the first by a reading's timestamp): readings from before a second step, or a step
backwards, stay where they are, marked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Final

import structlog

from water_edge.core.clock import ClockStep
from water_edge.core.reading import Event, Reading, now_ns
from water_edge.core.timesync import SyncSource, SyncState

log = structlog.get_logger(__name__)

UNSYNC_REASON: Final = "clock not synchronised"
RESTAMPED_REASON: Final = "clock restamped"


def restamped(reading: Reading, step: ClockStep) -> Reading:
    """`reading` moved by the step if it was marked unsynchronised and stamped before it."""
    reason = reading.reason
    if reason is None or not reason.startswith(UNSYNC_REASON) or reading.ts_ns > step.wall_before_ns:
        return reading
    return replace(
        reading, ts_ns=reading.ts_ns + step.step_ns, reason=RESTAMPED_REASON + reason[len(UNSYNC_REASON) :]
    )


Restamp = Callable[[int, int], Awaitable[tuple[int, int]]]  # (step_ns, stamped_before_ns) -> (rows, readings)


@dataclass(frozen=True, slots=True)
class ClockHealth:
    """The clock's synchronisation and what the agent did about it (`core.health.Health`)."""

    source: str
    synchronised: bool | None  # None: cannot be known (see error)
    offset_ms: float | None
    maxerror_ms: float | None
    error: str | None
    synchronised_ns: int | None  # when this agent first saw it synchronised
    marked_readings: int  # readings marked `clock not synchronised`
    restamped_readings: int  # of those, moved by the step once the time was known
    restamped_rows: int  # outbox rows rewritten for it

    def status_lines(self) -> list[str]:
        if self.source == "none":
            return []  # not checked, by configuration: nothing to say
        if self.synchronised is None:
            return [f"clock    sync unknown ({self.error or self.source})"]
        if not self.synchronised:
            return [
                f"clock    NOT synchronised ({self.source}): readings marked uncertain "
                f"({self.marked_readings} so far)"
            ]
        offset = "" if self.offset_ms is None else f"  offset {self.offset_ms:+.3f} ms"
        bound = "" if self.maxerror_ms is None else f"  max error {self.maxerror_ms:.0f} ms"
        restamped = f"  restamped {self.restamped_readings}" if self.restamped_readings else ""
        return [f"clock    synchronised ({self.source}){offset}{bound}{restamped}"]

    def alarm_lines(self) -> list[str]:
        if self.synchronised is False:
            return ["clock not synchronised: readings are marked uncertain until NTP syncs"]
        return []


class ClockSync:
    """The latest `SyncState`, refreshed every `interval_s`, and the restamping after the first sync."""

    def __init__(self, source: SyncSource, *, interval_s: float = 10.0) -> None:
        self.source = source
        self.interval_s = interval_s
        self.state: SyncState = source.read()
        self.marked = 0
        self.restamped = 0
        self.restamped_rows = 0
        self.synchronised_ns: int | None = now_ns() if self.state.synchronised else None
        self._steps_while_marked: list[ClockStep] = []
        self._restamp: Restamp | None = None
        self._emit: Callable[[Event], Awaitable[None]] | None = None

    @property
    def unsynchronised(self) -> bool:
        """True only when the source says so (unknown is not unsynchronised)."""
        return self.state.synchronised is False

    def bind(self, emit: Callable[[Event], Awaitable[None]], restamp: Restamp) -> None:
        self._emit, self._restamp = emit, restamp

    def note_step(self, step: ClockStep) -> ClockStep | None:
        """A wall-clock step seen by the pipeline; the step to undo on marked readings, if safe."""
        if not self.marked:
            return None
        self._steps_while_marked.append(step)
        if len(self._steps_while_marked) == 1 and step.step_ns > 0:
            return step
        return None

    def health(self) -> ClockHealth:
        s = self.state
        return ClockHealth(
            source=s.source,
            synchronised=s.synchronised,
            offset_ms=None if s.offset_ns is None else s.offset_ns / 1e6,
            maxerror_ms=None if s.maxerror_us is None else s.maxerror_us / 1e3,
            error=s.error,
            synchronised_ns=self.synchronised_ns,
            marked_readings=self.marked,
            restamped_readings=self.restamped,
            restamped_rows=self.restamped_rows,
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        was = self.state.synchronised
        self.state = await asyncio.to_thread(self.source.read)
        if self.state.synchronised and not was:
            await self._synchronised()

    async def restamp_committed(self, step: ClockStep) -> None:
        """Move the marked readings in the outbox that nobody has leased yet by `step`."""
        if self._restamp is None:
            return
        rows, readings = await self._restamp(step.step_ns, step.wall_before_ns)
        self.restamped_rows += rows
        self.restamped += readings
        log.info("clock.restamped", step_s=round(step.step_ns / 1e9, 3), rows=rows, readings=readings)

    async def _synchronised(self) -> None:
        self.synchronised_ns = now_ns()
        steps = self._steps_while_marked
        log.info("clock.synchronised", steps=len(steps), restamped_readings=self.restamped)
        if self._emit is not None:
            await self._emit(
                Event(
                    "clock_synchronised",
                    "agent",
                    now_ns(),
                    "info",
                    detail={
                        "source": self.state.source,
                        "offset_ns": self.state.offset_ns,
                        "marked_readings": self.marked,
                        "steps": [{"step_ns": s.step_ns, "wall_before_ns": s.wall_before_ns} for s in steps],
                        "restamped_rows": self.restamped_rows,
                        "restamped_readings": self.restamped,
                    },
                )
            )
