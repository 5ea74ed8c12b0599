"""The stream source: firmware-sim's live hydrophone stream over TCP or a unix socket.

Wire format (little-endian; documented in docs/drivers/audio.md, served by
`fwsim.hydrophone_stream`):

    header, once:  magic b"EHYD" | version u8 = 1 | dtype u8 (1 = float32, 2 = int16)
                   | channels u16 | sample_rate u32 | start_ts_ns u64 (UTC ns of sample index 0)
    then blocks:   seq u64 | first sample index u64 | frames u32 | frames * channels samples

`seq` counts blocks and `first sample index` frames since the stream began; a jump in either
means the sender dropped blocks (a slow reader), and the jump in frames is counted as dropped.
A blocking socket on a reader thread feeds the ring, as PortAudio's thread does for a device.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from typing import Any, Final

import numpy as np
import structlog

from water_edge.core.errors import DriverIOError
from water_edge.drivers.audio.config import AudioConfig
from water_edge.drivers.audio.health import SourceHealth
from water_edge.drivers.audio.source import GapLog, Sink, to_float32
from water_edge.drivers.audio.window import Clock

log = structlog.get_logger(__name__)

MAGIC: Final = b"EHYD"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sBBHIQ")
BLOCK: Final = struct.Struct("<QQI")
DTYPES: Final[dict[int, np.dtype[Any]]] = {1: np.dtype("<f4"), 2: np.dtype("<i2")}
MAX_BLOCK_S: Final = 10  # a block longer than this is a protocol error, not a buffer to allocate


class StreamClosedError(Exception):
    """The peer closed the connection (internal; becomes the source's error)."""


def connect(url: str, timeout_s: float) -> socket.socket:
    if not url.startswith("unix://"):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        # create_connection resolves the name and tries each address (IPv6 and IPv4) in turn.
        return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(url.removeprefix("unix://"))
    except OSError:
        sock.close()
        raise
    return sock


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise StreamClosedError("the stream closed the connection")
        got += k
    return bytes(buf)


class StreamSource:
    def __init__(self, config: AudioConfig, gaps: GapLog) -> None:
        if config.stream_url is None:
            raise DriverIOError(f"{config.name}: no stream_url configured")
        self.config = config
        self.url = config.stream_url
        self.gaps = gaps
        self.sample_rate = 0
        self.channels = 0
        self.clock = Clock(0, 1)
        self.error: str | None = None
        self.finished = False
        self.blocks = 0
        self._dtype: np.dtype[Any] = DTYPES[1]
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        c = self.config
        try:
            sock = connect(self.url, c.connect_timeout_s)
        except OSError as exc:
            raise DriverIOError(f"{c.name}: cannot connect to {self.url}: {exc}") from exc
        try:
            magic, version, dtype, channels, rate, start_ns = HEADER.unpack(recv_exact(sock, HEADER.size))
        except (OSError, StreamClosedError) as exc:
            sock.close()
            raise DriverIOError(f"{c.name}: {self.url} sent no stream header: {exc}") from exc
        problem = None
        if magic != MAGIC:
            problem = f"not a hydrophone stream (magic {magic!r}, expected {MAGIC!r})"
        elif version != VERSION:
            problem = f"stream version {version}, this driver speaks {VERSION}"
        elif dtype not in DTYPES:
            problem = f"unknown sample type code {dtype}"
        elif not (1 <= channels <= 32 and 1000 <= rate <= 384_000):
            problem = f"implausible stream format: {channels} channels at {rate} Hz"
        if problem:
            sock.close()
            raise DriverIOError(f"{c.name}: {self.url}: {problem}")
        self.sample_rate, self.channels, self._dtype = rate, channels, DTYPES[dtype]
        self.clock = Clock(start_ns, rate)
        sock.settimeout(c.stall_timeout_s)
        self._sock = sock

    def start(self, sink: Sink) -> None:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._read, args=(sink,), name=f"audio-stream:{self.config.name}", daemon=True
        )
        self._thread.start()

    def _read(self, sink: Sink) -> None:
        sock = self._sock
        if sock is None:
            return
        expected_seq: int | None = None
        expected_index: int | None = None
        frame_bytes = self.channels * self._dtype.itemsize
        index = 0
        try:
            while not self._stop.is_set():
                seq, index, frames = BLOCK.unpack(recv_exact(sock, BLOCK.size))
                if frames > MAX_BLOCK_S * self.sample_rate:
                    raise ValueError(f"block of {frames} frames exceeds {MAX_BLOCK_S} s")
                payload = recv_exact(sock, frames * frame_bytes)
                if expected_index is not None and index != expected_index:
                    if index < expected_index or (expected_seq is not None and seq < expected_seq):
                        raise ValueError(f"stream went backwards (block {seq}, frame {index})")
                    self.gaps.add("stream_gap", index - expected_index, self.clock.ts(expected_index))
                expected_seq, expected_index = seq + 1, index + frames
                samples = np.frombuffer(payload, dtype=self._dtype).reshape(frames, self.channels)
                self.blocks += 1
                sink(to_float32(samples), index)
        except TimeoutError:
            self.error = f"no audio from {self.url} for {self.config.stall_timeout_s:g} s"
        except StreamClosedError as exc:
            self.error = f"{self.url}: {exc}"
        except ValueError as exc:
            self.error = f"{self.url}: protocol error: {exc}"
        except OSError as exc:
            if not self._stop.is_set():
                self.error = f"{self.url}: connection lost: {exc}"
        if self.error:
            log.warning("audio.stream_lost", driver=self.config.name, error=self.error)
            sink(np.zeros((0, self.channels), np.float32), index)  # wake the driver to see it

    def stop(self) -> None:
        self._stop.set()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):  # already disconnected
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def health(self) -> SourceHealth:
        return SourceHealth(url=self.url, blocks=self.blocks)
