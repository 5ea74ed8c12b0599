"""One processor kind's `[[models.<kind>]]` tables and `gateway.state_dir`, read from an agent
config file for the offline model tools (`edge-agent models calibrate ...`), which work on a
technician's copy of a config without loading the whole agent config."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text

M = TypeVar("M", bound=BaseModel)
DEFAULT_STATE_DIR = "/var/lib/edge-agent"


def processor_sections(path: Path, kind: str, model: type[M]) -> tuple[Path, list[M]]:
    """`gateway.state_dir` and the validated `[[models.<kind>]]` tables; `ValueError` with one line
    naming the file and the key on any problem."""
    try:
        raw = parse_toml(read_toml_text(Path(path)))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    except NotUtf8TextError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from exc
    gateway = _table(path, raw, "gateway")
    state_dir = gateway.get("state_dir", DEFAULT_STATE_DIR)
    if not isinstance(state_dir, str):
        raise ValueError(f"{path}: gateway.state_dir: expected a string (got {state_dir!r})")
    items = _table(path, raw, "models").get(kind) or []
    if not isinstance(items, list):
        raise ValueError(f"{path}: models.{kind}: expected a list of [[models.{kind}]] tables")
    sections = []
    for i, item in enumerate(items):
        try:
            sections.append(model.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"{path}: models.{kind}[{i}]{where}: {message}") from exc
    return Path(state_dir), sections


def _table(path: Path, raw: dict[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {key}: expected a table (got {value!r})")
    return value
