"""The agent's log is one format: library messages (pymodbus, asyncua) come through the agent's own
structured logging, never as bare lines between the JSON ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent
from tests.support.plant import running_plant
from tests.support.testing import demo_devices, free_port, write_agent_config
from water_edge.core import logs


def test_a_plc_that_refuses_leaves_only_json_lines_in_the_agent_log(tmp_path: Path) -> None:
    config = write_agent_config(tmp_path, devices=demo_devices(free_port(), poll_interval_ms=200))
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["failures"] >= 3)
        assert agent.stop() == 0
        lines = [line for line in agent.log().splitlines() if line.strip()]
    events = [json.loads(line) for line in lines]  # a bare "Failed to connect" line fails here
    assert any(e["event"] == "driver.down" for e in events)
    assert not any("Failed to connect" in e["event"] for e in events), "pymodbus repeats driver.down"


def test_library_records_take_the_agents_format_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", json=True)
    logging.getLogger("asyncua.client.ua_client").warning("Revised values %s differ", 5)
    logging.getLogger("asyncua.client.ua_client").debug("chatter")
    logging.getLogger("pymodbus.logging").error("Failed to connect [Errno 111]")
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert (record["event"], record["logger"], record["level"]) == (
        "Revised values 5 differ",
        "asyncua.client.ua_client",
        "warning",
    )
    logs.configure("debug", json=True)
    logging.getLogger("pymodbus.logging").debug("Repeating....")
    assert json.loads(capsys.readouterr().err)["event"] == "Repeating...."


def test_asyncua_narration_is_kept_for_debug_and_its_warnings_always(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # At info, asyncua logged each connection step, one record with the server's whole certificate.
    logs.configure("info", json=True)
    logging.getLogger("asyncua.client.client").info("find_endpoint [EndpointDescription(...)]")
    logging.getLogger("asyncua.client.ua_session.UaSession").info("browse")
    logging.getLogger("asyncua.common.subscription").warning("Subscription lost")
    (line,) = capsys.readouterr().err.splitlines()
    assert json.loads(line)["event"] == "Subscription lost"
    logs.configure("debug", json=True)
    logging.getLogger("asyncua.client.client").info("find_endpoint [EndpointDescription(...)]")
    assert json.loads(capsys.readouterr().err)["event"] == "find_endpoint [EndpointDescription(...)]"


def test_an_opcua_server_lost_is_reported_once_not_as_asyncua_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # asyncua logged a traceback at error level from its publish loop at each loss, and a warning
    # per teardown step at every reconnect attempt while the server was away (for ever).
    monkeypatch.setenv("EDGE_SIM_OPCUA_PORT", "0")
    (tmp_path / "plant").mkdir()
    with running_plant(components="opcua", workdir=tmp_path / "plant") as plant:
        device = {
            "name": "ua", "kind": "opcua", "endpoint": str(plant.endpoints["opcua"]["url"]),
            "mode": "subscribe", "publishing_interval_ms": 200, "request_timeout_ms": 1000,
            "tags": [{"name": "pump1.flow", "path": "PumpStation/Pump1/Flow"}],
        }  # fmt: skip
        config = write_agent_config(tmp_path, devices=[device])
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["drivers"][0]["state"] == "up", timeout=30)
            plant.kill()
            agent.wait_status(lambda s: s["drivers"][0]["failures"] >= 4, timeout=60)
            assert agent.stop() == 0
            events = [json.loads(line) for line in agent.log().splitlines() if line.strip()]
    lost = [e for e in events if e["event"] == "opcua.connection_lost"]
    assert len(lost) == 1, lost
    from_asyncua = [e for e in events if e.get("logger", "").startswith("asyncua")]
    assert not [e for e in from_asyncua if e["level"] == "error" or "exception" in e], from_asyncua
    assert not [e for e in from_asyncua if "connection is closed" in e["event"]], from_asyncua


def test_asyncua_records_of_a_lost_connection_are_heard_at_debug_and_others_always(
    capsys: pytest.CaptureFixture[str],
) -> None:
    session = logging.getLogger("asyncua.client.ua_session.UaSession")
    for level in ("info", "debug"):
        logs.configure(level, json=True)
        try:
            raise ConnectionError("Connection is closed")
        except ConnectionError:
            session.exception("Publish iteration crashed; retrying in 1s")
        session.warning("close_session was called but connection is closed")
        try:
            raise ValueError("a server's answer this client cannot read")
        except ValueError:
            session.exception("Publish iteration crashed; retrying in 1s")
        events = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        kept = [("ValueError" in e.get("exception", ""), e["event"]) for e in events]
        if level == "info":
            assert kept == [(True, "Publish iteration crashed; retrying in 1s")]
        else:
            assert len(kept) == 3
