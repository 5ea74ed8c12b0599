"""SIGHUP to the real agent: `systemctl reload` (ExecReload) and a terminal that goes away. Before,
it killed the agent outright: no drain, no `agent_stopped`, the broker's Will saying `lost`."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Subscriber
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, FAKE_DEVICE, wait_until, write_agent_config
from water_edge.agent.assembly import EXIT_RESTART

TOPIC = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"


def test_sighup_with_a_loading_config_stops_cleanly_and_exits_for_a_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=FAKE_DEVICE)
    with Subscriber(mosquitto.host, mosquitto.port, f"{TOPIC}/#") as sub, running_agent(config) as agent:
        agent.wait_status(lambda s: s["uplink"]["state"] == "online")
        agent.process.send_signal(signal.SIGHUP)
        assert agent.process.wait(30) == EXIT_RESTART
        # The retained offline status is the stop's last message, after agent_stopped: wait for both.
        got = sub.wait_until(
            lambda ms: (
                any(b'"agent_stopped"' in m.payload for m in ms)
                and any(m.topic == f"{TOPIC}/status" and m.json()["state"] == "offline" for m in ms)
            ),
            timeout=10,
        )
        retained = [m.json() for m in got if m.topic == f"{TOPIC}/status"]
        log = agent.log()
    assert retained[-1]["state"] == "offline"
    assert retained[-1].get("reason") != "lost"  # the Will's: not a clean stop
    assert "agent.reload_restarting" in log
    assert not agent.socket.exists()


def test_sighup_with_a_broken_config_is_refused_and_the_agent_runs_on(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, devices=FAKE_DEVICE)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["polls"] >= 1)
        config.write_text(config.read_text() + "\n[uplink]\nport = 'eighty'\n")  # edited, half done
        agent.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "agent.reload_refused" in agent.log() or None, 15, what=agent.log)
        polls = agent.status()["drivers"][0]["polls"]
        agent.wait_status(lambda s: s["drivers"][0]["polls"] > polls)  # still polling
        refused = next(line for line in agent.log().splitlines() if "agent.reload_refused" in line)
        assert str(config) in refused
        assert agent.stop() == 0
