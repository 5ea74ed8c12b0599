"""The `flow_leak` processor kind (`edge_agent.processors` entry point): all `[[models.flow_leak]]`
districts in one `FlowLeakProcessor`. Imports nothing heavy: `check-config` loads this."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from water_edge.core.local_zone import unset_zone_warning
from water_edge.core.processor import ConfigProblem, Processor, ProcessorContext, names_used_twice
from water_edge.models.flow_leak.config import BurstSection, FlowLeakSection
from water_edge.models.flow_leak.holiday_dates import HolidayCalendarError, public_holidays


class FlowLeakFactory:
    config_model: ClassVar[type[BaseModel]] = FlowLeakSection

    def __init__(self, sections: Sequence[FlowLeakSection], context: ProcessorContext) -> None:
        self.sections = list(sections)
        self.context = context
        self.state_dir = Path(context.state_dir)

    @classmethod
    def from_config(cls, sections: Sequence[Any], context: ProcessorContext) -> Self:
        return cls(sections, context)

    @classmethod
    def check_sections(cls, sections: Sequence[Any], devices: Mapping[str, str]) -> list[ConfigProblem]:
        """A district's name is its state directory and its events' source: one name, one district.
        A holiday calendar must be one the `holidays` package knows. A tag is written one way."""
        problems = names_used_twice([s.name for s in sections], "district")
        problems += cls._written_two_ways(sections)
        for index, district in enumerate(sections):
            burst = district.burst
            if burst.holidays_country is None:
                continue
            try:
                public_holidays(burst.holidays_country, burst.holidays_subdivision)
            except HolidayCalendarError as exc:
                problems.append(ConfigProblem((index, "burst", exc.key), str(exc)))
        return problems

    @classmethod
    def section_warnings(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """A district without `timezone` on a machine that keeps UTC: nights and the day profile in UTC.
        Burst detection whose public holidays are a list that ends (or none): after it, a holiday
        is judged as a weekday, and its Sunday-like morning can look like a burst."""
        unset = [index for index, district in enumerate(sections) if district.timezone is None]
        why = unset_zone_warning("its nights and the day profile of burst detection") if unset else None
        found = [ConfigProblem((index, "timezone"), why) for index in unset] if why else []
        for index, district in enumerate(sections):
            ends = _holiday_list_ends(district.burst)
            if ends is not None:
                found.append(ConfigProblem((index, "burst", "holidays"), ends))
        return found

    @classmethod
    def tag_references(cls, sections: Sequence[Any]) -> list[tuple[tuple[int | str, ...], str]]:
        found: list[tuple[tuple[int | str, ...], str]] = []
        for index, district in enumerate(sections):
            for key in ("inflow", "outflow"):
                found += [((index, key, i), tag) for i, tag in enumerate(getattr(district, key))]
            if district.pressure is not None:
                found.append(((index, "pressure"), district.pressure))
        return found

    @classmethod
    def _written_two_ways(cls, sections: Sequence[Any]) -> list[ConfigProblem]:
        """A tag named bare (`x`) where it is also named with its device (`plc/x`): the processor
        gives a reading of plc/x only to where `plc/x` is written, so the bare one never gets a
        value (and within one district the two would be one flow counted twice, or netted out)."""
        references = cls.tag_references(sections)
        qualified: dict[str, tuple[str, str]] = {}  # tag -> (device/tag, where it is first written)
        for where, reference in references:
            _device, slash, tag = reference.partition("/")
            if slash:
                seen = f"{where[1]} of district {sections[int(where[0])].name!r}"
                qualified.setdefault(tag, (reference, seen))
        problems = []
        for where, reference in references:
            if reference in qualified:
                other, seen = qualified[reference]
                problems.append(
                    ConfigProblem(
                        where,
                        f"{reference!r} here and {other!r} in {seen} name one tag two ways: a reading of "
                        f"{other} goes only where it is written with its device, never to {reference!r}; "
                        f"write {other!r} here too (or '<device>/{reference}' for another device's)",
                    )
                )
        return problems

    def processors(self) -> list[Processor]:
        if not self.sections:
            return []
        from water_edge.models.flow_leak.processor import FlowLeakProcessor

        streams = self.context.streams_for(tag for _, tag in self.tag_references(self.sections))
        return [FlowLeakProcessor(self.sections, self.state_dir, streams=streams)]


HOLIDAY_LIST_NOTICE_DAYS = 90


def _holiday_list_ends(burst: BurstSection) -> str | None:
    """Why an enabled burst detector's holidays will soon be judged as weekdays, if they will."""
    if not burst.enabled or burst.holidays_country is not None:
        return None
    advice = 'set holidays_country (e.g. "IT") for a calendar that does not run out'
    if not burst.holidays:
        return f"no public holidays: they are judged as weekdays; {advice}"
    last = max(burst.holidays)
    if last - date.today() > timedelta(days=HOLIDAY_LIST_NOTICE_DAYS):
        return None
    return f"the list ends {last.isoformat()}: after it public holidays are judged as weekdays; {advice}"
