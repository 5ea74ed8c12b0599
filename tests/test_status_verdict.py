"""`edge-agent status`'s verdict where the walkthrough found it wrong, and the two documents
`status --json` prints (an agent's, and the one when no agent answers) against the published schema.

Before: a Sparkplug node held by its Primary Host's offline STATE (or by a host never heard from)
published nothing while `status` said `ok` and exited 0; and the `--json` answer without an agent
(`{"error", "verdict": {"state": "down"}}`) failed the schema with 15 errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.cli import edge_agent
from tests.support.plant import running_plant
from tests.support.sparkplug import PrimaryHost
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    FAKE_DEVICE,
    STATUS_SCHEMA,
    free_port,
    write_agent_config,
)
from tests.test_status_document import as_received, realistic_document
from water_edge.agent.cli import format_status
from water_edge.agent.clock_sync import ClockHealth
from water_edge.agent.identity_keeper import CertificateHealth, CertState
from water_edge.agent.status_document import SPARKPLUG_BIRTH_GRACE_S, StatusDocument
from water_edge.agent.uplink.health import RefusedStream
from water_edge.agent.uplink.sparkplug.health import SparkplugHealth
from water_edge.agent.uplink.state import ConnState
from water_edge.sim.tcp_gateway import TcpGateway

EXIT_OK, EXIT_DEGRADED, EXIT_NOT_RUNNING = 0, 1, 2


def status_json(config: Path) -> tuple[int, dict[str, Any]]:
    result = edge_agent("status", "-c", str(config), "--json")
    doc: dict[str, Any] = json.loads(result.stdout)
    jsonschema.validate(doc, STATUS_SCHEMA)  # every answer, whatever its verdict
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


# -- the agent, a real Mosquitto whose ACL refuses the device's stream ----------------------------------


def test_a_stream_the_broker_refuses_is_degraded_naming_it_until_the_broker_takes_it(tmp_path: Path) -> None:
    """Before: the uplink online, the device's every row refused (PUBACK 0x87) and piling up in the
    outbox, none reaching the centre, and `status` said `ok`, exit 0."""
    prefix = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
    acl = tmp_path / "acl"
    acl.write_text(f"topic deny {prefix}/fake-plc\ntopic write {prefix}/#\ntopic read #\n")
    # The broker keeps the connection and answers each denied row 0x87, as on site (the suite's
    # Mosquitto queues no messages, and then drops the connection at each denied row).
    with Mosquitto(extra_config=f"acl_file {acl}\nmax_queued_messages 1000\n") as broker:
        config = write_agent_config(tmp_path, broker_port=broker.port, devices=FAKE_DEVICE)
        with running_agent(config) as agent:
            agent.wait_status(
                lambda s: s["uplink"]["state"] == "online" and s["uplink"]["held_back"] >= 3, 30
            )
            code, doc = status_json(config)
            assert code == EXIT_DEGRADED, doc["verdict"]
            assert doc["uplink"]["refused_streams"] == 1
            (refused,) = doc["uplink"]["refusals"]
            assert (refused["stream"], refused["topic"]) == ("fake-plc", f"{prefix}/fake-plc")
            assert refused["reason"] == "Not authorized (0x87)"
            (problem,) = doc["verdict"]["problems"]
            assert problem.startswith("broker refuses stream fake-plc (Not authorized (0x87)): "), problem
            held = int(problem.split(": ")[1].split(" rows held back in the outbox")[0])
            assert held >= 3, problem
            assert problem.endswith(" rows held back in the outbox, tried again with backoff"), problem
            text = edge_agent("status", "-c", str(config))
            assert text.returncode == EXIT_DEGRADED
            assert (
                "state    degraded: broker refuses stream fake-plc (Not authorized (0x87)): " in text.stdout
            )

            acl.write_text(f"topic write {prefix}/#\ntopic read #\n")
            broker.reload()
            agent.wait_status(lambda s: s["uplink"]["refused_streams"] == 0 and s["uplink"]["acked"] > 0, 30)
            code, doc = status_json(config)
            assert (code, doc["verdict"]) == (EXIT_OK, {"state": "ok", "problems": []})
            assert doc["uplink"]["refusals"] == []
            agent.stop()


# -- the agent, a sim PLC behind a Modbus TCP gateway that answers from its cache ----------------------


@contextlib.contextmanager
def gateway_in_a_thread(plc_port: int) -> Iterator[tuple[TcpGateway, int]]:
    """firmware-sim's `TcpGateway` in front of the PLC, served by its own event loop in a thread
    (the agent is a subprocess the test waits on)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    gateway = TcpGateway("127.0.0.1", plc_port)
    try:
        port = asyncio.run_coroutine_threadsafe(gateway.start("127.0.0.1", free_port()), loop).result(10)
        yield gateway, port
    finally:
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_device_whose_values_froze_is_degraded_naming_it_until_they_move(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Before: `VALUES FROZEN` on the device's line, its readings stored uncertain, and `status`
    said `ok`, exit 0."""
    devices = """
[[devices]]
name = "station"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {port}
poll_interval_ms = 100
frozen_after_s = 1.5

  [[devices.tags]]
  name = "pump1.flow"
  address = 100
  type = "float32"

  [[devices.tags]]
  name = "pump1.motor_current"
  address = 106
  type = "float32"
"""
    with running_plant() as plant, gateway_in_a_thread(plant.port) as (gateway, port):
        config = write_agent_config(tmp_path, broker_port=mosquitto.port, devices=devices.format(port=port))
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online" and s["drivers"][0]["polls"] >= 20)
            code, doc = status_json(config)
            assert (code, doc["verdict"]) == (EXIT_OK, {"state": "ok", "problems": []})

            gateway.answer_from_cache = True
            agent.wait_status(lambda s: s["drivers"][0]["values_frozen_for_s"] is not None)
            code, doc = status_json(config)
            assert code == EXIT_DEGRADED, doc["verdict"]
            (problem,) = doc["verdict"]["problems"]
            assert problem.startswith("device station values frozen "), problem
            assert problem.endswith(" (held upstream?): its readings are stored uncertain"), problem
            text = edge_agent("status", "-c", str(config))
            assert text.returncode == EXIT_DEGRADED
            assert "state    degraded: device station values frozen " in text.stdout

            gateway.answer_from_cache = False
            agent.wait_status(lambda s: s["drivers"][0]["values_frozen_for_s"] is None)
            code, doc = status_json(config)
            assert (code, doc["verdict"]) == (EXIT_OK, {"state": "ok", "problems": []})
            agent.stop()


# -- the verdict's rule, on documents -----------------------------------------------------------------


def quiet_document() -> StatusDocument:
    """The realistic document with every problem taken away: every device up, the uplink online,
    the outbox not quarantined."""
    doc = realistic_document()
    assert doc.buffer is not None
    return dataclasses.replace(
        doc,
        drivers=tuple(dataclasses.replace(d, state="up", last_error=None) for d in doc.drivers),
        uplink=dataclasses.replace(doc.uplink, state=ConnState.ONLINE, connected=True, last_error=None),
        buffer=dataclasses.replace(doc.buffer, quarantined=None),
    )


def refusing(doc: StatusDocument, *streams: tuple[str, int]) -> StatusDocument:
    refusals = tuple(
        RefusedStream(name, f"water/plant-north/gw-03/{name}", "Not authorized (0x87)", held)
        for name, held in streams
    )
    uplink = dataclasses.replace(
        doc.uplink, refused_streams=len(refusals), held_back=sum(h for _, h in streams), refusals=refusals
    )
    return dataclasses.replace(doc, uplink=uplink)


def unsynchronised_clock() -> ClockHealth:
    return ClockHealth(
        source="adjtimex", synchronised=False, offset_ms=None, maxerror_ms=None, error=None,
        synchronised_ns=None, marked_readings=516, restamped_readings=0, restamped_rows=0,
    )  # fmt: skip


def test_the_quiet_document_is_ok() -> None:
    assert verdict(quiet_document()) == {"state": "ok", "problems": []}


def test_a_refused_stream_is_a_problem_naming_it_and_its_rows() -> None:
    doc = refusing(quiet_document(), ("pump-station", 71))
    assert verdict(doc) == {
        "state": "degraded",
        "problems": [
            "broker refuses stream pump-station (Not authorized (0x87)): 71 rows held back in the outbox, "
            "tried again with backoff"
        ],
    }
    lines = format_status(as_received(doc)).splitlines()
    assert lines[2].startswith(
        "state    degraded: broker refuses stream pump-station (Not authorized (0x87))"
    )


def test_several_refused_streams_are_one_problem_naming_the_first_five() -> None:
    doc = refusing(quiet_document(), *((f"well-{i}", i) for i in range(1, 8)))
    (problem,) = verdict(doc)["problems"]
    assert problem == (
        "broker refuses 7 streams (Not authorized (0x87)): 28 rows held back in the outbox "
        "(well-1 1, well-2 2, well-3 3, well-4 4, well-5 5, 2 more), tried again with backoff"
    )


def test_a_refused_stream_whose_rows_are_not_leased_yet_is_still_a_problem() -> None:
    # Right after a reconnection nothing of it is held in memory yet: its rows are in the outbox.
    (problem,) = verdict(refusing(quiet_document(), ("plc2", 0)))["problems"]
    assert problem == (
        "broker refuses stream plc2 (Not authorized (0x87)): its rows are kept in the outbox, "
        "tried again with backoff"
    )


def test_values_frozen_is_a_problem_naming_the_device() -> None:
    doc = quiet_document()
    frozen = dataclasses.replace(doc.drivers[0], values_frozen_since_ns=1, values_frozen_for_s=312.0)
    doc = dataclasses.replace(doc, drivers=(frozen, *doc.drivers[1:]))
    assert verdict(doc) == {
        "state": "degraded",
        "problems": [
            "device pump-station values frozen 5 min 12 s (held upstream?): its readings are stored uncertain"
        ],
    }


def test_a_device_down_is_down_not_frozen() -> None:
    doc = quiet_document()
    down = dataclasses.replace(
        doc.drivers[0], state="down", values_frozen_since_ns=1, values_frozen_for_s=312.0
    )
    doc = dataclasses.replace(doc, drivers=(down, *doc.drivers[1:]))
    assert verdict(doc)["problems"] == ["device pump-station is down"]


@pytest.mark.parametrize(
    ("part", "problem"),
    [
        ("quarantined", "corrupt outbox quarantined to /var/lib/edge-agent/outbox.sqlite.quarantined-1"),
        ("clock", "clock not synchronised: readings are marked uncertain until NTP syncs"),
        ("expiring", "device certificate expires 2030-03-17 17:46:40 UTC and is not renewed yet"),
        ("expired", "device certificate expired 2030-03-17 17:46:40 UTC: the broker will refuse it"),
        ("full", "outbox 93 % full"),
        ("stalled", "stalled: uplink"),
    ],
)
def test_each_documented_condition_is_degraded(part: str, problem: str) -> None:
    """The conditions docs/status.md lists beside those above (a device down, the uplink not
    online, a Sparkplug node not born: tested on their own)."""
    doc = quiet_document()
    buffer, watchdog = doc.buffer, doc.watchdog
    assert buffer is not None
    assert watchdog is not None
    if part == "quarantined":
        doc = dataclasses.replace(
            doc, buffer=dataclasses.replace(buffer, quarantined=problem.split(" to ")[1])
        )
    elif part == "clock":
        doc = dataclasses.replace(doc, clock=unsynchronised_clock())
    elif part in ("expiring", "expired"):
        state: CertState = "expiring" if part == "expiring" else "expired"
        cert = CertificateHealth(state, "CN=gw-03", 0, 1_900_000_000 * 10**9, None, 0, 0, None)
        doc = dataclasses.replace(doc, certificate=cert)
    elif part == "full":
        doc = dataclasses.replace(doc, buffer=dataclasses.replace(buffer, used_pct=93.0))
    else:
        doc = dataclasses.replace(doc, watchdog=dataclasses.replace(watchdog, stalled=("uplink",)))
    assert verdict(doc) == {"state": "degraded", "problems": [problem]}


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
    jsonschema.validate(received, STATUS_SCHEMA)
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
    jsonschema.validate(doc, STATUS_SCHEMA)
    assert doc["verdict"]["state"] == "down"
    assert doc["verdict"]["problems"] == [doc["error"]]


def test_the_schema_keeps_the_two_documents_apart() -> None:
    down = {"error": "no agent answers", "verdict": {"state": "down", "problems": ["no agent answers"]}}
    jsonschema.validate(down, STATUS_SCHEMA)
    agent = as_received(realistic_document())
    for wrong in (
        down | {"extra": 1},  # the down document is closed too
        {"error": "x", "verdict": {"state": "ok", "problems": []}},  # an error is never ok
        agent | {"verdict": {"state": "down", "problems": ["x"]}},  # an agent's verdict is never down
        agent | {"error": "x"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(wrong, STATUS_SCHEMA)
