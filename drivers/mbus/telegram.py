"""EN 13757-3 application layer: turns the user data of an RSP_UD (or a wireless telegram's
transport layer) into a header and typed records.

Variable data with a long (CI 72h, or 76h most significant byte first), short (7Ah) or no (78h)
header; the old fixed structure (73h/77h); application errors and alarms (70h/71h). Encrypted user
data (OMS security modes 5 and 7) is decrypted with the meter's key (`SecurityContext`); without
one it is a clear `MbusEncryptedError`. Records that cannot be placed become `unknown` records
(`records.py`), so one bad record never costs the rest of the telegram. Pure and linear in the
input: arbitrary bytes end in a `Telegram` or one `MbusDecodeError`, never a hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from water_edge.drivers.mbus import fixed, security, values
from water_edge.drivers.mbus import vif as vifs
from water_edge.drivers.mbus.frame import MbusDecodeError, parse_frame
from water_edge.drivers.mbus.records import Record, parse_records
from water_edge.drivers.mbus.security import ConfigField, SecurityContext

__all__ = ["Header", "Record", "SecurityContext", "Telegram", "decode_frame", "decode_user_data"]

CI_LONG_HEADER: Final = 0x72
CI_LONG_HEADER_MODE2: Final = 0x76
CI_SHORT_HEADER: Final = 0x7A
CI_NO_HEADER: Final = 0x78
CI_FIXED: Final = 0x73
CI_FIXED_MODE2: Final = 0x77
CI_APPLICATION_ERROR: Final = 0x70
CI_ALARM: Final = 0x71
LONG_HEADER: Final = 12
SHORT_HEADER: Final = 4

STATUS_FLAGS: Final = (
    (0x04, "power low"),
    (0x08, "permanent error"),
    (0x10, "temporary error"),
)
APPLICATION_STATUS: Final = ("ok", "application busy", "application error", "abnormal condition")
# The status byte of a CI 70h answer (EN 13757-3, general application errors); a meter may leave it
# out, which reads as 0.
APPLICATION_ERRORS: Final = (
    "unspecified error", "unimplemented CI-field", "buffer too long, truncated", "too many records",
    "premature end of record", "more than 10 DIFEs", "more than 10 VIFEs", "reserved",
    "application too busy for handling readout request", "too many readouts",
)  # fmt: skip


def application_error_text(code: int) -> str:
    return APPLICATION_ERRORS[code] if code < len(APPLICATION_ERRORS) else f"error code {code}"


bcd_digits = values.bcd_digits


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed data header. `id` is the 8-digit BCD identification (hex when not BCD);
    `signature` is the configuration field (security mode and encrypted block count)."""

    id: str | None
    manufacturer: str | None
    version: int | None
    medium: int | None
    access_number: int
    status: int
    signature: int
    medium_text: str | None = None  # the fixed structure's own medium table

    @property
    def medium_name(self) -> str | None:
        if self.medium_text is not None:
            return self.medium_text
        return None if self.medium is None else vifs.medium_name(self.medium)

    @property
    def status_flags(self) -> list[str]:
        flags = [name for bit, name in STATUS_FLAGS if self.status & bit]
        app = self.status & 0x03
        if app:
            flags.insert(0, APPLICATION_STATUS[app])
        if self.status & 0xE0:
            flags.append(f"manufacturer flags 0x{self.status & 0xE0:02X}")
        return flags


@dataclass(frozen=True, slots=True)
class Telegram:
    """A decoded RSP_UD (or an application error / alarm telegram)."""

    address: int
    control: int
    ci: int
    header: Header | None
    records: list[Record] = field(default_factory=list)
    manufacturer_data: bytes = b""
    more_follows: bool = False
    application_error: int | None = None
    notes: tuple[str, ...] = ()
    security_mode: int = 0
    decrypted: bool = False

    def to_dict(self) -> dict[str, Any]:
        header: dict[str, Any] | None = None
        if self.header is not None:
            h = self.header
            header = {
                "id": h.id,
                "manufacturer": h.manufacturer,
                "version": h.version,
                "medium": h.medium_name,
                "medium_code": h.medium,
                "access_number": h.access_number,
                "status": h.status,
                "status_flags": h.status_flags,
                "signature": h.signature,
            }
        out: dict[str, Any] = {
            "address": self.address,
            "control": self.control,
            "ci": self.ci,
            "header": header,
            "records": [r.to_dict() for r in self.records],
            "more_follows": self.more_follows,
        }
        if self.manufacturer_data:
            out["manufacturer_data"] = self.manufacturer_data.hex().upper()
        if self.application_error is not None:
            out["application_error"] = self.application_error
        if self.security_mode:
            out["security"] = {"mode": self.security_mode, "decrypted": self.decrypted}
            if self.security_mode == 7:
                # Mode 7 is only decrypted with its AFL MAC checked (security.decrypt refuses it otherwise).
                out["security"]["authenticated"] = self.decrypted
        if self.notes:
            out["notes"] = list(self.notes)
        return out


def decode_frame(raw: bytes, security_context: SecurityContext | None = None) -> Telegram:
    """A whole long frame (68 L L 68 ... CS 16): link-layer checks, then the application layer."""
    frame = parse_frame(raw)
    if not frame.telegram or frame.ci is None:
        raise MbusDecodeError(
            f"a {frame.kind} frame carries no user data (an RSP_UD long frame was expected)"
        )
    return decode_user_data(
        frame.ci, frame.data, address=frame.address, control=frame.control, security=security_context
    )


def manufacturer_code(value: int) -> str:
    """The 3-letter FLAG code packed as 5 bits per letter (bit 15 is not part of it)."""
    return "".join(chr(((value >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def manufacturer_value(code: str) -> int:
    """The inverse of `manufacturer_code`: "KAM" -> 0x2C2D."""
    if len(code) != 3 or not all("A" <= ch <= "Z" for ch in code):
        raise ValueError(f"a manufacturer code is 3 letters A-Z, got {code!r}")
    return ((ord(code[0]) - 64) << 10) | ((ord(code[1]) - 64) << 5) | (ord(code[2]) - 64)


def _long_header(ci: int, data: bytes) -> tuple[bytes, Header]:
    """The 12 bytes of a long header (in the usual LSB-first order) and what they say."""
    if len(data) < LONG_HEADER:
        raise MbusDecodeError(f"truncated header: {len(data)} of {LONG_HEADER} bytes after CI 0x{ci:02X}")
    head = _lsb_first_long(data[:LONG_HEADER]) if ci == CI_LONG_HEADER_MODE2 else data[:LONG_HEADER]
    header = Header(
        bcd_digits(head[0:4]),
        manufacturer_code(head[4] | head[5] << 8),
        head[6],
        head[7],
        head[8],
        head[9],
        head[10] | head[11] << 8,
    )
    return head, header


def frame_header(raw: bytes) -> Header | None:
    """The long header of a whole RSP_UD frame, without decoding (or decrypting) its records; None
    when it has none (a short or no header, the fixed structure)."""
    frame = parse_frame(raw)
    if frame.kind != "long" or frame.ci not in (CI_LONG_HEADER, CI_LONG_HEADER_MODE2):
        return None
    return _long_header(frame.ci, frame.data)[1]


def decode_user_data(
    ci: int,
    data: bytes,
    *,
    address: int = 0,
    control: int = 0x08,
    security: SecurityContext | None = None,
) -> Telegram:
    """User data from the CI field on. For a short header (7Ah) the IV of an encrypted telegram
    needs the meter's address from the link layer: `security.address`."""
    if ci in (CI_APPLICATION_ERROR, CI_ALARM):
        return Telegram(address, control, ci, None, application_error=data[0] if data else 0)
    if ci in (CI_FIXED, CI_FIXED_MODE2):
        ident, access, status, medium, recs = fixed.fixed_records(data, msb_first=ci == CI_FIXED_MODE2)
        header = Header(ident, None, None, None, access, status, 0, medium_text=medium)
        return Telegram(address, control, ci, header, recs)
    msb_first = ci == CI_LONG_HEADER_MODE2
    if ci in (CI_LONG_HEADER, CI_LONG_HEADER_MODE2):
        head, header = _long_header(ci, data)
        iv_address: bytes | None = head[4:6] + head[0:4] + head[6:8]
        body = data[LONG_HEADER:]
    elif ci == CI_SHORT_HEADER:
        if len(data) < SHORT_HEADER:
            raise MbusDecodeError(f"truncated header: {len(data)} of {SHORT_HEADER} bytes after CI 0x7A")
        header = Header(None, None, None, None, data[0], data[1], data[2] | data[3] << 8)
        iv_address = security.address if security is not None else None
        body = data[SHORT_HEADER:]
    elif ci == CI_NO_HEADER:
        records, mdata, more = parse_records(data)
        return Telegram(address, control, ci, None, records, mdata, more)
    else:
        raise MbusDecodeError(
            f"CI 0x{ci:02X} is not a variable-data response (72, 76, 7A, 78, 73 or 77 expected)"
        )
    return _secured(address, control, ci, header, body, security, iv_address, msb_first)


def _lsb_first_long(head: bytes) -> bytes:
    """A mode 2 long header with its multi-byte fields turned to the usual LSB-first order."""
    return head[0:4][::-1] + head[4:6][::-1] + head[6:10] + head[10:12][::-1]


def _secured(  # noqa: PLR0917 - one header's worth of fields
    address: int,
    control: int,
    ci: int,
    header: Header,
    body: bytes,
    context: SecurityContext | None,
    iv_address: bytes | None,
    msb_first: bool,
) -> Telegram:
    cf = ConfigField(header.signature)
    notes: list[str] = []
    decrypted = False
    if cf.mode:
        body = body[cf.extension_bytes :] if cf.defined else body
        note = security.plain_note(cf, len(body))
        if note is not None:
            notes.append(note)
        else:
            plain = security.decrypt(
                cf, body, context, address=iv_address, access_number=header.access_number
            )
            decrypted = plain is not body
            if not decrypted:
                notes.append(security.ALREADY_DECRYPTED)
            body = plain
    records, mdata, more = parse_records(body, msb_first=msb_first)
    mode = cf.mode if cf.defined else 0
    return Telegram(address, control, ci, header, records, mdata, more, None, tuple(notes), mode, decrypted)
