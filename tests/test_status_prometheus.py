"""The gateway's health for Prometheus, against the real `edge-agent run`: `GET /metrics` on
`[status] metrics` over a real TCP socket and `edge-agent status --prometheus`, both parsed with
prometheus_client's own parsers and held against `edge-agent status --json` (docs/status.md#prometheus).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.support.agent_proc import AgentProcess, running_agent
from tests.support.broker import Mosquitto
from tests.support.plant import running_plant
from tests.support.testing import FAKE_DEVICE, free_port, wait_until, write_agent_config
from water_edge.agent.cli import main
from water_edge.agent.metrics_export import exposition_text
from water_edge.agent.metrics_http import MAX_CONNECTIONS, REQUEST_TIMEOUT_S

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def with_metrics(config: Path, address: str) -> Path:
    """The agent config at `config` with `[status] metrics = address`."""
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[status]\n", f'[status]\nmetrics = "{address}"\n', 1), encoding="utf-8")
    return config


def scrape(port: int, path: str = "/metrics", *, method: str = "GET", accept: str | None = None) -> Any:
    """(status, headers, body) of one HTTP request to the agent's metrics endpoint."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, headers={} if accept is None else {"Accept": accept})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def samples_of(text: str) -> Samples:
    """Every sample of a text exposition, parsed by prometheus_client's own parser."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metrics(port: int) -> Samples:
    status, headers, body = scrape(port)
    assert status == 200, body
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return samples_of(body.decode())


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def raw_exchange(port: int, request: bytes, *, timeout: float = 30) -> bytes:
    """Send `request` on a new connection and read the answer until the agent closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The agent may answer and close before taking all of it: the answer is read below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


PLC = """
[[devices]]
name = "plc"
kind = "modbus_tcp"
host = "127.0.0.1"
port = {port}
poll_interval_ms = 200
timeout_ms = 500
retries = 0

  [[devices.tags]]
  name = "station.tank_level"
  address = 16
  type = "float64"
  unit = "m"
"""


@pytest.mark.slow
def test_the_scrape_says_what_status_json_says_as_devices_and_the_broker_come_and_go(tmp_path: Path) -> None:
    port = free_port()
    with Mosquitto() as broker, running_plant() as plant:
        devices = FAKE_DEVICE + PLC.format(port=plant.port)
        config = with_metrics(
            write_agent_config(tmp_path, broker_port=broker.port, devices=devices), f"127.0.0.1:{port}"
        )
        with running_agent(config) as agent:
            agent.wait_status(
                lambda s: (
                    s["uplink"]["state"] == "online"
                    and all(d["state"] == "up" and d["readings"] > 0 for d in s["drivers"])
                    and s["buffer"] != {}
                ),
                timeout=60,
            )
            # The scrape between two `status --json`: each counter lies between theirs.
            before = json.loads(cli("status", "-c", str(config), "--json").stdout)
            scraped = metrics(port)
            after = json.loads(cli("status", "-c", str(config), "--json").stdout)
            info = {
                dict(labels)["gateway"]: dict(labels)
                for (name, labels), v in scraped.items()
                if name == "edge_agent_info" and v == 1
            }
            assert info == {
                "gw-test": {"version": after["agent"]["version"], "site": "test-site", "gateway": "gw-test"}
            }
            for i, device in enumerate(after["drivers"]):
                name = device["name"]
                for field in ("readings", "polls"):
                    got = value(scraped, f"edge_agent_device_{field}_total", device=name)
                    assert got is not None
                    assert before["drivers"][i][field] <= got <= device[field], (name, field)
                assert value(scraped, "edge_agent_device_up", device=name) == 1
                assert value(scraped, "edge_agent_device_state", device=name, state="up") == 1
                assert value(scraped, "edge_agent_device_state", device=name, state="down") == 0
                assert value(scraped, "edge_agent_device_down_for_seconds", device=name) is None
                assert value(scraped, "edge_agent_device_last_read_age_seconds", device=name) is not None
            committed = value(scraped, "edge_agent_pipeline_committed_readings_total")
            assert committed is not None
            assert (
                before["pipeline"]["committed_readings"]
                <= committed
                <= after["pipeline"]["committed_readings"]
            )
            assert value(scraped, "edge_agent_buffer_max_bytes") == after["buffer"]["max_bytes"]
            assert value(scraped, "edge_agent_buffer_read_only") == 0
            assert value(scraped, "edge_agent_uplink_connected") == 1
            assert value(scraped, "edge_agent_uplink_state", state="online") == 1
            assert value(scraped, "edge_agent_uplink_info", server=after["uplink"]["broker"]) == 1
            acked = value(scraped, "edge_agent_uplink_acked_total")
            assert acked is not None
            assert before["uplink"]["acked"] <= acked <= after["uplink"]["acked"]
            assert value(scraped, "edge_agent_verdict", state="ok") == 1
            assert value(scraped, "edge_agent_alarms") == 0
            assert value(scraped, "edge_agent_clock_offset_seconds") is None  # sync_source none: unknown
            # Readings grow from scrape to scrape.
            first = value(scraped, "edge_agent_device_readings_total", device="plc") or 0
            wait_until(
                lambda: (value(metrics(port), "edge_agent_device_readings_total", device="plc") or 0) > first,
                30,
                "plc's readings to grow in the scrape",
            )

            # The PLC killed: its device shows down, the other stays up, the verdict degraded.
            plant.kill()
            agent.wait_status(lambda s: s["drivers"][1]["state"] == "down", timeout=60)
            scraped = metrics(port)
            assert value(scraped, "edge_agent_device_up", device="plc") == 0
            assert value(scraped, "edge_agent_device_state", device="plc", state="down") == 1
            assert value(scraped, "edge_agent_device_up", device="fake-plc") == 1
            down_for = value(scraped, "edge_agent_device_down_for_seconds", device="plc")
            assert down_for is not None
            assert down_for >= 0
            assert value(scraped, "edge_agent_verdict", state="degraded") == 1
            assert (value(scraped, "edge_agent_problems") or 0) >= 1
            # The CLI says the same, for a textfile collector: exit 0 though degraded.
            result = cli("status", "-c", str(config), "--prometheus")
            assert result.returncode == 0, result.stderr
            from_cli = samples_of(result.stdout)
            assert value(from_cli, "edge_agent_device_up", device="plc") == 0
            assert value(from_cli, "edge_agent_verdict", state="degraded") == 1

            # The broker stopped: the uplink shows 0 and for how long it has been down.
            broker.stop()
            agent.wait_status(lambda s: s["uplink"]["state"] != "online", timeout=60)
            scraped = metrics(port)
            assert value(scraped, "edge_agent_uplink_connected") == 0
            assert value(scraped, "edge_agent_uplink_state", state="online") == 0
            down_for = value(scraped, "edge_agent_uplink_down_for_seconds")
            assert down_for is not None
            assert down_for >= 0

            # OpenMetrics for a scraper that asks for it (Prometheus does by default).
            status, headers, body = scrape(port, accept="application/openmetrics-text; version=1.0.0")
            assert status == 200
            assert headers["content-type"].startswith("application/openmetrics-text"), headers
            names = {f.name for f in openmetrics_families(body.decode())}  # type: ignore[no-untyped-call]
            assert {"edge_agent", "edge_agent_device_readings", "edge_agent_uplink_connected"} <= names
            assert agent.stop() == 0
            log = agent.log()
    assert "Traceback" not in log
    assert "status.metrics_listening" in log


@pytest.fixture(scope="module")
def offline_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AgentProcess, int]]:
    """An agent with one fake device, its broker never answering, metrics on a free port."""
    port = free_port()
    directory = tmp_path_factory.mktemp("prom")
    config = with_metrics(write_agent_config(directory, devices=FAKE_DEVICE), f"127.0.0.1:{port}")
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["drivers"][0]["state"] == "up", timeout=60)
        wait_until(lambda: scrape(port)[0] == 200, 30, "the metrics endpoint to answer")
        yield agent, port
        assert agent.stop() == 0
        assert "Traceback" not in agent.log()


def test_requests_but_get_metrics_are_refused_and_counted(offline_agent: tuple[AgentProcess, int]) -> None:
    agent, port = offline_agent
    refused_before = agent.status()["rejected"]["status_requests"]
    status, headers, _ = scrape(port, method="POST")
    assert (status, headers.get("allow")) == (405, "GET, HEAD")
    assert scrape(port, "/")[0] == 404
    assert scrape(port, "/metrics/x")[0] == 404
    status, headers, body = scrape(port, method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 1000
    assert scrape(port, "/metrics?name[]=x")[0] == 200  # Prometheus's params are ignored
    assert raw_exchange(port, b"hello there\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # A 100 KB request line: refused without buffering it, the answer not lost to a reset.
    answer = raw_exchange(port, b"GET /" + b"m" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:100]
    many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(200))
    answer = raw_exchange(port, b"GET /metrics HTTP/1.1\r\n" + many + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    wait_until(
        lambda: agent.status()["rejected"]["status_requests"] >= refused_before + 6,
        15,
        "the refusals counted",
    )
    status = agent.status()
    assert status["verdict"]["state"] == "degraded"  # its broker never answers; nothing else
    assert [p for p in status["verdict"]["problems"] if not p.startswith("uplink")] == []


def test_clients_that_send_nothing_are_let_go_and_never_hold_the_endpoint(
    offline_agent: tuple[AgentProcess, int],
) -> None:
    agent, port = offline_agent
    silent = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(MAX_CONNECTIONS)]
    try:
        # One more than the agent serves at once: answered 503 at once, not queued.
        answer = raw_exchange(port, b"")
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]
        # The silent ones are answered 408 and closed once the request timeout passes.
        started = time.monotonic()
        for sock in silent:
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
        assert time.monotonic() - started < REQUEST_TIMEOUT_S + 20
    finally:
        for sock in silent:
            sock.close()
    # Served again, and the agent went on reading meanwhile.
    readings = value(metrics(port), "edge_agent_device_readings_total", device="fake-plc") or 0
    assert readings > 0
    assert agent.status()["drivers"][0]["readings"] >= readings


def test_a_port_in_use_leaves_the_agent_running_and_metrics_come_once_it_is_free(tmp_path: Path) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        config = with_metrics(write_agent_config(tmp_path, devices=FAKE_DEVICE), f"127.0.0.1:{port}")
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["drivers"][0]["readings"] > 0, timeout=60)
            log = agent.log()
            assert "status.metrics_unavailable" in log
            assert "[status] metrics" in log
            assert "Address already in use" in log
            holder.close()
            status, _, body = wait_until(
                lambda: _answer_or_none(port), 60, "the metrics endpoint once the port is free", every_s=0.5
            )
            assert status == 200
            assert value(samples_of(body.decode()), "edge_agent_device_up", device="fake-plc") == 1
            assert agent.stop() == 0
            assert "Traceback" not in agent.log()
    finally:
        holder.close()


def _answer_or_none(port: int) -> Any:
    try:
        return scrape(port)
    except (ConnectionError, OSError):
        return None


def test_status_prometheus_without_an_agent_says_down(tmp_path: Path) -> None:
    result = cli("status", "--socket", str(tmp_path / "none.sock"), "--prometheus")
    assert result.returncode == 2
    assert "no agent answers" in result.stderr
    samples = samples_of(result.stdout)
    assert value(samples, "edge_agent_verdict", state="down") == 1
    assert value(samples, "edge_agent_verdict", state="ok") == 0
    assert cli("status", "--json", "--prometheus").returncode == 2  # one format at a time


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("9464", 'expected "host:port"'),
        (":9464", 'expected "host:port"'),
        ("::1:9464", "an IPv6 address goes in brackets"),
        ("[::1:9464", "an IPv6 address goes in brackets"),
        ("[fe80::zz]:9464", "is not an IPv6 address"),
        ("127.0.0.300:9464", "is not an IPv4 address"),
        ("plc host:9464", "neither an IP address nor a host name"),
        ("127.0.0.1:0", "the port must be a number from 1 to 65535"),
        ("127.0.0.1:http", "the port must be a number from 1 to 65535"),
    ],
)
def test_check_config_names_the_key_and_what_it_expects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str, expected: str
) -> None:
    config = with_metrics(write_agent_config(tmp_path, devices=FAKE_DEVICE), address)
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "status.metrics: " in err
    assert expected in err


@pytest.mark.parametrize("address", ["127.0.0.1:9464", "0.0.0.0:9464", "[::1]:9464", "localhost:9464"])
def test_check_config_takes_host_and_port(tmp_path: Path, address: str) -> None:
    config = with_metrics(write_agent_config(tmp_path, devices=FAKE_DEVICE), address)
    result = cli("check-config", str(config))
    assert result.returncode == 0, result.stderr


def test_values_the_document_does_not_have_are_left_out() -> None:
    snapshot = {
        "agent": {"version": "1.0", "site": "s", "gateway": "g", "uptime_s": 1.5, "started_ns": 2 * 10**18},
        "drivers": [
            {"name": "a", "kind": "fake", "state": "up", "readings": 3, "last_read_age_s": 0.1},
            {"name": "b", "kind": "fake", "state": "starting", "readings": 0, "last_read_age_s": None},
        ],
        "pipeline": {"committed_readings": 3, "pending": 0},
        "buffer": {},  # not measured yet
        "uplink": {"state": "connecting", "connected": False, "broker": "h:1", "last_ack_ns": None},
        "processors": [],
        "alarms": [],
        "clock": {"synchronised": None, "offset_ms": float("nan")},
        "certificate": None,
        "watchdog": None,
        "commands": None,
        "verdict": {"state": "degraded", "problems": ["uplink connecting (h:1)"]},
    }
    text = exposition_text(snapshot)
    samples = samples_of(text)
    assert not any(name.startswith("edge_agent_buffer_") for name, _ in samples)
    assert not any(name.startswith(("edge_agent_clock_", "edge_agent_certificate_")) for name, _ in samples)
    assert value(samples, "edge_agent_device_last_read_age_seconds", device="a") == 0.1
    assert value(samples, "edge_agent_device_last_read_age_seconds", device="b") is None
    assert value(samples, "edge_agent_device_up", device="b") == 0
    assert value(samples, "edge_agent_uplink_last_ack_timestamp_seconds") is None
    assert value(samples, "edge_agent_start_time_seconds") == 2e9
    assert all(not math.isnan(v) for v in samples.values())
    assert "NaN" not in text
