"""A fast decoder for the message that carries the data: a PublishResponse of data changes.

asyncua turns every monitored item's notification into dataclasses (a MonitoredItemNotification, a
DataValue, a Variant with its enum type, two datetimes) before the driver turns them into readings:
with 5,000 items changing every second that decoding was about 40 % of the driver's CPU (py-spy,
`make bench`'s OPC UA figure). `decode` reads a PublishResponse whose notifications are all data
changes of scalar numbers, booleans or strings straight into `DataChanges` (client handle, status
code, timestamps as FILETIME ticks, value), and returns None for anything else — a status change,
an event list, diagnostics, arrays, other variant types, any encoding it does not expect — which
asyncua then decodes as before. OPC UA Part 6 §5.2 (binary encoding) is the reference for the
layout; `tests/test_opcua_fast_publish.py` checks the result against asyncua's own decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.ua_binary import get_string_encoding, struct_from_binary
from asyncua.ua.uaerrors import BadNoSubscription, UaStructParsingError

PUBLISH_RESPONSE: Final = ObjectIds.PublishResponse_Encoding_DefaultBinary  # 829
DATA_CHANGE: Final = ObjectIds.DataChangeNotification_Encoding_DefaultBinary  # 811

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_HANDLE_MASK = struct.Struct("<IB")
_HEADER = struct.Struct("<qII")  # Timestamp, RequestHandle, ServiceResult
_STRING_TYPE: Final = 12
# Variant built-in types read here (Part 6 §5.1.2), by their type id; String (12) separately.
_SCALARS: Final[dict[int, struct.Struct]] = {
    1: struct.Struct("<?"),  # Boolean
    2: struct.Struct("<b"),  # SByte
    3: struct.Struct("<B"),  # Byte
    4: struct.Struct("<h"),  # Int16
    5: struct.Struct("<H"),  # UInt16
    6: struct.Struct("<i"),  # Int32
    7: struct.Struct("<I"),  # UInt32
    8: struct.Struct("<q"),  # Int64
    9: struct.Struct("<Q"),  # UInt64
    10: struct.Struct("<f"),  # Float
    11: struct.Struct("<d"),  # Double
}
# DataValue encoding mask bits. Picoseconds (0x10, 0x20) are left to asyncua, which reads them
# after both timestamps where Part 6 puts each after its own: whatever it makes of them stays so.
_VALUE, _STATUS, _SOURCE_TS, _SERVER_TS = 0x01, 0x02, 0x04, 0x08
_KNOWN_BITS: Final = _VALUE | _STATUS | _SOURCE_TS | _SERVER_TS


class _UnexpectedError(Exception):
    """Something this decoder leaves to asyncua."""


@dataclass(frozen=True, slots=True)
class DataChanges:
    """One DataChangeNotification: (client handle, status code, source ticks, server ticks, value)
    per monitored item; ticks are 100 ns since 1601 (0 when the timestamp is absent)."""

    items: list[tuple[int, int, int, int, Any]]


def decode(body: bytes) -> ua.PublishResponse | None:
    """The PublishResponse in `body` (from its type id on), or None to let asyncua decode it."""
    try:
        return _Reader(body).publish_response()
    except (_UnexpectedError, struct.error, ValueError, IndexError):
        return None


def install(
    session: Any, on_fast: Callable[[], None] | None = None, on_gone: Callable[[], None] | None = None
) -> None:
    """Make `session` (asyncua's UaSession) decode PublishResponses here when it can.

    Its publish loop calls `session.publish(acks)`; this replaces that one method on the instance
    with the same request, decoded by `decode` first. `on_fast` is called per response decoded here.
    `on_gone` is called when the server says the session has no subscription (BadNoSubscription, or
    a response for subscription 0): asyncua's publish loop then ends without telling anyone.
    """

    async def publish(acks: list[ua.SubscriptionAcknowledgement]) -> ua.PublishResponse:
        request = ua.PublishRequest()
        request.Parameters.SubscriptionAcknowledgements = acks if acks else []
        try:
            data: Buffer = await session._send_request(request, timeout=0)
        except BadNoSubscription:
            if on_gone is not None:
                on_gone()
            raise
        response = decode(bytes(data.copy().read(len(data))))
        if response is not None:
            if on_fast is not None:
                on_fast()
            return response
        try:
            parsed: ua.PublishResponse = struct_from_binary(ua.PublishResponse, data)
        except Exception as exc:
            raise UaStructParsingError from exc
        if not parsed.Parameters.SubscriptionId and on_gone is not None:
            on_gone()
        return parsed

    session.publish = publish


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, shape: struct.Struct) -> Any:
        (value,) = shape.unpack_from(self.data, self.pos)
        self.pos += shape.size
        return value

    def count(self) -> int:
        """An array's length; -1 (null) reads as 0."""
        n: int = self.take(_I32)
        return max(n, 0)

    def numeric_node_id(self) -> tuple[int, int]:
        """(namespace, identifier) of a NodeId in one of the numeric encodings."""
        kind: int = self.take(_U8)
        if kind == 0x00:
            return 0, self.take(_U8)
        if kind == 0x01:
            ns: int = self.take(_U8)
            return ns, self.take(_U16)
        if kind == 0x02:
            ns = self.take(_U16)
            return ns, self.take(_U32)
        raise _UnexpectedError("a NodeId encoding other than numeric")

    def no_diagnostics(self) -> None:
        if self.take(_U8) != 0:
            raise _UnexpectedError("diagnostic info")

    def no_diagnostics_array(self) -> None:
        if self.count() != 0:
            raise _UnexpectedError("diagnostic infos")

    def publish_response(self) -> ua.PublishResponse:
        if self.numeric_node_id() != (0, PUBLISH_RESPONSE):
            raise _UnexpectedError("not a PublishResponse")
        _timestamp, handle, service_result = _HEADER.unpack_from(self.data, self.pos)
        self.pos += _HEADER.size
        if service_result != 0:
            raise _UnexpectedError("a service result other than Good")
        self.no_diagnostics()
        if self.count() != 0:
            raise _UnexpectedError("a string table")
        if self.numeric_node_id() != (0, 0) or self.take(_U8) != 0:
            raise _UnexpectedError("an additional header")
        subscription: int = self.take(_U32)
        available = [self.take(_U32) for _ in range(self.count())]
        more: int = self.take(_U8)
        sequence: int = self.take(_U32)
        publish_time: int = self.take(_I64)
        notifications = [self.data_changes() for _ in range(self.count())]
        results = [ua.StatusCode(self.take(_U32)) for _ in range(self.count())]
        self.no_diagnostics_array()
        if self.pos != len(self.data):
            raise _UnexpectedError("bytes after the response")
        response = ua.PublishResponse()
        response.ResponseHeader.RequestHandle = handle
        params = response.Parameters
        params.SubscriptionId = subscription
        params.AvailableSequenceNumbers = available
        params.MoreNotifications = bool(more)
        params.Results = results
        message = params.NotificationMessage
        message.SequenceNumber = sequence
        message.PublishTime = ua.win_epoch_to_datetime(publish_time)
        message.NotificationData = notifications
        return response

    def data_changes(self) -> DataChanges:
        if self.numeric_node_id() != (0, DATA_CHANGE) or self.take(_U8) != 0x01:
            raise _UnexpectedError("a notification other than a data change")
        length: int = self.take(_I32)
        end = self.pos + length
        items = [self.item() for _ in range(self.count())]
        self.no_diagnostics_array()
        if self.pos != end:
            raise _UnexpectedError("a data change of another length than it says")
        return DataChanges(items)

    def item(self) -> tuple[int, int, int, int, Any]:
        handle, mask = _HANDLE_MASK.unpack_from(self.data, self.pos)
        self.pos += 5
        if mask & ~_KNOWN_BITS:
            raise _UnexpectedError("picoseconds or an unknown DataValue field")
        value = self.variant() if mask & _VALUE else None
        status = self.take(_U32) if mask & _STATUS else 0
        source = self.take(_I64) if mask & _SOURCE_TS else 0
        server = self.take(_I64) if mask & _SERVER_TS else 0
        return handle, status, source, server, value

    def variant(self) -> Any:
        kind: int = self.take(_U8)
        if kind == 0:
            return None
        shape = _SCALARS.get(kind)
        if shape is not None:
            return self.take(shape)
        if kind == _STRING_TYPE:
            n: int = self.take(_I32)
            if n < 0:
                return None
            raw = self.data[self.pos : self.pos + n]
            if len(raw) != n:
                raise _UnexpectedError("a string longer than the message")
            self.pos += n
            return raw.decode(get_string_encoding(), errors="surrogateescape")
        raise _UnexpectedError("an array or a variant type other than numbers, booleans and strings")
