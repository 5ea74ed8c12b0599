"""`check-config` lists every problem of a file in one run: the checks across keys (servers and
host, the socket's length, a report-by-exception rule) are made beside the keys' own errors, not
one run at a time once those are fixed (a user's walkthrough needed five runs for one file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config import problems_for
from water_edge.agent.cli import main

# One of each: keys refused on their own (uplink, buffer, log, gateway, a device) and the checks
# across keys, in other sections and beside them in the same one.
EVERY_KIND = """
schema_version = 1

[gateway]
site = "north plant"
id = "gw-01"
state_dir = "{state}"

[uplink]
servers = ["mqtt://a:1883", "mqtts://b", "tcp://a:1883"]
host = "x"
max_inflight = 0
reconnect_min_s = 100
reconnect_max_s = 1
compression = "zstd"
protocol = "3.1.1"
username = 5

[uplink.rbe]
deadband_pct = 1

[[uplink.rbe.tags]]
match = "flow"
deadband = 1

[[uplink.rbe.tags]]
match = "sim/flow"
deadband = -1

[buffer]
flush_interval_ms = 0

[status]
socket = "{long}/status.sock"

[log]
level = "verbose"

[[devices]]
name = "d"
kind = "fake"
stream = "events"

[[devices]]
name = "sim"
kind = "fake"
stream = "status"

  [[devices.tags]]
  name = "flow"
"""


def _every_kind(tmp_path: Path) -> str:
    return EVERY_KIND.replace("{long}", "/tmp/" + "x" * 120)


def test_every_problem_of_the_file_is_listed_in_one_run(tmp_path: Path) -> None:
    source = tmp_path / "agent.toml"
    long = "/tmp/" + "x" * 120 + "/status.sock"
    problems = problems_for(tmp_path, _every_kind(tmp_path))
    expected = [
        # the keys' own errors
        "gateway.site: expected ",
        "uplink.max_inflight: Input should be greater than or equal to 1 (got 0)",
        "uplink.username: expected a string (got 5)",
        "uplink.rbe.tags[1].deadband: Input should be greater than or equal to 0 (got -1)",
        "buffer.flush_interval_ms: Input should be greater than or equal to 10 (got 0)",
        "log.level: Input should be 'debug', 'info', 'warning' or 'error' (got 'verbose')",
        "devices[0] (d).tags: required key is missing",
        # the checks across keys
        'uplink.compression: compression needs protocol = "5"',
        "uplink.servers: give either servers = [...] or host/port, not both",
        "uplink.servers: mqtt://a:1883 is listed twice",
        "uplink.servers: mqtts:// servers need [uplink.tls]",
        "uplink.reconnect_max_s: reconnect_max_s must be >= reconnect_min_s (got 1 < 100)",
        "uplink.rbe.tags[0].match: expected a 'device/tag' pattern",
        f"status.socket: the status socket {long} is {len(long)} bytes long",
        "devices[0] (d).stream: 'events' is reserved for the agent's own messages",
        "devices[1] (sim).stream: 'status' is reserved for the agent's own messages",
    ]
    for line in expected:
        assert [p for p in problems if p.startswith(f"{source}: {line}")], (line, problems)
    assert len(problems) == len(expected), problems


def test_check_config_and_run_list_the_same_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "agent.toml"
    problems = problems_for(tmp_path, _every_kind(tmp_path))
    assert main(["check-config", "-c", str(source)]) == 2
    listed = capsys.readouterr().err.splitlines()
    assert listed == ["invalid configuration:", *(f"  {p}" for p in problems)]


def test_a_check_across_keys_is_skipped_when_a_key_it_needs_is_refused(tmp_path: Path) -> None:
    """reconnect_min_s refused on its own: comparing reconnect_max_s with its default (0.5) would
    invent a second problem; a socket in a refused state_dir has no length to judge."""
    source = tmp_path / "agent.toml"
    text = _every_kind(tmp_path).replace("reconnect_min_s = 100", "reconnect_min_s = -1")
    text = text.replace("reconnect_max_s = 1", "reconnect_max_s = 0.2")
    text = text.replace('state_dir = "{state}"', 'state_dir = "state"')
    text = text.replace("{long}/status.sock", "status.sock")
    problems = problems_for(tmp_path, text)
    assert not [p for p in problems if "reconnect_max_s" in p], problems
    assert [p for p in problems if p.startswith(f"{source}: uplink.reconnect_min_s: Input should be greater")]
    assert [p for p in problems if p.startswith(f"{source}: gateway.state_dir: expected an absolute path")]
    assert not [p for p in problems if "status.socket" in p], problems


def test_a_refused_server_list_skips_the_checks_that_need_it(tmp_path: Path) -> None:
    source = tmp_path / "agent.toml"
    text = _every_kind(tmp_path).replace('"tcp://a:1883"]', '"ftp://a"]')
    problems = problems_for(tmp_path, text)
    # given together with host: wrong whatever the list holds; twice or mqtts://: not judged
    assert [p.split(": ", 2)[1:] for p in problems if p.startswith(f"{source}: uplink.servers")] == [
        [
            "uplink.servers[2]",
            "expected mqtt://host[:port] or mqtts://host[:port]: unknown scheme 'ftp' (got 'ftp://a')",
        ],
        ["uplink.servers", "give either servers = [...] or host/port, not both"],
    ]
