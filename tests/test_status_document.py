"""The status document: `edge-agent status` prints exactly the lines it always has, and
docs/status.schema.json describes every field of every part (so none goes undocumented)."""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints, is_typeddict

import jsonschema
import orjson
import pytest

from tests.support.testing import STATUS_SCHEMA
from water_edge.agent import processors as processor_kinds
from water_edge.agent.cli import format_status
from water_edge.agent.pipeline import FeedHealth, PipelineHealth
from water_edge.agent.remote.result import CommandCounts
from water_edge.agent.status_document import AgentStatus, ProcessorStatus, RejectedInputs, StatusDocument
from water_edge.agent.supervisor import RunnerStatus
from water_edge.agent.uplink.health import CommandStats, UplinkHealth
from water_edge.agent.uplink.state import ConnState
from water_edge.agent.watchdog import WatchdogHealth
from water_edge.buffer.stats import BufferHealth
from water_edge.core.health import Health
from water_edge.core.processor import Processor
from water_edge.drivers import registry
from water_edge.drivers.audio.health import AudioHealth, Gap
from water_edge.drivers.fake import FakeHealth
from water_edge.drivers.mbus.health import MbusHealth
from water_edge.drivers.modbus.health import ModbusRtuHealth, ModbusTcpHealth
from water_edge.drivers.opcua.health import OpcUaHealth
from water_edge.drivers.serial_bus import SerialBusHealth
from water_edge.models.flow_leak.processor import FlowLeakProcessor
from water_edge.models.leak.processor import AudioLeakProcessor, LeakHealth
from water_edge.models.machine_sound.processor import MachineSoundProcessor
from water_edge.models.meter.processor import MeterProcessor
from water_edge.models.pump.health import PumpHealth, PumpStatus
from water_edge.models.pump.processor import PumpProcessor

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_764_059_400_000_000_000

# The processors that ship, by kind; a new kind must add its processor here (and its health to the schema).
PROCESSOR_CLASSES: dict[str, type[Processor]] = {
    "pump": PumpProcessor,
    "leak": AudioLeakProcessor,
    "meter": MeterProcessor,
    "flow_leak": FlowLeakProcessor,
    "machine_sound": MachineSoundProcessor,
}


def runner(name: str, kind: str, driver: Health, **overrides: Any) -> RunnerStatus:
    fields: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "state": "up",
        "poll_interval_ms": 1000,
        "polls": 3600,
        "readings": 154_800,
        "bad_readings": 0,
        "overruns": 0,
        "failures": 0,
        "crashes": 0,
        "reconnects": 0,
        "last_read_ns": T0 - 400_000_000,
        "last_read_age_s": 0.4,
        "last_error": None,
        "down_since_ns": None,
        "driver": driver,
    }
    return RunnerStatus(**(fields | overrides))


def pump(state: Literal["learning", "armed", "alarm"]) -> PumpStatus:
    calibration = {
        "version": 2,
        "calibrated_at": "2025-11-20T03:00:00Z",
        "rows": 2016,
        "threshold": 4.25,
        "from": "2025-11-13T03:00:00Z",
        "to": "2025-11-20T03:00:00Z",
        "model_version": "1.1.0",
    }
    return PumpStatus(
        state=state,
        calibration=None if state == "learning" else calibration,  # type: ignore[arg-type]
        learning_progress=0.5 if state == "learning" else None,
        calibrating=False,
        samples=7200,
        stopped_samples=120,
        scored=0 if state == "learning" else 7000,
        events=0 if state != "alarm" else 1,
        last_score=None if state == "learning" else 5.1,
        last_error=None,
    )


def realistic_document() -> StatusDocument:
    """A gateway with one device of every kind, a refused uplink, two processors (one crashed), a
    quarantined outbox, a watchdog and a signed command channel."""
    serial_bus = SerialBusHealth(port="/dev/ttyUSB1", users=2, transactions=7200, wait_max_s=0.412)
    drivers = (
        runner(
            "pump-station",
            "modbus_tcp",
            ModbusTcpHealth(
                requests=7200, errors=3, timeouts=2, exceptions=1, last_ok_ns=T0 - 400_000_000, connected=True
            ),
            overruns=2,
            endpoint="10.20.0.7:502",
        ),
        runner(
            "well-3",
            "modbus_rtu",
            ModbusRtuHealth(
                requests=3600,
                errors=0,
                timeouts=0,
                exceptions=0,
                writes=4,
                last_ok_ns=T0,
                connected=True,
                bus=serial_bus,
            ),
        ),
        runner(
            "meters",
            "mbus",
            MbusHealth(
                open=False,
                port="/dev/ttyUSB0",
                polls=0,
                meter_reads=0,
                meter_failures=0,
                decode_errors=0,
                requests=0,
                retries=0,
                timeouts=0,
                checksum_errors=0,
                frame_errors=0,
                wrong_meter=0,
                bus=None,
            ),
            state="down",
            polls=12,
            readings=48,
            bad_readings=48,
            failures=12,
            last_read_ns=None,
            last_read_age_s=None,
            last_error="meters: M-Bus port /dev/ttyUSB0: cannot open: [Errno 2] No such file or directory",
            down_since_ns=T0 - 12_000_000_000,
            last_error_ns=T0 - 2_000_000_000,
            last_error_age_s=2.0,
            down_for_s=12.0,
            endpoint="/dev/ttyUSB0 2400 Bd",
        ),
        runner(
            "plc-ua",
            "opcua",
            OpcUaHealth(
                publishes=120,
                notifications=480,
                reads=2,
                dropped_batches=0,
                keepalives=30,
                connected=True,
                mode="subscribe",
                fallback=None,
                unresolved={"spare": "BadNoMatch"},
                failed_items={},
                last_ok_ns=T0,
            ),
            state="starting",
            polls=0,
            last_read_ns=None,
            last_read_age_s=None,
            last_error="plc-ua: connection refused",
            reconnects=3,
        ),
        runner(
            "hydro1",
            "audio",
            AudioHealth(
                url="tcp://127.0.0.1:7001",
                blocks=5625,
                open=True,
                source="stream",
                frames_captured=5_760_000,
                windows=718,
                window_listeners=1,
                listener_errors=0,
                nonfinite_frames=3,
                clipped_frames=0,
                dropped_frames=1600,
                dropped_by_cause={"stream_gap": 1600},
                gaps=1,
                recent_gaps=(Gap(ts_ns=T0 - 60_000_000_000, cause="stream_gap", frames=1600),),
                sample_rate=16000,
                channels=2,
                ring_capacity_frames=160_000,
                ring_fill_frames=1024,
            ),
            poll_interval_ms=10_000,
            polls=36,
            readings=1188,
            last_read_ns=T0 - 12_250_000_000,
            last_read_age_s=12.25,
        ),
        runner("fake-plc", "fake", FakeHealth(open=True, reads=3600), bad_readings=1, reconnects=1),
    )
    return StatusDocument(
        agent=AgentStatus(
            version="0.1.0",
            pid=4242,
            site="plant-north",
            gateway="gw-03",
            config="/etc/edge-agent/config.toml",
            started_ns=T0 - 3_725_400_000_000,
            uptime_s=3725.4,
        ),
        drivers=drivers,
        pipeline=PipelineHealth(
            readings_in=160_000,
            events_in=12,
            committed_readings=159_950,
            committed_events=12,
            flushes=18_000,
            append_errors=0,
            dropped_readings=0,
            last_error=None,
            readings_per_s=44.6,
            clock_steps=1,
            clock_flagged_readings=43,
            pending=50,
        ),
        buffer=BufferHealth(
            rows=1500,
            readings=64_500,
            bytes=3_145_728,
            max_bytes=268_435_456,
            used_pct=1.2,
            oldest_age_s=1499.8,
            evicted_rows=0,
            evicted_readings=0,
            expired_rows=0,
            expired_readings=0,
            disk_full=0,
            quarantined="/var/lib/edge-agent/outbox.sqlite.quarantined-20251125T0800Z",
            epoch=6_143_980_127_734_471,
        ),
        uplink=UplinkHealth(
            state=ConnState.REFUSED,
            connected=False,
            broker="mqtt.example.net:8883",
            client_id="edge-plant-north-gw-03",
            published=0,
            acked=0,
            readings_acked=0,
            inflight=0,
            reconnects=7,
            refused=7,
            rejected=0,
            encode_errors=0,
            ack_errors=0,
            last_error="Not authorized",
            last_error_ns=T0 - 2_000_000_000,
            last_error_age_s=2.0,
            down_for_s=3725.4,
            last_ack_ns=None,
            ack_rate_msg_s=0.0,
            ack_rate_readings_s=0.0,
            backlog_upto_id=0,
            published_live=0,
            published_backlog=0,
            commands=CommandStats(received=3, handled=2, dropped=0, rejected=1, failed=0),
        ),
        processors=(
            ProcessorStatus(
                name="pump_anomaly",
                crashes=2,
                feed=FeedHealth(held_readings=0, delivered_readings=154_800, dropped_readings=0, waits=0),
                health=PumpHealth("1.1.0", {"P1": pump("learning"), "P2": pump("alarm")}),
            ),
            ProcessorStatus(
                name="leak:hydro1",
                crashes=0,
                feed=FeedHealth(held_readings=0, delivered_readings=0, dropped_readings=0, waits=0),
                health=LeakHealth(windows_scored=712, windows_dropped=6, leak_probability=0.0132),
            ),
        ),
        watchdog=WatchdogHealth(interval_s=15.0, pings=248, withheld=1, stalled=()),
        rejected=RejectedInputs(status_requests=1, commands=1, commands_dropped=0, undecodable_rows=0),
        commands=CommandCounts(ok=2, failed=0, refused=1, refused_by_reason={"bad_signature": 1}),
    )


def as_received(document: StatusDocument) -> dict[str, Any]:
    """The document as `edge-agent status` receives it over the socket."""
    received: dict[str, Any] = orjson.loads(orjson.dumps(document.to_json()))
    return received


EXPECTED_LINES = [
    "edge-agent 0.1.0  site plant-north  gateway gw-03  pid 4242  up 1 h 2 min",
    "           config /etc/edge-agent/config.toml",
    "state    degraded: device meters is down; uplink refused (mqtt.example.net:8883); corrupt outbox "
    "quarantined to /var/lib/edge-agent/outbox.sqlite.quarantined-20251125T0800Z",
    "uplink   refused  mqtt.example.net:8883  never connected, 8 attempts  error 2.0 s ago: Not authorized",
    "         published 0  acked 0  in flight 0  last ack never",
    "pipeline 45 readings/s  pending 50  committed 159950  append errors 0  dropped 0",
    "buffer   1500 rows / 64500 readings  3.0 MiB of 256.0 MiB (1.2 %)  oldest 24 min 59 s  "
    "evicted 0 readings",
    "         epoch 6143980127734471",
    "model    pump_anomaly: P1 learning 50 %, P2 alarm (calibration v2 of 2025-11-20)  crashes 2",
    "model    leak:hydro1: 712 windows scored, leak probability 0.0132",
    "ALARM    corrupt outbox quarantined to /var/lib/edge-agent/outbox.sqlite.quarantined-20251125T0800Z",
    "drivers",
    "  pump-station  modbus_tcp  up       10.20.0.7:502  last read 0.4 s ago  polls 3600  bad 0  overruns 2  "
    "restarts 0",
    "  well-3        modbus_rtu  up       last read 0.4 s ago  polls 3600  bad 0  overruns 0  restarts 0",
    "  meters        mbus        down 12.0 s /dev/ttyUSB0 2400 Bd  last read never  polls 12  bad 48  "
    "overruns 0  restarts 0  error 2.0 s ago: meters: M-Bus port /dev/ttyUSB0: cannot open: [Errno 2] No "
    "such file or directory",
    "  plc-ua        opcua       starting last read never  polls 0  bad 0  overruns 0  restarts 3  "
    "error: plc-ua: connection refused",
    "  hydro1        audio       up       last read 12.2 s ago  polls 36  bad 0  overruns 0  restarts 0",
    "  fake-plc      fake        up       last read 0.4 s ago  polls 3600  bad 1  overruns 0  restarts 1",
]


def test_status_prints_the_same_lines_as_always() -> None:
    assert format_status(as_received(realistic_document())).splitlines() == EXPECTED_LINES


def test_status_says_how_many_readings_aged_out_beside_those_evicted() -> None:
    # max_age_s removes rows without any eviction: "evicted 0 readings" alone read as nothing lost.
    document = realistic_document()
    assert document.buffer is not None
    aged = dataclasses.replace(document.buffer, expired_rows=43, expired_readings=1849)
    lines = format_status(as_received(dataclasses.replace(document, buffer=aged))).splitlines()
    (buffer_line,) = [line for line in lines if line.startswith("buffer ")]
    assert buffer_line.endswith("oldest 24 min 59 s  evicted 0 readings  expired 1849 readings (max age)")


def test_each_section_carries_its_components_own_lines() -> None:
    document = realistic_document()
    received = as_received(document)
    assert received["uplink"]["lines"] == document.uplink.status_lines()
    assert received["drivers"][0]["lines"] == document.drivers[0].status_lines()
    assert received["processors"][1]["lines"] == document.processors[1].health.status_lines()
    # the runtime's crash count is added to the processor's own first line
    first = "P1 learning 50 %, P2 alarm (calibration v2 of 2025-11-20)  crashes 2"
    assert received["processors"][0]["lines"] == [first]
    assert received["processors"][0]["health"]["pumps"]["P2"]["calibration"]["from"].startswith("2025")
    # today's keys stay: refusals by reason also as flat `refused.<code>` counts
    assert (
        received["commands"]["refused.bad_signature"]
        == received["commands"]["refused_by_reason"]["bad_signature"]
    )


def test_a_status_before_the_first_buffer_measurement_prints_no_buffer_line() -> None:
    document = dataclasses.replace(
        realistic_document(), buffer=None, processors=(), watchdog=None, commands=None
    )
    received = as_received(document)
    assert received["buffer"] == {}
    assert received["alarms"] == []
    jsonschema.validate(received, STATUS_SCHEMA)
    lines = format_status(received).splitlines()
    assert not any(line.startswith(("buffer", "ALARM", "model")) for line in lines)
    assert lines[6] == "drivers"


def test_multi_line_sections_line_up_under_their_label() -> None:
    received = as_received(realistic_document())
    received["uplink"]["lines"] = ["online", "second line"]
    lines = format_status(received).splitlines()
    assert lines[3:5] == ["uplink   online", "         second line"]


def test_the_realistic_document_matches_the_schema() -> None:
    jsonschema.validate(as_received(realistic_document()), STATUS_SCHEMA)


def test_the_schema_rejects_an_undocumented_field() -> None:
    received = as_received(realistic_document())
    received["drivers"][0]["driver"]["new_counter"] = 1
    with pytest.raises(jsonschema.ValidationError, match="new_counter"):
        jsonschema.validate(received, STATUS_SCHEMA)


# -- the schema documents every field of every part --------------------------------------------------


def _unwrap(tp: Any) -> list[type]:
    """The classes inside a type annotation (`X | None`, `tuple[X, ...]`, `dict[str, X]`)."""
    origin = get_origin(tp)
    if origin is Literal:
        return []
    if origin in (typing.Union, types.UnionType, list, tuple, dict):
        return [t for arg in get_args(tp) for t in _unwrap(arg)]
    return [tp] if isinstance(tp, type) else []


def _parts(root: type) -> dict[str, type]:
    """Every dataclass and TypedDict reachable from `root` through its field types, by name."""
    found: dict[str, type] = {}
    todo = [root]
    while todo:
        cls = todo.pop()
        if cls.__name__ in found or not (dataclasses.is_dataclass(cls) or is_typeddict(cls)):
            continue
        found[cls.__name__] = cls
        todo += [t for hint in get_type_hints(cls).values() for t in _unwrap(hint)]
    return found


def _returned_health(method: Any) -> type:
    health: type = get_type_hints(method)["return"]
    return health


def documented_parts() -> dict[str, type]:
    """The status document's parts, with the health of every installed driver and processor kind
    (a section typed as the `Health` protocol only names its class at run time)."""
    assert set(processor_kinds.known_kinds()) == set(PROCESSOR_CLASSES), "add the new kind above"
    roots: list[type] = [StatusDocument]
    roots += [_returned_health(registry.load(kind).health) for kind in registry.known_kinds()]  # type: ignore[union-attr]
    roots += [_returned_health(cls.health) for cls in PROCESSOR_CLASSES.values()]
    parts: dict[str, type] = {}
    for root in roots:
        parts |= _parts(root)
    return parts


# Keys a section has beyond its class's fields: the rendered lines, and the document's own additions.
EXTRA_KEYS = {
    "StatusDocument": {"alarms", "verdict"},
    "RunnerStatus": {"lines", "driver_lines"},
    **{
        name: {"lines"}
        for name in (
            "AgentStatus",
            "PipelineHealth",
            "BufferHealth",
            "UplinkHealth",
            "ProcessorStatus",
            "UpdateHealth",
            "ClockHealth",
            "CertificateHealth",
            "StateBackupHealth",
        )
    },
}


def test_the_schema_lists_every_field_of_every_part() -> None:
    defs = STATUS_SCHEMA["$defs"]
    parts = documented_parts()
    assert {"AudioHealth", "MbusHealth", "FakeHealth", "PumpHealth", "CalibrationInfo"} <= set(parts)
    for name, cls in parts.items():
        schema = defs.get(name)
        assert schema is not None, f"docs/status.schema.json has no $defs/{name}"
        assert schema.get("additionalProperties") is False, f"$defs/{name} must be closed"
        documented = set(schema["properties"])
        fields = set(get_type_hints(cls)) | EXTRA_KEYS.get(name, set())
        assert fields - documented == set(), f"{name}: fields missing from the schema"
        assert documented - fields == set(), f"{name}: the schema documents fields that do not exist"
        for field_name, hint in get_type_hints(cls).items():
            prop = schema["properties"][field_name]
            assert prop.get("description") or "$ref" in prop, f"{name}.{field_name} has no description"
            values = _choices(hint)
            if values is not None:
                assert set(prop["enum"]) == values, f"{name}.{field_name}: enum differs from the type"


def _choices(hint: Any) -> set[Any] | None:
    """The values a Literal or Enum field may take (None included when optional), else None."""
    args = get_args(hint) if get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    values: set[Any] = set()
    for arg in args:
        if arg is type(None):
            values.add(None)
        elif get_origin(arg) is Literal:
            values |= set(get_args(arg))
        elif isinstance(arg, type) and issubclass(arg, Enum):
            values |= {member.value for member in arg}
        else:
            return None
    return values


def test_the_schema_maps_every_installed_driver_kind_and_processor_to_its_health() -> None:
    defs = STATUS_SCHEMA["$defs"]
    by_kind = {
        rule["if"]["properties"]["kind"]["const"]: rule["then"]["properties"]["driver"]["$ref"]
        for rule in defs["RunnerStatus"]["allOf"]
    }
    for kind in registry.known_kinds():
        health = _returned_health(registry.load(kind).health)  # type: ignore[union-attr]
        assert by_kind.get(kind) == f"#/$defs/{health.__name__}", kind
    processor_refs = {
        rule["then"]["properties"]["health"]["$ref"] for rule in defs["ProcessorStatus"]["allOf"]
    }
    for cls in PROCESSOR_CLASSES.values():
        assert f"#/$defs/{_returned_health(cls.health).__name__}" in processor_refs, cls.__name__
