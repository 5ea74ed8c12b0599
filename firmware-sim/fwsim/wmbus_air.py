"""Wireless water meters on the air (`edge-sim run --components wmbus`): every meter sends at its
own interval (randomised ±10 % as OMS meters do), on model time, to a USB stick on a pty and to an
rtl_wmbus TCP stream. Two frames that overlap on the air collide: the stick hears neither, the SDR
prints both with a failed CRC.

Options (`[components.wmbus]` or defaults): `meters` (20), `interval_s` (120 model seconds),
`compact_interval_s` (the compact meters' interval; default `interval_s`),
`stick` ("im871a" or "amb8465"), `compact_share` (0.3: Kamstrup-style ELL/compact meters on C1, the
others OMS on T1), `security` ("mixed": mode 5 and 7 alternating; or "mode5", "mode7", "none"),
`line_faults` (0.0: share of stick frames spoiled on the serial line), `faults` (per meter index:
{"leak_lph", "backflow_lph", "tamper", "battery_low", "silent", "mute"}), `repeater_delay_s` (0: none;
else a single-hop repeater in range of every meter sends each telegram again this many model
seconds later, with the hop counter bit of an extended link layer's CC field set; `repeater_only`:
[indices] of meters the receivers hear only through it), `out_of_range`
({"stick": [indices], "rtlwmbus": [indices]}: meters a receiver cannot hear; by default both hear
every meter).
Events (`component = "wmbus"`): `meter` (index), `meter_fault` (leak, backflow, tamper, battery, silent,
mute, clear), `rate_lph`; `meter` with `replay = k` (the telegram that meter sent k telegrams ago is
sent again now: a recorder replaying it, or a store-and-forward repeater flushing an old one); or
`receiver_fault = "drop"` (the rtl_wmbus TCP stream closes its connections, as when `nc` restarts;
it keeps listening), `"cut"` (the same, half-way through a line), `"unplug"` (the USB stick is
pulled while sending: half a frame, then its pty closes) or `"replug"` (a new pty, the link
repointed, the stick back in its power-on link mode S1 until it is set up again).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import heapq
from collections import deque
from typing import Any, Final

import structlog

from water_edge.sim.component import Announcement, SimContext
from water_edge.sim.wmbus_faces import RtlWmbusFace, StickFace
from water_edge.sim.wmbus_meter import MeterFaults, MeterSpec, WirelessMeter

log = structlog.get_logger(__name__)

TICK_S: Final = 0.02
BITRATE: Final = {"T1": 100_000 * 2 / 3, "C1": 100_000.0}  # T1's 3-of-6 code costs a third
PREAMBLE_S: Final = 0.0006
ELL_CI: Final = frozenset({0x8C, 0x8D, 0x8E, 0x8F})
HOP_COUNTER_BIT: Final = 0x10  # ELL CC field H, set by a repeater when it relays (EN 13757-4/-5)
REPLAY_KEPT: Final = 16  # telegrams kept per meter for `replay`


def meter_key(seed: int, ident: int) -> bytes:
    """A deterministic per-meter AES key (announced, so a test or demo can configure the agent)."""
    return hashlib.sha256(f"wmbus:{seed}:{ident}".encode()).digest()[:16]


def relayed(telegram: bytes) -> bytes:
    """The telegram as a repeater sends it on (L field first, no CRCs: those are recomputed on air)."""
    if len(telegram) > 12 and telegram[10] in ELL_CI:  # CI after L C M(2) A(6)
        return telegram[:11] + bytes((telegram[11] | HOP_COUNTER_BIT,)) + telegram[12:]
    return telegram


def airtime_s(telegram: bytes, link_mode: str) -> float:
    on_air = len(telegram) + 2 * (1 + len(telegram) // 16)  # CRCs
    return PREAMBLE_S + on_air * 8 / BITRATE[link_mode]


class WmbusAir:
    def __init__(self, ctx: SimContext, options: dict[str, Any]) -> None:
        self._ctx = ctx
        self._rng = ctx.rng("wmbus")
        count = int(options.get("meters", 20))
        if not 1 <= count <= 5000:
            raise ValueError(f"wmbus: meters must be 1..5000, got {count}")
        interval = float(options.get("interval_s", 120.0))
        compact_interval = float(options.get("compact_interval_s", interval))
        compact_share = float(options.get("compact_share", 0.3))
        security = str(options.get("security", "mixed"))
        faults = {int(k): v for k, v in dict(options.get("faults", {})).items()}
        self.meters: list[WirelessMeter] = []
        for i in range(count):
            ident = 30_000_000 + i * 7 + ctx.seed % 7
            compact = i < round(count * compact_share)
            mode = ("mode5", "mode7")[i % 2] if security == "mixed" else security
            spec = MeterSpec(
                ident=ident,
                kind="compact" if compact else "oms",
                security="ell" if compact else mode,  # type: ignore[arg-type]
                key=meter_key(ctx.seed, ident),
                interval_s=compact_interval if compact else interval,
                manufacturer="KAM" if compact else "SIM",
                initial_m3=round(50 + self._rng.random() * 400, 3),
            )
            meter = WirelessMeter(spec, self._ctx.rng(f"wmbus-meter-{i}"))
            meter.faults = MeterFaults(**faults.get(i, {}))
            self.meters.append(meter)
        self.stick = StickFace(
            str(options.get("stick", "im871a")),
            ctx.workdir / f"wmbus-stick-{ctx.seed}",
            ctx.rng("wmbus-line"),
            float(options.get("line_faults", 0.0)),
        )
        self.sdr = RtlWmbusFace(ctx.host)
        deaf = {str(k): [int(i) for i in v] for k, v in dict(options.get("out_of_range", {})).items()}
        unknown = sorted(set(deaf) - {"stick", "rtlwmbus"})
        if unknown:
            raise ValueError(f"wmbus: out_of_range names 'stick' and 'rtlwmbus', not {unknown[0]!r}")
        self._stick_deaf = {self.meters[i].spec.ident for i in deaf.get("stick", [])}
        self._sdr_deaf = {self.meters[i].spec.ident for i in deaf.get("rtlwmbus", [])}
        # Meters no receiver hears directly, only through the repeater (a meter down a shaft).
        self._repeater_only = {self.meters[int(i)].spec.ident for i in options.get("repeater_only", [])}
        self._events = sorted(ctx.events, key=lambda e: float(e.get("at", 0)))
        self._queue: list[tuple[float, int]] = []
        self._repeater_delay_s = float(options.get("repeater_delay_s", 0.0))
        self._repeats: list[tuple[float, int, bytes]] = []  # (when, meter index, telegram)
        self._last_advance: list[float] = [0.0] * count
        # Frames on the air, delivered when their last bit has been sent:
        # [end, telegram, meter, collided, relayed by the repeater].
        self._on_air: list[list[Any]] = []
        self._sent: list[deque[bytes]] = [deque(maxlen=REPLAY_KEPT) for _ in range(count)]
        self.counters = {"sent": 0, "collisions": 0, "repeated": 0, "replayed": 0}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        now = self._ctx.state().elapsed_s
        for i, m in enumerate(self.meters):
            # Meters in the field send out of phase with each other: the first send anywhere in one interval.
            heapq.heappush(self._queue, (now + self._rng.uniform(0.05, m.spec.interval_s), i))
            self._last_advance[i] = now
        self.stick.start()
        await self.sdr.start()
        self._task = asyncio.create_task(self._run(), name="wmbus-air")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.stick.stop()
        await self.sdr.stop()

    def apply(self, event: dict[str, Any]) -> None:
        if "receiver_fault" in event:
            fault = event["receiver_fault"]
            if fault in ("drop", "cut"):
                self.sdr.drop_clients(mid_line=fault == "cut")
            elif fault == "unplug":
                self.stick.unplug()
            elif fault == "replug":
                self.stick.replug()
            else:
                raise ValueError(f"wmbus: unknown receiver fault {fault!r}")
            return
        if "replay" in event:
            self.replay(int(event["meter"]), int(event["replay"]))
            return
        meter = self.meters[int(event["meter"])]
        fault, rate = str(event["meter_fault"]), float(event.get("rate_lph", 0.0))
        f = meter.faults
        if fault == "leak":
            f.leak_lph = rate or 8.0
        elif fault == "backflow":
            f.backflow_lph = rate or 20.0
        elif fault in ("tamper", "silent", "mute"):
            setattr(f, fault, True)
        elif fault == "battery":
            f.battery_low = True
        elif fault == "clear":
            meter.faults = MeterFaults()
        else:
            raise ValueError(f"wmbus: unknown meter fault {fault!r}")

    def replay(self, index: int, back: int) -> None:
        """Send again, now, the telegram meter `index` sent `back` telegrams ago (1: its latest), as a
        recorder replaying it or a store-and-forward repeater flushing an old one would."""
        sent = self._sent[index]
        if not 1 <= back <= len(sent):
            raise ValueError(f"wmbus: meter {index} has sent {len(sent)} telegram(s) kept, not {back}")
        self.counters["replayed"] += 1
        self._hear(sent[-back], self.meters[index], collided=False)  # close by, loud: it never collides

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self.step(self._ctx.state().elapsed_s)

    def step(self, now: float) -> None:
        """Everything due up to model time `now`: scenario events, then transmissions."""
        while self._events and float(self._events[0].get("at", 0)) <= now:
            self.apply(self._events.pop(0))
        hour = (self._ctx.state().time_of_day_s / 3600.0) % 24.0
        while True:
            next_send = self._queue[0][0] if self._queue else float("inf")
            next_repeat = self._repeats[0][0] if self._repeats else float("inf")
            if min(next_send, next_repeat) > now:
                break
            if next_repeat < next_send:
                at, i, telegram = heapq.heappop(self._repeats)
                self.counters["repeated"] += 1
                self._on_air_add(at, relayed(telegram), self.meters[i], relayed=True)
                continue
            at, i = heapq.heappop(self._queue)
            meter = self.meters[i]
            meter.advance(at - self._last_advance[i], hour)
            self._last_advance[i] = at
            heapq.heappush(self._queue, (at + meter.spec.interval_s * self._rng.uniform(0.9, 1.1), i))
            if not meter.faults.mute:
                self._transmit(at, i)
        self._deliver(now)

    def _transmit(self, at: float, index: int) -> None:
        meter = self.meters[index]
        wall = dt.datetime.now()
        telegram = meter.telegram((wall.year, wall.month, wall.day, wall.hour, wall.minute))
        self.counters["sent"] += 1
        self._sent[index].append(telegram)
        if self._repeater_delay_s > 0:
            heapq.heappush(self._repeats, (at + self._repeater_delay_s, index, telegram))
        self._on_air_add(at, telegram, meter)

    def _on_air_add(self, at: float, telegram: bytes, meter: WirelessMeter, *, relayed: bool = False) -> None:
        frame: list[Any] = [at + airtime_s(telegram, meter.link_mode), telegram, meter, False, relayed]
        for other in self._on_air:
            if other[0] > at:  # still on the air: both are lost
                other[3] = frame[3] = True
        self._on_air.append(frame)

    def _deliver(self, now: float) -> None:
        done = [f for f in self._on_air if f[0] <= now]
        self._on_air = [f for f in self._on_air if f[0] > now]
        for _end, telegram, meter, collided, by_repeater in done:
            if collided:
                self.counters["collisions"] += 1
            if by_repeater or meter.spec.ident not in self._repeater_only:
                self._hear(telegram, meter, collided=collided)

    def _hear(self, telegram: bytes, meter: WirelessMeter, *, collided: bool) -> None:
        """A frame that has left the air reaches the receivers in range."""
        rssi = -60.0 - 30.0 * self._rng.random()
        ident = f"{meter.spec.ident:08d}"
        if meter.spec.ident not in self._sdr_deaf:
            self.sdr.deliver(telegram, rssi, meter.link_mode, crc_ok=not collided, ident=ident)
        stick_hears = meter.link_mode == self.stick.link_mode and meter.spec.ident not in self._stick_deaf
        if not collided and stick_hears:
            self.stick.deliver(telegram, rssi - 5.0)

    def describe(self) -> dict[str, Any]:
        return {
            "path": self.stick.path,
            "stick": {"kind": self.stick.kind, "path": self.stick.path},
            "rtlwmbus": {"host": self._ctx.host, "port": self.sdr.port},
            "meters": [
                {
                    "index": i,
                    "id": f"{m.spec.ident:08d}",
                    "manufacturer": m.spec.manufacturer,
                    "kind": m.spec.kind,
                    "security": m.spec.security,
                    "link_mode": m.link_mode,
                    "key": m.spec.key.hex().upper(),
                    "interval_s": m.spec.interval_s,
                }
                for i, m in enumerate(self.meters)
            ],
        }


class WmbusComponent:
    """`edge-sim run` part `wmbus`."""

    name = "wmbus"

    def __init__(self) -> None:
        self.air: WmbusAir | None = None

    async def start(self, ctx: SimContext) -> list[Announcement]:
        self.air = WmbusAir(ctx, ctx.options)
        await self.air.start()
        air = self.air
        log.info("wmbus.started", meters=len(air.meters), stick=air.stick.path, sdr_port=air.sdr.port)
        return [Announcement("wmbus", self.air.describe())]

    async def stop(self) -> None:
        if self.air is not None:
            await self.air.stop()
