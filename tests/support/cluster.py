"""A real three-node RabbitMQ cluster with the MQTT plugin, started by the tests and the bench.

Debian's `rabbitmq-server` (3.10, installed by scripts/bootstrap.sh), each node a root-owned
Erlang VM in its own temporary directory on free ports (MQTT, AMQP, distribution) and one private
`epmd` on a free port, so a cluster never meets the machine's own RabbitMQ or another test run's.
MQTT subscriptions with QoS 1 and a persistent session are quorum queues replicated on all three
nodes, and a QoS 1 PUBACK is sent once the message is confirmed by those queues (a majority
stored it): killing any one node loses nothing that was acknowledged.

Node 1 starts first; nodes 2 and 3 join it through classic peer discovery. `kill(i)` is kill -9;
`restart(i)` brings a node back on the same ports and data directory (it rejoins the cluster).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from tests.support.broker import port_open
from tests.support.service import StartedService
from tests.support.testing import free_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "/usr/lib/erlang/bin/epmd"
START_TIMEOUT_S = 120.0


def rabbitmq_available() -> bool:
    return (RABBIT_BIN / "rabbitmq-server").exists()


@dataclass
class Node:
    index: int
    name: str
    mqtt_port: int
    amqp_port: int
    dist_port: int
    home: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mqtt://127.0.0.1:{self.mqtt_port}"


class RabbitCluster(StartedService):
    """Three RabbitMQ nodes on 127.0.0.1 forming one cluster; MQTT on `node.mqtt_port`."""

    def __init__(self, size: int = 3) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rabbit-cluster-"))
        self.cookie = secrets.token_hex(16)
        self.epmd_port = free_port()
        tag = secrets.token_hex(3)
        self.nodes = [
            Node(i, f"fleet{tag}n{i}@localhost", free_port(), free_port(), free_port(), self.dir / f"n{i}")
            for i in range(size)
        ]
        for node in self.nodes:
            self._write_node_files(node)
        self._epmd: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ files

    def _write_node_files(self, node: Node) -> None:
        node.home.mkdir(parents=True)
        cookie = node.home / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        peers = "\n".join(
            f"cluster_formation.classic_config.nodes.{n.index + 1} = {n.name}" for n in self.nodes
        )
        (node.home / "rabbitmq.conf").write_text(
            f"""\
listeners.tcp.default = 127.0.0.1:{node.amqp_port}
mqtt.listeners.tcp.default = 127.0.0.1:{node.mqtt_port}
mqtt.allow_anonymous = true
mqtt.default_user = guest
mqtt.default_pass = guest
mqtt.durable_queue_type = quorum
mqtt.prefetch = 200
loopback_users = none
cluster_formation.peer_discovery_backend = classic_config
{peers}
cluster_partition_handling = pause_minority
log.console = false
log.file.level = info
"""
        )
        (node.home / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")

    def _env(self, node: Node) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(node.home),
            ERL_EPMD_PORT=str(self.epmd_port),
            RABBITMQ_NODENAME=node.name,
            RABBITMQ_USE_LONGNAME="false",
            RABBITMQ_NODE_PORT=str(node.amqp_port),
            RABBITMQ_DIST_PORT=str(node.dist_port),
            RABBITMQ_CONFIG_FILE=str(node.home / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(node.home / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(node.home / "mnesia"),
            RABBITMQ_LOG_BASE=str(node.home / "log"),
            RABBITMQ_PID_FILE=str(node.home / "rabbit.pid"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(node.home / "advanced.config"),
            # Two small schedulers per node: three nodes share a 2-core machine with the tests.
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+S 2:2 +sbwt none +sbwtdcpu none +sbwtdio none",
        )
        return env

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        # Our own epmd, in the foreground as our child, so close() ends exactly it.
        self._epmd = subprocess.Popen(
            [EPMD, "-port", str(self.epmd_port), "-relaxed_command_check"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        first, *rest = self.nodes
        self._spawn(first)
        self._wait_up(first)
        for node in rest:
            self._spawn(node)
        for node in rest:
            self._wait_up(node)
        self.wait_clustered()
        return self

    def _spawn(self, node: Node) -> None:
        log = (node.home / "stdout.log").open("ab")
        node.proc = subprocess.Popen(
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self._env(node),
            cwd=node.home,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _wait_up(self, node: Node, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}):\n{self.log(node)}")
            if port_open(node.mqtt_port):
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"{node.name}: MQTT port {node.mqtt_port} not open after {timeout_s} s\n{self.log(node)}"
        )

    def ctl(self, node: Node, *args: str, timeout_s: float = 60.0) -> str:
        """`rabbitmqctl` against `node` (with the cluster's cookie and epmd)."""
        out = subprocess.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self._env(node),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {node.name}: {out.stderr or out.stdout}")
        return out.stdout

    def running_nodes(self, via: Node) -> set[str]:
        import json

        status = json.loads(self.ctl(via, "cluster_status", "--formatter", "json"))
        return set(status.get("running_nodes", []))

    def wait_clustered(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node sees all live nodes running in one cluster."""
        live = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        want = {n.name for n in live}
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                seen = self.running_nodes(live[0])
                if seen >= want:
                    return
            time.sleep(0.5)
        raise TimeoutError(f"cluster did not form: running {sorted(seen)}, want {sorted(want)}")

    def kill(self, index: int) -> None:
        """kill -9 of one node (its whole process group: the VM and its helpers)."""
        node = self.nodes[index]
        if node.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.proc.pid, signal.SIGKILL)
        node.proc.wait(timeout=10)
        node.proc = None

    def restart(self, index: int) -> None:
        node = self.nodes[index]
        self._spawn(node)
        self._wait_up(node)

    def log(self, node: Node) -> str:
        parts = []
        for path in [node.home / "stdout.log", *sorted((node.home / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:])
        return "\n".join(parts)

    def close(self) -> None:
        for i in range(len(self.nodes)):
            self.kill(i)
        if self._epmd is not None:
            self._epmd.kill()
            self._epmd.wait(timeout=10)
            self._epmd = None
        shutil.rmtree(self.dir, ignore_errors=True)
