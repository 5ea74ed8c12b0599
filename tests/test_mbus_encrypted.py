"""Wired M-Bus meters that encrypt their data (OMS security mode 5), read with their keys.

firmware-sim's meters on a pseudo-terminal encrypt with their own AES code (`fwsim.mbus_meter`,
`fwsim.wmbus_encode`), so the driver's decryption is checked against an independent encoder.
Before, a key could only be given to `edge-agent decode mbus --key`: a polled encrypted meter read
"undecodable telegram" for good, and a secondary scan took it for a collision.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.mbus_sim import bus_config, read_once, running_bus
from water_edge.drivers.mbus.link import MbusMaster
from water_edge.sim.mbus_bus import MbusBus

KEY = "0123456789ABCDEF0123456789ABCDEF"
OTHER_KEY = "FEDCBA9876543210FEDCBA9876543210"


@pytest.fixture
async def bus(tmp_path: Path) -> AsyncIterator[MbusBus]:
    """Four meters at 9600 Bd; meters 2 and 3 (3 answers in two telegrams) encrypt under KEY."""
    async with running_bus(tmp_path, keys={"2": KEY, "3": KEY}) as running:
        yield running


async def test_an_encrypted_meter_is_read_with_its_key_like_a_plain_one(bus: MbusBus) -> None:
    m3 = bus.meter(3)
    got, driver = await read_once(bus_config(bus, [
        {"name": "plain", "address": 1},
        {"name": "flat2", "address": 2, "key": KEY},
        {"name": "flat3", "secondary": f"{m3.spec.ident:08d}", "key": KEY},
    ]))  # fmt: skip
    totaliser = bus._ctx.state().totaliser_m3
    assert {tag: r.reason for tag, r in got.items() if r.quality != "good"} == {}
    assert got["flat2.volume"].value == pytest.approx(bus.meter(2).volume_litres(totaliser) / 1000, abs=0.01)
    for storage in (2, 3, 4, 5):  # the second telegram of meter 3, decrypted too (FCB toggled)
        assert got[f"flat3.volume.storage{storage}"].value == pytest.approx(m3.monthly_litres(storage) / 1000)
    plain_tags = {t.removeprefix("plain.") for t in got if t.startswith("plain.")}
    assert {t.removeprefix("flat2.") for t in got if t.startswith("flat2.")} == plain_tags
    health = driver.health()
    assert (health.no_key, health.wrong_key, health.meter_failures) == (0, 0, 0)


async def test_without_a_key_or_with_a_wrong_one_the_meter_says_which(bus: MbusBus) -> None:
    got, driver = await read_once(bus_config(bus, [
        {"name": "nokey", "address": 2},
        {"name": "wrong", "address": 3, "key": OTHER_KEY},
        {"name": "plain", "address": 4},
    ]))  # fmt: skip
    assert (got["nokey.status"].quality, got["nokey.status"].reason) == (
        "bad",
        "encrypted telegram and no key configured for this meter",
    )
    assert (got["wrong.status"].quality, got["wrong.status"].reason) == (
        "bad",
        "the configured key does not decrypt this meter",
    )
    assert got["plain.volume"].quality == "good"
    health = driver.health()
    assert (health.no_key, health.wrong_key) == (1, 1)
    assert (health.meters_without_key, health.meters_wrong_key) == (["nokey"], ["wrong"])
    lines = health.status_lines()
    assert "encrypted, without key: nokey" in lines
    assert "key does not decrypt: wrong" in lines
    assert OTHER_KEY not in " ".join(lines) + " ".join(str(r.reason) for r in got.values())


@pytest.mark.parametrize("mode", [0o600, 0o644])
async def test_a_key_by_file_is_read_unless_others_may_read_it_and_never_shown(
    bus: MbusBus, tmp_path: Path, mode: int
) -> None:
    key_file = tmp_path / "flat2.key"
    key_file.write_text(KEY + "\n")
    os.chmod(key_file, mode)
    got, _ = await read_once(
        bus_config(bus, [{"name": "flat2", "address": 2, "key": {"file": str(key_file)}}])
    )
    if mode == 0o600:
        assert got["flat2.volume"].quality == "good"
        return
    reason = got["flat2.status"].reason or ""
    assert got["flat2.status"].quality == "bad"
    assert str(key_file) in reason, reason
    assert KEY not in reason


async def test_a_secondary_scan_finds_encrypted_meters_without_their_keys(bus: MbusBus) -> None:
    master = MbusMaster(bus.path, bus.baudrate, retries=0)
    await asyncio.to_thread(master.open)
    try:
        found = await asyncio.to_thread(master.scan_secondary)
    finally:
        master.close()
    assert sorted(a[:8] for a in found) == sorted(f"{m.spec.ident:08d}" for m in bus.meters)
