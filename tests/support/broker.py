"""A real Mosquitto for tests, and the clients a test talks to it with.

`Mosquitto` is the one way the suite starts a broker: its own config on a free port (never 1883, so
tests run beside a demo broker), users, TLS, persistence, stop/start on the same port, pause. The
`mosquitto` fixture (tests/conftest.py) is a plain one per test; tests that need another kind
construct `Mosquitto(...)` themselves. `Subscriber` collects what arrives (optionally over TLS, with
a persistent session); `Publisher` sends a test's own messages (commands to the agent).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tests.support.testing import free_port, wait_until


def mosquitto_binary() -> str:
    for candidate in ("/usr/sbin/mosquitto", shutil.which("mosquitto")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("mosquitto not found (apt-get install mosquitto)")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class TlsFiles:
    """PEM files of the TLS listener; `require_certificate` asks clients for a certificate."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    require_certificate: bool = False


class Mosquitto:
    """A Mosquitto process on 127.0.0.1:`port` with a generated config in a temporary directory."""

    def __init__(
        self,
        *,
        port: int | None = None,
        users: dict[str, str] | None = None,
        tls: TlsFiles | None = None,
        persistence: bool = False,
        plain_ports: tuple[int, ...] = (),
        extra_config: str = "",
    ) -> None:
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self._dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self.log_path = self._dir / "mosquitto.log"
        lines = [f"listener {self.port} 127.0.0.1", "log_type all", "max_queued_messages 0"]
        if os.geteuid() == 0:
            # Otherwise mosquitto drops to its own user and cannot write our 0700 temp directory.
            lines.append("user root")
        if persistence:
            # Sessions and queued QoS 1 messages survive stop()/start(), so a subscriber with a
            # persistent session misses nothing published while it reconnects.
            lines += ["persistence true", f"persistence_location {self._dir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        if users:
            pwfile = self._dir / "passwd"
            pwfile.touch(mode=0o600)
            for user, password in users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(pwfile), user, password],
                    check=True,
                    capture_output=True,
                )
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines.append("allow_anonymous true")
        if tls is not None:
            lines += [
                f"cafile {tls.ca_file}",
                f"certfile {tls.cert_file}",
                f"keyfile {tls.key_file}",
                f"require_certificate {'true' if tls.require_certificate else 'false'}",
            ]
        # More plain listeners (e.g. for a test's subscriber beside a TLS listener).
        self.plain_ports = plain_ports
        lines += [f"listener {p} 127.0.0.1" for p in plain_ports]
        self.config_path = self._dir / "mosquitto.conf"
        self.config_path.write_text("\n".join(lines) + "\n" + extra_config)

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError("mosquitto is not running")
        return self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.config_path)], stdout=log, stderr=log
        )
        log.close()
        try:
            for port in (self.port, *self.plain_ports):
                wait_until(partial(port_open, port), every_s=0.05, what=f"mosquitto listening on {port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"mosquitto did not start:\n{self.log()}") from None

    def stop(self) -> None:
        """Terminate (clients see the connection close); the port is reused by `start()`."""
        if self._proc is None:
            return
        self._proc.terminate()
        self._proc.send_signal(signal.SIGCONT)  # a paused broker must wake up to exit
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open but nothing is read or acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)
            self._proc.kill()
            self._proc.wait(5)
            self._proc = None

    def reload(self) -> None:
        """SIGHUP, as `systemctl reload mosquitto` sends it; returns once Mosquitto has taken it."""
        before = self.log().count("Reloading config.")
        os.kill(self.pid, signal.SIGHUP)
        wait_until(
            lambda: self.log().count("Reloading config.") > before, every_s=0.02, what="mosquitto reload"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        _t: type[BaseException] | None,
        _e: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    qos: int

    def json(self) -> Any:
        return orjson.loads(self.payload)


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS files: the CA that signed the broker, and this client's certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def apply(self, client: paho.Client) -> None:
        client.tls_set(
            ca_certs=str(self.ca_file),
            certfile=str(self.cert_file),
            keyfile=str(self.key_file),
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )


@dataclass
class Subscriber:
    """A paho client in its own thread that collects every message matching `topic_filter`."""

    host: str
    port: int
    topic_filter: str
    qos: int = 1
    session: str | None = None
    tls: ClientTls | None = None
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        # With `session`, a persistent session under that client id: the broker queues what is
        # published while this subscriber reconnects after a broker restart.
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.session or "",
            protocol=paho.MQTTv311,
            clean_session=self.session is None,
        )
        if self.tls is not None:
            self.tls.apply(self._client)
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message

    def _on_connect(self, client: paho.Client, _u: Any, flags: Any, *_a: Any) -> None:
        if not flags.session_present:
            client.subscribe(self.topic_filter, qos=self.qos)
        else:
            self._subscribed.set()

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain), msg.qos))
            self._cond.notify_all()

    def start(self, timeout: float = 5.0) -> Self:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._subscribed.wait(timeout):
            raise TimeoutError(f"subscriber did not subscribe to {self.topic_filter}")
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def snapshot(self) -> list[Received]:
        with self._cond:
            return list(self.messages)

    def wait_for(self, n: int, timeout: float = 10.0, topic: str | None = None) -> list[Received]:
        """Block until at least `n` messages (on `topic`, if given) arrived; returns them."""

        def matching() -> list[Received]:
            return [m for m in self.messages if topic is None or m.topic == topic]

        with self._cond:
            if not self._cond.wait_for(lambda: len(matching()) >= n, timeout):
                got = matching()
                raise TimeoutError(f"got {len(got)} of {n} messages on {topic or self.topic_filter}")
            return matching()

    def wait_until(self, predicate: Any, timeout: float = 10.0) -> list[Received]:
        """Block until `predicate(messages)` is true; returns the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout):
                raise TimeoutError(f"condition not met; {len(self.messages)} messages received")
            return list(self.messages)

    async def wait_for_async(
        self, n: int, within_s: float = 10.0, topic: str | None = None
    ) -> list[Received]:
        """`wait_for` without blocking the event loop (the uplink under test runs on it)."""
        return await asyncio.to_thread(self.wait_for, n, within_s, topic)

    async def wait_until_async(self, predicate: Any, within_s: float = 10.0) -> list[Received]:
        return await asyncio.to_thread(self.wait_until, predicate, within_s)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class Publisher:
    """A paho client that sends a test's own messages, e.g. commands to the agent under test.

    with Publisher(broker.host, broker.port) as pub:
        pub.publish(f"{base}/cmd/read_now", envelope)   # returns once the broker has it (QoS 1)
    """

    def __init__(self, host: str, port: int, *, protocol: MQTTProtocolVersion = paho.MQTTv311) -> None:
        self.host, self.port = host, port
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=protocol)

    def start(self) -> Self:
        self._client.connect(self.host, self.port)
        self._client.loop_start()
        return self

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def publish(
        self, topic: str, payload: bytes, *, qos: int = 1, wait: bool = True, timeout: float = 5.0
    ) -> paho.MQTTMessageInfo:
        """Publish; with `wait`, return only once it is sent (at QoS 1, acknowledged by the broker)."""
        info = self._client.publish(topic, payload, qos=qos)
        if wait:
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TimeoutError(f"{topic}: not published within {timeout} s")
        return info

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
