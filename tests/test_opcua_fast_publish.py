"""The OPC UA driver's own decoding of data changes gives exactly the readings asyncua's did.

Each case is a PublishResponse encoded by asyncua's encoder (what a server sends, byte for byte as
asyncua would read it); its readings through `fast_publish` + `change_parts` must equal those
through asyncua's decoder + `reading_parts`, value types included (a Boolean stays a bool). What
the fast path does not read (arrays, other variant types, status changes, diagnostics,
picoseconds, a damaged message) must come back as None, for asyncua to decode as before.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, cast

import pytest
from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import struct_from_binary, struct_to_binary

from water_edge.drivers.opcua.fast_publish import DataChanges, decode
from water_edge.drivers.opcua.values import change_parts, reading_parts, ticks_to_ns, to_ns

RECEIVE_NS = 1_750_000_000_123_456_789
NOW = dt.datetime(2026, 12, 2, 10, 30, 15, 123456, tzinfo=dt.UTC)
VT = ua.VariantType

VARIANTS = [
    ua.Variant(True, VT.Boolean),
    ua.Variant(False, VT.Boolean),
    ua.Variant(-5, VT.SByte),
    ua.Variant(250, VT.Byte),
    ua.Variant(-32000, VT.Int16),
    ua.Variant(65000, VT.UInt16),
    ua.Variant(-2_000_000_000, VT.Int32),
    ua.Variant(4_000_000_000, VT.UInt32),
    ua.Variant(-(2**62), VT.Int64),
    ua.Variant(2**64 - 1, VT.UInt64),
    ua.Variant(1.25, VT.Float),
    ua.Variant(math.nan, VT.Float),
    ua.Variant(-math.inf, VT.Double),
    ua.Variant(1234.5678901234, VT.Double),
    ua.Variant("Pumpe läuft", VT.String),
    ua.Variant("", VT.String),
    ua.Variant(None, VT.String),
    ua.Variant(None, VT.Null),
]
STAMPS = [
    {"SourceTimestamp": NOW, "ServerTimestamp": NOW + dt.timedelta(seconds=1)},
    {"ServerTimestamp": NOW},
    {},
    {"SourceTimestamp": dt.datetime(1601, 1, 1, tzinfo=dt.UTC), "ServerTimestamp": NOW},
    {"SourceTimestamp": dt.datetime(1969, 12, 31, tzinfo=dt.UTC)},
    {"SourceTimestamp": dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)},
]


def status_code(code: int) -> ua.StatusCode:
    """asyncua types a status code's value as its own UInt32 class; a plain int is what it holds."""
    return ua.StatusCode(cast(ua.UInt32, code))


STATUSES = [None, status_code(0), status_code(StatusCodes.UncertainLastUsableValue)]
STATUSES += [status_code(StatusCodes.BadSensorFailure), status_code(0x80AB0000)]


def response(*notifications: Any, subscription: int = 7, sequence: int = 42) -> bytes:
    r = ua.PublishResponse()
    r.Parameters.SubscriptionId = subscription
    r.Parameters.AvailableSequenceNumbers = [40, 41, 42]
    r.Parameters.MoreNotifications = False
    r.Parameters.Results = [status_code(0), status_code(StatusCodes.BadSequenceNumberUnknown)]
    r.Parameters.NotificationMessage.SequenceNumber = sequence
    r.Parameters.NotificationMessage.PublishTime = NOW
    r.Parameters.NotificationMessage.NotificationData = list(notifications)
    return bytes(struct_to_binary(r))


def data_change(values: list[ua.DataValue], first_handle: int = 0) -> ua.DataChangeNotification:
    n = ua.DataChangeNotification()
    n.MonitoredItems = [
        ua.MonitoredItemNotification(ClientHandle=first_handle + i, Value=v) for i, v in enumerate(values)
    ]
    return n


def value(variant: ua.Variant | None, status: ua.StatusCode | None, **stamps: Any) -> ua.DataValue:
    dv = ua.DataValue(variant, **stamps)
    if variant is None:
        dv.Value = None  # a DataValue without a value field
    dv.StatusCode = status
    return dv


def readings_both_ways(body: bytes) -> tuple[list[Any], list[Any]]:
    """(fast, asyncua): (handle, ts_ns, value, type, quality, reason) per item, in order."""
    fast = decode(body)
    assert fast is not None
    slow = struct_from_binary(ua.PublishResponse, Buffer(body))
    got = [
        (handle, *_typed(change_parts(status, source, server, raw, RECEIVE_NS)))
        for notification in fast.Parameters.NotificationMessage.NotificationData
        for handle, status, source, server, raw in _items(notification)
    ]
    expected = [
        (item.ClientHandle, *_typed(reading_parts(item.Value, RECEIVE_NS)))
        for notification in slow.Parameters.NotificationMessage.NotificationData
        for item in notification.MonitoredItems
    ]
    return got, expected


def _items(notification: Any) -> list[tuple[int, int, int, int, Any]]:
    assert isinstance(notification, DataChanges)
    return notification.items


def _typed(parts: tuple[int, Any, str, str | None]) -> tuple[int, Any, str, str, str | None]:
    ts, v, quality, reason = parts
    return ts, v, type(v).__name__, quality, reason


def test_every_scalar_status_and_timestamp_reads_as_asyncua_reads_it() -> None:
    values = [
        value(variant, status, **stamps) for variant in VARIANTS for status in STATUSES for stamps in STAMPS
    ]
    values.append(value(None, None, SourceTimestamp=NOW))  # no value at all
    body = response(data_change(values[:300]), data_change(values[300:], first_handle=300))
    got, expected = readings_both_ways(body)
    assert len(got) == len(values) == 541
    assert got == expected
    # Spot checks of what the comparison stands on.
    assert (0, int(NOW.timestamp()) * 10**9 + 123456000, True, "bool", "good", None) in got
    assert any(r[2] == 2**64 - 1 and r[3] == "int" for r in got)
    assert any(r[2] is None and r[4] == "bad" and r[5] == "not a number" for r in got)
    assert any(r[1] == RECEIVE_NS for r in got)  # no timestamps: the time of receipt


def test_the_response_around_the_data_is_kept() -> None:
    body = response(data_change([value(ua.Variant(1.0, VT.Double), None)]), subscription=9, sequence=77)
    fast, slow = decode(body), struct_from_binary(ua.PublishResponse, Buffer(body))
    assert fast is not None
    for name in ("SubscriptionId", "AvailableSequenceNumbers", "MoreNotifications", "Results"):
        assert getattr(fast.Parameters, name) == getattr(slow.Parameters, name), name
    for name in ("SequenceNumber", "PublishTime"):
        assert getattr(fast.Parameters.NotificationMessage, name) == getattr(
            slow.Parameters.NotificationMessage, name
        )


def _status_change() -> ua.StatusChangeNotification:
    return ua.StatusChangeNotification(Status=status_code(StatusCodes.BadTimeout))


def _with_diagnostics() -> bytes:
    r = struct_from_binary(ua.PublishResponse, Buffer(response(data_change([]))))
    r.ResponseHeader.ServiceDiagnostics = ua.DiagnosticInfo(SymbolicId=cast(ua.Int32, 3))
    return bytes(struct_to_binary(r))


@pytest.mark.parametrize(
    "body",
    [
        response(data_change([value(ua.Variant([1.0, 2.0], VT.Double), None)])),
        response(data_change([value(ua.Variant(ua.LocalizedText("on"), VT.LocalizedText), None)])),
        response(data_change([value(ua.Variant(NOW, VT.DateTime), None)])),
        response(data_change([value(ua.Variant(b"\x01", VT.ByteString), None)])),
        response(data_change([value(ua.Variant(1.0, VT.Double), None, SourcePicoseconds=5)])),
        response(data_change([value(ua.Variant(1.0, VT.Double), None)]), _status_change()),
        _with_diagnostics(),
        response(data_change([value(ua.Variant(1.0, VT.Double), None)]))[:-3],  # cut short
        response(data_change([value(ua.Variant(1.0, VT.Double), None)])) + b"\x00",  # a byte too many
        response(data_change([value(ua.Variant("x" * 50, VT.String), None)]))[:-20],
    ],
    ids=[
        "array", "localized-text", "datetime", "bytestring", "picoseconds", "status-change",
        "diagnostics", "truncated", "trailing-byte", "string-past-the-end",
    ],
)  # fmt: skip
def test_what_it_does_not_read_is_left_to_asyncua(body: bytes) -> None:
    assert decode(body) is None


def test_a_keep_alive_has_no_notifications() -> None:
    fast = decode(response())
    assert fast is not None
    assert fast.Parameters.NotificationMessage.NotificationData == []


@pytest.mark.parametrize(
    "ticks",
    [0, -5, 1, 116_444_736_000_000_000, 116_444_736_000_000_009, 134_407_016_697_114_417,
     2_650_467_743_989_999_999, 2_650_467_743_990_000_000, 2**63 - 1],
)  # fmt: skip
def test_timestamps_in_ticks_read_as_asyncua_reads_them(ticks: int) -> None:
    """A server's clock may carry 100 ns ticks (asyncua's encoder writes whole microseconds)."""
    assert ticks_to_ns(ticks) == to_ns(ua.win_epoch_to_datetime(ticks))
