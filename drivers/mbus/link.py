"""EN 13757-2 master over a serial line (pyserial, blocking: call it from a worker thread).

One `MbusMaster` owns one port. Timing follows the standard: a slave answers within 330 bit times
+ 50 ms of the end of a request; once an answer starts, its bytes follow at the baud rate (11 bits
a byte, 8E1). The master repeats a request that got no valid answer up to `retries` times with the
same FCB, so a meter resends the telegram we missed instead of moving on to the next.

What the line adds is not taken for an answer. Bytes that cannot start a frame in front of one (the
spurious byte a level converter makes as a slave starts to send) are skipped and counted. An answer
of the wrong kind (an E5 where a telegram was asked for, or a telegram where an E5 was), or an
RSP_UD from another primary address than the one asked, is a stray, typically the late answer of
a meter asked before: it is counted, the line waited quiet and the request repeated, never decoded
as the asked meter's.
"""

from __future__ import annotations

import os
import select
import termios
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal

import serial
import structlog

from water_edge.core.errors import DeviceError, DriverIOError
from water_edge.drivers.mbus import frame as fr
from water_edge.drivers.mbus.security import ConfigField, SecurityContext
from water_edge.drivers.mbus.telegram import Header, Telegram, decode_frame, frame_header, manufacturer_value
from water_edge.drivers.serial_bus import in_use_text

log = structlog.get_logger(__name__)

BITS_PER_BYTE: Final = 11
# Noise bytes skipped before an answer's start byte; more is garbage, not a glitch.
MAX_NOISE_BYTES: Final = 32
# A pseudo-terminal keeps no parity; glibc's tcsetattr calls 8E1 on one invalid when nothing else
# changes, i.e. while the pty is still set as its last user left it. edge-sim puts its ptys back
# as each user closes them (firmware-sim/fwsim/pty_link.py), so a new open a moment later is taken.
_PTY_HINT: Final = (
    "; a pseudo-terminal keeps no parity and refuses 8E1 while still set up by its last user "
    "(edge-sim resets its own as that user closes it: try again)"
)
ID_DIGITS: Final = 8

Probe = Literal["none", "single", "collision"]


class MbusTimeoutError(DriverIOError):
    """No answer from a meter within the standard's response time, after all retries."""


class MbusWrongMeterError(DeviceError):
    """A meter read by secondary address answered with another meter's identification (a meter
    that ignores selection, a wildcard that selected a neighbour): its data is not the selected meter's."""


def answer_timeout_s(baudrate: int) -> float:
    """The longest a slave may take to start answering: 330 bit times + 50 ms."""
    return 330.0 / baudrate + 0.050


def wire_time_s(nbytes: int, baudrate: int) -> float:
    return nbytes * BITS_PER_BYTE / baudrate


@dataclass
class LinkStats:
    requests: int = 0
    retries: int = 0
    timeouts: int = 0
    checksum_errors: int = 0
    frame_errors: int = 0
    collisions: int = 0
    wrong_meter: int = 0  # secondary reads answered by a telegram of another meter
    stray_answers: int = 0  # answers of the wrong kind or from another address, dropped and asked again
    noise_bytes: int = 0  # bytes before an answer's start byte, skipped


def secondary_mask(text: str) -> bytes:
    """ "12345678" or "12345678" + manufacturer/version/medium hex ("12345678FFFFFF07"), F = any.

    The first 8 characters are the ID as printed (most significant digit first); the optional
    8 hex characters that follow are the manufacturer field (2 bytes, little endian as sent),
    version and medium, as libmbus prints secondary addresses.
    """
    text = text.strip().upper()
    if len(text) not in (8, 16) or any(ch not in "0123456789ABCDEF" for ch in text):
        raise ValueError(f"secondary address {text!r}: 8 ID digits, optionally + 8 hex digits")
    ident = bytes.fromhex(text[:8])[::-1]
    rest = bytes.fromhex(text[8:]) if len(text) == 16 else b"\xff\xff\xff\xff"
    return ident + rest


def _manufacturer_field(code: str) -> int | None:
    try:
        return manufacturer_value(code)
    except ValueError:
        return None


def identity_mismatch(mask: bytes, header: Header | None) -> str | None:
    """Why a telegram is not from the meter `mask` selected, or None when it is as far as the mask
    says (F digits and FF bytes match anything).

    A telegram without an identification (no long header) cannot show it is the selected meter's
    and is refused; manufacturer, version and medium are compared where the telegram carries them.
    """
    want = secondary_text_of_mask(mask)
    if header is None or header.id is None:
        return f"the answer carries no identification to check against {want} (no long header)"
    got_id = header.id.upper()
    digits = zip(want[:ID_DIGITS], got_id, strict=False)
    id_ok = len(got_id) == ID_DIGITS and all(w in ("F", g) for w, g in digits)
    checks: list[tuple[bool, str]] = [(id_ok, f"ID {header.id}")]
    if mask[4:6] != b"\xff\xff" and header.manufacturer is not None:
        man = _manufacturer_field(header.manufacturer)
        checks.append((man == int.from_bytes(mask[4:6], "little"), f"manufacturer {header.manufacturer}"))
    if mask[6] != 0xFF and header.version is not None:
        checks.append((header.version == mask[6], f"version {header.version:02X}"))
    if mask[7] != 0xFF and header.medium is not None:
        checks.append((header.medium == mask[7], f"medium {header.medium:02X}"))
    wrong = [what for ok, what in checks if not ok]
    if not wrong:
        return None
    return f"another meter answered: {', '.join(wrong)}, selected {want}"


def secondary_text_of_mask(mask: bytes) -> str:
    """The 16 hex characters of a selection mask as `secondary_mask` reads them."""
    return mask[3::-1].hex().upper() + mask[4:].hex().upper()


def secondary_text(t: Telegram) -> str:
    """The 16-character secondary address of a telegram's meter (ID + man LE + version + medium)."""
    return secondary_text_of(t.header)


def secondary_text_of(h: Header | None) -> str:
    """The 16-character secondary address a telegram header names ("" without a long header)."""
    if h is None or h.id is None or h.manufacturer is None:
        return ""
    man = manufacturer_value(h.manufacturer) if h.manufacturer.isalpha() else 0
    return f"{h.id}{man & 0xFF:02X}{man >> 8:02X}{h.version or 0:02X}{h.medium or 0:02X}"


class MbusMaster:
    """Blocking M-Bus master on one serial port."""

    def __init__(
        self,
        port: str,
        baudrate: int = 2400,
        *,
        timeout_s: float | None = None,
        retries: int = 2,
        local_echo: bool = False,
        serial_factory: Callable[..., Any] | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self._timeout_given = timeout_s is not None
        self.timeout_s = timeout_s if timeout_s is not None else answer_timeout_s(baudrate)
        self.retries = retries
        self.local_echo = local_echo
        self.stats = LinkStats()
        self._factory = serial_factory or serial.Serial
        self._serial: Any = None

    # --- port ---------------------------------------------------------------------------------
    def open(self) -> None:
        try:
            self._serial = self._factory(
                self.port,
                self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_EVEN,
                stopbits=serial.STOPBITS_ONE,
                timeout=0,
                write_timeout=5.0,
                exclusive=True,  # as pymodbus opens an RTU port: a second program is refused
            )
        except (serial.SerialException, OSError, ValueError) as exc:
            raise DriverIOError(f"M-Bus port {self.port}: cannot open: {in_use_text(exc)}") from exc
        except termios.error as exc:
            # pyserial lets tcsetattr's own error through: an adapter (or a pty) refusing 8E1.
            hint = _PTY_HINT if os.path.realpath(self.port).startswith("/dev/pts/") else ""
            raise DriverIOError(
                f"M-Bus port {self.port}: cannot open: the port refuses {self.baudrate} Bd 8E1 "
                f"({exc.args[-1]}){hint}"
            ) from exc

    def use_baudrate(self, baudrate: int) -> None:
        """Talk at `baudrate` from now on (a meter of its own speed on a mixed segment); the answer
        timeout follows it unless one was given."""
        if baudrate == self.baudrate:
            return
        if self._serial is not None:
            try:
                self._serial.baudrate = baudrate
            except (serial.SerialException, OSError, ValueError, termios.error) as exc:
                raise DriverIOError(f"M-Bus port {self.port}: cannot switch to {baudrate} Bd: {exc}") from exc
        self.baudrate = baudrate
        if not self._timeout_given:
            self.timeout_s = answer_timeout_s(baudrate)

    def close(self) -> None:
        if self._serial is not None:
            try:
                self._serial.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("mbus.close_failed", port=self.port, error=str(exc))
            self._serial = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    # --- one exchange -------------------------------------------------------------------------
    def exchange(self, request: bytes, *, expect_answer: bool = True) -> bytes | None:
        """Send one frame and return the raw answer frame (None: nothing came within the timeout).

        Raises MbusFrameError for an answer that is not a valid frame (checksum, truncation,
        garbage) and DriverIOError when the port itself fails.
        """
        port = self._serial
        if port is None:
            raise DriverIOError(f"M-Bus port {self.port}: not open")
        self.stats.requests += 1
        try:
            port.reset_input_buffer()
            port.write(request)
            port.flush()
            if self.local_echo:
                self._skip_echo(port, request)
            if not expect_answer:
                return None
            # A pty passes the request at once while a real line (and the sim) takes its wire time.
            first_deadline = time.monotonic() + wire_time_s(len(request), self.baudrate) + self.timeout_s
            return self._read_frame(port, first_deadline)
        except (serial.SerialException, termios.error) as exc:
            # termios.error: tcflush on an adapter that was unplugged (EIO).
            raise DriverIOError(f"M-Bus port {self.port}: {exc}") from exc

    def _skip_echo(self, port: Any, request: bytes) -> None:
        """Read back the request the adapter echoes; anything else is a broken exchange."""
        deadline = time.monotonic() + wire_time_s(len(request), self.baudrate) * 1.5 + 0.05
        echo = self._read(port, len(request), deadline)
        if echo != request:
            self._drain(port)
            got = "nothing" if not echo else echo.hex(" ").upper()
            raise fr.MbusFrameError(
                f"local echo: expected the request back, got {got} (does this adapter echo?)"
            )

    def _read_frame(self, port: Any, first_deadline: float) -> bytes | None:
        head = self._read(port, 1, first_deadline)
        if not head:
            return None
        # Once the answer started, the rest follows at the baud rate; allow half again plus 50 ms.
        per_byte = BITS_PER_BYTE / self.baudrate
        skipped = 0
        while head[0] not in fr.START_BYTES and skipped < MAX_NOISE_BYTES:
            # Noise in front of the answer: its start byte follows within the first deadline or
            # right after the noise.
            skipped += 1
            head = self._read(port, 1, max(first_deadline, time.monotonic() + per_byte * 1.5 + 0.05))
            if not head:
                self.stats.noise_bytes += skipped
                raise fr.MbusFrameError(f"{skipped} byte(s) of noise and no frame after them")
        self.stats.noise_bytes += skipped
        buf = bytearray(head)
        if buf[0] == fr.LONG_START:
            buf += self._read(port, 3, time.monotonic() + 3 * per_byte * 1.5 + 0.05)
        try:
            needed = fr.frame_length(bytes(buf[:4]))
        except fr.MbusFrameError:
            self._drain(port)
            raise
        if needed is None:
            raise fr.MbusFrameError(f"truncated frame: {len(buf)} byte(s), the header is incomplete")
        rest = needed - len(buf)
        if rest > 0:
            buf += self._read(port, rest, time.monotonic() + rest * per_byte * 1.5 + 0.05)
        return bytes(buf)

    @staticmethod
    def _read(port: Any, n: int, deadline: float) -> bytes:
        # The port is non-blocking (timeout=0) and we wait with select: changing pyserial's
        # timeout re-runs tcsetattr, which a pty with parity set refuses (EINVAL).
        out = bytearray()
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            ready, _, _ = select.select([port.fileno()], [], [], remaining)
            if not ready:
                break
            chunk = port.read(n - len(out))
            if not chunk:
                continue
            out += chunk
        return bytes(out)

    def _drain(self, port: Any) -> None:
        """After garbage, wait out the rest of it so the next request starts on a quiet line."""
        deadline = time.monotonic() + 0.05 + 32 * BITS_PER_BYTE / self.baudrate
        while self._read(port, 256, deadline):
            pass

    def _retrying(self, request: bytes, what: str, address: int | None = None) -> bytes:
        """Exchange with retries; a valid frame or MbusTimeoutError / the last frame error.

        `address`: a long frame from this primary address is expected (0xFD/0xFE: from any),
        else the E5 acknowledgement; any other valid frame is a stray, dropped and asked again."""
        last_error: fr.MbusFrameError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            try:
                answer = self.exchange(request)
            except fr.MbusFrameError as exc:
                self._count(exc)
                last_error = exc
                continue
            if answer is None:
                self.stats.timeouts += 1
                continue
            try:
                frame = fr.parse_frame(answer)
            except fr.MbusFrameError as exc:
                self._count(exc)
                last_error = exc
                continue
            if (stray := _stray(frame, address)) is not None:
                self.stats.stray_answers += 1
                log.info("mbus.stray_answer", port=self.port, request=what, answer=stray)
                last_error = fr.MbusFrameError(f"{what}: {stray}")
                self._drain(self._serial)
                continue
            return answer
        if last_error is not None:
            raise last_error
        raise MbusTimeoutError(f"{what}: no answer after {self.retries + 1} attempt(s)")

    def _count(self, exc: fr.MbusFrameError) -> None:
        if "checksum" in str(exc):
            self.stats.checksum_errors += 1
        else:
            self.stats.frame_errors += 1

    # --- operations ---------------------------------------------------------------------------
    def snd_nke(self, address: int) -> None:
        """Reset the meter's link (its FCB and telegram sequence); it answers E5."""
        self._retrying(fr.snd_nke(address), f"SND_NKE to {address}")

    def select(self, mask: bytes) -> None:
        """Select one meter by secondary address; raises MbusTimeoutError if none answers."""
        self._retrying(fr.select_secondary(mask), f"select {mask.hex().upper()}")

    def read_telegrams(
        self,
        address: int,
        *,
        max_telegrams: int = 8,
        reset: bool = True,
        identity: bytes | None = None,
        key: bytes | None = None,
    ) -> list[Telegram]:
        """REQ_UD2 until a telegram no longer says "more records follow" (DIF 1F), toggling FCB.

        `reset`: send SND_NKE first so the sequence starts at the first telegram (not for a meter
        selected by secondary address: SND_NKE to 0xFD would deselect it; selection resets it).
        `identity`: the selection mask every telegram's header must match, else
        `MbusWrongMeterError` (counted) and no further requests. `key`: the meter's, for telegrams
        it encrypts (OMS modes 5 and 7); without it such a telegram raises `MbusEncryptedError`.
        """
        security = None if key is None else SecurityContext(key=key)
        if reset:
            self.snd_nke(address)
        telegrams: list[Telegram] = []
        fcb = True  # the first REQ_UD2 after SND_NKE / selection carries FCB = 1
        for _ in range(max_telegrams):
            answer = self._retrying(fr.req_ud2(address, fcb), f"REQ_UD2 to {address}", address)
            telegram = decode_frame(answer, security)
            if identity is not None and (why := identity_mismatch(identity, telegram.header)) is not None:
                self.stats.wrong_meter += 1
                raise MbusWrongMeterError(why)
            telegrams.append(telegram)
            if not telegram.more_follows:
                break
            fcb = not fcb
        return telegrams

    def read_secondary(
        self, secondary: str, *, max_telegrams: int = 8, key: bytes | None = None
    ) -> list[Telegram]:
        """Select the meter and read it; every telegram must carry the selected identification
        (a meter that ignores selection answers in its place otherwise)."""
        mask = secondary_mask(secondary)
        self.select(mask)
        return self.read_telegrams(
            fr.NETWORK_LAYER, max_telegrams=max_telegrams, reset=False, identity=mask, key=key
        )

    # --- scans --------------------------------------------------------------------------------
    def scan_primary(self, addresses: range = range(fr.MAX_PRIMARY + 1)) -> list[int]:
        """Addresses that acknowledge SND_NKE (one attempt each; a garbled E5 still means someone)."""
        found = []
        for address in addresses:
            try:
                answer = self.exchange(fr.snd_nke(address))
            except fr.MbusFrameError:
                self.stats.collisions += 1
                found.append(address)
                continue
            if answer is not None:
                found.append(address)
        return found

    def probe(self, mask: bytes) -> tuple[Probe, str]:
        """Select by mask and read: exactly one meter, none, or several (collision)."""
        try:
            answer = self.exchange(fr.select_secondary(mask))
        except fr.MbusFrameError:
            self.stats.collisions += 1
            return "collision", ""
        if answer is None:
            return "none", ""
        if answer != bytes((fr.ACK,)):
            self.stats.collisions += 1
            return "collision", ""
        try:
            raw = self.exchange(fr.req_ud2(fr.NETWORK_LAYER, True))
            if raw is None:
                return "collision", ""
            # The header says whose it is; the data may be encrypted (a meter found needs no key).
            header = frame_header(raw)
        except fr.MbusDecodeError:
            self.stats.collisions += 1
            return "collision", ""
        return "single", secondary_text_of(header)

    def identify(self, secondary: str) -> MeterFound:
        """Select the meter by its full secondary address and read its first telegram
        (`MbusTimeoutError` if it does not answer). Needs no key: the header that names it is never
        encrypted."""
        self.select(secondary_mask(secondary))
        return _found(
            self._retrying(fr.req_ud2(fr.NETWORK_LAYER, True), f"REQ_UD2 to {secondary}", fr.NETWORK_LAYER)
        )

    def identify_primary(self, address: int) -> MeterFound:
        """The same for a meter at a primary address (an old meter without secondary addressing)."""
        self.snd_nke(address)
        return _found(self._retrying(fr.req_ud2(address, True), f"REQ_UD2 to {address}", address))

    def scan_secondary(self) -> list[str]:
        """Wildcard search tree over the 8 ID digits (most significant first), descending on collision."""
        found: list[str] = []
        self._scan(["F"] * ID_DIGITS, 0, found)
        return found

    def _scan(self, digits: list[str], pos: int, found: list[str]) -> None:
        result, address = self.probe(secondary_mask("".join(digits)))
        if result == "single":
            if address not in found:
                found.append(address)
            return
        if result == "none":
            return
        if pos == ID_DIGITS:
            log.warning("mbus.scan_unresolved", mask="".join(digits))
            return
        for child in _children(digits, pos):
            self._scan(child, pos + 1, found)


@dataclass(frozen=True, slots=True)
class MeterFound:
    """A meter a scan found, from its first telegram: who it is, and its volume where it says."""

    secondary: str  # 16 hex characters, as `secondary_mask` takes them ("": no long header)
    primary: int  # the primary address it answers from (0: none set, as meters leave the factory)
    header: Header | None
    security_mode: int  # 0: plain; 5, 7...: its data is encrypted (the volume needs its key)
    volume_m3: float | None


def _found(raw: bytes) -> MeterFound:
    header = frame_header(raw)
    config = ConfigField(header.signature if header is not None else 0)
    mode = config.mode if config.defined else 0
    volume = None if mode else _volume_m3(raw)
    return MeterFound(secondary_text_of(header), fr.parse_frame(raw).address, header, mode, volume)


def _volume_m3(raw: bytes) -> float | None:
    """The meter's current total volume in m3, if its (plain) telegram carries one."""
    try:
        telegram = decode_frame(raw)
    except fr.MbusDecodeError:
        return None
    for record in telegram.records:
        if (record.quantity, record.function, record.storage, record.unit) == (
            "volume",
            "instantaneous",
            0,
            "m3",
        ) and isinstance(record.value, int | float):
            return float(record.value)
    return None


def _stray(frame: fr.Frame, address: int | None) -> str | None:
    """Why a valid frame is not the answer expected (see `MbusMaster._retrying`), or None."""
    if address is None:
        return None if frame.kind == "ack" else f"answer is not the E5 acknowledgement (a {frame.kind} frame)"
    if not frame.telegram:
        return f"answer is not a telegram (a{'n' if frame.kind == 'ack' else ''} {frame.kind} frame)"
    if address not in (fr.NETWORK_LAYER, fr.BROADCAST_REPLY) and frame.address != address:
        return f"answer is a telegram from address {frame.address} (a late answer from another meter?)"
    return None


def _children(digits: list[str], pos: int) -> Iterator[list[str]]:
    for d in "0123456789":
        child = list(digits)
        child[pos] = d
        yield child
