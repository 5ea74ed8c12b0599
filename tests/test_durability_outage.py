"""Outages and bad state, all real (firmware-sim PLC, `edge-agent run`, Mosquitto, a subscriber).

- The broker goes away for a while at a high reading rate and comes back: every committed seq of
  every stream reaches a persistent-session subscriber, nothing is missing, live rows were
  published while the backlog drained.
- A corrupt outbox file at start is quarantined (kept, renamed), a fresh one is used, the centre
  gets a `buffer_quarantined` alarm and data flows.
"""

from __future__ import annotations

import base64
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import Plant, running_plant
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    damage_sqlite_under_its_owner,
    demo_devices,
    outbox_last_seqs,
    skip_unless_soak,
    write_agent_config,
)
from water_edge.agent.assembly import EXIT_RESTART

pytestmark = pytest.mark.slow

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
OUTAGE_S = float(os.environ.get("OUTAGE_S", "10"))  # a backlog of ~90 rows (~8,000 readings): 2 leases


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=3) as running:
        yield running


def seqs(messages: list[Received]) -> dict[str, set[int]]:
    out: dict[str, set[int]] = defaultdict(set)
    for m in messages:
        if not m.topic.endswith("/status"):
            body = m.json()
            out[body["stream"]].add(body["seq"])
    return out


def outage_run(plant: Plant, tmp_path: Path, outage_s: float) -> dict[str, float]:
    broker = Mosquitto(persistence=True)
    broker.start()
    config = write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=demo_devices(plant.port, poll_interval_ms=50),
        uplink={"reconnect_max_s": 0.5},
    )
    sub = Subscriber(broker.host, broker.port, f"{TOPIC}/#", session=f"outage-{os.getpid()}").start()
    try:
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["readings_acked"] > 500, timeout=30)
            broker.stop()
            down_at = time.monotonic()
            during = agent.wait_status(lambda s: s["uplink"]["state"] != "online", timeout=10)
            assert during["uplink"]["last_error"]
            # Hold the outage for `outage_s` while readings keep coming in: the stimulus itself.
            time.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
            backlog = agent.status()["buffer"]
            broker.start()
            after = agent.wait_status(
                lambda s: s["uplink"]["state"] == "online" and s["buffer"]["rows"] < backlog["rows"] / 4,
                timeout=60,
            )
            assert agent.stop() == 0, agent.log()
        last = outbox_last_seqs(config.parent / "state" / "outbox.sqlite")
        sub.wait_until(
            lambda ms: all(set(range(1, n + 1)) <= seqs(ms).get(s, set()) for s, n in last.items()),
            timeout=60,
        )
    finally:
        sub.stop()
        broker.close()
    assert backlog["readings"] > 500 * outage_s, "readings kept coming in during the outage"
    assert after["uplink"]["published_live"] > 0
    return {"backlog_readings": backlog["readings"], "backlog_rows": backlog["rows"]}


def test_broker_outage_at_a_high_rate_loses_nothing(plant: Plant, tmp_path: Path) -> None:
    outage_run(plant, tmp_path, OUTAGE_S)


def event_of(messages: list[Received], kind: str) -> dict[str, Any]:
    """The first event of `kind` among the messages of the `events` stream."""
    return next(
        e for m in messages if m.topic.endswith("/events") for e in m.json()["events"] if e["kind"] == kind
    )


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_ten_minute_outage_soak(plant: Plant, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    skip_unless_soak(request.config)
    figures = outage_run(plant, tmp_path, float(os.environ.get("SOAK_OUTAGE_S", "600")))
    print(f"outage soak: {figures}")


def test_a_corrupt_outbox_is_quarantined_and_the_agent_runs(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # The signed-command nonce store on the same worn card is damaged too: it no longer keeps the
    # agent from starting (it refused to start before).
    operator = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
    security = {"operators": [{"name": "ops", "public_key": operator, "commands": ["read_now"]}]}
    config = write_agent_config(
        tmp_path, broker_port=mosquitto.port, devices=demo_devices(plant.port), security=security
    )
    state = config.parent / "state"
    state.mkdir()
    garbage = b"SQLite format 3\x00" + os.urandom(20_000)
    damaged_at = int(time.time())
    (state / "outbox.sqlite").write_bytes(garbage)
    (state / "nonces.sqlite").write_bytes(garbage)
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub, running_agent(config) as agent:
        # The buffer section is {} until the agent has measured its outbox once.
        status = agent.wait_status(
            lambda s: s["uplink"]["readings_acked"] > 0 and bool(s["buffer"]), timeout=30
        )
        messages = sub.wait_until(
            lambda ms: all(k in b"".join(m.payload for m in ms) for k in (b"buffer_q", b"nonce_store_q"))
        )
        assert agent.stop() == 0
    (nonces_kept,) = state.glob("nonces.sqlite.quarantined-*[0-9TZ]")
    assert nonces_kept.read_bytes() == garbage
    alarms = {
        e["kind"]: e
        for m in messages
        if m.topic.endswith("/events")
        for e in m.json()["events"]
        if e["kind"].endswith("_quarantined")
    }
    assert alarms["nonce_store_quarantined"]["severity"] == "alarm"
    assert alarms["nonce_store_quarantined"]["detail"]["moved_to"] == str(nonces_kept)
    # Commands are refused if issued up to the agent's start (the store's reset) plus the clock skew
    # allowed (60 s), not earlier, not for long: the time the alarm names is the last one refused.
    until = alarms["nonce_store_quarantined"]["detail"]["refuses_issued_until"]
    assert damaged_at + 60 <= until <= time.time() + 60
    (kept,) = state.glob("outbox.sqlite.quarantined-*[0-9TZ]")
    assert kept.read_bytes() == garbage
    assert status["buffer"]["quarantined"] == str(kept)
    alarm = event_of(messages, "buffer_quarantined")
    assert alarm["severity"] == "alarm"
    assert alarm["detail"]["moved_to"] == str(kept)


def test_an_outbox_damaged_under_the_running_agent_is_moved_aside_by_a_restart(
    plant: Plant, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    # Before, every append after the damage failed (counted, readings dropped past the memory
    # bound) for as long as the agent ran: the gateway collected nothing until someone restarted it.
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=demo_devices(plant.port))
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub:
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["readings_acked"] > 0, timeout=30)
            damage_sqlite_under_its_owner(agent.outbox, seed=11)
            # The agent stops itself with systemd's restart code (Restart=on-failure).
            assert agent.process.wait(timeout=60) == EXIT_RESTART
            assert "buffer.damaged_restarting" in agent.log()
            assert "Traceback" not in agent.log()  # an orderly stop, not a crash
        with running_agent(config) as again:  # what systemd does next
            # The buffer section is {} until the agent has measured its outbox once.
            status = again.wait_status(
                lambda s: s["uplink"]["readings_acked"] > 0 and bool(s["buffer"]), timeout=30
            )
            messages = sub.wait_until(lambda ms: b"buffer_quarantined" in b"".join(m.payload for m in ms))
            assert again.stop() == 0
    (kept,) = agent.outbox.parent.glob("outbox.sqlite.quarantined-*[0-9TZ]")
    assert status["buffer"]["quarantined"] == str(kept)
    alarm = event_of(messages, "buffer_quarantined")
    assert alarm["detail"]["moved_to"] == str(kept)
