"""Finds drivers by `kind` through the `edge_agent.drivers` entry points, importing only those asked for."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, cast

from water_edge.drivers.base import DriverFactory

GROUP = "edge_agent.drivers"


def known_kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load(kind: str) -> type[DriverFactory] | None:
    """The driver class for `kind`, or None when no such driver is installed."""
    for ep in entry_points(group=GROUP):
        if ep.name == kind:
            return cast(type[DriverFactory], ep.load())
    return None


def build(kind: str, config: Any) -> Any:
    factory = load(kind)
    if factory is None:
        raise LookupError(kind)
    return factory.from_config(config)
