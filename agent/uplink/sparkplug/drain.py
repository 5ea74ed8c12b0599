"""Births and data on one Sparkplug connection: NBIRTH and DBIRTHs, then the outbox as DDATA/NDATA.

At the birth the drain notes the newest committed row (the split), exactly like the JSON drain:
rows up to it are the backlog, published with `is_historical = true`, oldest first, at most
`backlog_rows_per_s` messages a second; rows committed later are live and go out as they come,
first. The split is taken *before* the current values are read for the births, so a value the
births lack is in a live row, never only in the backlog (which does not update real-time tags).

Every published row goes into the connection's rolling history (`history.py`), which decides
when the outbox may delete it; nothing here waits for an acknowledgement.

Flow control of the backlog: DATA is QoS 0, with no window, so a backlog published faster than the
link carries piled up in paho's queue and the socket, and a live row, the history's probes and
their receipts waited behind all of it (through 1.5 KB/s, a live row behind 374 rows, 17.7 s).
So the backlog lane publishes a row only while what the connection was handed and has not sent
is at most HOLD_ABOVE_BYTES (`QueueGauge.unsent_bytes`: paho's queue plus the kernel's unsent
bytes, SIOCOUTQNSD, beyond one TCP segment), and looks again every HOLD_RECHECK_S while held;
the live lane, births, deaths and probes are never held. Bytes TCP has *sent* and the peer not
yet acknowledged are not counted (TIOCOUTQ would count them): on a fast link with a long round
trip they are rate x RTT and would cap the backlog at the bound per round trip, while bytes not
yet sent pile up only when we publish faster than the path takes, so a fast link is never held
(1000 rows at 2000 a second straight to Mosquitto: no hold) and a slow one keeps a live row
behind the bound, one segment and what the path itself buffers (one TCP window): through
1.5 KB/s with a 4 KB receive buffer, about 170 backlog readings (~12 KB, 8 s) instead of all of
them. The history's unproven rows would be a coarser gate: a probe goes out every keep-alive/4
(7.5 s by default), so a fast link's backlog would stop for up to 7.5 s at each bound. Where the measure
is unknown (a transport without it, not Linux, an ioctl that fails) the backlog goes at
`backlog_rows_per_s` alone, as before.

A device's life follows its driver in the live lane: a `driver_down` event publishes DDEATH. After
a `driver_up` event the device is born by its first live readings, which its DBIRTH carries (the
filter's current values are then the stand-ins of the outage, which a DDATA would replace at once:
a host would show the device bad for a moment); if none come within RETURN_WAIT_S, by what is
current. Only that return births a dead device: live rows of it before the `driver_up` are the
outage's stand-ins, or readings taken before the death that reached the outbox after the
`driver_down` (a flush commits in the order things came since `Pipeline._batches` keeps it; a row
out of order is still judged so), and are not published (their timestamps cannot tell: OPC UA
stamps by the server's clock; the driver's order of events can). Stand-ins are not
published from the backlog either (the DDEATH says it, and when; a host takes DATA of a dead device
for a broken session and asks for a rebirth): those of a device dead now, and those of an outage in
the history, between its historical `driver_down` and `driver_up`. A row of which nothing went out
is released at once, so it cannot come back as backlog. The good history of a device dead now goes
out between a DBIRTH and a DDEATH of its own. At a birth, devices their runner reports down get
DBIRTH then DDEATH, so a host knows their metrics and that they are down.

A row with a metric new to the catalog (a tag no config declared, a meter heard for the first time)
or a value of a new datatype births its device again, before the row's data: a DBIRTH with every
metric of the device (aliases are node-unique, so no other device's birth changes). A birth that a
live row causes (a new metric or datatype, or a unit that changed) carries the row's readings as
current values, and only what it did not carry goes out as DDATA. A device is born again for a
unit at most once per REBIRTH_EVERY_S, so a unit that keeps changing cannot flood the host with
births; its data goes on meanwhile.

A message over the broker's Maximum Packet Size is not sent (the broker would drop the connection
for it at every reconnect, and nothing would get through): a device whose DBIRTH is too large stays
unborn until the next birth, and a row that cannot go (too large, or of such a device) stays in the
outbox, as with the JSON drain (a row counted in encode_errors); each is logged and named in the status.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import structlog

from water_edge.agent import __version__
from water_edge.agent.uplink.interfaces import BodyCodec, EncodeError, LeaseAckOutbox
from water_edge.agent.uplink.json_encoding import decode_body, default_codec
from water_edge.agent.uplink.metrics import UplinkMetrics
from water_edge.agent.uplink.sparkplug import payloads
from water_edge.agent.uplink.sparkplug.catalog import EVENT, Catalog, Change, Device
from water_edge.agent.uplink.sparkplug.session import SparkplugSession, TooLargeError
from water_edge.agent.uplink.sparkplug.topics import SparkplugTopics
from water_edge.agent.uplink.state import ConnectionState
from water_edge.agent.uplink.transport import QueueGauge
from water_edge.buffer.types import OutboxRow
from water_edge.core.errors import BufferError
from water_edge.core.reading import BAD, GOOD, Event, Reading

log = structlog.get_logger(__name__)

# Births asked for (NCMD Rebirth, the host back) come at most this often: a host that floods
# rebirth requests gets one birth per interval, the last request included, not a birth of every
# metric per request. A device's DBIRTH for a unit that changed comes at most this often too.
REBIRTH_EVERY_S: Final = 1.0
# A device back up is born with its first readings after the return; this long without any (a filter
# that held them all back), it is born with what is current.
RETURN_WAIT_S: Final = 5.0
# The backlog lane waits while more than this has been published and not left the host (see "Flow
# control of the backlog" above), and looks again this often while it waits.
HOLD_ABOVE_BYTES: Final = 4096
HOLD_RECHECK_S: Final = 0.05

Values = Callable[[], Mapping[tuple[str, str], Reading]]
DeviceStates = Callable[[], Mapping[str, bool]]  # device name -> up


class Outcome(StrEnum):
    LOST = "lost"  # the connection ended
    STOPPED = "stopped"  # stop() was called: the uplink sends NDEATH and disconnects
    HOST_OFFLINE = "host-offline"  # the Primary Host said offline: NDEATH, next server
    NEXT_SERVER = "next-server"  # NCMD Node Control/Next Server


@dataclass
class _Lanes:
    """Cursors of the two lanes of one connection, the backlog's token bucket and its hold."""

    live: int
    backlog: int
    split: int
    open: bool  # the backlog has rows left
    tokens: float
    gauge: QueueGauge | None = None  # what the link has not taken yet (None: not known, never held)
    held_at: float | None = None  # loop time of the last look that held the backlog back


class SparkplugCounters:
    """Sparkplug's own counters (cumulative over the uplink's life)."""

    def __init__(self) -> None:
        self.births = 0
        self.rebirths = 0
        self.device_deaths = 0
        self.device_births = 0
        self.suppressed_dead = 0  # stand-in readings of a dead device, not published
        self.historical_rows = 0
        self.released_rows = 0
        self.backlog_holds = 0  # times the backlog lane waited for the link to take what was queued
        self.backlog_held_s = 0.0  # how long it waited, in all


class SparkplugDrain:
    """Publishes births, then the outbox, on the current session (see the module docstring)."""

    def __init__(
        self,
        outbox: LeaseAckOutbox,
        catalog: Catalog,
        topics: SparkplugTopics,
        *,
        values: Values,
        device_states: DeviceStates,
        metrics: UplinkMetrics,
        counters: SparkplugCounters,
        state: ConnectionState,
        lease_rows: int,
        backlog_rows_per_s: float,
        beat_s: float,
        codec: BodyCodec | None = None,
    ) -> None:
        self._outbox = outbox
        self._catalog = catalog
        self._topics = topics
        self._values = values
        self._device_states = device_states
        self._metrics = metrics
        self.counters = counters
        self._state = state
        self._lease_rows = lease_rows
        self._rate = backlog_rows_per_s
        self._beat_s = beat_s
        self._codec = codec
        self.wake = asyncio.Event()
        self.beats = 0
        self._more = True
        self._alive: dict[str, bool] = {}
        self._good: dict[int, bool] = {}  # alias -> last quality published on this session was good
        self._born_at = float("-inf")  # loop time of the last NBIRTH
        self._unborn: set[str] = set()  # devices whose DBIRTH the broker would not take, until a birth
        self._returning: dict[str, float] = {}  # device back up, not born yet -> loop time of its driver_up
        self._units_due: set[str] = set()  # devices whose born units are out of date
        self._device_born_at: dict[str, float] = {}  # loop time of each device's last DBIRTH
        # Devices whose driver was down where the backlog lane is, by the history's driver events
        # (seeded at each birth with the devices dead when the last connection ended).
        self._past_down: set[str] = set()

    def notify(self) -> None:
        self._more = True
        self.wake.set()

    # ------------------------------------------------------------------ births

    def birth(self, session: SparkplugSession, bdseq: int) -> bool:
        """NBIRTH (seq 0) and every DBIRTH after it; DDEATH for devices that are down. False if closed."""
        catalog, topics = self._catalog, self._topics
        per_device = self._current(())
        now_ms = time.time_ns() // 1_000_000
        try:
            if not session.publish(
                topics.nbirth, payloads.nbirth(catalog, bdseq, now_ms, __version__), birth=True
            ):
                return False
        except TooLargeError as exc:
            self._too_large(str(exc))
            return False
        self._good = {}
        self._unborn = set()
        self._returning = {}  # born now, as the runners say they are
        self._born_at = asyncio.get_running_loop().time()
        up = self._device_states()
        for device in catalog.devices.values():
            current = per_device.get(device.name, {})
            if not self._dbirth(session, device, current):
                return False
            if (
                up.get(device.name) is False
                and device.name not in self._unborn
                and not self._ddeath(session, device.name)
            ):
                return False
        session.born = True
        session.rebirth = False
        self.counters.births += 1
        return True

    def _current(self, fresh: Iterable[Reading], device: str | None = None) -> dict[str, dict[str, Reading]]:
        """Current values by device (of `device` only, if given): the filter's, or a newer one of `fresh`."""
        per_device: dict[str, dict[str, Reading]] = defaultdict(dict)
        for (source, tag), reading in self._values().items():
            if device is None or source == device:
                per_device[source][tag] = reading
        for reading in fresh:
            if device is None or reading.source == device:
                known = per_device[reading.source].get(reading.tag)
                if known is None or reading.ts_ns >= known.ts_ns:
                    per_device[reading.source][reading.tag] = reading
        for readings in per_device.values():
            for reading in readings.values():
                self._catalog.settle(reading)
        return per_device

    def _dbirth(self, session: SparkplugSession, device: Device, current: Mapping[str, Reading]) -> bool:
        try:
            if not session.publish(
                self._topics.dbirth(device.name),
                payloads.dbirth(device, current, time.time_ns() // 1_000_000),
            ):
                return False
        except TooLargeError as exc:
            # The node and its other devices go on; this one is unknown to the host until a birth fits.
            self._unborn.add(device.name)
            self._alive[device.name] = False
            self._too_large(f"device {device.name} not born: {exc}")
            return True
        for metric in device.metrics.values():
            reading = current.get(metric.name)
            # A metric born with no value is born bad: its first good value must say good again.
            self._good[metric.alias] = reading is not None and reading.quality == GOOD
        self._alive[device.name] = True
        self._units_due.discard(device.name)
        self._device_born_at[device.name] = asyncio.get_running_loop().time()
        return True

    def _ddeath(self, session: SparkplugSession, device: str) -> bool:
        self._alive[device] = False
        return session.publish(self._topics.ddeath(device), payloads.ddeath())

    # ------------------------------------------------------------------ the drain

    async def serve(
        self, session: SparkplugSession, bdseq: int, stop: asyncio.Event, deadline: Callable[[], float]
    ) -> Outcome:
        """Birth, then publish until the session ends or something asks to leave it."""
        loop = asyncio.get_running_loop()
        split = await self._outbox.last_id()
        self._metrics.backlog_upto_id = split
        self._more = True
        # Where the last connection left them: the rows after it, now backlog, were never judged live.
        self._past_down = {d for d, alive in self._alive.items() if not alive and d not in self._unborn}
        if not self.birth(session, bdseq):
            return Outcome.LOST
        transport = session.transport
        lanes = _Lanes(
            live=split,
            backlog=0,
            split=split,
            open=split > 0,
            tokens=min(1.0, self._rate),
            gauge=transport if isinstance(transport, QueueGauge) else None,
        )
        refilled = loop.time()
        while True:
            self.wake.clear()
            self.beats += 1
            leave = self._leave_for(session, bdseq, loop.time())
            if leave is not None:
                return leave
            await self._release(session, loop.time())
            stopping = stop.is_set()
            if not await self._live(session, lanes):
                return Outcome.LOST
            if not self._due_births(session, loop.time()):
                return Outcome.LOST
            if stopping and (not self._more or loop.time() >= deadline()):
                return Outcome.STOPPED
            now = loop.time()
            lanes.tokens = min(max(1.0, self._rate), lanes.tokens + (now - refilled) * self._rate)
            refilled = now
            if not stopping and not await self._backlog(session, lanes):
                return Outcome.LOST
            if not self._more:
                await self._wait(session, loop.time(), lanes)

    def _leave_for(self, session: SparkplugSession, bdseq: int, now: float) -> Outcome | None:
        """Why the drain must end now (or a rebirth that failed), or None to go on."""
        if session.closed.is_set():
            return Outcome.LOST
        if session.host_offline:
            return Outcome.HOST_OFFLINE
        if session.next_server:
            return Outcome.NEXT_SERVER
        if session.rebirth and now >= self._born_at + REBIRTH_EVERY_S:
            self.counters.rebirths += 1
            log.info("sparkplug.rebirth", bdseq=bdseq)
            if not self.birth(session, bdseq):
                return Outcome.LOST
        return None

    async def _live(self, session: SparkplugSession, lanes: _Lanes) -> bool:
        if not self._more:
            return True
        self._more = False
        rows = await self._lease(lanes.live, self._lease_rows, None)
        if not rows:
            return True
        lanes.live = rows[-1].id
        self._more = len(rows) == self._lease_rows
        return await self._publish(session, rows, historical=False)

    async def _backlog(self, session: SparkplugSession, lanes: _Lanes) -> bool:
        if not lanes.open or lanes.tokens < 1.0 or self._held(lanes):
            return True
        rows = await self._lease(lanes.backlog, min(int(lanes.tokens), self._lease_rows), lanes.split)
        if not rows:
            lanes.open = False
            return True
        for i, row in enumerate(rows):
            if i and self._held(lanes):
                break  # the rest is leased again once the link has taken what is queued
            lanes.backlog = row.id
            lanes.tokens -= 1
            if not await self._publish(session, [row], historical=True):
                return False
        return True

    def _held(self, lanes: _Lanes) -> bool:
        """The backlog must wait: more than HOLD_ABOVE_BYTES published has not left the host."""
        unsent = None if lanes.gauge is None else lanes.gauge.unsent_bytes()
        held_at, now = lanes.held_at, asyncio.get_running_loop().time()
        if held_at is not None:
            self.counters.backlog_held_s += now - held_at
        if unsent is None or unsent <= HOLD_ABOVE_BYTES:
            lanes.held_at = None
            return False
        if held_at is None:
            self.counters.backlog_holds += 1
        lanes.held_at = now
        return True

    async def _wait(self, session: SparkplugSession, now: float, lanes: _Lanes) -> None:
        waits = [self._beat_s]
        if session.rebirth:
            waits.append(max(0.01, self._born_at + REBIRTH_EVERY_S - now))
        if lanes.open and lanes.held_at is not None:
            waits.append(HOLD_RECHECK_S)  # nothing wakes the drain when the link takes the queue
        elif lanes.open:
            waits.append(max(0.0, (1.0 - lanes.tokens) / self._rate))
        due = self._next_due()
        if due is not None:
            waits.append(max(0.01, due - now))
        release = session.history.next_release_in(now)
        if release is not None:
            waits.append(max(0.01, release))
            waits.append(max(0.01, session.history.probe_every_s))
        try:
            async with asyncio.timeout(min(waits)):
                await self.wake.wait()
        except TimeoutError:
            pass

    def _due_births(self, session: SparkplugSession, now: float) -> bool:
        """DBIRTHs that waited: a device back up without readings, a device's changed units."""
        for device, since in list(self._returning.items()):
            if self._alive.get(device, True):
                del self._returning[device]
            elif now >= since + RETURN_WAIT_S:
                if self._device_up(session, device) is None:
                    return False
                del self._returning[device]
        for device in list(self._units_due):
            if not self._alive.get(device, True) or device in self._unborn:
                self._units_due.discard(device)  # its next birth carries them
            elif (
                now >= self._device_born_at.get(device, float("-inf")) + REBIRTH_EVERY_S
                and self._device_up(session, device) is None
            ):
                return False
        return True

    def _next_due(self) -> float | None:
        """Loop time of the next DBIRTH that waits (`_due_births`), None if none does."""
        due = [since + RETURN_WAIT_S for since in self._returning.values()]
        due += [self._device_born_at.get(d, float("-inf")) + REBIRTH_EVERY_S for d in self._units_due]
        return min(due, default=None)

    async def _lease(self, after: int, limit: int, upto: int | None) -> list[OutboxRow]:
        try:
            return await self._outbox.lease(after, limit, upto)
        except BufferError as exc:
            self._state.error(f"outbox lease failed: {exc}")
            log.error("sparkplug.lease_failed", error=str(exc))
            return []

    async def _release(self, session: SparkplugSession, now: float) -> None:
        history = session.history
        if history.probe_due(now):
            session.probe(now)
        await self.ack(history.release(now))

    async def ack(self, released: list[tuple[int, int]]) -> None:
        """Delete released rows from the outbox (on failure they are sent again: a duplicate, no loss)."""
        if not released:
            return
        try:
            await self._outbox.ack([row_id for row_id, _ in released])
        except BufferError as exc:
            self._metrics.ack_errors += 1
            self._state.error(f"outbox ack failed: {exc}")
            log.error("sparkplug.ack_failed", rows=len(released), error=str(exc))
            return
        self._metrics.acked += len(released)
        self._metrics.readings_acked += sum(count for _, count in released)
        self.counters.released_rows += len(released)
        self._metrics.acks_deleted()

    # ------------------------------------------------------------------ rows to messages

    async def _publish(self, session: SparkplugSession, rows: list[OutboxRow], *, historical: bool) -> bool:
        if self._codec is None:
            self._codec = default_codec()
        for row in rows:
            sent = session.sent
            try:
                readings, events = decode_body(self._codec, row)
            except EncodeError as exc:
                # Left in the outbox (eviction ages it out) rather than wedging the drain.
                self._metrics.encode_errors += 1
                self._state.error(str(exc))
                log.error("sparkplug.encode_failed", row=row.id, stream=row.stream, error=str(exc))
                continue
            try:
                if events is not None:
                    ok = self._publish_events(session, events, historical=historical)
                else:
                    ok = self._publish_readings(session, readings or [], historical=historical)
            except TooLargeError as exc:
                self._metrics.encode_errors += 1
                self._too_large(f"row {row.id}: {exc}: not sent, left in the outbox", row=row.id)
                continue
            if not ok:
                return False
            if session.sent == sent:
                # Nothing of it went out (a dead device's stand-ins): no receipt to wait for, and
                # kept it would come back as backlog after a drop or a restart.
                await self.ack([(row.id, row.count)])
                continue
            session.history.add(row.id, row.count, asyncio.get_running_loop().time())
            self._metrics.lane_published("backlog" if historical else "live")
            if historical:
                self.counters.historical_rows += 1
        return True

    def _publish_readings(
        self, session: SparkplugSession, readings: list[Reading], *, historical: bool
    ) -> bool:
        by_device: dict[str, list[Reading]] = defaultdict(list)
        for reading in readings:
            by_device[reading.source].append(reading)
        catalog = self._catalog
        resolved: list[tuple[str, list[tuple[int, Reading]]]] = []
        changed: list[str] = []  # devices with a metric new to the catalog, or of a new datatype
        for device, device_readings in by_device.items():
            row_metrics = []
            new_metric = False
            for reading in device_readings:
                metric, change = catalog.resolve(reading, live=not historical)
                new_metric |= change is Change.BIRTH
                if change is Change.UNIT:
                    self._units_due.add(device)
                row_metrics.append((metric.alias, reading))
            resolved.append((device, row_metrics))
            if new_metric:
                changed.append(device)
        carried: dict[str, Mapping[str, Reading]] = {}
        for device in changed:
            # Its DBIRTH, with every metric of the device, before the data: a host needs nothing
            # else (aliases are node-unique), where a node rebirth re-sent every device's birth
            # for each meter heard for the first time. A dead device is born by its first data
            # that goes out (`_publish_device`), with the catalog as it is then.
            if not self._alive.get(device, True):
                continue
            log.info("sparkplug.catalog_changed", device=device)
            born = self._device_up(session, device, () if historical else by_device[device])
            if born is None:
                return False
            if not historical:
                carried[device] = born
        for device, items in resolved:
            if not self._publish_device(
                session, device, items, historical=historical, carried=carried.get(device, {})
            ):
                return False
        return True

    def _publish_device(
        self,
        session: SparkplugSession,
        device: str,
        items: list[tuple[int, Reading]],
        *,
        historical: bool,
        carried: Mapping[str, Reading],
    ) -> bool:
        """DDATA of one device's readings of a row, with the DBIRTH they need first; `carried`: the
        readings a birth for this row already carried."""
        if device in self._unborn:
            raise _unborn(device)
        dead = not self._alive.get(device, True)
        stand_ins = all(reading.quality == BAD for _, reading in items)
        if dead and not historical and not (device in self._returning and not stand_ins):
            # A host takes DATA of a device it holds dead for a broken session and asks for a
            # rebirth (MQTT Engine: "DDATA before BIRTH"); only its driver's return (the live
            # `driver_up`, then real readings) births it again. Until then its rows are the
            # outage's stand-ins or readings taken before the death that reached the outbox after
            # the `driver_down` (the pipeline commits in the order things came; an outbox written
            # before it did may still hold such rows): their timestamps cannot tell (OPC UA stamps
            # by the server's clock), the driver's order can.
            self.counters.suppressed_dead += len(items)
            return True
        if historical and stand_ins and (dead or device in self._past_down):
            # The stand-ins of an outage, now or in the history: the DDEATH said it, and the
            # history's driver_down and driver_up say when.
            self.counters.suppressed_dead += len(items)
            return True
        units_due = device in self._units_due and (
            asyncio.get_running_loop().time()
            >= self._device_born_at.get(device, float("-inf")) + REBIRTH_EVERY_S
        )
        if dead or (units_due and not historical):
            # A live row's readings are the newest values: the DBIRTH carries them, not the ones before.
            born = self._device_up(session, device, () if historical else [r for _, r in items])
            if born is None:
                return False
            if device in self._unborn:
                raise _unborn(device)
            if not historical:
                carried = born
                if self._returning.pop(device, None) is not None:
                    # Its outage's stand-ins in the row that brought it back, older than the value
                    # born: not published after the DBIRTH.
                    kept = [(a, r) for a, r in items if r.quality != BAD or not _older(r, carried)]
                    self.counters.suppressed_dead += len(items) - len(kept)
                    items = kept
        items = [(alias, reading) for alias, reading in items if carried.get(reading.tag) is not reading]
        if items and not self._publish_data(session, device, items, historical=historical):
            return False
        if dead and historical:  # born for its history only: its driver is still down
            self.counters.device_deaths += 1
            return self._ddeath(session, device)
        return True

    def _publish_data(
        self, session: SparkplugSession, device: str, items: list[tuple[int, Reading]], *, historical: bool
    ) -> bool:
        triples = []
        for alias, reading in items:
            metric = self._catalog.by_alias[alias][1]
            good = reading.quality == GOOD
            if historical:
                with_quality = not good
            else:
                with_quality = not good or not self._good.get(alias, True)
                self._good[alias] = good
            triples.append((metric, reading, with_quality))
        if not session.publish(self._topics.ddata(device), payloads.data(triples, historical=historical)):
            return False
        self._metrics.published += 1
        return True

    def _publish_events(self, session: SparkplugSession, events: list[Event], *, historical: bool) -> bool:
        metric = self._catalog.node[EVENT]
        if not session.publish(self._topics.ndata, payloads.events(metric, events, historical=historical)):
            return False
        self._metrics.published += 1
        if historical:
            for event in sorted(events, key=lambda e: e.ts_ns):
                if event.kind == "driver_down":
                    self._past_down.add(event.source)
                elif event.kind == "driver_up":
                    self._past_down.discard(event.source)
            return True
        for event in sorted(events, key=lambda e: e.ts_ns):
            device = event.source
            if device not in self._catalog.devices:
                continue
            if event.kind == "driver_down":
                self._returning.pop(device, None)
                if self._alive.get(device, True):
                    self.counters.device_deaths += 1
                    if not self._ddeath(session, device):
                        return False
            elif event.kind == "driver_up" and not self._alive.get(device, True):
                # Born by its first readings (they follow the event), not by the outage's stand-ins.
                self._returning.setdefault(device, asyncio.get_running_loop().time())
        return True

    def _device_up(
        self, session: SparkplugSession, device: str, fresh: Iterable[Reading] = ()
    ) -> Mapping[str, Reading] | None:
        """DBIRTH of one device with its current values (`fresh` among them); what it carried, None
        if the connection is closed."""
        if device in self._unborn:
            return {}  # its DBIRTH did not fit at this birth; it will not now
        self.counters.device_births += 1
        current = self._current(fresh, device).get(device, {})
        if not self._dbirth(session, self._catalog.devices[device], current):
            return None
        return current

    def _too_large(self, why: str, **context: object) -> None:
        self._state.error(why)
        log.error("sparkplug.too_large", error=why, **context)


def _older(reading: Reading, carried: Mapping[str, Reading]) -> bool:
    """`reading` is older than the value a birth carried for its tag."""
    born = carried.get(reading.tag)
    return born is not None and born is not reading and reading.ts_ns <= born.ts_ns


def _unborn(device: str) -> TooLargeError:
    return TooLargeError(f"device {device} has no birth: its DBIRTH is over the broker's Maximum Packet Size")
