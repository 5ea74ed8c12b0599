"""Shared fixtures: a real Mosquitto per test on a free port, a real outbox, uplink runners.

The helpers these build on live in tests/support/ (tests/README.md): tests import them from there,
never from this file.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from tests.support.broker import Mosquitto
from tests.support.ext4_card import Card, ext4_card
from tests.support.testing import PORT_CLAIMS_ENV
from tests.support.uplink import GATEWAY, SITE, Running, StartUplink, StateLog
from tests.support.wmbus_air import Air, air_started
from water_edge.agent.uplink.config import MqttConfig
from water_edge.agent.uplink.interfaces import LeaseAckOutbox
from water_edge.agent.uplink.mqtt import MqttUplink
from water_edge.buffer.async_outbox import AsyncOutbox
from water_edge.core.blas_threads import prefer_one_blas_thread
from water_edge.core.mounts import in_ram

# What `edge-agent` and `edge-sim` do for their processes, for the code the tests run in their own
# (numpy is not loaded yet: nothing above imports it). Workers inherit the environment.
prefer_one_blas_thread()

_OWN_PORT_CLAIMS = pytest.StashKey[str]()


def _temp_dir_on_disk() -> None:
    """Agents the tests start keep their state under pytest's temporary directory. Where that is in
    RAM (Debian 13's /tmp is a tmpfs) each would say its state is lost at reboot and be degraded, as
    it should on a gateway: the run's temporary files go to /var/tmp (on disk, and short enough for
    a status socket's path) instead. Set before pytest or xdist's workers pick a directory."""
    if in_ram(Path(tempfile.gettempdir())) is None:
        return
    disk = Path("/var/tmp")
    if disk.is_dir() and os.access(disk, os.W_OK) and in_ram(disk) is None:
        os.environ["TMPDIR"] = str(disk)
        tempfile.tempdir = None  # gettempdir() reads TMPDIR again


def _local_time_in_utc() -> None:
    """Tests build readings from naive datetimes (`datetime(2024, 1, 21).timestamp()`), which the C
    library reads in the process's zone: on a machine set to another zone than UTC their nights
    moved and 13 flow tests failed (seen with TZ=Pacific/Chatham). The run keeps UTC, whatever the
    machine's zone; a test about zones sets TZ itself (the agent reads its zone from TZ)."""
    os.environ["TZ"] = "UTC"
    time.tzset()


def pytest_configure(config: pytest.Config) -> None:
    """The first process of a run (xdist's controller, or pytest alone) keeps local time in UTC,
    puts the run's temporary files on disk and makes the directory in which `free_port` claims
    ports; the workers it starts inherit all three through the environment."""
    _local_time_in_utc()
    _temp_dir_on_disk()
    if PORT_CLAIMS_ENV not in os.environ:
        os.environ[PORT_CLAIMS_ENV] = tempfile.mkdtemp(prefix="water-edge-ports-")
        config.stash[_OWN_PORT_CLAIMS] = os.environ[PORT_CLAIMS_ENV]


def pytest_unconfigure(config: pytest.Config) -> None:
    claims = config.stash.get(_OWN_PORT_CLAIMS, None)
    if claims is not None:
        shutil.rmtree(claims, ignore_errors=True)
        del os.environ[PORT_CLAIMS_ENV]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with `slow` tests run first. `make test` hands each worker a file at a time in
    this order (`--no-loadscope-reorder`), so a long file started last cannot leave one worker
    running alone at the end: with two workers that tail was a minute of the suite's ten."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: file order stays within each group


@pytest.fixture(autouse=True, scope="session")
def _own_runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents the tests start announce their status socket (agent.locate) in a directory of the
    session's own, never in the machine's /run/edge-agent where a real agent or a demo may be."""
    before = os.environ.get("EDGE_AGENT_RUNTIME_DIR")
    os.environ["EDGE_AGENT_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("runtime"))
    yield
    if before is None:
        del os.environ["EDGE_AGENT_RUNTIME_DIR"]
    else:
        os.environ["EDGE_AGENT_RUNTIME_DIR"] = before


@pytest.fixture(autouse=True, scope="session")
def _no_systemd_units() -> Iterator[None]:
    """On a machine that runs systemd (most CI machines and laptops) `edge-agent status` would add
    what systemd says of that machine's edge-agent.service (agent.service_state) to every 'no
    agent answers': the agents the tests start are not that unit. As on a machine without systemd,
    unless a test says otherwise (tests/test_status_service_state.py)."""
    from water_edge.agent import service_state

    before = os.environ.get(service_state.SYSTEMD_DIR_ENV)
    # a path no user can find, nor make: the CLI as `nobody` is started by some tests
    os.environ[service_state.SYSTEMD_DIR_ENV] = "/dev/null/no-systemd"
    yield
    if before is None:
        del os.environ[service_state.SYSTEMD_DIR_ENV]
    else:
        os.environ[service_state.SYSTEMD_DIR_ENV] = before


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """In-process CLI tests configure structlog (and the standard library's logging, which
    `core.logs` routes through it) onto their captured stderr; never let that leak."""
    import logging

    from water_edge.core import logs

    root = logging.getLogger()
    level = root.level
    yield
    structlog.reset_defaults()
    for handler in list(root.handlers):
        if isinstance(handler, logs.RoutedHandler):
            root.removeHandler(handler)
    root.setLevel(level)
    for name in logs.QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh anonymous Mosquitto on 127.0.0.1 and a free port; killed after the test."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
async def outbox(tmp_path: Path) -> AsyncIterator[AsyncOutbox]:
    """A real SQLite outbox in the test's temporary directory."""
    async with await AsyncOutbox.open(
        tmp_path / "outbox.db", max_bytes=256 * 1024 * 1024, synchronous="normal"
    ) as box:
        yield box


@pytest.fixture
async def start_uplink() -> AsyncIterator[StartUplink]:
    """`await start_uplink(config, outbox, **kw)` runs an uplink task; all are stopped at teardown."""
    running: list[Running] = []

    async def start(config: MqttConfig, box: LeaseAckOutbox, **kw: Any) -> Running:
        states = StateLog()
        uplink = MqttUplink(config, box, SITE, GATEWAY, on_state_change=states, **kw)
        run = Running(uplink, states, asyncio.create_task(uplink.run(), name="uplink"))
        running.append(run)
        return run

    yield start
    for run in running:
        await run.uplink.stop(drain_timeout_s=1.0)
        await asyncio.wait_for(run.task, 10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One real PostgreSQL for the session (tests/support/postgres.py); each test makes its own database."""
    from tests.support.postgres import Postgres

    with Postgres() as server:
        yield server


@pytest.fixture
def centre_db(postgres_server: Any, request: pytest.FixtureRequest) -> str:
    """A fresh database with the ingest's schema; its DSN."""
    import re
    import secrets

    from water_edge.centre.store import migrate

    name = re.sub(r"\W", "_", request.node.name)[:40].lower() + "_" + secrets.token_hex(3)
    dsn: str = postgres_server.create_db(name)
    migrate(dsn)
    return dsn


@pytest.fixture
async def air_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Air]]]:
    """`await air_factory(**options)`: firmware-sim's wireless meters on the air (tests/support/wmbus_air)."""
    async with air_started(tmp_path) as start:
        yield start


@pytest.fixture
def card() -> Iterator[Card]:
    """An ext4 card on a loop device the test may fail and mend (`support/ext4_card.py`)."""
    with ext4_card() as mounted:
        yield mounted
