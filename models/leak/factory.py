"""The `leak` processor kind (`edge_agent.processors` entry point): one `AudioLeakProcessor` per
`[[models.leak]]` table, on the named audio device's analysis windows; the factory carries out
`leak_calibration` commands (a new baseline for one hydrophone from its stored nights).

Imports nothing heavy at module level: `check-config` loads this to validate the tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol, Self, runtime_checkable

import structlog
from pydantic import BaseModel

from water_edge.core.errors import ConfigError
from water_edge.core.local_zone import unset_zone_warning
from water_edge.core.processor import ConfigProblem, Processor, ProcessorContext, WindowSource
from water_edge.models.leak.config import LeakModelSection

log = structlog.get_logger(__name__)

AUDIO_KIND = "audio"  # the driver kind whose devices give analysis windows
MAX_AUDIO_CHANNELS: Final = 32  # what an audio device's `channels` allows


@runtime_checkable
class AudioDeviceLike(Protocol):
    """An audio device's validated config (`drivers.audio.config.AudioConfig`), by shape: this
    layer imports no driver."""

    @property
    def expected_channels(self) -> int | None: ...

    def names_for(self, channels: int) -> list[str]: ...


def channel_problems(
    device_name: str, device: object, channels: Sequence[str] | None, where: tuple[int | str, ...]
) -> list[ConfigProblem]:
    """Each channel name in `channels` that the audio `device` cannot have: one of its
    `channel_names`, or of the default names by position (A, B, ...) when the config does not name
    them (all of those possible when it does not say how many channels either)."""
    if channels is None or not isinstance(device, AudioDeviceLike):
        return []
    count = device.expected_channels
    names = device.names_for(count or MAX_AUDIO_CHANNELS)
    has = ", ".join(names) if count is not None else f"{', '.join(names[:3])}, ... by position"
    return [
        ConfigProblem((*where, i), f"device {device_name!r} has no channel {name!r} (its channels: {has})")
        for i, name in enumerate(channels)
        if name not in names
    ]


class LeakFactory:
    config_model: ClassVar[type[BaseModel]] = LeakModelSection
    # Calibratable: a new baseline version for one hydrophone (`<device>.<channel>`).
    calibration_command = "leak_calibration"
    calibration_target = "sensor"

    def __init__(
        self, sections: Sequence[LeakModelSection], drivers: Mapping[str, object], state_dir: Path
    ) -> None:
        self.sections = list(sections)
        self.drivers = drivers
        self.state_dir = Path(state_dir)

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context.drivers, context.state_dir)

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        """Args `from` / `to`: ISO 8601 or epoch seconds; default: every night the sensor stored.
        A channel the device has no hydrophone on is refused, naming the sensors there are."""
        from water_edge.core.processor import CalibrationFailedError
        from water_edge.models.leak.calibration import calibrate_sensor, no_such_channel, section_for, summary

        section = section_for(self.sections, target_name)
        if (why := no_such_channel(target_name, self._channels(section), self.state_dir)) is not None:
            raise CalibrationFailedError(why)
        baseline = await asyncio.to_thread(calibrate_sensor, self.sections, self.state_dir, target_name, args)
        return summary(baseline, section.baseline_nights)

    def _channels(self, section: LeakModelSection) -> list[str] | None:
        """The channels the table's hydrophones are on: its `channels`, else its audio device's (as
        the driver names them); None when the config does not say how many it has."""
        if section.channels is not None:
            return list(section.channels)
        device = getattr(self.drivers.get(section.device), "config", None)
        if not isinstance(device, AudioDeviceLike) or (count := device.expected_channels) is None:
            return None
        return device.names_for(count)

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """Each table names an audio device: the only kind that gives analysis windows; one table
        per device, whose processor, model slot and sensors' state (`<device>.<channel>`) it names."""
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
        first: dict[str, int] = {}
        for index, section in enumerate(sections):
            earlier = first.setdefault(section.device, index)
            if earlier != index:
                problems.append(
                    ConfigProblem(
                        (index, "device"),
                        f"device {section.device!r} already has a table (models.leak[{earlier}]): a "
                        "device's leak processor, model slot and sensor state go by its name, so two "
                        "tables would overwrite each other's and raise events twice; list its channels "
                        "in one table",
                    )
                )
        return problems

    @classmethod
    def check_devices(cls, sections: Sequence[Any], devices: Mapping[str, object]) -> list[ConfigProblem]:
        """Each channel named against the audio device's (`devices`: the validated device configs by
        name): a channel it has not is never listened to."""
        return [
            problem
            for index, section in enumerate(sections)
            for problem in channel_problems(
                section.device, devices.get(section.device), section.channels, (index, "channels")
            )
        ]

    @classmethod
    def section_warnings(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """A deprecated key (`alpha`, `on_windows`, `off_windows`): accepted, ignored, named; no
        `timezone` on a machine that keeps UTC (nights in UTC)."""
        from water_edge.models.leak.config import DEPRECATED

        found = [
            ConfigProblem((index, key), f"deprecated: {DEPRECATED[key]}")
            for index, section in enumerate(sections)
            for key in section.deprecated_keys()
        ]
        unset = [index for index, section in enumerate(sections) if section.timezone is None]
        if unset and (why := unset_zone_warning("its nights")):
            found += [ConfigProblem((index, "timezone"), why) for index in unset]
        return found

    def processors(self) -> list[Processor]:
        from water_edge.models.leak.processor import AudioLeakProcessor

        processors: list[AudioLeakProcessor] = []
        for index, section in enumerate(self.sections):
            driver = self.drivers.get(section.device)
            if driver is None:  # a disabled audio device: nothing to listen to
                log.warning("leak.device_disabled", device=section.device)
                continue
            if not isinstance(driver, WindowSource):
                where = f"models.leak[{index}].device"
                raise ConfigError([f"{where}: {section.device!r} is not an audio device (no windows)"])
            processors.append(AudioLeakProcessor(section, driver, self.state_dir))
        if processors:  # one of them closes the lost sensors of devices no table names any more
            processors[0].leak_devices = frozenset(section.device for section in self.sections)
        return list(processors)
