"""The `meter` processor kind (`edge_agent.processors` entry point): the `[[models.meter]]` tables
become one `MeterProcessor`. Imports nothing heavy: `check-config` loads it to validate the tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol, Self, runtime_checkable

from pydantic import BaseModel

from water_edge.core.local_zone import keeps_utc, system_zone
from water_edge.core.processor import ConfigProblem, Processor, ProcessorContext, names_used_twice
from water_edge.models.meter.config import MeterGroupConfig

METER_DEVICE_KINDS: Final = frozenset({"wmbus", "mbus"})


@runtime_checkable
class MeterBusLike(Protocol):
    """A meter bus's validated config (`mbus`, `wmbus`), by shape: this layer imports no driver."""

    def meter_records(self) -> dict[str, frozenset[str] | None]:
        """The tags after `<meter>.` each meter's records make; None when known only once read."""
        ...


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

    @classmethod
    def check_devices(cls, sections: Sequence[Any], devices: Mapping[str, object]) -> list[ConfigProblem]:
        """A group's meters against its device's (`devices`: the validated device configs by name):
        a meter name the device has not, or a `volume_tag` its meters' records do not make, would
        never be watched, and nothing would say so."""
        problems: list[ConfigProblem] = []
        for index, group in enumerate(sections):
            bus = devices.get(group.device) if group.device is not None else None
            if not isinstance(bus, MeterBusLike):
                continue
            tags = bus.meter_records()
            has = ", ".join(tags) or "none"
            chosen = list(tags) if group.meters == "all" else group.meters
            problems += [
                ConfigProblem(
                    (index, "meters", i), f"device {group.device!r} has no meter {m!r} (its meters: {has})"
                )
                for i, m in enumerate(chosen)
                if m not in tags
            ]
            without = [
                m for m in chosen if (known := tags.get(m)) is not None and group.volume_tag not in known
            ]
            if without:
                makes = ", ".join(f"{without[0]}.{t}" for t in sorted(tags[without[0]] or ()))
                problems.append(
                    ConfigProblem(
                        (index, "volume_tag"),
                        f"meter(s) {', '.join(without)} of device {group.device!r} have no tag "
                        f"<meter>.{group.volume_tag} ({without[0]}'s records make {makes}): name the tag "
                        "of the total-volume register, or select its record in the device's records",
                    )
                )
        return problems

    @classmethod
    def section_warnings(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """A group without `timezone` on a machine whose zone is not UTC: its windows are read in UTC
        (the default), while the leak and flow-leak models' nights follow the machine's zone."""
        unset = [index for index, group in enumerate(sections) if "timezone" not in group.model_fields_set]
        if not unset:
            return []
        tz, source = system_zone()
        if keeps_utc(tz):
            return []
        why = (
            f"not set: the night and expected windows are read in UTC, not in this machine's zone "
            f"({source}); set it to the site's IANA zone (e.g. 'Europe/Rome'), or to 'UTC' if the site "
            "keeps UTC"
        )
        return [ConfigProblem((index, "timezone"), why) for index in unset]

    def processors(self) -> list[Processor]:
        if not self.groups:
            return []
        from water_edge.models.meter.processor import MeterProcessor

        return [MeterProcessor(self.groups, self.state_dir)]
