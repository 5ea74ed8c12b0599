"""Finding 3 against the real `edge-agent run`: a huge command does not get the agent OOM-killed.

The broker here is the worst case for the agent: no `max_packet_size`, and MQTT 3.1.1 on the
agent's side, so no Maximum Packet Size can be announced and the whole message is sent. The agent
must refuse the packet from its header (its socket guard), keep its memory far below the unit's
`MemoryMax=256M`, reconnect, and go on answering commands. (With MQTT 5 and the shipped broker
config the message never leaves the broker: tests/test_security_broker.py.)
"""

from __future__ import annotations

import base64
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from tests.support.agent_proc import running_agent, write_config
from tests.support.broker import Mosquitto, Subscriber
from water_edge.core import envelope

SITE, GW = "test-site", "gw-test"
CMD = f"water/{SITE}/{GW}/cmd"
# The agent's own peak RSS may grow by at most this much while 40 MB are thrown at it (before the
# fix: +200 MB for 40 MB; the unit's MemoryMax is 256 MB).
MAX_GROWTH_MB = 40


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def publish(broker: Mosquitto, topic: str, payload: bytes) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1).wait_for_publish(30)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.slow
def test_a_40_mb_command_costs_the_agent_no_memory_and_no_commands(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    public = base64.b64encode(
        key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    ).decode()
    security = f"""
[security]
max_command_bytes = "64KiB"

[[security.operators]]
name = "ops"
public_key = "{public}"
commands = ["read_now"]
"""
    with Mosquitto() as broker, Subscriber(broker.host, broker.port, f"water/{SITE}/{GW}/events") as centre:
        config = write_config(tmp_path, broker_port=broker.port, devices="", extra=security)
        config.write_text(config.read_text().replace("[uplink]\n", '[uplink]\nprotocol = "3.1.1"\n'))
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            before = peak_rss_mb(agent.process.pid)
            publish(broker, f"{CMD}/read_now", b"x" * (40 * 2**20))
            refused = agent.wait_status(
                lambda s: "incoming packet of" in (s["uplink"]["last_error"] or ""), 30
            )
            assert "41943" in refused["uplink"]["last_error"]  # 40 MiB + topic and header
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", 30)
            peak = peak_rss_mb(agent.process.pid)
            # Still taking commands: a signed read_now is answered.
            publish(broker, f"{CMD}/read_now", envelope.sign(key, "ops", "read_now", f"{SITE}/{GW}", {}))
            answers = centre.wait_until(
                lambda ms: any(
                    e.get("kind") == "command_result" for m in ms for e in m.json().get("events", [])
                ),
                20,
            )
            assert agent.stop() == 0
    results = [e for m in answers for e in m.json()["events"] if e["kind"] == "command_result"]
    assert results[0]["detail"]["status"] == "ok"
    print(f"peak RSS before {before:.1f} MB, after a 40 MB command {peak:.1f} MB")
    assert peak - before < MAX_GROWTH_MB
