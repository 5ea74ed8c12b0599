"""The uplink's small parts on their own: connection state, command inbox, metrics, typed health."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.support.testing import eventually
from water_edge.agent.uplink.commands import CommandInbox
from water_edge.agent.uplink.health import CommandStats, UplinkHealth
from water_edge.agent.uplink.metrics import RATE_WINDOW_S, UplinkMetrics
from water_edge.agent.uplink.state import ConnectionState, ConnState
from water_edge.agent.uplink.topics import Topics
from water_edge.core.errors import UplinkError
from water_edge.core.health import Health, health_json

TOPICS = Topics("water", "s1", "gw1")
CMD = "water/s1/gw1/cmd"

# The keys of `health()` before it was typed; scripts and monitoring read them.
KEYS_BEFORE = [
    "state", "connected", "broker", "client_id", "published", "acked", "readings_acked", "inflight",
    "reconnects", "refused", "rejected", "encode_errors", "ack_errors", "last_error", "last_ack_ns",
    "ack_rate_msg_s", "ack_rate_readings_s", "backlog_upto_id", "published_live", "published_backlog",
    "commands",
]  # fmt: skip


# ---------------------------------------------------------------------- connection state


def test_transitions_call_the_hook_once_per_change() -> None:
    seen: list[ConnState] = []
    state = ConnectionState(seen.append)
    assert (state.state, state.last_error, state.last_error_ns) == (ConnState.IDLE, None, None)
    for s in (ConnState.CONNECTING, ConnState.CONNECTING, ConnState.ONLINE, ConnState.STOPPING):
        state.to(s)
    state.to(ConnState.STOPPED)
    assert seen == ["connecting", "online", "stopping", "stopped"]


def test_a_failure_keeps_its_reason_beside_the_state_and_the_hook_already_sees_it() -> None:
    seen: list[tuple[ConnState, str | None]] = []
    state = ConnectionState(lambda s: seen.append((s, state.last_error)))
    state.to(ConnState.CONNECTING)
    state.fail(ConnState.REFUSED, "Not authorized")
    assert seen[-1] == (ConnState.REFUSED, "Not authorized")
    assert state.state == "refused"
    assert state.last_error_ns is not None
    first_ns = state.last_error_ns
    state.to(ConnState.CONNECTING)
    assert state.last_error == "Not authorized", "the last error stays until a newer one"
    state.fail(ConnState.TLS_ERROR, "certificate verify failed")
    assert (state.state, state.last_error) == ("tls-error", "certificate verify failed")
    assert state.last_error_ns >= first_ns


def test_an_error_without_a_state_change() -> None:
    state = ConnectionState()
    state.to(ConnState.CONNECTING)
    state.to(ConnState.ONLINE)
    state.error("outbox ack failed: disk I/O error")
    assert (state.state, state.last_error) == ("online", "outbox ack failed: disk I/O error")


@pytest.mark.parametrize(
    ("path", "bad"),
    [
        ((), ConnState.ONLINE),
        ((ConnState.CONNECTING, ConnState.ONLINE), ConnState.CONNECTING),
        ((ConnState.CONNECTING, ConnState.OFFLINE), ConnState.ONLINE),
        ((ConnState.CONNECTING, ConnState.ONLINE, ConnState.STOPPING), ConnState.ONLINE),
    ],
)
def test_an_unexpected_transition_is_a_bug_and_raises(path: tuple[ConnState, ...], bad: ConnState) -> None:
    state = ConnectionState()
    for s in path:
        state.to(s)
    with pytest.raises(UplinkError, match="cannot go from"):
        state.to(bad)
    state.to(ConnState.STOPPED)  # always allowed: run() ends there however it ends


def test_fail_takes_only_a_failure_state() -> None:
    state = ConnectionState()
    state.to(ConnState.CONNECTING)
    with pytest.raises(UplinkError, match="not a failure state"):
        state.fail(ConnState.ONLINE, "nope")


# ---------------------------------------------------------------------- command inbox


async def never(_suffix: str, _payload: bytes) -> None:
    await asyncio.Event().wait()


def test_oversized_payloads_and_foreign_topics_are_rejected_and_counted() -> None:
    inbox = CommandInbox(TOPICS, never, max_bytes=10)
    assert inbox.offer(f"{CMD}/reboot", b"x" * 10)
    assert not inbox.offer(f"{CMD}/reboot", b"x" * 11)
    assert not inbox.offer(f"{CMD}x", b"{}")
    assert not inbox.offer(f"{CMD}/", b"{}")
    assert inbox.stats() == CommandStats(received=4, rejected=3)
    assert inbox.queued == 1


def test_a_full_queue_drops_and_counts() -> None:
    inbox = CommandInbox(TOPICS, never, size=2)
    assert [inbox.offer(f"{CMD}/n{i}", b"") for i in range(4)] == [True, True, False, False]
    assert inbox.stats() == CommandStats(received=4, dropped=2)
    assert inbox.queued == 2


async def test_the_worker_runs_commands_in_order_and_survives_failures_and_timeouts() -> None:
    done: list[str] = []

    async def handler(suffix: str, payload: bytes) -> None:
        if suffix == "slow":
            await asyncio.Event().wait()
        if suffix == "bad":
            raise RuntimeError("handler bug")
        done.append(f"{suffix}:{payload.decode()}")

    inbox = CommandInbox(TOPICS, handler, timeout_s=0.05)
    for suffix in ("a", "bad", "slow", "b/c"):
        inbox.offer(f"{CMD}/{suffix}", b"1")
    worker = asyncio.create_task(inbox.run())
    try:
        await eventually(lambda: inbox.stats().handled + inbox.stats().failed == 4, within_s=2)
    finally:
        worker.cancel()
    assert done == ["a:1", "b/c:1"]
    assert inbox.stats() == CommandStats(received=4, handled=2, failed=2)


# ---------------------------------------------------------------------- metrics and health


def test_the_ack_rate_is_taken_over_the_window() -> None:
    now = [100.0]
    metrics = UplinkMetrics(clock=lambda: now[0])
    assert metrics.rates() == (0.0, 0.0)
    metrics.acks_deleted()
    assert metrics.rates() == (0.0, 0.0), "one sample is no rate"
    metrics.acked, metrics.readings_acked = 20, 200
    now[0] += 2.0
    metrics.acks_deleted()
    assert metrics.rates() == (10.0, 100.0)
    assert metrics.last_ack_ns is not None
    metrics.acked, metrics.readings_acked = 30, 300
    now[0] += RATE_WINDOW_S
    metrics.acks_deleted()  # the first sample falls out of the window
    assert metrics.rates() == (1.0, 10.0)


def health(**changes: object) -> UplinkHealth:
    fields: dict[str, object] = dict.fromkeys(KEYS_BEFORE, 0)
    fields.update(
        state=ConnState.ONLINE,
        connected=True,
        broker="127.0.0.1:1883",
        client_id="edge-s1-gw1",
        last_error=None,
        last_error_ns=None,
        last_ack_ns=None,
        ack_rate_msg_s=0.0,
        ack_rate_readings_s=0.0,
        commands=None,
    )
    fields.update(changes)
    return UplinkHealth(**fields)  # type: ignore[arg-type]


def test_health_json_has_the_keys_it_always_had_plus_the_error_time_failover_and_sparkplug() -> None:
    doc = orjson.loads(orjson.dumps(health_json(health(commands=CommandStats(received=1)))))
    added = ["last_error_ns", "servers", "server_index", "failovers", "sparkplug", "connections",
             "online_since_ns", "down_since_ns", "online_for_s", "down_for_s", "last_error_age_s",
             "last_ack_age_s", "refused_streams", "held_back", "refusals", "taken_over",
             "ack_timeouts", "retained_status"]  # fmt: skip
    assert sorted(doc) == sorted([*KEYS_BEFORE, *added])
    assert doc["state"] == "online"
    assert doc["commands"] == {"received": 1, "handled": 0, "dropped": 0, "rejected": 0, "failed": 0}
    assert health_json(health())["commands"] is None


def test_health_renders_its_own_line_with_the_reason() -> None:
    h = health(state=ConnState.REFUSED, connected=False, published=7, acked=5, inflight=2, reconnects=3,
               last_error="Not authorized", last_error_age_s=4.2)  # fmt: skip
    assert isinstance(h, Health)
    assert h.status_lines() == [
        "refused  127.0.0.1:1883  never connected, 4 attempts  error 4.2 s ago: Not authorized",
        "published 7  acked 5  in flight 2  last ack never",
    ]
    assert h.summary() == "refused: Not authorized"
    assert health(last_error="old trouble").summary() == "online"
    online = health(connections=3, online_for_s=192.0, published=9, acked=9, last_ack_age_s=0.4)
    assert online.status_lines() == [
        "online  127.0.0.1:1883  for 3 min 12 s",
        "published 9  acked 9  in flight 0  last ack 0.4 s ago  reconnected 2 times",
    ]
    lost = health(state=ConnState.OFFLINE, connections=1, down_for_s=75.0, last_error="connection lost",
                  last_error_age_s=75.0)  # fmt: skip
    assert (
        lost.status_lines()[0]
        == "offline  127.0.0.1:1883  down 1 min 15 s  error 1 min 15 s ago: connection lost"
    )


def test_an_error_is_the_current_states_and_goes_when_the_connection_comes_online() -> None:
    state = ConnectionState()
    state.to(ConnState.CONNECTING)
    state.fail(ConnState.OFFLINE, "connection refused")
    assert (state.last_error, state.connections) == ("connection refused", 0)
    assert state.down_since_ns is not None
    assert state.online_since_ns is None
    state.to(ConnState.CONNECTING)
    state.to(ConnState.ONLINE)
    assert (state.last_error, state.last_error_ns, state.connections) == (None, None, 1)
    assert state.online_since_ns is not None
    assert state.down_since_ns is None
    state.fail(ConnState.OFFLINE, "connection lost: Keep alive timeout")
    assert state.last_error == "connection lost: Keep alive timeout"
    assert state.down_since_ns is not None
    assert state.online_since_ns is None
