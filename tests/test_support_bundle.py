"""`edge-agent support-bundle`: the one archive a technician sends when a gateway misbehaves.

A real agent (fake PLC, a Mosquitto that wants a password) gives its status, outbox figures and
config; the secrets of its config (a broker password by file reference, an inline metrics
password) are in no byte of the archive. Without an agent, and with a config that does not load,
a bundle is still made and says why parts are missing."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto
from tests.support.cli import edge_agent
from tests.support.testing import FAKE_DEVICE, agent_config, free_port
from water_edge.agent.config_redaction import Redactor, config_text_secrets, redact_config_text
from water_edge.agent.support_bundle import JOURNAL_MAX_BYTES, make_bundle
from water_edge.buffer.outbox import Outbox
from water_edge.buffer.types import Batch
from water_edge.core.mounts import in_ram, mount_of, parse_mountinfo
from water_edge.core.reading import Event, Reading, now_ns
from water_edge.core.redact import MASK

BROKER_PASSWORD = "br0ker-S3cret-from-file"
METRICS_PASSWORD = "metr1cs-Inline-pa55"
INLINE_BROKER_PASSWORD = "inl1ne-Br0ker-pa55word"
READING_VALUE = 987654.321  # a value no figure of the gateway's own is likely to be


def bundle_files(archive: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        files = {}
        for member in tar:
            assert member.isfile(), member.name
            assert member.mode & 0o077 == 0, member.name
            extracted = tar.extractfile(member)
            assert extracted is not None
            files[member.name] = extracted.read()
    return files


def assert_manifest_matches(files: dict[str, bytes]) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(files["MANIFEST.json"])
    assert manifest["format"] == "edge-agent-support/1"
    assert set(manifest["files"]) == set(files) - {"MANIFEST.json"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == hashlib.sha256(files[name]).hexdigest(), name
        assert entry["bytes"] == len(files[name]), name
    return manifest


def assert_no_secret(archive: bytes, files: dict[str, bytes], *secrets: str) -> None:
    """No secret in any member's bytes, nor in the decompressed tar as a whole (names, headers)."""
    whole = gzip.decompress(archive)
    for secret in secrets:
        for form in {secret, json.dumps(secret)[1:-1]}:
            assert form.encode() not in whole, form
            leaked = [name for name, data in files.items() if form.encode() in data]
            assert not leaked, (form, leaked)


def assert_journal_part(files: dict[str, bytes], manifest: dict[str, Any]) -> None:
    """journald may not run where the tests do: then the MANIFEST says why there is no journal."""
    if "journal.txt" not in files:
        assert manifest["missing"]["journal.txt"].startswith("journalctl"), manifest["missing"]


def secret_file(directory: Path, value: str) -> Path:
    path = directory / "broker.pass"
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def with_metrics(text: str, password: str) -> str:
    """The config with a metrics endpoint on localhost whose scraper password is written inline."""
    text = text.replace("[status]\n", f'[status]\nmetrics = "127.0.0.1:{free_port()}"\n', 1)
    return text + f'\n[status.metrics_auth]\nusername = "prometheus"\npassword = "{password}"\n'


@pytest.fixture
def broker() -> Any:
    with Mosquitto(users={"gw-test": BROKER_PASSWORD}) as server:
        yield server


def test_a_running_agents_bundle_has_its_status_outbox_and_config_and_no_secret(
    tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    password_file = secret_file(tmp_path, BROKER_PASSWORD)
    # journald does not run here: the unit's journal as a library might have written it, quoting
    # both passwords (the agent's own log lines are redacted; a library's print is not).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_journalctl(
        bin_dir,
        f'echo "2026-12-07T10:00:00+0000 gw edge-agent[1]: CONNECT user=gw-test pw={BROKER_PASSWORD}"\n'
        f'echo "2026-12-07T10:00:01+0000 gw edge-agent[1]: basic auth {METRICS_PASSWORD}"',
    )
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    text = agent_config(
        tmp_path / "state",
        broker_port=broker.port,
        devices=FAKE_DEVICE,
        uplink={"username": "gw-test", "password": {"file": str(password_file)}},
    )
    config = tmp_path / "agent.toml"
    config.write_text(with_metrics(text, METRICS_PASSWORD))
    with running_agent(config) as agent:
        agent.wait_status(lambda s: s["uplink"]["state"] == "online" and s["drivers"][0]["state"] == "up")
        out = tmp_path / "gw-support.tar.gz"
        run = edge_agent("support-bundle", "-c", str(config), "--out", str(out))
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"{out}: ")
        assert out.stat().st_mode & 0o777 == 0o600
    archive = out.read_bytes()
    files = bundle_files(archive)
    manifest = assert_manifest_matches(files)
    assert manifest["config_loads"] is True
    assert {
        "versions.json",
        "config.toml.redacted",
        "check-config.txt",
        "status.json",
        "outbox.json",
        "host.json",
        "serial.json",
        "learnt_state.json",
    } <= set(files), manifest["missing"]
    status = json.loads(files["status.json"])
    assert [d["name"] for d in status["drivers"]] == ["fake-plc"]
    assert status["uplink"]["state"] == "online"
    outbox = json.loads(files["outbox.json"])
    assert outbox["path"] == str(tmp_path / "state" / "outbox.sqlite")
    assert {"rows", "bytes", "oldest_age_s", "evicted_rows", "epoch"} <= set(outbox["stats"])
    assert outbox["stats"]["epoch"] == status["buffer"]["epoch"]
    check = files["check-config.txt"].decode()
    assert f"{config}: OK (1 devices" in check
    assert check.rstrip().endswith("exit status 0")
    redacted = files["config.toml.redacted"].decode()
    assert f'password = "{MASK}"' in redacted  # the inline one
    assert str(password_file) in redacted  # where the broker's comes from is no secret
    assert 'username = "gw-test"' in redacted
    versions = json.loads(files["versions.json"])
    assert versions["packages"]["water-edge-agent"]
    assert "synchronised" in versions["clock_sync"]
    host = json.loads(files["host.json"])
    assert host["health"]["filesystem"] == str(tmp_path / "state")
    assert host["health"]["state_in_ram"] == in_ram(tmp_path / "state")  # None: on disk
    table = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
    holder = mount_of(tmp_path / "state", table)
    assert holder is not None
    assert host["mounts"]["state_dir"] == dataclasses.asdict(holder)
    assert host["memory"]["MemTotal_kib"] > 0
    assert files["journal.txt"].decode().splitlines() == [
        f"2026-12-07T10:00:00+0000 gw edge-agent[1]: CONNECT user=gw-test pw={MASK}",
        f"2026-12-07T10:00:01+0000 gw edge-agent[1]: basic auth {MASK}",
    ]
    assert_no_secret(archive, files, BROKER_PASSWORD, METRICS_PASSWORD)


def seeded_outbox(state_dir: Path) -> Path:
    """An outbox, closed, as an agent that stopped leaves it: readings and events not yet sent."""
    state_dir.mkdir(parents=True)
    path = state_dir / "outbox.sqlite"
    outbox = Outbox(path, max_bytes=10 * 2**20)
    try:
        now = now_ns()
        outbox.append(
            [
                Batch(
                    "fake-plc", readings=[Reading("fake-plc", "level", now - 2_000_000_000, READING_VALUE)]
                ),
                Batch(
                    "events",
                    events=[
                        Event(
                            "device_down",
                            "fake-plc",
                            now - 1_000_000_000,
                            "warning",
                            detail={"error": "timeout"},
                        ),
                        Event(
                            "host_disk_low",
                            "host",
                            now,
                            "warning",
                            detail={"free_bytes": 1, "password": "hidden-xyz"},
                        ),
                    ],
                ),
            ]
        )
    finally:
        outbox.close()
    return path


def test_without_an_agent_the_bundle_says_why_status_is_missing_and_holds_the_outbox_events(
    tmp_path: Path,
) -> None:
    text = agent_config(
        tmp_path / "state",
        devices=FAKE_DEVICE,
        uplink={"username": "gw-test", "password": INLINE_BROKER_PASSWORD},
    )
    config = tmp_path / "agent.toml"
    config.write_text(text)
    seeded_outbox(tmp_path / "state")
    state_before = sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "state").iterdir())
    out = tmp_path / "support.tar.gz"
    run = edge_agent("support-bundle", "-c", str(config), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "not in it: status.json: no agent running: " in run.stdout
    # Read-only: not a file created nor touched in the state directory.
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (tmp_path / "state").iterdir()) == state_before
    archive = out.read_bytes()
    files = bundle_files(archive)
    manifest = assert_manifest_matches(files)
    assert "status.json" not in files
    assert manifest["missing"]["status.json"].startswith("no agent running: ")
    assert str(tmp_path / "state" / "status.sock") in manifest["missing"]["status.json"]
    outbox = json.loads(files["outbox.json"])
    assert outbox["stats"]["rows"] == 2
    events = outbox["events"]
    assert [(e["kind"], e["source"], e["severity"]) for e in events] == [
        ("host_disk_low", "host", "warning"),
        ("device_down", "fake-plc", "warning"),
    ]
    assert events[1]["detail"] == {"error": "timeout"}
    assert events[0]["detail"]["password"] == MASK
    assert events[0]["time"].endswith("+00:00")
    assert b"hidden-xyz" not in gzip.decompress(archive)
    # Never a reading's value.
    assert not [name for name, data in files.items() if str(READING_VALUE).encode() in data]
    redacted = files["config.toml.redacted"].decode()
    assert f'password = "{MASK}"' in redacted
    assert_journal_part(files, manifest)
    assert_no_secret(archive, files, INLINE_BROKER_PASSWORD)


def test_a_config_that_does_not_load_still_gives_a_bundle_with_its_errors(tmp_path: Path) -> None:
    text = agent_config(
        tmp_path / "state", uplink={"username": "gw-test", "password": INLINE_BROKER_PASSWORD}
    )
    config = tmp_path / "agent.toml"
    # Half-edited: no longer TOML, and a password the parser's error may quote.
    config.write_text(text.replace("[buffer]", "[buffer\nbroken = ", 1))
    out = tmp_path / "support.tar.gz"
    run = edge_agent("support-bundle", "-c", str(config), "--out", str(out))
    assert run.returncode == 2, run.stderr
    assert "does not load; its errors are in check-config.txt" in run.stderr
    archive = out.read_bytes()
    files = bundle_files(archive)
    manifest = assert_manifest_matches(files)
    assert manifest["config_loads"] is False
    check = files["check-config.txt"].decode()
    assert "invalid configuration:" in check
    assert check.rstrip().endswith("exit status 2")
    assert f'password = "{MASK}"' in files["config.toml.redacted"].decode()
    # The state directory and socket still come from the broken file.
    assert str(tmp_path / "state" / "status.sock") in manifest["missing"]["status.json"]
    assert manifest["state_dir"] == str(tmp_path / "state")
    assert_no_secret(archive, files, INLINE_BROKER_PASSWORD)


def test_a_config_that_does_not_validate_has_its_problems_in_check_config(tmp_path: Path) -> None:
    text = agent_config(
        tmp_path / "state", uplink={"username": "gw-test", "password": INLINE_BROKER_PASSWORD}
    )
    config = tmp_path / "agent.toml"
    config.write_text(text.replace("[buffer]\n", "[buffer]\nmax_byte = 5\n", 1))
    bundle = make_bundle(config)
    files = bundle_files(bundle.archive)
    assert not bundle.config_loads
    assert "buffer.max_byte" in files["check-config.txt"].decode()
    assert_no_secret(bundle.archive, files, INLINE_BROKER_PASSWORD)


def test_out_dash_writes_the_archive_alone_to_stdout(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config(tmp_path / "state", uplink={"username": "gw-test", "password": INLINE_BROKER_PASSWORD})
    )
    piped = subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "support-bundle", "-c", str(config), "--out", "-"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert piped.returncode == 0, piped.stderr
    assert piped.stderr.decode().startswith("stdout: ")
    files = bundle_files(piped.stdout)
    assert_manifest_matches(files)
    assert_no_secret(piped.stdout, files, INLINE_BROKER_PASSWORD)


def test_the_archive_is_never_written_into_the_state_directory(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    run = edge_agent("support-bundle", "-c", str(config), "--out", str(tmp_path / "state" / "b.tar.gz"))
    assert run.returncode == 1
    assert "inside the agent's state directory" in run.stderr
    assert not (tmp_path / "state" / "b.tar.gz").exists()


def fake_journalctl(directory: Path, body: str) -> Path:
    script = directory / "journalctl"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return script


def test_the_journal_keeps_the_newest_lines_redacted_and_says_when_it_cannot_be_had(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config(tmp_path / "state", uplink={"username": "gw-test", "password": INLINE_BROKER_PASSWORD})
    )
    # journald does not run here: a journalctl that prints its arguments, 8 MiB of lines, and a
    # line quoting the password (a library that logged what it was given).
    journal = fake_journalctl(
        tmp_path,
        'echo "args: $*"\n'
        "i=0; while [ $i -lt 90000 ]; do "
        'echo "2026-12-07T10:00:00+0000 gw edge-agent[1]: line $i padding padding padding padding"; '
        "i=$((i+1)); done\n"
        f'echo "2026-12-07T11:00:00+0000 gw edge-agent[1]: connect with password={INLINE_BROKER_PASSWORD}"',
    )
    bundle = make_bundle(config, journalctl=str(journal))
    files = bundle_files(bundle.archive)
    text = files["journal.txt"].decode()
    assert len(files["journal.txt"]) <= JOURNAL_MAX_BYTES
    assert text.endswith(f"connect with password={MASK}\n")  # the newest line kept, masked
    assert "line 89999 " in text
    assert "args: " not in text  # the oldest went
    assert bundle.manifest["notes"]["journal.txt"][0].startswith("the newest ")
    assert_no_secret(bundle.archive, files, INLINE_BROKER_PASSWORD)

    arguments = make_bundle(config, journalctl=str(fake_journalctl(tmp_path, 'echo "$*"')))
    assert bundle_files(arguments.archive)["journal.txt"] == (
        b"-u edge-agent.service --since -24h -o short-iso --no-pager\n"
    )
    refused = make_bundle(
        config, journalctl=str(fake_journalctl(tmp_path, 'echo "Access denied" >&2; exit 1'))
    )
    assert refused.manifest["missing"]["journal.txt"] == "journalctl refused (exit 1): Access denied"
    missing = make_bundle(config, journalctl=str(tmp_path / "no-journalctl"))
    assert missing.manifest["missing"]["journal.txt"].startswith("journalctl cannot be run: ")


CONFIG_WITH_SECRETS = """\
schema_version = 1
[gateway]
site = "s"
id = "g"
[uplink]
host = "broker.example"
username = "gw17"
password = "uplink-literal-1"
proxy = "http://gw17:proxy-in-url-2@proxy.corp:3128"
proxy_password = { file = "PROXYFILE" }
[uplink.websocket_headers]
X-Api-Key = "header-table-3"
Cookie = "cookie-value-4"
[status.metrics_auth]
username = "prometheus"
'password' = '''multi
line-5'''
[[devices]]
name = "meters"
kind = "wmbus"
meters = [{ id = "12345678", key = "00112233445566778899AABBCCDDEEFF" },
  { id = "2", key = { env = "METER_KEY" } }]
opcua.password = "dotted-6"
token = 'literal-token-7'
"""


def test_every_form_of_secret_in_a_config_text_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy_file = tmp_path / "proxy.pass"
    proxy_file.write_text("proxy-from-file-8\n")
    proxy_file.chmod(0o600)
    monkeypatch.setenv("METER_KEY", "from-the-environment-9")
    text = CONFIG_WITH_SECRETS.replace("PROXYFILE", str(proxy_file))
    values = config_text_secrets(text)
    assert {"proxy-from-file-8", "from-the-environment-9", "uplink-literal-1", "proxy-in-url-2"} <= set(
        values
    )
    redacted = redact_config_text(text, Redactor(values))
    for secret in (
        "uplink-literal-1",
        "proxy-in-url-2",
        "header-table-3",
        "cookie-value-4",
        "line-5",
        "00112233445566778899AABBCCDDEEFF",
        "dotted-6",
        "literal-token-7",
    ):
        assert secret not in redacted, secret
    for kept in (
        'username = "gw17"',
        'host = "broker.example"',
        str(proxy_file),
        'env = "METER_KEY"',
        "http://gw17:",
    ):
        assert kept in redacted, kept
    # Half-edited, no longer TOML: still masked line by line, its references still read.
    assert "proxy-from-file-8" in config_text_secrets(text.replace("[gateway]", "[gateway", 1))
    broken = redact_config_text(text.replace("[gateway]", "[gateway", 1), Redactor(()))
    assert "uplink-literal-1" not in broken
    assert "dotted-6" not in broken
    assert f'password = "{MASK}"' in broken


def test_a_part_that_hangs_is_left_behind_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from water_edge.agent import support_bundle

    config = tmp_path / "agent.toml"
    config.write_text(agent_config(tmp_path / "state"))

    def slow(_ctx: Any) -> bytes:
        time.sleep(3)
        return b"late"

    monkeypatch.setattr(
        support_bundle,
        "GATHERERS",
        (*support_bundle.GATHERERS[:-1], ("journal.txt", slow, 0.2)),
    )
    bundle = make_bundle(config)
    assert bundle.manifest["missing"]["journal.txt"] == "not gathered within 0.2 s"
    assert "versions.json" in bundle.manifest["files"]


def test_a_config_or_check_config_stuck_on_a_hung_card_does_not_hold_the_bundle_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A card or mount that hangs every read (an SD card at its end, a dead NFS share) blocks
    whatever touches it for good: loading the config (it looks at the state directory) and
    `check-config` are given up after their time, as the parts are."""
    from water_edge.agent import config as agent_config_module
    from water_edge.agent import support_bundle

    state = tmp_path / "state"
    config = tmp_path / "agent.toml"
    config.write_text(agent_config(state, uplink={"username": "gw", "password": "hung-card-secret-1"}))

    def hung(*_args: Any, **_kwargs: Any) -> Any:
        time.sleep(5)
        raise AssertionError("not reached in time")

    monkeypatch.setattr(agent_config_module, "load_config", hung)
    monkeypatch.setattr(support_bundle, "CONFIG_TIMEOUT_S", 0.3)
    monkeypatch.setattr(support_bundle, "CHECK_CONFIG_TIMEOUT_S", 0.001)  # stopped before it can answer
    started = time.monotonic()
    bundle = make_bundle(config)
    assert time.monotonic() - started < 4
    assert not bundle.config_loads
    assert "were not read within 0.3 s" in " ".join(bundle.manifest["notes"]["bundle"])
    assert bundle.manifest["state_dir"] == str(state), "the state directory is read from the config's text"
    with tarfile.open(fileobj=io.BytesIO(bundle.archive), mode="r:gz") as tar:
        check = tar.extractfile("check-config.txt")
        assert check is not None
        text = check.read().decode()
        redacted = tar.extractfile("config.toml.redacted")
        assert redacted is not None
        assert b"hung-card-secret" not in redacted.read()
    assert "did not finish within 0.001 s and was stopped" in text
    assert text.rstrip().endswith("exit status none (stopped)")


def test_a_secret_reference_that_cannot_be_read_is_named_in_the_manifest(tmp_path: Path) -> None:
    password_file = secret_file(tmp_path, BROKER_PASSWORD)
    password_file.chmod(0o644)  # the agent refuses it too: its value is not looked for
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_config(
            tmp_path / "state", uplink={"username": "gw-test", "password": {"file": str(password_file)}}
        )
    )
    bundle = make_bundle(config)
    (note,) = bundle.manifest["notes"]["config.toml.redacted"]
    assert note.startswith(
        f"the secret (from file {password_file}): secret: {password_file} is readable by others"
    )
    assert "run as root or as the agent's user" in note
