"""Sparkplug B payloads of the Edge Node: births, deaths, data, built as protobuf `Payload`s.

`seq` and the payload timestamp are set by the session when a message is published (wire order);
everything else is here. Quality goes into each metric's `Quality` property (Int32), the way
Ignition's MQTT modules read it: 192 good, 0x40000000 uncertain, 0x80000000 bad (the level bits of
OPC UA status codes); a metric that is not good also carries a `Reason` (String). A tag's unit is
its `engUnit` property (String) in births. A birth metric with no value read yet is null and bad
(`Reason` "not read yet"), as Ignition shows a tag waiting for its initial data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

import orjson

from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.catalog import (
    AGENT_VERSION,
    BDSEQ,
    EVENT,
    NEXT_SERVER,
    REBIRTH,
    Catalog,
    Device,
    Metric,
)
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.core.reading import BAD, GOOD, Event, Reading

QUALITY: Final = "Quality"
REASON: Final = "Reason"
ENG_UNIT: Final = "engUnit"
QUALITY_CODES: Final[dict[str, int]] = {"good": 192, "uncertain": 0x40000000, "bad": 0x80000000}
NOT_READ: Final = "not read yet"


def ms(ts_ns: int) -> int:
    return ts_ns // 1_000_000


def _quality(metric: Payload.Metric, reading: Reading) -> None:
    _quality_of(metric, reading.quality, reading.reason)


def _quality_of(metric: Payload.Metric, quality: str, reason: str | None) -> None:
    props = metric.properties
    props.keys.append(QUALITY)
    props.values.add(type=DataType.Int32, int_value=QUALITY_CODES[quality])
    if quality != GOOD:
        props.keys.append(REASON)
        props.values.add(type=DataType.String, string_value=reason or "")


def _value(out: Payload.Metric, metric: Metric, value: object) -> None:
    if datatypes.fits(metric.datatype, value):  # type: ignore[arg-type]
        datatypes.put(out, metric.datatype, value)  # type: ignore[arg-type]
    else:
        out.is_null = True  # the catalog asks for a rebirth before this can happen; never a wrong type


def nbirth(catalog: Catalog, bdseq: int, now_ms: int, version: str) -> Payload:
    """NBIRTH: bdSeq, the node controls (false), the agent's version, the event metric (null)."""
    payload = Payload()
    payload.metrics.add(name=BDSEQ, datatype=DataType.Int64, long_value=bdseq, timestamp=now_ms)
    for metric in catalog.node.values():
        out = payload.metrics.add(name=metric.name, alias=metric.alias, datatype=metric.datatype)
        out.timestamp = now_ms
        if metric.name in (REBIRTH, NEXT_SERVER):
            out.boolean_value = False
        elif metric.name == AGENT_VERSION:
            out.string_value = version
        else:
            out.is_null = True
    return payload


def ndeath(bdseq: int, now_ms: int) -> Payload:
    """NDEATH (and the Will): the bdSeq of the connection it ends, nothing else, no seq."""
    payload = Payload(timestamp=now_ms)
    payload.metrics.add(name=BDSEQ, datatype=DataType.Int64, long_value=bdseq)
    return payload


def dbirth(device: Device, values: Mapping[str, Reading], now_ms: int) -> Payload:
    """DBIRTH: every metric of the device with name, alias, datatype, timestamp and its current
    value (the last reported reading) or `is_null` and bad quality when none is known yet."""
    payload = Payload()
    for metric in device.metrics.values():
        out = payload.metrics.add(name=metric.name, alias=metric.alias, datatype=metric.datatype)
        reading = values.get(metric.name)
        if reading is None:
            out.timestamp = now_ms
            out.is_null = True
            _quality_of(out, BAD, NOT_READ)
        else:
            out.timestamp = ms(reading.ts_ns)
            _value(out, metric, reading.value)
            _quality(out, reading)
        if metric.unit:
            out.properties.keys.append(ENG_UNIT)
            out.properties.values.add(type=DataType.String, string_value=metric.unit)
    return payload


def ddeath() -> Payload:
    return Payload()


def data(items: Iterable[tuple[Metric, Reading, bool]], *, historical: bool) -> Payload:
    """DDATA: (metric, reading, with_quality) in time order, by alias only, no datatype."""
    payload = Payload()
    add = payload.metrics.add
    for metric, reading, with_quality in sorted(items, key=lambda item: item[1].ts_ns):
        out = add(alias=metric.alias, timestamp=reading.ts_ns // 1_000_000)
        # The catalog checked that the value fits the born datatype (a rebirth came first if not).
        datatypes.put(out, metric.datatype, reading.value)
        if historical:
            out.is_historical = True
        if with_quality:
            _quality(out, reading)
    return payload


def event_json(event: Event) -> str:
    doc = {
        "kind": event.kind,
        "source": event.source,
        "severity": event.severity,
        "score": event.score,
        "detail": event.detail,
    }
    return orjson.dumps(doc, default=repr).decode()


def events(metric: Metric, items: Iterable[Event], *, historical: bool) -> Payload:
    """NDATA of the `Events/Event` metric: one value per event (a JSON document), in time order."""
    payload = Payload()
    for event in sorted(items, key=lambda e: e.ts_ns):
        out = payload.metrics.add(
            alias=metric.alias, timestamp=ms(event.ts_ns), string_value=event_json(event)
        )
        if historical:
            out.is_historical = True
    return payload


__all__ = ["EVENT", "NOT_READ", "QUALITY_CODES", "data", "dbirth", "ddeath", "events", "nbirth", "ndeath"]
