"""What a command came to: ok, refused (never run) or failed (ran, did not succeed); as an Event, and
counted (`CommandCounts`, the status document's `commands` section).

The event is bounded whatever the command carried: the reason is cut at `MAX_REASON_CHARS` and a
result detail whose JSON is over `MAX_DETAIL_BYTES` is replaced by its size, so an answer never
costs the uplink more than a few KiB.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from water_edge.core.reading import Event, Severity, now_ns

Status = Literal["ok", "refused", "failed"]
COMMAND_RESULT_KIND = "command_result"
MAX_REASON_CHARS: Final = 512
MAX_DETAIL_BYTES: Final = 16 * 1024


class CommandFailedError(Exception):
    """Raised by a handler: the command was valid but could not be carried out; says why."""

    def __init__(self, reason: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


@dataclass(frozen=True, slots=True)
class CommandCounts:
    """What became of the commands that reached the processor (`core.health.Health`)."""

    ok: int = 0
    failed: int = 0
    refused: int = 0
    refused_by_reason: dict[str, int] = field(default_factory=dict)  # reason code -> refusals

    def flat_refusals(self) -> dict[str, int]:
        """`refused.<code>` keys: how the `commands` section counted refusals before it was typed,
        kept beside `refused_by_reason` so that existing monitoring keeps working."""
        return {f"refused.{code}": n for code, n in self.refused_by_reason.items()}

    def status_lines(self) -> list[str]:
        reasons = ", ".join(f"{code} {n}" for code, n in self.refused_by_reason.items())
        line = f"ok {self.ok}  failed {self.failed}  refused {self.refused}"
        return [f"{line} ({reasons})" if reasons else line]


class CommandRefusedError(Exception):
    """Raised by a handler: the command is authentic but not allowed to do this (a write outside the
    allow-list, a config change beyond the key's rights, a file the agent may not write); `code`
    is the refusal reason as the counters and the audit log name it."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _bounded_reason(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[:MAX_REASON_CHARS] + "…"


def _bounded_detail(detail: dict[str, Any]) -> dict[str, Any]:
    size = len(orjson.dumps(detail, default=str))
    return detail if size <= MAX_DETAIL_BYTES else {"truncated": True, "bytes": size}


@dataclass
class CommandResult:
    status: Status
    command_id: str | None = None
    command_type: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Run after the result is committed for sending (e.g. a restart must not swallow its own answer).
    after: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)
    # Counted and audited in a summary, not answered one by one (a flood of refusals; see limits.py).
    quiet: bool = False
    # The first 16 hex digits of the SHA-256 of the payload as received (the audit line's `sha`): a
    # sender matches by it an answer that cannot carry an id (refused before the signature checked).
    payload_sha: str | None = None

    def then_restart(self, request: Callable[[str], None], reason: str) -> CommandResult:
        """This result, with a restart asked for (`request(reason)`) once it is committed for
        sending: a restart must not swallow its own answer."""

        async def later() -> None:
            request(reason)

        self.after = later
        return self

    def to_event(self) -> Event:
        detail: dict[str, Any] = {
            "id": self.command_id,
            "type": self.command_type,
            "status": self.status,
        }
        if self.payload_sha is not None:
            detail["sha"] = self.payload_sha
        if self.reason is not None:
            detail["reason"] = _bounded_reason(self.reason)
        if self.detail:
            detail["result"] = _bounded_detail(self.detail)
        severity: Severity = "info" if self.status == "ok" else "warning"
        return Event(COMMAND_RESULT_KIND, "agent", now_ns(), severity, None, detail)
