"""Running the MQTT uplink in a test: settings for a test broker, rows to send, the states it reports.

The `start_uplink` fixture (tests/conftest.py) runs uplinks built from these and stops them all at
teardown; the fake-broker unit tests use `StateLog` and `reading_batches` without a broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.buffer.types import Batch
from water_edge.core.reading import Event, Reading

SITE = "site1"
GATEWAY = "gw1"


class BrokerAddress(Protocol):
    """Where a broker listens: a `Mosquitto`, or the address of a fake peer."""

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


def mqtt_config(broker: BrokerAddress, **overrides: Any) -> MqttConfig:
    """Uplink settings for a test broker: short backoff so outage tests stay fast."""
    settings: dict[str, Any] = {
        "host": broker.host,
        "port": broker.port,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "connect_timeout_s": 5.0,
    }
    settings.update(overrides)
    return MqttConfig(**settings)


def reading_batches(
    rows: int, streams: Sequence[str] = ("plc1",), per_row: int = 3, start_ns: int = 10**18
) -> list[Batch]:
    """`rows` batches, round-robin over `streams`, each with `per_row` readings (one bad)."""
    out = []
    for i in range(rows):
        stream = streams[i % len(streams)]
        readings = [
            Reading(stream, f"tag{j}", start_ns + i * 1000 + j, float(i) + j / 10, unit="bar")
            for j in range(per_row - 1)
        ]
        readings.append(Reading(stream, "status", start_ns + i * 1000, None, "bad", "", "timeout"))
        out.append(Batch(stream, readings=readings))
    return out


def event_batch() -> Batch:
    return Batch(
        "events",
        events=[
            Event("leak", "hydrophone1", 10**18, "alarm", 0.93, {"position_m": 120.5}),
            Event("driver_down", "plc1", 10**18 + 5, "warning", None, {}),
        ],
    )


class StateLog:
    """Records every state an uplink reports through `on_state_change`; tests await states."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, state: str) -> None:
        self.states.append(state)
        self._changed.set()

    async def wait(self, predicate: Callable[[str], bool], within_s: float = 10.0, *, since: int = 0) -> str:
        """The first state from index `since` on that satisfies `predicate`."""
        async with asyncio.timeout(within_s):
            while True:
                self._changed.clear()
                for state in self.states[since:]:
                    if predicate(state):
                        return state
                await self._changed.wait()


@dataclass
class Running:
    uplink: MqttUplink
    states: StateLog
    task: asyncio.Task[None]


StartUplink = Callable[..., Awaitable[Running]]
