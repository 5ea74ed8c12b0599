"""The minimum release version a gateway installs (docs/updates.md, "The minimum version"): root's
floor against rollback attacks. An old release, validly signed, used to install over a newer one,
so whoever held the bundle of a release with a known hole could put a gateway back on it.

The root updater runs for real in a temporary A/B layout, on signed bundles spooled as the agent
spools them; releases are installed beforehand as complete release directories (their
`edge-agent` this venv's), as the updater itself leaves one after building it.
"""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import platform
import shutil
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.support.testing import write_agent_config
from tests.support.update_agents import release_agents
from water_edge.agent.cli import main
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.update.bundle import (
    BundleError,
    build_bundle,
    load_release_keys,
    public_key_text,
    read_manifest,
)
from water_edge.agent.update.layout import Layout
from water_edge.agent.update.service import CommandService
from water_edge.agent.update.state import UpdateFiles, UpdateState
from water_edge.agent.update.updater import Updater
from water_edge.agent.update.versions import ReleaseVersion, VersionError

PYTHON = ".".join(platform.python_version_tuple()[:2])


class Gateway:
    """An install root running `running`, root's release keys, the agent's state directory."""

    def __init__(self, tmp: Path, running: str) -> None:
        self.tmp = tmp
        self.root = tmp / "opt"
        self.layout = Layout(self.root)
        self.key = Ed25519PrivateKey.generate()
        self.keys = tmp / "release-keys"
        self.keys.write_text(f"rel-test {public_key_text(self.key)}\n")
        self.files = UpdateFiles(tmp / "state")
        self.files.spool.mkdir(parents=True)
        self.config = write_agent_config(
            tmp, extra=f'[update]\nroot = "{self.root}"\nrelease_keys = "{self.keys}"\n'
        )
        self.release(running, f"{running}-running")
        (self.root / "current").symlink_to(f"releases/{running}-running")

    def release(self, version: str, name: str) -> Path:
        """A complete release directory, as the updater leaves one."""
        path = self.root / "releases" / name
        (path / "bin").mkdir(parents=True)
        (path / "bin" / "edge-agent").symlink_to(Path(sys.prefix) / "bin" / "edge-agent")
        (path / "release.json").write_text(f'{{"version": "{version}"}}')
        return path

    def bundle(
        self,
        version: str,
        min_version: str | None = None,
        *,
        carried: Sequence[Path] = (),
        cached: Sequence[Path] = (),
    ) -> str:
        """A signed bundle of `version` (and the dependency wheels `carried`, naming `cached` ones:
        a thin bundle), spooled with its request, its release built beside the running one; its
        sha256."""
        folder = self.tmp / f"w-{version}"
        folder.mkdir()
        wheel = folder / f"water_edge_agent-{version}-py3-none-any.whl"
        wheel.write_bytes(f"the agent's wheel, {version}".encode() * 50)
        out = self.tmp / f"agent-{version}.tar"
        build_bundle(
            [wheel, *carried], list(cached), self.key, "rel-test", out, python=PYTHON, config_schema=(1, 1),
            outbox_schema=1, min_version=min_version,
        )  # fmt: skip
        sha = hashlib.sha256(out.read_bytes()).hexdigest()
        self.release(version, f"{version}-{sha[:8]}")
        shutil.copyfile(out, self.files.spool / f"{sha}.tar")
        self.files.write_request(
            {"action": "apply", "bundle": str(self.files.spool / f"{sha}.tar"), "sha256": sha,
             "requested_by": "command c1 from release-ops", "health_window_s": 1.0}
        )  # fmt: skip
        return sha

    def floor(self, text: str) -> Path:
        """root's floor file, as an operator or a release left it."""
        path = self.root / "min-version.json"
        path.write_text(text)
        return path

    def rollback_request(self) -> None:
        self.files.write_request({"action": "rollback", "requested_by": "edge-agent update rollback by tech"})

    def run(self, status_socket: Path | None = None, updater: type[Updater] = Updater) -> UpdateState:
        return updater(
            layout=self.layout,
            files=self.files,
            keys_file=self.keys,
            config_path=self.config,
            status_socket=status_socket or self.tmp / "state" / "status.sock",
            service=CommandService(["true"]),
            audit_path=self.tmp / "state" / "audit.log",
            poll_s=0.1,
        ).run()

    def current(self) -> str | None:
        release = self.layout.release(self.layout.current)
        return None if release is None else release.name


def test_an_old_signed_release_below_the_floor_is_refused_and_the_running_one_stays(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.3.0")
    gateway.floor('{"min_version": "0.3.0"}')
    gateway.bundle("0.2.0")  # validly signed, with a known hole

    state = gateway.run()
    assert state.phase == "failed", state
    assert state.reason == (
        f"refused: release 0.2.0 is below this gateway's minimum 0.3.0 ({gateway.root / 'min-version.json'})"
    ), state.reason
    assert state.to_version == "0.2.0"  # the `update` event says which release was refused
    assert not any(line.startswith("switched") for line in state.log), state.log
    assert gateway.current() == "0.3.0-running"
    assert not (gateway.root / "previous").exists()


def test_a_release_at_the_floor_installs_a_rollback_by_release_stays_possible(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.4.0")
    gateway.floor('{"min_version": "0.3.0"}')
    sha = gateway.bundle("0.3.0")  # older than what runs, not below the floor: a legitimate way back
    with release_agents(gateway.root) as status:
        state = gateway.run(status)
    assert state.phase == "committed", state
    assert gateway.current() == f"0.3.0-{sha[:8]}"
    assert orjson.loads((gateway.root / "min-version.json").read_bytes())["min_version"] == "0.3.0"


def test_a_committed_release_raises_the_floor_it_signed_and_nothing_below_installs_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = Gateway(tmp_path, running="0.2.0")
    fixed = gateway.bundle("0.3.0", min_version="0.3.0")  # the release that fixes a hole in 0.2.0
    with release_agents(gateway.root) as status:
        state = gateway.run(status)
    assert state.phase == "committed", state
    floor = orjson.loads((gateway.root / "min-version.json").read_bytes())
    assert (floor["min_version"], floor["raised_by"]) == ("0.3.0", f"0.3.0-{fixed[:8]}")
    assert f"raised this gateway's minimum release from none to 0.3.0 (set by 0.3.0-{fixed[:8]})" in state.log
    audit = [(a["outcome"], a.get("to")) for a in read_audit(tmp_path / "state" / "audit.log")]
    assert ("min_version_raised", "0.3.0") in audit

    # The old release, signed all the same: refused, whoever asks.
    gateway.bundle("0.2.0")
    state = gateway.run()
    assert state.phase == "failed"
    assert state.reason == (
        f"refused: release 0.2.0 is below this gateway's minimum 0.3.0 ({gateway.root / 'min-version.json'})"
    )
    assert gateway.current() == f"0.3.0-{fixed[:8]}"

    # ... and so is a rollback by hand to the release it replaced (the agent can ask for one too).
    gateway.rollback_request()
    state = gateway.run()
    assert state.phase == "failed"
    assert state.action == "rollback"
    assert state.reason == (
        "refused: the previous release 0.2.0-running is below this gateway's minimum 0.3.0 "
        f"({gateway.root / 'min-version.json'}); nothing was switched"
    )
    assert gateway.current() == f"0.3.0-{fixed[:8]}"
    assert main(["update", "status", "-c", str(gateway.config), "--state-dir", str(tmp_path / "state")]) == 0
    assert f"minimum  0.3.0 (raised by 0.3.0-{fixed[:8]})" in capsys.readouterr().out


def test_a_failed_health_check_returns_to_the_running_release_and_leaves_the_floor(tmp_path: Path) -> None:
    """The floor rises only once the release that sets it is committed, so the release that was
    running, to which a failed health check returns, is never below it."""
    gateway = Gateway(tmp_path, running="0.2.0")
    gateway.floor('{"min_version": "0.2.0"}')
    sha = gateway.bundle("0.3.0", min_version="0.3.0")
    state = gateway.run()  # no agent answers: the new release never passes
    assert state.phase == "rolled_back", state
    assert state.reason is not None
    assert state.reason.startswith("health check failed within 1 s"), state.reason
    assert gateway.current() == "0.2.0-running"
    assert orjson.loads((gateway.root / "min-version.json").read_bytes())["min_version"] == "0.2.0"

    # The release that failed is no rollback target (there was none before it).
    assert not (gateway.root / "previous").exists()
    assert list(gateway.layout.failed_releases()) == [f"0.3.0-{sha[:8]}"]
    gateway.rollback_request()
    state = gateway.run()
    assert (state.phase, state.reason) == ("failed", "no previous release to roll back to"), state
    assert gateway.current() == "0.2.0-running"


def test_a_trial_the_agent_forges_cannot_take_the_gateway_back_below_the_floor(tmp_path: Path) -> None:
    """state.json is in the agent's directory: a compromised agent can write a `trial` for the
    committed release, answer its own health check badly, and have root's health-check rollback
    switch to `previous`, whose updater (it runs from `current`) may have holes of its own."""
    gateway = Gateway(tmp_path, running="0.2.0")
    sha = gateway.bundle("0.3.0", min_version="0.3.0")
    with release_agents(gateway.root) as status:
        assert gateway.run(status).phase == "committed"
    gateway.files.write_state(
        UpdateState(id="f" * 64, phase="trial", to_release=f"0.3.0-{sha[:8]}", to_version="0.3.0",
                    started_ns=1, health_window_s=1.0)
    )  # fmt: skip
    gateway.files.write_request({"action": "apply", "sha256": "0" * 64})  # what starts the updater
    state = gateway.run()
    assert state.phase == "failed", state
    assert state.reason is not None
    assert state.reason.endswith(
        "; not rolled back, refused: the previous release 0.2.0-running is below this gateway's minimum "
        f"0.3.0 ({gateway.root / 'min-version.json'})"
    ), state.reason
    assert gateway.current() == f"0.3.0-{sha[:8]}"


class PowerCutAtCommit(Updater):
    """The updater, with the power cut after the floor was raised, before `committed` was written."""

    def _finish(self, phase: str, reason: str | None) -> None:
        if phase == "committed":
            os.kill(os.getpid(), signal.SIGKILL)
        super()._finish(phase, reason)


def _commit_until_the_power_cut(gateway: Gateway, status: Path) -> None:
    gateway.run(status, PowerCutAtCommit)


def test_a_trial_cut_off_after_it_raised_the_floor_is_committed_not_judged_again(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.2.0")
    sha = gateway.bundle("0.3.0", min_version="0.3.0")
    with release_agents(gateway.root) as status:
        child = multiprocessing.get_context("fork").Process(
            target=_commit_until_the_power_cut, args=(gateway, status)
        )
        child.start()
        child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert gateway.files.read_state().phase == "trial"
    assert orjson.loads((gateway.root / "min-version.json").read_bytes())["min_version"] == "0.3.0"

    # The boot, with the new release not answering (yet): judged again, it would go back to 0.2.0,
    # below the floor. It had passed; it is committed.
    state = gateway.run()
    assert state.phase == "committed", state
    assert "resumed after an interruption: the release had passed its health check" in state.log
    assert gateway.current() == f"0.3.0-{sha[:8]}"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            '{"min_version": "latest"}',
            "\"min_version\" is 'latest'; expected a release version such as 1.3.0",
        ),
        ('{"min_version": 3}', "\"min_version\" is '3'; expected a release version such as 1.3.0"),
        ('{"min-version": "0.3.0"}', 'no "min_version"; expected {"min_version": "1.3.0"}'),
        ("min_version = 0.3.0", 'not a JSON object; expected {"min_version": "1.3.0"}'),
    ],
)
def test_a_malformed_floor_refuses_every_update_naming_the_file_the_key_and_what_was_expected(
    tmp_path: Path, content: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = Gateway(tmp_path, running="0.2.0")
    path = gateway.floor(content)
    gateway.bundle("0.3.0")
    state = gateway.run()
    assert state.phase == "failed"
    assert state.reason is not None
    assert state.reason.startswith(f"refused: {path}: {problem}"), state.reason
    assert state.reason.endswith("; no release is installed until it is fixed"), state.reason
    assert gateway.current() == "0.2.0-running"

    # On site: status says so; replacing it with a floor is how it is fixed.
    where = ["-c", str(gateway.config)]
    assert main(["update", "min-version", *where]) == 0
    assert (
        f"minimum  unreadable, no release is installed until it is fixed: {path}: " in capsys.readouterr().out
    )
    assert main(["update", "min-version", "0.2.0", *where]) == 0
    assert f"minimum  0.2.0 (was unreadable: {path}: " in capsys.readouterr().out
    assert orjson.loads(path.read_bytes())["min_version"] == "0.2.0"


def test_a_release_version_that_cannot_be_compared_with_the_floor_is_refused(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.2.0")
    path = gateway.floor('{"min_version": "0.2.0"}')
    gateway.bundle("0.4.0+local")
    state = gateway.run()
    assert state.phase == "failed"
    assert state.reason == (
        f"refused: release 0.4.0+local: its version cannot be compared with this gateway's minimum 0.2.0 "
        f"({path}): expected a release version such as 1.3.0 (numbers and dots, then optionally a1, b1 "
        "or rc1, .post1, .dev1)"
    )


def test_release_versions_are_ordered_as_pep_440_orders_them() -> None:
    ordered = ["0.9", "1.3.0.dev1", "1.3.0a1", "1.3.0b2", "1.3.0rc1", "1.3.0", "1.3.0.post1", "1.3.1", "1.10"]
    versions = [ReleaseVersion(text) for text in ordered]
    assert sorted(versions[::2] + versions[1::2]) == versions
    assert all(a < b for a, b in itertools.pairwise(versions))
    assert ReleaseVersion("1.3") == ReleaseVersion("1.3.0")
    for bad in ("", "latest", "v1.3.0", "1.3.0+local", "1!1.3", "1.3-rc1", "1..3", " 1.3"):
        with pytest.raises(VersionError, match=r"is not a release version such as 1\.3\.0"):
            ReleaseVersion(bad)


def test_a_manifest_sets_a_floor_no_higher_than_its_own_version(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    keys = tmp_path / "release-keys"
    keys.write_text(f"rel {public_key_text(key)}\n")
    wheel = tmp_path / "water_edge_agent-0.3.0-py3-none-any.whl"
    wheel.write_bytes(b"wheel" * 100)

    def bundle(min_version: str | None) -> Path:
        out = tmp_path / "agent.tar"
        build_bundle(
            [wheel], [], key, "rel", out, python=PYTHON, config_schema=(1, 1), outbox_schema=1,
            min_version=min_version,
        )  # fmt: skip
        return out

    assert read_manifest(bundle("0.3.0"), load_release_keys(keys)).min_version == "0.3.0"
    assert read_manifest(bundle(None), load_release_keys(keys)).min_version is None
    with pytest.raises(BundleError, match=r"min_version 0\.4\.0 is above the release's own version 0\.3\.0"):
        bundle("0.4.0")
    with pytest.raises(BundleError, match="min_version 'soon' is not a release version"):
        bundle("soon")

    pem = tmp_path / "rel.key"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    args = [
        "release",
        "bundle",
        str(tmp_path),
        "--key",
        str(pem),
        "--key-id",
        "rel",
        "-o",
        str(tmp_path / "b.tar"),
    ]
    assert main([*args, "--min-version", "0.3.0"]) == 0
    assert read_manifest(tmp_path / "b.tar", load_release_keys(keys)).min_version == "0.3.0"


def test_on_site_the_floor_is_raised_up_to_the_running_release_and_lowered_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = Gateway(tmp_path, running="0.3.0")
    where = ["-c", str(gateway.config)]
    assert main(["update", "min-version", *where]) == 0
    assert "minimum  none (any signed release installs)" in capsys.readouterr().out
    assert main(["update", "min-version", "0.4.0", *where]) != 0
    assert "the current release is 0.3.0; a minimum above it" in capsys.readouterr().err
    assert not (gateway.root / "min-version.json").exists()
    assert main(["update", "min-version", "0.3.0", *where]) == 0
    assert "minimum  0.3.0 (was none)" in capsys.readouterr().out
    assert main(["update", "min-version", "0.2.0", *where]) != 0
    assert "the minimum is 0.3.0 already; give --lower" in capsys.readouterr().err
    assert main(["update", "min-version", "0.2.0", "--lower", *where]) == 0
    floor = orjson.loads((gateway.root / "min-version.json").read_bytes())
    assert floor["min_version"] == "0.2.0"
    assert floor["raised_by"].startswith("edge-agent update min-version by ")
