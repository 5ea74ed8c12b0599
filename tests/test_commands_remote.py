"""Signed commands: only a trusted, authorised, fresh, unreplayed command for this gateway runs;
every refusal is audited and counted; updates are validated and swapped atomically."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.testing import agent_config, damage_sqlite_under_its_owner
from water_edge.agent import pushed_models
from water_edge.agent.remote import handlers
from water_edge.agent.remote import processor as command_processor
from water_edge.agent.remote.audit import AuditLog, read_audit
from water_edge.agent.remote.channel import CommandChannel
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.core import envelope
from water_edge.core.errors import AgentError
from water_edge.core.files import atomic_write
from water_edge.core.processor import CalibrationFailedError
from water_edge.core.reading import Event
from water_edge.models.manifest import shipped
from water_edge.models.runtime import ModelSlot, load_model

SITE, GW = "north-plant", "gw-01"
TARGET = f"{SITE}/{GW}"


def public_b64(key: Ed25519PrivateKey) -> str:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


class Rig:
    """A processor with real nonce store and audit log in a temp dir, and two operator keys."""

    def __init__(self, state: Path, targets: Targets | None = None) -> None:
        self.state = state
        self.ops = Ed25519PrivateKey.generate()
        self.reader = Ed25519PrivateKey.generate()
        self.config = SecuritySection(operators=[
            OperatorKey(name="ops", public_key=public_b64(self.ops),
                        commands=["read_now", "config_update", "model_update", "restart",
                                  "pump_calibration"]),
            OperatorKey(name="viewer", public_key=public_b64(self.reader), commands=["read_now"]),
        ])  # fmt: skip
        self.targets = targets or Targets()
        self.open()

    def open(self) -> None:
        self.nonces = NonceStore(self.state / "nonces.sqlite")
        self.audit = AuditLog(self.state / "audit.log")
        self.proc = CommandProcessor(
            self.config,
            site=SITE,
            gateway=GW,
            nonces=self.nonces,
            audit=self.audit,
            handlers=build_handlers(self.targets),
        )

    def close(self) -> None:
        self.nonces.close()
        self.audit.close()

    def sign(self, ctype: str, args: dict[str, Any] | None = None, *, key: str = "ops", **kw: Any) -> bytes:
        private = self.ops if key == "ops" else self.reader
        kw.setdefault("target", TARGET)
        return envelope.sign(private, key, ctype, kw.pop("target"), args, **kw)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    reads: list[list[str] | None] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        reads.append(devices)
        return {"devices_read": devices or ["all"]}

    r = Rig(tmp_path, Targets(read_now=read_now))
    r.reads = reads  # type: ignore[attr-defined]
    yield r
    r.close()


async def test_valid_command_runs_and_its_result_is_an_event(rig: Rig) -> None:
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    await CommandChannel(rig.proc, emit)(
        "read_now", rig.sign("read_now", {"devices": ["plc1"]}, command_id="c-1")
    )
    assert rig.reads == [["plc1"]]  # type: ignore[attr-defined]
    (event,) = events
    assert event.kind == "command_result"
    assert event.detail["id"] == "c-1"
    assert event.detail["status"] == "ok"
    assert event.detail["result"] == {"devices_read": ["plc1"]}
    outcomes = [(e["action"], e["outcome"], e["id"]) for e in read_audit(rig.state / "audit.log")]
    assert outcomes == [("command", "accepted", "c-1"), ("command", "ok", "c-1")]


def _tamper(payload: bytes) -> bytes:
    doc = orjson.loads(payload)
    doc["args"] = {"devices": ["plc2"]}
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda r: _tamper(r.sign("read_now", {"devices": ["plc1"]})), "bad_signature"),
        (lambda r: r.sign("read_now", target="north-plant/gw-02"), "wrong_target"),
        (lambda r: r.sign("read_now", now=1_600_000_000), "expired"),
        (lambda r: r.sign("read_now", ttl_s=86_400), "ttl_too_long"),
        (lambda r: r.sign("restart", key="viewer"), "not_authorised"),
        (lambda r: envelope.sign(Ed25519PrivateKey.generate(), "mallory", "read_now", TARGET), "unknown_key"),
        (lambda r: b"\xff\xfe not json", "malformed"),
        (lambda r: b'{"v": 1, "type": "read_now"}', "malformed"),
        (lambda r: b"[1, 2, 3]", "malformed"),
        (lambda r: b"x" * (9 * 2**20), "too_large"),
    ],
)
async def test_invalid_commands_are_refused_audited_and_counted(rig: Rig, make: Any, reason: str) -> None:
    result = await rig.proc.handle("read_now" if reason != "not_authorised" else "restart", make(rig))
    assert result.status == "refused"
    assert result.reason is not None
    assert result.reason.startswith(reason)
    assert rig.reads == []  # type: ignore[attr-defined]
    assert rig.proc.stats().refused_by_reason == {reason: 1}
    (entry,) = read_audit(rig.state / "audit.log")
    assert (entry["outcome"], entry["reason"]) == ("refused", reason)


async def test_command_on_another_types_topic_is_refused(rig: Rig) -> None:
    result = await rig.proc.handle("restart", rig.sign("read_now"))
    assert result.status == "refused"
    assert result.reason is not None
    assert result.reason.startswith("topic_mismatch")


async def test_replay_is_refused_even_after_a_restart(rig: Rig) -> None:
    payload = rig.sign("read_now")
    assert (await rig.proc.handle("read_now", payload)).status == "ok"
    assert (await rig.proc.handle("read_now", payload)).reason.startswith("replay")  # type: ignore[union-attr]
    rig.close()
    rig.open()  # the agent restarted: the nonce store is on disk
    again = await rig.proc.handle("read_now", payload)
    assert again.status == "refused"
    assert again.reason is not None
    assert again.reason.startswith("replay")
    assert rig.reads == [None]  # type: ignore[attr-defined]


async def test_a_clock_that_went_back_cannot_revive_a_command_whose_nonce_was_pruned(rig: Rig) -> None:
    """A gateway without a real-time clock comes back from a power cut with its clock behind (the
    time saved before the cut): a command it ran then, whose nonce it has since forgotten, must not
    run again when it is sent again."""
    t0 = int(time.time())
    clock = [float(t0)]

    def processor() -> CommandProcessor:
        return CommandProcessor(
            rig.config, site=SITE, gateway=GW, nonces=rig.nonces, audit=rig.audit,
            handlers=build_handlers(rig.targets), clock=lambda: clock[0],
        )  # fmt: skip

    captured = rig.sign("read_now", now=t0, ttl_s=300)
    assert (await processor().handle("read_now", captured)).status == "ok"
    clock[0] = t0 + 1000.0  # later, another command: the first one's nonce is pruned
    assert (await processor().handle("read_now", rig.sign("read_now", now=t0 + 1000))).status == "ok"
    rig.close()
    rig.open()  # the power cut; the clock comes back at the time saved before it
    clock[0] = t0 + 10.0
    again = await processor().handle("read_now", captured)
    assert again.status == "refused"
    assert again.reason is not None
    assert again.reason.startswith("expired"), again.reason
    assert rig.reads == [None, None]  # type: ignore[attr-defined]
    # A command issued at the restored time (the clock is the only one the gateway has) still runs.
    later = rig.sign("read_now", now=t0 + 10, ttl_s=3000)
    assert (await processor().handle("read_now", later)).status == "ok"


def test_nonce_store_prunes_expired_entries(tmp_path: Path) -> None:
    store = NonceStore(tmp_path / "n.sqlite")
    assert store.claim("a" * 32, expires_at=100, now=50)
    assert not store.claim("a" * 32, expires_at=100, now=60)
    assert store.claim("b" * 32, expires_at=500, now=200)  # prunes "a", past its expiry
    assert len(store) == 1
    store.close()


def gateway_config(state: Path, *, port: int, gateway: str = "gw-01") -> str:
    return agent_config(state, site="north-plant", gateway=gateway, broker_port=port)


GOOD_CONFIG = """
schema_version = 1
[gateway]
site = "north-plant"
id = "gw-01"
state_dir = "{state}"
[uplink]
host = "127.0.0.1"
port = 1883
[buffer]
flush_interval_ms = {flush}
"""


async def test_config_update_is_validated_then_swapped_atomically(tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(GOOD_CONFIG.format(state=tmp_path, flush=200))
    order: list[str] = []
    restarts: list[str] = []

    def restart(reason: str) -> None:
        restarts.append(reason)
        order.append("restart")

    rig = Rig(tmp_path / "state", Targets(config_path=cfg, request_restart=restart))
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)
        order.append("result")

    channel = CommandChannel(rig.proc, emit)
    new = GOOD_CONFIG.format(state=tmp_path, flush=500)
    await channel("config_update", rig.sign("config_update", {"config": new}))
    assert events[-1].detail["status"] == "ok"
    assert cfg.read_text() == new
    assert "flush_interval_ms = 200" in (tmp_path / "config.toml.prev").read_text()
    assert order == ["result", "restart"]  # the result is committed before the restart

    broken = new.replace("port = 1883", "port = 99999")
    await channel("config_update", rig.sign("config_update", {"config": broken}))
    failed = events[-1].detail
    assert failed["status"] == "failed"
    assert "old one stays" in failed["reason"]
    assert any("uplink.port" in p for p in failed["result"]["problems"])
    assert cfg.read_text() == new  # unchanged
    assert not list(tmp_path.glob(".config.toml.*"))  # no candidate left behind

    other = gateway_config(tmp_path, port=8883, gateway="gw-99")
    await channel("config_update", rig.sign("config_update", {"config": other}))
    assert events[-1].detail["status"] == "failed"
    assert cfg.read_text() == new
    assert len(restarts) == 1
    rig.close()


LEAK_MANIFEST = shipped("water_edge.models.leak", "leak_detector.json")


def bundle(manifest: dict[str, Any], model: bytes) -> dict[str, str]:
    """The `files` argument of a model_update: the model and its manifest, base64."""
    return {
        manifest["model_file"]: base64.b64encode(model).decode(),
        "manifest.json": base64.b64encode(orjson.dumps(manifest)).decode(),
    }


async def test_model_update_swaps_only_a_verified_model(tmp_path: Path) -> None:
    slot = ModelSlot(load_model(LEAK_MANIFEST))
    rig = Rig(tmp_path / "state", Targets(models_dir=tmp_path / "models", model_slots={"leak-h1": slot}))
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "version": "9.9.9-test"}

    def update(files: dict[str, str]) -> bytes:
        return rig.sign("model_update", {"slot": "leak-h1", "manifest": "manifest.json", "files": files})

    tampered = bytearray(model)
    tampered[-1] ^= 0xFF
    bad = await rig.proc.handle("model_update", update(bundle(manifest, bytes(tampered))))
    assert bad.status == "failed"
    assert bad.reason is not None
    assert "sha256" in bad.reason
    assert slot.model.version != "9.9.9-test"
    sneaky = await rig.proc.handle("model_update", update({**bundle(manifest, model), "../../etc/x": "AA=="}))
    assert sneaky.status == "failed"
    assert not (tmp_path / "etc").exists()
    good = await rig.proc.handle("model_update", update(bundle(manifest, model)))
    assert good.status == "ok", good.reason
    assert good.detail == {"slot": "leak-h1", "version": "9.9.9-test"}
    assert slot.model.version == "9.9.9-test"
    rig.close()


async def test_model_updates_keep_only_the_bundle_in_service_on_disk(tmp_path: Path) -> None:
    """Each accepted model_update left its bundle in the state directory for good: a key allowed
    model_update could fill the disk the outbox shares by sending a valid model again and again."""
    slot = ModelSlot(load_model(LEAK_MANIFEST))
    rig = Rig(tmp_path / "state", Targets(models_dir=tmp_path / "models", model_slots={"leak-h1": slot}))
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    for n in range(3):
        manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "version": f"9.9.{n}-test"}
        args = {"slot": "leak-h1", "manifest": "manifest.json", "files": bundle(manifest, model)}
        result = await rig.proc.handle("model_update", rig.sign("model_update", args))
        assert result.status == "ok", result.reason
        kept = list((tmp_path / "models" / "leak-h1").glob("cmd-*"))
        assert len(kept) == 1, kept
    assert slot.model.version == "9.9.2-test"
    assert slot.model.invoke(slot.model.manifest.self_test[0].input) is not None  # still serving
    rig.close()


async def test_a_model_update_is_written_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decoding and fsyncing a model on a busy SD card can take seconds: on the event loop that
    would hold up every poll and the broker's keepalive."""
    writers: list[int] = []

    def recording_write(path: Path, data: bytes, **kwargs: Any) -> None:
        writers.append(threading.get_ident())
        atomic_write(path, data, **kwargs)

    monkeypatch.setattr(handlers, "atomic_write", recording_write)
    slot = ModelSlot(load_model(LEAK_MANIFEST))
    rig = Rig(tmp_path / "state", Targets(models_dir=tmp_path / "models", model_slots={"leak-h1": slot}))
    manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "version": "9.9.9-test"}
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    args = {"slot": "leak-h1", "manifest": "manifest.json", "files": bundle(manifest, model)}
    result = await rig.proc.handle("model_update", rig.sign("model_update", args))
    assert result.status == "ok", result.reason
    assert len(writers) == 2  # the model and its manifest ...
    assert threading.get_ident() not in writers  # ... neither on the loop's thread
    rig.close()


async def test_command_for_an_unavailable_capability_fails_cleanly(rig: Rig) -> None:
    result = await rig.proc.handle("restart", rig.sign("restart"))
    assert result.status == "failed"
    assert result.reason == "restart is not available on this gateway"


class PumpCalibrator:
    """A `Calibratable` target, as the pump factory offers it."""

    calibration_command = "pump_calibration"
    calibration_target = "pump"

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        if target_name != "P1":
            raise CalibrationFailedError(f"no pump {target_name!r} (configured: P1)")
        return {"pump": target_name, "version": 3, "from": args.get("from")}


async def test_calibration_commands_go_to_the_target_offering_them(tmp_path: Path) -> None:
    without = Rig(tmp_path / "without")
    result = await without.proc.handle("pump_calibration", without.sign("pump_calibration", {"pump": "P1"}))
    assert (result.status, result.reason) == ("failed", "pump calibration is not available on this gateway")
    without.close()

    rig = Rig(tmp_path / "with", Targets(calibrations={"pump_calibration": PumpCalibrator()}))
    ok = await rig.proc.handle("pump_calibration", rig.sign("pump_calibration", {"pump": "P1", "from": "0"}))
    assert ok.status == "ok", ok.reason
    assert ok.detail == {"pump": "P1", "version": 3, "from": "0"}
    unknown = await rig.proc.handle("pump_calibration", rig.sign("pump_calibration", {"pump": "P9"}))
    assert (unknown.status, unknown.reason) == ("failed", "no pump 'P9' (configured: P1)")
    assert unknown.to_event().detail["reason"] == "no pump 'P9' (configured: P1)"
    unnamed = await rig.proc.handle("pump_calibration", rig.sign("pump_calibration", {}))
    assert (unnamed.status, unnamed.reason) == ("failed", "argument 'pump' missing or not str")
    rig.close()


class SlowPumpCalibrator(PumpCalibrator):
    """A calibration that takes longer than other commands may (a pump's day on a Pi: ~20 s)."""

    async def calibrate(self, target_name: str, args: Mapping[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        return await super().calibrate(target_name, args)


async def test_a_calibration_may_take_longer_than_other_commands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Cut off at 30 s like any command, a calibration was answered `failed` while its thread went
    # on and the new calibration came into service all the same.
    monkeypatch.setattr(command_processor, "TIME_LIMIT_S", 0.2)
    monkeypatch.setattr(command_processor, "CALIBRATION_TIME_LIMIT_S", 5.0)

    async def slow_read(devices: list[str] | None) -> dict[str, Any]:
        await asyncio.sleep(0.5)
        return {}

    rig = Rig(tmp_path, Targets(calibrations={"pump_calibration": SlowPumpCalibrator()}, read_now=slow_read))
    ok = await rig.proc.handle("pump_calibration", rig.sign("pump_calibration", {"pump": "P1"}))
    assert ok.status == "ok", ok.reason
    slow = await rig.proc.handle("read_now", rig.sign("read_now"))
    assert (slow.status, slow.reason) == ("failed", "timed out after 0.2 s")
    assert rig.proc.time_limit_s >= 5.0  # the inbox waits beyond the longest bound
    rig.close()


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """The kernel's own refusal to grow a file past `limit` bytes (EFBIG, as a full card gives
    ENOSPC), for this process while the block runs."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


async def test_a_command_the_audit_log_cannot_record_is_refused_and_answered(tmp_path: Path) -> None:
    # Before, the audit log's write error escaped CommandProcessor.handle: no answer to the
    # operator, and nothing said why. Nothing may run that the audit log cannot show.
    ran: list[list[str] | None] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        ran.append(devices)
        return {"devices_read": devices or ["all"]}

    rig = Rig(tmp_path, Targets(read_now=read_now))
    assert (await rig.proc.handle("read_now", rig.sign("read_now"))).status == "ok"
    audit = tmp_path / "audit.log"
    with audit.open("ab") as earlier:  # larger than anything else this process writes meanwhile
        earlier.write(b'{"ts":0,"action":"earlier","outcome":"ok"}\n' * 20_000)
    with file_size_limit(audit.stat().st_size):
        full = await rig.proc.handle("read_now", rig.sign("read_now"))
    assert full.status == "refused"
    assert full.reason is not None
    assert full.reason.startswith("audit_unavailable: cannot write")
    assert len(ran) == 1  # it did not run
    assert rig.proc.stats().refused_by_reason["audit_unavailable"] == 1
    assert (await rig.proc.handle("read_now", rig.sign("read_now"))).status == "ok"  # room again
    rig.close()


async def test_a_nonce_store_damaged_while_running_refuses_commands_and_asks_for_a_restart(
    tmp_path: Path,
) -> None:
    # Before, the damaged store's error escaped the processor: no answer, no audit line. A command
    # whose nonce cannot be recorded must be refused (it could be replayed), and the restart moves
    # the store aside (the test above: the start's quarantine and reset).
    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        return {"devices_read": devices or ["all"]}

    rig = Rig(tmp_path, Targets(read_now=read_now))
    restarts: list[str] = []
    rig.nonces.on_damaged = restarts.append
    for _ in range(3):
        assert (await rig.proc.handle("read_now", rig.sign("read_now"))).status == "ok"
    damage_sqlite_under_its_owner(tmp_path / "nonces.sqlite", seed=3)
    for _ in range(2):
        result = await rig.proc.handle("read_now", rig.sign("read_now"))
        assert result.status == "refused"
        assert result.reason is not None
        assert result.reason.startswith("nonce_store_unavailable")
        assert "malformed" in result.reason
    assert len(restarts) == 1  # asked once
    assert "malformed" in restarts[0]
    rig.close()
    audited = [
        line["reason"] for line in read_audit(tmp_path / "audit.log") if line.get("outcome") == "refused"
    ]
    assert [r.split(":", 1)[0] for r in audited] == ["nonce_store_unavailable"] * 2


async def test_a_corrupt_nonce_store_is_kept_aside_and_no_command_from_before_can_be_replayed(
    tmp_path: Path,
) -> None:
    # A power cut on a worn card leaves the nonce store unreadable. Before, the agent refused to
    # start at all ("cannot open the nonce store"), so the gateway stopped collecting.
    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        return {"devices_read": devices or ["all"]}

    rig = Rig(tmp_path, Targets(read_now=read_now))
    before = rig.sign("read_now", now=int(time.time()) - 30)  # accepted once, before the damage
    assert (await rig.proc.handle("read_now", before)).status == "ok"
    rig.close()
    (tmp_path / "nonces.sqlite").write_bytes(b"SQLite format 3\x00" + b"\xa5" * 4000)
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"nonces.sqlite{suffix}").unlink(missing_ok=True)

    rig.open()
    assert rig.nonces.quarantined is not None
    kept, reason = rig.nonces.quarantined
    assert kept.name.startswith("nonces.sqlite.quarantined-")
    assert kept.read_bytes().startswith(b"SQLite format 3\x00\xa5")
    assert reason
    reset_at = rig.nonces.reset_at
    assert reset_at is not None
    assert abs(reset_at - time.time()) < 5

    # The forgotten nonce cannot let the old command in again, nor one signed just before the reset
    # on a clock up to clock_skew_s ahead.
    for payload in (before, rig.sign("read_now", now=reset_at + 60)):
        result = await rig.proc.handle("read_now", payload)
        assert result.status == "refused"
        assert result.reason is not None
        assert result.reason.startswith("issued_before_nonce_reset")
    # Docs walk 4, finding 8: one issued 21 s after the reset is refused too (clocks may differ by
    # clock_skew_s) and is told so: it was told it was issued "before" the reset, and the alarm's
    # `refuses_issued_until` (the processor's) was the reset, 60 s short of the last time refused.
    until = reset_at + rig.config.clock_skew_s
    assert rig.proc.refuses_issued_until == until
    after = await rig.proc.handle("read_now", rig.sign("read_now", now=reset_at + 21))
    assert after.reason == (
        f"issued_before_nonce_reset: issued at {reset_at + 21}, not after {until}: this gateway's nonce "
        f"store was started afresh at {reset_at} and clocks may differ by 60 s, so a replay could not be "
        f"told apart; sign it again (issued after {until})"
    )
    rig.close()

    # Later (past the skew), commands run again, and the reset holds across a restart.
    rig.open()
    assert rig.nonces.quarantined is None
    assert rig.nonces.reset_at == reset_at
    later = time.time() + 61
    rig.proc = CommandProcessor(
        rig.config, site=SITE, gateway=GW, nonces=rig.nonces, audit=rig.audit,
        handlers=build_handlers(rig.targets), clock=lambda: later,
    )  # fmt: skip
    fresh = rig.sign("read_now", now=int(later))
    assert (await rig.proc.handle("read_now", fresh)).status == "ok"
    replay = await rig.proc.handle("read_now", fresh)
    assert replay.reason is not None
    assert replay.reason.startswith("replay")
    assert rig.proc.stats().refused_by_reason == {"replay": 1}
    rig.close()


def test_a_nonce_store_that_cannot_be_opened_for_another_reason_is_not_moved(tmp_path: Path) -> None:
    store = tmp_path / "nonces.sqlite"
    store.mkdir()  # not a file at all: an operator's mistake, not the card's
    with pytest.raises(AgentError, match="cannot open the nonce store"):
        NonceStore(store)
    assert store.is_dir()
    assert list(tmp_path.iterdir()) == [store]


def test_a_nonce_store_reset_on_a_clock_that_booted_behind_still_covers_its_last_claim(
    tmp_path: Path,
) -> None:
    # No RTC: after the power cut the clock starts from a time saved before the store's last claims.
    path = tmp_path / "nonces.sqlite"
    path.write_bytes(b"SQLite format 3\x00" + b"\x5a" * 4000)
    last_claim = time.time()
    os.utime(path, (last_claim, last_claim))
    store = NonceStore(path, now_s=last_claim - 3600)
    assert store.quarantined is not None
    assert store.reset_at is not None
    assert store.reset_at >= int(last_claim)  # (whole seconds, as commands are issued): all it accepted
    store.close()


async def push_models(tmp_path: Path, *versions: str) -> Path:
    """A gateway's leak slot sent these versions by model_update, one after the other, then
    stopped; the directory its models are kept in."""
    models = tmp_path / "models"
    slot = ModelSlot(load_model(LEAK_MANIFEST))
    rig = Rig(tmp_path / "state", Targets(models_dir=models, model_slots={"leak-h1": slot}))
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    for version in versions:
        manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "version": version}
        args = {"slot": "leak-h1", "manifest": "manifest.json", "files": bundle(manifest, model)}
        assert (await rig.proc.handle("model_update", rig.sign("model_update", args))).status == "ok"
    rig.close()
    return models


async def test_a_pushed_model_is_back_in_service_after_a_restart(tmp_path: Path) -> None:
    """Before, a restart (power cut, update, config change) quietly put the configured model back
    while the centre believed the pushed one ran."""
    # The second replaces the first, not the configured model.
    models = await push_models(tmp_path, "9.9.1-test", "9.9.2-test")

    # The agent starts again: its processor loads the configured model into a new slot.
    configured = ModelSlot(load_model(LEAK_MANIFEST))
    (event,) = await pushed_models.restore(models, {"leak-h1": configured})
    assert (event.kind, event.source, event.detail) == (
        "model_restored", "leak-h1", {"slot": "leak-h1", "version": "9.9.2-test"}
    )  # fmt: skip
    assert configured.model.version == "9.9.2-test"

    # A card that changed the stored bundle: the slot's own check refuses it, the configured one serves.
    (pushed,) = (models / "leak-h1").glob("cmd-*/*.tflite")
    pushed.write_bytes(pushed.read_bytes()[:-1] + b"\x00")
    again = ModelSlot(load_model(LEAK_MANIFEST))
    (refused,) = await pushed_models.restore(models, {"leak-h1": again})
    assert (refused.kind, refused.severity) == ("model_not_restored", "warning")
    assert "sha256" in refused.detail["reason"]
    assert again.model.version == load_model(LEAK_MANIFEST).version
    assert await pushed_models.restore(models, {"leak-h1": again}) == []  # said once, then forgotten


async def test_a_configured_model_that_changed_since_the_push_stays_in_service(tmp_path: Path) -> None:
    models = await push_models(tmp_path, "9.9.9-test")
    # A release ships another model (here: the pushed bundle itself, as its configured model).
    (shipped_now,) = (models / "leak-h1").glob("cmd-*/manifest.json")
    configured = ModelSlot(load_model(shipped_now))
    (event,) = await pushed_models.restore(models, {"leak-h1": configured})
    assert event.kind == "model_not_restored"
    assert event.detail["reason"] == "the configured model changed since the push: it stays in service"
    assert configured.model.version == "9.9.9-test"  # the configured one, not restored over


async def test_a_pushed_model_whose_processor_left_the_config_is_said_and_forgotten(tmp_path: Path) -> None:
    models = await push_models(tmp_path, "9.9.9-test")
    (event,) = await pushed_models.restore(models, {})
    assert (event.kind, event.source) == ("model_not_restored", "leak-h1")
    assert event.detail["reason"].startswith("no such model slot in this config")
    assert await pushed_models.restore(models, {}) == []


async def test_a_command_over_its_time_limit_is_answered_failed_and_audited(rig: Rig) -> None:
    """The inbox used to cancel a handler after 30 s: the nonce was used and the audit log said
    'accepted', then nothing - no result line, no answer (an `update` by URL may download for up
    to download_timeout_s). The processor bounds each type itself and answers; the inbox waits
    beyond the longest of those bounds."""
    from water_edge.agent.uplink.commands import CommandInbox
    from water_edge.agent.uplink.topics import Topics

    async def hangs(devices: list[str] | None) -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    rig.proc = CommandProcessor(
        rig.config, site=SITE, gateway=GW, nonces=rig.nonces, audit=rig.audit,
        handlers=build_handlers(Targets(read_now=hangs)), time_limits={"read_now": 0.2},
    )  # fmt: skip
    events: list[Event] = []
    answered = asyncio.Event()

    async def emit(event: Event) -> None:
        events.append(event)
        answered.set()

    channel = CommandChannel(rig.proc, emit)
    inbox = CommandInbox(Topics("water", SITE, GW), channel)
    inbox.offer(f"water/{SITE}/{GW}/cmd/read_now", rig.sign("read_now", command_id="c-slow"))
    worker = asyncio.create_task(inbox.run())
    try:
        async with asyncio.timeout(5):
            await answered.wait()
    finally:
        worker.cancel()
    (event,) = events
    assert event.detail["id"] == "c-slow"
    assert event.detail["status"] == "failed"
    assert event.detail["reason"] == "timed out after 0.2 s"
    outcomes = [(e["action"], e["outcome"], e["id"]) for e in read_audit(rig.state / "audit.log")]
    assert outcomes == [("command", "accepted", "c-slow"), ("command", "failed", "c-slow")]
    assert inbox.stats().handled == 1
    assert inbox.stats().failed == 0
