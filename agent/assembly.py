"""Builds the agent's optional parts from its config: drivers, analytics processors, the command channel.

Kept apart from `agent.runtime` so the runtime stays a wiring of generic parts (drivers, feeds,
processors, a command handler) and heavy imports (TFLite, numpy, the security stack) happen
only when the config asks for them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from water_edge.agent import processors as processor_kinds
from water_edge.agent import pushed_models
from water_edge.agent.config import Config
from water_edge.agent.remote.result import CommandCounts
from water_edge.core.errors import AgentError
from water_edge.core.processor import (
    Calibratable,
    HasModelSlot,
    ModelSlotLike,
    Processor,
    ProcessorContext,
    ProcessorFactory,
)
from water_edge.core.quarantine import moved_aside_event
from water_edge.drivers import registry
from water_edge.drivers.base import Driver, Writable

EXIT_RESTART = 75  # EX_TEMPFAIL: a restart asked for by command; systemd's Restart=on-failure obeys it


def build_drivers(config: Config) -> dict[str, Driver]:
    return {d.name: registry.build(d.kind, d) for d in config.devices if d.enabled}


@dataclass
class Analytics:
    """The configured processor kinds (factories) and the processors they built."""

    factories: list[ProcessorFactory]
    processors: list[Processor]


def build_processors(config: Config, drivers: Mapping[str, Driver]) -> Analytics:
    """Each `[[models.<kind>]]` list through its kind's factory (the config loader has validated it)."""
    streams = {d.name: d.stream_name for d in config.devices if d.enabled}
    tags = {d.name: d.tag_names() for d in config.devices if d.enabled}
    context = ProcessorContext(
        state_dir=config.gateway.state_dir, drivers=drivers, streams=streams, tags=tags
    )
    factories: list[ProcessorFactory] = []
    for kind, sections in config.models.items():
        factory = processor_kinds.load(kind)
        if factory is None:
            raise LookupError(kind)
        factories.append(factory.from_config(sections, context))
    return Analytics(factories, [p for f in factories for p in f.processors()])


def model_slots(processors: Iterable[Processor]) -> dict[str, ModelSlotLike]:
    """The swappable models, by the slot name `model_update` commands use ("leak-<device>")."""
    return {p.name.replace(":", "-"): p.slot for p in processors if isinstance(p, HasModelSlot)}


def calibration_targets(candidates: Iterable[object]) -> dict[str, Calibratable]:
    """The factories and processors that carry out a calibration command, by command type."""
    targets: dict[str, Calibratable] = {}
    for candidate in candidates:
        if not isinstance(candidate, Calibratable):
            continue
        command = candidate.calibration_command
        if command in targets:
            raise AgentError(f"two processors offer the {command} command")
        targets[command] = candidate
    return targets


@dataclass
class CommandWiring:
    """The command channel and what it needs from the running agent, bound after both exist.

    `handler` is the uplink's command handler; it names its size limit and answers oversized
    commands (`agent.uplink.commands.SizedCommandHandler`)."""

    handler: Any
    stats: Callable[[], CommandCounts]
    bind: Callable[[Any], None]
    restart_requested: list[str] = field(default_factory=list)


def build_command_channel(
    config: Config, drivers: Mapping[str, Driver], analytics: Analytics | None = None
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
    from water_edge.agent.state_restore import StateRestoreReceiver
    from water_edge.agent.update.receive import UpdateReceiver
    from water_edge.agent.update.state import UpdateFiles
    from water_edge.agent.writes import WriteGuard

    analytics = analytics or Analytics([], [])
    state = config.gateway.state_dir
    audit = AuditLog(state / security.audit_log, max_bytes=security.audit_max_bytes, keep=security.audit_keep)
    # Only drivers with the write capability (Modbus TCP/RTU) can be targets of the guard.
    writers = {n: d for n, d in drivers.items() if isinstance(d, Writable)}
    wiring_agent: list[Any] = []
    restart: list[str] = []

    async def read_now(devices: list[str] | None) -> dict[str, Any]:
        agent = wiring_agent[0]
        return dict(await agent.read_now(devices))

    def request_restart(reason: str) -> None:
        restart.append(reason)
        wiring_agent[0].request_stop()

    def apply_config(new: Any) -> Any:
        return wiring_agent[0].apply_config(new)

    async def state_backup(force: bool) -> dict[str, Any]:
        from water_edge.agent.remote.result import CommandFailedError
        from water_edge.agent.state_backup import BackupCommandError

        try:
            return dict(await wiring_agent[0].state_backup.on_command(force))
        except BackupCommandError as exc:
            raise CommandFailedError(str(exc)) from None

    targets = Targets(
        config_path=config.source,
        models_dir=state / pushed_models.MODELS_DIR,
        read_now=read_now,
        request_restart=request_restart,
        model_slots=model_slots(analytics.processors),
        calibrations=calibration_targets([*analytics.factories, *analytics.processors]),
        writer=WriteGuard(config.writes, writers, audit) if config.writes.enabled else None,
        config_rights={op.name: frozenset(op.config_rights) for op in security.operators},
        update=UpdateReceiver(config.update, UpdateFiles(state)),
        apply_config=apply_config,
        state_restore=StateRestoreReceiver(
            state,
            config.gateway.site,
            config.gateway.id,
            max_bytes=config.state_backup.max_size,
            request_restart=request_restart,
        ),
        state_backup=state_backup,
    )
    nonces = NonceStore(state / security.nonce_db)
    # Damage found while running: restart, so that the start moves the store aside and resets it.
    nonces.on_damaged = lambda reason: request_restart(f"nonce store damaged: {reason}")
    processor = CommandProcessor(
        security,
        site=config.gateway.site,
        gateway=config.gateway.id,
        nonces=nonces,
        audit=audit,
        handlers=build_handlers(targets),
        # A download may take all of download_timeout_s; checking and staging it, a little more.
        time_limits={"update": config.update.download_timeout_s + 60.0},
    )
    channel = CommandChannel(processor)

    def bind(agent: Any) -> None:
        wiring_agent.append(agent)
        channel.bind(agent.emit)
        if nonces.quarantined is not None:
            agent.startup_events.append(
                moved_aside_event(
                    "nonce_store_quarantined",
                    "commands",
                    "alarm",
                    nonces.quarantined,
                    refuses_issued_until=processor.refuses_issued_until,
                )
            )

    return CommandWiring(channel, processor.stats, bind, restart)
