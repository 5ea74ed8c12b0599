"""Trustworthy time: a gateway whose clock starts in 1970 and then jumps to the right time.

Readings taken before the clock is synchronised are all marked; once the clock steps, those
nobody has seen yet are moved by the step to when they were really taken; what the uplink already
leased stays as it was, marked. The kernel's view comes from adjtimex; a TLS failure caused by the
clock says so.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.agent_proc import running_agent
from tests.support.broker import Mosquitto, Subscriber, TlsFiles
from tests.support.testing import AGENT_GATEWAY, AGENT_SITE, eventually, write_agent_config
from tests.support.uplink import StartUplink, mqtt_config, reading_batches
from water_edge.agent.clock_sync import RESTAMPED_REASON, UNSYNC_REASON, ClockSync
from water_edge.agent.pipeline import Pipeline
from water_edge.agent.uplink.config import TlsConfig
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.codec import decode_events, decode_readings
from water_edge.buffer.stats import read_stats
from water_edge.core.clock import ClockWatch
from water_edge.core.reading import BAD, Reading
from water_edge.core.timesync import AdjtimexSource, SyncState

S = 1_000_000_000
EPOCH_1970 = 86_400 * S  # 1970-01-02, where a gateway without RTC starts
REAL = int(dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC).timestamp()) * S
YEAR_2000 = int(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp()) * S


class Gateway:
    """A clock that starts in 1970 (monotonic time counts on) and a sync state NTP flips."""

    def __init__(self) -> None:
        self.mono = 0
        self.wall_base = EPOCH_1970
        self.synced = False

    def wall(self) -> int:
        return self.wall_base + self.mono

    def read(self) -> SyncState:
        return SyncState(self.synced, "test clock", 0 if self.synced else None)

    def ntp_steps_the_clock(self) -> None:
        self.wall_base = REAL
        self.synced = True


def reading(gw: Gateway, tag: str, *, bad: bool = False) -> Reading:
    if bad:
        return Reading("plc", tag, gw.wall(), None, BAD, "bar", "timeout")
    return Reading("plc", tag, gw.wall(), 1.5, unit="bar")


async def _setup(tmp_path: Path, gw: Gateway) -> tuple[AsyncOutbox, Pipeline, ClockSync]:
    outbox = await AsyncOutbox.open(tmp_path / "outbox.sqlite", max_bytes=2**24)
    sync = ClockSync(gw, interval_s=3600)
    pipeline = Pipeline(
        outbox,
        lambda: None,
        flush_interval_s=0.05,
        clock=ClockWatch(threshold_s=1.0, wall_ns=gw.wall, mono_ns=lambda: gw.mono),
        sync=sync,
    )

    async def restamp(step_ns: int, before_ns: int) -> tuple[int, int]:
        return await outbox.restamp(step_ns, before_ns, UNSYNC_REASON, RESTAMPED_REASON)

    sync.bind(pipeline.submit_event, restamp)
    return outbox, pipeline, sync


async def _everything(outbox: AsyncOutbox) -> tuple[list[Reading], list[str]]:
    rows = await outbox.lease(0, 10_000)
    readings = [r for row in rows if row.row_class == "telemetry" for r in decode_readings(row.body)]
    events = [e.kind for row in rows if row.row_class == "event" for e in decode_events(row.body)]
    return readings, events


async def test_a_clock_that_starts_in_1970_and_jumps(tmp_path: Path) -> None:
    gw = Gateway()
    outbox, pipeline, sync = await _setup(tmp_path, gw)
    try:
        # Ten seconds of readings before NTP: each one marked, whatever its own quality.
        for _ in range(10):
            await pipeline.submit("plc", [reading(gw, "flow"), reading(gw, "level", bad=True)])
            await pipeline.flush()
            gw.mono += S
        seen_by_uplink = await outbox.lease(0, 1)  # the uplink got the first row out (plain MQTT)
        gw.ntp_steps_the_clock()
        await pipeline.submit("plc", [reading(gw, "flow")])  # the first submit after the step
        await sync.refresh()
        gw.mono += S
        await pipeline.submit("plc", [reading(gw, "flow")])
        await pipeline.flush()

        readings, events = await _everything(outbox)
        assert "clock_step" in events
        assert "clock_synchronised" in events
        # The row the uplink had: as it was sent, 1970 and marked.
        first = decode_readings(seen_by_uplink[0].body)
        assert [(r.ts_ns, r.reason) for r in first] == [
            (EPOCH_1970, UNSYNC_REASON),
            (EPOCH_1970, f"{UNSYNC_REASON}; timeout"),
        ]
        # Every other reading from before the step: at the time it was really taken, still marked.
        restamped = [r for r in readings if r.reason and r.reason.startswith(RESTAMPED_REASON)]
        assert sorted({r.ts_ns for r in restamped}) == [REAL + i * S for i in range(1, 10)]
        assert {r.quality for r in restamped if r.tag == "flow"} == {"uncertain"}
        assert {r.reason for r in restamped if r.tag == "level"} == {f"{RESTAMPED_REASON}; timeout"}
        # The target: no reading carries a pre-sync date without being marked.
        assert all(r.reason and r.reason.startswith(UNSYNC_REASON) for r in readings if r.ts_ns < YEAR_2000)
        # After the step, readings are good again once the sync is seen (the one before is still marked).
        assert [r.quality for r in readings if r.ts_ns >= REAL + 10 * S] == ["uncertain", "good"]
        health = sync.health()
        assert health.synchronised
        assert health.marked_readings == 21  # the 20, and the first after the step (before the refresh)
        assert health.restamped_readings == 18
        assert health.restamped_rows == 9
        assert any("restamped 18" in line for line in health.status_lines())
        # The rewritten rows' new sizes are in the running byte count the quota and status go by.
        assert (await outbox.stats()).bytes == read_stats(tmp_path / "outbox.sqlite").bytes
    finally:
        await outbox.close()


async def test_only_the_first_step_is_undone(tmp_path: Path) -> None:
    gw = Gateway()
    outbox, pipeline, sync = await _setup(tmp_path, gw)
    try:
        await pipeline.submit("plc", [reading(gw, "flow")])
        gw.wall_base += 3600 * S  # fake-hwclock restores the last saved time ...
        gw.mono += S
        await pipeline.submit("plc", [reading(gw, "flow")])
        gw.ntp_steps_the_clock()  # ... then NTP steps again: which step applies to what is unknown
        gw.mono += S
        await pipeline.submit("plc", [reading(gw, "flow")])
        await pipeline.flush()
        readings, _events = await _everything(outbox)
        # Moved by the first step only (it cannot know a second is coming), and says so ...
        assert (readings[0].ts_ns, readings[0].reason) == (EPOCH_1970 + 3600 * S, RESTAMPED_REASON)
        # ... and what came between the steps stays where it was, marked.
        assert (readings[1].ts_ns, readings[1].reason) == (EPOCH_1970 + 3601 * S, UNSYNC_REASON)
        assert sync.health().restamped_readings == 1
    finally:
        await outbox.close()


def test_the_kernel_view_is_read_with_adjtimex() -> None:
    state = AdjtimexSource().read()
    assert state.error is None, state.error
    assert state.synchronised in (True, False)
    assert state.maxerror_us is not None
    assert 0 <= state.maxerror_us <= 16_000_000  # the kernel caps maxerror at 16 s


def _not_yet_valid_broker(directory: Path) -> tuple[Path, Path, Path]:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clock test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    broker = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker")])
    here = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    leaf = (
        x509.CertificateBuilder().subject_name(broker)
        .issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now + dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=10))
        .add_extension(here, critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "broker.pem", directory / "broker.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


@pytest.mark.parametrize(
    ("synchronised", "says"), [(False, "clock is not synchronised"), (True, "by the gateway's clock")]
)
async def test_a_tls_failure_caused_by_the_date_says_so(
    tmp_path: Path, outbox: AsyncOutbox, start_uplink: StartUplink, synchronised: bool, says: str
) -> None:
    # To a gateway whose clock is behind, a valid broker certificate looks "not yet valid".
    ca, cert, key = _not_yet_valid_broker(tmp_path)
    with Mosquitto(tls=TlsFiles(ca, cert, key)) as broker:
        await outbox.append(reading_batches(1))
        run = await start_uplink(
            mqtt_config(broker, tls=TlsConfig(ca_file=ca)), outbox, clock_synchronised=lambda: synchronised
        )
        await run.states.wait(lambda s: s == "tls-error")
        error = str(run.uplink.health().last_error)
        assert "not yet valid" in error
        assert says in error


async def test_the_agent_marks_readings_until_timesyncd_says_synchronised(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    flag = tmp_path / "synchronized"
    config = write_agent_config(
        tmp_path,
        broker_port=mosquitto.port,
        devices=[{"name": "plc", "kind": "fake", "poll_interval_ms": 100, "tags": [{"name": "flow"}]}],
        clock={"sync_source": "timesyncd", "sync_flag_file": str(flag), "check_interval_s": 0.2},
    )
    topic = f"water/{AGENT_SITE}/{AGENT_GATEWAY}/plc"
    with Subscriber(mosquitto.host, mosquitto.port, topic) as sub, running_agent(config) as agent:
        status = await asyncio.to_thread(
            agent.wait_status, lambda s: s["pipeline"]["committed_readings"] >= 3
        )
        assert status["clock"]["synchronised"] is False
        assert any("clock not synchronised" in a for a in status["alarms"])
        flag.touch()  # systemd-timesyncd has synchronised the clock
        status = await asyncio.to_thread(agent.wait_status, lambda s: s["clock"]["synchronised"] is True)
        assert status["alarms"] == []

        def good_after_marked() -> bool:
            qualities = [r["quality"] for m in sub.snapshot() for r in m.json()["readings"]]
            return "uncertain" in qualities and qualities[-1] == "good"

        await eventually(good_after_marked, 15, "marked readings, then good ones")
        readings = [r for m in sub.snapshot() for r in m.json()["readings"]]
        marked = [r for r in readings if r["quality"] == "uncertain"]
        assert {r["reason"] for r in marked} == {UNSYNC_REASON}
        first_good = next(i for i, r in enumerate(readings) if r["quality"] == "good")
        assert all(r["quality"] == "good" for r in readings[first_good:])
