"""Testing the uplink: scripted MQTT connections without a broker (like httpx's `MockTransport`).

`FakeBroker` is a `TransportFactory`: `MqttUplink(..., transport=broker)`. Every connection
attempt gets a `FakeTransport`, kept in `broker.connections`. By default each connection is
accepted and every PUBLISH acknowledged with success, each answer on a later loop iteration as
from a real broker. A test changes that with the broker's attributes (`open_errors`, `connack`,
`receive_maximum`, `puback`: the reason code a message gets, or None to hold its PUBACK) and
drives a connection by hand: `puback()`, `drop()`, `deliver()` a command.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from water_edge.agent.uplink.transport import (
    Connack,
    ConnectOptions,
    PublishError,
    PublishProperties,
    Reason,
    TransportError,
    TransportListener,
)


@dataclass(frozen=True, slots=True)
class Code:
    """An MQTT reason code, shaped like paho's `ReasonCode` (`str()` is its name)."""

    value: int
    name: str

    @property
    def is_failure(self) -> bool:
        return self.value >= 0x80

    def __str__(self) -> str:
        return self.name


SUCCESS = Code(0x00, "Success")
NO_MATCHING_SUBSCRIBERS = Code(0x10, "No matching subscribers")  # a success: nobody listens yet
UNSPECIFIED_ERROR = Code(0x80, "Unspecified error")
BAD_CREDENTIALS = Code(0x86, "Bad user name or password")
NOT_AUTHORIZED = Code(0x87, "Not authorized")
QUOTA_EXCEEDED = Code(0x97, "Quota exceeded")


@dataclass(frozen=True, slots=True)
class Sent:
    """One PUBLISH the uplink handed to a fake connection."""

    mid: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: PublishProperties | None

    def json(self) -> Any:
        return orjson.loads(self.payload)


def _always_success(_msg: Sent) -> Reason | None:
    return SUCCESS


class FakeBroker:
    """Makes scripted connections and keeps them; tests wait on what happened with `wait_until`."""

    def __init__(self) -> None:
        self.connections: list[FakeTransport] = []
        self.open_errors: deque[TransportError] = deque()  # raised by the next opens, in order
        self.connack: Reason | None = SUCCESS  # None: never answer CONNECT
        self.receive_maximum: int | None = None
        self.puback: Callable[[Sent], Reason | None] = _always_success
        self.answer_unsubscribe = True  # False: UNSUBACKs are held (a broker that stopped reading)
        self._activity = asyncio.Event()

    def __call__(self) -> FakeTransport:
        transport = FakeTransport(self)
        self.connections.append(transport)
        return transport

    @property
    def latest(self) -> FakeTransport:
        if not self.connections:
            raise LookupError("no connection was attempted yet")
        return self.connections[-1]

    def sent(self) -> list[Sent]:
        """Every PUBLISH on every connection, in order."""
        return [msg for conn in self.connections for msg in conn.sent]

    def data(self) -> list[Sent]:
        """The data messages (everything but the retained status) on every connection, in order."""
        return [msg for msg in self.sent() if not msg.retain]

    async def wait_until(self, predicate: Callable[[], bool], within_s: float = 5.0) -> None:
        """Return once `predicate()` holds: checked on every broker event and every 5 ms."""
        async with asyncio.timeout(within_s):
            while not predicate():
                self._activity.clear()
                try:
                    async with asyncio.timeout(0.005):
                        await self._activity.wait()
                except TimeoutError:
                    pass

    def changed(self) -> None:
        self._activity.set()


class FakeTransport:
    """One scripted connection: records what the uplink sends and plays the broker's answers."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.options: ConnectOptions | None = None
        self.sent: list[Sent] = []
        self.unacked: dict[int, Sent] = {}
        self.subscriptions: list[tuple[str, int]] = []
        self.unsubscriptions: list[str] = []
        self.disconnected = False
        self.aborted = False
        self.closed = False
        self._listener: TransportListener | None = None
        self._next_mid = 1

    # ------------------------------------------------------------------ Transport

    async def open(self, options: ConnectOptions, listener: TransportListener) -> None:
        self.options = options
        self.broker.changed()
        if self.broker.open_errors:
            self.closed = True
            raise self.broker.open_errors.popleft()
        self._listener = listener
        if self.broker.connack is not None:
            self._later(self.answer_connect, self.broker.connack, self.broker.receive_maximum)

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int,
        retain: bool = False,
        properties: PublishProperties | None = None,
    ) -> int:
        if self.closed or self._listener is None:
            raise PublishError("publish failed: The client is not currently connected.")
        mid, self._next_mid = self._next_mid, self._next_mid + 1
        msg = Sent(mid, topic, payload, qos, retain, properties)
        self.sent.append(msg)
        if qos > 0:
            self.unacked[mid] = msg
            reason = self.broker.puback(msg)
            if reason is not None:
                self._later(self.puback, mid, reason)
        self.broker.changed()
        return mid

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.subscriptions.append((topic_filter, qos))
        self.broker.changed()

    def unsubscribe(self, topic_filter: str) -> int:
        if self.closed or self._listener is None:
            raise PublishError("unsubscribe failed: The client is not currently connected.")
        mid, self._next_mid = self._next_mid, self._next_mid + 1
        self.unsubscriptions.append(topic_filter)
        if self.broker.answer_unsubscribe:
            self._later(self.unsuback, mid)
        self.broker.changed()
        return mid

    def disconnect(self) -> None:
        self.disconnected = True
        self._later(self.drop, "connection lost: Normal disconnection")

    def abort(self) -> None:
        self.aborted = self.closed = True
        self._listener = None
        self.broker.changed()

    # ------------------------------------------------------------------ the broker's side

    def answer_connect(
        self, reason: Reason = SUCCESS, receive_maximum: int | None = None, max_packet: int | None = None
    ) -> None:
        """Send CONNACK."""
        if self._listener is not None and not self.closed:
            self._listener.on_connack(Connack(reason, receive_maximum, max_packet))
            self.broker.changed()

    def puback(self, mid: int, reason: Reason = SUCCESS) -> None:
        """Acknowledge one held PUBLISH (ignored once the connection is closed)."""
        if self.unacked.pop(mid, None) is not None and self._listener is not None and not self.closed:
            self._listener.on_puback(mid, reason)
            self.broker.changed()

    def ack_all(self, reason: Reason = SUCCESS) -> None:
        """Acknowledge every held PUBLISH, oldest first."""
        for mid in list(self.unacked):
            self.puback(mid, reason)

    def unsuback(self, mid: int) -> None:
        """Answer an UNSUBSCRIBE."""
        if self._listener is not None and not self.closed:
            self._listener.on_unsuback(mid)
            self.broker.changed()

    def deliver(self, topic: str, payload: bytes) -> None:
        """A message on a topic this connection subscribed to (a command)."""
        if self._listener is not None and not self.closed:
            self._listener.on_message(topic, payload)
            self.broker.changed()

    def drop(self, reason: str = "connection lost: Unspecified error") -> None:
        """The connection ends from the broker's side (or after our DISCONNECT)."""
        if self._listener is not None and not self.closed:
            self.closed = True
            self._listener.on_closed(reason)
            self.broker.changed()

    def _later(self, fn: Callable[..., None], *args: Any) -> None:
        asyncio.get_running_loop().call_soon(fn, *args)
