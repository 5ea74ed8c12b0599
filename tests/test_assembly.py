"""The agent assembled from its config: analytics processors and signed commands, end to end.

Real processes throughout: firmware-sim, `edge-agent run`, Mosquitto, and an operator that
signs commands with its own Ed25519 key and publishes them on the gateway's command topic.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.commands import command_results, operator_security, public_b64
from tests.support.plant import Plant, running_plant
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, STATUS_SCHEMA, demo_devices, write_agent_config
from water_edge.core.envelope import sign

pytestmark = pytest.mark.slow

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
LEAK_MODEL = Path(__file__).resolve().parents[1] / "models" / "leak"


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=11) as running:
        yield running


def test_signed_commands_run_and_forged_ones_are_refused(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ops = Ed25519PrivateKey.generate()
    security = operator_security(ops, ["read_now", "restart"])
    config = write_agent_config(
        tmp_path, broker_port=mosquitto.port, devices=demo_devices(plant.port), security=security
    )
    target = f"{AGENT_SITE}/{AGENT_GATEWAY}"
    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub,
        Publisher(mosquitto.host, mosquitto.port, protocol=paho.MQTTv5) as operator,
        running_agent(config) as agent,
    ):
        agent.wait_status(lambda s: s["uplink"]["state"] == "online")
        operator.publish(f"{TOPIC}/cmd/read_now", sign(ops, "control-room", "read_now", target))
        forged = sign(Ed25519PrivateKey.generate(), "control-room", "read_now", target)
        operator.publish(f"{TOPIC}/cmd/read_now", forged)
        sub.wait_until(lambda ms: len(command_results(ms)) >= 2, timeout=15)
        status = agent.status()
        operator.publish(f"{TOPIC}/cmd/restart", sign(ops, "control-room", "restart", target))
        code = agent.process.wait(30)
    results = command_results(sub.snapshot())
    accepted = [r for r in results if r["type"] == "read_now" and r["status"] == "ok"]
    refused = [r for r in results if r["status"] != "ok"]
    assert len(accepted) == 1
    assert accepted[0]["result"]["pump-station"]["readings"] == 43
    assert len(refused) == 1
    assert "signature" in refused[0]["reason"]
    assert (status["commands"]["ok"], status["commands"]["refused_by_reason"]) == (1, {"bad_signature": 1})
    jsonschema.validate(status, STATUS_SCHEMA)  # a real document with a command channel
    # a signed restart exits with EX_TEMPFAIL, which systemd's Restart=on-failure restarts
    assert code == 75


def model_files(version: str, tamper: bool = False) -> dict[str, str]:
    """The shipped leak model re-labelled `version`; `tamper` corrupts the .tflite after hashing."""
    manifest = json.loads((LEAK_MODEL / "leak_detector.json").read_text())
    manifest["version"] = version
    blob = (LEAK_MODEL / "leak_detector.tflite").read_bytes()
    if tamper:
        blob = blob[:-16] + bytes(16)
    return {
        "leak_detector.tflite": base64.b64encode(blob).decode(),
        "leak_detector.json": base64.b64encode(json.dumps(manifest).encode()).decode(),
    }


def test_leak_and_pump_processors_run_from_the_config_and_a_model_is_swapped_live(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    ops = Ed25519PrivateKey.generate()
    wav = tmp_path / "pair.wav"
    subprocess.run(
        [sys.executable, "-m", "water_edge.sim.cli", "hydrophones", "--wav", str(wav), "--seconds", "20"],
        check=True,
        capture_output=True,
    )
    models = """
[[models.pump]]
name = "pump1"
  [models.pump.signals]
  flow = "pump1.flow"
  motor_current = "pump1.motor_current"
  speed = "pump1.speed"
  discharge_pressure = "pump1.discharge_pressure"
  vibration_x = "pump1.vibration_x"

[[models.leak]]
device = "hydrophones"
"""
    security = f"""
[security]
[[security.operators]]
name = "data-science"
public_key = "{public_b64(ops)}"
commands = ["model_update"]
"""
    audio = f"""
[[devices]]
name = "hydrophones"
kind = "audio"
source = "file"
path = "{wav}"
loop = true
playback_speed = 4.0
channel_names = ["A", "B"]
"""
    config = write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        devices=demo_devices(plant.port) + audio,
        models=models,
        security=security,
    )
    with running_agent(config) as agent:
        status = agent.wait_status(
            lambda s: any(
                p["name"] == "leak:hydrophones" and p["health"]["windows_scored"] >= 3
                for p in s["processors"]
            ),
            timeout=30,
        )
        status = agent.wait_status(
            lambda s: any(
                # `pumps` is {} until the processor has loaded its model and opened its state.
                p["name"] == "pump_anomaly"
                and p["health"].get("pumps", {}).get("pump1", {}).get("samples", 0) >= 2
                for p in s["processors"]
            ),
            timeout=30,
        )
        human = subprocess.run(
            [sys.executable, "-m", "water_edge.agent.cli", "status", "-c", str(config)],
            capture_output=True,
            text=True,
            check=False,  # exit 1 (degraded) until the uplink is online: the text is what counts here
        ).stdout
        with (
            Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/events") as sub,
            Publisher(mosquitto.host, mosquitto.port, protocol=paho.MQTTv5) as operator,
        ):
            agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            for version, tamper in (("9.9.9", False), ("10.0.0", True)):
                args = {
                    "slot": "leak-hydrophones",
                    "manifest": "leak_detector.json",
                    "files": model_files(version, tamper),
                }
                envelope = sign(ops, "data-science", "model_update", f"{AGENT_SITE}/{AGENT_GATEWAY}", args)
                operator.publish(f"{TOPIC}/cmd/model_update", envelope)
            sub.wait_until(lambda ms: len(command_results(ms)) >= 2, timeout=20)
            swapped = command_results(sub.snapshot())
        assert agent.stop() == 0
    assert swapped[0]["status"] == "ok"
    assert swapped[0]["result"]["version"] == "9.9.9"
    assert swapped[1]["status"] != "ok"
    assert "sha256" in swapped[1]["reason"]
    assert "the old one stays" in swapped[1]["reason"]
    assert "model    pump_anomaly: pump1 learning" in human
    assert "model    leak:hydrophones: " in human
    jsonschema.validate(status, STATUS_SCHEMA)  # with both processors and an audio device
    by_name = {p["name"]: p for p in status["processors"]}
    assert set(by_name) == {"pump_anomaly", "leak:hydrophones"}
    pump = by_name["pump_anomaly"]["health"]["pumps"]["pump1"]
    assert pump["state"] == "learning"
    assert pump["samples"] >= 2  # sampled from the PLC tags it maps
    assert pump["last_error"] is None
    assert by_name["pump_anomaly"]["crashes"] == 0
    assert by_name["leak:hydrophones"]["crashes"] == 0
    leak = by_name["leak:hydrophones"]["health"]
    assert 0.0 <= leak["leak_probability"] <= 1.0
    assert leak["classifier"].startswith("leak_detector ")  # the shipped one, before the push

    # Restarted (a power cut, an update): the pushed model is in service again, and said so.
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/events") as sub, running_agent(config) as again:
        restored = again.wait_status(
            lambda s: any(p["name"] == "leak:hydrophones" for p in s["processors"]), timeout=30
        )

        def restored_events(messages: list[Any]) -> list[dict[str, Any]]:
            return [e for m in messages for e in m.json()["events"] if e["kind"] == "model_restored"]

        (event,) = restored_events(sub.wait_until(restored_events, timeout=20))
        assert again.stop() == 0
    leak_again = {p["name"]: p for p in restored["processors"]}["leak:hydrophones"]["health"]
    assert leak_again["classifier"] == "leak_detector 9.9.9"
    assert event["detail"] == {"slot": "leak-hydrophones", "version": "9.9.9"}
