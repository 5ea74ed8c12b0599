"""How many of a meter's telegrams arrive: a meter numbers its transmissions (the access number,
one byte, incremented per telegram: EN 13757-4 and -7), so the gap between two numbers heard says
how many were sent in between and lost (collisions, range, a receiver's line errors).

The access number is read where it is sent in the clear, before any decryption, so meters without
a key are measured too: the extended link layer's ACC (CI 8C-8F), else the transport layer's (CI 7A
short header, 72 long header), past an authentication and fragmentation layer (CI 90).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from water_edge.drivers.wmbus.frame import LinkFrame
from water_edge.drivers.wmbus.layers import AFL_CI, ELL_CI

TPL_SHORT: Final = 0x7A  # CI ACC STS CW(2)
TPL_LONG: Final = 0x72  # CI ID(4) M(2) V T ACC STS CW(2)
# A gap this large (or a number heard again) says nothing countable: a meter silent for more than
# half the number's range, or one that does not count every telegram.
MAX_GAP: Final = 128
POOR_SHARE: Final = 0.8  # below this share of telegrams received, reception is called poor
MIN_EXPECTED: Final = 10  # ... once this many telegrams were due (received + lost)


def access_number(link: LinkFrame) -> int | None:
    payload = link.payload
    while payload:
        ci = payload[0]
        if ci in ELL_CI:
            return payload[2] if len(payload) > 2 else None
        if ci == AFL_CI:
            if len(payload) < 2:
                return None
            payload = payload[2 + payload[1] :]
            continue
        if ci == TPL_SHORT:
            return payload[1] if len(payload) > 1 else None
        if ci == TPL_LONG:
            return payload[9] if len(payload) > 9 else None
        return None
    return None


@dataclass
class Reception:
    """Telegrams of one meter received, and lost as counted from access-number gaps."""

    received: int = 0
    lost: int = 0
    last_access: int | None = None

    def note(self, access: int | None) -> int | None:
        """Count a telegram; the number lost since the one before, when that can be told."""
        if access is not None and access == self.last_access:
            return None  # the same telegram again (a repeater's copy heard by the same receiver)
        self.received += 1
        if access is None:
            return None
        counted = None
        if self.last_access is not None:
            gap = (access - self.last_access - 1) % 256
            if gap < MAX_GAP:
                self.lost += gap
                counted = gap
        self.last_access = access
        return counted

    @property
    def share(self) -> float | None:
        """Received / due, once there is something to divide."""
        due = self.received + self.lost
        return None if due == 0 else self.received / due

    def is_poor(self) -> bool:
        share = self.share
        return share is not None and self.received + self.lost >= MIN_EXPECTED and share < POOR_SHARE
