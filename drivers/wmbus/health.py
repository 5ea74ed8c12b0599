"""`WmbusDriver.health()`: the receivers, what they heard, and every reason a telegram gave no
reading."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

SetupState = Literal["none", "sent", "confirmed", "refused", "unanswered"]


@dataclass(frozen=True, slots=True)
class ReceiverHealth:
    name: str  # as configured (r1, r2, ... by default; the kind for a single top-level receiver)
    endpoint: str  # kind and where: "im871a /dev/ttyUSB0", "rtlwmbus 10.0.0.7:7000"
    open: bool
    # A stick's answer to its link-mode set-up: none (rtl_wmbus), sent, confirmed, refused, or
    # unanswered (not this kind of stick, or not the stick's port).
    setup: SetupState
    frames: int  # telegrams it delivered
    first_copies: int  # telegrams it delivered before any other receiver (the ones decoded)
    crc_errors: int  # frames it marked or that failed its checksum
    garbage_bytes: int
    reopens: int  # times it was opened again after a failure
    last_error: str | None  # why it last failed to open or was lost
    last_error_ns: int | None
    last_frame_ns: int | None

    def status_line(self) -> str:
        state = "open" if self.open else "closed"
        line = (
            f"{self.name}: {self.endpoint} {state}  frames {self.frames}  first {self.first_copies}  "
            f"crc errors {self.crc_errors}  reopens {self.reopens}"
        )
        if not self.open and self.last_error:
            line += f"  ({self.last_error})"
        return line

    def reopened_line(self) -> str | None:
        """A receiver on its own: that it was lost (or failed to open) and opened again, and why."""
        if not self.reopens:
            return None
        times = "1 time" if self.reopens == 1 else f"{self.reopens} times"
        return f"{self.name}: reopened {times}, last error: {self.last_error}"

    def setup_problem(self) -> str | None:
        if self.setup == "unanswered":
            kind, where = self.endpoint.split(" ", 1)
            return f"{self.name}: no answer to its link-mode set-up: is an {kind} on {where}?"
        if self.setup == "refused":
            return f"{self.name}: the stick refused its link-mode set-up"
        return None


@dataclass(frozen=True, slots=True)
class WmbusHealth:
    receiver: str  # the receivers' kinds, joined by " + " when there are several
    open: bool  # any receiver is open
    frames: int  # telegrams the receivers delivered
    decoded: int  # telegrams of configured meters turned into readings
    crc_errors: int  # corrupted frames (receiver CRC/checksum, or the link layer's)
    garbage_bytes: int  # bytes between frames that were no frame
    undecodable: int  # telegrams of configured meters that could not be decoded
    no_key: int  # encrypted telegrams of configured meters without a usable key
    wrong_key: int  # telegrams the configured key does not decrypt
    bad_mac: int  # mode 7 telegrams refused: their AFL MAC does not match or is missing
    unknown_frames: int  # telegrams of meters not configured
    # `listen`: distinct meters not configured that give no `heard.*` readings, past `listen_max_meters`
    listen_not_reported: int
    duplicates: int  # copies of a telegram already heard (repeater, receiver), dropped
    stale: int  # telegrams older than the meter's last one accepted (replayed, or delayed), dropped
    meters_configured: int
    meters_heard: int  # configured meters heard at least once
    meters_silent: list[str]  # configured meters not heard within their silent_after_s
    meters_without_key: list[str]  # configured meters heard encrypted, no key (or unreadable)
    meters_wrong_key: list[str]  # configured meters whose latest telegram their key did not decrypt
    meters_bad_mac: list[str]  # configured meters whose latest telegram was refused for its MAC
    meters_stale: list[str]  # configured meters an old telegram of which was dropped
    unknown_meters: list[str]  # "ID MAN" of meters heard but not configured (most recent 20)
    # "name share %" of configured meters whose telegrams arrive less than 80 % of the time (from
    # access-number gaps, once 10 were due)
    meters_poor_reception: list[str]
    last_frame_ns: int | None
    receivers: list[ReceiverHealth]

    def status_lines(self) -> list[str]:
        garbage = f"  garbage bytes {self.garbage_bytes}" if self.garbage_bytes else ""
        lines = [
            f"{self.receiver} {'open' if self.open else 'closed'}  frames {self.frames}  decoded "
            f"{self.decoded}  crc errors {self.crc_errors}{garbage}  undecodable {self.undecodable}  "
            f"duplicates {self.duplicates}  stale {self.stale}",
            f"meters heard {self.meters_heard}/{self.meters_configured}  silent {len(self.meters_silent)}"
            f"  no key {self.no_key}  wrong key {self.wrong_key}  bad MAC {self.bad_mac}"
            f"  not configured {self.unknown_frames}",
        ]
        if len(self.receivers) > 1:
            lines += [r.status_line() for r in self.receivers]
        elif self.receivers and (reopened := self.receivers[0].reopened_line()) is not None:
            lines.append(reopened)
        lines += [problem for r in self.receivers if r.open and (problem := r.setup_problem()) is not None]
        if self.listen_not_reported:
            lines.append(
                f"listen: {self.listen_not_reported} meters heard not reported (past listen_max_meters)"
            )
        if self.meters_without_key:
            lines.append("without key: " + ", ".join(self.meters_without_key))
        if self.meters_wrong_key:
            lines.append("key does not decrypt: " + ", ".join(self.meters_wrong_key))
        if self.meters_bad_mac:
            lines.append("MAC missing or not matching, telegrams refused: " + ", ".join(self.meters_bad_mac))
        if self.meters_stale:
            lines.append("old telegrams dropped (replayed or delayed): " + ", ".join(self.meters_stale))
        if self.meters_silent:
            lines.append("silent: " + ", ".join(self.meters_silent))
        if self.meters_poor_reception:
            lines.append("poor reception (telegrams received): " + ", ".join(self.meters_poor_reception))
        return lines
