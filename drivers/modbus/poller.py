"""Turns planned read requests into readings, whatever the transport (TCP or RTU) sends them.

A device refuses a whole request for the sake of part of it, and the tags that exist must not be
reported bad with it. The request is then split, once and for good, and its parts read again at
once:

- exception 2 (illegal data address) to a request that spans addresses between tags: many PLCs
  refuse a read that touches any address they do not map. Split into gap-free requests.
- exception 2 to a gap-free request of several tags: one of them names registers the device does
  not map (a typo in an address, a map of another firmware). Cut in halves, and so on down, so
  that the refused tag is found and named (`modbus.tag_refused`) and its neighbours are read.
- exception 3 (illegal data value) to a request of several tags: for a read, the quantity is more
  than the device takes in one request (drives and small PLCs take 16-64 registers, not 125). Cut
  in halves until the device takes them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Generic, Self, TypeVar

import structlog

from water_edge.core.reading import BAD, GOOD, Reading, Value
from water_edge.drivers.base import DeviceConfig, TagInfo
from water_edge.drivers.modbus.adapter import ExceptionAnswerError, ModbusPDU, raise_for_error_pdu
from water_edge.drivers.modbus.codec import Bad, decode_bits, decode_registers
from water_edge.drivers.modbus.config import ModbusDeviceConfig
from water_edge.drivers.modbus.plan import ReadRequest, halve, split_at_gaps

log = structlog.get_logger(__name__)

MAX_SILENT_REQUESTS: Final = 3
# How long split requests stay before the planned ones are tried again (see `RequestPoller`).
REMERGE_S: Final = 900.0
ILLEGAL_DATA_ADDRESS: Final = 2
ILLEGAL_DATA_VALUE: Final = 3
READ_FUNCTION: Final[dict[str, int]] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}


class RequestFailedError(Exception):
    """A request got no usable answer (`timeout`, `bad response: ...`); `reason` goes on its
    tags' bad readings, the device stays up."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def answer_mismatch(request: ReadRequest, response: ModbusPDU) -> str | None:
    """Why `response` cannot be the answer to `request` (another function code, another size),
    or None. On RTU, with no transaction id, this is how an answer meant for an earlier request
    (a slave that answered after its timeout) shows; its values belong to other registers."""
    asked = READ_FUNCTION[request.table]
    code = int(response.function_code) & 0x7F
    if code != asked:
        return f"answer to function {code}, request was function {asked}"
    if response.isError():
        return None
    if request.is_bits:
        got_bytes, want_bytes = len(response.bits) // 8, (request.count + 7) // 8
        if got_bytes != want_bytes:
            return f"{got_bytes} data bytes for {request.count} bits (expected {want_bytes})"
    elif len(response.registers) != request.count:
        return f"{len(response.registers)} registers for a request of {request.count}"
    return None


# Sends one request; returns its answer, or raises `RequestFailedError` (no usable answer),
# `ExceptionAnswerError` (the device refused it) or `DriverIOError` (the device is gone).
Execute = Callable[[ReadRequest], Awaitable[ModbusPDU]]


@dataclass
class _Entry:
    request: ReadRequest
    labels: list[tuple[str, str]] = field(init=False)  # (tag, unit), built once, not per poll
    offsets: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.labels = [(t.name, t.unit) for t, _ in self.request.tags]
        self.offsets = [off for _, off in self.request.tags]


def _parts(request: ReadRequest, code: int) -> list[ReadRequest]:
    """What to read instead of `request`, which the device refused with exception `code` (the
    request itself when cutting cannot help)."""
    if code == ILLEGAL_DATA_ADDRESS:
        parts = split_at_gaps(request)
        return parts if len(parts) > 1 else halve(request)
    if code == ILLEGAL_DATA_VALUE:
        return halve(request)
    return [request]


class RequestPoller:
    """Reads the planned requests each poll, splitting the ones the device refuses (above).

    A split stays for `remerge_s`, then the planned requests are tried again: a device that refused
    everything for a while (a PLC in STOP, or taking a program download) is not read one tag per
    request for the rest of the agent's life; one still refusing is split again at once."""

    def __init__(
        self,
        source: str,
        requests: list[ReadRequest],
        *,
        remerge_s: float = REMERGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._planned = list(requests)
        self._entries = [_Entry(r) for r in requests]
        self.splits = 0
        self._remerge_s = remerge_s
        self._clock = clock
        self._split_at: float | None = None  # when the requests in use were first split
        self._refused_tags: set[str] = set()  # named in `modbus.tag_refused` already

    @property
    def requests(self) -> list[ReadRequest]:
        return [e.request for e in self._entries]

    async def read(self, execute: Execute) -> list[Reading]:
        if self._split_at is not None and self._clock() - self._split_at >= self._remerge_s:
            self._entries = [_Entry(r) for r in self._planned]
            self._split_at = None
            log.info("modbus.requests_remerged", driver=self.source, requests=len(self._planned))
        out: list[Reading] = []
        kept: list[_Entry] = []
        for entry in self._entries:
            out.extend(await self._read(entry, execute, kept))
        self._entries = kept
        return out

    async def _read(self, entry: _Entry, execute: Execute, kept: list[_Entry]) -> list[Reading]:
        request = entry.request
        try:
            response = await execute(request)
        except ExceptionAnswerError as refused:
            parts = _parts(request, refused.code)
            if len(parts) > 1:
                self.splits += 1
                if self._split_at is None:
                    self._split_at = self._clock()
                log.warning(
                    "modbus.request_split",
                    driver=self.source,
                    unit_id=request.unit_id,
                    table=request.table,
                    start=request.start,
                    count=request.count,
                    into=[(p.start, p.count) for p in parts],
                    refused=refused.reason,
                )
                readings: list[Reading] = []
                for part in parts:
                    readings.extend(await self._read(_Entry(part), execute, kept))
                return readings
            tag = request.tags[0][0]
            if (
                refused.code == ILLEGAL_DATA_ADDRESS
                and len(request.tags) == 1
                and tag.name not in self._refused_tags
            ):
                self._refused_tags.add(tag.name)
                log.warning(
                    "modbus.tag_refused",
                    driver=self.source,
                    tag=tag.name,
                    unit_id=request.unit_id,
                    table=request.table,
                    address=tag.address,
                    count=tag.width,
                    why="the device does not map these addresses: check the tag's address, table and type",
                )
            return self._bad(entry, kept, refused.reason)
        except RequestFailedError as failed:
            return self._bad(entry, kept, failed.reason)
        kept.append(entry)
        ts = time.time_ns()
        values: list[Value | Bad] = (
            decode_bits(entry.offsets, response.bits)
            if request.layout is None
            else decode_registers(request.layout, response.registers, getattr(response, "wire", None))
        )
        return [
            Reading(self.source, tag, ts, None, BAD, unit, value.reason)
            if type(value) is Bad
            else Reading(self.source, tag, ts, value, GOOD, unit)  # type: ignore[arg-type]
            for (tag, unit), value in zip(entry.labels, values, strict=True)
        ]

    def _bad(self, entry: _Entry, kept: list[_Entry], reason: str) -> list[Reading]:
        kept.append(entry)
        ts = time.time_ns()
        return [Reading(self.source, tag, ts, None, BAD, unit, reason) for tag, unit in entry.labels]


ConfigT = TypeVar("ConfigT", bound=ModbusDeviceConfig)


class PolledModbusDriver(Generic[ConfigT]):
    """What the TCP and RTU drivers share: building from config, the planned requests, the tags."""

    config_model: ClassVar[type[DeviceConfig]]
    _poller: RequestPoller
    _config: ConfigT
    _silent: int
    _stats: dict[str, int]
    _last_ok_ns: int | None

    @classmethod
    def from_config(cls, config: Any) -> Self:
        if not isinstance(config, cls.config_model):
            config = cls.config_model.model_validate(config)
        return cls(config)  # type: ignore[call-arg]

    @property
    def requests(self) -> Sequence[ReadRequest]:
        """The planned read requests, in the order each poll sends them."""
        return self._poller.requests

    def tags(self) -> Sequence[TagInfo]:
        return [TagInfo(t.name, t.unit) for t in self._config.tags]

    def _accept(self, response: ModbusPDU, where: str, request: ReadRequest | None = None) -> ModbusPDU:
        """Account for an answer that arrived: an answer that does not fit `request` raises
        `RequestFailedError`, an exception answer `ExceptionAnswerError` (`where` starts its
        message); any answer ends a run of silent requests."""
        self._silent = 0
        if request is not None and (problem := answer_mismatch(request, response)) is not None:
            self._stats["errors"] += 1
            log.warning(
                "modbus.answer_mismatch", driver=self._config.name, start=request.start, problem=problem
            )
            raise RequestFailedError(f"bad response: {problem}")
        try:
            raise_for_error_pdu(response, where)
        except ExceptionAnswerError:
            self._stats["errors"] += 1
            self._stats["exceptions"] += 1
            raise
        self._last_ok_ns = time.time_ns()
        return response
