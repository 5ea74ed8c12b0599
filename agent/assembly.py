"""Builds the agent's optional parts from its config: drivers, analytics processors, the command channel.

Kept apart from `agent.runtime` so the runtime stays a wiring of generic parts (drivers, feeds,
processors, a command handler) and heavy imports (TFLite, numpy, the security stack) happen
only when the config asks for them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from water_edge.agent.config import Config
from water_edge.agent.config.schema import LeakModelSection
from water_edge.agent.pipeline import Processor, ReadingFeed
from water_edge.core.reading import Event
from water_edge.drivers import registry
from water_edge.drivers.base import Driver

log = structlog.get_logger(__name__)

EventSink = Callable[[Event], Awaitable[None]]
EXIT_RESTART = 75  # EX_TEMPFAIL: a restart asked for by command; systemd's Restart=on-failure obeys it


def build_drivers(config: Config) -> dict[str, Driver]:
    return {d.name: registry.build(d.kind, d) for d in config.devices if d.enabled}


class AudioLeakProcessor:
    """The leak detector on one audio device's analysis windows (it needs no readings feed)."""

    streams: frozenset[str] = frozenset()  # the runtime's feed then carries nothing

    def __init__(self, section: LeakModelSection, driver: Any, *, max_queued: int = 8) -> None:
        from water_edge.models.leak.detector import LeakProcessor, LeakScorer
        from water_edge.models.runtime import load_model

        scorer = LeakScorer(load_model(section.model)) if section.model else LeakScorer()
        self.slot = scorer.slot  # `model_update` commands swap the model in here
        self.name = f"leak:{section.device}"
        self.leak = LeakProcessor(
            scorer,
            source=section.device,
            alpha=section.alpha,
            on_windows=section.on_windows,
            off_windows=section.off_windows,
        )
        self._driver = driver
        self._max_queued = max_queued
        self.windows_dropped = 0

    async def run(self, source: ReadingFeed, emit: EventSink) -> None:
        # Windows arrive on the loop from the audio driver; a scorer that falls behind loses
        # windows (counted), never blocks capture.
        queue: asyncio.Queue[Any] = asyncio.Queue(self._max_queued)

        def offer(window: Any) -> None:
            if queue.full():
                self.windows_dropped += 1
            else:
                queue.put_nowait(window)

        async def windows() -> Any:
            while True:
                yield await queue.get()

        remove = self._driver.add_window_listener(offer)
        try:
            await self.leak.run(windows(), emit)
        finally:
            remove()

    def health(self) -> dict[str, Any]:
        trend = list(self.leak.trend)
        return {
            "windows_scored": self.leak.windows_scored,
            "windows_dropped": self.windows_dropped,
            "leak_probability": round(trend[-1], 4) if trend else None,
        }


def build_processors(config: Config, drivers: Mapping[str, Driver]) -> list[Processor]:
    processors: list[Processor] = []
    if config.models.pump:
        from water_edge.models.pump.processor import PumpProcessor

        processors.append(PumpProcessor(config.models.pump, config.gateway.state_dir))
    for section in config.models.leak:
        driver = drivers.get(section.device)
        if driver is None:  # a disabled audio device: nothing to listen to
            log.warning("leak.device_disabled", device=section.device)
            continue
        processors.append(AudioLeakProcessor(section, driver))
    return processors


@dataclass
class CommandWiring:
    """The command channel and what it needs from the running agent, bound after both exist."""

    handler: Callable[[str, bytes], Awaitable[None]]
    stats: Callable[[], dict[str, Any]]
    bind: Callable[[Any], None]
    restart_requested: list[str] = field(default_factory=list)


def pump_calibrator(
    config: Config,
) -> Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]] | None:
    """The `pump_calibration` command's target: a new calibration version from the pump's own
    feature history (args `from` / `to`: ISO 8601 or epoch seconds; default: all of it). The
    running PumpProcessor picks the new version up by itself."""
    if not config.models.pump:
        return None
    pumps = {p.name: p for p in config.models.pump}
    state_dir = config.gateway.state_dir

    def calibrate_blocking(name: str, args: dict[str, Any]) -> dict[str, Any]:
        from water_edge.agent.commands.models import _instant_ns
        from water_edge.agent.remote.result import CommandFailedError
        from water_edge.models.manifest import ModelError
        from water_edge.models.pump.processor import DEFAULT_MANIFEST, recalibrate
        from water_edge.models.pump.store import CalibrationStore, FeatureHistory, pump_dir
        from water_edge.models.runtime import load_model

        cfg = pumps.get(name)
        if cfg is None:
            raise CommandFailedError(f"no pump {name!r} (configured: {', '.join(pumps)})")
        path = pump_dir(state_dir, name) / "history.sqlite"
        if not path.exists():
            raise CommandFailedError(f"no feature history for pump {name} yet")
        try:
            bounds = [None if args.get(k) is None else _instant_ns(str(args[k])) for k in ("from", "to")]
            model = load_model(cfg.model or DEFAULT_MANIFEST)
            history = FeatureHistory(path, list(cfg.signals), cfg.history_days, reset_on_change=False)
            try:
                cal = recalibrate(
                    cfg,
                    history,
                    CalibrationStore(state_dir, name),
                    model,
                    window=int(model.manifest.extra.get("window", 32)),
                    model_version=model.version,
                    from_ns=bounds[0],
                    to_ns=bounds[1],
                )
            finally:
                history.close()
        except (ValueError, ModelError) as exc:
            raise CommandFailedError(str(exc)) from None
        return {
            "pump": name,
            "version": cal.version,
            "rows": cal.n_samples,
            "threshold": round(cal.threshold, 6),
        }

    async def calibrate(name: str, args: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(calibrate_blocking, name, args)

    return calibrate


def model_slots(processors: list[Processor]) -> dict[str, Any]:
    """The swappable models, by the slot name `model_update` commands use ("leak-<device>")."""
    slots = {p.name.replace(":", "-"): getattr(p, "slot", None) for p in processors}
    return {name: slot for name, slot in slots.items() if slot is not None}


def build_command_channel(
    config: Config, drivers: Mapping[str, Driver], slots: Mapping[str, Any] | None = None
) -> CommandWiring | None:
    """Signed commands from the centre, when the config trusts at least one operator key."""
    security = config.security
    if not security.operators:
        return None
    from water_edge.agent.remote.audit import AuditLog
    from water_edge.agent.remote.channel import CommandChannel
    from water_edge.agent.remote.handlers import Targets, build_handlers
    from water_edge.agent.remote.nonces import NonceStore
    from water_edge.agent.remote.processor import CommandProcessor
    from water_edge.agent.writes import WriteGuard

    state = config.gateway.state_dir
    audit = AuditLog(state / security.audit_log)
    # Only drivers with the write capability (Modbus TCP/RTU) can be targets of the guard.
    writers: dict[str, Any] = {n: d for n, d in drivers.items() if callable(getattr(d, "write", None))}
    wiring_agent: list[Any] = []
    restart: list[str] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        agent = wiring_agent[0]
        return dict(await agent.read_now(devices))

    def request_restart(reason: str) -> None:
        restart.append(reason)
        wiring_agent[0].request_stop()

    targets = Targets(
        config_path=config.source,
        models_dir=state / "models",
        read_now=read_now,
        request_restart=request_restart,
        model_slots=dict(slots or {}),
        calibrate=pump_calibrator(config),
        writer=WriteGuard(config.writes, writers, audit) if config.writes.enabled else None,
    )
    processor = CommandProcessor(
        security,
        site=config.gateway.site,
        gateway=config.gateway.id,
        nonces=NonceStore(state / security.nonce_db),
        audit=audit,
        handlers=build_handlers(targets),
    )
    channel: list[CommandChannel] = []

    async def handle(topic_suffix: str, payload: bytes) -> None:
        await channel[0](topic_suffix, payload)

    def bind(agent: Any) -> None:
        wiring_agent.append(agent)
        channel.append(CommandChannel(processor, agent.emit))

    return CommandWiring(handle, processor.stats, bind, restart)
