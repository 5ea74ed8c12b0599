"""Writes to PLCs: off by default; only allow-listed (device, table, address) with a type, a value
range and a rate; every write is read back and audited.

The guard sits above a driver's opt-in write capability (`drivers.base.Writable`: `write` +
`read_back`; the Modbus drivers send only FC 5/6/15/16 for writes and FC 1/3 to read back). `fc_guard` can be
installed as a pymodbus `trace_pdu` hook so that no diagnostic (8), programming or
identification (43, 17, 20-24 ...) request can leave the gateway whatever calls the client.
"""

from __future__ import annotations

import math
import struct
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from water_edge.agent.remote.audit import AuditLog, recent_entries
from water_edge.core.errors import AgentError, DriverError
from water_edge.core.reading import now_ns
from water_edge.drivers.base import Writable

WriteType = Literal["uint16", "int16", "uint32", "int32", "float32", "bool"]
# Reads (1-4) and writes (5, 6, 15, 16): nothing else is ever sent.
ALLOWED_FUNCTION_CODES: Final = frozenset({1, 2, 3, 4, 5, 6, 15, 16})
_FORMATS: Final = {"uint16": ">H", "int16": ">h", "uint32": ">I", "int32": ">i", "float32": ">f"}
RATE_WINDOW_NS: Final = 60 * 10**9
# Audit outcomes of a write that went (or may have gone) to the PLC: what the rate counts.
WRITES_THAT_COUNT: Final = frozenset({"ok", "mismatch", "failed"})


class WriteRefusedError(AgentError):
    """A write was not sent: disabled, not allow-listed, wrong type, out of range or too frequent."""


class WriteRule(BaseModel):
    """One `[[writes.allow]]` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str = Field(min_length=1)
    table: Literal["holding", "coil"]
    address: int = Field(ge=0, le=65535)
    type: WriteType
    # None: the device's own unit_id (`load_config` fills it in). A rule once defaulted to 1, and
    # wrote into whichever unit 1 shares the device's line or gateway.
    unit_id: int | None = Field(default=None, ge=0, le=255)
    min: float | None = None
    max: float | None = None
    # At most this many writes to this address per minute (a runaway loop cannot hammer a pump).
    max_per_minute: int = Field(default=6, ge=1, le=600)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if (self.table == "coil") != (self.type == "bool"):
            raise ValueError("coils take type 'bool'; holding registers a numeric type")
        if self.type != "bool":
            if self.min is None or self.max is None:
                raise ValueError("numeric writes need both min and max")
            if self.min > self.max:
                raise ValueError("min must be <= max")
        return self


class WritesSection(BaseModel):
    """`[writes]`: `enabled = true` and at least one `[[writes.allow]]` are both needed to write."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    allow: list[WriteRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_rule_per_register(self) -> Self:
        # A 32-bit rule writes its address and the next: overlapping another rule's register, it
        # would write that register outside the other rule's range and rate. A command names no unit
        # id, so two rules on one address (any unit) would leave one of them silently unused.
        taken: dict[tuple[str, str, int], int] = {}
        for i, rule in enumerate(self.allow):
            for register in range(rule.address, rule.address + _registers(rule.type)):
                other = taken.setdefault((rule.device, rule.table, register), i)
                if other != i:
                    raise ValueError(
                        f"allow[{i}] and allow[{other}] both cover {rule.device} {rule.table} {register}: "
                        "one rule per register"
                    )
        return self


def _registers(write_type: WriteType) -> int:
    """How many registers (or coils) a value of `write_type` takes."""
    return struct.calcsize(_FORMATS[write_type]) // 2 if write_type in _FORMATS else 1


def encode(rule: WriteRule, value: Any) -> list[int] | list[bool]:
    """The registers or bits for `value` under `rule`; WriteRefusedError if it does not fit."""
    if rule.type == "bool":
        if not isinstance(value, bool):
            raise WriteRefusedError(f"value must be true or false (got {value!r})")
        return [value]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WriteRefusedError(f"value must be a finite number (got {value!r})")
    if rule.type != "float32" and value != int(value):
        raise WriteRefusedError(f"{rule.type} takes whole numbers (got {value!r})")
    low = rule.min if rule.min is not None else -math.inf
    high = rule.max if rule.max is not None else math.inf
    if not low <= value <= high:
        raise WriteRefusedError(f"value {value!r} outside the allowed {low:g}..{high:g}")
    number = float(value) if rule.type == "float32" else int(value)
    try:
        raw = struct.pack(_FORMATS[rule.type], number)
    except struct.error as exc:
        raise WriteRefusedError(f"value {value!r} does not fit {rule.type}") from exc
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def fc_guard(sending: bool, pdu: Any) -> Any:
    """pymodbus `trace_pdu` hook: refuse to send any function code but reads and writes."""
    if sending and int(getattr(pdu, "function_code", 0)) not in ALLOWED_FUNCTION_CODES:
        raise WriteRefusedError(f"function code {pdu.function_code} is never sent by this gateway")
    return pdu


class WriteGuard:
    """`await guard.write(device, table, address, value, requested_by=...)` -> what was written."""

    def __init__(
        self,
        config: WritesSection,
        writers: Mapping[str, Writable],
        audit: AuditLog,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._cfg = config
        self._rules: dict[tuple[str, str, int], WriteRule] = {
            (r.device, r.table, r.address): r for r in config.allow
        }
        self._writers = writers
        self._audit = audit
        self._clock = clock
        self._recent: dict[tuple[str, str, int], deque[float]] = {}
        self._recall(audit.path)

    def _recall(self, audit_path: Path) -> None:
        """Count the writes of the last minute that the audit log holds, so that a restart (a crash
        loop, a `config_update`) does not give each register a fresh minute of writes."""
        now_mono, now_wall = self._clock(), now_ns()
        entries = recent_entries(audit_path, "plc_write", RATE_WINDOW_NS, now_wall)
        for entry in sorted(entries, key=lambda e: int(e["ts"])):
            key = (entry.get("device"), entry.get("table"), entry.get("address"))
            if entry.get("outcome") not in WRITES_THAT_COUNT or key not in self._rules:
                continue
            age_s = max(0, now_wall - int(entry["ts"])) / 1e9  # stamped later: counted as now
            self._recent.setdefault(key, deque()).append(now_mono - age_s)

    async def write(
        self, device: str, table: str, address: int, value: Any, *, requested_by: str
    ) -> dict[str, Any]:
        where = {"device": device, "table": table, "address": address, "by": requested_by}
        try:
            rule, values = self._admit(device, table, address, value)
        except WriteRefusedError as exc:
            self._audit.record("plc_write", "refused", **where, reason=str(exc))
            raise
        writer = self._writers.get(device)
        if writer is None:
            self._audit.record("plc_write", "refused", **where, reason="device has no write capability")
            raise WriteRefusedError(f"device {device!r} has no write capability")
        if rule.unit_id is None:  # a rule `load_config` did not see: no unit to guess
            reason = "the rule names no unit_id"
            self._audit.record("plc_write", "refused", **where, reason=reason)
            raise WriteRefusedError(f"{device}: {reason}")
        try:
            await writer.write(rule.unit_id, rule.table, address, values)
            back = await writer.read_back(rule.unit_id, rule.table, address, len(values))
        except DriverError as exc:
            self._audit.record("plc_write", "failed", **where, value=value, reason=str(exc))
            raise
        outcome = "ok" if list(back) == list(values) else "mismatch"
        self._audit.record("plc_write", outcome, **where, value=value, sent=values, read_back=back)
        return {
            "device": device,
            "table": table,
            "address": address,
            "value": value,
            "read_back": list(back),
            "verified": outcome == "ok",
        }

    def _admit(self, device: str, table: str, address: int, value: Any) -> tuple[WriteRule, list[Any]]:
        if not self._cfg.enabled:
            raise WriteRefusedError("writes are disabled on this gateway ([writes] enabled = false)")
        rule = self._rules.get((device, table, address))
        if rule is None:
            raise WriteRefusedError(f"{device} {table} {address} is not in the write allow-list")
        values = encode(rule, value)
        now = self._clock()
        recent = self._recent.setdefault((device, table, address), deque())
        while recent and now - recent[0] >= RATE_WINDOW_NS / 1e9:
            recent.popleft()
        if len(recent) >= rule.max_per_minute:
            raise WriteRefusedError(
                f"more than {rule.max_per_minute} writes a minute to {device} {table} {address}"
            )
        recent.append(now)
        return rule, list(values)
