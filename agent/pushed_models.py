"""A model pushed by `model_update` stays in service across agent restarts.

The command stores the bundle in `<state_dir>/models/<slot>/cmd-…/` and swaps it in; this module
writes `<slot>/in-service.json` beside it (which bundle, which manifest, and the configured model it
replaced: name, version, sha256), and at the agent's start swaps the same bundle in again — through
the slot's own checks (sha256, self-test), as the command did. Before, a restart (a power cut, an
update, a config change) quietly put the configured model back while the centre believed the
pushed one ran.

The configured model wins when it changed since the push (a release shipping a new model, an
engineer naming another file): the push was a replacement for what was configured then. Either
way the start says so with an event (`model_restored`, or `model_not_restored` and why).
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from water_edge.core.files import read_json_state, write_json_state
from water_edge.core.processor import ModelSlotLike, SwapOutcome
from water_edge.core.reading import Event, now_ns

log = structlog.get_logger(__name__)

MODELS_DIR = "models"  # under gateway.state_dir: <slot>/cmd-…/ bundles and <slot>/in-service.json
RECORD = "in-service.json"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def remember(slot_dir: Path, bundle: Path, manifest: str, replaced: str | None) -> str | None:
    """Record that `bundle/manifest` is in service in the slot whose files are in `slot_dir`, in
    place of the configured model `replaced` (its fingerprint); why it could not be written, else None."""
    record = {"bundle": bundle.name, "manifest": manifest, "replaced": replaced}
    return write_json_state(slot_dir / RECORD, record, "model.in_service")


def replaced_model(slot_dir: Path, slot: ModelSlotLike) -> str | None:
    """The configured model a push replaces: the record's, when a pushed model is already in
    service, else the one the slot serves now."""
    record = read_json_state(slot_dir / RECORD, "model.in_service")
    if isinstance(record, dict) and isinstance(record.get("replaced"), str):
        return str(record["replaced"])
    return slot.fingerprint


async def restore(models_dir: Path, slots: Mapping[str, ModelSlotLike]) -> list[Event]:
    """Swap each slot's pushed model in again; the events that say what happened."""
    events: list[Event] = []
    for record_path, record in await asyncio.to_thread(_records, models_dir):
        name = record_path.parent.name
        ok, detail = await _restore_one(record_path, record, slots.get(name))
        detail = {"slot": name, **detail}
        if ok:
            log.info("model.restored", **detail)
            events.append(Event("model_restored", name, now_ns(), "info", detail=detail))
        else:
            log.warning("model.not_restored", **detail)
            events.append(Event("model_not_restored", name, now_ns(), "warning", detail=detail))
            # The configured model is in service from now on.
            await asyncio.to_thread(record_path.unlink, missing_ok=True)
    return events


def _records(models_dir: Path) -> list[tuple[Path, Any]]:
    paths = sorted(models_dir.glob(f"*/{RECORD}"))
    found = [(path, read_json_state(path, "model.in_service")) for path in paths]
    return [(path, record) for path, record in found if record is not None]


async def _restore_one(
    record_path: Path, record: Any, slot: ModelSlotLike | None
) -> tuple[bool, dict[str, Any]]:
    if slot is None:
        return False, {"reason": "no such model slot in this config (processor removed or renamed)"}
    bundle, manifest = (record.get(k) if isinstance(record, dict) else None for k in ("bundle", "manifest"))
    if not (isinstance(bundle, str) and isinstance(manifest, str)) or not all(
        _PLAIN_NAME.match(n) and n not in (".", "..") for n in (bundle, manifest)
    ):
        return False, {"reason": f"unreadable record {record_path}"}
    if record.get("replaced") != slot.fingerprint:
        return False, {
            "reason": "the configured model changed since the push: it stays in service",
            "configured": slot.fingerprint,
        }
    ok, detail = await swap(slot, record_path.parent / bundle / manifest)
    if not ok:
        detail["reason"] = f"the pushed model was refused: {detail['reason']}"
    return ok, detail


async def swap(slot: ModelSlotLike, manifest: Path) -> tuple[bool, dict[str, Any]]:
    """Put `manifest`'s model in service in `slot` (its sha256 and self-test decide): whether it
    did, and what an accepted swap reports (a slot's dict as it is, else the version now in
    service) or why it refused (`reason`; the slot keeps its model)."""
    try:
        outcome = slot.swap(manifest)
        if inspect.isawaitable(outcome):
            outcome = await outcome
    except (OSError, ValueError, RuntimeError) as exc:
        return False, {"reason": str(exc)}
    if isinstance(outcome, dict):
        return True, outcome
    version = outcome.version if isinstance(outcome, SwapOutcome) else None
    if isinstance(outcome, SwapOutcome) and not outcome.ok:
        return False, {"reason": str(outcome.reason), "version": version}
    return True, {"version": version}
