"""Odd device values on their way to the centre: what a firmware-sim device serves goes through the
real driver, the pipeline, the SQLite outbox and the uplink to Mosquitto, and a subscriber checks
that every message is strict JSON matching docs/payload.schema.json, that the odd value became a
reading that says what is wrong, and that the readings after it still flow."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.opcua_sim import opcua_station
from tests.support.testing import eventually
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.supervisor import DeviceRunner
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.reading import Event
from water_edge.drivers.opcua.config import OpcUaConfig
from water_edge.drivers.opcua.driver import OpcUaDriver
from water_edge.sim.opcua_server import OpcUaComponent

SCHEMA = json.loads((Path(__file__).parents[1] / "docs" / "payload.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
BASE = f"water/{SITE}/{GATEWAY}"

pytestmark = pytest.mark.slow


def _no_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (RFC 8259)")


def strict_docs(messages: list[Received]) -> list[dict[str, Any]]:
    """The data messages, parsed as RFC 8259 JSON (no NaN/Infinity) and validated by the schema."""
    docs = []
    for m in messages:
        if m.topic.endswith("/status"):
            continue
        doc = json.loads(m.payload, parse_constant=_no_constant)
        VALIDATOR.validate(doc)
        docs.append(doc)
    return docs


def readings_of(docs: list[dict[str, Any]], tag: str) -> list[dict[str, Any]]:
    return [r for d in docs for r in d.get("readings", []) if r["tag"] == tag]


@pytest.fixture
async def opcua_sim(tmp_path: Path) -> AsyncIterator[OpcUaComponent]:
    async with opcua_station(tmp_path / "sim") as running:
        yield running.component


async def test_an_opcua_string_that_is_not_utf8_is_sent_repaired_and_does_not_hold_up_later_readings(
    opcua_sim: OpcUaComponent, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    # asyncua decodes a String's invalid UTF-8 bytes as lone surrogates (surrogateescape): the
    # server sends the bytes 0xFF 0xFE here.
    opcua_sim.serve("station.name", "PS-\udcff\udcfe")
    drv = OpcUaDriver.from_config(OpcUaConfig.model_validate({
        "name": "ua", "kind": "opcua", "endpoint": opcua_sim.url, "mode": "poll", "poll_interval_ms": 200,
        "tags": [{"name": "name", "node": "ns=2;s=station.name"},
                 {"name": "ticks", "node": "ns=2;s=station.ticks"}],
    }))  # fmt: skip
    events: list[Event] = []

    async def on_event(event: Event) -> None:
        events.append(event)

    with Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub:
        run = await start_uplink(mqtt_config(mosquitto), outbox)
        pipeline = Pipeline(outbox, run.uplink.notify, flush_interval_s=0.1)
        runner = DeviceRunner(drv.config, drv, pipeline.submit, on_event)
        tasks = [asyncio.create_task(pipeline.run()), asyncio.create_task(runner.run())]
        try:
            await sub.wait_until_async(lambda ms: len(readings_of(strict_docs(ms), "name")) >= 3)
            opcua_sim.serve("station.name", None)
            await sub.wait_until_async(
                lambda ms: any(r["value"] == "PS-NORTH" for r in readings_of(strict_docs(ms), "name"))
            )
            await eventually(lambda: pipeline.pending == 0, 5, what="nothing left in memory")
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await drv.aclose()
    docs = strict_docs(sub.snapshot())
    names = readings_of(docs, "name")
    odd = [r for r in names if r["value"] != "PS-NORTH"]
    assert odd
    # The driver keeps the text it could read and says what it replaced (before, the outbox could
    # not store it at all: the whole flush failed, for every device; the pipeline's safety net for
    # such values is tests/test_pipeline.py's).
    assert all(r["quality"] == "uncertain" and r["value"] == "PS-\ufffd\ufffd" for r in odd), odd
    assert all("not UTF-8" in r["reason"] for r in odd), odd
    ticks = [r["value"] for r in readings_of(docs, "ticks")]
    assert len(ticks) >= 3
    assert ticks == sorted(ticks)
    health = pipeline.health()
    assert health.unstorable == 0
    assert health.dropped_readings == 0

    async def outbox_empty() -> bool:
        return (await outbox.stats()).rows == 0

    await eventually(outbox_empty, 5, what="every row acknowledged: none stuck")
