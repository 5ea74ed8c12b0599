"""EN 13757-3 data records: DIB (DIF + DIFEs), VIB (VIF + VIFEs) and the value, one after another.

Every record that can be placed is decoded; one that cannot (an extension VIF without its byte, too
many VIFEs) becomes an `unknown` record with its raw bytes and the reason, and decoding goes on with
the next. Only when a record's length itself cannot be known (a reserved DIF or LVAR, a record cut
off by the end of the data) is the rest of the data kept as one `unknown` record. Each step
consumes at least one byte, so any input ends, in time linear in its length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from water_edge.core.reading import Value
from water_edge.drivers.mbus import values
from water_edge.drivers.mbus import vif as vifs

MAX_DIFE: Final = 10
MAX_VIFE: Final = 10
FUNCTIONS: Final = ("instantaneous", "maximum", "minimum", "error")
IDLE_FILLER: Final = 0x2F


@dataclass(frozen=True, slots=True)
class Record:
    """One data record. `dif`/`vif` are the raw DIF+DIFEs and VIF+VIFEs, `data` the raw value bytes.

    `direction` is "forward"/"backward" for a value accumulated only from positive / negative
    contributions (VIFE 3B/3C: a water meter's forward and backflow volumes)."""

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
    direction: str = ""

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
        if self.direction:
            out["direction"] = self.direction
        if self.modifiers:
            out["modifiers"] = list(self.modifiers)
        if self.error:
            out["error"] = self.error
        return out


def unknown_record(raw: bytes, reason: str) -> Record:
    """Bytes that could not be placed, kept whole with the reason."""
    return Record(b"", b"", raw, raw.hex().upper(), "", "unknown", "instantaneous", 0, 0, 0, (), reason)


class _Unplaceable(Exception):  # noqa: N818 - internal control flow, never leaves this module
    """The record's length cannot be known: keep the rest of the data raw."""


@dataclass
class _Vib:
    info: vifs.VifInfo
    raw: bytes
    modifiers: list[str] = field(default_factory=list)
    vifes: list[vifs.Vife] = field(default_factory=list)
    problem: str | None = None
    manufacturer: bool = False  # the VIFEs that follow are manufacturer-specific


def parse_records(body: bytes, *, msb_first: bool = False) -> tuple[list[Record], bytes, bool]:
    """Records, manufacturer-specific data after DIF 0F/1F, and whether 1F said "more follows"."""
    records: list[Record] = []
    pos = 0
    end = len(body)
    while pos < end:
        dif = body[pos]
        if dif == IDLE_FILLER:
            pos += 1
            continue
        if dif in (0x0F, 0x1F):
            return records, body[pos + 1 :], dif == 0x1F
        try:
            record, pos = _record_at(body, pos, msb_first)
        except _Unplaceable as exc:
            records.append(unknown_record(body[pos:], f"record at byte {pos}: {exc}"))
            return records, b"", False
        records.append(record)
    return records, b"", False


def _record_at(body: bytes, start: int, msb_first: bool) -> tuple[Record, int]:
    end = len(body)
    dif = body[start]
    if dif & 0x0F == 0x0F:
        raise _Unplaceable(f"reserved special DIF 0x{dif:02X}")
    pos = start + 1
    storage = (dif >> 6) & 0x01
    tariff = subunit = 0
    problems: list[str] = []
    ext = dif & 0x80
    n = 0
    while ext:
        if pos >= end:
            raise _Unplaceable("truncated in its DIFEs")
        dife = body[pos]
        pos += 1
        if n < MAX_DIFE:
            storage |= (dife & 0x0F) << (1 + 4 * n)
            tariff |= ((dife >> 4) & 0x03) << (2 * n)
            subunit |= ((dife >> 6) & 0x01) << n
        elif n == MAX_DIFE:
            problems.append(f"more than {MAX_DIFE} DIFEs")
        ext = dife & 0x80
        n += 1
    dif_bytes = body[start:pos]
    vib, pos = _vib(body, pos)
    if vib.problem:
        problems.append(vib.problem)
    data_code = dif & 0x0F
    lvar = -1
    if data_code == 0x0D:
        if pos >= end:
            raise _Unplaceable("truncated before its LVAR byte")
        lvar = body[pos]
        pos += 1
        size = values.lvar_size(lvar)
        if size is None:
            raise _Unplaceable(f"reserved LVAR 0x{lvar:02X}")
    else:
        size = values.DATA_LENGTH[data_code]
    if pos + size > end:
        raise _Unplaceable(f"needs {size} data byte(s), {end - pos} left")
    raw = body[pos : pos + size]
    pos += size
    where = (storage, tariff, subunit)
    if problems:
        reason = "; ".join(problems)
        rec = Record(
            dif_bytes, vib.raw, raw, raw.hex().upper(), "", "unknown",
            FUNCTIONS[(dif >> 4) & 0x03], *where, tuple(vib.modifiers), reason,
        )  # fmt: skip
        return rec, pos
    return _decode(dif, dif_bytes, vib, raw[::-1] if msb_first else raw, raw, lvar, where), pos


def _plain_text(body: bytes, pos: int) -> tuple[str, int] | None:
    """A plain-text unit (length byte + text, sent last character first) at `pos`, if it fits and
    is printable."""
    if pos >= len(body):
        return None
    length = body[pos]
    text = body[pos + 1 : pos + 1 + length]
    if len(text) != length or not all(0x20 <= ch < 0x7F for ch in text):
        return None
    return text[::-1].decode("ascii"), pos + 1 + length


def _vib(body: bytes, pos: int) -> tuple[_Vib, int]:
    """The VIF (with its extension byte or plain-text unit) and its VIFEs, EN 13757-3 7.4."""
    vif_start = pos
    if pos >= len(body):
        raise _Unplaceable("truncated before its VIF")
    vif = body[pos]
    code, ext = vif & 0x7F, vif & 0x80
    text: str | None = None
    pos += 1
    if code == 0x7C:
        # The standard puts the text after the VIFEs; meters (Elvaco among them) put it before
        # them. Take the reading that yields printable text.
        early = _plain_text(body, pos)
        if early is None and not ext:
            raise _Unplaceable("plain-text unit runs past the end or is not text")
        if early is not None:
            text, pos = early
    vib, pos, ext = _vif_table(body, pos, vif)
    pos = _vifes(body, pos, ext, vib)
    if code == 0x7C and text is None:
        late = _plain_text(body, pos)
        if late is None:
            raise _Unplaceable("plain-text unit runs past the end or is not text")
        text, pos = late
    if text is not None:
        vib.info = vifs.VifInfo("plain_text_unit", text)
    vib.raw = body[vif_start:pos]
    return vib, pos


def _vif_table(body: bytes, pos: int, vif: int) -> tuple[_Vib, int, int]:
    """What the VIF means (reading the 0xFB/0xFD extension byte); returns the VIB so far, the
    position after it and whether VIFEs follow."""
    code, ext = vif & 0x7F, vif & 0x80
    vib = _Vib(vifs.UNKNOWN, b"")
    if code in (0x7B, 0x7D):
        if not ext:
            vib.problem = f"VIF 0x{vif:02X} without its extension byte"
            return vib, pos, 0
        if pos >= len(body):
            raise _Unplaceable("truncated in its VIF extension")
        second = body[pos]
        table = vifs.extension_fb if code == 0x7B else vifs.extension_fd
        vib.info = table(second & 0x7F)
        return vib, pos + 1, second & 0x80
    if code == 0x7E:
        vib.info = vifs.VifInfo("any", kind="raw")
    elif code == 0x7F:
        vib.info = vifs.VifInfo("manufacturer_specific", kind="raw")
        vib.manufacturer = True
    elif code != 0x7C:
        vib.info = vifs.primary(code)
    return vib, pos, ext


def _vifes(body: bytes, pos: int, ext: int, vib: _Vib) -> int:
    n = 0
    while ext:
        if pos >= len(body):
            raise _Unplaceable("truncated in its VIFEs")
        vife = body[pos]
        pos += 1
        ext = vife & 0x80
        n += 1
        if n == MAX_VIFE + 1:
            vib.problem = vib.problem or f"more than {MAX_VIFE} VIFEs"
        if vib.manufacturer:
            vib.modifiers.append(f"manufacturer VIFE 0x{vife:02X}")
            continue
        item = vifs.combinable(vife & 0x7F)
        vib.vifes.append(item)
        vib.modifiers.append(item.description)
        if (vife & 0x7F) == 0x7F:
            vib.manufacturer = True  # manufacturer-specific VIFEs follow
    return pos


def _decode(  # noqa: PLR0917 - the parts of one record, parsed by the caller
    dif: int,
    dif_bytes: bytes,
    vib: _Vib,
    raw: bytes,
    sent: bytes,
    lvar: int,
    where: tuple[int, int, int],
) -> Record:
    """Decode the value; `raw` is in LSB-first order (reversed for mode 2), `sent` as transmitted."""
    info, vife_list = vib.info, vib.vifes
    modifiers = list(vib.modifiers)
    data_code = dif & 0x0F
    unit, quantity = info.unit, info.quantity
    if info.quantity != "plain_text_unit":  # the meter's own text is its whole unit
        per_time = [v.unit_suffix for v in vife_list if v.unit_suffix]
        unit += "".join(per_time)
        # A "per hour" VIFE makes a volume a rate: its own quantity, never taken for the register.
        quantity += "".join(f"_per_{suffix[1:]}" for suffix in per_time)
    errors = [v.description for v in vife_list if v.description.startswith("record error")]
    error: str | None = next((e for e in errors if not e.endswith("no error")), None)
    if any(not v.known for v in vife_list):
        unit, quantity = "", "unknown"
    direction = next((v.direction for v in vife_list if v.direction), "")
    value: Value = None
    if data_code in (0x0, 0x8):
        value = None
    elif info.kind in ("date", "datetime") and data_code in (0x2, 0x3, 0x4, 0x6):
        value, date_error, summer = values.date(raw)
        error = error or date_error
        if summer:
            modifiers.append("summer time")
        unit = ""
    elif info.kind == "raw":
        value = sent.hex().upper()
    elif data_code == 0x0D:
        value, lvar_error = values.lvar_value(raw, lvar)
        error = error or lvar_error
        value, wide = values.portable(value, raw)
        if wide:  # a scaled float would lose the digits: keep them all, unscaled
            modifiers.append(values.WIDE_NOTE)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            value = values.scale(value, info, vife_list)
    else:
        num, number_error = values.number(raw, data_code, bits=info.kind == "bits")
        error = error or number_error
        value = None if num is None else values.scale(num, info, vife_list)
    value, wide = values.portable(value, raw)
    if wide:
        modifiers.append(values.WIDE_NOTE)
    storage, tariff, subunit = where
    return Record(
        dif_bytes,
        vib.raw,
        sent,
        value,
        unit,
        quantity,
        FUNCTIONS[(dif >> 4) & 0x03],
        storage,
        tariff,
        subunit,
        tuple(modifiers),
        error,
        direction,
    )
