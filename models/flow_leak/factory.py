"""The `flow_leak` processor kind (`edge_agent.processors` entry point): all `[[models.flow_leak]]`
districts in one `FlowLeakProcessor`. Imports nothing heavy: `check-config` loads this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from water_edge.core.processor import ConfigProblem, Processor, ProcessorContext, names_used_twice
from water_edge.models.flow_leak.config import FlowLeakSection
from water_edge.models.nightwindow import unset_zone_warning


class FlowLeakFactory:
    config_model: ClassVar[type[BaseModel]] = FlowLeakSection

    def __init__(self, sections: Sequence[FlowLeakSection], state_dir: Path) -> None:
        self.sections = list(sections)
        self.state_dir = Path(state_dir)

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context.state_dir)

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """A district's name is its state directory and its events' source: one name, one district."""
        return names_used_twice([s.name for s in sections], "district")

    @classmethod
    def section_warnings(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """A district without `timezone` on a machine that keeps UTC: nights and the day profile in UTC."""
        unset = [index for index, district in enumerate(sections) if district.timezone is None]
        why = unset_zone_warning("its nights and the day profile of burst detection") if unset else None
        return [ConfigProblem((index, "timezone"), why) for index in unset] if why else []

    @classmethod
    def tag_references(cls, sections: Sequence[Any]) -> list[tuple[tuple[int | str, ...], str]]:
        found: list[tuple[tuple[int | str, ...], str]] = []
        for index, district in enumerate(sections):
            for key in ("inflow", "outflow"):
                found += [((index, key, i), tag) for i, tag in enumerate(getattr(district, key))]
            if district.pressure is not None:
                found.append(((index, "pressure"), district.pressure))
        return found

    def processors(self) -> list[Processor]:
        if not self.sections:
            return []
        from water_edge.models.flow_leak.processor import FlowLeakProcessor

        return [FlowLeakProcessor(self.sections, self.state_dir)]
