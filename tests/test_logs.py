"""The agent's log is one format: library messages (pymodbus, asyncua) come through the agent's own
structured logging, never as bare lines between the JSON ones."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tests.support.agent_proc import running_agent
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
