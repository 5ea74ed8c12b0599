"""Finds processor kinds through the `edge_agent.processors` entry points, importing only those configured.

A `[[models.<kind>]]` list in the config names the kind; the entry point of that name is a
`core.processor.ProcessorFactory` (the way `drivers.registry` finds drivers by `kind`).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import cast

from water_edge.core.processor import ProcessorFactory

GROUP = "edge_agent.processors"


def known_kinds() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load(kind: str) -> type[ProcessorFactory] | None:
    """The factory class for `kind`, or None when no such processor is installed."""
    for ep in entry_points(group=GROUP):
        if ep.name == kind:
            return cast(type[ProcessorFactory], ep.load())
    return None
