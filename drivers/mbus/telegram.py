"""EN 13757-3 application layer: turns the user data of an RSP_UD into a header and typed records.

Pure and linear in the input: every step consumes at least one byte, so arbitrary bytes end in a
`Telegram` or one `MbusDecodeError`, never a hang. Records whose value cannot be trusted (invalid
BCD, a date the meter flags invalid, a record error VIFE) keep their raw bytes and carry `error`.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any, Final

from water_edge.core.reading import Value
from water_edge.drivers.mbus import vif as vifs
from water_edge.drivers.mbus.frame import MbusDecodeError, parse_frame

CI_LONG_HEADER: Final = 0x72
CI_SHORT_HEADER: Final = 0x7A
CI_NO_HEADER: Final = 0x78
CI_APPLICATION_ERROR: Final = 0x70
CI_ALARM: Final = 0x71
MODE2_CI: Final = frozenset({0x76, 0x73, 0x7B})

MAX_DIFE: Final = 10
MAX_VIFE: Final = 10

FUNCTIONS: Final = ("instantaneous", "maximum", "minimum", "error")

# Bytes per data-field code (DIF bits 0-3); None: variable length (0xD) or special (0xF).
DATA_LENGTH: Final[dict[int, int]] = {
    0x0: 0, 0x1: 1, 0x2: 2, 0x3: 3, 0x4: 4, 0x5: 4, 0x6: 6, 0x7: 8,
    0x8: 0, 0x9: 1, 0xA: 2, 0xB: 3, 0xC: 4, 0xE: 6,
}  # fmt: skip
BCD_CODES: Final = frozenset({0x9, 0xA, 0xB, 0xC, 0xE})

STATUS_FLAGS: Final = (
    (0x04, "power low"),
    (0x08, "permanent error"),
    (0x10, "temporary error"),
)
APPLICATION_STATUS: Final = ("ok", "application busy", "application error", "abnormal condition")


@dataclass(frozen=True, slots=True)
class Header:
    """The fixed data header. `id` is the 8-digit BCD identification (hex when not BCD)."""

    id: str | None
    manufacturer: str | None
    version: int | None
    medium: int | None
    access_number: int
    status: int
    signature: int

    @property
    def medium_name(self) -> str | None:
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
class Record:
    """One data record. `dif`/`vif` are the raw DIF+DIFEs and VIF+VIFEs, `data` the raw value bytes."""

    dif: bytes
    vif: bytes
    data: bytes
    value: Value
    unit: str
    quantity: str
    function: str
    storage: int
    tariff: int
    subunit: int
    modifiers: tuple[str, ...] = ()
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "value": self.value,
            "unit": self.unit,
            "quantity": self.quantity,
            "function": self.function,
            "storage": self.storage,
            "tariff": self.tariff,
            "subunit": self.subunit,
            "dif": self.dif.hex().upper(),
            "vif": self.vif.hex().upper(),
            "data": self.data.hex().upper(),
        }
        if self.modifiers:
            out["modifiers"] = list(self.modifiers)
        if self.error:
            out["error"] = self.error
        return out


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
        return out


def decode_frame(raw: bytes) -> Telegram:
    """A whole long frame (68 L L 68 ... CS 16): link-layer checks, then the application layer."""
    frame = parse_frame(raw)
    if frame.kind != "long" or frame.ci is None:
        raise MbusDecodeError(
            f"a {frame.kind} frame carries no user data (an RSP_UD long frame was expected)"
        )
    return decode_user_data(frame.ci, frame.data, address=frame.address, control=frame.control)


def manufacturer_code(value: int) -> str:
    """The 3-letter FLAG code packed as 5 bits per letter (bit 15 is not part of it)."""
    return "".join(chr(((value >> shift) & 0x1F) + 64) for shift in (10, 5, 0))


def manufacturer_value(code: str) -> int:
    """The inverse of `manufacturer_code`: "KAM" -> 0x2C2D."""
    if len(code) != 3 or not all("A" <= ch <= "Z" for ch in code):
        raise ValueError(f"a manufacturer code is 3 letters A-Z, got {code!r}")
    return ((ord(code[0]) - 64) << 10) | ((ord(code[1]) - 64) << 5) | (ord(code[2]) - 64)


def bcd_digits(data: bytes) -> str:
    """Little-endian BCD bytes as the digit string a meter prints (hex where a nibble is A-F)."""
    return data[::-1].hex().upper()


def decode_user_data(ci: int, data: bytes, *, address: int = 0, control: int = 0x08) -> Telegram:
    if ci == CI_APPLICATION_ERROR:
        code = data[0] if data else 0
        return Telegram(address, control, ci, None, application_error=code)
    if ci == CI_ALARM:
        return Telegram(address, control, ci, None, application_error=data[0] if data else 0)
    if ci in MODE2_CI:
        raise MbusDecodeError(f"CI 0x{ci:02X}: mode 2 (most significant byte first) is not supported")
    if ci == CI_LONG_HEADER:
        if len(data) < 12:
            raise MbusDecodeError(f"truncated header: {len(data)} of 12 bytes after CI 0x72")
        ident = bcd_digits(data[0:4])
        man = manufacturer_code(data[4] | data[5] << 8)
        header = Header(ident, man, data[6], data[7], data[8], data[9], data[10] | data[11] << 8)
        body = data[12:]
    elif ci == CI_SHORT_HEADER:
        if len(data) < 4:
            raise MbusDecodeError(f"truncated header: {len(data)} of 4 bytes after CI 0x7A")
        header = Header(None, None, None, None, data[0], data[1], data[2] | data[3] << 8)
        body = data[4:]
    elif ci == CI_NO_HEADER:
        header = None
        body = data
    else:
        raise MbusDecodeError(f"CI 0x{ci:02X} is not a variable-data response (72, 7A or 78 expected)")
    if header is not None and (header.signature >> 8) & 0x1F:
        raise MbusDecodeError(
            f"encrypted user data (security mode {(header.signature >> 8) & 0x1F}) cannot be decoded "
            "without the meter's key"
        )
    records, mdata, more = _records(body)
    return Telegram(address, control, ci, header, records, mdata, more)


def _records(body: bytes) -> tuple[list[Record], bytes, bool]:
    records: list[Record] = []
    pos = 0
    end = len(body)
    while pos < end:
        start = pos
        dif = body[pos]
        pos += 1
        if dif == 0x2F:  # idle filler
            continue
        if dif in (0x0F, 0x1F):
            return records, body[pos:], dif == 0x1F
        if dif & 0x0F == 0x0F:
            raise MbusDecodeError(f"reserved special DIF 0x{dif:02X} at byte {start} of the data")
        storage = (dif >> 6) & 0x01
        tariff = 0
        subunit = 0
        ext = dif & 0x80
        n = 0
        while ext:
            if pos >= end:
                raise MbusDecodeError(f"record at byte {start}: truncated in its DIFEs")
            if n == MAX_DIFE:
                raise MbusDecodeError(f"record at byte {start}: more than {MAX_DIFE} DIFEs")
            dife = body[pos]
            pos += 1
            storage |= (dife & 0x0F) << (1 + 4 * n)
            tariff |= ((dife >> 4) & 0x03) << (2 * n)
            subunit |= ((dife >> 6) & 0x01) << n
            ext = dife & 0x80
            n += 1
        dif_bytes = body[start:pos]
        info, modifiers, vif_bytes, pos, vife_list = _read_vif(body, pos, start)
        data_code = dif & 0x0F
        if data_code == 0x0D:
            if pos >= end:
                raise MbusDecodeError(f"record at byte {start}: truncated before its LVAR byte")
            lvar = body[pos]
            pos += 1
            size = _lvar_size(lvar, start)
        else:
            lvar = -1
            size = DATA_LENGTH[data_code]
        if pos + size > end:
            raise MbusDecodeError(f"record at byte {start}: needs {size} data byte(s), {end - pos} left")
        raw = body[pos : pos + size]
        pos += size
        where = (storage, tariff, subunit)
        records.append(_record(dif, dif_bytes, vif_bytes, raw, lvar, info, modifiers, vife_list, where))
    return records, b"", False


def _lvar_size(lvar: int, start: int) -> int:
    if lvar <= 0xBF:
        return lvar
    if 0xC0 <= lvar <= 0xC9 or 0xD0 <= lvar <= 0xD9:
        return lvar & 0x0F
    if 0xE0 <= lvar <= 0xEF:
        return lvar - 0xE0
    if 0xF0 <= lvar <= 0xF4:
        return 4 * (lvar - 0xEC)
    if lvar == 0xF5:
        return 6
    if lvar == 0xF6:
        return 8
    raise MbusDecodeError(f"record at byte {start}: reserved LVAR 0x{lvar:02X}")


def _read_vif(  # noqa: PLR0912, PLR0915 - VIF forms of EN 13757-3 7.4, in spec order
    body: bytes, pos: int, start: int
) -> tuple[vifs.VifInfo, list[str], bytes, int, list[vifs.Vife]]:
    end = len(body)
    vif_start = pos
    if pos >= end:
        raise MbusDecodeError(f"record at byte {start}: truncated before its VIF")
    vif = body[pos]
    pos += 1
    code = vif & 0x7F
    ext = vif & 0x80
    modifiers: list[str] = []
    info: vifs.VifInfo
    manufacturer_vife = False
    if code in (0x7B, 0x7D):
        if not ext:
            raise MbusDecodeError(f"record at byte {start}: VIF 0x{vif:02X} without its extension byte")
        if pos >= end:
            raise MbusDecodeError(f"record at byte {start}: truncated in its VIF extension")
        second = body[pos]
        pos += 1
        ext = second & 0x80
        table = vifs.extension_fb if code == 0x7B else vifs.extension_fd
        info = table(second & 0x7F)
    elif code == 0x7C:
        if pos >= end:
            raise MbusDecodeError(f"record at byte {start}: truncated before its plain-text unit")
        length = body[pos]
        if pos + 1 + length > end:
            raise MbusDecodeError(f"record at byte {start}: plain-text unit runs past the end")
        text = body[pos + 1 : pos + 1 + length][::-1].decode("latin-1")
        pos += 1 + length
        info = vifs.VifInfo("plain_text_unit", text)
    elif code == 0x7E:
        info = vifs.VifInfo("any", kind="raw")
    elif code == 0x7F:
        info = vifs.VifInfo("manufacturer_specific", kind="raw")
        manufacturer_vife = True
    else:
        info = vifs.primary(code)
    vife_list: list[vifs.Vife] = []
    n = 0
    while ext:
        if pos >= end:
            raise MbusDecodeError(f"record at byte {start}: truncated in its VIFEs")
        if n == MAX_VIFE:
            raise MbusDecodeError(f"record at byte {start}: more than {MAX_VIFE} VIFEs")
        vife = body[pos]
        pos += 1
        ext = vife & 0x80
        n += 1
        if manufacturer_vife:
            modifiers.append(f"manufacturer VIFE 0x{vife:02X}")
            continue
        item = vifs.combinable(vife & 0x7F)
        vife_list.append(item)
        modifiers.append(item.description)
        if (vife & 0x7F) == 0x7F:
            manufacturer_vife = True
    return info, modifiers, body[vif_start:pos], pos, vife_list


def _record(  # noqa: PLR0917 - the parts of one record, parsed by the caller
    dif: int,
    dif_bytes: bytes,
    vif_bytes: bytes,
    raw: bytes,
    lvar: int,
    info: vifs.VifInfo,
    modifiers: list[str],
    vife_list: list[vifs.Vife],
    where: tuple[int, int, int],
) -> Record:
    storage, tariff, subunit = where
    data_code = dif & 0x0F
    function = FUNCTIONS[(dif >> 4) & 0x03]
    unit = info.unit + "".join(v.unit_suffix for v in vife_list)
    errors = [v.description for v in vife_list if v.description.startswith("record error")]
    error: str | None = next((e for e in errors if not e.endswith("no error")), None)
    if any(not v.known for v in vife_list):
        unit = ""
        quantity = "unknown"
    else:
        quantity = info.quantity
    value: Value = None
    if data_code in (0x0, 0x8):
        value = None
    elif info.kind in ("date", "datetime") and data_code in (0x2, 0x3, 0x4, 0x6):
        value, date_error, summer = _date(raw)
        error = error or date_error
        if summer:
            modifiers = [*modifiers, "summer time"]
        unit = ""
    elif info.kind == "raw":
        value = raw.hex().upper()
    elif data_code == 0x0D:
        value, lvar_error = _lvar_value(raw, lvar)
        error = error or lvar_error
        if isinstance(value, int | float):
            value = _scale(value, info, vife_list)
    else:
        number, number_error = _number(raw, data_code)
        error = error or number_error
        value = None if number is None else _scale(number, info, vife_list)
    return Record(
        dif_bytes,
        vif_bytes,
        raw,
        value,
        unit,
        quantity,
        function,
        storage,
        tariff,
        subunit,
        tuple(modifiers),
        error,
    )


def _number(raw: bytes, data_code: int) -> tuple[int | float | None, str | None]:
    if data_code == 0x5:
        (real,) = struct.unpack("<f", raw)
        if not math.isfinite(real):
            return None, "real value is not finite"
        return real, None
    if data_code in BCD_CODES:
        return _bcd(raw)
    return int.from_bytes(raw, "little", signed=True), None


def _bcd(raw: bytes) -> tuple[int | None, str | None]:
    digits = bcd_digits(raw)
    negative = digits.startswith("F")
    if negative:
        digits = digits[1:]
    if not digits.isdigit():
        return None, f"invalid BCD digits {bcd_digits(raw)}"
    value = int(digits) if digits else 0
    return (-value if negative else value), None


def _lvar_value(raw: bytes, lvar: int) -> tuple[Value, str | None]:
    if lvar <= 0xBF:
        return raw[::-1].decode("latin-1"), None
    if 0xC0 <= lvar <= 0xC9:
        return _bcd(raw)
    if 0xD0 <= lvar <= 0xD9:
        value, error = _bcd(raw)
        return (None if value is None else -value), error
    return int.from_bytes(raw, "little", signed=False), None


def _scale(number: int | float, info: vifs.VifInfo, vife_list: list[vifs.Vife]) -> int | float:
    factor = info.scale
    offset = 0.0
    for v in vife_list:
        factor *= v.factor
        offset += v.offset * info.scale
    if factor == 1.0 and offset == 0.0:
        return number
    if isinstance(number, int) and offset == 0.0 and factor >= 1.0 and factor.is_integer():
        return number * int(factor)  # 10 Wh steps stay integers
    inverse = round(1.0 / factor)
    if factor < 1.0 and inverse and abs(inverse * factor - 1.0) < 1e-12:
        value = number / inverse  # exact decimal division, not 12565 * 0.001 = 12.565000000000001
    else:
        value = number * factor
    return value + offset


def _date(raw: bytes) -> tuple[str | None, str | None, bool]:  # noqa: PLR0911 - one per date type/fault
    """Types G (date), J (time), F (date-time, minutes) and I (date-time, seconds)."""
    b = raw
    if len(b) == 2:
        day, month = b[0] & 0x1F, b[1] & 0x0F
        year = ((b[0] & 0xE0) >> 5) | ((b[1] & 0xF0) >> 1)
        if not (1 <= day <= 31 and 1 <= month <= 12):
            return None, "invalid date", False
        return f"{2000 + year:04d}-{month:02d}-{day:02d}", None, False
    if len(b) == 3:
        second, minute, hour = b[0] & 0x3F, b[1] & 0x3F, b[2] & 0x1F
        if second > 59 or minute > 59 or hour > 23:
            return None, "invalid time", False
        return f"{hour:02d}:{minute:02d}:{second:02d}", None, False
    sec: int | None = None
    if len(b) == 4:
        minute, hour = b[0] & 0x3F, b[1] & 0x1F
        invalid, summer = bool(b[0] & 0x80), bool(b[1] & 0x80)
        day, month = b[2] & 0x1F, b[3] & 0x0F
        year = ((b[2] & 0xE0) >> 5) | ((b[3] & 0xF0) >> 1)
    else:
        sec = b[0] & 0x3F
        minute, hour = b[1] & 0x3F, b[2] & 0x1F
        invalid, summer = bool(b[1] & 0x80), bool(b[2] & 0x80)
        day, month = b[3] & 0x1F, b[4] & 0x0F
        year = ((b[3] & 0xE0) >> 5) | ((b[4] & 0xF0) >> 1)
    if invalid:
        return None, "date/time flagged invalid by the meter", summer
    if not (1 <= day <= 31 and 1 <= month <= 12 and hour <= 23 and minute <= 59 and (sec or 0) <= 59):
        return None, "invalid date/time", summer
    text = f"{2000 + year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}"
    if sec is not None:
        text += f":{sec:02d}"
    return text, None, summer
