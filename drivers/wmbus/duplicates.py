"""Telegrams heard more than once — directly and through a repeater, or twice by one receiver (rtl_wmbus
decoding one burst two ways) — are given to the driver once.

Two receptions are one telegram when the meter's address (manufacturer, ID, version, device type)
and everything from the CI field on are the same; the access number is part of that, so the next
telegram of a meter is never a duplicate even when its values did not change. Left out: the C field,
the link layer's CRCs and what a receiver appends (RSSI), and the hop counter bit H of the extended
link layer's CC field, which a repeater sets when it relays (EN 13757-4 CC field; single-hop
repeating EN 13757-5). A copy counts as a duplicate only within `window_s` of the first: an
access number wraps after 256 telegrams, and a meter may send the same bytes again much later.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Final

from water_edge.drivers.wmbus.frame import LinkFrame
from water_edge.drivers.wmbus.layers import ELL_CI, HOP_COUNTER_BIT

__all__ = ["HOP_COUNTER_BIT", "Duplicates", "telegram_key"]

MAX_REMEMBERED: Final = 4096


def telegram_key(link: LinkFrame) -> bytes:
    """What two receptions of one telegram have in common (a 16-byte digest)."""
    payload = link.payload
    if len(payload) >= 2 and payload[0] in ELL_CI:
        payload = bytes((payload[0], payload[1] & ~HOP_COUNTER_BIT & 0xFF)) + payload[2:]
    return hashlib.blake2b(link.address + payload, digest_size=16).digest()


class Duplicates:
    """Remembers the telegrams of the last `window_s` seconds (at most `MAX_REMEMBERED`)."""

    def __init__(self, window_s: float, capacity: int = MAX_REMEMBERED) -> None:
        self.window_s = window_s
        self._capacity = capacity
        self._first_heard: OrderedDict[bytes, float] = OrderedDict()

    def seen(self, link: LinkFrame, now_s: float) -> bool:
        """True when this telegram was already heard within the window (a copy to drop); otherwise
        it is remembered from now."""
        if self.window_s <= 0:
            return False
        # Entries are in the order first heard, so the expired ones are at the front.
        while self._first_heard:
            oldest_key, oldest = next(iter(self._first_heard.items()))
            if now_s - oldest < self.window_s:
                break
            del self._first_heard[oldest_key]
        key = telegram_key(link)
        if key in self._first_heard:
            return True
        self._first_heard[key] = now_s
        if len(self._first_heard) > self._capacity:
            self._first_heard.popitem(last=False)
        return False
