"""Garbage on the wire from a Modbus TCP PLC (a scenario's `garbage` fault) never crashes the
driver: the spoiled answers become bad readings or a reconnect, and reads recover after it."""

from __future__ import annotations

from pathlib import Path

from tests.support.plant import running_plant
from tests.support.testing import eventually
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers.modbus.config import ModbusTcpConfig
from water_edge.drivers.modbus.tcp import ModbusTcpDriver


async def test_garbage_answers_become_bad_readings_then_reads_recover(tmp_path: Path) -> None:
    scenario = tmp_path / "noisy.toml"
    scenario.write_text('[[events]]\nat = "0s"\ncomm = "garbage"\nshare = 1.0\nduration = "3s"\n')
    with running_plant(seed=2, scenario=scenario) as plant:
        config = ModbusTcpConfig.model_validate({
            "name": "plc", "kind": "modbus_tcp", "host": plant.host, "port": plant.port,
            "timeout_ms": 300, "retries": 0,
            "tags": [{"name": "demand", "address": 20, "type": "float32"},
                     {"name": "map_version", "address": 8, "type": "uint16"}],
        })  # fmt: skip
        driver = ModbusTcpDriver(config)
        spoiled: list[str] = []
        await driver.open()
        try:
            try:
                readings = await driver.read()
                spoiled += [r.reason or "" for r in readings if r.quality == "bad"]
            except DriverIOError as exc:  # the driver gave up on the connection: also fine
                spoiled.append(str(exc))

            async def recovered() -> dict[str, Reading] | None:
                # A fresh connection each time, as the supervisor reopens a spoiled one.
                await driver.aclose()
                try:
                    await driver.open()
                    readings = {r.tag: r for r in await driver.read()}
                except DriverIOError:
                    return None
                return readings if all(r.quality == "good" for r in readings.values()) else None

            # The garbage window lasts 3 s of the scenario; after it, reads recover.
            after = await eventually(recovered, 15, every_s=0.2, what="good reads after the garbage window")
        finally:
            await driver.aclose()
    assert spoiled, "the garbage window spoiled the first poll"
    assert all(r.quality == "good" for r in after.values())
    assert after["map_version"].value == 2
    assert driver.health().errors >= 1
