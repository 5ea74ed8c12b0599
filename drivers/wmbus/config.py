"""The `[[devices]]` schema of a wireless M-Bus receiver and the meters it should report; validated
without I/O (a key given by reference is only read when the driver opens)."""

from __future__ import annotations

from typing import Final, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from water_edge.core.names import NAME_PATTERN
from water_edge.core.patterns import explained
from water_edge.drivers.base import DeviceConfig
from water_edge.drivers.mbus.config import MeterKey, RecordSelector, record_tag_problem

ReceiverKind = Literal["im871a", "amb8465", "rtlwmbus"]
LinkMode = Literal["T1", "C1", "S1"]
AlarmName = Literal["leak", "burst", "backflow", "dry", "tamper", "battery", "error", "alarm"]
DEFAULT_BAUD = {"im871a": 57600, "amb8465": 9600, "rtlwmbus": None}
# The tags after `<meter>.` the driver gives a meter besides its records (`driver.py`).
BUILT_IN_TAGS: Final = frozenset(
    {"status", "rssi", "telegrams_lost", *(f"alarm.{name}" for name in get_args(AlarmName))}
)


class AlarmBit(BaseModel):
    """A manufacturer-specific flag the meter's data sheet documents: bit `bit` of the record
    `record` (a quantity, e.g. `error_flags`) or of the header `status` byte means `alarm`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    record: str = Field(default="error_flags", pattern=r"^[a-z_]+$", max_length=64)
    bit: int = Field(ge=0, le=63)
    alarm: AlarmName


class WmbusMeter(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    # The 8-digit identification printed on the meter (the link address), as the meter sends it.
    id: str = Field(pattern=explained(r"^[0-9A-Fa-f]{8}$", "the 8-digit ID printed on the meter"))
    manufacturer: str | None = Field(
        default=None, pattern=explained(r"^[A-Z]{3}$", "a manufacturer code of 3 capital letters (e.g. KAM)")
    )
    # AES-128 key, 32 hex digits, or a secret reference ({ file = ... } / { env = ... }).
    key: MeterKey = None
    records: Literal["all"] | list[RecordSelector] = "all"
    alarm_bits: list[AlarmBit] = Field(default_factory=list, max_length=64)
    # A meter not heard for this long gets a bad `<meter>.status` reading ("not heard for ...").
    silent_after_s: float = Field(default=3600.0, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _record_tags(self) -> Self:
        if self.records != "all":
            problem = record_tag_problem(self.name, self.records, BUILT_IN_TAGS)
            if problem is not None:
                raise ValueError(problem)
        return self


MAX_RECEIVERS = 8
LISTEN_PREFIX: Final = "heard."  # `listen`'s tags of meters heard, not configured: heard.<ID>.rssi
SOURCE_KEYS = ("receiver", "port", "host", "tcp_port", "baudrate", "link_modes")


def _source_problem(receiver: ReceiverKind, port: str | None, host: str | None, tcp_port: int | None,
                    link_modes: list[LinkMode]) -> str | None:  # fmt: skip
    if (port is None) == (host is None):
        return "give exactly one of 'port' (serial device or FIFO) or 'host' + 'tcp_port'"
    if host is not None and tcp_port is None:
        return "'host' needs 'tcp_port'"
    if host is not None and receiver != "rtlwmbus":
        return f"receiver {receiver!r} is a USB stick: give its serial 'port'"
    if receiver != "rtlwmbus" and len(link_modes) > 1:
        return f"an {receiver} listens on one link mode at a time; give one"
    return None


class ReceiverSource(BaseModel):
    """Where a receiver is reached and what it listens to: the keys of one receiver, at the top of
    a wmbus device or in each of its `[[devices.receivers]]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    port: str | None = Field(default=None, min_length=1, max_length=255)  # serial device or FIFO
    host: str | None = Field(default=None, min_length=1, max_length=255)  # rtl_wmbus over TCP
    tcp_port: int | None = Field(default=None, ge=1, le=65535)
    baudrate: int | None = Field(default=None, ge=1200, le=921_600)
    link_modes: list[LinkMode] = Field(
        default_factory=lambda: list[LinkMode](["T1"]), min_length=1, max_length=3
    )


class ReceiverConfig(ReceiverSource):
    """One receiver: a USB stick on a serial port, or rtl_wmbus's lines from a FIFO or TCP."""

    # How status and commissioning name it; several receivers default to r1, r2, ...
    name: str | None = Field(default=None, pattern=NAME_PATTERN, max_length=64)
    receiver: ReceiverKind

    @model_validator(mode="after")
    def _source(self) -> Self:
        problem = _source_problem(self.receiver, self.port, self.host, self.tcp_port, self.link_modes)
        if problem is not None:
            raise ValueError(problem)
        return self

    @property
    def label(self) -> str:
        return self.name or self.receiver

    def endpoint_text(self) -> str:
        where = self.port if self.port is not None else f"{self.host}:{self.tcp_port}"
        return f"{self.receiver} {where}"

    @property
    def serial_baudrate(self) -> int | None:
        return self.baudrate if self.baudrate is not None else DEFAULT_BAUD[self.receiver]


class WmbusConfig(DeviceConfig, ReceiverSource):
    """The meters to report and the receiver that hears them (`receiver`, `port`, ... at the top), or
    several receivers (`[[devices.receivers]]`) whose telegrams are merged: a meter is reported once,
    whichever receiver heard it."""

    kind: Literal["wmbus"]
    receiver: ReceiverKind | None = None
    receivers: list[ReceiverConfig] = Field(default_factory=list, max_length=MAX_RECEIVERS)
    # Report the meters heard that are not configured as readings: `heard.<ID>.rssi`, `.volume`.
    listen: bool = False
    # With `listen`: the first this many of them heard give `heard.*` readings; the others are
    # counted, not reported (`edge-agent probe --listen` lists them all).
    listen_max_meters: int = Field(default=200, ge=1, le=5000)
    # A telegram heard again within this many seconds (through a repeater, decoded twice, or by a
    # second receiver) is dropped; 0 keeps every copy. Keep it well under 256 send intervals (the
    # access number wraps).
    duplicate_window_s: float = Field(default=30.0, ge=0, le=3600)
    meters: list[WmbusMeter] = Field(default_factory=list)

    def endpoint_text(self) -> str:
        return ", ".join(r.endpoint_text() for r in self.receiver_configs())

    def unlearnt_tag_prefixes(self) -> tuple[str, ...]:
        """`listen`'s `heard.<ID>.*`: the neighbours' meters heard, a survey, never stood in for."""
        return (LISTEN_PREFIX,) if self.listen else ()

    def point_count(self) -> int:
        return len(self.meters)

    def meter_records(self) -> dict[str, frozenset[str] | None]:
        """The tags after `<meter>.` each meter's selected records make; None for `"all"` (known
        once read)."""
        return {
            m.name: None if m.records == "all" else frozenset(r.tag_name for r in m.records)
            for m in self.meters
        }

    def serial_line(self) -> tuple[str, str] | None:
        """The port of the first USB stick (`serial_lines`: every one)."""
        lines = self.serial_lines()
        return lines[0] if lines else None

    def serial_lines(self) -> list[tuple[str, str]]:
        """The ports of its USB sticks; rtl_wmbus's FIFO or TCP stream is no serial line.

        A stick answers one program only: its settings name this device, so that the config
        loader, which lets devices of alike settings share a port, refuses any other user of it."""
        return [
            (r.port, f"wM-Bus {r.receiver} stick, for {self.name} only")
            for r in self.receiver_configs()
            if r.receiver != "rtlwmbus" and r.port is not None
        ]

    def receiver_configs(self) -> list[ReceiverConfig]:
        """The receivers to listen to, in the order configured (the top-level one alone)."""
        if self.receivers:
            return self.receivers
        assert self.receiver is not None  # the validator guarantees one of the two forms
        return [
            ReceiverConfig(receiver=self.receiver, port=self.port, host=self.host, tcp_port=self.tcp_port,
                           baudrate=self.baudrate, link_modes=self.link_modes)
        ]  # fmt: skip

    @model_validator(mode="after")
    def _source(self) -> Self:
        if self.receivers:
            given = [k for k in SOURCE_KEYS if k in self.model_fields_set]
            if given:
                raise ValueError(
                    f"give the receiver either at the top ('receiver', 'port', ...) or as "
                    f"[[devices.receivers]], not both (found {', '.join(repr(k) for k in given)} beside "
                    "'receivers')"
                )
            if self.duplicate_window_s <= 0:
                raise ValueError(
                    "several receivers hear the same telegrams: 'duplicate_window_s' must be above 0"
                )
        elif self.receiver is None:
            raise ValueError("give 'receiver' (with 'port' or 'host'), or [[devices.receivers]]")
        else:
            problem = _source_problem(self.receiver, self.port, self.host, self.tcp_port, self.link_modes)
            if problem is not None:
                raise ValueError(problem)
        if not self.meters and not self.listen:
            raise ValueError("configure 'meters', or set 'listen = true' to report every meter heard")
        names = [m.name for m in self.meters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate meter names: {', '.join(dupes)}")
        ids = [m.id.upper() for m in self.meters]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"meter id {twice[0]} is configured twice")
        return self

    @field_validator("receivers")
    @classmethod
    def _named(cls, value: list[ReceiverConfig]) -> list[ReceiverConfig]:
        named = [r if r.name else r.model_copy(update={"name": f"r{i}"}) for i, r in enumerate(value, 1)]
        labels = [r.label for r in named]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"receiver name {twice[0]!r} is used twice")
        where = [r.endpoint_text().split(" ", 1)[1] for r in named]
        shared = sorted({w for w in where if where.count(w) > 1})
        if shared:
            # Two opens of one stick or stream would split its telegrams between them at random.
            raise ValueError(f"two receivers name {shared[0]}; give each receiver its own port or host")
        return named
