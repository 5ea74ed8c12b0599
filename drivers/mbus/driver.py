"""The M-Bus driver: polls the meters on one serial bus and turns their records into readings.

Tags are `<meter>.<quantity>` plus, where not the default, `.max`/`.min`/`.error` (function),
`.storage<N>`, `.tariff<N>`, `.subunit<N>`; a second record with the same name gets `_2`. Every
meter also has `<meter>.status` (the header status byte), which carries the reason when the meter
cannot be read. Meter status flags set quality: permanent or application error -> bad; power low,
temporary error, busy -> uncertain. Serial I/O runs in a worker thread; each meter read is one
transaction on the shared port (`drivers.serial_bus`), so several `[[devices]]` on one segment take
turns and share one open master. The master is built by a factory the driver receives (default:
`serial_master`, pyserial through `drivers.mbus.link`), so the driver's logic has tests without a port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import structlog

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.core.reading import BAD, GOOD, UNCERTAIN, Quality, Reading, now_ns
from water_edge.drivers import serial_bus
from water_edge.drivers.base import DeviceConfig, TagInfo
from water_edge.drivers.mbus.config import FUNCTION_SUFFIX, MbusConfig, MbusMeter, RecordSelector
from water_edge.drivers.mbus.crypto import MbusKeyError
from water_edge.drivers.mbus.frame import MbusDecodeError, MbusFrameError
from water_edge.drivers.mbus.health import MbusHealth
from water_edge.drivers.mbus.keys import load_key
from water_edge.drivers.mbus.link import LinkStats, MbusMaster, MbusTimeoutError, MbusWrongMeterError
from water_edge.drivers.mbus.security import MbusEncryptedError, MbusMacError
from water_edge.drivers.mbus.telegram import (
    CI_APPLICATION_ERROR,
    Header,
    Record,
    Telegram,
    application_error_text,
)

log = structlog.get_logger(__name__)


def record_tag(record: Record) -> str:
    """The tag suffix (after `<meter>.`) a record gets by the naming scheme."""
    name = record.quantity + (f"_{record.direction}" if record.direction else "")
    name += FUNCTION_SUFFIX[record.function]
    if record.storage:
        name += f".storage{record.storage}"
    if record.tariff:
        name += f".tariff{record.tariff}"
    if record.subunit:
        name += f".subunit{record.subunit}"
    return name


def header_quality(header: Header | None) -> tuple[Quality, str | None]:
    if header is None or not header.status:
        return GOOD, None
    flags = header.status_flags
    app = header.status & 0x03
    # Application status 3, "abnormal condition / alarm" (a leak, backflow, tamper the meter
    # saw), says nothing against its measurements: they stay good; `<meter>.status` carries it.
    if header.status & 0x08 or app == 2:
        return BAD, "meter reports " + ", ".join(flags)
    if header.status & 0x14 or app == 1:
        return UNCERTAIN, "meter reports " + ", ".join(flags)
    return GOOD, None


def telegram_readings(
    source: str,
    meter: str,
    telegrams: Sequence[Telegram],
    ts: int,
    selectors: Sequence[RecordSelector] | None,
) -> list[Reading]:
    """Readings for one meter's telegrams: all records, or the selected ones (missing -> bad)."""
    header = next((t.header for t in telegrams if t.header is not None), None)
    quality, reason = header_quality(header)
    error = next((t.application_error for t in telegrams if t.ci == CI_APPLICATION_ERROR), None)
    if error is not None:  # the meter answered with an error in place of its data
        quality, reason = BAD, f"meter reports application error: {application_error_text(error)}"
    out = [Reading(source, f"{meter}.status", ts, header.status if header else 0, quality, "", reason)]
    records = [r for t in telegrams for r in t.records]
    if selectors is None:
        seen: dict[str, int] = {}
        for r in records:
            base = record_tag(r)
            seen[base] = seen.get(base, 0) + 1
            name = base if seen[base] == 1 else f"{base}_{seen[base]}"
            out.append(_reading(source, f"{meter}.{name}", ts, r, (quality, reason)))
        return out
    for sel in selectors:
        match = next(
            (
                r
                for r in records
                if r.quantity == sel.quantity
                and r.storage == sel.storage
                and r.tariff == sel.tariff
                and r.subunit == sel.subunit
                and r.function == sel.function
            ),
            None,
        )
        tag = f"{meter}.{sel.tag_name}"
        if match is None:
            why = reason if error is not None else "record not in the meter's telegram"
            out.append(Reading(source, tag, ts, None, BAD, "", why))
        else:
            out.append(_reading(source, tag, ts, match, (quality, reason)))
    return out


def _reading(source: str, tag: str, ts: int, r: Record, status: tuple[Quality, str | None]) -> Reading:
    quality, reason = status
    if r.error is not None:
        return Reading(source, tag, ts, None, BAD, r.unit, r.error)
    if r.value is None:
        return Reading(source, tag, ts, None, BAD, r.unit, "meter sent no value")
    return Reading(source, tag, ts, r.value, quality, r.unit, reason)


@runtime_checkable
class MbusLink(Protocol):
    """What the driver uses of an M-Bus master (`drivers.mbus.link.MbusMaster`); blocking, so every
    call but `is_open` and `stats` runs in a worker thread inside a port transaction."""

    stats: LinkStats

    @property
    def is_open(self) -> bool: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def read_telegrams(
        self, address: int, *, max_telegrams: int = 8, key: bytes | None = None
    ) -> list[Telegram]: ...

    def read_secondary(
        self, secondary: str, *, max_telegrams: int = 8, key: bytes | None = None
    ) -> list[Telegram]: ...

    def use_baudrate(self, baudrate: int) -> None: ...


MasterFactory = Callable[[MbusConfig], MbusLink]


def serial_master(config: MbusConfig) -> MbusMaster:
    """The real master: pyserial on the configured port (opened later, by `open()`)."""
    timeout = None if config.timeout_ms is None else config.timeout_ms / 1000.0
    return MbusMaster(
        config.port, config.baudrate, timeout_s=timeout, retries=config.retries, local_echo=config.local_echo
    )


class MbusDriver:
    """Polls the meters of one M-Bus segment."""

    config_model: ClassVar[type[DeviceConfig]] = MbusConfig

    def __init__(self, config: MbusConfig, master_factory: MasterFactory | None = None) -> None:
        self.name = config.name
        self._config = config
        self._master: MbusLink = (master_factory or serial_master)(config)
        self._port: serial_bus.SerialPort | None = None
        self._known: dict[str, dict[str, str]] = {m.name: {} for m in config.meters}
        self._stats = {
            "polls": 0, "meter_reads": 0, "meter_failures": 0, "decode_errors": 0,
            "no_key": 0, "wrong_key": 0, "bad_mac": 0,
        }  # fmt: skip
        # Each meter's key (read at open) and why a configured one cannot be used.
        self._keys: dict[str, tuple[bytes | None, str | None]] = {}
        self._key_fails: set[str] = set()  # meters whose latest telegram their key did not decrypt
        self._no_key: set[str] = set()  # meters whose latest telegram was encrypted, no usable key

    @classmethod
    def from_config(cls, config: Any) -> Self:
        if not isinstance(config, MbusConfig):
            config = MbusConfig.model_validate(config)
        return cls(config)

    def tags(self) -> Sequence[TagInfo]:
        out: list[TagInfo] = []
        for m in self._config.meters:
            out.append(TagInfo(f"{m.name}.status"))
            if m.records == "all":
                out.extend(TagInfo(tag, unit) for tag, unit in self._known[m.name].items())
            else:
                out.extend(TagInfo(f"{m.name}.{s.tag_name}") for s in m.records)
        return out

    def _load_keys(self) -> None:
        self._keys = {m.name: load_key(m.key) for m in self._config.meters}
        for meter, (_, problem) in self._keys.items():
            if problem is not None:
                log.warning("mbus.key_unavailable", driver=self.name, meter=meter, reason=problem)

    async def open(self) -> None:
        if self._port is not None:
            return
        self._load_keys()
        settings = ("mbus", self._config.baudrate, "8E1", self._config.local_echo)
        try:
            port = serial_bus.attach(self._config.port, settings)
        except serial_bus.PortSettingsConflict as exc:
            raise DriverIOError(f"{self.name}: {exc}") from exc
        try:
            async with port.transaction():
                if port.client is None:
                    await asyncio.to_thread(self._master.open)
                    port.client = self._master
                elif isinstance(port.client, MbusLink):
                    self._master = port.client  # another M-Bus section on this segment
                else:
                    raise DriverIOError(f"{self.name}: {self._config.port} is in use by another protocol")
        except DriverIOError:
            serial_bus.detach(port)
            raise
        self._port = port

    async def aclose(self) -> None:
        port, self._port = self._port, None
        if port is None:
            return
        async with port.transaction():
            if serial_bus.detach(port) and port.client is not None:
                await asyncio.to_thread(port.client.close)
                port.client = None

    async def read(self) -> list[Reading]:
        if self._port is None or not self._master.is_open:
            raise DriverIOError(f"{self.name}: not open")
        self._stats["polls"] += 1
        out: list[Reading] = []
        for meter in self._config.meters:
            out.extend(await self._read_meter(meter))
        return out

    async def _read_meter(self, meter: MbusMeter) -> list[Reading]:
        port = self._port
        if port is None:
            raise DriverIOError(f"{self.name}: not open")
        # The master leaves one character of line idle between transactions, at the meter's speed.
        async with port.transaction(11 / (meter.baudrate or self._config.baudrate)):
            try:
                telegrams = await asyncio.to_thread(self._fetch, meter)
                error: str | None = None
            except MbusTimeoutError:
                telegrams, error = [], "timeout"
            except MbusWrongMeterError as exc:
                telegrams, error = [], f"wrong meter: {exc}"
            except MbusFrameError as exc:
                telegrams, error = [], f"bad frame: {exc}"
            except (MbusEncryptedError, MbusKeyError, MbusMacError) as exc:
                telegrams, error = [], self._undecrypted(meter, exc)
            except MbusDecodeError as exc:
                self._stats["decode_errors"] += 1
                telegrams, error = [], f"undecodable telegram: {exc}"
        ts = now_ns()
        if error is not None:
            self._stats["meter_failures"] += 1
            log.info("mbus.meter_failed", driver=self.name, meter=meter.name, reason=error)
            return [Reading(self.name, t.name, ts, None, BAD, t.unit, error) for t in self._meter_tags(meter)]
        self._stats["meter_reads"] += 1
        self._key_fails.discard(meter.name)
        self._no_key.discard(meter.name)
        selectors = None if meter.records == "all" else meter.records
        readings = telegram_readings(self.name, meter.name, telegrams, ts, selectors)
        if selectors is None:
            known = self._known[meter.name]
            for r in readings[1:]:
                known.setdefault(r.tag, r.unit)
        return readings

    def _undecrypted(self, meter: MbusMeter, exc: MbusDecodeError) -> str:
        """Count a telegram that could not be decrypted; the reason its meter's readings carry
        (never the key: a problem with it names its reference)."""
        if isinstance(exc, MbusEncryptedError):
            self._stats["no_key"] += 1
            self._no_key.add(meter.name)
            problem = self._keys.get(meter.name, (None, None))[1]
            return problem or "encrypted telegram and no key configured for this meter"
        if isinstance(exc, MbusKeyError):
            self._stats["wrong_key"] += 1
            self._key_fails.add(meter.name)
            return "the configured key does not decrypt this meter"
        self._stats["bad_mac"] += 1
        log.warning("mbus.telegram_refused", driver=self.name, meter=meter.name, why=str(exc))
        return f"telegram refused: {exc}"

    def _meter_tags(self, meter: MbusMeter) -> list[TagInfo]:
        prefix = f"{meter.name}."
        return [t for t in self.tags() if t.name.startswith(prefix)]

    def _fetch(self, meter: MbusMeter) -> list[Telegram]:
        """Blocking: runs in a worker thread inside the port's transaction."""
        key = self._keys.get(meter.name, (None, None))[0]
        # Every read sets its speed: a meter of its own, or another section on this port, may have
        # left the line at another.
        self._master.use_baudrate(meter.baudrate or self._config.baudrate)
        if meter.secondary is not None:
            return self._master.read_secondary(meter.secondary, max_telegrams=meter.max_telegrams, key=key)
        if meter.address is None:  # the config validator rules this out
            raise DeviceError(f"{self.name}: meter {meter.name!r} has no address")
        return self._master.read_telegrams(meter.address, max_telegrams=meter.max_telegrams, key=key)

    def health(self) -> MbusHealth:
        link, s = self._master.stats, self._stats
        return MbusHealth(
            open=self._master.is_open,
            port=self._config.port,
            polls=s["polls"],
            meter_reads=s["meter_reads"],
            meter_failures=s["meter_failures"],
            decode_errors=s["decode_errors"],
            no_key=s["no_key"],
            wrong_key=s["wrong_key"],
            bad_mac=s["bad_mac"],
            meters_without_key=sorted(self._no_key),
            meters_wrong_key=sorted(self._key_fails),
            requests=link.requests,
            retries=link.retries,
            timeouts=link.timeouts,
            checksum_errors=link.checksum_errors,
            frame_errors=link.frame_errors,
            wrong_meter=link.wrong_meter,
            stray_answers=link.stray_answers,
            noise_bytes=link.noise_bytes,
            bus=None if self._port is None else self._port.health(),
        )
