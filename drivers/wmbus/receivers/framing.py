"""Splitting a USB stick's byte stream into checked frames: resynchronise on the start byte,
wait for a whole frame, drop one byte and search again on a bad checksum, and bound what is
kept while a frame is incomplete. The sticks differ only in their start byte, how a header gives
the frame's size and how a frame is checked.
"""

from __future__ import annotations

from collections.abc import Callable

from water_edge.drivers.wmbus.receivers import ReceiverCounters

MAX_BUFFER = 4096


class FrameSplitter:
    def __init__(
        self,
        start_byte: int,
        header_bytes: int,
        frame_size: Callable[[bytearray], int],
        frame_ok: Callable[[bytes], bool],
        counters: ReceiverCounters,
    ) -> None:
        self._start = start_byte
        self._header = header_bytes
        self._size = frame_size
        self._ok = frame_ok
        self._counters = counters
        self._buffer = bytearray()

    def reset(self) -> None:
        self._counters.garbage_bytes += len(self._buffer)
        self._buffer.clear()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole, checked frames that `data` completes, start byte included."""
        buf = self._buffer
        buf += data
        frames: list[bytes] = []
        while buf:
            if buf[0] != self._start:
                skip = buf.find(self._start)
                skip = len(buf) if skip < 0 else skip
                self._counters.garbage_bytes += skip
                del buf[:skip]
                continue
            if len(buf) < self._header:
                break
            size = self._size(buf)
            if len(buf) < size:
                break
            frame = bytes(buf[:size])
            if not self._ok(frame):
                self._counters.crc_errors += 1
                del buf[:1]
                continue
            del buf[:size]
            frames.append(frame)
        if len(buf) > MAX_BUFFER:
            self._counters.garbage_bytes += len(buf)
            buf.clear()
        return frames
