"""The metrics of the Edge Node and its devices: names, aliases, datatypes, units.

Aliases are unique across the node and stable for the life of the process: node metrics take the
first ones, then each device's metrics in config order. A metric first seen in a reading (a tag no
config declared, a device the config does not list) gets the next alias and asks for a birth of its
device, as does a value whose datatype the birth did not announce (`datatypes.py`), or the first
value of a metric born with the placeholder datatype; births always carry the catalog as it is, so
every alias a DATA message uses was born first. A live reading whose unit differs from the metric's (an OPC UA
driver learns EngineeringUnits only once connected) changes the unit, and its device's next DBIRTH
says it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.proto import DataType
from water_edge.core.reading import Reading

BDSEQ: Final = "bdSeq"
REBIRTH: Final = "Node Control/Rebirth"
NEXT_SERVER: Final = "Node Control/Next Server"
AGENT_VERSION: Final = "Node Info/Agent Version"
EVENT: Final = "Events/Event"


class Change(IntEnum):
    """What a reading changed in the catalog, in order of consequence."""

    NONE = 0
    UNIT = 1  # a metric's unit: its device's next DBIRTH must carry it (the value itself fits)
    BIRTH = 2  # a new metric or datatype: a birth must come before the value's data


@dataclass(slots=True)
class Metric:
    """One metric of the node or of a device."""

    name: str
    alias: int
    datatype: int
    unit: str = ""
    typed: bool = False  # the datatype is known (declared or seen), not the Double placeholder


@dataclass(slots=True)
class Device:
    name: str
    metrics: dict[str, Metric] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What the config knows of one device before it is read: its tags, units and declared types."""

    name: str
    tags: Sequence[tuple[str, str]]  # (tag, unit)
    types: Mapping[str, int] = field(default_factory=dict)


class Catalog:
    """Node metrics, devices and their metrics, with node-unique aliases."""

    def __init__(self, devices: Iterable[DeviceSpec] = ()) -> None:
        self._next_alias = 1
        self.node: dict[str, Metric] = {}
        for name, datatype in (
            (REBIRTH, DataType.Boolean),
            (NEXT_SERVER, DataType.Boolean),
            (AGENT_VERSION, DataType.String),
            (EVENT, DataType.String),
        ):
            self.node[name] = Metric(name, self._alias(), datatype, typed=True)
        self.devices: dict[str, Device] = {}
        self.by_alias: dict[int, tuple[str | None, Metric]] = {m.alias: (None, m) for m in self.node.values()}
        for spec in devices:
            device = self._device(spec.name)
            for tag, unit in spec.tags:
                declared = spec.types.get(tag)
                self._add(device, tag, declared or datatypes.DEFAULT, unit, typed=declared is not None)

    def _alias(self) -> int:
        alias, self._next_alias = self._next_alias, self._next_alias + 1
        return alias

    def _device(self, name: str) -> Device:
        device = self.devices.get(name)
        if device is None:
            device = self.devices[name] = Device(name)
        return device

    def _add(self, device: Device, tag: str, datatype: int, unit: str, *, typed: bool) -> Metric:
        metric = device.metrics[tag] = Metric(tag, self._alias(), datatype, unit, typed)
        self.by_alias[metric.alias] = (device.name, metric)
        return metric

    def resolve(self, reading: Reading, *, live: bool = True) -> tuple[Metric, Change]:
        """The metric of a reading, and what the reading changed in the catalog.

        Only a `live` reading's unit is taken: a backlog row may carry a unit since replaced.
        """
        device = self.devices.get(reading.source)
        if device is None:
            device = self._device(reading.source)
        metric = device.metrics.get(reading.tag)
        seen = datatypes.of_value(reading.value)
        if metric is None:
            typed = seen is not None
            return self._add(
                device, reading.tag, seen or datatypes.DEFAULT, reading.unit, typed=typed
            ), Change.BIRTH
        change = Change.NONE
        if seen is not None and not metric.typed:
            # The placeholder of a metric never read: its first value decides, even one it could hold.
            metric.typed = True
            if seen != metric.datatype:
                metric.datatype = seen
                change = Change.BIRTH
        elif not datatypes.fits(metric.datatype, reading.value):
            metric.datatype = seen or datatypes.DEFAULT
            change = Change.BIRTH
        if live and reading.unit and reading.unit != metric.unit:
            metric.unit = reading.unit
            change = max(change, Change.UNIT)
        return metric, change

    def settle(self, reading: Reading) -> Metric:
        """At a birth: the metric of a current value, typed by it if nothing typed it yet, with its unit."""
        return self.resolve(reading)[0]

    def metric(self, device: str | None, name: str) -> Metric | None:
        """A metric by name: of the node when `device` is None."""
        if device is None:
            return self.node.get(name)
        found = self.devices.get(device)
        return None if found is None else found.metrics.get(name)
