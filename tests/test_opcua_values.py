"""OPC UA status codes, timestamps, units and config checks: what a reading says about a DataValue."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import cast

import pytest
from asyncua import ua
from asyncua.ua.status_codes import StatusCodes

from tests.support.testing import write_agent_config
from water_edge.agent.config import load_config
from water_edge.core.errors import ConfigError
from water_edge.drivers.opcua.values import (
    BEFORE_1970,
    TIME_CLOCK,
    TIME_OK,
    TIME_UNCHANGED,
    judge_time,
    reading_parts,
    status_quality,
    to_ns,
    unit_from_eu,
)
from water_edge.sim.opcua_server import browse_path, eu_information


def ua_time(t: dt.datetime) -> ua.DateTime:
    """asyncua types a DataValue's timestamps as its own DateTime class; a datetime is what it holds."""
    return cast(ua.DateTime, t)


@pytest.mark.parametrize(
    ("name", "quality"),
    [
        ("Good", "good"),
        ("GoodClamped", "good"),
        ("UncertainLastUsableValue", "uncertain"),
        ("UncertainSensorNotAccurate", "uncertain"),
        ("BadSensorFailure", "bad"),
        ("BadNodeIdUnknown", "bad"),
        ("BadCommunicationError", "bad"),
    ],
)
def test_status_code_class_gives_quality_and_name_gives_reason(name: str, quality: str) -> None:
    got_quality, reason = status_quality(getattr(StatusCodes, name))
    assert got_quality == quality
    assert reason == (None if quality == "good" else name)


def test_unknown_bad_code_keeps_its_hex_value() -> None:
    assert status_quality(0x80FE0000) == ("bad", "0x80FE0000")


def test_reading_parts_prefers_source_then_server_then_receive_time() -> None:
    src = dt.datetime(2026, 1, 2, 3, 4, 5, 678000)  # asyncua decodes UTC as naive
    srv = dt.datetime(2026, 1, 2, 3, 4, 6)
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    expected_src = int(aware.timestamp()) * 10**9 + 678 * 10**6
    both = ua.DataValue(
        ua.Variant(1.5, ua.VariantType.Double), SourceTimestamp=ua_time(src), ServerTimestamp=ua_time(srv)
    )
    assert reading_parts(both, 7) == (expected_src, 1.5, "good", None)
    server_only = ua.DataValue(ua.Variant(2, ua.VariantType.Int32), ServerTimestamp=ua_time(srv))
    assert reading_parts(server_only, 7)[0] == to_ns(srv)
    assert reading_parts(ua.DataValue(ua.Variant(True)), 7) == (7, True, "good", None)


def test_bad_status_drops_the_value_and_nan_is_bad() -> None:
    dv = ua.DataValue(ua.Variant(3.0), ua.StatusCode(cast(ua.UInt32, StatusCodes.BadSensorFailure)))
    assert reading_parts(dv, 1) == (1, None, "bad", "BadSensorFailure")
    nan = ua.DataValue(ua.Variant(float("nan"), ua.VariantType.Double))
    assert reading_parts(nan, 1) == (1, None, "bad", "not a number")
    array = ua.DataValue(ua.Variant([1, 2], ua.VariantType.Int32))
    assert reading_parts(array, 1)[2:] == ("bad", "unsupported value type list")


def test_a_good_status_without_a_value_is_uncertain_and_undecodable_text_is_repaired() -> None:
    """A Good null said nothing and went out `good`; a String's invalid UTF-8 (asyncua's lone
    surrogates) could not be stored at all."""
    empty = ua.DataValue(ua.Variant())
    assert reading_parts(empty, 5)[1:] == (None, "uncertain", "no value (null)")
    text = ua.DataValue(ua.Variant(ua.LocalizedText(None)))
    assert reading_parts(text, 5)[1:] == (None, "uncertain", "no value (null)")
    odd = ua.DataValue(ua.Variant("PS-\udcff", ua.VariantType.String))
    assert reading_parts(odd, 5)[1:] == (
        "PS-\ufffd",
        "uncertain",
        "text that is not UTF-8, undecodable bytes replaced",
    )
    fine = ua.DataValue(ua.Variant("PS-NORTH", ua.VariantType.String))
    assert reading_parts(fine, 5)[1:] == ("PS-NORTH", "good", None)


def test_engineering_units_round_trip_through_unece_codes() -> None:
    for unit in ("m3/h", "bar", "A", "mm/s", "degC", "rpm"):
        assert unit_from_eu(eu_information(unit)) == unit
    assert eu_information("m3/h").UnitId == int.from_bytes(b"MQH", "big")


def test_browse_path_mapping_is_documented_form() -> None:
    assert browse_path("pump1.discharge_pressure") == "PumpStation/Pump1/DischargePressure"
    assert browse_path("station.tank_level_cm") == "PumpStation/Station/TankLevelCm"


def _config(tmp_path: Path, device: str) -> Path:
    """An agent config whose one OPC UA device ends with `device` (the keys under test, literally)."""
    head = '[[devices]]\nname = "ua"\nkind = "opcua"\nendpoint = "opc.tcp://127.0.0.1:4840"\n'
    return write_agent_config(tmp_path, devices=head + device)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        (
            'security_policy = "Basic256Sha256"\nsecurity_mode = "SignAndEncrypt"\n'
            '[[devices.tags]]\nname = "a"\nnode = "ns=2;i=5"',
            "certificate",
        ),
        ('[[devices.tags]]\nname = "a"\nnode = "ns=2;i=5"\npath = "A/B"', "exactly one of 'node'"),
        ('[[devices.tags]]\nname = "a"\nnode = "pump1.flow"', "node"),
        ('mode = "push"\n[[devices.tags]]\nname = "a"\nnode = "ns=2;i=5"', "mode"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, device: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_config(tmp_path, device))
    text = str(err.value)
    assert "agent.toml" in text
    assert expected in text


def test_a_right_server_clock_vouches_for_a_value_unchanged_for_a_day_and_a_wrong_one_stamps_nothing() -> (
    None
):
    # A setpoint last changed yesterday keeps its day-old source timestamp in a data change or a
    # Read, while the server's own timestamp is now: its clock is right, the value is stamped with
    # the server's time (not a day back, and not as a wrong device clock stamped on arrival, which
    # the driver counts and warns of). A server clock a day off: arrival.
    now = dt.datetime(2026, 6, 1, 12, 0, 0)
    receive = to_ns(now)
    assert receive is not None
    tolerance = 300 * 10**9
    day = dt.timedelta(days=1)
    unchanged = ua.DataValue(
        ua.Variant(4.5), SourceTimestamp=ua_time(now - day), ServerTimestamp=ua_time(now)
    )
    # arriving a second after the server sent it: the server's time, not the arrival time
    assert reading_parts(unchanged, receive + 10**9, tolerance_ns=tolerance)[0] == receive
    fresh = ua.DataValue(
        ua.Variant(4.5), SourceTimestamp=ua_time(now - dt.timedelta(seconds=2)), ServerTimestamp=ua_time(now)
    )
    assert reading_parts(fresh, receive, tolerance_ns=tolerance)[0] == receive - 2 * 10**9
    server_off = ua.DataValue(
        ua.Variant(4.5), SourceTimestamp=ua_time(now + day), ServerTimestamp=ua_time(now + day)
    )
    assert reading_parts(server_off, receive + 1, tolerance_ns=tolerance)[0] == receive + 1
    source_only_off = ua.DataValue(ua.Variant(4.5), SourceTimestamp=ua_time(now - day))
    assert reading_parts(source_only_off, receive, tolerance_ns=tolerance)[0] == receive


_R = 1_780_000_000 * 10**9  # arrival
_T = 300 * 10**9  # clock_tolerance_ms = 300 000
_DAY = 86_400 * 10**9


@pytest.mark.parametrize(
    ("source", "server", "expected"),
    [
        (_R - 2 * 10**9, _R, (_R - 2 * 10**9, TIME_OK, None)),  # both about now: the source time
        (None, None, (_R, TIME_OK, None)),  # no time sent: arrival, nothing to judge
        (_R - _DAY, _R, (_R, TIME_OK, None)),  # unchanged since yesterday, the server vouches now
        # unchanged since yesterday, stamped by a server that stamps the last change (asyncua's,
        # firmware-sim's): no wrong clock, the arrival time
        (_R - _DAY, _R - _DAY, (_R, TIME_UNCHANGED, _R - _DAY)),
        (_R - _DAY, _R - _DAY + 10**9, (_R, TIME_UNCHANGED, _R - _DAY + 10**9)),
        (_R - _DAY, None, (_R, TIME_UNCHANGED, _R - _DAY)),  # only a source time, old
        (None, _R - _DAY, (_R, TIME_UNCHANGED, _R - _DAY)),
        (_R + _DAY, _R + _DAY, (_R, TIME_CLOCK, _R + _DAY)),  # ahead: a wrong clock
        (_R + _DAY, None, (_R, TIME_CLOCK, _R + _DAY)),
        (_R + _DAY, _R, (_R, TIME_CLOCK, _R + _DAY)),  # a field device ahead of a right server
        (_R, _R - _DAY, (_R, TIME_CLOCK, _R - _DAY)),  # source and server disagree: the server's clock
        (_R - 2 * _DAY, _R - _DAY, (_R, TIME_CLOCK, _R - _DAY)),
        (BEFORE_1970, BEFORE_1970, (_R, TIME_CLOCK, None)),  # an RTC reset before 1970
        (BEFORE_1970, _R, (_R, TIME_CLOCK, None)),
    ],
)
def test_old_equal_timestamps_are_an_unchanged_value_and_disagreeing_or_future_ones_a_wrong_clock(
    source: int | None, server: int | None, expected: tuple[int, str, int | None]
) -> None:
    assert judge_time(source, server, _R, _T) == expected
    assert judge_time(source, server, _R, None)[1] == TIME_OK  # no tolerance: nothing judged
