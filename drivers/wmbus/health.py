"""`WmbusDriver.health()`: the receiver, what it heard, and every reason a telegram gave no reading."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WmbusHealth:
    receiver: str
    open: bool
    frames: int  # telegrams the receiver delivered
    decoded: int  # telegrams of configured meters turned into readings
    crc_errors: int  # corrupted frames (receiver CRC/checksum, or the link layer's)
    garbage_bytes: int  # bytes between frames that were no frame
    undecodable: int  # telegrams of configured meters that could not be decoded
    no_key: int  # encrypted telegrams of configured meters without a usable key
    wrong_key: int  # telegrams the configured key does not decrypt
    unknown_frames: int  # telegrams of meters not configured
    duplicates: int  # copies of a telegram already heard (repeater, receiver), dropped
    meters_configured: int
    meters_heard: int  # configured meters heard at least once
    meters_silent: list[str]  # configured meters not heard within their silent_after_s
    meters_without_key: list[str]  # configured meters heard encrypted, no key (or unreadable)
    unknown_meters: list[str]  # "ID MAN" of meters heard but not configured (most recent 20)
    last_frame_ns: int | None

    def status_lines(self) -> list[str]:
        lines = [
            f"{self.receiver} {'open' if self.open else 'closed'}  frames {self.frames}  decoded "
            f"{self.decoded}  crc errors {self.crc_errors}  undecodable {self.undecodable}  duplicates "
            f"{self.duplicates}",
            f"meters heard {self.meters_heard}/{self.meters_configured}  silent {len(self.meters_silent)}"
            f"  no key {self.no_key}  wrong key {self.wrong_key}  not configured {self.unknown_frames}",
        ]
        if self.meters_without_key:
            lines.append("without key: " + ", ".join(self.meters_without_key))
        if self.meters_silent:
            lines.append("silent: " + ", ".join(self.meters_silent))
        return lines
