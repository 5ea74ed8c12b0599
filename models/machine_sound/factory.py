"""The `machine_sound` processor kind (`edge_agent.processors` entry point): one
`MachineSoundProcessor` per `[[models.machine_sound]]` table, on the named audio device's windows;
the factory carries out `machine_sound_calibration` commands.

Imports nothing heavy at module level: `check-config` loads this to validate the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Self

import structlog
from pydantic import BaseModel

from water_edge.core.errors import ConfigError
from water_edge.core.processor import (
    CalibrationFailedError,
    ConfigProblem,
    Processor,
    ProcessorContext,
    WindowSource,
    names_used_twice,
)
from water_edge.models.leak.factory import channel_problems
from water_edge.models.machine_sound.config import MachineSoundSection

log = structlog.get_logger(__name__)

AUDIO_KIND = "audio"


class MachineSoundFactory:
    config_model: ClassVar[type[BaseModel]] = MachineSoundSection
    # Calibratable: a new calibration version for one machine from its own clip history.
    calibration_command = "machine_sound_calibration"
    calibration_target = "machine"

    def __init__(self, sections: Sequence[MachineSoundSection], context: ProcessorContext) -> None:
        self.sections = list(sections)
        self.context = context
        self.state_dir = Path(context.state_dir)
        self.drivers = context.drivers

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context)

    @classmethod
    def tag_references(cls, sections: Sequence[Any]) -> list[tuple[tuple[int | str, ...], str]]:
        """The run signals named, so that the config loader checks each is read by a device."""
        return [((i, "running_tag"), s.running_tag) for i, s in enumerate(sections) if s.running_tag]

    def _run_signal_streams(self, section: MachineSoundSection) -> frozenset[str]:
        """The streams the machine's run signal can come in (none without one)."""
        if section.running_tag is None:
            return frozenset()
        return self.context.streams_for([section.running_tag])

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """Each table names an audio device; a machine's name is its state directory: used once."""
        audio = ", ".join(n for n, k in devices.items() if k == AUDIO_KIND) or "none"
        problems = [
            ConfigProblem(
                (index, "device"),
                f'expected the name of a kind = "{AUDIO_KIND}" device (got {section.device!r}; '
                f"audio devices: {audio})",
            )
            for index, section in enumerate(sections)
            if devices.get(section.device) != AUDIO_KIND
        ]
        return problems + names_used_twice([s.name for s in sections], "machine")

    @classmethod
    def check_devices(cls, sections: Sequence[Any], devices: Mapping[str, object]) -> list[ConfigProblem]:
        """Each channel named against the audio device's (`devices`: the validated device configs by
        name): with one it has not, the machine would never learn."""
        return [
            problem
            for index, section in enumerate(sections)
            for problem in channel_problems(
                section.device, devices.get(section.device), section.channels, (index, "channels")
            )
        ]

    def processors(self) -> list[Processor]:
        from water_edge.models.machine_sound.processor import MachineSoundProcessor

        out: list[MachineSoundProcessor] = []
        for index, section in enumerate(self.sections):
            driver = self.drivers.get(section.device)
            if driver is None:  # a disabled audio device: nothing to listen to
                log.warning("machine_sound.device_disabled", machine=section.name, device=section.device)
                continue
            if not isinstance(driver, WindowSource):
                where = f"models.machine_sound[{index}].device"
                raise ConfigError([f"{where}: {section.device!r} is not an audio device (no windows)"])
            out.append(
                MachineSoundProcessor(
                    section, driver, self.state_dir, run_signal_streams=self._run_signal_streams(section)
                )
            )
        if out:  # one of them closes the lost microphones of machines no table names any more
            out[0].machines = frozenset(section.name for section in self.sections)
        return list(out)

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Args `from` / `to`: ISO 8601 or epoch seconds; default: all of the machine's history."""
        from water_edge.models.machine_sound.calibration import calibrate_from_history

        section = next((s for s in self.sections if s.name == target_name), None)
        if section is None:
            configured = ", ".join(s.name for s in self.sections) or "none"
            raise CalibrationFailedError(f"no machine {target_name!r} (configured: {configured})")
        return await asyncio.to_thread(calibrate_from_history, section, self.state_dir, args)
