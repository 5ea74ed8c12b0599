"""Wires the agent together on one asyncio loop and runs it until SIGTERM/SIGINT, then drains.

Order of shutdown matters for the no-loss promise: stop the pollers, commit what the pipeline
holds, let the uplink wait (briefly) for in-flight PUBACKs, then close the outbox. Anything not
acknowledged by then stays in the outbox and is sent after the next start.

Under systemd (`Type=notify`) the agent reports READY=1 once it runs, STATUS= every refresh
(buffer depth, uplink state), STOPPING=1 on the way out, and WATCHDOG=1 only while the pipeline's
flush loop and the uplink's loop both make progress (`agent.watchdog`).

Processors (analytics, `core.processor.Processor`: `name`, `async run(source, emit)`, `health()`)
each get their own lossless bounded `ReadingFeed` (see `agent.pipeline`), limited to the streams
they name when they have the `WantsStreams` capability, and are restarted with backoff if they raise.

`status_document()` gathers every part's typed health into the `agent.status_document.StatusDocument`
that the status socket serves (`snapshot()`, as JSON) and `edge-agent status` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from water_edge.agent import __version__, locate, pushed_models
from water_edge.agent.assembly import (
    EXIT_RESTART,
    build_command_channel,
    build_drivers,
    build_processors,
    model_slots,
)
from water_edge.agent.board_change import BoardStatus, board_check, this_board
from water_edge.agent.clock_sync import RESTAMPED_REASON, UNSYNC_REASON, ClockSync
from water_edge.agent.config import Config
from water_edge.agent.devices_down import DOWN, UP, DownDevices
from water_edge.agent.hangup import Hangup
from water_edge.agent.host_health import HostWatch
from water_edge.agent.identity_keeper import IdentityKeeper, claim_route
from water_edge.agent.learnt_tags import LearntTags, SpacedSaves
from water_edge.agent.live_config import ConfigPlan, plan_changes
from water_edge.agent.pipeline import Pipeline, ReadingFeed
from water_edge.agent.release_name import RELEASE
from water_edge.agent.remote.result import CommandCounts
from water_edge.agent.secrets import Secret, config_secret_refs, resolved
from water_edge.agent.serial_adapters import SerialPortStatus, check_serial_adapters
from water_edge.agent.state_backup import StateBackup
from water_edge.agent.state_restore import apply_pending
from water_edge.agent.status import StatusServer
from water_edge.agent.status_document import AgentStatus, ProcessorStatus, RejectedInputs, StatusDocument
from water_edge.agent.supervisor import DeviceRunner, bound_latest
from water_edge.agent.update.layout import Layout
from water_edge.agent.update.report import UpdateWatch, update_health
from water_edge.agent.update.state import UpdateFiles
from water_edge.agent.uplink.mqtt import CommandHandler, MqttUplink
from water_edge.agent.uplink.rbe import ExceptionFilter, ReportByException
from water_edge.agent.uplink.sparkplug import datatypes
from water_edge.agent.uplink.sparkplug.catalog import Catalog, DeviceSpec
from water_edge.agent.uplink.sparkplug.uplink import SparkplugUplink
from water_edge.agent.watchdog import Notifier, Watchdog, watchdog_interval_s
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.buffer.stats import BufferHealth, buffer_health
from water_edge.core.backoff import Backoff
from water_edge.core.errors import BufferError
from water_edge.core.processor import Processor, WantsStreams
from water_edge.core.quarantine import moved_aside_event
from water_edge.core.reading import Event, Reading, now_ns
from water_edge.core.redact import redact
from water_edge.core.tasks import cancel_all
from water_edge.core.timesync import AdjtimexSource, FlagFileSource, NoSource, SyncSource, best_source
from water_edge.drivers import registry
from water_edge.drivers.base import Driver, Streaming
from water_edge.provisioning.identity import DeviceIdentity

if TYPE_CHECKING:
    from water_edge.agent.metrics_http import MetricsServer

log = structlog.get_logger(__name__)

STATUS_REFRESH_S = 2.0


class Agent:
    # What run_agent's start-time checks found, for status (which looks at no file or device node).
    board: BoardStatus | None = None
    serial_ports: tuple[SerialPortStatus, ...] = ()

    def __init__(
        self,
        config: Config,
        outbox: AsyncOutbox,
        *,
        processors: Sequence[Processor] = (),
        on_command: CommandHandler | None = None,
        notifier: Notifier | None = None,
        drivers: Mapping[str, Driver] | None = None,
        command_stats: Callable[[], CommandCounts] | None = None,
    ) -> None:
        self.config = config
        # Found once per config, not per status request (the walk visits every device's tags).
        self._secret_refs: list[Secret] = config_secret_refs(config)
        self.outbox = outbox
        self.started_mono = time.monotonic()
        self.started_ns = now_ns()
        gw = config.gateway
        interval = watchdog_interval_s()
        # Report by exception sits between the pipeline and the outbox (agent.uplink.rbe).
        rbe = config.uplink.effective_rbe()
        self.exceptions = None if rbe is None else ExceptionFilter(rbe)
        built = drivers if drivers is not None else {}
        enabled = [device for device in config.devices if device.enabled]
        # only devices whose tags are known once read (meters, sound cards): the others' configs
        # name every tag (10,000 Modbus tags kept again would cost ~5 MiB for nothing)
        learning = [device for device in enabled if device.tag_names() is None]
        self.learnt_tags = LearntTags(gw.state_dir / "learnt_tags.json", learning)
        self._learnt_saves = SpacedSaves(self.learnt_tags)
        self.runners = [
            DeviceRunner(
                device, built.get(device.name) or self._build_driver(device), self._on_readings, self.emit,
                learnt=self.learnt_tags if device in learning else None, on_learnt=self._learnt_saves.learnt,
            )
            for device in enabled
        ]  # fmt: skip
        self.down_devices = DownDevices(gw.state_dir / "devices_down.json")
        self.down_devices.keep_only({r.name for r in self.runners})
        for runner in self.runners:
            if (since := self.down_devices.since.get(runner.name)) is not None:
                runner.resume_down(since)
        beat_s = 1.0 if interval is None else interval / 3
        self.clock_sync = ClockSync(sync_source(config), interval_s=config.clock.check_interval_s)
        identity = config.security.identity
        self.identity = IdentityKeeper(
            identity,
            DeviceIdentity(gw.state_dir / identity.directory),
            common_name=gw.id,
            site=gw.site,
            emit=self.emit,
            route=claim_route(config.uplink),
        )
        self.uplink: MqttUplink | SparkplugUplink
        if config.uplink.encoding == "sparkplug_b":
            self.uplink = self._sparkplug_uplink(on_command, beat_s)
        else:
            self.uplink = MqttUplink(
                config.uplink,
                outbox,
                gw.site,
                gw.id,
                on_command=on_command,
                beat_s=beat_s,
                clock_synchronised=lambda: self.clock_sync.state.synchronised,
                epoch=outbox.epoch,
            )
        # Renewal over the uplink's connection: another one as the gateway would close it.
        tls = config.uplink.tls
        self.identity.share_uplink(self.uplink, None if tls is None else tls.cert_file)
        self.pipeline = Pipeline(
            outbox if self.exceptions is None else ReportByException(outbox, self.exceptions),
            self.uplink.notify,
            flush_interval_s=config.buffer.flush_interval_ms / 1000,
            batch_max_readings=config.buffer.batch_max_readings,
            max_pending=config.buffer.max_pending_readings,
            sync=self.clock_sync,
        )

        async def restamp(step_ns: int, before_ns: int) -> tuple[int, int]:
            return await outbox.restamp(step_ns, before_ns, UNSYNC_REASON, RESTAMPED_REASON)

        self.clock_sync.bind(self.emit, restamp)
        self.host_watch = HostWatch(
            config.gateway.state_dir,
            emit=self.emit,
            accept_state_in_ram=config.gateway.accept_state_in_ram,
        )
        # The learnt state, sent to the centre over the uplink's connection (agent.state_backup).
        self.state_backup = StateBackup(
            config.state_backup, gw.state_dir, gw.site, gw.id, self.uplink, emit=self.emit
        )
        # A processor may name the streams it needs (`streams`); an empty set means no feed at all.
        self.processors = [
            (p, self.pipeline.feed(p.name, streams=p.streams if isinstance(p, WantsStreams) else None))
            for p in processors
        ]
        self._command_stats = command_stats
        self._stop: asyncio.Event | None = None
        self._processor_crashes = {p.name: 0 for p in processors}
        # Found while the agent was put together (a state file moved aside...), sent after agent_started.
        self.startup_events: list[Event] = []
        self.status = StatusServer(
            config.status_socket,
            self.snapshot,
            self.pipeline.tap,
            self.pipeline.untap,
            group=config.status.group,
        )
        # `[status] metrics`: GET /metrics for Prometheus, from the same snapshot (agent.metrics_export).
        self.metrics = metrics_server(config, self.snapshot)
        self.notifier = notifier or Notifier()
        self.watchdog = (
            Watchdog(
                self.notifier,
                {
                    "pipeline": lambda: self.pipeline.heartbeat,
                    # While it waits for the first certificate the uplink does not run; the
                    # enrolment's own beats show the loop is alive.
                    "uplink": lambda: self.uplink.heartbeat + self.identity.beats,
                },
                interval,
            )
            if interval is not None and self.notifier.enabled
            else None
        )
        self._buffer: BufferHealth | None = None
        self.update_files = UpdateFiles(gw.state_dir)
        self.update_watch = UpdateWatch(self.update_files, self.emit)
        # The A/B layout when this agent runs from it (not from a checkout or a plain venv).
        root = config.update.root
        self.layout = Layout(root) if (root / "current").is_symlink() else None

    def _sparkplug_uplink(self, on_command: CommandHandler | None, beat_s: float) -> SparkplugUplink:
        """The Edge Node: its devices' metrics from the config, current values from the filter."""
        config, gw, exceptions = self.config, self.config.gateway, self.exceptions
        catalog = Catalog(
            DeviceSpec(
                runner.name,
                [(tag.name, tag.unit) for tag in runner.driver.tags()],
                datatypes.declared(runner.config),
            )
            for runner in self.runners
        )
        return SparkplugUplink(
            config.uplink,
            self.outbox,
            gw.site,
            gw.id,
            catalog=catalog,
            values=dict if exceptions is None else exceptions.current,
            device_states=lambda: {r.name: r.stats.state != "down" for r in self.runners},
            bdseq_path=gw.state_dir / "sparkplug-bdseq",
            on_command=on_command,
            beat_s=beat_s,
        )

    @staticmethod
    def _build_driver(device: Any) -> Driver:
        driver: Driver = registry.build(device.kind, device)
        return driver

    async def _on_readings(self, stream: str, readings: list[Reading]) -> None:
        await self.pipeline.submit(stream, readings)

    async def emit(self, event: Event) -> None:
        await self.pipeline.submit_event(event)
        if event.kind in (DOWN, UP) and self.down_devices.changed(event):
            await asyncio.to_thread(self.down_devices.save, dict(self.down_devices.since))

    def apply_config(self, new: Config) -> ConfigPlan:
        """Take `new` as the running config if every change in it can be applied live (see
        `agent.live_config`); otherwise change nothing and return the plan naming what needs a restart."""
        streaming = frozenset(r.name for r in self.runners if isinstance(r.driver, Streaming))
        plan = plan_changes(self.config, new, streaming=streaming)
        if plan.needs_restart:
            return plan
        for runner in self.runners:
            if runner.name in plan.poll_intervals:
                runner.set_poll_interval(plan.poll_intervals[runner.name])
        self.config = dataclasses.replace(new, source=self.config.source)
        self._secret_refs = config_secret_refs(self.config)
        log.info("config.applied_live", changes=list(plan.live))
        return plan

    def request_stop(self) -> None:
        if self._stop is not None:
            self._stop.set()

    async def read_now(self, devices: list[str] | None) -> dict[str, Any]:
        """The `read_now` command for the named devices (all when None), by their runners
        (`DeviceRunner.read_now`): a polled device read once more between two polls, submitted like
        a poll's; a streaming device answered from its latest readings, never read a second time."""
        result: dict[str, dict[str, Any]] = {}
        for runner in self.runners:
            if devices is None or runner.name in devices:
                result[runner.name] = await runner.read_now()
        for name in devices or ():
            result.setdefault(name, {"error": "no such device on this gateway (or not enabled)"})
        bound_latest(result)
        return dict(result)

    def status_document(self) -> StatusDocument:
        gw = self.config.gateway
        uplink = self.uplink.health()
        commands = uplink.commands
        return StatusDocument(
            agent=AgentStatus(
                version=__version__,
                pid=os.getpid(),
                site=gw.site,
                gateway=gw.id,
                config=str(self.config.source),
                started_ns=self.started_ns,
                uptime_s=round(time.monotonic() - self.started_mono, 1),
            ),
            drivers=tuple(runner.status() for runner in self.runners),
            pipeline=self.pipeline.health(),
            buffer=self._buffer,
            uplink=uplink,
            processors=tuple(
                ProcessorStatus(p.name, self._processor_crashes[p.name], feed.health(), p.health())
                for p, feed in self.processors
            ),
            watchdog=None if self.watchdog is None else self.watchdog.health(),
            rejected=RejectedInputs(
                # the status socket's and the metrics endpoint's: both answer from this document
                status_requests=self.status.bad_requests
                + (0 if self.metrics is None else self.metrics.rejected),
                commands=0 if commands is None else commands.rejected,
                commands_dropped=0 if commands is None else commands.dropped,
                undecodable_rows=uplink.encode_errors,
            ),
            commands=None if self._command_stats is None else self._command_stats(),
            update=update_health(__version__, self.update_files, self.layout),
            clock=self.clock_sync.health(),
            host=self.host_watch.health(),
            state_backup=self.state_backup.health(),
            certificate=self.identity.health(),
            board=self.board,
            serial_ports=self.serial_ports,
        )

    def snapshot(self) -> dict[str, Any]:
        """The status document as JSON, with every secret of the config cut out wherever it appears."""
        return dict(redact(self.status_document().to_json(), resolved(self._secret_refs)))

    async def _refresh_buffer_stats(self) -> None:
        """Status must answer instantly, so buffer figures are refreshed here, off the request path."""
        while True:
            try:
                stats = await self.outbox.stats()
            except BufferError as exc:
                # An I/O error or a lock on the card: status keeps the last figures; a damaged
                # file has already asked for the restart (`run_agent`). Never the agent's end.
                log.warning("buffer.stats_failed", error=str(exc))
            else:
                quarantined = self.outbox.quarantined
                self._buffer = buffer_health(stats, now_ns(), None if quarantined is None else quarantined[0])
                self.notifier.send(f"STATUS={self._status_line()}")
            await asyncio.sleep(STATUS_REFRESH_S)

    def _status_line(self) -> str:
        b = self._buffer
        up = sum(r.stats.state == "up" for r in self.runners)
        return (
            f"buffer {0 if b is None else b.rows} rows ({0 if b is None else b.used_pct} %), "
            f"uplink {self.uplink.health().summary()}, devices {up}/{len(self.runners)} up"
        )

    async def _uplink(self) -> None:
        """The uplink, once the gateway has a certificate (at first boot, after its enrolment)."""
        if self.identity.enrolling:
            log.info("uplink.waiting_for_enrolment")
            await self.identity.ready.wait()
        await self.uplink.run()

    async def _run_processor(self, processor: Processor, feed: ReadingFeed) -> None:
        backoff = Backoff(1.0, 60.0)
        while True:
            try:
                await processor.run(feed, self.emit)
            except Exception as exc:
                # Last resort for plug-in analytics: log, count, say so, restart after backoff.
                self._processor_crashes[processor.name] += 1
                log.exception("processor.crashed", processor=processor.name)
                await self.emit(
                    Event(
                        "processor_crashed",
                        processor.name,
                        now_ns(),
                        "warning",
                        detail={"error": f"{type(exc).__name__}: {exc}"},
                    )
                )
                await asyncio.sleep(backoff.next_delay())
            else:
                log.info("processor.finished", processor=processor.name)
                return

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        await self.status.start()
        if self.metrics is not None:
            # An address it cannot bind (the port in use) is logged and tried again: the agent runs on.
            await self.metrics.start()
        # `edge-agent status` finds the agent without its config (agent.locate).
        announcement = locate.announce(self.config.status_socket)
        log.info(
            "agent.started",
            version=__version__,
            release=RELEASE,
            devices=len(self.runners),
            buffer=str(self.config.buffer_path),
            broker=self.config.uplink.brokers_text(),
            watchdog_s=None if self.watchdog is None else self.watchdog.interval_s,
        )
        started = {"version": __version__} | ({} if RELEASE is None else {"release": RELEASE})
        await self.emit(Event("agent_started", "agent", now_ns(), "info", detail=started))
        if self.outbox.quarantined is not None:
            await self.emit(
                moved_aside_event("buffer_quarantined", "buffer", "alarm", self.outbox.quarantined)
            )
        for event in self.startup_events:
            await self.emit(event)
        try:
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(self.pipeline.run(), name="pipeline"),
                    tasks.create_task(self._uplink(), name="uplink"),
                    tasks.create_task(self.identity.run(), name="identity"),
                    tasks.create_task(self._refresh_buffer_stats(), name="buffer-stats"),
                    tasks.create_task(self.update_watch.run(), name="update-watch"),
                    tasks.create_task(self.clock_sync.run(), name="clock-sync"),
                    tasks.create_task(self.host_watch.run(), name="host-health"),
                ]
                backup = tasks.create_task(self.state_backup.run(), name="state-backup")
                background.append(backup)
                if self.watchdog is not None:
                    background.append(tasks.create_task(self.watchdog.run(), name="watchdog"))
                if self.metrics is not None and not self.metrics.listening:
                    background.append(tasks.create_task(self.metrics.keep_trying(), name="metrics-bind"))
                background += [
                    tasks.create_task(self._run_processor(p, feed), name=f"processor:{p.name}")
                    for p, feed in self.processors
                ]
                pollers = [
                    tasks.create_task(runner.run(), name=f"device:{runner.name}") for runner in self.runners
                ]
                self.notifier.send("READY=1", f"STATUS={self._status_line()}")
                await stop.wait()
                log.info("agent.stopping")
                self.notifier.send("STOPPING=1")
                # A backup cut short by the stop is no failure to report (nor sent after agent_stopped).
                backup.cancel()
                await cancel_all(pollers)
                await asyncio.gather(*pollers, return_exceptions=True)
                await self._learnt_saves.flush()
                await self.emit(Event("agent_stopped", "agent", now_ns(), "info"))
                await self.pipeline.flush()
                await self.uplink.stop()
                await cancel_all(background)
        finally:
            announcement.close()
            if self.metrics is not None:
                await self.metrics.close()
            await self.status.close()
            self.notifier.close()


def metrics_server(config: Config, snapshot: Callable[[], Mapping[str, Any]]) -> MetricsServer | None:
    """The `[status] metrics` endpoint (not listening yet), or None when it is off."""
    if (address := config.status.metrics_address()) is None:
        return None
    from water_edge.agent.metrics_http import MetricsServer

    return MetricsServer(*address, snapshot, tls=config.status.metrics_tls, auth=config.status.metrics_auth)


def sync_source(config: Config) -> SyncSource:
    """The `[clock] sync_source` the config names (see `core.timesync`)."""
    clock = config.clock
    if clock.sync_source == "none":
        return NoSource()
    if clock.sync_source == "timesyncd":
        return FlagFileSource(clock.sync_flag_file)
    if clock.sync_source == "adjtimex":
        return AdjtimexSource()
    return best_source()


def client_certificate(config: Config) -> Path:
    """The certificate the uplink presents: `[uplink.tls] cert_file`, else the device identity's."""
    tls = config.uplink.tls
    if tls is not None and tls.cert_file is not None:
        return tls.cert_file
    return DeviceIdentity(config.gateway.state_dir / config.security.identity.directory).cert_file


async def run_agent(config: Config) -> int:
    """Run the agent the config describes; the exit code is 0, or EXIT_RESTART when a signed
    restart command asked for one, SIGHUP found the config file loading (`hangup`), or the outbox
    was found damaged while in use (systemd's Restart=on-failure then starts it again; the new
    start moves a damaged outbox aside)."""
    state_dir = config.gateway.state_dir
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    if (mode := stat.S_IMODE(state_dir.stat().st_mode)) & ~0o750:
        state_dir.chmod(mode & 0o750)  # made by hand with a 022 umask: others read nothing in it
    # Before anything reads the state directory: a restore a signed command staged (agent.state_restore).
    restored = await asyncio.to_thread(apply_pending, state_dir, config.gateway.site, config.gateway.id)
    drivers = build_drivers(config)
    analytics = build_processors(config, drivers)
    commands = build_command_channel(config, drivers, analytics)
    buffer = config.buffer
    outbox = await AsyncOutbox.open(
        config.buffer_path,
        max_bytes=buffer.max_bytes,
        synchronous=buffer.synchronous,
        max_age_s=buffer.max_age_s,
        max_page_count=buffer.max_page_count,
        quarantine_unusable=True,
    )
    try:
        # Before the uplink is made (it reads the epoch): a card on another board sends under a new one.
        board = await board_check(
            state_dir,
            await asyncio.to_thread(this_board, config.gateway.board_id_file),
            outbox,
            client_certificate(config),
        )
        agent = Agent(
            config,
            outbox,
            processors=analytics.processors,
            drivers=drivers,
            on_command=None if commands is None else commands.handler,
            command_stats=None if commands is None else commands.stats,
        )
        agent.startup_events += restored + board.events
        agent.board = board.status
        serial = await asyncio.to_thread(check_serial_adapters, state_dir, config.devices)
        agent.startup_events += serial.events
        agent.serial_ports = serial.ports
        if commands is not None:
            commands.bind(agent)
        # Before the processors run: a pushed model is back in service from the first window.
        agent.startup_events += await pushed_models.restore(
            config.gateway.state_dir / pushed_models.MODELS_DIR, model_slots(analytics.processors)
        )
        stop = asyncio.Event()

        def outbox_damaged(reason: str) -> None:
            # Every append would fail from here on; the next start moves the file aside.
            log.critical("buffer.damaged_restarting", error=reason, exit_code=EXIT_RESTART)
            stop.set()

        outbox.on_damaged = outbox_damaged
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        hangup = Hangup(config.source, stop)
        loop.add_signal_handler(signal.SIGHUP, hangup)
        # What start built (config, tag maps, drivers, modules: ~200k objects at 10,000 tags) lives
        # until exit: frozen, the collector stops scanning it again at every full collection.
        gc.freeze()
        try:
            await agent.run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
    finally:
        await outbox.close()
    log.info("agent.stopped")
    if outbox.damaged is not None:
        return EXIT_RESTART
    if commands is not None and commands.restart_requested:
        log.info("agent.restart_requested", reason=commands.restart_requested[-1])
        return EXIT_RESTART
    if hangup.requested:
        return EXIT_RESTART
    return 0
