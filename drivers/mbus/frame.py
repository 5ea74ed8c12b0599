"""EN 13757-2 link-layer frames: build and parse the single character, short, control and long
frames, with their length and checksum checks. Pure functions, no I/O.

    ACK            E5
    short frame    10 C A CS 16
    control frame  68 03 03 68 C A CI CS 16
    long frame     68 L L 68 C A CI data... CS 16      (L counts C, A, CI and data)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from water_edge.core.errors import DeviceError

ACK: Final = 0xE5
SHORT_START: Final = 0x10
LONG_START: Final = 0x68
STOP: Final = 0x16
START_BYTES: Final = frozenset((ACK, SHORT_START, LONG_START))

# Control field values (master -> slave); FCB is bit 5 (0x20), FCV bit 4 (0x10).
SND_NKE: Final = 0x40
SND_UD: Final = 0x53
REQ_UD2: Final = 0x5B
REQ_UD1: Final = 0x5A
FCB: Final = 0x20
FCV: Final = 0x10
RSP_UD: Final = 0x08  # slave -> master, ACD/DFC bits (0x20/0x10) may be set

# Addresses.
BROADCAST_NO_REPLY: Final = 0xFF
BROADCAST_REPLY: Final = 0xFE
NETWORK_LAYER: Final = 0xFD  # the slave selected by secondary address
MAX_PRIMARY: Final = 250

# CI fields the master sends.
CI_SELECT: Final = 0x52
CI_SET_ADDRESS: Final = 0x51
CI_APPLICATION_RESET: Final = 0x50

MAX_LONG_DATA: Final = 252  # L <= 255, minus C, A, CI


class MbusDecodeError(DeviceError):
    """Bytes that are not a valid M-Bus frame or telegram; the message says what is wrong."""


class MbusFrameError(MbusDecodeError):
    """The link layer failed: wrong start/stop byte, length mismatch, checksum error, truncation."""


# CI 70h / 71h: an application error / alarm from the meter; it may leave out the status byte.
_STATUS_ONLY_CIS: Final = (0x70, 0x71)


@dataclass(frozen=True, slots=True)
class Frame:
    """A parsed frame. `kind` is "ack", "short", "control" or "long"; `data` follows the CI field."""

    kind: str
    control: int = 0
    address: int = 0
    ci: int | None = None
    data: bytes = b""

    @property
    def fcb(self) -> bool:
        return bool(self.control & FCB)

    @property
    def telegram(self) -> bool:
        """Whether it is a meter's answer with user data: a long frame, or a control frame (L = 3)
        whose CI reports an application error or alarm without the status byte (a meter that says
        "error" and no more; libmbus's test frame error.hex, read as an unspecified error)."""
        return self.kind == "long" or (self.kind == "control" and self.ci in _STATUS_ONLY_CIS)


def checksum(body: bytes) -> int:
    """The arithmetic sum of the bytes mod 256 (C, A[, CI, data])."""
    return sum(body) & 0xFF


def short_frame(control: int, address: int) -> bytes:
    _check_byte("address", address)
    return bytes((SHORT_START, control, address, checksum(bytes((control, address))), STOP))


def long_frame(control: int, address: int, ci: int, data: bytes = b"") -> bytes:
    _check_byte("address", address)
    _check_byte("CI", ci)
    if len(data) > MAX_LONG_DATA:
        raise ValueError(f"long frame data is {len(data)} bytes; at most {MAX_LONG_DATA} fit")
    body = bytes((control, address, ci)) + data
    length = len(body)
    return bytes((LONG_START, length, length, LONG_START)) + body + bytes((checksum(body), STOP))


def snd_nke(address: int) -> bytes:
    return short_frame(SND_NKE, address)


def req_ud2(address: int, fcb: bool) -> bytes:
    return short_frame(REQ_UD2 | (FCB if fcb else 0), address)


def select_secondary(mask: bytes) -> bytes:
    """SND_UD to 0xFD selecting by secondary address (ID, manufacturer, version, medium; F = any)."""
    if len(mask) != 8:
        raise ValueError("a secondary address mask is 8 bytes")
    return long_frame(SND_UD, NETWORK_LAYER, CI_SELECT, mask)


def _check_byte(what: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{what} must be 0..255, got {value}")


def frame_length(head: bytes) -> int | None:
    """How many bytes the frame that starts with `head` has, once enough of it is known.

    None: more bytes are needed to tell. Raises MbusFrameError when the start cannot begin a frame.
    """
    if not head:
        return None
    start = head[0]
    if start == ACK:
        return 1
    if start == SHORT_START:
        return 5
    if start == LONG_START:
        if len(head) < 4:
            return None
        if head[1] != head[2] or head[3] != LONG_START:
            raise MbusFrameError(
                f"long frame header 68 {head[1]:02X} {head[2]:02X} {head[3]:02X}: "
                "the two length bytes differ or the second start byte is not 68"
            )
        if head[1] < 3:
            raise MbusFrameError(f"long frame length {head[1]} is below the minimum of 3")
        return head[1] + 6
    raise MbusFrameError(f"0x{start:02X} does not start an M-Bus frame (E5, 10 or 68 expected)")


def parse_frame(raw: bytes) -> Frame:
    """Validate and split one whole frame. Raises MbusFrameError naming the fault."""
    if not raw:
        raise MbusFrameError("empty frame")
    needed = frame_length(raw[:4])
    if needed is None:
        raise MbusFrameError(f"truncated frame: {len(raw)} byte(s), the header is incomplete")
    if len(raw) < needed:
        raise MbusFrameError(f"truncated frame: {len(raw)} of {needed} bytes")
    if len(raw) > needed:
        raise MbusFrameError(f"{len(raw) - needed} byte(s) after the end of the frame")
    if needed == 1:
        return Frame("ack")
    if raw[-1] != STOP:
        raise MbusFrameError(f"stop byte is 0x{raw[-1]:02X}, 16 expected")
    body = raw[1:3] if raw[0] == SHORT_START else raw[4:-2]
    if checksum(body) != raw[-2]:
        raise MbusFrameError(
            f"checksum error: frame says 0x{raw[-2]:02X}, bytes sum to 0x{checksum(body):02X}"
        )
    if raw[0] == SHORT_START:
        return Frame("short", raw[1], raw[2])
    kind = "control" if raw[1] == 3 else "long"
    return Frame(kind, body[0], body[1], body[2], bytes(body[3:]))


def split_capture(raw: bytes) -> tuple[list[bytes], int]:
    """A capture of several frames (a sniffer's log of an exchange: requests, E5, answers) cut
    into its frames, in order, and the number of bytes that start none (noise between or after
    them). A frame cut short by the end of the capture is the last piece, for `parse_frame` to
    name; a byte that cannot start a frame, or a 68 whose header does not hold, is noise."""
    frames: list[bytes] = []
    noise = at = 0
    while at < len(raw):
        try:
            needed = frame_length(raw[at : at + 4]) if raw[at] in START_BYTES else 0
        except MbusFrameError:
            needed = 0
        if needed == 0:
            noise += 1
            at += 1
            continue
        if needed is None or at + needed > len(raw):
            frames.append(raw[at:])
            break
        frames.append(raw[at : at + needed])
        at += needed
    return frames, noise


def parse_hex(text: str) -> bytes:
    """Hex as meter tools print it: bytes with or without spaces, newlines, colons or 0x prefixes."""
    cleaned = text.replace("0x", "").replace("0X", "")
    digits = "".join(ch for ch in cleaned if not ch.isspace() and ch not in ":,-")
    if not digits:
        raise MbusDecodeError("no hex digits in the input")
    bad = next((ch for ch in digits if ch not in "0123456789abcdefABCDEF"), None)
    if bad is not None:  # before the count: 'é' or a stray byte is no half a byte
        raise MbusDecodeError(f"not a hex digit: {bad!r}")
    if len(digits) % 2:
        raise MbusDecodeError(f"odd number of hex digits ({len(digits)}): a byte is cut in half")
    return bytes.fromhex(digits)
