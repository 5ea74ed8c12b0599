"""`edge-agent status`'s verdict where the walkthrough found it wrong, and the two documents
`status --json` prints (an agent's, and the one when no agent answers) against the published schema.

Before: a Sparkplug node held by its Primary Host's offline STATE (or by a host never heard from)
published nothing while `status` said `ok` and exited 0; and the `--json` answer without an agent
(`{"error", "verdict": {"state": "down"}}`) failed the schema with 15 errors.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.cli import edge_agent
from tests.support.sparkplug import PrimaryHost
from tests.support.testing import FAKE_DEVICE, write_agent_config
from tests.test_status_document import as_received, realistic_document
from water_edge.agent.status_document import SPARKPLUG_BIRTH_GRACE_S, StatusDocument
from water_edge.agent.uplink.sparkplug.health import SparkplugHealth
from water_edge.agent.uplink.state import ConnState

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "docs" / "status.schema.json").read_text())
EXIT_OK, EXIT_DEGRADED, EXIT_NOT_RUNNING = 0, 1, 2


def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    result = edge_agent("status", "-c", str(config), "--json")
    doc: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)  # every answer, whatever its verdict
    return result.returncode, doc


# -- the agent, a real Mosquitto, a Primary Host that says it is offline -------------------------------


def scada_node_config(tmp_path: Path, mosquitto: Mosquitto, group_id: str | None = None) -> Path:
    """A Sparkplug B node with a fake device, whose Primary Host is `scada`, in group `group_id`
    (by default its site)."""
    group = "" if group_id is None else f'group_id = "{group_id}"\n'
    return write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        devices=FAKE_DEVICE,
        uplink={"encoding": "sparkplug_b", "keepalive_s": 5},
        extra=f'[uplink.sparkplug]\nprimary_host_id = "scada"\n{group}',
    )


def test_a_node_held_by_its_offline_primary_host_is_degraded_until_the_host_comes(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = scada_node_config(tmp_path, mosquitto, group_id="north-plant")
    with PrimaryHost(mosquitto.host, mosquitto.port) as host:
        offline_ms = host.publish_state(False)  # retained: what the node finds when it connects
        with running_agent(config) as agent:
            agent.wait_status(
                lambda s: (
                    s["uplink"]["state"] == "online"
                    and s["uplink"]["sparkplug"]["host_state_ns"] is not None
                    and s["buffer"].get("rows", 0) >= 1
                )
            )
            code, doc = status_json(config)
            assert host.snapshot() == []  # indeed nothing was published
            assert doc["uplink"]["sparkplug"]["born"] is False
            assert doc["uplink"]["sparkplug"]["host_state_ns"] == offline_ms * 1_000_000
            assert code == EXIT_DEGRADED, doc["verdict"]
            (problem,) = doc["verdict"]["problems"]
            assert doc["verdict"]["state"] == "degraded"
            assert problem.startswith("waiting for Primary Host 'scada' (offline since "), problem
            assert "nothing is published, " in problem, problem
            assert " rows held in the outbox" in problem, problem
            assert "check that the host application" in problem, problem
            text = edge_agent("status", "-c", str(config))
            assert text.returncode == EXIT_DEGRADED
            assert "state    degraded: waiting for Primary Host 'scada' (offline since " in text.stdout

            host.publish_state(True)
            agent.wait_status(lambda s: s["uplink"]["sparkplug"]["born"])
            code, doc = status_json(config)
            assert (code, doc["verdict"]) == (EXIT_OK, {"state": "ok", "problems": []})
            agent.stop()


def test_a_node_that_never_heard_its_host_is_degraded_after_the_grace_period(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """From the agent's start until the host first comes online (no STATE at all)."""
    config = scada_node_config(tmp_path, mosquitto)
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["uplink"]["state"] == "online")
        code, doc = status_json(config)
        assert (code, doc["verdict"]["state"]) == (EXIT_OK, "ok")  # within the grace period
        agent.wait_status(lambda s: (s["uplink"]["online_for_s"] or 0) > SPARKPLUG_BIRTH_GRACE_S, 30)
        code, doc = status_json(config)
        assert code == EXIT_DEGRADED, doc["verdict"]
        (problem,) = doc["verdict"]["problems"]
        assert problem.startswith(
            "waiting for Primary Host 'scada': no valid STATE on spBv1.0/STATE/scada in "
        )
        assert "check that the host application runs with Primary Host ID 'scada'" in problem, problem
        agent.stop()


# -- the verdict's rule, on documents (the grace period) ---------------------------------------------


def sparkplug_document(
    *, born: bool, host_online: bool | None, host_state_ns: int | None, online_for_s: float | None,
    primary_host_id: str | None = "scada", last_error: str | None = None,
    state: ConnState = ConnState.ONLINE,
) -> StatusDocument:  # fmt: skip
    """The realistic document with every problem taken away and a Sparkplug uplink as given."""
    doc = realistic_document()
    sparkplug = SparkplugHealth(
        group_id="north-plant", edge_node_id="gw-02", primary_host_id=primary_host_id,
        host_online=host_online, born=born, bdseq=3, seq=None if not born else 7, births=int(born),
        rebirths=0, device_births=0, device_deaths=0, history_rows=0, history_keep_s=7.5,
        historical_rows=0, suppressed_dead=0, commands_rebirth=0, commands_refused=0,
        commands_unknown=0, commands_invalid=0, broker_retains=True, host_state_ns=host_state_ns,
    )  # fmt: skip
    uplink = dataclasses.replace(
        doc.uplink, state=state, connected=state is ConnState.ONLINE, broker="127.0.0.1:18831",
        last_error=last_error, online_for_s=online_for_s, sparkplug=sparkplug,
    )  # fmt: skip
    assert doc.buffer is not None
    return dataclasses.replace(
        doc,
        drivers=tuple(dataclasses.replace(d, state="up") for d in doc.drivers),
        uplink=uplink,
        buffer=dataclasses.replace(doc.buffer, quarantined=None),
    )


def verdict(doc: StatusDocument) -> dict[str, Any]:
    received = as_received(doc)
    jsonschema.validate(received, SCHEMA)
    result: dict[str, Any] = received["verdict"]
    return result


def test_a_born_node_is_ok() -> None:
    doc = sparkplug_document(born=True, host_online=True, host_state_ns=time.time_ns(), online_for_s=600.0)
    assert verdict(doc) == {"state": "ok", "problems": []}


def test_an_offline_host_is_a_problem_at_once() -> None:
    doc = sparkplug_document(born=False, host_online=False, host_state_ns=time.time_ns(), online_for_s=0.2)
    (problem,) = verdict(doc)["problems"]
    assert problem.startswith("waiting for Primary Host 'scada' (offline since ")
    assert "nothing is published, 1500 rows held in the outbox" in problem


@pytest.mark.parametrize("host_online", [False, True])
def test_a_host_not_heard_from_is_given_the_grace_period(host_online: bool) -> None:
    # Births wait for the host's STATE by design: right after CONNECT the retained STATE is on its
    # way, and with an online host the NBIRTH follows at once. Not within the grace period: a problem.
    within = sparkplug_document(
        born=False, host_online=host_online, host_state_ns=time.time_ns() if host_online else None,
        online_for_s=SPARKPLUG_BIRTH_GRACE_S - 1,
    )  # fmt: skip
    assert verdict(within) == {"state": "ok", "problems": []}
    past = dataclasses.replace(
        within, uplink=dataclasses.replace(within.uplink, online_for_s=SPARKPLUG_BIRTH_GRACE_S + 5)
    )
    (problem,) = verdict(past)["problems"]
    assert "nothing is published, 1500 rows held in the outbox" in problem
    if host_online:
        assert problem.startswith("Sparkplug node north-plant/gw-02 not born 15.0 s after connecting"), (
            problem
        )
    else:
        assert problem.startswith(
            "waiting for Primary Host 'scada': no valid STATE on spBv1.0/STATE/scada in 15.0 s"
        ), problem


def test_an_ignored_state_is_named_in_the_problem() -> None:
    why = "STATE of Primary Host scada ignored: Sparkplug 2.x text (3.0 wants JSON)"
    doc = sparkplug_document(
        born=False, host_online=False, host_state_ns=None, online_for_s=60.0, last_error=why
    )
    (problem,) = verdict(doc)["problems"]
    assert why in problem


def test_a_node_without_a_connection_has_the_uplinks_problem_only() -> None:
    doc = sparkplug_document(
        born=False, host_online=False, host_state_ns=time.time_ns(), online_for_s=None,
        state=ConnState.OFFLINE,
    )  # fmt: skip
    assert verdict(doc)["problems"] == ["uplink offline (127.0.0.1:18831)"]


def test_a_node_without_a_primary_host_not_born_past_the_grace_period_is_degraded() -> None:
    doc = sparkplug_document(
        born=False, host_online=None, host_state_ns=None, online_for_s=60.0, primary_host_id=None
    )
    (problem,) = verdict(doc)["problems"]
    assert problem.startswith("Sparkplug node north-plant/gw-02 not born 1 min 0 s after connecting")


# -- no agent: the `down` document -------------------------------------------------------------------


def test_the_answer_without_an_agent_matches_the_schema(tmp_path: Path) -> None:
    result = edge_agent("status", "--socket", str(tmp_path / "none.sock"), "--json")
    assert result.returncode == EXIT_NOT_RUNNING
    doc = json.loads(result.stdout)
    jsonschema.validate(doc, SCHEMA)
    assert doc["verdict"]["state"] == "down"
    assert doc["verdict"]["problems"] == [doc["error"]]


def test_the_schema_keeps_the_two_documents_apart() -> None:
    down = {"error": "no agent answers", "verdict": {"state": "down", "problems": ["no agent answers"]}}
    jsonschema.validate(down, SCHEMA)
    agent = as_received(realistic_document())
    for wrong in (
        down | {"extra": 1},  # the down document is closed too
        {"error": "x", "verdict": {"state": "ok", "problems": []}},  # an error is never ok
        agent | {"verdict": {"state": "down", "problems": ["x"]}},  # an agent's verdict is never down
        agent | {"error": "x"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, SCHEMA)
