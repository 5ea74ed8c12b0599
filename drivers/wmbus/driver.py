"""The wireless M-Bus driver: listens to one receiver, or several whose telegrams it merges
(`links.py`), and turns the telegrams of the configured meters into readings as they arrive (a
streaming driver: meters send on their own schedule).

Per meter, tags as the wired driver names them (`<meter>.volume`, `<meter>.volume_backward`,
`<meter>.volume.storage1`, ...) plus `<meter>.status` (the header status byte; its reason when a
telegram gave nothing), `<meter>.rssi`, `<meter>.alarm.<name>` (true/false) for the alarm flags its
telegrams carry (`alarms.py`), and `<meter>.telegrams_lost`: how many of its telegrams were lost
since the one before, from the access numbers (`reception.py`). A telegram that cannot be read —
encrypted without a key, a key that does not decrypt it, a corrupt frame — is counted in
`health()` and gives a bad `status` reading with the reason, never a crash. A mode 7 telegram whose
AFL MAC does not match (altered on the way) or is missing is refused the same way, counted in
`bad_mac`; like an old telegram, it counts neither as heard nor for reception. A meter silent for
`silent_after_s` gets a bad `status` ("not heard for ..."). A telegram heard again within
`duplicate_window_s` (through a repeater, decoded twice by rtl_wmbus, or by a second receiver) is
counted and dropped (`duplicates.py`): a meter heard by two receivers gives its readings once, from
the copy that arrived first. An older telegram sent again after that (replayed, or flushed late by a
repeater) is counted and dropped too (`freshness.py`): a meter's register never steps back to an
old value. Meters heard but not configured are counted and the last 1000 listed (a configured
meter is never pushed out by them); with `listen = true` each of the first `listen_max_meters`
heard since the driver was made also gives readings `heard.<ID>.rssi` (and its total volume when it
is readable without a key), for as long as the driver runs (reopens included): a stable set of tags,
however many neighbours a receiver in a city hears. The others are counted
(`listen_not_reported`), with one warning when the first is left out; `edge-agent probe --listen`
lists every meter heard. `heard.*` tags are survey observations, not learnt tags
(`WmbusConfig.unlearnt_tag_prefixes`): no stand-in readings for them while the receiver is down.

The receivers have one listener at a time: `stream()` (the running device) or `read()` /
`listen_readings()` (`edge-agent probe`). A second one would wait on the same byte streams, take
telegrams from the first or break its receiver (asyncio allows one reader per stream); it is
refused with `DriverIOError` instead, and the first goes on undisturbed. The agent's `read_now`
command never reads a streaming device (`agent.supervisor.DeviceRunner.read_now`).

Keys are read from the config or their secret references when the driver opens, never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Self

import structlog

from water_edge.core.errors import DriverIOError
from water_edge.core.reading import BAD, GOOD, Reading, now_ns
from water_edge.drivers.base import DeviceConfig, TagInfo
from water_edge.drivers.mbus.crypto import MbusKeyError
from water_edge.drivers.mbus.driver import telegram_readings
from water_edge.drivers.mbus.frame import MbusDecodeError, MbusFrameError
from water_edge.drivers.mbus.keys import load_key
from water_edge.drivers.mbus.security import MbusEncryptedError, MbusMacError
from water_edge.drivers.wmbus import receivers
from water_edge.drivers.wmbus.alarms import alarm_flags
from water_edge.drivers.wmbus.compact import FormatStore
from water_edge.drivers.wmbus.config import LISTEN_PREFIX, WmbusConfig, WmbusMeter
from water_edge.drivers.wmbus.duplicates import Duplicates
from water_edge.drivers.wmbus.frame import link_frame
from water_edge.drivers.wmbus.freshness import Freshness, meter_time
from water_edge.drivers.wmbus.health import ReceiverHealth, WmbusHealth
from water_edge.drivers.wmbus.links import Link, Links, StreamOpener, open_receiver_stream
from water_edge.drivers.wmbus.receivers import Received
from water_edge.drivers.wmbus.reception import Reception, access_number
from water_edge.drivers.wmbus.telegram import WirelessTelegram, decode_wireless

log = structlog.get_logger(__name__)

NS: Final = 1_000_000_000
SILENCE_CHECK_S: Final = 30.0
# Meters go silent after minutes or hours: looking through every meter after each telegram (500
# meters, a dozen telegrams a second) cost more CPU than decoding them.
SILENCE_EVERY_NS: Final = 1_000_000_000
UNKNOWN_LISTED: Final = 20
COUNTS: Final = (
    "decoded", "undecodable", "no_key", "wrong_key", "bad_mac", "unknown_frames", "link_errors", "duplicates",
    "stale",
)  # fmt: skip
HEARD_KEPT: Final = 1000  # meters heard but not configured, remembered for status and probe
# `listen`: distinct meters left out past `listen_max_meters`, counted up to this many (a flood of
# forged IDs must not grow the set without end).
NOT_REPORTED_COUNTED: Final = 10_000


@dataclass
class HeardBy:
    """What one receiver made of a meter: its latest signal and its own share of the telegrams."""

    rssi: float | None = None
    rssi_unit: str = "dBm"  # "": the receiver's own uncalibrated figure (rtl_wmbus)
    reception: Reception = field(default_factory=Reception)


@dataclass
class Heard:
    """A meter the receiver heard (configured or not), for health and commissioning."""

    ident: str
    manufacturer: str
    device_type: int
    frames: int = 0
    last_ns: int = 0
    rssi: float | None = None
    rssi_unit: str = "dBm"
    encrypted: bool | None = None  # None: not known (not decoded yet, or its format is not known)
    total_volume_m3: float | None = None
    configured: str | None = None  # the configured meter's name
    reception: Reception = field(default_factory=Reception)  # by any receiver
    # Receiver name -> what that receiver heard (copies dropped as duplicates included).
    receivers: dict[str, HeardBy] = field(default_factory=dict)

    def heard_by(self, receiver: str, received: Received, access: int | None) -> None:
        by = self.receivers.setdefault(receiver, HeardBy())
        by.rssi, by.rssi_unit = received.rssi, received.rssi_unit
        by.reception.note(access)


@dataclass
class _MeterState:
    meter: WmbusMeter
    key: bytes | None = None
    key_problem: str | None = None
    last_ns: int | None = None
    silent_reported_ns: int | None = None
    known: dict[str, str] = field(default_factory=dict)  # tag -> unit, learnt from telegrams
    heard: Heard | None = None  # what the receivers made of it, once heard
    freshness: Freshness = field(default_factory=Freshness)  # to tell an old telegram sent again
    stale: int = 0  # old telegrams dropped
    key_fails: bool = False  # the configured key did not decrypt its latest telegram
    mac_fails: bool = False  # its latest telegram was refused for its AFL MAC


class WmbusDriver:
    """The receivers of one device, the meters they report."""

    config_model: ClassVar[type[DeviceConfig]] = WmbusConfig

    def __init__(
        self,
        config: WmbusConfig,
        stream_opener: StreamOpener = open_receiver_stream,
    ) -> None:
        self.name = config.name
        self.config = config
        self._links = Links(config.name, config.receiver_configs(), stream_opener)
        self._formats = FormatStore()
        self._meters = {m.id.upper(): _MeterState(m) for m in config.meters}
        self._heard: OrderedDict[str, Heard] = OrderedDict()
        self._started_ns = now_ns()
        self._silence_checked_ns = self._started_ns - SILENCE_EVERY_NS
        self._counts = dict.fromkeys(COUNTS, 0)
        self._duplicates = Duplicates(config.duplicate_window_s)
        self._last_frame_ns: int | None = None
        # Who listens to the receivers now (`_listening`): a token of `stream()` or of a read.
        self._listener: tuple[str, object] | None = None
        # `listen`: the meters not configured that give `heard.*` readings (the first
        # `listen_max_meters` heard) and those left out. Kept in the driver, not in a receiver's
        # connection: the supervisor reopens this same object, and the set of tags stays as it was.
        self._listen_reported: set[str] = set()
        self._listen_left_out: set[str] = set()
        # One unit per `.rssi` tag: with sticks and rtl_wmbus on one device, the level is reported
        # from the sticks' copies only (rtl_wmbus's figure is not dBm; `heard` keeps every level).
        units = {link.parser.rssi_unit for link in self._links.links}
        self._rssi_unit = "dBm" if "dBm" in units else ""

    @classmethod
    def from_config(cls, config: Any) -> Self:
        if not isinstance(config, WmbusConfig):
            config = WmbusConfig.model_validate(config)
        return cls(config)

    # -- set-up ----------------------------------------------------------------------------------

    def _load_keys(self) -> None:
        for state in self._meters.values():
            state.key, state.key_problem = load_key(state.meter.key)
            if state.key_problem is not None:
                log.warning(
                    "wmbus.key_unavailable",
                    driver=self.name,
                    meter=state.meter.name,
                    reason=state.key_problem,
                )

    async def open(self) -> None:
        """Open every receiver (DriverIOError when none opens; the others are retried)."""
        self._load_keys()
        # A reopen ends whatever listened before (its reads are cancelled with the old streams),
        # even a stream() its caller dropped without closing it.
        self._listener = None
        await self._links.open()

    async def aclose(self) -> None:
        await self._links.aclose()

    # -- tags ------------------------------------------------------------------------------------

    def tags(self) -> Sequence[TagInfo]:
        out: list[TagInfo] = []
        for state in self._meters.values():
            m = state.meter
            out += [
                TagInfo(f"{m.name}.status"),
                TagInfo(f"{m.name}.rssi", self._rssi_unit),
                TagInfo(f"{m.name}.telegrams_lost"),
            ]
            if m.records == "all":
                out.extend(TagInfo(tag, unit) for tag, unit in state.known.items())
            else:
                out.extend(TagInfo(f"{m.name}.{s.tag_name}") for s in m.records)
        if self._links.several:
            out += [TagInfo(f"receiver.{link.name}.open") for link in self._links.links]
        return out

    # -- receiving -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _listening(self, who: str) -> Iterator[None]:
        """The receivers' one listener (module docstring): `DriverIOError` while another listens."""
        if self._listener is not None:
            raise DriverIOError(
                f"{self.name}: the receivers are already being listened to by {self._listener[0]}; "
                "one listener at a time (read() is for probes, not beside the running device)"
            )
        token = (who, object())
        self._listener = token
        try:
            yield
        finally:
            if self._listener is token:
                self._listener = None

    async def stream(self) -> AsyncIterator[list[Reading]]:
        with self._listening("stream()"):
            while True:
                readings = self._feed(await self._links.receive(SILENCE_CHECK_S))
                now = now_ns()
                if now - self._silence_checked_ns >= SILENCE_EVERY_NS:
                    self._silence_checked_ns = now
                    readings += self._silence(now)
                if readings:
                    yield readings

    async def read(self) -> list[Reading]:
        """A one-shot read (`edge-agent probe`): listen until every configured meter has been heard,
        at most 60 s; what arrived meanwhile. `DriverIOError` while `stream()` runs."""
        return await self.listen_readings(60.0, until_all_heard=True)

    async def listen_readings(self, seconds: float, *, until_all_heard: bool = False) -> list[Reading]:
        """Everything heard for `seconds` (commissioning), or less once every configured meter gave
        a good reading when `until_all_heard`. `DriverIOError` while `stream()` runs."""
        with self._listening("a read"):
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            out: list[Reading] = []
            pending = {s.meter.name for s in self._meters.values()}
            while loop.time() < deadline and (pending or not until_all_heard):
                got = self._feed(await self._links.receive(max(0.01, deadline - loop.time())))
                out += got
                pending -= {r.tag.split(".", 1)[0] for r in got if r.quality == GOOD}
            return out

    def heard(self) -> list[Heard]:
        """Every configured meter heard since the driver started and the last `HEARD_KEPT` others,
        most recent last (commissioning)."""
        configured = [s.heard for s in self._meters.values() if s.heard is not None]
        return sorted([*configured, *self._heard.values()], key=lambda h: h.last_ns)

    def _feed(self, chunks: list[tuple[Link, bytes]]) -> list[Reading]:
        """Bytes from the receivers; the readings of the telegrams they complete, after those of
        receivers opened or lost since the last call (several receivers only)."""
        changes, self._links.changes = self._links.changes, []
        out = [Reading(self.name, f"receiver.{link.name}.open", ts, up, GOOD) for link, up, ts in changes]
        for source, data in chunks:
            for received in source.parser.feed(data):
                out += self._telegram(source, received, now_ns())
        return out

    def _telegram(self, source: Link, received: receivers.Received, ts: int) -> list[Reading]:
        self._last_frame_ns = source.last_frame_ns = ts
        try:
            link = link_frame(received.raw)
        except MbusFrameError:
            self._counts["link_errors"] += 1
            return []
        ident = link.ident.upper()
        access = access_number(link)
        now_s = time.monotonic()
        if self._duplicates.seen(link, now_s):
            self._counts["duplicates"] += 1
            if (copy_of := self._heard_entry(ident)) is not None:
                copy_of.heard_by(source.name, received, access)
            return []
        source.first_copies += 1
        state = self._meters.get(ident)
        if state is not None and state.meter.manufacturer not in (None, link.manufacturer):
            state = None  # same number, another manufacturer's meter
        if state is None:
            heard = self._note_heard(ident, link.manufacturer, link.device_type, received, ts)
            heard.reception.note(access)
            heard.heard_by(source.name, received, access)
            self._counts["unknown_frames"] += 1
            return self._listen(heard, received, ts) if self.config.listen else []
        heard = self._note_configured(state, link.manufacturer, link.device_type, received, ts)
        telegram, out = self._decode(state, heard, received, ts)
        if telegram is None and state.mac_fails:
            # Not the meter's word: its access number may be forged too, so no reception count.
            return out
        if telegram is not None:
            when = meter_time(telegram.records)
            counter = telegram.afl.message_counter if telegram.afl is not None else None
            old = state.freshness.judge(access, when, counter, now_s)
            if old is not None:
                # Not the meter now: no reading, no reception count, and the silence clock runs on.
                self._counts["stale"] += 1
                state.stale += 1
                log.warning("wmbus.old_telegram_dropped", driver=self.name, meter=state.meter.name, why=old)
                return []
            state.freshness.accept(access, when, counter, now_s)
            out = self._meter_readings(state, heard, telegram, received, ts)
        lost = heard.reception.note(access)
        heard.heard_by(source.name, received, access)
        state.last_ns, state.silent_reported_ns = ts, None
        if lost is not None:
            out.append(Reading(self.name, f"{state.meter.name}.telegrams_lost", ts, lost, GOOD))
        return out

    def _heard_entry(self, ident: str) -> Heard | None:
        state = self._meters.get(ident)
        if state is not None and state.heard is not None:
            return state.heard
        return self._heard.get(ident)

    def _note_heard(
        self, ident: str, manufacturer: str, device_type: int, received: receivers.Received, ts: int
    ) -> Heard:
        """A meter not configured: kept among the last `HEARD_KEPT` of them, oldest forgotten first."""
        heard = self._heard.get(ident) or Heard(ident, manufacturer, device_type)
        heard.frames += 1
        heard.last_ns, heard.rssi, heard.rssi_unit = ts, received.rssi, received.rssi_unit
        self._heard[ident] = heard
        self._heard.move_to_end(ident)
        while len(self._heard) > HEARD_KEPT:
            self._heard.popitem(last=False)
        return heard

    def _note_configured(
        self, state: _MeterState, manufacturer: str, device_type: int, received: receivers.Received, ts: int
    ) -> Heard:
        """A configured meter: its entry is its own, never pushed out by neighbours' meters."""
        if state.heard is None:
            ident = state.meter.id.upper()
            state.heard = self._heard.pop(ident, None) or Heard(ident, manufacturer, device_type)
            state.heard.configured = state.meter.name
        heard = state.heard
        heard.frames += 1
        heard.last_ns, heard.rssi, heard.rssi_unit = ts, received.rssi, received.rssi_unit
        return heard

    def _decode(
        self, state: _MeterState, heard: Heard, received: receivers.Received, ts: int
    ) -> tuple[WirelessTelegram | None, list[Reading]]:
        """The telegram decoded, or None and the bad status reading that says why not."""
        status_tag = f"{state.meter.name}.status"
        try:
            telegram = decode_wireless(received.raw, key=state.key, formats=self._formats)
        except MbusEncryptedError:
            heard.encrypted = True
            self._counts["no_key"] += 1
            reason = state.key_problem or "encrypted telegram and no key configured for this meter"
            return None, [Reading(self.name, status_tag, ts, None, BAD, "", reason)]
        except MbusKeyError:
            heard.encrypted = True
            state.key_fails, state.mac_fails = True, False
            self._counts["wrong_key"] += 1
            reason = "the configured key does not decrypt this meter"
            return None, [Reading(self.name, status_tag, ts, None, BAD, "", reason)]
        except MbusMacError as exc:
            heard.encrypted = True
            state.key_fails, state.mac_fails = False, True
            self._counts["bad_mac"] += 1
            log.warning("wmbus.telegram_refused", driver=self.name, meter=state.meter.name, why=str(exc))
            return None, [Reading(self.name, status_tag, ts, None, BAD, "", f"telegram refused: {exc}")]
        except MbusDecodeError as exc:
            self._counts["undecodable"] += 1
            return None, [Reading(self.name, status_tag, ts, None, BAD, "", f"undecodable telegram: {exc}")]
        state.key_fails, state.mac_fails = False, False
        return telegram, []

    def _meter_readings(
        self,
        state: _MeterState,
        heard: Heard,
        telegram: WirelessTelegram,
        received: receivers.Received,
        ts: int,
    ) -> list[Reading]:
        meter = state.meter
        heard.encrypted = telegram.encrypted
        total = telegram.total_volume()
        heard.total_volume_m3 = None if total is None else float(total.value or 0)
        self._counts["decoded"] += 1
        app = telegram.application
        selectors = None if meter.records == "all" else meter.records
        out = telegram_readings(self.name, meter.name, [app] if app is not None else [], ts, selectors)
        if received.rssi is not None and received.rssi_unit == self._rssi_unit:
            out.append(Reading(self.name, f"{meter.name}.rssi", ts, received.rssi, GOOD, received.rssi_unit))
        flags = alarm_flags(telegram.link.manufacturer, telegram.status, telegram.records, meter.alarm_bits)
        out += [Reading(self.name, f"{meter.name}.alarm.{n}", ts, v, GOOD) for n, v in sorted(flags.items())]
        if selectors is None:
            for r in out:
                state.known.setdefault(r.tag, r.unit)
        return out

    @property
    def listen_not_reported(self) -> int:
        """`listen`: distinct meters heard, not configured, that gave no `heard.*` readings because
        `listen_max_meters` others came first (counted up to `NOT_REPORTED_COUNTED`)."""
        return len(self._listen_left_out)

    def _listen_reports(self, ident: str) -> bool:
        """Whether a meter not configured gives `heard.*` readings: one of the first
        `listen_max_meters` heard since the driver was made, for as long as the driver runs."""
        if ident in self._listen_reported:
            return True
        if len(self._listen_reported) < self.config.listen_max_meters:
            self._listen_reported.add(ident)
            return True
        if ident not in self._listen_left_out and len(self._listen_left_out) < NOT_REPORTED_COUNTED:
            self._listen_left_out.add(ident)
            if len(self._listen_left_out) == 1:
                log.warning(
                    "wmbus.listen_limit_reached",
                    driver=self.name,
                    listen_max_meters=self.config.listen_max_meters,
                    reason=f"the first {self.config.listen_max_meters} meters heard that are not "
                    "configured give heard.<ID> readings; the others are counted, not reported: raise "
                    "'listen_max_meters' (at most 5000) to report more, or survey every meter in range, "
                    "whatever the limit, with `edge-agent probe --listen`",
                )
        return False

    def _listen(self, heard: Heard, received: receivers.Received, ts: int) -> list[Reading]:
        """`heard.<ID>.*` readings of a meter not configured, when it is one of those reported; its
        entry in `heard()` is filled in either way (what `probe --listen` lists)."""
        reported = self._listen_reports(heard.ident)
        prefix = f"{LISTEN_PREFIX}{heard.ident}"
        out = []
        if received.rssi is not None and received.rssi_unit == self._rssi_unit:
            out.append(Reading(self.name, f"{prefix}.rssi", ts, received.rssi, GOOD, received.rssi_unit))
        try:
            telegram = decode_wireless(received.raw, formats=self._formats)
        except MbusEncryptedError:
            heard.encrypted = True
        except MbusDecodeError:
            pass
        else:
            heard.encrypted = telegram.encrypted
            total = telegram.total_volume()
            if total is not None and isinstance(total.value, int | float):
                heard.total_volume_m3 = float(total.value)
                out.append(Reading(self.name, f"{prefix}.volume", ts, total.value, GOOD, "m3"))
        return out if reported else []

    def _silence(self, now: int) -> list[Reading]:
        out = []
        for state in self._meters.values():
            limit = int(state.meter.silent_after_s * NS)
            since = state.last_ns if state.last_ns is not None else self._started_ns
            last_report = state.silent_reported_ns
            if now - since >= limit and (last_report is None or now - last_report >= limit):
                state.silent_reported_ns = now
                seconds = (now - since) // NS
                reason = (
                    f"not heard for {seconds} s" if state.last_ns else f"not heard since start ({seconds} s)"
                )
                out.append(Reading(self.name, f"{state.meter.name}.status", now, None, BAD, "", reason))
        return out

    # -- health ----------------------------------------------------------------------------------

    def health(self) -> WmbusHealth:
        now = now_ns()
        silent = [
            s.meter.name
            for s in self._meters.values()
            if now - (s.last_ns if s.last_ns is not None else self._started_ns) >= s.meter.silent_after_s * NS
        ]
        heard = [s.heard for s in self._meters.values() if s.heard is not None]
        without_key = [
            s.meter.name
            for s in self._meters.values()
            if s.heard is not None and s.heard.encrypted and s.key is None
        ]
        unknown = [f"{h.ident} {h.manufacturer}" for h in self._heard.values()]
        poor = [
            f"{h.configured} {100 * (h.reception.share or 0):.0f} %"
            for h in sorted(heard, key=lambda h: h.last_ns)
            if h.reception.is_poor()
        ]
        links = self._links.links
        return WmbusHealth(
            receiver=" + ".join(link.config.receiver for link in links),
            open=self._links.any_open(),
            frames=sum(link.parser.counters.frames for link in links),
            decoded=self._counts["decoded"],
            crc_errors=sum(link.parser.counters.crc_errors for link in links) + self._counts["link_errors"],
            garbage_bytes=sum(link.parser.counters.garbage_bytes for link in links),
            undecodable=self._counts["undecodable"],
            no_key=self._counts["no_key"],
            wrong_key=self._counts["wrong_key"],
            bad_mac=self._counts["bad_mac"],
            unknown_frames=self._counts["unknown_frames"],
            listen_not_reported=self.listen_not_reported,
            duplicates=self._counts["duplicates"],
            stale=self._counts["stale"],
            meters_configured=len(self._meters),
            meters_heard=sum(1 for s in self._meters.values() if s.last_ns is not None),
            meters_silent=silent,
            meters_without_key=without_key,
            meters_wrong_key=[s.meter.name for s in self._meters.values() if s.key_fails],
            meters_bad_mac=[s.meter.name for s in self._meters.values() if s.mac_fails],
            meters_stale=[s.meter.name for s in self._meters.values() if s.stale],
            unknown_meters=unknown[-UNKNOWN_LISTED:],
            meters_poor_reception=poor,
            last_frame_ns=self._last_frame_ns,
            receivers=[
                ReceiverHealth(
                    name=link.name,
                    endpoint=link.config.endpoint_text(),
                    open=link.stream is not None,
                    setup=link.setup_state(now),
                    frames=link.parser.counters.frames,
                    first_copies=link.first_copies,
                    crc_errors=link.parser.counters.crc_errors,
                    garbage_bytes=link.parser.counters.garbage_bytes,
                    reopens=max(0, link.opens - 1),
                    last_error=link.last_error,
                    last_error_ns=link.last_error_ns,
                    last_frame_ns=link.last_frame_ns,
                )
                for link in links
            ],
        )
