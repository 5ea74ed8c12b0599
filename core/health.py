"""Typed health: every component reports a dataclass of its own and renders its own status lines.

The running agent puts each component's health into the status document twice: its fields (as
`dataclasses.asdict` gives them, documented by docs/status.schema.json) for scripts and
monitoring, and its `status_lines()` for people. `edge-agent status` only lays those lines out,
so a renamed counter changes the component's own rendering, never a key the CLI guesses at.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Health(Protocol):
    """What a component's health dataclass offers besides its fields."""

    def status_lines(self) -> list[str]:
        """One or a few human lines, without the component's name (the caller prints that)."""
        ...


@runtime_checkable
class Problems(Protocol):
    """A health that can make the agent degraded by itself (a device's certificate near its end)."""

    def problems(self) -> list[str]:
        """One line per condition someone must act on; empty when there is none."""
        ...


def health_json(health: Any) -> dict[str, Any]:
    """The fields of a health dataclass as plain JSON-ready values."""
    if not dataclasses.is_dataclass(health) or isinstance(health, type):
        raise TypeError(f"{type(health).__name__} is not a health dataclass instance")
    return dataclasses.asdict(health)
