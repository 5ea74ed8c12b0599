"""The uplink over MQTT-over-WebSockets (ws, wss with a client certificate) and through an HTTP
CONNECT proxy, against a real Mosquitto WebSocket listener and a real proxy (support/http_proxy.py).

Mosquitto 2.0.11 serves WebSockets only beside a normal TCP listener (a WebSockets-only config
exits "Unable to start any listening sockets"): `Mosquitto` always has one, which the test's
subscriber uses, and the WebSocket listener is added after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.support.broker import Mosquitto, Received, Subscriber
from tests.support.config_checks import refused_everywhere
from tests.support.http_proxy import HttpProxy
from tests.support.pki import Pki
from tests.support.testing import eventually, free_port, write_agent_config
from tests.support.uplink import GATEWAY, SITE, StartUplink, mqtt_config, reading_batches
from water_edge.agent.uplink.config import MqttConfig, TlsConfig
from water_edge.agent.uplink.connection import PahoTransport
from water_edge.agent.uplink.transport import Connack, ConnectOptions, Will
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.secrets import SecretRef

TOPIC = f"water/{SITE}/{GATEWAY}/plc1"


@contextlib.contextmanager
def websocket_broker(ws_port: int, tls: str = "") -> Iterator[Mosquitto]:
    """A Mosquitto with its TCP listener (the subscriber's) and a WebSocket one on `ws_port`, once
    that one takes connections too: `Mosquitto` waits for its TCP port only, and under load the
    WebSocket listener came a moment later (make test: connection refused once)."""
    with Mosquitto(extra_config=f"listener {ws_port} 127.0.0.1\nprotocol websockets\n{tls}") as broker:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", ws_port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield broker


def outbox_empty(outbox: AsyncOutbox) -> Callable[[], Awaitable[bool]]:
    async def empty() -> bool:
        return (await outbox.stats()).rows == 0

    return empty


def seqs(msgs: list[Received]) -> list[int]:
    return [m.json()["seq"] for m in msgs]


async def test_rows_reach_a_subscriber_over_websockets(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    ws = free_port()
    with websocket_broker(ws) as broker, Subscriber(broker.host, broker.port, TOPIC) as sub:
        await outbox.append(reading_batches(5))
        run = await start_uplink(mqtt_config(broker, port=ws, transport="websockets"), outbox)
        msgs = await sub.wait_for_async(5)
        await eventually(outbox_empty(outbox), what="the rows acknowledged and deleted")
        await run.uplink.stop()
        assert seqs(msgs) == [1, 2, 3, 4, 5]
        # It really went over the WebSocket listener: Mosquitto logs the client's port and protocol.
        assert "New connection from 127.0.0.1:" in broker.log()
        assert f"on port {ws}" in broker.log(), broker.log()


@pytest.mark.parametrize("via_proxy", [False, True], ids=["direct", "via-proxy"])
async def test_rows_reach_a_subscriber_over_wss_with_a_client_certificate(
    via_proxy: bool, tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.client(f"{SITE}-{GATEWAY}")
    wss = free_port()
    listener_tls = (
        f"cafile {pki.ca_file}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
        "require_certificate true\n"
    )
    with (
        websocket_broker(wss, listener_tls) as broker,
        HttpProxy() as proxy,
        Subscriber(broker.host, broker.port, TOPIC) as sub,
    ):
        settings = {"port": wss, "transport": "websockets"} | ({"proxy": proxy.url} if via_proxy else {})
        await outbox.append(reading_batches(4))
        # Without its certificate the gateway is turned away: the listener does require one.
        bare = await start_uplink(mqtt_config(broker, tls=TlsConfig(ca_file=pki.ca_file), **settings), outbox)
        await bare.states.wait(lambda s: s in ("tls-error", "offline"))
        await bare.uplink.stop()
        assert bare.uplink.health().published == 0
        tls = TlsConfig(ca_file=pki.ca_file, cert_file=cert, key_file=key)
        run = await start_uplink(mqtt_config(broker, tls=tls, **settings), outbox)
        msgs = await sub.wait_for_async(4)
        await run.uplink.stop()
    assert seqs(msgs) == [1, 2, 3, 4]
    assert (await outbox.stats()).rows == 0
    # Through the proxy, TLS and the WebSocket run inside its tunnels: one per connection.
    assert len(proxy.tunnels) == (2 if via_proxy else 0)
    assert set(proxy.tunnels) <= {f"127.0.0.1:{wss}"}


@pytest.mark.parametrize("transport", ["websockets", "tcp"])
async def test_through_a_proxy_with_a_password_file_and_a_failover_list(
    transport: Literal["tcp", "websockets"], tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    """The first server is dead: the proxy answers 502 and the uplink goes on to the next at once,
    through the same proxy; the proxy saw exactly one tunnel, to the server that works."""
    ws, dead = free_port(), free_port()
    password = tmp_path / "proxy.pass"
    password.write_text("s3cret:with colon\n")
    password.chmod(0o600)
    with (
        websocket_broker(ws) as broker,
        HttpProxy(credentials=("gw17", "s3cret:with colon")) as proxy,
        Subscriber(broker.host, broker.port, TOPIC) as sub,
    ):
        websockets = transport == "websockets"
        port = ws if websockets else broker.port
        upgrade: dict[str, Any] = (
            {"websocket_path": "/broker/mqtt", "websocket_headers": {"X-Api-Key": "k1"}} if websockets else {}
        )
        await outbox.append(reading_batches(5))
        config = MqttConfig(
            servers=(f"mqtt://127.0.0.1:{dead}", f"mqtt://127.0.0.1:{port}"),
            transport=transport,
            proxy=f"http://gw17@127.0.0.1:{proxy.port}",
            proxy_password=SecretRef(file=password),
            **upgrade,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
            connect_timeout_s=5.0,
        )
        run = await start_uplink(config, outbox)
        msgs = await sub.wait_for_async(5)
        await run.uplink.stop()
    assert seqs(msgs) == [1, 2, 3, 4, 5]
    assert (await outbox.stats()).rows == 0
    assert [r.target for r in proxy.requests] == [f"127.0.0.1:{dead}", f"127.0.0.1:{port}"]
    assert proxy.tunnels == [f"127.0.0.1:{port}"]
    # Inside the tunnel: the WebSocket upgrade on the configured path and headers, or MQTT CONNECT.
    if websockets:
        assert proxy.first_sent[0].startswith(b"GET /broker/mqtt HTTP/1.1\r\n")
        assert b"\r\nX-Api-Key: k1\r\n" in proxy.first_sent[0]
    else:
        assert proxy.first_sent[0][:1] == b"\x10"  # CONNECT
    assert run.uplink.health().failovers == 1


async def test_a_refusing_proxy_says_why_and_nothing_is_lost(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    ws = free_port()
    with (
        websocket_broker(ws) as broker,
        HttpProxy(credentials=("gw17", "right")) as proxy,
        Subscriber(broker.host, broker.port, TOPIC) as sub,
    ):
        await outbox.append(reading_batches(3))
        config = mqtt_config(
            broker, port=ws, transport="websockets", proxy=f"http://gw17:wrong@{proxy.host}:{proxy.port}"
        )
        run = await start_uplink(config, outbox)
        await run.states.wait(lambda s: s == "offline")
        error = run.uplink.health().last_error or ""
        assert error.startswith("the proxy refused the connection: 407 Proxy Authentication Required"), error
        assert "wrong" not in error  # the password is never in an error
        # It backs off and asks again, as after any failed connection; nothing was tunnelled.
        await eventually(lambda: len(proxy.requests) >= 3, what="the uplink retrying through the proxy")
        assert proxy.tunnels == []
        assert (await outbox.stats()).rows == 3
        assert run.uplink.health().published == 0

        proxy.credentials = None  # the proxy's administrator lets the gateway through
        msgs = await sub.wait_for_async(3)
        await run.uplink.stop()
    assert seqs(msgs) == [1, 2, 3]
    assert (await outbox.stats()).rows == 0


async def test_a_proxy_that_forbids_the_port_is_named(outbox: AsyncOutbox, start_uplink: StartUplink) -> None:
    with websocket_broker(free_port()) as broker, HttpProxy(refuse=403) as proxy:
        await outbox.append(reading_batches(1))
        run = await start_uplink(mqtt_config(broker, proxy=proxy.url), outbox)
        await run.states.wait(lambda s: s == "offline")
        error = run.uplink.health().last_error or ""
        await run.uplink.stop()
    assert error.startswith("the proxy refused the connection: 403 Forbidden; "), error
    assert f"127.0.0.1:{broker.port}" in error
    assert (await outbox.stats()).rows == 1


@pytest.mark.parametrize(
    ("uplink", "key", "expected"),
    [
        ({"transport": "websocket"}, "uplink.transport", "'tcp' or 'websockets'"),
        ({"transport": "websockets", "websocket_path": "mqtt"}, "uplink.websocket_path", 'starting with "/"'),
        ({"websocket_path": "/mqtt"}, "uplink.websocket_path", 'applies to transport = "websockets" only'),
        (
            {"transport": "websockets", "websocket_headers": {"Upgrade": "h2c"}},
            "uplink.websocket_headers",
            "set by the WebSocket upgrade itself",
        ),
        ({"proxy": "http://gw17:topsecret@proxy.corp"}, "uplink.proxy", "give the proxy's port"),
        ({"proxy": "https://gw17:topsecret@proxy.corp:3128"}, "uplink.proxy", "https://) is not supported"),
        ({"proxy": "proxy.corp:3128"}, "uplink.proxy", "expected http://[user[:password]@]host:port"),
        (
            {"proxy": "http://gw17:topsecret@proxy.corp:3128", "proxy_password": {"env": "PROXY_PASS"}},
            "uplink.proxy",
            "both in the URL and in proxy_password",
        ),
        (
            {"proxy": "http://gw17@proxy.corp:3128", "proxy_password": "topsecret"},
            "uplink.proxy_password",
            "table",
        ),
        ({"proxy_password": {"env": "PROXY_PASS"}}, "uplink.proxy_password", "without proxy ="),
        (
            {"proxy": "http://proxy.corp:3128", "proxy_password": {"env": "PROXY_PASS"}},
            "uplink.proxy_password",
            "needs the proxy's user name",
        ),
    ],
)
def test_a_broken_setting_is_a_config_error_naming_the_key(
    uplink: dict[str, object],
    key: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PROXY_PASS", "x")
    path = write_agent_config(tmp_path, broker_port=1883, uplink=uplink)
    problems = refused_everywhere(path, capsys)
    assert any(p.startswith(f"{path}: {key}: ") and expected in p for p in problems), problems
    assert not [p for p in problems if "topsecret" in p]  # a password in the URL is never repeated


def test_websockets_default_to_ports_80_and_443() -> None:
    config = MqttConfig(
        servers=("mqtts://b.example", "mqtts://c.example:8884"), transport="websockets", tls=TlsConfig()
    )
    assert [s.address for s in config.server_list()] == ["b.example:443", "c.example:8884"]
    assert MqttConfig(host="a.example", transport="websockets").server_list()[0].port == 80
    assert MqttConfig(host="a.example", transport="websockets", port=8083).server_list()[0].port == 8083
    assert MqttConfig(host="a.example").server_list()[0].port == 1883


async def test_websockets_to_a_plain_mqtt_port_says_the_upgrade_failed(
    outbox: AsyncOutbox, start_uplink: StartUplink
) -> None:
    with websocket_broker(free_port()) as broker:
        run = await start_uplink(mqtt_config(broker, transport="websockets"), outbox)
        await run.states.wait(lambda s: s == "offline")
        error = run.uplink.health().last_error or ""
        await run.uplink.stop()
    assert error.startswith("the broker did not take the WebSocket upgrade"), error


class _Listener:
    def __init__(self) -> None:
        self.connack = asyncio.Event()
        self.acks = 0

    def on_connack(self, connack: Connack) -> None:
        self.connack.set()

    def on_puback(self, mid: int, reason: object) -> None:
        self.acks += 1

    def on_message(self, topic: str, payload: bytes) -> None:
        pass

    def on_unsuback(self, mid: int) -> None:
        pass

    def on_closed(self, reason: str) -> None:
        pass


async def test_what_the_link_has_not_taken_is_measured_under_the_websocket() -> None:
    """The Sparkplug backlog's flow control asks the connection what has not left the host: over
    WebSockets that is the TCP socket under paho's wrapper (which has no getsockopt)."""
    ws = free_port()
    with websocket_broker(ws):
        transport, listener = PahoTransport(), _Listener()
        options = ConnectOptions(
            host="127.0.0.1",
            port=ws,
            client_id="gauge",
            protocol="5",
            keepalive_s=30,
            connect_timeout_s=5,
            will=Will("gauge/status", b"offline"),
            max_inflight=100,
            transport="websockets",
        )
        await transport.open(options, listener)
        try:
            await asyncio.wait_for(listener.connack.wait(), 5)
            for _ in range(50):
                transport.publish("gauge/data", b"x" * 20_000, qos=1)
            queued = transport.unsent_bytes()
            assert isinstance(queued, int)
            await eventually(lambda: listener.acks == 50, what="50 PUBACKs over the WebSocket")
            assert transport.unsent_bytes() == 0
        finally:
            transport.abort()
