"""A remote config change is applied live when it can be: the running agent takes a new poll rate
without a restart, keeping its outbox (same database, its rows, the sequence going on) and its
broker connection; a change that needs a restart says so and restarts. `plan_changes` decides."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher, Subscriber
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, agent_config, status_socket_for
from water_edge.agent.assembly import EXIT_RESTART
from water_edge.agent.config import load_config
from water_edge.agent.live_config import plan_changes
from water_edge.agent.update.bundle import public_key_text
from water_edge.core import envelope

BASE = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"


def _device(poll_ms: int, **more: Any) -> dict[str, Any]:
    return {"name": "plc", "kind": "fake", "poll_interval_ms": poll_ms, "tags": [{"name": "flow"}], **more}


def _write(path: Path, **kwargs: Any) -> Path:
    kwargs.setdefault("status_socket", path.parent / "status.sock")
    path.write_text(agent_config(path.parent / "state", broker_port=1883, **kwargs))
    return path


def test_the_plan_sorts_every_change_into_live_or_restart(tmp_path: Path) -> None:
    base = load_config(_write(tmp_path / "a.toml", devices=[_device(1000)]))

    def plan(**kwargs: Any) -> Any:
        return plan_changes(base, load_config(_write(tmp_path / "b.toml", **kwargs)))

    same = plan(devices=[_device(1000)])
    assert same.unchanged
    assert not same.needs_restart
    faster = plan(devices=[_device(250)])
    assert faster.live == ("devices[plc].poll_interval_ms: 1000 -> 250",)
    assert not faster.needs_restart
    assert faster.poll_intervals == {"plc": 250}
    assert plan(devices=[_device(1000)], buffer={"flush_interval_ms": 300}).restart == ("buffer",)
    assert plan(devices=[_device(1000)], extra='[log]\nlevel = "debug"\n').restart == ("log",)
    # A mixed change is a restart, never half applied.
    mixed = plan(devices=[_device(250, tags=[{"name": "flow"}, {"name": "head"}])])
    assert mixed.restart == ("devices[plc]",)
    assert plan(devices=[_device(1000), {**_device(1000), "name": "plc2"}]).needs_restart
    # A streaming driver keeps its own rate (OPC UA's fallback polling): not live.
    streamed = plan_changes(
        base, load_config(_write(tmp_path / "c.toml", devices=[_device(250)])), streaming=frozenset({"plc"})
    )
    assert streamed.restart == ("devices[plc].poll_interval_ms (a streaming driver)",)


def test_a_config_with_a_warning_still_takes_a_new_poll_rate_live(tmp_path: Path) -> None:
    # The warnings name the file they were read from, and a config_update's candidate is another
    # file than the live one: every change of a config with a warning was a restart.
    spare = {**_device(1000), "name": "spare", "enabled": False, "tags": [{"name": "head"}]}
    pump = {"pump": [{"name": "p1", "signals": {"flow": "spare/head"}}]}
    live = load_config(_write(tmp_path / "agent.toml", devices=[_device(1000), spare], models=pump))
    assert live.warnings
    candidate = load_config(
        _write(tmp_path / ".agent.toml.candidate", devices=[_device(250), spare], models=pump)
    )
    plan = plan_changes(live, candidate)
    assert plan.restart == ()
    assert plan.live == ("devices[plc].poll_interval_ms: 1000 -> 250",)


async def test_a_new_poll_rate_is_applied_live_and_the_outbox_keeps_its_rows(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    operator = Ed25519PrivateKey.generate()
    security = (
        "[[security.operators]]\n"
        f'name = "ops"\npublic_key = "{public_key_text(operator)}"\ncommands = ["config_update"]\n'
    )
    state = tmp_path / "state"
    settings: dict[str, Any] = {
        "broker_port": mosquitto.port,
        "status_socket": status_socket_for(state),
        "security": security,
    }
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(state, devices=[_device(500)], **settings))

    def send(pub: Publisher, text: str, command_id: str) -> None:
        signed = envelope.sign(
            operator, "ops", "config_update", f"{AGENT_SITE}/{AGENT_GATEWAY}", {"config": text},
            command_id=command_id,
        )  # fmt: skip
        pub.publish(f"{BASE}/cmd/config_update", signed)

    def result(sub: Subscriber, command_id: str) -> dict[str, Any] | None:
        for msg in sub.snapshot():
            if msg.topic == f"{BASE}/events":
                for e in msg.json()["events"]:
                    if e["kind"] == "command_result" and e["detail"]["id"] == command_id:
                        return dict(e["detail"])
        return None

    with (
        Subscriber(mosquitto.host, mosquitto.port, f"{BASE}/#") as sub,
        Publisher(mosquitto.host, mosquitto.port) as pub,
        running_agent(config) as agent,
    ):
        before = await asyncio.to_thread(
            agent.wait_status,
            lambda s: s["uplink"]["state"] == "online" and s["pipeline"]["committed_readings"] >= 3,
        )
        outbox_inode = agent.outbox.stat().st_ino
        send(pub, agent_config(state, devices=[_device(50)], **settings), "faster")
        await sub.wait_until_async(lambda _m: result(sub, "faster") is not None)
        done = result(sub, "faster")
        assert done is not None
        assert done["status"] == "ok", done
        assert done["result"]["applied"] == "live"
        assert done["result"]["restarting"] is False
        assert done["result"]["changes"] == ["devices[plc].poll_interval_ms: 500 -> 50"]
        # Polled at the new rate, by the same process, over the same connection, into the same outbox.
        polls = before["drivers"][0]["polls"]
        now = await asyncio.to_thread(agent.wait_status, lambda s: s["drivers"][0]["polls"] >= polls + 20)
        assert now["drivers"][0]["poll_interval_ms"] == 50
        assert now["agent"]["pid"] == before["agent"]["pid"]
        assert now["uplink"]["reconnects"] == before["uplink"]["reconnects"]
        assert agent.outbox.stat().st_ino == outbox_inode
        assert load_config(config).devices[0].poll_interval_ms == 50  # and it survives a restart

        # A change the running agent cannot take live restarts it, and says why.
        send(
            pub,
            agent_config(state, devices=[_device(50)], buffer={"flush_interval_ms": 300}, **settings),
            "flush",
        )
        await sub.wait_until_async(lambda _m: result(sub, "flush") is not None)
        done = result(sub, "flush")
        assert done is not None
        assert done["result"]["applied"] == "restart"
        assert done["result"]["restart_needed_by"] == ["buffer"]
        assert await asyncio.to_thread(agent.process.wait, 30) == EXIT_RESTART

    # Nothing committed was lost across the live change: every seq delivered or still queued.
    delivered = {m.json()["seq"] for m in sub.snapshot() if m.topic == f"{BASE}/plc"}
    with sqlite3.connect(agent.outbox) as db:
        queued = {seq for (seq,) in db.execute("SELECT seq FROM outbox WHERE stream = 'plc'")}
        (last,) = db.execute("SELECT last_seq FROM streams WHERE stream = 'plc'").fetchone()
    assert delivered | queued == set(range(1, last + 1))
