"""Sparkplug B through the shipped secure broker (deploy/mosquitto/edge-agent.conf and acl, only
paths and port changed), with certificates from the project's own CA.

Before the ACL had Sparkplug rules, a gateway with `encoding = "sparkplug_b"` behind the shipped
broker published nothing a host could see (every birth and its NDEATH were dropped) and the host
could not even say it was online. Now an Edge Node is its certificate's name and nothing else, and
only a Sparkplug host certificate may speak for the host (its STATE) or command a node.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.pki import Pki, TlsClient
from tests.support.sparkplug import TAGS, PrimaryHost, flows, kinds, rows, session_errors
from tests.support.uplink import SITE
from water_edge.agent.uplink.config import MqttConfig, SparkplugConfig
from water_edge.agent.uplink.memory import MemoryOutbox
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.proto import DataType, Payload
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.provisioning.identity import DeviceIdentity

NOT_AUTHORIZED = 0x87
HOST = "sparkplug-host"  # the common name the shipped ACL gives the Primary Host "scada"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = Pki(tmp_path_factory.mktemp("pki"))
    pki.client(HOST)
    pki.client("claim")
    return pki


def host_tls(pki: Pki) -> tuple[Path, Path, Path]:
    return pki.ca_file, pki.root / f"{HOST}.pem", pki.root / f"{HOST}.key"


def edge_node(pki: Pki, identity: DeviceIdentity, port: int, tmp_path: Path) -> SparkplugUplink:
    """The gateway's Sparkplug uplink with its own certificate; node id = gateway id (the default)."""
    config = MqttConfig(
        host="127.0.0.1",
        port=port,
        encoding="sparkplug_b",
        tls=pki.tls(identity),
        reconnect_min_s=0.1,
        reconnect_max_s=0.3,
        keepalive_s=5,
        sparkplug=SparkplugConfig(primary_host_id="scada", backlog_rows_per_s=200),
    )
    box = MemoryOutbox()
    box.append_sync(rows(3))
    return SparkplugUplink(
        config, box, SITE, "gw-01",
        catalog=Catalog([DeviceSpec("plc1", TAGS)]), bdseq_path=tmp_path / "bdseq",
    )  # fmt: skip


async def test_an_edge_node_and_its_host_work_through_the_shipped_broker(pki: Pki, tmp_path: Path) -> None:
    gw01 = pki.device("gw01", "gw-01", "RTGW0001", SITE)
    with pki.broker() as broker, PrimaryHost(broker.host, broker.port, tls=host_tls(pki)) as host:
        host.publish_state(True)  # the host may say it is online: the gateway waits for this
        uplink = edge_node(pki, gw01, broker.port, tmp_path)
        task = asyncio.create_task(uplink.run())
        try:
            got = await asyncio.to_thread(host.wait, lambda ms: len(flows(ms)) >= 3)
            assert kinds(got)[:2] == ["NBIRTH", "DBIRTH/plc1"]
            assert flows(got) == [0.0, 1.0, 2.0]
            # The host commands a rebirth; the node obeys.
            rebirth = Payload()
            rebirth.metrics.add(name="Node Control/Rebirth", datatype=DataType.Boolean, boolean_value=True)
            host.command(f"spBv1.0/{SITE}/NCMD/gw-01", rebirth)
            await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("NBIRTH") == 2)
            # A connection lost without DISCONNECT: the broker publishes the node's Will, its NDEATH.
            uplink._drop_connection()  # the test stands in for a dead network
            got = await asyncio.to_thread(host.wait, lambda ms: "NDEATH" in kinds(ms))
            await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("NBIRTH") == 3)
        finally:
            await uplink.stop(drain_timeout_s=1.0)
            await asyncio.wait_for(task, 10)
        # And the explicit NDEATH before an intentional disconnect.
        got = await asyncio.to_thread(host.wait, lambda ms: kinds(ms).count("NDEATH") == 2)
        assert session_errors(got) == []
        assert "Denied PUBLISH" not in broker.log()


def test_a_gateway_is_an_edge_node_only_as_itself_and_never_the_host(pki: Pki) -> None:
    gw02 = pki.device("gw02", "gw-02", "RTGW0002", SITE)
    with pki.broker() as broker:
        host = TlsClient(broker, *host_tls(pki)[1:], pki.ca_file)
        host.subscribe("spBv1.0/#")
        attacker = TlsClient(broker, gw02.cert_file, gw02.key_file, pki.ca_file)
        attacker.subscribe("spBv1.0/#")  # granted; the broker delivers only what it may read
        # Publishing as another node, or as the host, is refused.
        for topic in (
            f"spBv1.0/{SITE}/NBIRTH/gw-01",
            f"spBv1.0/{SITE}/DDATA/gw-01/plc1",
            f"spBv1.0/{SITE}/NDEATH/gw-01",
            "spBv1.0/STATE/scada",  # an offline STATE would send every gateway to its next server
            f"spBv1.0/{SITE}/NCMD/gw-01",
            f"spBv1.0/{SITE}/DCMD/gw-01/plc1",
        ):
            assert attacker.publish(topic, b"forged").value == NOT_AUTHORIZED, topic
        # As itself, in its births, data and deaths, it may.
        for topic in (f"spBv1.0/{SITE}/NBIRTH/gw-02", f"spBv1.0/{SITE}/DDATA/gw-02/plc1"):
            assert not attacker.publish(topic, b"own").is_failure, topic
        # It reads the host's STATE and its own commands, not another node's commands or data.
        for topic in ("spBv1.0/STATE/scada", f"spBv1.0/{SITE}/NCMD/gw-01", f"spBv1.0/{SITE}/NCMD/gw-02"):
            assert not host.publish(topic, b"from the host").is_failure, topic
        host.wait_message(lambda m: m[0] == f"spBv1.0/{SITE}/DDATA/gw-02/plc1")
        attacker.wait_message(lambda m: m[0] == f"spBv1.0/{SITE}/NCMD/gw-02")
        assert {t for t, _ in attacker.messages} == {"spBv1.0/STATE/scada", f"spBv1.0/{SITE}/NCMD/gw-02"}
        # The shared claim certificate and the central consumer are no Edge Node and no host.
        claimer = TlsClient(broker, pki.root / "claim.pem", pki.root / "claim.key", pki.ca_file)
        assert claimer.publish(f"spBv1.0/{SITE}/NBIRTH/claim", b"forged").value == NOT_AUTHORIZED
        centre = TlsClient(broker, pki.centre_cert, pki.centre_key, pki.ca_file)
        assert centre.publish("spBv1.0/STATE/scada", b"forged").value == NOT_AUTHORIZED
        for c in (host, attacker, claimer, centre):
            c.close()


async def test_a_will_for_another_node_never_reaches_the_host(pki: Pki) -> None:
    """A gateway cannot plant a false NDEATH of another node as its own Will."""
    gw03 = pki.device("gw03", "gw-03", "RTGW0003", SITE)
    with pki.broker() as broker, PrimaryHost(broker.host, broker.port, tls=host_tls(pki)) as host:
        death = Payload()
        death.metrics.add(name="bdSeq", datatype=DataType.UInt64, long_value=0)
        for node in ("gw-01", "gw-03"):
            forged = TlsClient(
                broker, gw03.cert_file, gw03.key_file, pki.ca_file,
                will=(f"spBv1.0/{SITE}/NDEATH/{node}", death.SerializeToString()),
            )  # fmt: skip
            forged.client.loop_stop()  # no reconnection after
            sock = forged.client.socket()
            assert sock is not None
            sock.close()  # gone without DISCONNECT: the broker sends the Will
        got = await asyncio.to_thread(host.wait, lambda ms: "NDEATH" in kinds(ms))
        assert [m.topic for m in got] == [f"spBv1.0/{SITE}/NDEATH/gw-03"]
