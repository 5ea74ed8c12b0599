"""Machine sound monitoring through the whole chain: `edge-agent run` with a microphone (a WAV file of
a pump's sound from firmware-sim, played through the audio driver 40x faster than real time) and
`[[models.machine_sound]]`; the machine learns its normal sound on its own, then a cavitating pump
reaches the real Mosquitto as `machine_sound_anomaly` with its evidence, and `status` says `alarm`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.support.agent_proc import running_agent, write_config
from tests.support.broker import Mosquitto, Received, Subscriber
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth, write_wav

TOPIC = "water/test-site/gw-test"
RATE = 16_000
FAULT_AT_S = 260  # 26 clips of normal sound, then cavitation
SPEED = 40


def anomalies(messages: Sequence[Received]) -> list[dict[str, Any]]:
    return [
        event
        for m in messages if m.topic == f"{TOPIC}/events"
        for event in m.json()["events"] if event["kind"] == "machine_sound_anomaly"
    ]  # fmt: skip


def machine_status(status: dict[str, Any]) -> dict[str, Any]:
    processor = next(p for p in status["processors"] if p["name"] == "machine_sound:P1-sound")
    health: dict[str, Any] = processor["health"]
    return health


def test_a_cavitating_pump_heard_by_a_microphone_reaches_the_broker(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    synth = MachineSoundSynth(MachineScene.random(np.random.default_rng(17), snr_db=8.0), seed=17)
    synth.inject("cavitation", severity=0.6, at_s=FAULT_AT_S, ramp_s=5.0)
    wav = tmp_path / "pump1.wav"
    write_wav(wav, synth.render_seconds(FAULT_AT_S + 80), RATE)
    devices = f"""
[[devices]]
name = "mic-p1"
kind = "audio"
source = "file"
path = "{wav}"
playback_speed = {SPEED}
channel_names = ["mic"]
"""
    extra = """
[[models.machine_sound]]
name = "P1-sound"
device = "mic-p1"
  [models.machine_sound.calibration]
  auto_hours = 0.001
  min_clips = 20
"""
    config = write_config(tmp_path, broker_port=mosquitto.port, devices=devices, extra=extra)
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/events") as sub, running_agent(config) as agent:
        armed = agent.wait_status(lambda s: machine_status(s)["state"] == "armed", timeout=60)
        health = machine_status(armed)
        assert health["calibration"]["version"] == 1
        assert health["calibration"]["clips"] == 20
        assert not anomalies(sub.snapshot()), "alarm on normal sound"

        event = anomalies(sub.wait_until(anomalies, timeout=FAULT_AT_S / SPEED + 60))[0]
        assert event["source"] == "P1-sound"
        detail = event["detail"]
        assert detail["machine"] == "P1-sound"
        assert detail["device"] == "mic-p1"
        assert "above 2 kHz" in detail["explanation"], detail  # cavitation: broadband, high
        assert detail["trend"]["scores"][-1] > 1.0
        status = agent.wait_status(lambda s: machine_status(s)["state"] == "alarm", timeout=10)
        assert machine_status(status)["events"] >= 1
