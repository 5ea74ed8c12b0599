"""`edge-agent scan mbus`: commissioning a wired M-Bus segment, against firmware-sim's meters on a
pseudo-terminal (two of them encrypting under a key the scan does not have)."""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.cli import edge_agent_process
from tests.support.mbus_sim import bus_config, read_once, running_bus
from water_edge.drivers.mbus.config import MbusConfig
from water_edge.sim.mbus_bus import MbusBus
from water_edge.sim.mbus_meter import WaterMeter

KEY = "0123456789ABCDEF0123456789ABCDEF"


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[MbusBus]:
    async with running_bus(tmp_path, keys={"2": KEY, "3": KEY}) as running:
        yield running


async def scan(*args: str) -> tuple[int, str, str]:
    run = await edge_agent_process("scan", "mbus", *args)
    return run.returncode, run.stdout, run.stderr


def secondary(meter: WaterMeter) -> str:
    raw = meter.secondary()  # ID (BCD, LSB first), manufacturer LE, version, medium
    return raw[3::-1].hex().upper() + raw[4:].hex().upper()


async def test_the_scan_finds_every_meter_encrypted_or_not_and_says_what_to_configure(bus: MbusBus) -> None:
    code, out, err = await scan("--port", bus.path, "--baudrate", "9600", "--json")
    assert code == 0, err
    found = {d["secondary"]: d for d in map(json.loads, out.splitlines())}
    assert set(found) == {secondary(m) for m in bus.meters}
    totaliser = bus._ctx.state().totaliser_m3
    for m in bus.meters:
        d = found[secondary(m)]
        assert (d["id"], d["primary"], d["medium"]) == (f"{m.spec.ident:08d}", m.spec.address, "water")
        if m.spec.key is None:
            assert d["encrypted_mode"] is None
            assert d["volume_m3"] == pytest.approx(m.volume_litres(totaliser) / 1000, abs=0.05)
        else:  # found and named without its key; its volume needs the key
            assert (d["encrypted_mode"], d["volume_m3"]) == (5, None)


async def test_the_table_ends_with_config_blocks_the_agent_takes(bus: MbusBus) -> None:
    code, out, err = await scan("--port", bus.path, "--baudrate", "9600")
    assert code == 0, err
    assert f"M-Bus {bus.path} at 9600 Bd: 4 meter(s)" in out
    assert out.count("encrypted (mode 5): needs its key") == 2
    pasted = tomllib.loads(out[out.index("[[devices.meters]]") :])  # as an engineer pastes it
    meters = pasted["devices"]["meters"]
    config = MbusConfig.model_validate({"name": "m", "kind": "mbus", "port": bus.path, "meters": meters})
    assert {m.secondary for m in config.meters} == {secondary(m) for m in bus.meters}
    assert sum(m.key is not None for m in config.meters) == 2


async def test_a_port_where_nothing_answers_says_what_to_try(tmp_path: Path) -> None:
    master, slave = os.openpty()
    try:
        code, _, err = await scan("--port", os.ttyname(slave), "--baudrate", "9600")
    finally:
        os.close(master)
        os.close(slave)
    assert code == 1
    assert "no meter answered at 9600 Bd" in err
    assert "--all-baudrates" in err


async def test_a_port_that_does_not_exist_is_named() -> None:
    code, _, err = await scan("--port", "/dev/ttyNOPE9")
    assert code == 2
    assert "/dev/ttyNOPE9" in err
    assert "Traceback" not in err


async def test_a_segment_of_mixed_speeds_is_scanned_at_each_and_each_meter_gets_its_own(
    tmp_path: Path,
) -> None:
    """Old meters at another speed than the segment's answer only at theirs: a scan at one speed
    missed them."""
    async with running_bus(tmp_path, baudrates={"4": 2400}) as mixed:
        code, out, err = await scan("--port", mixed.path, "--baudrate", "9600")
        assert code == 0, err
        assert "3 meter(s)" in out, "at 9600 Bd alone the 2400 Bd meter is not heard"
        code, out, err = await scan("--port", mixed.path, "--baudrate", "9600", "--all-baudrates")
        odd, every = secondary(mixed.meter(4)), [secondary(m) for m in mixed.meters]
    assert code == 0, err
    meters = tomllib.loads(out[out.index("[[devices.meters]]") :])["devices"]["meters"]
    assert "at mixed speeds: 4 meter(s)" in out
    assert "baudrate = 9600" in out.split("[[devices.meters]]")[0]
    assert {m["secondary"]: m.get("baudrate") for m in meters} == {
        one: (2400 if one == odd else None) for one in every
    }


async def test_a_meter_answering_without_a_data_header_is_named_by_its_primary_address(
    tmp_path: Path,
) -> None:
    """A meter whose answers carry no data header (CI 78h) takes its selection like any other but
    does not say who it is: the secondary scan says so and to try --primary, which finds it by
    its primary address; the config names it by that address and the driver reads it."""
    async with running_bus(tmp_path, headerless=[3]) as bus:
        code, out, err = await scan("--port", bus.path, "--baudrate", "9600")
        assert code == 0, err
        assert "3 meter(s)" in out
        assert "a meter answered its selection without a long header (it names no ID): try --primary" in err
        # The simulated meters sit at primary addresses 1-4; `--primary` alone tries 0-250 (25 s).
        code, out, err = await scan("--port", bus.path, "--baudrate", "9600", "--primary", "0-9")
        assert code == 0, err
        assert "trying primary addresses 0..9 at 9600 Bd" in err
        assert "4 meter(s)" in out
        meters = tomllib.loads(out[out.index("[[devices.meters]]") :])["devices"]["meters"]
        by_address = [m for m in meters if "address" in m]
        assert [m["address"] for m in by_address] == [3]
        assert "secondary" not in by_address[0]
        readings, _ = await read_once(bus_config(bus, [{**by_address[0], "name": "old"}]))
    assert readings["old.volume"].quality == "good", readings["old.volume"].reason


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("1-300", "'1-300': primary addresses are 0..250, the first no greater than the last"),
        ("20-10", "'20-10': primary addresses are 0..250, the first no greater than the last"),
        ("one", "'one' is no address range: give FIRST-LAST, e.g. 1-20"),
    ],
)
async def test_a_primary_range_outside_0_to_250_is_refused_before_the_port_is_opened(
    tmp_path: Path, given: str, said: str
) -> None:
    code, _out, err = await scan("--port", str(tmp_path / "ttyNONE"), "--primary", given)
    assert code == 2
    assert said in err
