"""An OPC UA client certificate near its end: the agent cannot renew it (the server's operator must
trust a new one), so a technician must hear of it before the server refuses the gateway. Before,
nothing said so until the day the device went down with BadCertificateTimeInvalid.

A real agent, connected with Basic256Sha256 to the firmware-sim OPC UA server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.cli import edge_agent_process
from tests.support.opcua_sim import opcua_station
from tests.support.testing import write_agent_config
from water_edge.drivers.opcua.certificate_file import CERTIFICATE_WARN_S, certificate_expiry
from water_edge.drivers.opcua.certs import make_client_certificate

pytestmark = pytest.mark.slow

NS = 1_000_000_000
DAY_NS = 86_400 * NS


def _reading_and_online(status: dict[str, Any]) -> bool:
    return bool(status["drivers"][0]["state"] == "up" and status["uplink"]["state"] == "online")


def _device(url: str, files: tuple[Path, Path]) -> str:
    cert, key = files
    return f"""
[[devices]]
name = "ua"
kind = "opcua"
endpoint = "{url}"
security_policy = "Basic256Sha256"
security_mode = "SignAndEncrypt"
certificate = "{cert}"
private_key = "{key}"
poll_interval_ms = 500
  [[devices.tags]]
  name = "station"
  node = "ns=2;s=station.name"
"""


async def test_a_client_certificate_in_its_last_month_makes_the_agent_degraded_and_says_what_to_do(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    short = tmp_path / "short.der", tmp_path / "short.pem"
    make_client_certificate(*short, days=10)
    long = tmp_path / "long.der", tmp_path / "long.pem"
    make_client_certificate(*long)
    (tmp_path / "short").mkdir()
    (tmp_path / "long").mkdir()
    async with opcua_station(tmp_path / "sim") as sim:
        config = write_agent_config(
            tmp_path / "short", broker_port=mosquitto.port, devices=_device(sim.url, short)
        )
        checked = await edge_agent_process("check-config", "-c", str(config))
        assert checked.returncode == 0, checked.stderr
        assert re.search(
            rf'warning: devices\[0\] \(ua\)\.certificate = "{short[0]}": OPC UA client certificate '
            r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in 9 d 23 h\): the server refuses it from then on; "
            r"make a new one and add it to the server's trusted certificates",
            checked.stderr,
        ), checked.stderr
        with running_agent(config) as agent:
            status = await asyncio.to_thread(agent.wait_status, _reading_and_online, 30)
            (device,) = status["drivers"]
            not_after = device["driver"]["client_certificate_not_after_ns"]
            assert 9 * DAY_NS < not_after - status["agent"]["started_ns"] <= 10 * DAY_NS
            (problem,) = status["verdict"]["problems"]
            assert problem.startswith("device ua: OPC UA client certificate expires ")
            shown = await edge_agent_process("status", "-c", str(config))
            assert shown.returncode == 1  # degraded, while the device reads as it should
            assert "OPC UA client certificate expires" in shown.stdout
            metrics = await edge_agent_process("status", "-c", str(config), "--prometheus")
            (sample,) = [
                s
                for family in text_string_to_metric_families(metrics.stdout)
                for s in family.samples
                if s.name == "edge_agent_device_certificate_not_after_timestamp_seconds"
            ]
            assert sample.labels == {"device": "ua"}
            assert sample.value == not_after / NS
            assert agent.stop() == 0

        # Ten years left: nothing to say.
        config = write_agent_config(
            tmp_path / "long", broker_port=mosquitto.port, devices=_device(sim.url, long)
        )
        checked = await edge_agent_process("check-config", "-c", str(config))
        assert "certificate" not in checked.stderr, checked.stderr
        with running_agent(config) as agent:
            status = await asyncio.to_thread(agent.wait_status, _reading_and_online, 30)
            assert status["verdict"] == {"state": "ok", "problems": []}
            not_after = status["drivers"][0]["driver"]["client_certificate_not_after_ns"]
            assert not_after - status["agent"]["started_ns"] > 3649 * DAY_NS
            assert agent.stop() == 0


def test_what_is_said_before_during_and_after_the_last_month() -> None:
    end = 1_800_000_000 * NS  # 2027-01-15 08:00 UTC
    assert certificate_expiry(end, end - CERTIFICATE_WARN_S * NS - NS) is None
    assert certificate_expiry(end, end - 3 * DAY_NS) == (
        "OPC UA client certificate expires 2027-01-15 08:00 UTC (in 3 d 0 h): the server refuses it "
        "from then on; make a new one and add it to the server's trusted certificates"
    )
    assert certificate_expiry(end, end + NS) == (
        "OPC UA client certificate expired 2027-01-15 08:00 UTC: the server refuses it; make a new "
        "one and add it to the server's trusted certificates"
    )
