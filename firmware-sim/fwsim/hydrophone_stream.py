"""Live hydrophone audio from the simulated pipe: a real-time TCP (and unix socket) stream for the
agent's audio driver, and a WAV writer (`main(argv)`, wired as `edge-sim hydrophones`).

Wire format, little-endian (the agent's reader is `drivers/audio/streamclient.py`):

    header, once per connection:
        magic b"EHYD" | version u8 = 1 | dtype u8 (1 = float32, 2 = int16) | channels u16
        | sample_rate u32 | start_ts_ns u64 (UTC ns of sample index 0 of the stream)
    blocks, every `block_ms`:
        seq u64 | first sample index u64 | frames u32 | frames x channels samples, interleaved

The stream runs on the wall clock from start-up (sample index = seconds since start x rate);
audio is rendered only while someone listens. A client that cannot keep up (more than
`max_backlog_s` queued) misses whole blocks, which it sees as a jump in seq and sample index.

Scene: `[components.hydrophones]` options (below) or defaults: two sensors 100 m apart on a
150 mm ductile-iron main, no leak. Scenario events (`component = "hydrophones"`) change the leak:
`{at = "30s", component = "hydrophones", leak_position_m = 120, leak_size = 1.0}`; a
`leak_position_m` below 0 closes it.

Both outputs go through the recorder's input stage (`recorder_input`): `gain_db` (default
`DEFAULT_GAIN_DB`), then full scale, as a real converter does — no sample leaves beyond +-1.0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time
import wave
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import numpy.typing as npt
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from water_edge.sim.component import Announcement, SimContext
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

log = structlog.get_logger(__name__)

MAGIC: Final = b"EHYD"
VERSION: Final = 1
HEADER: Final = struct.Struct("<4sBBHIQ")
BLOCK: Final = struct.Struct("<QQI")
DTYPE_CODES: Final[dict[str, tuple[int, np.dtype[Any]]]] = {
    "float32": (1, np.dtype("<f4")),
    "int16": (2, np.dtype("<i2")),
}
LOOPBACK_CARDS: Final = Path("/proc/asound/cards")
# The recorder's input gain. The synthesised background sits at the real PVC recordings' level
# (-15 dBFS rms); a leak 10 dB above it then reached -4.6 dBFS rms with peaks far beyond full scale,
# and a detector rightly refused to learn from it. A field technician sets the gain for headroom:
# at -15 dB the quiet sits at -30 dBFS and a leak 15 dB above it still peaks under full scale.
DEFAULT_GAIN_DB: Final = -15.0


class HydrophoneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = None  # default: the plant's host
    port: int = Field(default=0, ge=0, le=65535)  # 0: a free port
    unix_path: Path | None = None
    sample_rate: int = Field(default=16000, ge=1000, le=192000)
    channels: int = Field(default=2, ge=1, le=16)
    dtype: Literal["float32", "int16"] = "float32"
    block_ms: int = Field(default=100, ge=10, le=1000)
    max_backlog_s: float = Field(default=1.0, gt=0, le=60)
    material: str = "ductile_iron"
    diameter_mm: float = 150.0
    spacing_m: float = 100.0
    leak_position_m: float | None = None
    leak_size: float = 1.0
    snr_db: float = 10.0
    backgrounds: tuple[str, ...] = BACKGROUNDS
    gain_db: float = Field(default=DEFAULT_GAIN_DB, ge=-60.0, le=20.0)

    def scene(self, seed: int) -> PipeScene:
        return PipeScene(
            material=self.material,
            diameter_mm=self.diameter_mm,
            spacing_m=self.spacing_m,
            leak_position_m=self.leak_position_m,
            leak_size=self.leak_size,
            snr_db=self.snr_db,
            backgrounds=self.backgrounds,
            sample_rate=self.sample_rate,
            channels=self.channels,
            seed=seed,
        )


def recorder_input(samples: npt.NDArray[np.float32], gain_db: float) -> tuple[npt.NDArray[np.float32], int]:
    """`samples` through the recorder's input gain and converter: scaled by `gain_db`, held within
    full scale; and how many samples the converter clipped."""
    scaled = samples * np.float32(10 ** (gain_db / 20))
    clipped = int(np.count_nonzero(np.abs(scaled) > 1.0))
    return (np.clip(scaled, -1.0, 1.0) if clipped else scaled), clipped


def encode(samples: npt.NDArray[np.float32], dtype: str) -> bytes:
    if dtype == "int16":
        return (np.clip(samples, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()
    return samples.astype("<f4").tobytes()


def alsa_loopback() -> str | None:
    """The ALSA Loopback card's line in /proc/asound/cards, when the snd-aloop module is loaded."""
    try:
        text = LOOPBACK_CARDS.read_text()
    except OSError:
        return None
    return next((line.strip() for line in text.splitlines() if "Loopback" in line), None)


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.skipped_blocks = 0


def find_loopback_output(devices: Sequence[Mapping[str, Any]]) -> int | None:
    """The PortAudio index of an ALSA Loopback playback device (snd-aloop), if there is one."""
    for index, device in enumerate(devices):
        if "Loopback" in str(device.get("name", "")) and int(device.get("max_output_channels", 0)) > 0:
            return index
    return None


class LoopbackPlayer:
    """Plays the synthetic hydrophones into the ALSA loopback card, where the agent's PortAudio
    capture can record them from the card's other side, exactly as from a real sound card."""

    def __init__(self, sample_rate: int, channels: int) -> None:
        import sounddevice as sd  # type: ignore[import-untyped,unused-ignore]

        index = find_loopback_output(list(sd.query_devices()))
        if index is None:
            raise OSError("no ALSA Loopback playback device (is snd-aloop loaded?)")
        self.device = str(sd.query_devices(index)["name"])
        self._stream = sd.OutputStream(
            device=index, samplerate=sample_rate, channels=channels, dtype="float32"
        )
        self._stream.start()

    def play(self, samples: Any) -> None:
        """Blocking: write one block (call from a worker thread)."""
        self._stream.write(samples.astype("float32", copy=False))

    def close(self) -> None:
        self._stream.stop()
        self._stream.close()


class HydrophoneComponent:
    name = "hydrophones"

    def __init__(self) -> None:
        self._servers: list[asyncio.Server] = []
        self._clients: set[_Client] = set()
        self._task: asyncio.Task[None] | None = None
        self._opts = HydrophoneOptions()
        self._header = b""
        self._loopback: LoopbackPlayer | None = None

    async def start(self, ctx: SimContext) -> list[Announcement]:
        try:
            opts = HydrophoneOptions(**ctx.options)
            scene = opts.scene(ctx.seed)
        except (ValidationError, ValueError) as exc:
            raise ValueError(f"[components.hydrophones]: {exc}") from exc
        self._opts = opts
        host = opts.host or ctx.host
        start_ns = time.time_ns()
        code, _ = DTYPE_CODES[opts.dtype]
        self._header = HEADER.pack(MAGIC, VERSION, code, opts.channels, opts.sample_rate, start_ns)
        tcp = await asyncio.start_server(self._serve, host, opts.port)
        self._servers.append(tcp)
        port = int(tcp.sockets[0].getsockname()[1])
        if opts.unix_path is not None:
            opts.unix_path.unlink(missing_ok=True)
            self._servers.append(await asyncio.start_unix_server(self._serve, str(opts.unix_path)))
        loopback = alsa_loopback()
        if loopback is not None:
            try:
                self._loopback = LoopbackPlayer(opts.sample_rate, opts.channels)
                loopback = self._loopback.device
            except OSError as exc:  # PortAudio may not see the card, or it is busy
                log.warning("hydrophones.loopback_unavailable", card=loopback, error=str(exc))
                loopback = None
        self._task = asyncio.create_task(self._pace(ctx, scene), name="hydrophones")
        detail: dict[str, Any] = {
            "url": f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}",
            "host": host, "port": port,
            "unix_path": None if opts.unix_path is None else str(opts.unix_path),
            "sample_rate": opts.sample_rate, "channels": opts.channels, "dtype": opts.dtype,
            "block_ms": opts.block_ms, "material": opts.material, "diameter_mm": opts.diameter_mm,
            "spacing_m": opts.spacing_m, "leak_position_m": opts.leak_position_m, "gain_db": opts.gain_db,
            # The loopback device played into, or None where there is no usable snd-aloop card.
            "alsa_loopback": loopback,
        }  # fmt: skip
        return [Announcement("hydrophones", detail)]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        try:
            writer.write(self._header)
            self._clients.add(client)
            while await reader.read(4096):  # clients send nothing; EOF means they left
                pass
        except ConnectionError:
            pass  # the client went away
        finally:
            self._clients.discard(client)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _pace(self, ctx: SimContext, scene: PipeScene) -> None:
        opts = self._opts
        synth = HydrophoneSynth(scene)
        events = sorted(ctx.events, key=lambda e: float(e.get("at", 0)))
        block = max(1, opts.sample_rate * opts.block_ms // 1000)
        limit = opts.max_backlog_s * opts.sample_rate * opts.channels * DTYPE_CODES[opts.dtype][1].itemsize
        loop = asyncio.get_running_loop()
        began = loop.time()
        index = seq = 0
        warned = False  # about clipping, once per scene
        while True:
            due = began + (index + block) / opts.sample_rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            while events and float(events[0].get("at", 0)) <= ctx.station.state.elapsed_s:
                scene = self._apply(events.pop(0), scene)
                synth = HydrophoneSynth(scene)
                warned = False
            if self._clients or self._loopback is not None:
                rendered = await asyncio.to_thread(synth.render, block)
                samples, clipped = recorder_input(rendered, opts.gain_db)
                if clipped and not warned:
                    warned = True
                    log.warning(
                        "hydrophones.clipping", samples=clipped, block=block * opts.channels,
                        gain_db=opts.gain_db, hint="lower [components.hydrophones] gain_db",
                    )  # fmt: skip
                if self._loopback is not None:
                    await asyncio.to_thread(self._loopback.play, samples)
                data = BLOCK.pack(seq, index, block) + encode(samples, opts.dtype)
                for client in list(self._clients):
                    transport = client.writer.transport
                    if transport.is_closing():
                        self._clients.discard(client)
                    elif transport.get_write_buffer_size() > limit:
                        client.skipped_blocks += 1  # a slow reader loses whole blocks, visibly
                    else:
                        client.writer.write(data)
            index += block
            seq += 1

    @staticmethod
    def _apply(event: dict[str, Any], scene: PipeScene) -> PipeScene:
        position = event.get("leak_position_m", scene.leak_position_m)
        if position is not None and float(position) < 0:
            position = None
        changed = replace(
            scene,
            leak_position_m=None if position is None else float(position),
            leak_size=float(event.get("leak_size", scene.leak_size)),
            snr_db=float(event.get("snr_db", scene.snr_db)),
        )
        log.info("hydrophones.scene", leak_position_m=changed.leak_position_m, leak_size=changed.leak_size)
        return changed

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._loopback is not None:
            self._loopback.close()
            self._loopback = None
        for server in self._servers:
            server.close()
        for client in list(self._clients):
            client.writer.close()
        self._clients.clear()
        for server in self._servers:
            await server.wait_closed()
        if self._opts.unix_path is not None:
            self._opts.unix_path.unlink(missing_ok=True)


# --- `edge-sim hydrophones --wav OUT.wav --seconds N` ------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-sim hydrophones", description="write synthetic hydrophone audio")
    p.add_argument("--wav", type=Path, required=True, help="output file (16-bit PCM WAV)")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--sample-rate", type=int, default=16000)
    p.add_argument("--channels", type=int, default=2)
    p.add_argument("--material", default="ductile_iron")
    p.add_argument("--diameter-mm", type=float, default=150.0)
    p.add_argument("--spacing-m", type=float, default=100.0)
    p.add_argument(
        "--leak-position-m",
        type=float,
        default=None,
        help="the leak's distance from sensor A; leave it out for no leak",
    )
    p.add_argument("--leak-size", type=float, default=1.0)
    p.add_argument("--snr-db", type=float, default=10.0)
    p.add_argument("--backgrounds", default=",".join(BACKGROUNDS), help="comma-separated, or ''")
    p.add_argument(
        "--gain-db",
        type=float,
        default=DEFAULT_GAIN_DB,
        help=f"the recorder's input gain (default {DEFAULT_GAIN_DB:g}: the quiet at -30 dBFS); samples beyond"
        " full scale are clipped, as a converter clips them",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--site-seed",
        type=int,
        default=None,
        help="the site's character (background mix, sensor floor); with it --seed draws only the noise,"
        " so one site can be recorded on several nights",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 0 < args.seconds <= 86400:
        sys.stderr.write("edge-sim hydrophones: --seconds must be in (0, 86400]\n")
        return 2
    try:
        scene = PipeScene(
            material=args.material,
            diameter_mm=args.diameter_mm,
            spacing_m=args.spacing_m,
            leak_position_m=args.leak_position_m,
            leak_size=args.leak_size,
            snr_db=args.snr_db,
            backgrounds=tuple(b for b in args.backgrounds.split(",") if b),
            sample_rate=args.sample_rate,
            channels=args.channels,
            seed=args.seed,
            site_seed=args.site_seed,
        )
    except ValueError as exc:
        sys.stderr.write(f"edge-sim hydrophones: {exc}\n")
        return 2
    synth = HydrophoneSynth(scene)
    total = round(args.seconds * args.sample_rate)
    clipped = 0
    try:
        with wave.open(str(args.wav), "wb") as out:
            out.setnchannels(args.channels)
            out.setsampwidth(2)
            out.setframerate(args.sample_rate)
            done = 0
            while done < total:
                n = min(args.sample_rate, total - done)
                samples, clipped_now = recorder_input(synth.render(n), args.gain_db)
                clipped += clipped_now
                out.writeframes(encode(samples, "int16"))
                done += n
    except OSError as exc:
        sys.stderr.write(f"edge-sim hydrophones: {args.wav}: {exc.strerror or exc}\n")
        return 1
    note = f"; {clipped} samples clipped at full scale (lower --gain-db)" if clipped else ""
    leak = (
        "no leak (--leak-position-m adds one)"
        if args.leak_position_m is None
        else f"a leak {args.leak_position_m:g} m from sensor A"
    )
    what = f"{args.seconds:g} s, {args.channels} ch, {args.sample_rate} Hz, 16-bit PCM, {leak}"
    sys.stdout.write(f"{args.wav}: {what}{note}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
