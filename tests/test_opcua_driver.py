"""The OPC UA driver against firmware-sim's OPC UA server (real asyncua server on a real socket,
in this process so a test can inject status codes and restart it)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.server.server import Server
from structlog.testing import capture_logs

from tests.support.opcua_sim import Sim, opcua_station
from tests.support.supervised import supervised
from tests.support.testing import eventually, free_port, skip_without_ipv6_loopback
from water_edge.core.errors import DriverIOError
from water_edge.core.reading import Reading
from water_edge.drivers.opcua.certs import make_client_certificate
from water_edge.drivers.opcua.config import OpcUaConfig, OpcUaTag
from water_edge.drivers.opcua.driver import OpcUaDriver
from water_edge.sim.opcua_server import NAMESPACE_URI, OpcUaComponent, browse_path
from water_edge.sim.registers import POINTS

# One server for the module (starting one costs about 2 s); tests that change it undo it.
pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Sim]:
    async with opcua_station(tmp_path_factory.mktemp("opcua") / "sim") as running:
        yield running


def driver(url: str, tags: list[dict[str, Any]], **extra: Any) -> OpcUaDriver:
    return OpcUaDriver.from_config(
        OpcUaConfig.model_validate({"name": "ua", "kind": "opcua", "endpoint": url, "tags": tags, **extra})
    )


async def collect(
    drv: OpcUaDriver, until: Callable[[list[Reading]], bool], within_s: float = 10.0
) -> list[Reading]:
    """What `drv.stream()` yields, up to the batch after which `until(readings)` holds."""
    got: list[Reading] = []
    async with asyncio.timeout(within_s):
        async for batch in drv.stream():
            got += batch
            if until(got):
                return got
    raise AssertionError(f"the stream ended after {len(got)} readings")


async def test_browse_paths_and_node_ids_read_with_units(sim: Sim) -> None:
    drv = driver(sim.url, [
        {"name": "flow", "path": "PumpStation/Pump1/Flow"},
        {"name": "name", "node": "ns=2;s=station.name"},
        {"name": "pressure", "path": "2:PumpStation/2:Pump1/2:DischargePressure", "unit": "kPa-custom"},
        {"name": "missing", "path": "PumpStation/Pump9/Flow"},
        {"name": "unknown", "node": "ns=2;s=no.such.point"},
    ])  # fmt: skip
    await drv.open()
    try:
        readings = {r.tag: r for r in await drv.read()}
    finally:
        await drv.aclose()
    assert readings["flow"].quality == "good"
    assert isinstance(readings["flow"].value, float)
    assert readings["flow"].unit == "m3/h"  # from the EngineeringUnits property (UNECE MQH)
    assert readings["pressure"].unit == "kPa-custom"  # the config's unit wins
    assert readings["name"].value == "PS-NORTH"
    assert readings["missing"].quality == "bad"
    assert "Pump9" in (readings["missing"].reason or "")
    assert readings["unknown"].quality == "bad"
    assert readings["unknown"].reason == "BadNodeIdUnknown"
    assert drv.health().unresolved == {"missing": readings["missing"].reason}


async def test_a_namespace_given_by_uri_survives_a_server_that_renumbers_its_namespaces(sim: Sim) -> None:
    # Servers may number their namespaces differently after a restart or a project change; the
    # station's namespace moves from index 2 to 3 here.
    tags = [
        {"name": "by_uri", "node": f"nsu={NAMESPACE_URI};s=station.name"},
        {"name": "by_index", "node": "ns=2;s=station.name"},
        {"name": "elsewhere", "node": "nsu=urn:nobody:here;s=station.name"},
    ]
    # A second server beside the module's one, its namespaces numbered differently.
    renumbered = OpcUaComponent()
    ctx = dataclasses.replace(sim.ctx, options={"port": 0, "extra_namespaces": 1})
    url = str((await renumbered.start(ctx))[0].detail["url"])
    drv = driver(url, tags)
    try:
        await drv.open()
        try:
            readings = {r.tag: r for r in await drv.read()}
        finally:
            await drv.aclose()
    finally:
        await renumbered.stop()
    assert (readings["by_uri"].quality, readings["by_uri"].value) == ("good", "PS-NORTH")
    assert readings["by_index"].reason == "BadNodeIdUnknown"  # ns=2 is another namespace now
    assert readings["elsewhere"].reason == "namespace not on the server: urn:nobody:here"
    assert drv.health().unresolved == {"elsewhere": "namespace not on the server: urn:nobody:here"}


async def test_a_node_id_no_request_can_carry_makes_its_tag_bad_not_the_device(sim: Sim) -> None:
    # The config refuses it; one that gets past (a config built in code) used to fail every request.
    good = driver(sim.url, [{"name": "name", "node": "ns=2;s=station.name"}]).config
    beyond = OpcUaTag.model_construct(name="speed", node="ns=2;i=4294967296")
    drv = OpcUaDriver(good.model_copy(update={"tags": [*good.tags, beyond]}))
    await drv.open()
    try:
        readings = {r.tag: r for r in await drv.read()}
    finally:
        await drv.aclose()
    assert (readings["name"].quality, readings["name"].value) == ("good", "PS-NORTH")
    why = "unusable NodeId 'ns=2;i=4294967296': numeric identifier i=4294967296 is not in 0..4294967295"
    assert (readings["speed"].quality, readings["speed"].reason) == ("bad", why)
    assert drv.health().unresolved == {"speed": why}


async def test_an_ipv6_endpoint_connects() -> None:
    skip_without_ipv6_loopback()
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        port = sock.getsockname()[1]
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://[::1]:{port}")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:test:ipv6")
    await server.nodes.objects.add_variable(
        ua.NodeId(cast(ua.String, "level"), cast(ua.Int16, ns)), "level", 1.5
    )
    async with server:
        drv = driver(f"opc.tcp://[::1]:{port}", [{"name": "level", "node": f"ns={ns};s=level"}])
        await drv.open()
        try:
            readings = await drv.read()
        finally:
            await drv.aclose()
    assert [(r.quality, r.value) for r in readings] == [("good", 1.5)]


async def test_deadband_reduces_notifications(sim: Sim) -> None:
    # station.ticks grows by one every 100 ms: a deadband of 5 lets through about one change in 6
    drv = driver(sim.url, [
        {"name": "ticks", "node": "ns=2;s=station.ticks"},
        {"name": "ticks_db", "node": "ns=2;s=station.ticks", "deadband": {"type": "absolute", "value": 5}},
    ], sampling_interval_ms=100, publishing_interval_ms=100)  # fmt: skip
    await drv.open()
    try:
        got = await collect(drv, lambda readings: sum(r.tag == "ticks" for r in readings) >= 30)  # ~3 s
    finally:
        await drv.aclose()
    plain = [r.value for r in got if r.tag == "ticks"]
    banded = [r.value for r in got if r.tag == "ticks_db"]
    assert len(plain) >= 15
    assert 2 <= len(banded) < len(plain) / 3
    steps = [b - a for a, b in itertools.pairwise(banded)]  # type: ignore[operator]
    assert all(step > 5 for step in steps), steps
    assert all(r.quality == "good" and r.ts_ns > 0 for r in got)


async def test_status_codes_map_to_quality(sim: Sim) -> None:
    drv = driver(sim.url, [
        {"name": "flow", "node": "ns=2;s=pump1.flow"},
        {"name": "speed", "node": "ns=2;s=pump1.speed"},
        {"name": "current", "node": "ns=2;s=pump1.motor_current"},
    ], publishing_interval_ms=100, sampling_interval_ms=100)  # fmt: skip
    await drv.open()
    try:
        sim.component.override("pump1.flow", "BadSensorFailure")
        sim.component.override("pump1.speed", "UncertainLastUsableValue")

        async def overridden() -> dict[str, Reading] | None:
            readings = {r.tag: r for r in await drv.read()}
            flow, speed = readings["flow"], readings["speed"]
            return readings if (flow.quality, speed.quality) == ("bad", "uncertain") else None

        polled = await eventually(overridden, 5, every_s=0.05, what="the overridden status codes read back")
        pushed: dict[str, Reading] = {}
        async with asyncio.timeout(5):
            async for batch in drv.stream():
                pushed.update((r.tag, r) for r in batch)
                if pushed.get("flow", polled["current"]).quality == "bad" and "speed" in pushed:
                    break
    finally:
        await drv.aclose()
        sim.component.override("pump1.flow", None)
        sim.component.override("pump1.speed", None)
    assert drv.fast_publishes >= 1  # the pushed readings came through fast_publish
    for readings in (polled, pushed):
        assert readings["flow"].quality == "bad"
        assert readings["flow"].value is None
        assert readings["flow"].reason == "BadSensorFailure"
        assert readings["speed"].quality == "uncertain"
        assert readings["speed"].reason == "UncertainLastUsableValue"
        assert isinstance(readings["speed"].value, float)
    assert polled["current"].quality == "good"
    assert polled["current"].reason is None


async def test_poll_mode_reads_at_the_poll_interval(sim: Sim) -> None:
    drv = driver(
        sim.url, [{"name": "ticks", "node": "ns=2;s=station.ticks"}], mode="poll", poll_interval_ms=200
    )
    await drv.open()
    try:
        started = time.monotonic()
        got = await collect(drv, lambda readings: len(readings) >= 5)
        elapsed = time.monotonic() - started
    finally:
        await drv.aclose()
    assert drv.health().mode == "poll"
    assert len(got) == 5
    # Five polls 200 ms apart span four intervals: not faster than configured. The upper bound only
    # says the interval is the configured one and not, say, a second (a loaded CI machine runs late).
    assert 4 * 0.2 * 0.9 <= elapsed < 4 * 1.0, elapsed
    values = [cast(float, r.value) for r in got]
    assert values == sorted(values)
    assert len(set(values)) >= 4


async def test_server_refusing_subscriptions_falls_back_to_polling(sim: Sim) -> None:
    drv = driver(sim.url, [{"name": "ticks", "node": "ns=2;s=station.ticks"}], poll_interval_ms=200)
    sim.component.refuse_subscriptions()
    try:
        await drv.open()
        got = await collect(drv, lambda readings: len(readings) >= 3)
    finally:
        sim.component.refuse_subscriptions(False)
        await drv.aclose()
    health = drv.health()
    assert health.mode == "poll"
    assert health.fallback is not None
    assert "BadServiceUnsupported" in health.fallback
    assert len(got) >= 3
    assert all(r.quality == "good" for r in got)


async def test_unreachable_server_is_a_clear_driver_io_error(tmp_path: Path) -> None:
    drv = driver(f"opc.tcp://127.0.0.1:{free_port()}", [{"name": "x", "node": "ns=2;i=5"}])
    with pytest.raises(DriverIOError, match="connection refused"):
        await drv.open()


def _secure(
    url: str,
    cert: Path,
    key: Path,
    mode: str = "SignAndEncrypt",
    policy: str = "Basic256Sha256",
    **extra: Any,
) -> OpcUaDriver:
    return driver(
        url,
        [{"name": "name", "node": "ns=2;s=station.name"}],
        security_policy=policy,
        security_mode=mode,
        certificate=str(cert),
        private_key=str(key),
        **extra,
    )


async def test_sign_and_encrypt_with_a_trusted_client_certificate(sim: Sim, tmp_path: Path) -> None:
    good_cert, good_key = tmp_path / "good.der", tmp_path / "good.pem"
    bad_cert, bad_key = tmp_path / "bad.der", tmp_path / "bad.pem"
    make_client_certificate(good_cert, good_key)
    make_client_certificate(bad_cert, bad_key)
    trusted = sim.ctx.workdir / "opcua" / "pki" / "trusted"
    trusted.mkdir(parents=True)
    shutil.copy(good_cert, trusted / "gateway.der")
    try:
        await _check_secure(sim, tmp_path, good_cert, good_key, bad_cert, bad_key)
    finally:
        shutil.rmtree(trusted)  # back to accepting any client certificate


async def _check_secure(
    sim: Sim, tmp_path: Path, good_cert: Path, good_key: Path, bad_cert: Path, bad_key: Path
) -> None:
    server_cert = sim.ctx.workdir / "opcua" / "pki" / "own" / "server_cert.der"

    for mode in ("SignAndEncrypt", "Sign"):
        drv = _secure(sim.url, good_cert, good_key, mode, server_certificate=str(server_cert))
        await drv.open()
        try:
            assert [r.value for r in await drv.read()] == ["PS-NORTH"]
            # Subscribed too: the data changes come through the secured channel, decoded by the
            # driver's own decoder (fast_publish) as on a plain one.
            pushed = await collect(drv, bool)
            assert [r.value for r in pushed] == ["PS-NORTH"]
            assert drv.fast_publishes >= 1
        finally:
            await drv.aclose()

    untrusted = _secure(sim.url, bad_cert, bad_key)
    with pytest.raises(DriverIOError, match="BadCertificateUntrusted: the server does not trust"):
        await untrusted.open()
    assert list((sim.ctx.workdir / "opcua" / "pki" / "rejected").iterdir())

    # A pinned server certificate that is not the server's: refused before any data flows.
    wrong_pin = _secure(sim.url, good_cert, good_key, server_certificate=str(bad_cert))
    with pytest.raises(DriverIOError, match="cannot connect"):
        await wrong_pin.open()

    missing = _secure(sim.url, tmp_path / "nope.der", good_key)
    with pytest.raises(DriverIOError, match="certificate file not found"):
        await missing.open()


@pytest.mark.parametrize("policy", ["Aes128_Sha256_RsaOaep", "Aes256_Sha256_RsaPss"])
async def test_the_current_security_policies_read_and_subscribe(
    sim: Sim, tmp_path: Path, policy: str
) -> None:
    """The policies the OPC Foundation now recommends in place of Basic256Sha256; servers whose
    security settings offer only them could not be reached before."""
    cert, key = tmp_path / "gw.der", tmp_path / "gw.pem"
    make_client_certificate(cert, key)
    drv = _secure(sim.url, cert, key, policy=policy)
    await drv.open()
    try:
        assert [r.value for r in await drv.read()] == ["PS-NORTH"]
        pushed = await collect(drv, bool)
        assert [r.value for r in pushed] == ["PS-NORTH"]
    finally:
        await drv.aclose()


async def test_the_deprecated_sha1_policies_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Basic256 is deprecated by the OPC Foundation"):
        driver("opc.tcp://127.0.0.1:4840", [{"name": "n", "node": "i=85"}], security_policy="Basic256",
               security_mode="SignAndEncrypt", certificate="c.der", private_key="k.pem")  # fmt: skip


async def test_server_restart_driver_reconnects_and_resubscribes(sim: Sim) -> None:
    drv = driver(
        sim.url,
        [{"name": "ticks", "node": "ns=2;s=station.ticks"}],
        publishing_interval_ms=100,
        sampling_interval_ms=100,
    )
    async with supervised(drv.config, drv) as run:
        readings, events, runner = run.readings, run.events, run.runner
        await eventually(lambda: sum(r.quality == "good" for r in readings) >= 5, 10)
        await sim.component.stop()
        await eventually(lambda: any(r.quality == "bad" for r in readings), 10)
        # Down for a while: the loss, then at least one reopen attempt fails before the server is back.
        await eventually(lambda: runner.stats.failures >= 2, 10, what="a failed reopen")
        await sim.component.start(sim.ctx)
        mark = len(readings)
        await eventually(lambda: sum(r.quality == "good" for r in readings[mark:]) >= 5, 15)
    kinds = [e.kind for e in events]
    assert kinds.index("driver_down") < kinds.index("driver_up")
    first_bad = next(i for i, r in enumerate(readings) if r.quality == "bad")
    assert readings[first_bad].reason
    resumed = [cast(float, r.value) for r in readings[mark:] if r.quality == "good"]
    assert resumed == sorted(resumed)
    assert runner.stats.reconnects == 1


@pytest.mark.parametrize("advertised", [True, False], ids=["published", "unpublished"])
async def test_a_server_that_takes_fewer_items_a_request_than_the_driver_sends_is_read_whole(
    sim: Sim, advertised: bool
) -> None:
    """Embedded servers take 50-500 nodes a Read or items a CreateMonitoredItems, and refuse a
    larger one as a whole with BadTooManyOperations. Before, the driver sent up to
    `max_items_per_request` (1000): its first Read of 98 tags' units failed and the device never
    came up. Most servers publish their limits (OperationLimits); some only enforce them."""
    limited = OpcUaComponent()
    options = {"port": 0, "max_nodes_per_read": 40, "max_monitored_items_per_call": 30,
               "advertise_limits": advertised}  # fmt: skip
    url = str((await limited.start(dataclasses.replace(sim.ctx, options=options)))[0].detail["url"])
    tags = [{"name": p.name, "path": browse_path(p.name)} for p in POINTS]
    drv = driver(url, tags)
    try:
        with capture_logs() as logs:
            await drv.open()
        try:
            polled = {r.tag: r for r in await drv.read()}
            streamed = await collect(drv, lambda got: {r.tag for r in got} >= set(polled))
        finally:
            await drv.aclose()
    finally:
        await limited.stop()
    assert {tag: r.reason for tag, r in polled.items() if r.quality != "good"} == {}
    assert len(polled) == len(POINTS)
    assert {r.tag for r in streamed if r.quality == "good"} == set(polled)
    assert drv.health().failed_items == {}
    limits = drv.health().batch_limits
    lines = drv.health().status_lines()
    assert any(line.startswith("server limits items per request: read") for line in lines), lines
    lowered = [(e["service"], e["items"]) for e in logs if e["event"] == "opcua.batch_lowered"]
    if advertised:  # taken from the server before the first batch: nothing refused
        assert limits == {"read": 40, "monitor": 30}
        assert lowered == []
    else:  # learnt by refusals, each halving the batch that was refused
        assert limits["read"] <= 40, limits
        assert limits["monitor"] <= 30, limits
        assert lowered[-1] == ("monitor", limits["monitor"]), lowered
