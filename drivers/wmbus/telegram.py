"""A wireless M-Bus telegram from its L field to its records: link layer, optional extended link
layer (AES-CTR) and AFL, then the transport and application layers shared with wired M-Bus
(`drivers.mbus.telegram`: OMS security modes 5 and 7, records), or a compact frame.

`decode_wireless` is what `edge-agent decode wmbus` prints and what the wmbus driver reads; its
JSON has the shape of `decode mbus` plus `link`, `ell`, `afl`, and `total_volume_m3` when the
telegram carries the meter's total volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from water_edge.drivers.mbus import telegram as tpl
from water_edge.drivers.mbus.frame import MbusDecodeError
from water_edge.drivers.mbus.records import Record, parse_records
from water_edge.drivers.mbus.security import AflMac, SecurityContext
from water_edge.drivers.mbus.vif import medium_name
from water_edge.drivers.wmbus import compact, layers
from water_edge.drivers.wmbus.frame import LinkFrame, link_frame

CI_COMPACT: Final = 0x79
CI_FULL_NO_HEADER: Final = 0x78
TPL_CI: Final = frozenset({0x72, 0x7A, 0x78, 0x73, 0x76, 0x77, 0x70, 0x71})
MAX_LAYERS: Final = 4
APPLICATION_KEYS: Final = (
    "header", "records", "more_follows", "manufacturer_data", "security", "application_error",
)  # fmt: skip

_SHARED_FORMATS = compact.FormatStore()


@dataclass(frozen=True, slots=True)
class WirelessTelegram:
    link: LinkFrame
    ci: int
    application: tpl.Telegram | None
    ell: layers.Ell | None = None
    afl: layers.Afl | None = None
    notes: tuple[str, ...] = ()
    manufacturer_payload: bytes = b""
    compact: bool = False

    @property
    def records(self) -> list[Record]:
        return [] if self.application is None else self.application.records

    @property
    def status(self) -> int | None:
        """The transport header's status byte, where the telegram has one."""
        app = self.application
        return None if app is None or app.header is None else app.header.status

    @property
    def encrypted(self) -> bool:
        ell_enc = self.ell is not None and self.ell.encrypted
        return ell_enc or (self.application is not None and self.application.security_mode != 0)

    def total_volume(self) -> Record | None:
        """The meter's total volume: the instantaneous, current, untariffed volume record (forward
        flow when the meter splits directions)."""
        candidates = [
            r
            for r in self.records
            if r.quantity == "volume"
            and r.function == "instantaneous"
            and (r.storage, r.tariff, r.subunit) == (0, 0, 0)
            and r.direction != "backward"
            and isinstance(r.value, int | float)
            and r.error is None
        ]
        return candidates[0] if candidates else None

    def to_dict(self) -> dict[str, Any]:
        link = self.link
        out: dict[str, Any] = {
            "link": {
                "length": link.length,
                "control": link.control,
                "manufacturer": link.manufacturer,
                "id": link.ident,
                "version": link.version,
                "device_type": link.device_type,
                "medium": medium_name(link.device_type),
                "format": link.frame_format,
            },
            "ci": self.ci,
        }
        if self.ell is not None:
            out["ell"] = self.ell.to_dict()
        if self.afl is not None:
            out["afl"] = self.afl.to_dict()
        app = self.application.to_dict() if self.application is not None else {"header": None, "records": []}
        for key in APPLICATION_KEYS:
            if key in app:
                out[key] = app[key]
        if self.compact:
            out["compact"] = True
        total = self.total_volume()
        if total is not None:
            out["total_volume_m3"] = total.value
        if self.manufacturer_payload:
            out["manufacturer_payload"] = self.manufacturer_payload.hex().upper()
        notes = [*self.notes, *(app.get("notes") or [])]
        if link.trailer_is_a_telegram:
            notes.append(
                f"{link.trailing} byte(s) after the frame ignored: another telegram (L field "
                f"{link.trailer[0]:02X}), not decoded; give each telegram a line of its own"
            )
        elif link.trailing:
            notes.append(f"{link.trailing} byte(s) after the frame ignored (receiver trailer)")
        if notes:
            out["notes"] = notes
        return out


@dataclass
class _State:
    ell: layers.Ell | None = None
    afl: layers.Afl | None = None
    afl_mac: AflMac | None = None
    notes: list[str] = field(default_factory=list)


def decode_wireless(
    raw: bytes, *, key: bytes | None = None, formats: compact.FormatStore | None = None
) -> WirelessTelegram:
    """Decode a received telegram (L field first, with or without CRCs). Raises MbusDecodeError
    (MbusEncryptedError without a key, MbusKeyError for a wrong one, MbusMacError for a mode 7
    telegram whose AFL MAC is missing or does not match) when it cannot."""
    store = formats if formats is not None else _SHARED_FORMATS
    link = link_frame(raw)
    payload = link.payload
    state = _State()
    for _ in range(MAX_LAYERS):
        if not payload:
            raise MbusDecodeError("the telegram ends before its application data")
        ci = payload[0]
        if ci in layers.ELL_CI:
            state.ell, payload = layers.ell(payload, link.address, key)
        elif ci == layers.AFL_CI:
            state.afl, payload = layers.afl(payload)
            if state.afl.more_fragments:
                raise MbusDecodeError("a fragment of a longer message (AFL more-fragments); not reassembled")
            state.afl_mac = state.afl.authentication(payload)
        else:
            break
    else:
        raise MbusDecodeError("too many link layers before the application data")
    ci = payload[0]
    address = state.ell.address if state.ell is not None and state.ell.address else link.address
    counter = state.afl.message_counter if state.afl is not None else None
    context = SecurityContext(key=key, address=address, message_counter=counter, afl_mac=state.afl_mac)
    if ci in TPL_CI:
        app = tpl.decode_user_data(ci, payload[1:], address=0, control=link.control, security=context)
        _learn(app, store)
        return WirelessTelegram(link, ci, app, state.ell, state.afl, tuple(state.notes))
    if ci == CI_COMPACT:
        full = compact.decode_compact(payload[1:], store, state.notes)
        records, mdata, more = parse_records(full)
        app = tpl.Telegram(0, link.control, ci, None, records, mdata, more)
        return WirelessTelegram(link, ci, app, state.ell, state.afl, tuple(state.notes), compact=True)
    if 0xA0 <= ci <= 0xB7:
        state.notes.append(f"CI {ci:02X}: manufacturer-specific application layer, kept raw")
        return WirelessTelegram(link, ci, None, state.ell, state.afl, tuple(state.notes), payload[1:])
    raise MbusDecodeError(f"CI {ci:02X} is not an application layer this decoder knows")


def _learn(app: tpl.Telegram, store: compact.FormatStore) -> None:
    """Remember the DIF/VIF format of a full frame, so the meter's compact frames decode."""
    if app.ci != CI_FULL_NO_HEADER or not app.records or any(r.quantity == "unknown" for r in app.records):
        return
    store.learn(b"".join(r.dif + r.vif for r in app.records))
