"""Crash safety, all real: kill -9 the running `edge-agent run` at random moments, restart, repeat.

Set-up: the firmware-sim PLC polled fast, a persistent Mosquitto, and a persistent-session
subscriber standing for the centre. After the cycles the agent is stopped cleanly, which drains
the outbox. "Committed" is read from the outbox itself: `streams.last_seq` is the last seq ever
committed per stream (seqs are assigned in the committing transaction and never reissued), so
every seq from 1 to it must have reached the subscriber: no gap, whatever the kill interrupted.
Duplicates are allowed only within the in-flight window and the acknowledged rows whose delete was
still waiting (`ACK_BATCH_ROWS`) per restart (at-least-once).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.agent_proc import start_agent
from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.plant import Plant, running_plant
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    demo_devices,
    outbox_last_seqs,
    skip_unless_soak,
    write_agent_config,
)
from water_edge.agent.uplink.drain import ACK_BATCH_ROWS

pytestmark = pytest.mark.slow

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
WINDOW = 16


@pytest.fixture(scope="module")
def plant() -> Iterator[Plant]:
    with running_plant(seed=11) as running:
        yield running


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def seqs_by_stream(messages: list[Received]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for m in messages:
        if not m.topic.endswith("/status"):
            body = m.json()
            out[body["stream"]].append(body["seq"])
    return out


def run_crash_cycles(plant: Plant, tmp_path: Path, cycles: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    broker = Mosquitto(persistence=True)
    broker.start()
    config = write_agent_config(
        tmp_path,
        broker_port=broker.port,
        devices=demo_devices(plant.port, poll_interval_ms=50),
        uplink={"reconnect_max_s": 0.3, "max_inflight": WINDOW},
        buffer={"flush_interval_ms": 20},
    )
    sub = Subscriber(broker.host, broker.port, f"{TOPIC}/#", session=f"crash-{os.getpid()}").start()
    db = config.parent / "state" / "outbox.sqlite"
    kills = 0
    try:
        for _ in range(cycles):
            agent = start_agent(config)
            # A random moment: during start-up (opening the outbox, connecting), ingest,
            # publishing, or the drain of what the previous kill left behind. These sleeps are
            # the stimulus (when the kill lands), not a wait for something to assert.
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0.3, 1.5))
            else:
                agent.wait_status(lambda s: True, timeout=20)
                time.sleep(rng.uniform(0.05, 0.8))
            assert agent.process.poll() is None, agent.log()
            agent.kill()
            kills += 1
            assert integrity(db) == "ok"
        agent = start_agent(config)
        agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=20)
        assert agent.stop() == 0, agent.log()
        assert integrity(db) == "ok"
        last = outbox_last_seqs(db)
        messages = sub.wait_until(
            lambda ms: all(
                set(range(1, n + 1)) <= set(seqs_by_stream(ms).get(s, [])) for s, n in last.items()
            ),
            timeout=30,
        )
    finally:
        sub.stop()
        broker.close()
    got = seqs_by_stream(messages)
    duplicates = 0
    for stream, n in last.items():
        counts = Counter(got[stream])
        assert set(counts) == set(range(1, n + 1)), f"{stream}: gap or foreign seq"
        duplicates += sum(c - 1 for c in counts.values())
    assert duplicates <= (kills + 1) * (WINDOW + ACK_BATCH_ROWS) * len(last), duplicates
    assert last["pump-station"] > cycles, "the agent committed data between kills"
    return {"kills": kills, "duplicates": duplicates, **{f"seqs_{k}": v for k, v in last.items()}}


def test_kill_9_at_random_moments_loses_no_committed_reading(plant: Plant, tmp_path: Path) -> None:
    run_crash_cycles(plant, tmp_path, cycles=20, seed=20)


@pytest.mark.soak
@pytest.mark.timeout(7200)
def test_kill_9_soak(plant: Plant, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    skip_unless_soak(request.config)
    cycles = int(os.environ.get("CRASH_SOAK_CYCLES", "500"))
    figures = run_crash_cycles(plant, tmp_path, cycles=cycles, seed=500)
    print(f"crash soak: {figures}")
