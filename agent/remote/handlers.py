"""The built-in command handlers; each gets what it acts on through `Targets` (each optional).

Model slots and calibration commands come from the processors by capability
(`core.processor.HasModelSlot`, `Calibratable`): a `*_calibration` command type is answered by
whichever processor kind offers it.

A handler returns a `CommandResult`, or raises `CommandRefusedError` (authentic but not allowed:
a write outside the allow-list, a config change beyond the key's rights, a bundle that is not a
model for the slot, a file the agent may not write) or `CommandFailedError`; what it changes on
disk is changed atomically (temp + fsync + rename) and only after validation, so a refused update
leaves the old config or model in place.

config_update applies what it can live: with `Targets.apply_config` (the running agent's
`apply_config`, see `agent.live_config`) a change the running agent can take as it is (a device's
poll rate) is applied without a restart, keeping the outbox open and the connection up; anything
else restarts the agent, and the result says which (`applied`: "live" | "restart" | "unchanged",
with the changes, or the sections that need the restart).

config_update writes where the config file really is: `/etc/edge-agent/config.toml` is a symlink
into `/etc/edge-agent/managed/`, the one directory under `/etc` the installed unit may write
(`ReadWritePaths=`); the candidate and the `.prev` copy live beside the file, with its mode and group.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from water_edge.agent import pushed_models
from water_edge.agent.remote.config import COMMAND_TYPES
from water_edge.agent.remote.config_rights import changes_needing_rights, missing_rights
from water_edge.agent.remote.model_bundle import check_bundle
from water_edge.agent.remote.processor import Handler
from water_edge.agent.remote.result import CommandFailedError, CommandRefusedError, CommandResult
from water_edge.agent.writes import WriteRefusedError
from water_edge.core.envelope import Envelope
from water_edge.core.errors import ConfigError
from water_edge.core.files import atomic_write
from water_edge.core.processor import Calibratable, CalibrationFailedError, ModelSlotLike

if TYPE_CHECKING:
    from water_edge.agent.config import Config
    from water_edge.agent.live_config import ConfigPlan

log = structlog.get_logger(__name__)

_FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


class WriterLike(Protocol):
    """`agent.writes.WriteGuard`."""

    async def write(
        self, device: str, table: str, address: int, value: Any, *, requested_by: str
    ) -> dict[str, Any]: ...


class RestoreLike(Protocol):
    """`agent.state_restore.StateRestoreReceiver`."""

    async def part(self, env: Envelope) -> CommandResult: ...


class UpdateLike(Protocol):
    """`agent.update.receive.UpdateReceiver`."""

    async def update(self, env: Envelope) -> CommandResult: ...

    async def chunk(self, env: Envelope) -> CommandResult: ...


@dataclass
class Targets:
    """What the commands act on; a missing one makes its command fail with 'not available'."""

    config_path: Path | None = None
    models_dir: Path | None = None
    read_now: Callable[[list[str] | None], Awaitable[dict[str, Any]]] | None = None
    request_restart: Callable[[str], None] | None = None
    model_slots: Mapping[str, ModelSlotLike] = field(default_factory=dict)
    calibrations: Mapping[str, Calibratable] = field(default_factory=dict)  # by command type
    writer: WriterLike | None = None
    # Operator name -> the config sections its config_update may change (`config_rights`).
    config_rights: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # Stages release bundles for the updater (`agent.update.receive.UpdateReceiver`).
    update: UpdateLike | None = None
    # Applies a new config live when nothing in it needs a restart (`agent.runtime.Agent.apply_config`).
    apply_config: Callable[[Config], ConfigPlan] | None = None
    # Stages a learnt-state archive sent in parts (`agent.state_restore.StateRestoreReceiver`).
    state_restore: RestoreLike | None = None
    # Sends the learnt state to the centre now (`agent.state_backup.StateBackup.on_command`, `force`).
    state_backup: Callable[[bool], Awaitable[dict[str, Any]]] | None = None


def _need(value: Any, what: str) -> Any:
    if value is None:
        raise CommandFailedError(f"{what} is not available on this gateway")
    return value


def _arg(env: Envelope, name: str, kind: type) -> Any:
    value = env.args.get(name)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CommandFailedError(f"argument {name!r} missing or not {kind.__name__}")
    return value


def build_handlers(targets: Targets) -> dict[str, Handler]:
    async def read_now(env: Envelope) -> CommandResult:
        reader = _need(targets.read_now, "read-now")
        devices = env.args.get("devices")
        if devices is not None and not (
            isinstance(devices, list) and all(isinstance(d, str) for d in devices)
        ):
            raise CommandFailedError("argument 'devices' must be a list of device names")
        return CommandResult("ok", detail=await reader(devices))

    async def restart(env: Envelope) -> CommandResult:
        request = _need(targets.request_restart, "restart")
        return CommandResult("ok", detail={"restarting": True}).then_restart(
            request, f"command {env.id} from {env.key_id}"
        )

    async def config_update(env: Envelope) -> CommandResult:
        return await _config_update(env, _need(targets.config_path, "config update"), targets)

    async def model_update(env: Envelope) -> CommandResult:
        return await _model_update(env, targets)

    def calibration(command: str) -> Handler:
        async def handle(env: Envelope) -> CommandResult:
            target: Calibratable = _need(targets.calibrations.get(command), command.replace("_", " "))
            name = _arg(env, target.calibration_target, str)
            try:
                detail = await target.calibrate(name, dict(env.args))
            except CalibrationFailedError as exc:
                raise CommandFailedError(str(exc)) from None
            return CommandResult("ok", detail=detail)

        return handle

    async def write(env: Envelope) -> CommandResult:
        writer = _need(targets.writer, "PLC writes")
        try:
            outcome = await writer.write(
                _arg(env, "device", str),
                _arg(env, "table", str),
                _arg(env, "address", int),
                env.args.get("value"),
                requested_by=f"{env.key_id}:{env.id}",
            )
        except WriteRefusedError as exc:
            raise CommandRefusedError("write_refused", str(exc)) from None
        return CommandResult("ok", detail=outcome)

    async def update(env: Envelope) -> CommandResult:
        receiver: UpdateLike = _need(targets.update, "self-update")
        return await receiver.update(env)

    async def update_chunk(env: Envelope) -> CommandResult:
        receiver: UpdateLike = _need(targets.update, "self-update")
        return await receiver.chunk(env)

    async def state_restore(env: Envelope) -> CommandResult:
        receiver: RestoreLike = _need(targets.state_restore, "state restore")
        return await receiver.part(env)

    async def state_backup(env: Envelope) -> CommandResult:
        backup_now = _need(targets.state_backup, "state backup")
        force = env.args.get("force", False)
        if not isinstance(force, bool):
            raise CommandFailedError("argument 'force' must be true or false")
        return CommandResult("ok", detail=await backup_now(force))

    # Every calibration command type the gateway knows gets a handler, offered or not: without
    # its processor configured it fails as "not available" rather than being refused.
    calibrations = {c for c in COMMAND_TYPES if c.endswith("_calibration")} | set(targets.calibrations)
    return {
        "read_now": read_now,
        "restart": restart,
        "config_update": config_update,
        "model_update": model_update,
        **{command: calibration(command) for command in sorted(calibrations)},
        "write": write,
        "update": update,
        "update_chunk": update_chunk,
        "state_restore": state_restore,
        "state_backup": state_backup,
    }


async def _config_update(env: Envelope, config_path: Path, targets: Targets) -> CommandResult:
    text = _arg(env, "config", str)
    granted = targets.config_rights.get(env.key_id, frozenset())
    live, digest, new = await asyncio.to_thread(
        _replace_config, config_path, text.encode(), env.key_id, granted
    )
    log.info("command.config_updated", path=str(live), sha256=digest)
    detail: dict[str, Any] = {"sha256": digest}
    if targets.apply_config is not None:
        plan = targets.apply_config(new)
        if not plan.needs_restart:
            detail |= {"applied": "unchanged" if plan.unchanged else "live", "changes": list(plan.live)}
            return CommandResult("ok", detail={**detail, "restarting": False})
        detail |= {"applied": "restart", "restart_needed_by": list(plan.restart)}
    restarting = targets.request_restart is not None and env.args.get("restart", True) is not False
    result = CommandResult("ok", detail={**detail, "restarting": restarting})
    if restarting:
        assert targets.request_restart is not None
        result.then_restart(targets.request_restart, f"config updated by command {env.id}")
    return result


def _replace_config(
    config_path: Path, data: bytes, key_id: str, granted: frozenset[str]
) -> tuple[Path, str, Config]:
    """Validate `data` as the new config and swap it in (blocking: run in a thread); the file
    written, the sha256 of its content and the new config as loaded."""
    from water_edge.agent.config import load_config

    live = config_path.resolve()  # the managed file behind /etc/edge-agent/config.toml
    candidate = live.with_name(f".{live.name}.candidate")
    try:
        mode = live.stat().st_mode & 0o660
        atomic_write(candidate, data, mode=mode or 0o640)
    except OSError as exc:
        raise CommandRefusedError(
            "permission",
            f"cannot write {live.parent} ({exc.strerror}); the config must live in a directory the "
            "agent may write (see docs/security.md, config_update)",
        ) from None
    try:
        try:
            new = load_config(candidate)
            old = load_config(config_path)
        except ConfigError as exc:
            problems = [p.replace(str(candidate), "new config") for p in exc.problems]
            raise CommandFailedError(
                "new config is invalid; the old one stays", {"problems": problems[:20]}
            ) from None
        if (new.gateway.site, new.gateway.id) != (old.gateway.site, old.gateway.id):
            raise CommandFailedError("new config names another gateway; the old one stays")
        refused = missing_rights(changes_needing_rights(old, new), granted)
        if refused is not None:
            raise CommandRefusedError("config_rights", f"key {key_id!r} may not change {refused}")
        _keep_group(candidate, live)
        shutil.copy2(live, live.with_name(live.name + ".prev"))
        os.replace(candidate, live)
    finally:
        candidate.unlink(missing_ok=True)
    return live, hashlib.sha256(data).hexdigest(), replace(new, source=config_path)


def _keep_group(new: Path, old: Path) -> None:
    """Give the new file the old one's group (root:edge-agent stays readable by the service)."""
    gid = old.stat().st_gid
    if new.stat().st_gid != gid:
        try:
            os.chown(new, -1, gid)
        except PermissionError:
            log.warning("command.config_group_kept", path=str(new), wanted_gid=gid)


async def _model_update(env: Envelope, targets: Targets) -> CommandResult:
    slot_name = _arg(env, "slot", str)
    slot = targets.model_slots.get(slot_name)
    if slot is None:
        raise CommandFailedError(f"no model slot {slot_name!r} on this gateway")
    models_dir = _need(targets.models_dir, "model storage")
    manifest = _arg(env, "manifest", str)
    files = _arg(env, "files", dict)
    if manifest not in files:
        raise CommandFailedError("the manifest must be one of the files sent")
    if not _FILE_NAME.match(slot_name) or not all(
        isinstance(n, str) and _FILE_NAME.match(n) and n not in (".", "..") for n in files
    ):
        raise CommandFailedError("file and slot names must be plain names (no paths)")
    target = models_dir / slot_name / f"cmd-{hashlib.sha256(env.id.encode()).hexdigest()[:12]}"
    replaces = pushed_models.replaced_model(target.parent, slot)
    try:
        target.mkdir(mode=0o750, parents=True, exist_ok=False)
    except FileExistsError:
        raise CommandFailedError("this model update was already received") from None
    try:
        # Off the event loop: decoding and fsyncing a model on a busy SD card can take seconds,
        # which would hold up every poll and the broker's keepalive.
        await asyncio.to_thread(_write_model_bundle, target, files, manifest, slot)
        accepted, swapped = await pushed_models.swap(slot, target / manifest)
    except (CommandFailedError, CommandRefusedError):
        shutil.rmtree(target, ignore_errors=True)
        raise
    except (OSError, ValueError, RuntimeError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise CommandFailedError(f"model refused, the old one stays: {exc}") from None
    if not accepted:
        # The slot refused it (sha256 mismatch, self-test failed): it keeps serving the old model.
        shutil.rmtree(target, ignore_errors=True)
        raise CommandFailedError(f"model refused, the old one stays: {swapped['reason']}")
    detail = {"slot": slot_name, **swapped}
    if (problem := await asyncio.to_thread(_keep_in_service, target, manifest, replaces)) is not None:
        detail["after_restart"] = f"the configured model: the pushed one could not be recorded ({problem})"
    return CommandResult("ok", detail=detail)


def _write_model_bundle(target: Path, files: dict[str, Any], manifest: str, slot: ModelSlotLike) -> None:
    """Decode the command's files into `target` and check them as a bundle for `slot` (blocking:
    run in a thread)."""
    for name, b64 in files.items():
        try:
            content = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError, TypeError):
            raise CommandFailedError(f"file {name!r} is not base64") from None
        atomic_write(target / name, content, mode=0o640)
    check_bundle(target, manifest, set(files), slot)


def _keep_in_service(bundle: Path, manifest: str, replaces: str | None) -> str | None:
    """The slot now serves `bundle`: record it for the next start, remove the bundles before it
    (the model it replaced is loaded, and gone with its last reader; they would otherwise pile up
    on the disk the outbox shares). Why the record could not be written, else None."""
    problem = pushed_models.remember(bundle.parent, bundle, manifest, replaces)
    for earlier in bundle.parent.glob("cmd-*"):
        if earlier != bundle:
            shutil.rmtree(earlier, ignore_errors=True)
    return problem
