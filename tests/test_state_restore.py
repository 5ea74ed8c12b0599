"""Restoring a replacement card's learning by signed command (agent/state_restore.py; docs/fleet.md,
"Restoring a card from the centre"): the archive travels in signed `state_restore` parts, is
checked as `state import` checks it and staged when whole, and is put in place at the next start,
before anything reads the state directory. Real archives, real files; the command path end to end
(a real agent, Mosquitto, mosquitto_pub) is in test_state_restore_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.cli import edge_agent
from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.restore_sender import RestoreArchive
from water_edge.agent.state_restore import (
    LAST_RECORD,
    PENDING,
    RESTORE_DIR,
    StateRestoreReceiver,
    apply_pending,
    load_last,
)
from water_edge.agent.state_transfer import StateTransferError, export_state
from water_edge.core import envelope
from water_edge.core.envelope import Envelope

SITE, GATEWAY = "north-plant", "gw-ps07"
TARGET = f"{SITE}/{GATEWAY}"
PART = 8 * 1024  # the smallest part: several parts from a few tens of KiB of learnt state
KEY = Ed25519PrivateKey.generate()


def learnt(state_dir: Path, *, calibration: bytes, baseline_bytes: int = 40_000) -> None:
    """A gateway's learnt state: a pump calibration and a hydrophone baseline (incompressible, so
    the archive takes several parts)."""
    (state_dir / "pump" / "pump1").mkdir(parents=True)
    (state_dir / "pump" / "pump1" / "calibration.json").write_bytes(calibration)
    (state_dir / "leak" / "h1").mkdir(parents=True)
    (state_dir / "leak" / "h1" / "baseline.json").write_bytes(os.urandom(baseline_bytes))


def old_card_archive(tmp: Path, site: str = SITE, gateway: str = GATEWAY) -> Path:
    old = tmp / f"old-{site}-{gateway}"
    learnt(old, calibration=b'{"version": 3, "from": "the old card"}')
    archive = tmp / f"{site}-{gateway}.tar.gz"
    archive.write_bytes(export_state(old, site, gateway).archive)
    return archive


def parts_of(archive: Path, *, force: bool = False, restart: bool = True) -> list[Envelope]:
    whole = RestoreArchive(archive, TARGET, part_bytes=PART, force=force)
    return [envelope.parse(whole.part(KEY, "ops", i, restart=restart)) for i in range(whole.count)]


class Restarts:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def receiver(
    state_dir: Path, restarts: Restarts | None = None, max_bytes: int = 32 * 2**20
) -> StateRestoreReceiver:
    return StateRestoreReceiver(state_dir, SITE, GATEWAY, max_bytes=max_bytes, request_restart=restarts)


async def send(rx: StateRestoreReceiver, parts: list[Envelope]) -> list[CommandResult]:
    return [await rx.part(p) for p in parts]


def staged(state_dir: Path) -> bool:
    return (state_dir / RESTORE_DIR / PENDING).exists()


async def test_parts_in_any_order_and_twice_are_staged_when_whole_and_put_in_place_at_the_next_start(
    tmp_path: Path,
) -> None:
    archive = old_card_archive(tmp_path)
    new = tmp_path / "new-card"
    # The new card learnt for a day: its own calibration, and a history the archive does not hold.
    learnt(new, calibration=b'{"version": 1, "from": "the new card"}')
    (new / "pump" / "pump1" / "history.sqlite").write_bytes(b"the new card's own history")
    parts = parts_of(archive)
    assert len(parts) >= 5
    restarts = Restarts()
    rx = receiver(new, restarts)
    order = [*reversed(parts[1:]), parts[2]]  # out of order, one twice; the first part still missing
    answers = await send(rx, order)
    assert [a.detail["received"] for a in answers] == [*range(1, len(parts)), len(parts) - 1]
    assert not staged(new), "staged before every part was held"

    last = await rx.part(parts[0])
    assert last.status == "ok"
    assert last.detail["staged"] is True
    assert (last.detail["site"], last.detail["gateway"], last.detail["files"]) == (SITE, GATEWAY, 2)
    assert last.detail["restarting"] is True
    assert staged(new)
    # Nothing is put in place under the running agent: only at its next start.
    assert b"the new card" in (new / "pump" / "pump1" / "calibration.json").read_bytes()
    assert last.after is not None
    await last.after()
    assert restarts.reasons == [f"learnt state restored by command {parts[0].id} from ops"]

    events = apply_pending(new, SITE, GATEWAY)
    assert (
        new / "pump" / "pump1" / "calibration.json"
    ).read_bytes() == b'{"version": 3, "from": "the old card"}'
    old_baseline = tmp_path / f"old-{SITE}-{GATEWAY}" / "leak" / "h1" / "baseline.json"
    assert (new / "leak" / "h1" / "baseline.json").read_bytes() == old_baseline.read_bytes()
    assert (new / "pump" / "pump1" / "history.sqlite").read_bytes() == b"the new card's own history"
    assert [(e.kind, e.severity) for e in events] == [("state_restored", "info")]
    assert events[0].detail["requested_by"] == f"command {parts[0].id} from ops"
    assert events[0].detail["files"] == 2
    assert not staged(new)
    assert apply_pending(new, SITE, GATEWAY) == [], "a restore is applied once, not at every start"
    record = load_last(new)
    assert record is not None
    assert record.outcome == "restored"
    line = " ".join(record.status_lines())
    assert "2 files" in line
    assert f"taken by {SITE}/{GATEWAY}" in line
    assert "from ops" in line


async def test_an_archive_of_another_gateway_is_refused_unless_the_command_says_force(tmp_path: Path) -> None:
    archive = old_card_archive(tmp_path, gateway="gw-ps08")
    new = tmp_path / "new-card"
    new.mkdir()
    # The operator's tool refuses it first ...
    with pytest.raises(StateTransferError, match="gateway gw-ps08 of site north-plant"):
        parts_of(archive)
    # ... and so does the gateway, whoever signed the parts.
    data = archive.read_bytes()
    unchecked = envelope.parse(
        envelope.sign(KEY, "ops", "state_restore", TARGET, {
            "transfer": hashlib.sha256(data).hexdigest(), "index": 0, "count": 1,
            "data": base64.b64encode(data).decode(),
        })
    )  # fmt: skip
    with pytest.raises(CommandRefusedError) as refused:
        await receiver(new).part(unchecked)
    assert refused.value.code == "other_gateway"
    assert "sign it with --force" in str(refused.value)
    assert not staged(new)

    answers = await send(receiver(new), parts_of(archive, force=True))
    assert answers[-1].detail["staged"] is True
    assert answers[-1].detail["gateway"] == "gw-ps08"
    events = apply_pending(new, SITE, GATEWAY)
    assert [e.kind for e in events] == ["state_restored"]
    assert events[0].detail["gateway"] == "gw-ps08"
    assert (new / "pump" / "pump1" / "calibration.json").exists()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _whole(data: bytes) -> Envelope:
    return envelope.parse(
        envelope.sign(KEY, "ops", "state_restore", TARGET, {
            "transfer": hashlib.sha256(data).hexdigest(), "index": 0, "count": 1,
            "data": base64.b64encode(data).decode(),
        })
    )  # fmt: skip


@pytest.mark.parametrize(
    ("what", "why"),
    [
        ("random bytes", "not an archive made by `edge-agent state export`"),
        ("altered file", "does not match its checksum: damaged or altered"),
        ("path outside", "points outside the state directory"),
    ],
)
async def test_an_archive_that_is_not_a_sound_state_export_is_refused_and_nothing_is_staged(
    tmp_path: Path, what: str, why: str
) -> None:
    manifest = {
        "format": "edge-agent-state/1", "site": SITE, "gateway": GATEWAY, "created_ns": 1,
        "files": {"pump/pump1/calibration.json": {"bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}},
    }  # fmt: skip
    body = {
        "random bytes": random.Random(1).randbytes(20_000),
        "altered file": _tar_gz({
            "manifest.json": json.dumps(manifest).encode(), "state/pump/pump1/calibration.json": b'{"x":1}'
        }),
        "path outside": _tar_gz({"manifest.json": json.dumps(manifest).encode(), "state/../../etc/x": b"{}"}),
    }[what]  # fmt: skip
    new = tmp_path / "new-card"
    new.mkdir()
    with pytest.raises(CommandRefusedError) as refused:
        await receiver(new).part(_whole(body))
    assert refused.value.code == "bad_archive"
    assert why in str(refused.value)
    assert not staged(new)
    assert not list((new / RESTORE_DIR).glob("*.tar.gz*")), "a refused archive was left on the card"


async def test_parts_that_do_not_put_together_the_archive_they_name_are_not_staged(tmp_path: Path) -> None:
    archive = old_card_archive(tmp_path)
    parts = parts_of(archive)
    tampered = dict(parts[1].args, data=base64.b64encode(b"x" * PART).decode())
    forged = envelope.parse(envelope.sign(KEY, "ops", "state_restore", TARGET, tampered))
    new = tmp_path / "new-card"
    rx = receiver(new)
    await send(rx, [parts[0], forged, *parts[2:-1]])
    with pytest.raises(CommandFailedError, match="do not hash to it; send them again"):
        await rx.part(parts[-1])
    assert not staged(new)
    # Sent again whole, it is taken.
    assert (await send(rx, parts))[-1].detail["staged"] is True


async def test_a_restore_is_held_to_the_size_a_backup_may_have_and_one_archive_at_a_time(
    tmp_path: Path,
) -> None:
    archive = old_card_archive(tmp_path)
    parts = parts_of(archive)
    new = tmp_path / "new-card"
    with pytest.raises(CommandRefusedError) as refused:
        await receiver(new, max_bytes=PART * (len(parts) - 1)).part(parts[0])
    assert refused.value.code == "too_large"
    assert "[state_backup] max_size" in str(refused.value)

    (tmp_path / "other").mkdir()
    other = old_card_archive(tmp_path / "other")
    rx = receiver(new)
    await send(rx, parts[:-1])
    held = new / RESTORE_DIR / "parts"
    assert len(list(held.iterdir())) == 1
    await rx.part(parts_of(other)[0])  # a part of another archive drops the one before
    assert [p.name for p in held.iterdir()] == [hashlib.sha256(other.read_bytes()).hexdigest()]
    again = await rx.part(parts[-1])  # the first archive starts again: sent again whole
    assert (again.detail["received"], again.detail["of"]) == (1, len(parts))
    assert not staged(new)


async def test_a_restore_signed_not_to_restart_waits_for_the_next_start(tmp_path: Path) -> None:
    restarts = Restarts()
    answers = await send(
        receiver(tmp_path / "new", restarts), parts_of(old_card_archive(tmp_path), restart=False)
    )
    assert answers[-1].detail["restarting"] is False
    assert answers[-1].after is None
    assert restarts.reasons == []
    assert staged(tmp_path / "new")


async def test_a_staged_restore_that_cannot_be_put_in_place_is_reported_and_the_card_keeps_what_it_had(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new-card"
    learnt(new, calibration=b'{"from": "the new card"}')
    await send(receiver(new), parts_of(old_card_archive(tmp_path)))
    pending = new / RESTORE_DIR / PENDING
    pending.write_bytes(pending.read_bytes()[:-200])  # damaged on the card before the next start
    events = apply_pending(new, SITE, GATEWAY)
    assert [(e.kind, e.severity) for e in events] == [("state_restore_failed", "warning")]
    assert "not an archive made by `edge-agent state export`" in events[0].detail["reason"]
    assert (new / "pump" / "pump1" / "calibration.json").read_bytes() == b'{"from": "the new card"}'
    assert not pending.exists(), "a restore that failed would fail again at every start"
    record = load_last(new)
    assert record is not None
    assert record.outcome == "failed"
    assert record.status_lines()[0].startswith("state restore: FAILED at the start of")
    assert "went on with what the card held" in record.status_lines()[0]
    assert json.loads((new / RESTORE_DIR / LAST_RECORD).read_text())["outcome"] == "failed"


def test_the_operator_tool_prints_one_signed_part_a_line_and_refuses_what_the_gateway_would(
    tmp_path: Path,
) -> None:
    key = tmp_path / "ops.pem"
    key.write_bytes(
        KEY.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    archive = old_card_archive(tmp_path)
    common = ("ca", "sign-state-restore", str(archive), "--key", str(key), "--key-id", "ops")
    done = edge_agent(*common, "--target", TARGET, "--part-kib", "8")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    commands = [envelope.parse(line.encode()) for line in lines]
    assert [c.args["index"] for c in commands] == list(range(len(lines)))
    assert {c.type for c in commands} == {"state_restore"}
    assert {c.target for c in commands} == {TARGET}
    assert b"".join(base64.b64decode(c.args["data"]) for c in commands) == archive.read_bytes()
    assert f"{len(lines)} parts of what {GATEWAY} (site {SITE}) had learnt by" in done.stderr
    assert f"-t water/{TARGET}/cmd/state_restore" in done.stderr

    some = edge_agent(*common, "--target", TARGET, "--part-kib", "8", "--parts", "1-2")
    assert [envelope.parse(x.encode()).args["index"] for x in some.stdout.splitlines()] == [1, 2]

    other = edge_agent(*common, "--target", f"{SITE}/gw-ps09")
    assert other.returncode == 1
    assert other.stdout == ""
    assert "this config is gateway gw-ps09" in other.stderr
    bad = edge_agent(*common, "--target", "gw-ps07")
    assert bad.returncode == 1
    assert "is not SITE/GATEWAY" in bad.stderr


async def test_the_record_of_a_staged_restore_is_believed_only_of_the_archive_it_was_written_with(
    tmp_path: Path,
) -> None:
    new = tmp_path / "new-card"
    new.mkdir()
    archive = old_card_archive(tmp_path, gateway="gw-ps08")
    await send(receiver(new), parts_of(archive, force=True))
    record = new / RESTORE_DIR / "pending.json"
    # A second restore staged over this one, cut between its record and its archive.
    record.write_text(json.dumps(dict(json.loads(record.read_text()), transfer="0" * 64)))
    events = apply_pending(new, SITE, GATEWAY)
    assert [e.kind for e in events] == ["state_restore_failed"]
    assert "gateway gw-ps08 of site north-plant" in events[0].detail["reason"], (
        "force taken from another's record"
    )
    assert events[0].detail["requested_by"].startswith("unknown")
    assert not (new / "pump").exists()
