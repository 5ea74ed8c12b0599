"""The OPC UA driver's error translation and reopen path through its client factory, with a
scripted asyncua client in place of a server (the real-server tests stay in test_opcua_driver)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, cast

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from water_edge.core.errors import DriverIOError
from water_edge.core.health import Health, health_json
from water_edge.drivers.opcua.config import OpcUaConfig
from water_edge.drivers.opcua.driver import OpcUaDriver

ENDPOINT = "opc.tcp://192.0.2.7:4840"
# asyncua leaves UaStatusCodeError's constructor untyped; it takes the status code.
status_error = cast(Callable[[int], UaStatusCodeError], UaStatusCodeError)


class ScriptedServices:
    """The `uaclient` service calls the driver makes in poll mode: Read, answered from a script."""

    def __init__(self, *outcomes: float | BaseException) -> None:
        self.outcomes: deque[float | BaseException] = deque(outcomes)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        if params.NodesToRead[0].NodeId == ua.NodeId.from_string("i=11705"):  # the operation limits
            return [ua.DataValue(StatusCode=ua.StatusCode(cast(ua.UInt32, StatusCodes.BadNodeIdUnknown)))] * 3
        outcome = self.outcomes.popleft() if self.outcomes else 1.5
        if isinstance(outcome, BaseException):
            raise outcome
        return [ua.DataValue(ua.Variant(outcome, ua.VariantType.Double)) for _ in params.NodesToRead]


class ScriptedClient(Client):
    """asyncua's client with the network taken out: `connect` fails or succeeds as scripted."""

    def __init__(self, url: str, fail: BaseException | None, services: ScriptedServices) -> None:
        super().__init__(url)
        self.fail = fail
        self.uaclient = services  # type: ignore[assignment]
        self.disconnected = False

    async def connect(
        self,
        *,
        auto_reconnect: bool | None = None,
        reconnect_max_delay: float | None = None,
        reconnect_request_timeout: float | None = None,
    ) -> None:
        if self.fail is not None:
            raise self.fail

    async def disconnect(self) -> None:
        self.disconnected = True

    def disconnect_socket(self) -> None:  # no socket to close: the network is taken out
        pass


def scripted_driver(*clients: tuple[BaseException | None, ScriptedServices]) -> tuple[OpcUaDriver, list[Any]]:
    """A poll-mode driver whose n-th `open()` gets a client playing `clients[n]`."""
    made: list[ScriptedClient] = []
    plays = iter(clients)

    def factory(config: OpcUaConfig) -> Client:
        fail, services = next(plays)
        made.append(ScriptedClient(config.endpoint, fail, services))
        return made[-1]

    config = OpcUaConfig.model_validate({
        "name": "ua", "kind": "opcua", "endpoint": ENDPOINT, "mode": "poll",
        "tags": [{"name": "flow", "node": "ns=2;s=pump1.flow", "unit": "m3/h"}],
    })  # fmt: skip
    return OpcUaDriver(config, client_factory=factory), made


@pytest.mark.parametrize(
    ("failure", "explanation"),
    [
        (ConnectionRefusedError(111, "Connection refused"), "connection refused (is the server running"),
        (TimeoutError(), "no answer in time (server down, firewall or wrong address?)"),
        (status_error(StatusCodes.BadUserAccessDenied), "BadUserAccessDenied: user name or password"),
        (status_error(StatusCodes.BadTooManySessions), "BadTooManySessions: the server takes no more "
         "sessions: other clients hold them"),
        (status_error(StatusCodes.BadLicenseExpired),
         "BadLicenseExpired: the server's licence has expired"),
        (UaError("Server certificate mismatch"), "the server's certificate is not the pinned server_"),
        (UaError("No matching endpoints: 3, http://opcfoundation.org/UA/SecurityPolicy#Basic256Sha256"),
         "the server offers no endpoint with this security policy and mode (No matching endpoints: 3"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None,
)  # fmt: skip
async def test_connect_failures_are_explained_and_the_session_dropped(
    failure: BaseException, explanation: str
) -> None:
    driver, made = scripted_driver((failure, ScriptedServices()))
    with pytest.raises(DriverIOError) as caught:
        await driver.open()
    assert str(caught.value).startswith(f"ua: cannot connect to {ENDPOINT}: {explanation}")
    assert caught.value.__cause__ is failure
    assert made[0].disconnected
    assert not driver.health().connected


async def test_a_failed_read_ends_the_session_and_open_starts_a_new_one() -> None:
    reset = ConnectionResetError(104, "Connection reset by peer")
    driver, made = scripted_driver((None, ScriptedServices(2.5, reset)), (None, ScriptedServices(3.5)))
    await driver.open()
    assert [r.value for r in await driver.read()] == [2.5]
    with pytest.raises(DriverIOError, match=r"^ua: read failed: connection reset by peer$"):
        await driver.read()
    await driver.aclose()
    assert made[0].disconnected

    await driver.open()
    assert len(made) == 2
    (reading,) = await driver.read()
    assert (reading.value, reading.quality, reading.unit) == (3.5, "good", "m3/h")
    health = driver.health()
    assert isinstance(health, Health)
    assert health_json(health) == {
        "publishes": 0, "notifications": 0, "reads": 2, "dropped_batches": 0, "keepalives": 0,
        "connected": True, "mode": "poll", "fallback": None, "unresolved": {}, "failed_items": {},
        "last_ok_ns": health.last_ok_ns, "uncertain_values": 0, "bad_values": 0, "clock_replaced": 0,
        "device_clock_offset_s": None, "batch_limits": {}, "client_certificate_not_after_ns": None,
    }  # fmt: skip
    assert health.status_lines() == ["poll  connected yes  publishes 0  notifications 0  reads 2"]
    await driver.aclose()
