"""The `pump` processor kind (`edge_agent.processors` entry point): the `[[models.pump]]` tables
become one `PumpProcessor` over all pumps, and the factory carries out `pump_calibration` commands.

Imports nothing heavy at module level: `check-config` loads this to validate the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from water_edge.core.processor import (
    CalibrationFailedError,
    ConfigProblem,
    Processor,
    ProcessorContext,
    names_used_twice,
)
from water_edge.models.pump.config import PumpModelConfig


class PumpFactory:
    config_model: ClassVar[type[BaseModel]] = PumpModelConfig
    # Calibratable: a new calibration version for one pump from its own feature history.
    calibration_command = "pump_calibration"
    calibration_target = "pump"

    def __init__(self, pumps: Sequence[PumpModelConfig], context: ProcessorContext) -> None:
        self.pumps = list(pumps)
        self.context = context
        self.state_dir = Path(context.state_dir)

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context)

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """A pump's name is its state directory and its events' source: one name, one pump."""
        return names_used_twice([p.name for p in sections], "pump")

    @classmethod
    def tag_references(cls, sections: Sequence[Any]) -> list[tuple[tuple[int | str, ...], str]]:
        return [
            ((index, "signals", role), tag)
            for index, pump in enumerate(sections)
            for role, tag in pump.signals.items()
        ]

    def processors(self) -> list[Processor]:
        if not self.pumps:
            return []
        from water_edge.models.pump.processor import PumpProcessor

        streams = self.context.streams_for(tag for _, tag in self.tag_references(self.pumps))
        return [PumpProcessor(self.pumps, self.state_dir, streams=streams)]

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Args `from` / `to`: ISO 8601 or epoch seconds; without `from`: the last `auto_hours` of history."""
        from water_edge.models.pump.calibration import calibrate_from_history

        cfg = next((p for p in self.pumps if p.name == target_name), None)
        if cfg is None:
            configured = ", ".join(p.name for p in self.pumps)
            raise CalibrationFailedError(f"no pump {target_name!r} (configured: {configured})")
        return await asyncio.to_thread(calibrate_from_history, cfg, self.state_dir, args)
