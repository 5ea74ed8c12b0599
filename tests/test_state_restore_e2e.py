"""A new card takes its dead predecessor's learning by signed command, with nobody on site
(docs/fleet.md, "Restoring a card from the centre").

A real agent polls a firmware-sim PLC and calibrates its pump: the old card. Its learnt state is
exported whole, with the pump's rolling history (the archive the centre keeps is the same format
without the histories, and `edge-centre state-backup` hands it back byte for byte:
test_state_backup_e2e.py; a calibrated pump's learning fits one part, as most restores will;
parts in any order, repeated, dropped and put together: test_state_restore.py). A new card starts
learning from nothing, its own pump history open when the archive arrives. An operator signs the
archive with `edge-agent ca sign-state-restore` and publishes it with `mosquitto_pub -l` through
a real Mosquitto; the agent answers, stages the archive and exits to be restarted (as systemd does
on its exit code); at its next start the pump is armed on the old calibration, and the gateway
says so in an event and in its status."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Publisher, Subscriber, TlsFiles
from tests.support.cli import edge_agent
from tests.support.commands import command_results, events, operator_security
from tests.support.impaired_link import ImpairedLink
from tests.support.plant import running_plant
from tests.support.pump_cards import pump1_health, pump_card
from tests.support.testing import (
    AGENT_GATEWAY,
    AGENT_SITE,
    agent_config,
    demo_devices,
    free_port,
)
from water_edge.agent.assembly import EXIT_RESTART
from water_edge.agent.state_transfer import export_state

pytestmark = pytest.mark.slow

BASE = f"water/{AGENT_SITE}/{AGENT_GATEWAY}"
NO_BACKUP = "[state_backup]\nenabled = false\n"


def test_a_new_card_takes_the_old_cards_learning_by_signed_command_and_starts_armed_on_it(
    tmp_path: Path,
) -> None:
    operator, key = console_key(tmp_path)
    with Mosquitto() as broker, running_plant(seed=7) as plant:
        devices = demo_devices(plant.port, poll_interval_ms=50)
        old = pump_card(tmp_path, "old-card", devices, broker.port, extra=NO_BACKUP)
        with running_agent(old) as agent:
            armed = agent.wait_status(lambda s: pump1_health(s).get("state") == "armed", timeout=90)
            calibration = pump1_health(armed)["calibration"]
            assert agent.stop() == 0
        archive = tmp_path / "gw-test-state.tar.gz"
        exported = edge_agent("state", "export", "-c", str(old), "--out", str(archive))
        assert exported.returncode == 0, exported.stderr
        # The old card is gone. The new one has no learning of its own yet.
        new = pump_card(
            tmp_path, "new-card", devices, broker.port,
            security=operator_security(operator, ["state_restore"]), extra=NO_BACKUP,
        )  # fmt: skip
        with Subscriber(broker.host, broker.port, f"{BASE}/events") as sub, running_agent(new) as agent:
            first = agent.wait_status(
                lambda s: bool(pump1_health(s)) and s["uplink"]["state"] == "online", timeout=30
            )
            assert pump1_health(first)["state"] != "armed"
            assert first["state_backup"]["restore"] is None
            signed = edge_agent(
                "ca", "sign-state-restore", str(archive), "--key", str(key), "--key-id", "control-room",
                "--target", f"{AGENT_SITE}/{AGENT_GATEWAY}",
            )  # fmt: skip
            assert signed.returncode == 0, signed.stderr
            parts = signed.stdout.splitlines()
            published = subprocess.run(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-q", "1", "-l",
                 "-t", f"{BASE}/cmd/state_restore"],
                input=signed.stdout.encode(), capture_output=True, timeout=30, check=False,
            )  # fmt: skip
            assert published.returncode == 0, published.stderr
            # It answers every part and restarts itself once it holds the whole archive.
            assert agent.process.wait(60) == EXIT_RESTART, agent.log()[-3000:]
            answers = sub.wait_until(lambda m: len(command_results(m)) >= len(parts), 30)
            results = command_results(answers)
            assert [r["status"] for r in results] == ["ok"] * len(parts), results
            last = results[-1]["result"]
            assert last["staged"] is True
            assert (last["site"], last["gateway"], last["restarting"]) == (AGENT_SITE, AGENT_GATEWAY, True)
        # Started again, as systemd starts it on that exit code.
        with Subscriber(broker.host, broker.port, f"{BASE}/events") as sub, running_agent(new) as agent:
            now = agent.wait_status(lambda s: bool(pump1_health(s)), timeout=30)
            assert pump1_health(now)["state"] == "armed", pump1_health(now)
            assert pump1_health(now)["calibration"] == calibration
            restore = now["state_backup"]["restore"]
            assert restore["outcome"] == "restored"
            assert restore["requested_by"].endswith("from control-room")
            assert any(line.startswith("state restore:") for line in now["state_backup"]["lines"])
            restored = events(
                sub.wait_until(lambda m: bool(events(m, "state_restored")), 30), "state_restored"
            )
            assert restored[0]["detail"]["files"] == restore["files"] >= 2  # the calibration and the history
            assert agent.stop() == 0


def console_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    operator = Ed25519PrivateKey.generate()
    key = tmp_path / "ops.pem"
    key.write_bytes(
        operator.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return operator, key


def large_learnt_archive(tmp_path: Path) -> tuple[Path, bytes]:
    """A gateway's learnt state of 2 MiB (a hydrophone baseline that does not compress): 33 parts
    of 64 KiB, more than the gateway's command inbox holds at once."""
    old = tmp_path / "old-card-state"
    (old / "leak" / "h1").mkdir(parents=True)
    baseline = os.urandom(2 * 2**20)
    (old / "leak" / "h1" / "baseline.json").write_bytes(baseline)
    archive = tmp_path / "gw-test-state.tar.gz"
    archive.write_bytes(export_state(old, AGENT_SITE, AGENT_GATEWAY).archive)
    return archive, baseline


def pki(tmp_path: Path) -> dict[str, Path]:
    """A CA, the broker's certificate and the operator console's client certificate, made with
    `edge-agent ca` as a utility makes them."""
    ca, files = tmp_path / "ca", {}
    assert edge_agent("ca", "init", "--dir", str(ca), "--name", "test CA").returncode == 0
    for kind, cn, extra in (
        ("server-cert", "broker", ["--host", "127.0.0.1"]),
        ("client-cert", "ops-console", []),
    ):
        cert, key = tmp_path / f"{cn}.pem", tmp_path / f"{cn}.key"
        made = edge_agent(
            "ca", kind, "--dir", str(ca), "--cn", cn, *extra, "--cert", str(cert), "--key", str(key)
        )
        assert made.returncode == 0, made.stderr
        files[f"{cn}.cert"], files[f"{cn}.key"] = cert, key
    files["ca"] = ca / "ca.pem"
    return files


def send_restore(
    archive: Path, key: Path, port: int, *extra: str, stdin: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "water_edge.agent.cli", "ca", "send-state-restore", str(archive),
         "--key", str(key), "--key-id", "control-room", "--target", f"{AGENT_SITE}/{AGENT_GATEWAY}",
         "--broker", "127.0.0.1", "--port", str(port), *extra],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def plain_card(tmp_path: Path, broker_port: int, security: str, uplink: dict[str, Any] | None = None) -> Path:
    config = tmp_path / "new-card.toml"
    config.write_text(
        agent_config(
            tmp_path / "new-card-state",
            broker_port=broker_port,
            uplink=uplink,
            status_socket=tmp_path / "new-card.sock",
            devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": 200, "tags": [{"name": "flow"}]}],
            security=security,
            extra="[state_backup]\nenabled = false\n",
        )
    )
    return config


def test_the_console_sends_a_large_archive_over_tls_to_a_card_not_yet_online_and_follows_it_to_the_end(
    tmp_path: Path,
) -> None:
    operator, key = console_key(tmp_path)
    archive, baseline = large_learnt_archive(tmp_path)
    files = pki(tmp_path)
    gateway_port = free_port()
    tls = TlsFiles(files["ca"], files["broker.cert"], files["broker.key"], require_certificate=True)
    with Mosquitto(tls=tls, plain_ports=(gateway_port,)) as broker:
        security = operator_security(operator, ["state_restore"]) + "max_per_minute = 600\n"
        config = plain_card(tmp_path, gateway_port, security)
        # The console starts before the new card is online: what it publishes meanwhile is lost
        # (the gateway's session is clean), and it sends those parts again when they go unanswered.
        console = send_restore(
            archive, key, broker.port,
            "--cafile", str(files["ca"]), "--cert", str(files["ops-console.cert"]),
            "--client-key", str(files["ops-console.key"]),
            "--part-kib", "64", "--per-minute", "600", "--answer-timeout", "2", "--wait", "60",
        )  # fmt: skip
        try:
            time.sleep(3)
            with running_agent(config) as agent:
                assert agent.process.wait(60) == EXIT_RESTART, agent.log()[-3000:]
            with running_agent(config) as agent:  # started again, as systemd does
                out, err = console.communicate(timeout=90)
                assert console.returncode == 0, err.decode()[-3000:]
                status = agent.wait_status(lambda s: s["state_backup"]["restore"] is not None, timeout=10)
                assert agent.stop() == 0
        finally:
            console.kill()
    said = out.decode()
    assert f"staged on {AGENT_SITE}/{AGENT_GATEWAY}: 1 files" in said
    assert "restored: the gateway put 1 files in place at its start" in said
    sent = int(said.split("(")[1].split(" parts sent")[0])
    assert sent > 33, f"{sent} parts sent: none again, though the card was offline at first"
    assert (tmp_path / "new-card-state" / "leak" / "h1" / "baseline.json").read_bytes() == baseline
    assert status["state_backup"]["restore"]["outcome"] == "restored"


def test_the_console_stops_at_the_gateways_refusal_and_says_why(tmp_path: Path) -> None:
    operator, key = console_key(tmp_path)
    archive, _ = large_learnt_archive(tmp_path)
    with Mosquitto() as broker:
        config = plain_card(tmp_path, broker.port, operator_security(operator, ["read_now"]))
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            console = send_restore(archive, key, broker.port, "--part-kib", "64")
            _, err = console.communicate(timeout=60)
            assert agent.process.poll() is None, "the gateway restarted for a refused restore"
    assert console.returncode == 1
    assert (
        "part 1/33 was refused: not_authorised: key 'control-room' may not send 'state_restore'"
        in err.decode()
    )
    assert not (tmp_path / "new-card-state" / "restore" / "pending.tar.gz").exists()


def test_another_senders_refusal_without_an_id_does_not_stop_the_console_and_its_own_does(
    tmp_path: Path,
) -> None:
    """A refusal before the signature was checked (`malformed`, `unknown_key`...) names no id: the
    console knows its own by the digest of the payload it answers (`sha`), and goes on past
    another sender's. Before, it stopped at any such refusal of a `state_restore`."""
    operator, key = console_key(tmp_path)
    archive, baseline = large_learnt_archive(tmp_path)
    with Mosquitto() as broker:
        security = operator_security(operator, ["state_restore"]) + "max_per_minute = 600\n"
        config = plain_card(tmp_path, broker.port, security)
        with running_agent(config) as agent, Subscriber(broker.host, broker.port, f"{BASE}/events") as seen:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            console = send_restore(archive, key, broker.port, "--part-kib", "64", "--per-minute", "600",
                                   "--wait", "60")  # fmt: skip
            seen.wait_until(lambda ms: any(r["id"] for r in command_results(ms)), timeout=30)
            # While the console's parts are in flight, someone else's commands the gateway cannot read.
            with Publisher(broker.host, broker.port) as stranger:
                for n in range(3):
                    stranger.publish(f"{BASE}/cmd/state_restore", b'{"a stranger": %d}' % n)
            assert agent.process.wait(60) == EXIT_RESTART, agent.log()[-3000:]
        unread = [r for r in command_results(seen.snapshot()) if r["id"] is None]
        assert unread, "the stranger's commands were not answered while the console sent its parts"
        assert {r["reason"].split(":")[0] for r in unread} == {"malformed"}
        assert all(len(r["sha"]) == 16 for r in unread)
        with running_agent(config) as agent:
            out, err = console.communicate(timeout=90)
            assert console.returncode == 0, err.decode()[-3000:]
            assert agent.stop() == 0
        assert "restored: the gateway put 1 files in place at its start" in out.decode()
        assert (tmp_path / "new-card-state" / "leak" / "h1" / "baseline.json").read_bytes() == baseline

        # Its own parts refused unread (a key this gateway does not trust): it stops, and says why.
        (tmp_path / "other").mkdir()
        _, other_key = console_key(tmp_path / "other")
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            console = send_restore(archive, other_key, broker.port, "--part-kib", "64")
            _, err = console.communicate(timeout=60)
            assert agent.stop() == 0
    assert console.returncode == 1
    assert "the gateway refused a state_restore command without reading it: bad_signature" in err.decode()


def test_a_sparkplug_gateway_takes_an_archive_piped_from_the_centre_and_answers_in_its_ndata(
    tmp_path: Path,
) -> None:
    operator, key = console_key(tmp_path)
    archive, baseline = large_learnt_archive(tmp_path)
    with Mosquitto() as broker:
        security = operator_security(operator, ["state_restore"]) + "max_per_minute = 600\n"
        config = plain_card(tmp_path, broker.port, security, uplink={"encoding": "sparkplug_b"})
        with running_agent(config) as agent:
            agent.wait_status(lambda s: s["uplink"]["state"] == "online", timeout=30)
            # On stdin, as from `edge-centre state-backup ... --out - | edge-agent ca send-state-restore -`.
            with archive.open("rb") as piped:
                console = send_restore(
                    Path("-"), key, broker.port, "--sparkplug", f"{AGENT_SITE}/{AGENT_GATEWAY}",
                    "--part-kib", "256", "--per-minute", "600", "--wait", "60", stdin=piped,
                )  # fmt: skip
            assert agent.process.wait(60) == EXIT_RESTART, agent.log()[-3000:]
        with running_agent(config) as agent:
            out, err = console.communicate(timeout=90)
            assert console.returncode == 0, err.decode()[-3000:]
            assert agent.stop() == 0
    assert "restored: the gateway put 1 files in place at its start" in out.decode()
    assert (tmp_path / "new-card-state" / "leak" / "h1" / "baseline.json").read_bytes() == baseline


async def test_over_a_slow_link_the_console_sends_each_part_once(
    tmp_path: Path,
) -> None:
    operator, key = console_key(tmp_path)
    old = tmp_path / "old-card-state"
    (old / "leak" / "h1").mkdir(parents=True)
    (old / "leak" / "h1" / "baseline.json").write_bytes(os.urandom(300 * 1024))
    archive = tmp_path / "gw-test-state.tar.gz"
    archive.write_bytes(export_state(old, AGENT_SITE, AGENT_GATEWAY).archive)
    with Mosquitto() as broker:
        # 24 kB/s towards the gateway: a 64 KiB part takes ~3.6 s, the 4th in flight ~11 s.
        link = ImpairedLink(broker.host, broker.port, down_bps=24_000)
        port = await link.start()
        try:
            security = operator_security(operator, ["state_restore"]) + "max_per_minute = 600\n"
            config = plain_card(tmp_path, port, security)
            with running_agent(config) as agent:
                await asyncio.to_thread(agent.wait_status, lambda s: s["uplink"]["state"] == "online", 30)
                console = send_restore(
                    archive, key, broker.port, "--part-kib", "64", "--per-minute", "600",
                    "--answer-timeout", "6", "--no-restart",
                )  # fmt: skip
                out, err = await asyncio.to_thread(console.communicate, timeout=120)
                assert console.returncode == 0, err.decode()[-3000:]
        finally:
            await link.stop()
    said = out.decode()
    assert "staged on" in said
    assert "(5 parts sent)" in said, f"parts sent again though answers kept coming: {said}"
