"""The `meter` processor kind (`edge_agent.processors` entry point): the `[[models.meter]]` tables
become one `MeterProcessor`. Imports nothing heavy: `check-config` loads it to validate the tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Self

from pydantic import BaseModel

from water_edge.core.processor import ConfigProblem, Processor, ProcessorContext, names_used_twice
from water_edge.models.meter.config import MeterGroupConfig

METER_DEVICE_KINDS: Final = frozenset({"wmbus", "mbus"})


class MeterFactory:
    config_model: ClassVar[type[BaseModel]] = MeterGroupConfig

    def __init__(self, groups: Sequence[MeterGroupConfig], state_dir: Path | None = None) -> None:
        self.groups = list(groups)
        self.state_dir = state_dir

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context.state_dir)

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """Group names are unique (they name the events' group); a named device is a meter bus."""
        problems = names_used_twice([g.name for g in sections], "meter group")
        for index, group in enumerate(sections):
            if group.device is None:
                continue
            kind = devices.get(group.device)
            if kind is None:
                known = ", ".join(sorted(n for n, k in devices.items() if k in METER_DEVICE_KINDS)) or "none"
                problems.append(
                    ConfigProblem((index, "device"), f"no device {group.device!r} (meter buses: {known})")
                )
            elif kind not in METER_DEVICE_KINDS:
                problems.append(
                    ConfigProblem((index, "device"), f"device {group.device!r} is a {kind}, not a meter bus")
                )
        return problems

    def processors(self) -> list[Processor]:
        if not self.groups:
            return []
        from water_edge.models.meter.processor import MeterProcessor

        return [MeterProcessor(self.groups, self.state_dir)]
