"""Finding what answers on a Modbus line or behind a Modbus TCP address, for commissioning
(`edge-agent scan modbus`).

Which unit IDs answer: one read of one register (or bit) at the same address for each unit ID. An
answer with a value, and equally an exception answer (illegal address, illegal function), says a
device is there. A TCP-to-RTU gateway answers for a unit ID with nothing behind it with exception
10 or 11 (path unavailable, target device failed to respond): nothing there. On a serial line a
unit ID nobody has gets no answer at all.

A device that ignores the unit ID (most Modbus TCP devices that are not gateways) answers every
unit ID alike; so do identical devices behind a gateway. Only on TCP, and only when an unlikely unit
ID (one a gateway would have nothing behind) answers alike too, is it taken for one device
(`ignores_unit_id`). A serial slave cannot ignore its address: on RTU every unit ID that answers
is a device.

Which addresses of a table a unit reads (`map_table`): blocks of up to `max_count` are read and a
refused block is cut in halves, down to single registers, as the poller does with a refused
request (`drivers.modbus.poller`). Devices that drop a read of addresses they do not map, instead of
refusing it, leave the block unanswered; such blocks are reported as such, not cut further (each try
would cost a timeout). An answer that does not fit its read (too few or too many values, another
function) is checked as the poller checks it (`answer_mismatch`) and makes no address readable.

Everything goes through `Send`: one read, raising the adapter's errors: `ExceptionAnswerError` for
an exception answer, `NoAnswerError` (`StrayAnswerError` when bytes came back that answer no
request), `BadAnswerError`, and `NoConnectionError` when the device closes the connection instead
of answering. Any other `DriverIOError` (the device cannot be reached at all) ends the scan.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from water_edge.drivers.modbus.adapter import (
    BadAnswerError,
    ExceptionAnswerError,
    ModbusPDU,
    NoAnswerError,
    NoConnectionError,
    exception_reason,
)
from water_edge.drivers.modbus.config import BIT_TABLES, Table
from water_edge.drivers.modbus.plan import ReadRequest
from water_edge.drivers.modbus.poller import answer_mismatch

# (unit_id, table, address, count) -> the answer
Send = Callable[[int, str, int, int], Awaitable[ModbusPDU]]
# unit_id -> its answer to Read Device Identification (function 43/14, basic objects)
Ask = Callable[[int], Awaitable[ModbusPDU]]
IDENTITY_OBJECTS: Final = (0, 1, 2)  # VendorName, ProductCode, MajorMinorRevision

GATEWAY_NOTHING_THERE: Final = frozenset({10, 11})
ILLEGAL_FUNCTION: Final = 1
# A refused block shorter than this is read an address at a time: halving it down costs two reads
# per address where nothing is mapped (the common case of a refused small block), singles one.
SINGLES_BELOW: Final = 16
# Fewer unit IDs answering alike are taken for as many devices, without asking further.
MIN_UNITS_ALIKE: Final = 3
Outcome = Literal["value", "exception", "garbled", "gateway", "silent", "stray", "closed"]


class StrayAnswerError(NoAnswerError):
    """No answer to the request, but bytes came back that answer no request sent: another protocol
    on the port, or a device that gets the unit or transaction ID wrong; `detail` says which."""


@dataclass(frozen=True)
class UnitAnswer:
    """What one unit ID answered to the probe read."""

    unit_id: int
    outcome: Outcome
    detail: str
    value: int | None = None
    code: int | None = None
    identity: str = ""  # vendor, product code and revision, where the unit tells them (`identify`)

    @property
    def present(self) -> bool:
        """A device answered (with a value, an exception of its own, or bytes that did not decode)."""
        return self.outcome in ("value", "exception", "garbled")


async def read_checked(send: Send, unit_id: int, table: Table, address: int, count: int) -> ModbusPDU:
    """`send`, and `BadAnswerError` for an answer that does not fit the read (`answer_mismatch`:
    another function, fewer or more values than asked for)."""
    response = await send(unit_id, table, address, count)
    problem = answer_mismatch(ReadRequest(unit_id, table, address, count, (), None), response)
    if problem is not None:
        raise BadAnswerError(f"unit {unit_id}: {problem}", problem)
    return response


async def probe_unit(send: Send, unit_id: int, table: Table, address: int) -> UnitAnswer:
    """One read of `table` at `address` from `unit_id`, and what it says about the unit."""
    try:
        response = await read_checked(send, unit_id, table, address, 1)
    except ExceptionAnswerError as exc:
        if exc.code in GATEWAY_NOTHING_THERE:
            return UnitAnswer(unit_id, "gateway", f"the gateway: {exc.reason}", code=exc.code)
        return UnitAnswer(
            unit_id,
            "exception",
            f"{exc.reason} (a device answers; {table} {address} is not readable)",
            code=exc.code,
        )
    except (NoAnswerError, BadAnswerError, NoConnectionError) as exc:
        return _no_value(unit_id, exc)
    values = response.bits if table in BIT_TABLES else response.registers
    value = int(values[0])
    return UnitAnswer(unit_id, "value", f"{table} {address} = {value}", value=value)


def _no_value(unit_id: int, exc: NoAnswerError | BadAnswerError | NoConnectionError) -> UnitAnswer:
    """What a probe read that got neither a value nor an exception answer says about the unit."""
    if isinstance(exc, StrayAnswerError):
        return UnitAnswer(unit_id, "stray", exc.detail)
    if isinstance(exc, NoAnswerError):
        return UnitAnswer(unit_id, "silent", "no answer")
    if isinstance(exc, BadAnswerError):
        return UnitAnswer(unit_id, "garbled", f"answers, but not readably: {exc.detail}")
    return UnitAnswer(unit_id, "closed", "closes the connection instead of answering")


async def scan_units(
    send: Send,
    units: Iterable[int],
    table: Table,
    address: int,
    on_answer: Callable[[UnitAnswer], None] = lambda _a: None,
) -> list[UnitAnswer]:
    """`probe_unit` for each unit ID in turn. An answer that did not decode is tried once more: on
    a serial line it is often the late answer of the unit before, arriving in this one's turn."""
    answers = []
    for unit_id in units:
        answer = await probe_unit(send, unit_id, table, address)
        if answer.outcome == "garbled":
            answer = await probe_unit(send, unit_id, table, address)
        on_answer(answer)
        answers.append(answer)
    return answers


async def identify(ask: Ask, unit_id: int) -> str:
    """What unit `unit_id` says it is: vendor, product code and revision from Read Device
    Identification, or "" where it does not tell (many devices answer function 43 with exception
    1, some not at all)."""
    try:
        response = await ask(unit_id)
    except (ExceptionAnswerError, NoAnswerError, BadAnswerError, NoConnectionError):
        return ""
    information = getattr(response, "information", None) or {}
    texts = (_printable(information.get(i)) for i in IDENTITY_OBJECTS)
    return " ".join(t for t in texts if t)


def _printable(value: object) -> str:
    """An identification object as text: device strings are ASCII in principle, anything in
    practice (NUL padding, Latin-1 names); a repeated object comes as a list."""
    if isinstance(value, list):
        value = b" ".join(v for v in value if isinstance(v, bytes))
    if not isinstance(value, bytes):
        return ""
    return "".join(c for c in value.decode("latin-1") if c.isprintable()).strip()[:64]


def all_answer_alike(answers: list[UnitAnswer]) -> bool:
    """Every unit ID tried (`MIN_UNITS_ALIKE` or more) answered, and with the same answer: the
    same value, or the same exception."""
    if len(answers) < MIN_UNITS_ALIKE or not all(a.present for a in answers):
        return False
    first = answers[0]
    return all((a.outcome, a.value, a.code) == (first.outcome, first.value, first.code) for a in answers)


def unlikely_unit(tried: Collection[int]) -> int | None:
    """A unit ID not tried that a gateway would have nothing behind: the highest free one of
    1..247 (serial addresses are handed out from 1 up), else 0, else 255."""
    return next((u for u in (*range(247, 0, -1), 0, 255) if u not in tried), None)


async def ignores_unit_id(
    send: Send, ask: Ask, answers: list[UnitAnswer], table: Table, address: int, *, serial_line: bool
) -> bool:
    """Whether the unit IDs that answered are one device that ignores the unit ID (as most Modbus
    TCP devices that are not gateways do), not as many devices. Never on a serial line (a slave
    cannot ignore its address). On TCP every unit ID tried must answer alike, and so must an
    unlikely one (`unlikely_unit`, asked here), with the same identity: identical devices behind a
    gateway answer alike too, but the gateway has nothing behind unit 247."""
    if serial_line or not all_answer_alike(answers):
        return False
    extra = unlikely_unit([a.unit_id for a in answers])
    asked = [answers[0].unit_id, answers[-1].unit_id]
    if extra is not None:
        if not all_answer_alike([*answers[:2], await probe_unit(send, extra, table, address)]):
            return False
        asked.append(extra)
    identities = {await identify(ask, unit_id) for unit_id in asked}
    return len(identities) == 1


Range = tuple[int, int]  # first and last address, inclusive


@dataclass
class RegisterMap:
    """The addresses of one table of one unit that read, and those whose reads got no answer."""

    unit_id: int
    table: str
    first: int
    last: int
    readable: list[Range] = field(default_factory=list)
    unanswered: list[Range] = field(default_factory=list)
    misanswered: list[Range] = field(default_factory=list)  # answered, but not with the values asked for
    misanswer: str = ""  # the first such answer's problem
    requests: int = 0
    not_supported: str = ""  # the unit refuses the table's read function (exception 1)
    stopped_at: int | None = None  # address where `max_requests` ran out

    @property
    def readable_count(self) -> int:
        return sum(b - a + 1 for a, b in self.readable)


async def map_table(
    send: Send,
    unit_id: int,
    table: Table,
    first: int,
    last: int,
    *,
    max_count: int = 125,
    max_requests: int = 12_000,
) -> RegisterMap:
    """Which addresses `first`..`last` of `table` unit `unit_id` reads, in blocks of at most
    `max_count` cut in halves where refused; at most `max_requests` reads."""
    found = RegisterMap(unit_id, table, first, last)
    pending: deque[Range] = deque(
        (a, min(last, a + max_count - 1)) for a in range(first, last + 1, max_count)
    )
    while pending:
        a, b = pending.popleft()
        if found.requests >= max_requests:
            found.stopped_at = a
            break
        found.requests += 1
        try:
            await read_checked(send, unit_id, table, a, b - a + 1)
        except ExceptionAnswerError as exc:
            if exc.code == ILLEGAL_FUNCTION:
                found.not_supported = exception_reason(exc.code)
                break
            if exc.code in GATEWAY_NOTHING_THERE:
                _add(found.unanswered, (a, b))
            elif a == b:  # a single address refused: not mapped
                pass
            elif b - a < SINGLES_BELOW:  # a small refused block: its addresses one by one
                pending.extendleft((x, x) for x in range(b, a - 1, -1))
            else:  # refused: an address in it is not mapped, or the block is too long
                mid = (a + b) // 2
                pending.extendleft([(mid + 1, b), (a, mid)])
            continue
        except (NoAnswerError, NoConnectionError):
            _add(found.unanswered, (a, b))
            continue
        except BadAnswerError as exc:
            found.misanswer = found.misanswer or exc.detail
            _add(found.misanswered, (a, b))
            continue
        _add(found.readable, (a, b))
    return found


def _add(ranges: list[Range], new: Range) -> None:
    """Append `new` (ranges arrive in address order), joined to the last one when they touch."""
    if ranges and ranges[-1][1] + 1 == new[0]:
        ranges[-1] = (ranges[-1][0], new[1])
    else:
        ranges.append(new)
