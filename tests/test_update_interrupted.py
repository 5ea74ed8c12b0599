"""The updater interrupted, asked twice or out of disk: a power cut (kill -9) just before or right
after it switched `current`, the same bundle sent again, a disk that fills while the bundle is
unpacked; and a release its supervisor keeps restarting. Either way the gateway ends on a release
that was judged, and the centre hears every outcome.

The new release is installed beforehand as a complete release directory (its `release.json`
written, its `edge-agent` this venv's), as the updater itself leaves one after building it, so the
updater goes straight to the new release's check-config, the switch and the health check; no agent
answers on the status socket, so the new release never passes and is rolled back.
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.testing import write_agent_config
from water_edge.agent.update.bundle import build_bundle, public_key_text
from water_edge.agent.update.layout import Layout, Release
from water_edge.agent.update.report import UpdateWatch
from water_edge.agent.update.service import CommandService, RestartCount
from water_edge.agent.update.state import UpdateFiles, UpdateState
from water_edge.agent.update.updater import Updater
from water_edge.core.reading import Event

pytestmark = pytest.mark.slow

WINDOW_S = 2.0  # the health window: no agent answers, so each judged release waits it out


class PowerCutAtSwitch(Layout):
    """The layout, with the power cut the instant before or after `current` names the new release."""

    after = True

    def switch(self, target: Path) -> Release | None:
        old = super().switch(target) if self.after else None
        os.kill(os.getpid(), signal.SIGKILL)
        return old


class PowerCutBeforeSwitch(PowerCutAtSwitch):
    after = False


def _gateway(tmp: Path, wheel_bytes: int = 1700, *, built: bool = True) -> tuple[Path, Path, Path, str]:
    """Install root (0.1.0 current, 0.2.0 built beside it), config, keys file, and the 0.2.0
    bundle's sha256, spooled by the agent as a signed command would have it."""
    root = tmp / "opt"
    (root / "releases").mkdir(parents=True, exist_ok=True)
    (root / "releases" / "0.1.0-dev").symlink_to(Path(sys.prefix))
    (root / "current").symlink_to("releases/0.1.0-dev")
    key = Ed25519PrivateKey.generate()
    keys = tmp / "release-keys"
    keys.write_text(f"rel-test {public_key_text(key)}\n")
    wheel = tmp / "w" / "water_edge_agent-0.2.0-py3-none-any.whl"
    wheel.parent.mkdir()
    wheel.write_bytes(os.urandom(wheel_bytes))
    files = UpdateFiles(tmp / "state")
    files.spool.mkdir(parents=True)
    bundle = tmp / "agent-0.2.0.tar"
    python = ".".join(platform.python_version_tuple()[:2])
    build_bundle([wheel], [], key, "rel-test", bundle, python=python, config_schema=(1, 1), outbox_schema=1)
    sha = hashlib.sha256(bundle.read_bytes()).hexdigest()
    if built:
        release = root / "releases" / f"0.2.0-{sha[:8]}"
        (release / "bin").mkdir(parents=True)
        (release / "bin" / "edge-agent").symlink_to(Path(sys.prefix) / "bin" / "edge-agent")
        (release / "release.json").write_text('{"version": "0.2.0"}')
    config = write_agent_config(tmp, extra=f'[update]\nroot = "{root}"\nrelease_keys = "{keys}"\n')
    return root, config, keys, sha


def _updater(
    tmp: Path, layout: Layout, config: Path, keys: Path, service: CommandService | None = None
) -> Updater:
    return Updater(
        layout=layout,
        files=UpdateFiles(tmp / "state"),
        keys_file=keys,
        config_path=config,
        status_socket=tmp / "state" / "status.sock",
        service=service or CommandService(["true"]),
        audit_path=tmp / "state" / "audit.log",
        poll_s=0.2,
    )


def _link(root: Path, name: str) -> str | None:
    """The release `current` or `previous` names (not resolved: the first release is a link itself)."""
    release = Layout(root).release(root / name)
    return None if release is None else release.name


def _request(tmp: Path, sha: str, window_s: float = WINDOW_S) -> None:
    """What the agent does for a signed `update` command: spool the bundle, write the request."""
    files = UpdateFiles(tmp / "state")
    shutil.copyfile(tmp / "agent-0.2.0.tar", files.spool / f"{sha}.tar")
    files.write_request(
        {"action": "apply", "bundle": str(files.spool / f"{sha}.tar"), "sha256": sha,
         "requested_by": "command c1 from release-ops", "health_window_s": window_s}
    )  # fmt: skip


def _apply_until_the_power_cut(tmp: Path, config: Path, keys: Path, after: bool) -> None:
    layout = (PowerCutAtSwitch if after else PowerCutBeforeSwitch)(tmp / "opt")
    _updater(tmp, layout, config, keys).run()


def _reported(tmp: Path, watch: UpdateWatch, events: list[Event]) -> list[dict[str, Any]]:
    asyncio.run(watch.check())
    return [e.detail for e in events if e.kind == "update"]


def _cut_power_at_the_switch(tmp: Path, config: Path, keys: Path, sha: str, *, after: bool) -> None:
    _request(tmp, sha)
    child = multiprocessing.get_context("fork").Process(
        target=_apply_until_the_power_cut, args=(tmp, config, keys, after)
    )
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL


def test_a_power_cut_right_after_the_switch_is_judged_at_boot_and_rolled_back(tmp_path: Path) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    _cut_power_at_the_switch(tmp_path, config, keys, sha, after=True)
    assert _link(root, "current") == f"0.2.0-{sha[:8]}"  # switched, never judged

    # The boot: edge-agent-update.service runs once and finds the interrupted update.
    state = _updater(tmp_path, Layout(root), config, keys).run()
    assert state.phase == "rolled_back", state
    assert state.reason is not None
    assert "health check failed" in state.reason
    assert _link(root, "current") == "0.1.0-dev"
    assert _link(root, "previous") is None  # as before the update: the failed release is no rollback target
    assert list(Layout(root).failed_releases()) == [f"0.2.0-{sha[:8]}"]


def test_a_power_cut_just_before_the_switch_ends_failed_with_nothing_switched(tmp_path: Path) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    _cut_power_at_the_switch(tmp_path, config, keys, sha, after=False)
    state = _updater(tmp_path, Layout(root), config, keys).run()
    assert state.phase == "failed", state
    assert state.reason == "interrupted before the switch; nothing was switched"
    assert _link(root, "current") == "0.1.0-dev"
    assert _link(root, "previous") is None  # not the release before it: nothing to roll back


def test_the_same_bundle_sent_twice_reports_both_outcomes(tmp_path: Path) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    watch = UpdateWatch(UpdateFiles(tmp_path / "state"), emit)
    for attempt in (1, 2):
        _request(tmp_path, sha)
        state = _updater(tmp_path, Layout(root), config, keys).run()
        assert state.phase == "rolled_back", state
        assert _link(root, "current") == "0.1.0-dev"
        reported = _reported(tmp_path, watch, events)
        assert [(e["id"], e["outcome"]) for e in reported] == [(sha, "rolled_back")] * attempt
        assert list(UpdateFiles(tmp_path / "state").spool.iterdir()) == []  # reported: bundle dropped
    assert orjson.loads((tmp_path / "state" / "update" / "reported.json").read_bytes())["id"] == sha


def _small_disk(mount: Path) -> Iterator[Path]:
    """A 512 KiB tmpfs at `mount` (root only), for a disk that fills up during an update."""
    mount.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=False)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_staging(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path / "opt" / "staging")


@pytest.fixture
def small_releases(tmp_path: Path) -> Iterator[Path]:
    yield from _small_disk(tmp_path / "opt" / "releases")


def test_a_disk_full_while_unpacking_fails_the_update_and_frees_the_space(
    tmp_path: Path, small_staging: Path
) -> None:
    root, config, keys, sha = _gateway(tmp_path, wheel_bytes=300 * 1024)  # the copy fits, twice not
    _request(tmp_path, sha)
    state = _updater(tmp_path, Layout(root), config, keys).run()
    assert state.phase == "failed", state
    assert state.reason is not None
    assert "No space left on device" in state.reason, state.reason
    assert _link(root, "current") == "0.1.0-dev"
    assert list(small_staging.iterdir()) == []  # the copy and the half-unpacked wheels are gone
    assert shutil.disk_usage(small_staging).used < 64 * 1024


def test_a_disk_full_while_building_the_release_fails_the_update_and_frees_the_space(
    tmp_path: Path, small_releases: Path
) -> None:
    root, config, keys, sha = _gateway(tmp_path, built=False)
    _request(tmp_path, sha)
    state = _updater(tmp_path, Layout(root), config, keys).run()
    assert state.phase == "failed", state
    assert state.reason is not None
    assert state.reason.startswith("creating the virtualenv failed"), state.reason
    assert _link(root, "current") == "0.1.0-dev"
    assert [p.name for p in small_releases.iterdir()] == ["0.1.0-dev"]  # no half-built release
    assert shutil.disk_usage(small_releases).used < 64 * 1024


def test_a_reported_bundle_stays_while_a_request_the_agent_cannot_read_waits(tmp_path: Path) -> None:
    """The agent drops a finished update's bundle unless a new request names it. A request it cannot
    read (root's 0640 file from `update apply`; here a FIFO, which it refuses to read alike) was
    taken for none, and the bundle the technician had just asked for again was removed."""
    files = UpdateFiles(tmp_path / "state")
    sha = "ab" * 32
    files.write_state(UpdateState(id=sha, phase="rolled_back", started_ns=1))
    files.spool.mkdir(parents=True)
    (files.spool / f"{sha}.tar").write_bytes(b"bundle")
    os.mkfifo(files.request)
    events: list[Event] = []

    async def emit(event: Event) -> None:
        events.append(event)

    assert [e["outcome"] for e in _reported(tmp_path, UpdateWatch(files, emit), events)] == ["rolled_back"]
    assert (files.spool / f"{sha}.tar").exists()
    files.request.unlink()  # the updater took it, and the next attempt ended: now the bundle goes
    files.write_state(UpdateState(id=sha, phase="failed", started_ns=2))
    reported = _reported(tmp_path, UpdateWatch(files, emit), events)
    assert [e["outcome"] for e in reported] == ["rolled_back", "failed"]
    assert not (files.spool / f"{sha}.tar").exists()


def _count_restarts(counter: Path, start: int, every_s: float, stop: threading.Event) -> None:
    """systemd's part for a release that exits at start: NRestarts goes up once every RestartSec."""
    restarts = start
    while not stop.wait(every_s):
        restarts += 1
        counter.write_text(f"{restarts}\n")


def test_a_release_its_supervisor_keeps_restarting_is_rolled_back_long_before_its_window_ends(
    tmp_path: Path,
) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    _request(tmp_path, sha, window_s=300)  # the default window: five minutes without a reading
    counter = tmp_path / "n-restarts"
    counter.write_text("7\n")  # restarts of the old release before the update count for nothing
    service = CommandService(["true"], ["cat", str(counter)])
    stop = threading.Event()
    supervisor = threading.Thread(target=_count_restarts, args=(counter, 7, 0.5, stop), daemon=True)
    supervisor.start()
    try:
        state = _updater(tmp_path, Layout(root), config, keys, service).run()
    finally:
        stop.set()
        supervisor.join()
    assert state.phase == "rolled_back"
    assert state.reason is not None
    assert state.reason.startswith("health check failed: the agent exited and was restarted 3 times in ")
    assert "(of a 300 s window): no answer on the status socket" in state.reason, state.reason
    assert _link(root, "current") == "0.1.0-dev"


def test_a_release_without_a_restart_count_is_judged_on_its_window_alone(tmp_path: Path) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    _request(tmp_path, sha)
    # A supervisor that gives no count (another init system, or no `--restarts-command`).
    service = CommandService(["true"], ["sh", "-c", "echo not-a-number"])
    assert service.restarts() is None
    state = _updater(tmp_path, Layout(root), config, keys, service).run()
    assert state.phase == "rolled_back"
    assert state.reason is not None
    assert state.reason.startswith(f"health check failed within {WINDOW_S:g} s: "), state.reason
    assert _link(root, "current") == "0.1.0-dev"


def test_rollback_after_restarts_0_leaves_a_crash_loop_to_the_window(tmp_path: Path) -> None:
    root, config, keys, sha = _gateway(tmp_path)
    _request(tmp_path, sha)
    counter = tmp_path / "n-restarts"
    counter.write_text("0\n")
    updater = _updater(tmp_path, Layout(root), config, keys, CommandService(["true"], ["cat", str(counter)]))
    updater.rollback_after_restarts = 0  # [update] rollback_after_restarts = 0
    stop = threading.Event()
    supervisor = threading.Thread(target=_count_restarts, args=(counter, 0, 0.1, stop), daemon=True)
    supervisor.start()
    try:
        state = updater.run()
    finally:
        stop.set()
        supervisor.join()
    assert int(counter.read_text()) >= 10  # restarted far more than 3 times while it was judged
    assert state.phase == "rolled_back"
    assert state.reason is not None
    assert state.reason.startswith(f"health check failed within {WINDOW_S:g} s: "), state.reason


def test_the_restart_count_goes_on_across_a_reset_of_the_supervisors_counter(tmp_path: Path) -> None:
    counter = tmp_path / "n-restarts"
    counter.write_text("5\n")
    count = RestartCount(CommandService(["true"], ["cat", str(counter)]))
    assert count.since_start() == 0
    counter.write_text("7\n")
    assert count.since_start() == 2
    # `systemctl restart` started the unit by hand: systemd begins NRestarts again from 0.
    counter.write_text("0\n")
    assert count.since_start() == 2
    counter.write_text("1\n")
    assert count.since_start() == 3
    counter.unlink()  # unreadable for a moment: what was counted stays
    assert count.since_start() == 3


def test_the_restart_count_comes_from_systemd_only_when_systemd_restarts_the_agent() -> None:
    assert CommandService.parse(None).restarts_argv == (
        "systemctl", "show", "--property=NRestarts", "--value", "edge-agent.service",
    )  # fmt: skip
    assert CommandService.parse("/usr/local/bin/restart-agent").restarts_argv is None
    custom = CommandService.parse("svc -t /service/agent", "cat /run/agent-restarts")
    assert custom.argv == ("svc", "-t", "/service/agent")
    assert custom.restarts_argv == ("cat", "/run/agent-restarts")
