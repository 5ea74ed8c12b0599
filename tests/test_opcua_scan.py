"""`edge-agent scan opcua`: commissioning an OPC UA device, against firmware-sim's OPC UA server
(a real asyncua server on a real socket, in this process while the command runs as a user runs
it). What it prints must be config the agent takes, naming the same variables."""

from __future__ import annotations

import json
import tomllib
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.cli import edge_agent_process
from tests.support.opcua_sim import Sim, opcua_station
from tests.support.testing import free_port
from water_edge.drivers.opcua.config import OpcUaConfig
from water_edge.drivers.opcua.driver import OpcUaDriver
from water_edge.sim.opcua_server import NAMESPACE_URI, browse_path
from water_edge.sim.registers import POINTS

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sim]:
    async with opcua_station(tmp_path_factory.mktemp("opcua") / "sim") as running:
        yield running


async def scan(*args: str) -> tuple[int, str, str]:
    run = await edge_agent_process("scan", "opcua", *args)
    return run.returncode, run.stdout, run.stderr


async def test_every_variable_is_listed_with_its_node_and_unit(sim: Sim) -> None:
    code, out, err = await scan("--endpoint", sim.url, "--json")
    assert code == 0, err
    found = {d["path"]: d for d in map(json.loads, out.splitlines())}
    assert set(found) == {browse_path(p.name) for p in POINTS}, (
        "every point, and nothing of the Server object"
    )
    for p in POINTS:
        d = found[browse_path(p.name)]
        assert d["node"] == f"nsu={NAMESPACE_URI};s={p.name}"
        assert d["quality"] == "good"
    flow = found[browse_path("pump1.flow")]
    assert (flow["type"], flow["unit"]) == ("Float", "m3/h")


async def test_the_tags_it_prints_are_config_the_driver_reads(sim: Sim) -> None:
    code, out, err = await scan("--endpoint", sim.url, "--path", "PumpStation/Pump1")
    assert code == 0, err
    tags = tomllib.loads(out[out.index("[[devices.tags]]") :])["devices"]["tags"]
    pump1 = [p for p in POINTS if p.name.startswith("pump1.")]
    assert len(tags) == len(pump1)
    assert {t["name"] for t in tags} >= {"flow", "discharge_pressure", "motor_current_x10"}
    config = OpcUaConfig.model_validate({"name": "ua", "kind": "opcua", "endpoint": sim.url, "tags": tags})
    driver = OpcUaDriver(config)
    await driver.open()
    try:
        readings = {r.tag: r for r in await driver.read()}
    finally:
        await driver.aclose()
    assert {tag: r.reason for tag, r in readings.items() if r.quality != "good"} == {}
    assert readings["flow"].unit == "m3/h"


async def test_a_limit_says_it_stopped_and_a_missing_path_or_server_is_named(sim: Sim) -> None:
    code, out, err = await scan("--endpoint", sim.url, "--limit", "10", "--json")
    assert (code, len(out.splitlines())) == (0, 10)
    assert "stopped at --limit 10" in err
    code, _, err = await scan("--endpoint", sim.url, "--path", "PumpStation/Pump9")
    assert code == 2
    assert "browse path not found: PumpStation/Pump9 (no 'Pump9')" in err
    nobody = f"opc.tcp://127.0.0.1:{free_port()}"
    code, _, err = await scan("--endpoint", nobody)
    assert code == 2
    assert nobody in err
    assert "Traceback" not in err
