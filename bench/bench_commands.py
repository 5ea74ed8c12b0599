"""What hostile commands cost the agent: a flood of forged commands, the pre-parse depth check on a
worst-case payload, and the real agent's peak memory when huge commands are thrown at it.

Figures, never pass/fail (docs/benchmarks.md, bench_commands).
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as paho
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from bench.figures import figure, run_alone
from tests.support.agent_proc import running_agent, write_config
from tests.support.broker import Mosquitto
from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.remote.channel import CommandChannel
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.core import envelope
from water_edge.core.reading import Event

FORGED = 20_000
SIZES_MB = (16, 40, 100)


def _public(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def _flood(tmpdir: Path) -> tuple[float, int, int]:
    """Forged read_now commands through the real processor and channel: (per s, answers, audit lines)."""
    key = Ed25519PrivateKey.generate()
    security = SecuritySection(
        operators=[OperatorKey(name="ops", public_key=_public(key), commands=["read_now"])]
    )
    audit = AuditLog(tmpdir / "audit.log")
    nonces = NonceStore(tmpdir / "nonces.sqlite")
    processor = CommandProcessor(
        security, site="s", gateway="g", nonces=nonces, audit=audit, handlers=build_handlers(Targets())
    )
    answers: list[Event] = []

    async def emit(event: Event) -> None:
        answers.append(event)

    channel = CommandChannel(processor, emit)
    doc = orjson.loads(envelope.sign(key, "ops", "read_now", "s/g", {}))
    doc["sig"] = base64.b64encode(b"\x01" * 64).decode()
    payloads = []
    for i in range(FORGED):
        doc["nonce"] = f"{i:032x}"
        payloads.append(orjson.dumps(doc))
    started = time.perf_counter()
    for payload in payloads:
        await channel("read_now", payload)
    elapsed = time.perf_counter() - started
    lines = len((tmpdir / "audit.log").read_bytes().splitlines())
    audit.close()
    nonces.close()
    return FORGED / elapsed, len(answers), lines


def _depth_check_ms() -> float:
    """The pre-parse size/depth check on the worst 512 KiB payloads found (brackets only)."""
    worst = 0.0
    for payload in (b"[]" * (256 * 1024), b"[" * (512 * 1024), b'["' * (256 * 1024)):
        started = time.perf_counter()
        for _ in range(5):
            envelope.nesting_depth_exceeds(payload, 32)
        worst = max(worst, (time.perf_counter() - started) / 5 * 1000)
    return worst


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _huge_commands(tmpdir: Path) -> list[tuple[int, float, float]]:
    """A real agent over MQTT 3.1.1 (no Maximum Packet Size) and a broker without max_packet_size:
    (size MB, peak RSS before, peak RSS after) per command size."""
    key = Ed25519PrivateKey.generate()
    extra = f'[[security.operators]]\nname = "ops"\npublic_key = "{_public(key)}"\ncommands = ["read_now"]\n'
    out = []
    with Mosquitto() as broker:
        config = write_config(tmpdir, broker_port=broker.port, devices="", extra=extra)
        config.write_text(config.read_text().replace("[uplink]\n", '[uplink]\nprotocol = "3.1.1"\n'))
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online")
            for size in SIZES_MB:
                before = _peak_rss_mb(agent.process.pid)
                drops = agent.status()["uplink"]["reconnects"]
                client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
                client.connect(broker.host, broker.port)
                client.loop_start()
                client.publish(
                    "water/test-site/gw-test/cmd/read_now", b"x" * (size * 2**20), qos=1
                ).wait_for_publish(60)
                client.disconnect()
                client.loop_stop()

                def reconnected(s: dict[str, Any], d: int = drops) -> bool:
                    return bool(s["uplink"]["reconnects"] > d and s["uplink"]["state"] == "online")

                agent.wait_status(reconnected, 60)
                out.append((size, before, _peak_rss_mb(agent.process.pid)))
            agent.stop()
    return out


def run(tmpdir: Path) -> list[dict[str, Any]]:
    rate, answers, lines = asyncio.run(_flood(tmpdir))
    figures = [
        figure("commands.forged_refused", rate, "commands/s", "reference (the run's flood: 40,000)"),
        figure("commands.forged_answers", answers, "answers", f"<= 60 of {FORGED} (the refusal budget)"),
        figure("commands.forged_audit_lines", lines, "lines", f"<= 61 of {FORGED}"),
        figure("commands.depth_check_512KiB", _depth_check_ms(), "ms", "reference (worst case found)"),
    ]
    for size, before, after in _huge_commands(tmpdir):
        figures.append(
            figure(
                f"agent.peak_rss_{size}MB_command", after, "MB", f"< 256 (MemoryMax); before it {before:.0f}"
            )
        )
    return figures


if __name__ == "__main__":
    run_alone(run)
