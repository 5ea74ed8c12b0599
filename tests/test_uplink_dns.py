"""Name resolution is bounded by `connect_timeout_s`: a hung resolver cannot stall the uplink, and
connecting to the resolved address still verifies the broker's certificate against its name."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import Mosquitto, TlsFiles
from tests.support.pki import Pki
from tests.support.uplink import StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink import connection
from water_edge.agent.uplink.config import TlsConfig
from water_edge.agent.uplink.transport import ConnectError
from water_edge.buffer.async_outbox import AsyncOutbox


async def test_a_hung_resolver_fails_the_attempt_within_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A resolver that never answers cannot run here without changing the machine's resolv.conf:
    # getaddrinfo is replaced by one that blocks until the test ends.
    release = threading.Event()

    def hung(*_args: Any, **_kwargs: Any) -> Any:
        release.wait(30)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hung)
    started = time.monotonic()
    try:
        with pytest.raises(ConnectError, match=r"name resolution of broker\.example timed out after 0\.5 s"):
            await connection.resolve("broker.example", 8883, 0.5)
        # Both resolver threads are hung now; a further attempt is still bounded.
        with pytest.raises(ConnectError, match="timed out"):
            await connection.resolve("broker.example", 8883, 0.5)
        with pytest.raises(ConnectError, match="timed out"):
            await connection.resolve("broker.example", 8883, 0.5)
    finally:
        release.set()
    assert time.monotonic() - started < 5


async def test_an_unknown_name_is_a_connect_error_naming_it() -> None:
    with pytest.raises(ConnectError, match=r"cannot resolve no-such-broker\.invalid"):
        await connection.resolve("no-such-broker.invalid", 1883, 5)


async def test_the_uplink_reports_a_hung_resolver_and_keeps_trying(
    monkeypatch: pytest.MonkeyPatch, mosquitto: Mosquitto, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    release = threading.Event()
    real = socket.getaddrinfo

    def hung_for_broker(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "broker.test" and not release.is_set():
            release.wait(30)
        return real("127.0.0.1" if host == "broker.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hung_for_broker)
    await outbox.append(reading_batches(3))
    run = await start_uplink(mqtt_config(mosquitto, host="broker.test", connect_timeout_s=0.3), outbox)
    try:
        await run.states.wait(lambda s: s == "offline")
        assert "name resolution of broker.test timed out" in str(run.uplink.health().last_error)
        release.set()  # the resolver answers again: the next attempt connects and drains
        await run.states.wait(lambda s: s == "online", within_s=15)
    finally:
        release.set()


async def test_tls_verifies_the_hostname_when_connecting_to_the_resolved_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    real = socket.getaddrinfo

    def with_alias(host: str, *args: Any, **kwargs: Any) -> Any:
        # An /etc/hosts entry for this test only: another name for the broker's address.
        return real("127.0.0.1" if host == "other-name.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", with_alias)
    pki = Pki(tmp_path)
    with Mosquitto(tls=TlsFiles(pki.ca_file, pki.server_cert, pki.server_key)) as broker:
        await outbox.append(reading_batches(2))
        # The broker's certificate names localhost and 127.0.0.1 ...
        good = await start_uplink(
            mqtt_config(broker, host="localhost", tls=TlsConfig(ca_file=pki.ca_file)), outbox
        )
        await good.states.wait(lambda s: s == "online")
        await good.uplink.stop()
        # ... not this one, which resolves to the same address: verified against the name, refused.
        wrong = await start_uplink(
            mqtt_config(broker, host="other-name.test", tls=TlsConfig(ca_file=pki.ca_file)), outbox
        )
        await wrong.states.wait(lambda s: s == "tls-error")
        assert "other-name.test" in str(wrong.uplink.health().last_error)
        await wrong.uplink.stop()
