"""Wires the agent together on one asyncio loop and runs it until SIGTERM/SIGINT, then drains.

Order of shutdown matters for the no-loss promise: stop the pollers, commit what the pipeline
holds, let the uplink wait (briefly) for in-flight PUBACKs, then close the outbox. Anything not
acknowledged by then stays in the outbox and is sent after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import structlog

from agent import __version__
from agent.config import Config
from agent.model import Event, Reading, now_ns
from agent.pipeline import Pipeline
from agent.status import StatusServer
from agent.supervisor import DeviceRunner
from agent.uplink.mqtt import MqttUplink
from buffer.async_outbox import AsyncOutbox
from drivers import registry
from drivers.base import Driver

log = structlog.get_logger(__name__)


class Agent:
    def __init__(self, config: Config, outbox: AsyncOutbox) -> None:
        self.config = config
        self.outbox = outbox
        self.started_mono = time.monotonic()
        self.started_ns = now_ns()
        gw = config.gateway
        self.uplink = MqttUplink(config.uplink, outbox, gw.site, gw.id)
        self.pipeline = Pipeline(
            outbox,
            self.uplink.notify,
            flush_interval_s=config.buffer.flush_interval_ms / 1000,
            batch_max_readings=config.buffer.batch_max_readings,
            max_pending=config.buffer.max_pending_readings,
        )
        self.runners = [
            DeviceRunner(device, self._build_driver(device), self._on_readings, self.emit)
            for device in config.devices
            if device.enabled
        ]
        self.status = StatusServer(
            config.status_socket, self.snapshot, self.pipeline.tap, self.pipeline.untap
        )
        self._buffer_stats: dict[str, Any] = {}

    @staticmethod
    def _build_driver(device: Any) -> Driver:
        driver: Driver = registry.build(device.kind, device)
        return driver

    async def _on_readings(self, stream: str, readings: list[Reading]) -> None:
        await self.pipeline.submit(stream, readings)

    async def emit(self, event: Event) -> None:
        await self.pipeline.submit_event(event)

    def snapshot(self) -> dict[str, Any]:
        gw = self.config.gateway
        return {
            "agent": {
                "version": __version__,
                "pid": os.getpid(),
                "site": gw.site,
                "gateway": gw.id,
                "config": str(self.config.source),
                "started_ns": self.started_ns,
                "uptime_s": round(time.monotonic() - self.started_mono, 1),
            },
            "drivers": [runner.snapshot() for runner in self.runners],
            "pipeline": {**vars(self.pipeline.stats), "pending": self.pipeline.pending},
            "buffer": self._buffer_stats,
            "uplink": self.uplink.health(),
        }

    async def _refresh_buffer_stats(self) -> None:
        """Status must answer instantly, so buffer figures are refreshed here, off the request path."""
        while True:
            stats = await self.outbox.stats()
            self._buffer_stats = {
                "rows": stats.rows,
                "readings": stats.readings,
                "bytes": stats.bytes,
                "max_bytes": stats.max_bytes,
                "oldest_age_s": (
                    None if stats.oldest_created_ns is None
                    else round((now_ns() - stats.oldest_created_ns) / 1e9, 1)
                ),
                "evicted_rows": stats.evicted_rows,
                "evicted_readings": stats.evicted_readings,
            }
            await asyncio.sleep(2.0)

    async def run(self, stop: asyncio.Event) -> None:
        await self.status.start()
        log.info(
            "agent.started",
            version=__version__,
            devices=len(self.runners),
            buffer=str(self.config.buffer_path),
            broker=f"{self.config.uplink.host}:{self.config.uplink.port}",
        )
        await self.emit(Event("agent_started", "agent", now_ns(), "info",
                              detail={"version": __version__}))
        try:
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(self.pipeline.run(), name="pipeline"),
                    tasks.create_task(self.uplink.run(), name="uplink"),
                    tasks.create_task(self._refresh_buffer_stats(), name="buffer-stats"),
                ]
                pollers = [
                    tasks.create_task(runner.run(), name=f"device:{runner.name}")
                    for runner in self.runners
                ]
                await stop.wait()
                log.info("agent.stopping")
                for task in pollers:
                    task.cancel()
                await asyncio.gather(*pollers, return_exceptions=True)
                await self.emit(Event("agent_stopped", "agent", now_ns(), "info"))
                await self.pipeline.flush()
                await self.uplink.stop()
                for task in background:
                    task.cancel()
        finally:
            await self.status.close()


async def run_agent(config: Config) -> int:
    config.gateway.state_dir.mkdir(parents=True, exist_ok=True)
    outbox = await AsyncOutbox.open(
        config.buffer_path,
        max_bytes=config.buffer.max_bytes,
        synchronous=config.buffer.synchronous,
    )
    try:
        agent = Agent(config, outbox)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await agent.run(stop)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
    finally:
        await outbox.close()
    log.info("agent.stopped")
    return 0
