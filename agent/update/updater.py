"""The updater: takes a request, installs the release beside the running one, switches, judges, and
keeps it or rolls back. Runs as its own process (edge-agent-update.service, started by a path unit
when the agent writes a request; `edge-agent update run`), from the release that is current when it
starts, so switching `current` never changes the code doing the switching.

    take request -> copy bundle out of the agent's reach -> verify signature and hashes -> refuse
    a release below root's minimum version (floor.py) -> build releases/<version>-<id> (venv +
    exactly the listed wheels) -> its check-config on the live config -> note what works now
    (baseline) -> switch current (atomic) -> restart the agent -> judge its status within the
    health window -> raise the minimum to the release's signed `min_version`, committed; or mark
    it failed, switch back (`previous` names again what it named before), restart, rolled back (at
    once when the supervisor has had to restart it `rollback_after_restarts` times)

A rollback by hand is judged the same way: the release it returns to must pass the health check,
or the gateway goes back to the release it left. A release that failed its health check is
remembered (failed-releases.json in the install root) and is never a rollback target: trying it
again is an explicit apply of its bundle, judged like any update.

Every step goes to state.json (for `edge-agent update status` and the agent's `update` events) and
the outcome to the security audit log. A power cut during a trial leaves state.json in `trial`;
the updater service runs again at boot and judges the release afresh.
"""

from __future__ import annotations

import errno
import importlib.metadata
import math
import os
import platform
import pwd
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NamedTuple

import structlog

from water_edge.agent.remote.audit import AuditLog
from water_edge.agent.status import AgentNotRunningError, request_status
from water_edge.agent.update import judge
from water_edge.agent.update.bundle import (
    BundleError,
    Manifest,
    extract_wheels,
    load_release_keys,
    read_manifest,
)
from water_edge.agent.update.floor import Floor, FloorError, read_floor, refusal, write_floor
from water_edge.agent.update.layout import Layout, Release
from water_edge.agent.update.service import CommandService, RestartCount
from water_edge.agent.update.state import TERMINAL, UnsafeUpdateFileError, UpdateFiles, UpdateState
from water_edge.agent.update.versions import ReleaseVersion, VersionError
from water_edge.core.digests import sha256_file
from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

log = structlog.get_logger(__name__)

PIP_TIMEOUT_S = 1800
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _pip_installs_elsewhere() -> bool:
    """Whether the updater's own environment has a pip that installs into another one (`--python`,
    pip 22.3 and later)."""
    try:
        version = importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return False
    found = re.match(r"(\d+)\.(\d+)", version)
    return found is not None and (int(found[1]), int(found[2])) >= (22, 3)


class UpdateFailedError(Exception):
    """The update stopped before the switch; nothing changed for the running agent."""


class RunAs(NamedTuple):
    """The user a command runs as instead of root (subprocess.run's user, group, extra_groups)."""

    uid: int
    gid: int
    groups: list[int]


class Updater:
    def __init__(
        self,
        *,
        layout: Layout,
        files: UpdateFiles,
        keys_file: Path,
        config_path: Path,
        status_socket: Path,
        service: CommandService,
        audit_path: Path | None,
        python: str | None = None,
        health_window_s: float = 300.0,
        rollback_after_restarts: int = 3,
        max_bundle_bytes: int = 512 * 2**20,
        poll_s: float = 1.0,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.layout = layout
        self.files = files
        self.keys_file = keys_file
        self.config_path = config_path
        self.status_socket = status_socket
        self.service = service
        self.audit_path = audit_path
        # The base interpreter new virtualenvs are made with (the venv module needs a real one).
        self.python: str = python or str(getattr(sys, "_base_executable", sys.executable))
        self.health_window_s = health_window_s
        # A release restarted this many times by its supervisor without passing is rolled back at
        # once (0: only the window decides): a crash loop reads no devices while the window runs.
        self.rollback_after_restarts = rollback_after_restarts
        self.max_bundle_bytes = max_bundle_bytes
        self.poll_s = poll_s
        self._now = clock_ns
        self.state = files.read_state()
        # The state as this run found it: the last update (a rollback checks what it said).
        self._last = self.state
        # Why state.json could not be written the last time it was tried; None once it was.
        self.state_unwritten: str | None = None

    # ------------------------------------------------------------------ entry point

    def run(self) -> UpdateState:
        """Resume an interrupted trial, else carry out the pending request (if any). A link or a
        file the updater may not trust in the update directory ends it `failed`, naming the path."""
        try:
            self.state = self._last = self.files.load_state()
            self._resume_or_take_request()
        except UnsafeUpdateFileError as exc:
            self._refused(exc)
        return self.state

    def _resume_or_take_request(self) -> None:
        if self.state.phase == "trial":
            current = self.layout.release(self.layout.current)
            failed = self.layout.failed_releases().get(self.state.to_release or "") or {}
            # Marked failed by this very attempt (not an earlier one of the same bundle).
            this_attempt = failed.get("update") == self.state.id and (
                isinstance(failed.get("failed_ns"), int) and failed["failed_ns"] >= self.state.started_ns
            )
            if current is not None and this_attempt and current.name == self.state.from_release:
                # Cut off after it failed and the switch back, before the outcome was written.
                why = f"{failed.get('reason')} (interrupted after the switch back)"
                if self.state.action == "rollback":
                    self._finish("failed", f"the rollback to {self.state.to_release} failed: {why}")
                else:
                    self._finish("rolled_back", why)
                return
            if current is None or current.name != self.state.to_release:
                self._finish("failed", "interrupted before the switch; nothing was switched")
                return
            if self._floor_raised_by_this_update():
                # It had passed: judged again and failed, it would go back below the new minimum.
                self._note("resumed after an interruption: the release had passed its health check")
                self._commit()
                return
            self._note("resumed after an interruption: judging the release again")
            self._judge_and_finish(self.state.health_window_s)
            return
        if self.state.phase not in TERMINAL:
            self._finish("failed", f"interrupted while {self.state.phase}; nothing was switched")
        request = self.files.take_request()
        if request is None:
            return
        if request.get("action") == "rollback":
            self.rollback(request)
        else:
            self.apply(request)

    def _refused(self, exc: UnsafeUpdateFileError) -> None:
        log.error("update.refused", path=exc.filename, error=exc.strerror)
        now = self._now()
        # An id of its own: the agent reports only outcomes with one, and the centre should hear this.
        self.state = UpdateState(id=f"refused-{now}", phase="verifying", started_ns=now)
        self._finish("failed", f"refused {exc}")

    # ------------------------------------------------------------------ apply

    def _window(self, request: dict[str, Any]) -> float | str:
        """The request's health window in seconds, or why it is not one."""
        window = request.get("health_window_s") or self.health_window_s
        if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window < math.inf:
            return f"health_window_s {str(window)[:40]!r} is not a number of seconds"
        return float(window)

    def _refuse_request(self, request: dict[str, Any], problem: str, action: str = "apply") -> None:
        now = self._now()
        by = str(request.get("requested_by", ""))[:200]
        self.state = UpdateState(
            id=f"refused-{now}", phase="verifying", action=action, requested_by=by, started_ns=now
        )
        self._finish("failed", f"the request's {problem}; nothing was done")

    def apply(self, request: dict[str, Any]) -> None:
        sha = str(request.get("sha256", ""))
        window = self._window(request)
        # The agent writes the request: its sha256 names root's work directory and the release.
        if not _SHA256.fullmatch(sha):
            self._refuse_request(request, f"sha256 {sha[:80]!r} is not a sha256 in lower-case hex")
            return
        if isinstance(window, str):
            self._refuse_request(request, window)
            return
        self.state = UpdateState(
            id=sha,
            phase="verifying",
            requested_by=str(request.get("requested_by", ""))[:200],
            started_ns=self._now(),
            health_window_s=window,
        )
        current = self.layout.release(self.layout.current)
        self.state.from_release = current.name if current else None
        self.state.from_version = current.version if current else None
        self._note(f"requested by {self.state.requested_by or 'someone on the gateway'}")
        try:
            try:
                manifest, wheels = self._verify(request)
                self.state.phase = "installing"
                self._note(f"verified {manifest.version}, signed by {manifest.key_id}")
                target = self._install(manifest, wheels, sha)
            finally:
                # Installed (its wheels hard-linked into the cache) or not, the copy and the unpacked
                # wheels are done with: on a disk that filled up, they are what filled it.
                shutil.rmtree(self._work_dir(), ignore_errors=True)
        except (UpdateFailedError, BundleError) as exc:
            self._finish("failed", str(exc))
            return
        except OSError as exc:  # a full disk, an I/O error while unpacking or installing
            where = f" ({exc.filename})" if exc.filename else ""
            self._finish("failed", f"unpacking or installing failed: {exc.strerror or exc}{where}")
            return
        if target.name in self.layout.failed_releases():
            self._note(
                f"{target.name} failed its health check before: tried again as asked, judged as any update"
            )
        previous = self.layout.release(self.layout.previous)
        # Put back if this release fails (a failed release is no rollback target: none then).
        self.state.previous_before = "" if previous is None or self._failed(previous) else previous.name
        self.state.to_release = target.name
        if not self._begin_trial(window):
            return
        self.layout.switch(target)
        self._note(f"switched current to {target.name}; restarting the agent")
        self._audit("switched", to=manifest.version, release=target.name)
        self._restart()
        self._judge_and_finish(window)

    def _verify(self, request: dict[str, Any]) -> tuple[Manifest, list[Path]]:
        source = Path(str(request.get("bundle", "")))
        spool = self.files.spool.resolve()
        if source.resolve().parent != spool:
            raise UpdateFailedError(f"bundle {str(source)[:120]!r} is not in {spool}")
        self.layout.staging.mkdir(parents=True, exist_ok=True)
        os.chmod(self.layout.staging, 0o700)
        work = self._work_dir()
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        copy = work / "bundle.tar"
        try:
            # Out of the agent's reach before anything is read from it.
            with self.files.open_spooled(source.name) as src:
                _copy_limited(src, source, copy, self.max_bundle_bytes)
        except UnsafeUpdateFileError as exc:
            raise UpdateFailedError(f"the bundle {source} was not read: {exc}") from None
        except OSError as exc:
            raise UpdateFailedError(f"cannot read the bundle {source}: {exc.strerror}") from None
        if self.state.id and sha256_file(copy) != self.state.id:
            raise UpdateFailedError("the bundle's sha256 is not the one requested")
        keys = load_release_keys(self.keys_file)
        manifest = read_manifest(copy, keys)
        self.state.to_version = manifest.version
        # Signed or not, a release below root's minimum is not installed (a rollback attack).
        if problem := refusal(self._floor(), manifest.version, f"release {manifest.version}"):
            raise UpdateFailedError(problem)
        self._check_fit(manifest)
        carried = set(extract_wheels(copy, manifest, work / "wheels"))
        paths: list[Path] = []
        for wheel in manifest.wheels:
            if wheel.file in carried:
                paths.append(work / "wheels" / wheel.file)
                continue
            cached = self.layout.cached_wheel(wheel.file)
            if cached is None or sha256_file(cached) != wheel.sha256:
                raise UpdateFailedError(
                    f"{wheel.file} is neither in the bundle nor in this gateway's wheel cache "
                    f"({self.layout.wheels}); send a full bundle"
                )
            paths.append(cached)
        return manifest, paths

    def _floor(self) -> Floor | None:
        """root's minimum release version; UpdateFailedError when its file is not one (no release
        is installed until it is fixed: a floor nobody can read is not taken for none)."""
        try:
            return read_floor(self.layout.min_version)
        except FloorError as exc:
            raise UpdateFailedError(f"refused: {exc}; no release is installed until it is fixed") from None

    def _begin_trial(self, window: float) -> bool:
        """Note what works now and record the trial, before the switch: a power cut right after it
        must find a trial to judge at boot. False (the update failed, nothing switched) when it
        cannot be recorded."""
        self.state.phase = "trial"
        self.state.trial_deadline_ns = self._now() + int(window * 1e9)
        self.state.baseline = judge.Baseline.from_status(self._status()).to_json()
        if self._save():
            return True
        self._finish(
            "failed", f"the trial could not be recorded ({self.state_unwritten}); nothing was switched"
        )
        return False

    def _work_dir(self) -> Path:
        return self.layout.staging / (self.state.id[:16] or "bundle")

    def _check_fit(self, manifest: Manifest) -> None:
        here = ".".join(platform.python_version_tuple()[:2])
        if manifest.python != here:
            raise UpdateFailedError(
                f"the release is built for Python {manifest.python}, this gateway runs {here}"
            )
        try:
            schema = parse_toml(read_toml_text(self.config_path)).get("schema_version")
        except (OSError, NotUtf8TextError, TOMLDecodeError) as exc:
            raise UpdateFailedError(f"cannot read the config {self.config_path}: {exc}") from None
        if (
            not isinstance(schema, int)
            or not manifest.config_schema_min <= schema <= manifest.config_schema_max
        ):
            raise UpdateFailedError(
                f"the release reads config schema {manifest.config_schema_min}-{manifest.config_schema_max}, "
                f"{self.config_path} is schema {schema}: update the config first"
            )
        if self.state.from_version == manifest.version:
            raise UpdateFailedError(f"version {manifest.version} is already running")

    def _install(self, manifest: Manifest, wheels: list[Path], sha: str) -> Path:
        target = self.layout.releases / f"{manifest.version}-{sha[:8] or 'local'}"
        current = self.layout.release(self.layout.current)
        if current is not None and current.path.resolve() == target.resolve():
            raise UpdateFailedError(f"{target.name} is already current")
        if not self.layout.complete(target):
            shutil.rmtree(target, ignore_errors=True)
            try:
                self._build_venv(target, wheels)
            except (UpdateFailedError, OSError):
                shutil.rmtree(target, ignore_errors=True)  # half a virtualenv: space a full disk needs
                raise
            self._note(f"installed {len(wheels)} wheels into {target.name}")
        self._run(
            [str(target / "bin" / "edge-agent"), "check-config", "-c", str(self.config_path)],
            "the new release's check-config on the live config",
            as_user=self._agent_user(),
        )
        for wheel in wheels:
            self.layout.cache_wheel(wheel)
        # release.json marks the release complete and is reused by a later request for the same
        # bundle: pip wrote thousands of files and synced none, so after a power cut they could be
        # empty behind a release.json that was on disk. The release's files reach the disk first.
        os.sync()
        self.layout.write_info(
            target, {"version": manifest.version, "bundle_sha256": sha, "key_id": manifest.key_id,
                     "outbox_schema": manifest.outbox_schema, "installed_ns": self._now(),
                     "min_version": manifest.min_version,
                     "wheels": sorted(w.file for w in manifest.wheels)},
        )  # fmt: skip
        return target

    def _build_venv(self, target: Path, wheels: list[Path]) -> None:
        """A virtualenv at `target` with exactly `wheels` installed (and byte-compiled), readable and
        runnable by the service user whatever the umask of the root who runs `update apply` by hand
        (027 or 077 on hardened hosts; the updater's unit sets 0022): venv and pip inherit 0022."""
        umask = os.umask(0o022)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._build_venv_as_is(target, wheels)
        finally:
            os.umask(umask)

    def _build_venv_as_is(self, target: Path, wheels: list[Path]) -> None:
        install = ["install", "--no-index", "--no-deps", "--disable-pip-version-check", "--quiet"]
        python = str(target / "bin" / "python")
        if _pip_installs_elsewhere() and any(wheel.name.startswith("pip-") for wheel in wheels):
            # The release lists its own pip, so the venv module's bootstrap pip (ensurepip: a quarter
            # of the build here, and replaced by the listed one anyway) is left out; the updater's
            # pip installs into the new environment. The release ends up as it would otherwise.
            self._run([self.python, "-m", "venv", "--without-pip", str(target)], "creating the virtualenv")
            pip = [sys.executable, "-m", "pip", "--python", python]
        else:
            self._run([self.python, "-m", "venv", str(target)], "creating the virtualenv")
            pip = [python, "-m", "pip"]
        self._run([*pip, *install, *map(str, wheels)], "installing the wheels")

    def _run(self, argv: list[str], what: str, as_user: RunAs | None = None) -> None:
        uid, gid, groups = as_user or (None, None, None)
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False,
            user=uid, group=gid, extra_groups=groups, cwd="/" if as_user else None,
        )  # fmt: skip
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise UpdateFailedError(f"{what} failed: {' / '.join(tail)[-600:]}")

    def _agent_user(self) -> RunAs | None:
        """Who the new release's check-config runs as: the config is the agent's to rewrite
        (`config_update`), so root does not load it; the agent's user is the owner of the state
        directory. None (run as is) when the updater is not root or root owns that directory."""
        if os.geteuid() != 0:
            return None
        st = os.stat(self.files.dir.parent)
        if st.st_uid == 0:
            return None
        try:
            user = pwd.getpwuid(st.st_uid)
        except KeyError:  # a uid without a name: its own group only
            return RunAs(st.st_uid, st.st_gid, [])
        return RunAs(user.pw_uid, user.pw_gid, os.getgrouplist(user.pw_name, user.pw_gid))

    # ------------------------------------------------------------------ judging

    def _judge_and_finish(self, window_s: float) -> None:
        # A rollback by hand may return to a release with no recorded version: any version passes.
        version = self.state.to_version if self.state.action == "rollback" else self.state.to_version or ""
        baseline = judge.Baseline.from_json(self.state.baseline)
        started = time.monotonic()
        # Read only when it can decide something: each read runs the supervisor's probe.
        restarts = RestartCount(self.service) if self.rollback_after_restarts else None
        last_write = 0.0
        problems = ["not judged yet"]
        reason = ""
        while not reason:
            problems = judge.problems(self._status(), version, baseline)
            if not problems:
                self._commit()
                return
            if time.monotonic() - last_write > 5:
                self.state.reason = "; ".join(problems)
                self._save()
                last_write = time.monotonic()
            if restarts is not None and (crashes := restarts.since_start()) >= self.rollback_after_restarts:
                took = time.monotonic() - started
                reason = (
                    f"health check failed: the agent exited and was restarted {crashes} times in "
                    f"{took:.0f} s (of a {window_s:g} s window): {'; '.join(problems)}"
                )
            elif time.monotonic() - started >= window_s:
                reason = f"health check failed within {window_s:g} s: {'; '.join(problems)}"
            else:
                time.sleep(self.poll_s)
        self._note(reason)
        # Not true of a trial this updater began: the minimum rises only once a release is committed,
        # and `update min-version` never sets it above the current one. A `trial` state.json the agent
        # forged for the committed release would otherwise take the gateway back below it.
        back = self.layout.release(self.layout.previous)
        if problem := self._below_floor(back):
            self._finish("failed", f"{reason}; not rolled back, {problem}")
            return
        if back is None:
            self._finish("failed", reason + "; no previous release to roll back to")
            return
        failed = self.layout.release(self.layout.current)
        restored = self._previous_before(failed, back)
        # Marked before the switch: a power cut in between is judged again at boot, and a release
        # that passes then is committed, which forgets the mark.
        if failed is not None:
            self._mark_failed(failed, reason)
        self.layout.switch_back(restored)
        again = f"previous is {restored.name} again" if restored else "no previous release now"
        self._note(f"rolled back to {back.name} ({again}); restarting the agent")
        self._restart()
        if self.state.action == "rollback":
            self._finish(
                "failed",
                f"the rollback to {self.state.to_release} failed: {reason}; returned to {back.name}, "
                f"the release it rolled back from ({self.state.to_release} is marked failed)",
            )
            return
        self._finish("rolled_back", reason)

    def _previous_before(self, failed: Release | None, back: Release) -> Path | None:
        """The release `previous` named before this update, to name again once `failed` is left
        for `back`; None when there was none, it is not known (a trial an older updater recorded),
        it is gone, or it is no rollback target (the failed release, one that failed before). The
        name comes from state.json, which the agent can write: only a release in releases/ is taken."""
        name = self.state.previous_before
        if not name or name in (".", "..") or "/" in name:
            return None
        path = self.layout.releases / name
        if not path.is_dir() or path.resolve() == back.path.resolve():
            return None
        if (failed is not None and name == failed.name) or name in self.layout.failed_releases():
            return None
        return path

    def _mark_failed(self, release: Release, reason: str) -> None:
        record = {
            "reason": reason,
            "failed_ns": self._now(),
            "update": self.state.id,
            "action": self.state.action,
        }
        try:
            self.layout.mark_failed(release, record)
        except OSError as exc:
            self._note(f"{release.name} was not recorded as failed: {exc}")

    def _failed(self, release: Release) -> str | None:
        """Why `release` is no rollback target (it failed its health check here), or None. A gateway
        rolled back by an updater from before failed-releases.json has only its last state.json to say
        so (`previous` was then left on the failed release)."""
        record = self.layout.failed_releases().get(release.name)
        if record is not None:
            when = record.get("failed_ns")
            at = f" at {_utc(when)}" if isinstance(when, int) else ""
            return f"failed its health check{at}: {record.get('reason') or 'no reason recorded'}"
        last = self._last
        if last.phase == "rolled_back" and last.action == "apply" and last.to_release == release.name:
            return f"failed its health check in the last update: {last.reason or 'no reason recorded'}"
        return None

    def _commit(self) -> None:
        """The release on trial passed: the minimum rises to what it sets, then it is committed.
        Never the other way round: a trial a power cut interrupted in between would be judged again
        and, failing, go back to a release below the new minimum. A rollback by hand that passed
        raises nothing (the minimum may have been lowered on purpose to reach it) and prunes nothing."""
        if self.state.action == "rollback":
            self._finish(
                "rolled_back", f"rolled back by hand ({self.state.requested_by or 'on the gateway'})"
            )
            return
        self._raise_floor()
        self._finish("committed", None)
        kept = [self.layout.current.resolve(), self.layout.previous.resolve()]
        self.layout.prune(set(kept))
        try:
            self.layout.clear_failed()  # it passed (an explicit retry), or was pruned
        except OSError as exc:
            log.warning("update.failed_record_not_written", path=str(self.layout.failed), error=str(exc))
        if dropped := self.layout.prune_wheels([k for k in kept if k.exists()]):
            log.info("update.wheels_removed", count=len(dropped), wheels=dropped[:20])

    def _raise_floor(self) -> None:
        """Raise root's minimum to the `min_version` the current release's signed manifest set
        (kept in its release.json), when that is higher; never lower it."""
        current = self.layout.release(self.layout.current)
        sets = None if current is None else self.layout.info(current.path).get("min_version")
        if current is None or not isinstance(sets, str):
            return
        try:
            wanted = ReleaseVersion(sets)
            floor = read_floor(self.layout.min_version)
        except (VersionError, FloorError) as exc:
            self._note(f"the minimum release was not raised: {exc}")
            return
        if floor is not None and wanted <= floor.version:
            return
        update = f"{self.state.id}@{self.state.started_ns}"
        try:
            write_floor(self.layout.min_version, wanted, current.name, self._now(), update)
        except OSError as exc:
            self._note(f"the minimum release was not raised to {wanted}: {exc}")
            return
        old = "none" if floor is None else str(floor.version)
        self._note(f"raised this gateway's minimum release from {old} to {wanted} (set by {current.name})")
        self._audit("min_version_raised", to=str(wanted), release=current.name, **{"from": old})

    def _below_floor(self, previous: Release | None) -> str | None:
        """Why switching back to `previous` is refused (below root's minimum, or the minimum
        unreadable), or None."""
        if previous is None:
            return None
        try:
            return refusal(self._floor(), previous.version, f"the previous release {previous.name}")
        except UpdateFailedError as exc:
            return str(exc)

    def _floor_raised_by_this_update(self) -> bool:
        try:
            floor = read_floor(self.layout.min_version)
        except FloorError:
            return False
        return floor is not None and floor.update == f"{self.state.id}@{self.state.started_ns}"

    def rollback(self, request: dict[str, Any]) -> None:
        """A rollback asked for by hand: previous becomes current and is judged like a new release
        (the same health check within the window); if it fails, the gateway returns to the release
        it left. Refused when previous is below root's minimum (a request the agent can write, too)
        or failed its health check here (an explicit apply of its bundle tries it again)."""
        window = self._window(request)
        if isinstance(window, str):
            self._refuse_request(request, window, action="rollback")
            return
        by = str(request.get("requested_by", ""))[:200]
        current = self.layout.release(self.layout.current)
        self.state = UpdateState(
            id=f"rollback-{self._now()}", phase="verifying", action="rollback", requested_by=by,
            from_release=current.name if current else None, from_version=current.version if current else None,
            started_ns=self._now(), health_window_s=window,
        )  # fmt: skip
        previous = self.layout.release(self.layout.previous)
        if previous is not None:
            self.state.to_release, self.state.to_version = previous.name, previous.version
        if problem := self._below_floor(previous):
            self._finish("failed", f"{problem}; nothing was switched")
            return
        if previous is None:
            self._finish("failed", "no previous release to roll back to")
            return
        if why := self._failed(previous):
            self._finish(
                "failed",
                f"refused: the previous release {previous.name} {why}; nothing was switched. To try it "
                "again, apply its bundle (`edge-agent update apply`, or a signed `update`): it is then "
                "judged and rolled back like any update",
            )
            return
        self._note(f"rollback by hand requested by {by or 'someone on the gateway'}")
        # If it fails, the release left becomes current again and nothing is the rollback target.
        self.state.previous_before = previous.name
        if not self._begin_trial(window):
            return
        self.layout.swap_back()
        self._note(f"switched current to {previous.name} (rolled back by hand); restarting the agent")
        self._audit("switched", to=previous.version, release=previous.name)
        self._restart()
        self._judge_and_finish(window)

    # ------------------------------------------------------------------ helpers

    def _status(self) -> dict[str, Any] | None:
        try:
            return request_status(self.status_socket, timeout=2.0)
        except (AgentNotRunningError, OSError, ValueError):
            return None

    def _restart(self) -> None:
        error = self.service.restart()
        if error:
            self._note(f"restart command: {error}")

    def _note(self, line: str) -> None:
        log.info("update.step", id=self.state.id[:16], line=line)
        self.state.log = [*self.state.log[-30:], line]
        self._save()

    def _save(self) -> bool:
        """Write state.json; False, with why in the journal, when it cannot be written (safely): the
        update goes on to its end where it can (a trial is judged and rolled back all the same), and
        `update run` exits non-zero."""
        try:
            self.files.write_state(self.state)
        except OSError as exc:
            if str(exc) != self.state_unwritten:
                log.error("update.state_not_written", path=str(self.files.state), error=str(exc))
            self.state_unwritten = str(exc)
            return False
        self.state_unwritten = None
        return True

    def _finish(self, phase: str, reason: str | None) -> None:
        self.state.phase = phase  # type: ignore[assignment]  # one of the terminal phases
        self.state.reason = reason
        self.state.finished_ns = self._now()
        self._note(f"{phase}" + (f": {reason}" if reason else ""))
        self._audit(phase, reason=reason, to=self.state.to_version, **{"from": self.state.from_version})

    def _audit(self, outcome: str, **fields: Any) -> None:
        if self.audit_path is None:
            return
        # The agent's log, in the agent's directory: opened without following a link there, and a
        # file made here is the agent's (see AuditLog, in_owners_directory). The path comes from the
        # config the agent may rewrite, so a log outside the state directory is not written by root.
        try:
            if self.audit_path.parent.resolve() != self.files.dir.parent.resolve():
                raise OSError(errno.EPERM, "outside the state directory", str(self.audit_path))
            audit = AuditLog(self.audit_path, max_bytes=2**40, in_owners_directory=True)
        except OSError as exc:
            log.warning("update.audit_refused", path=str(self.audit_path), error=str(exc))
            self.state.log = [*self.state.log[-30:], f"audit log not written: {exc}"]
            self._save()
            return
        try:
            audit.record("update", outcome, id=self.state.id[:64], by=self.state.requested_by, **fields)
        finally:
            audit.close()


def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ns / 1e9))


def _copy_limited(src: IO[bytes], source: Path, target: Path, limit: int) -> None:
    """Copy `src`, the spooled bundle `source` opened as a regular file (`UpdateFiles.open_spooled`),
    only if it is at most `limit` bytes (not a sparse terabyte), so the agent cannot make root fill the
    install root's disk."""
    if os.fstat(src.fileno()).st_size > limit:
        raise OSError(errno.EFBIG, f"larger than [update] max_bundle_bytes ({limit})", str(source))
    with target.open("wb") as out:
        # At most `limit` bytes even if the file grows while it is copied.
        while (left := limit + 1 - out.tell()) > 0 and (block := src.read(min(1 << 20, left))):
            out.write(block)
        if out.tell() > limit:
            raise OSError(errno.EFBIG, f"larger than [update] max_bundle_bytes ({limit})", str(source))
