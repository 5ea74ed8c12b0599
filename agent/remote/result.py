"""What a command came to: ok, refused (never run) or failed (ran, did not succeed); as an Event, and
counted (`CommandCounts`, the status document's `commands` section)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from water_edge.core.reading import Event, Severity, now_ns

Status = Literal["ok", "refused", "failed"]
COMMAND_RESULT_KIND = "command_result"


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


@dataclass
class CommandResult:
    status: Status
    command_id: str | None = None
    command_type: str | None = None
    reason: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    # Run after the result is committed for sending (e.g. a restart must not swallow its own answer).
    after: Callable[[], Awaitable[None]] | None = field(default=None, repr=False)

    def to_event(self) -> Event:
        detail: dict[str, Any] = {
            "id": self.command_id,
            "type": self.command_type,
            "status": self.status,
        }
        if self.reason is not None:
            detail["reason"] = self.reason
        if self.detail:
            detail["result"] = self.detail
        severity: Severity = "info" if self.status == "ok" else "warning"
        return Event(COMMAND_RESULT_KIND, "agent", now_ns(), severity, None, detail)
