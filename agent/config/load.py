"""Reads the TOML file and validates all of it; each problem names the file, key path and expectation."""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from water_edge.agent import processors
from water_edge.agent.config.example import UntouchedExampleError, untouched_example
from water_edge.agent.config.schema import (
    SCHEMA_VERSION,
    AgentSection,
    BufferSection,
    ClockSection,
    GatewaySection,
    LogSection,
    StateBackupSection,
    StatusSection,
)
from water_edge.agent.config.tag_refs import check_tag_references
from water_edge.agent.config.unions import merge_union_errors
from water_edge.agent.host_health import RAM_ADVICE
from water_edge.agent.locate import state_access_hint
from water_edge.agent.remote.config import SecuritySection
from water_edge.agent.update.config import UpdateSection
from water_edge.agent.uplink.config import CROSS_KEY_CHECKS_BY_CALLER, MqttConfig, cross_key_problems
from water_edge.agent.writes import WritesSection
from water_edge.core.errors import ConfigError
from water_edge.core.hosts import is_loopback
from water_edge.core.mounts import in_ram
from water_edge.core.patterns import pattern_words
from water_edge.core.processor import (
    ChecksDevices,
    ChecksSections,
    ProcessorFactory,
    ReadsTags,
    WarnsSections,
)
from water_edge.core.reading import EVENTS_STREAM
from water_edge.core.redact import is_secret_key
from water_edge.core.secrets import SecretRef
from water_edge.core.toml_text import NotUtf8TextError, TOMLDecodeError, parse_toml, read_toml_text
from water_edge.drivers import registry
from water_edge.drivers.base import DeviceConfig, Writable
from water_edge.drivers.serial_names import numbered_port, numbered_port_advice

# A Unix socket's path (sun_path) is 108 bytes on Linux, its terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107
RESERVED_STREAMS = frozenset({EVENTS_STREAM, "status", "cmd", "state_backup"})
_TABLES = TypeAdapter(list[Any])
M = TypeVar("M", bound=BaseModel)


def _as_json(raw: Any) -> bytes:
    try:
        data = orjson.dumps(raw)
    except TypeError:
        # An integer beyond 64 bits: TOML parsers read any size, orjson refuses them. The standard
        # library writes it, and the model then says where it is out of range.
        return json.dumps(raw, default=_iso_text).encode()
    # orjson writes TOML's nan and inf as null, which an optional key takes as "not set": the
    # standard library keeps them (NaN, Infinity), for the model and `_unusable` to refuse.
    return json.dumps(raw, default=_iso_text).encode() if b"null" in data else data


def _unusable(raw: Any, loc: tuple[int | str, ...] = ()) -> list[tuple[tuple[int | str, ...], str, Any]]:
    """(where, error type, value) of each value TOML writes but no setting means: nan and inf, and
    text holding a NUL character (which no file name, host or name can hold)."""
    if isinstance(raw, float):
        return [] if math.isfinite(raw) else [(loc, "finite_number", raw)]
    if isinstance(raw, str):
        return [(loc, "nul_character", raw)] if "\x00" in raw else []
    if isinstance(raw, dict):
        return [found for key, value in raw.items() for found in _unusable(value, (*loc, key))]
    if isinstance(raw, list):
        return [found for i, value in enumerate(raw) for found in _unusable(value, (*loc, i))]
    return []


def _validate(source: Path, model: type[M], raw: Any, where: str, problems: list[str]) -> M | None:
    """`raw` validated by `model`, or None with every problem found appended to `problems`."""
    section, errors = _checked(model, raw)
    problems.extend(_lines(source, errors, where))
    return section


def _checked(model: type[M], raw: Any, context: Any = None) -> tuple[M | None, list[dict[str, Any]]]:
    """`raw` validated by `model` (None when refused) and the errors found, by key.

    No type coercion: TOML values are typed, so `port = "1883"` is a string where a number belongs,
    and says so. Validated as JSON (TOML dates become ISO text), whose strict mode still takes text
    for paths and dates and an integer for a float."""
    data = _as_json(raw)
    errors: list[dict[str, Any]] = []
    try:
        section = model.model_validate_json(data, strict=True, context=context)
    except ValidationError as exc:
        errors = merge_union_errors(exc.errors())
        section = None
    if b"NaN" in data or b"Infinity" in data or b"\\u0000" in data:
        # Where the model said nothing of it: an unbounded number (a scale, an offset) takes nan, a
        # path or a password takes a NUL, which fails only when used, with a traceback.
        said = [tuple(e["loc"]) for e in errors]
        errors += [
            {"type": kind, "loc": loc, "input": value}
            for loc, kind, value in _unusable(raw)
            if not any(found[: len(loc)] == loc for found in said)
        ]
    errors = [_with_toml_time(e, raw) for e in errors]
    return (None if errors else section), errors


# The loader makes the sections' checks across keys itself, beside the keys' own errors
# (`_sections`): a model validator runs only once every key of its table is valid.
_LOADER_CHECKS: Final = {CROSS_KEY_CHECKS_BY_CALLER: True}
_MISSING: Final = object()


@dataclass(frozen=True)
class _Sections:
    """The file's sections as far as their keys are valid, for the checks across keys and sections.

    A section with keys refused on their own is kept with those keys at their defaults (or unset,
    when required) and named in `refused`: a check needing one of them is skipped, lest it judge a
    default instead of what was written. None: the section itself is refused (not a table)."""

    parts: dict[str, BaseModel | None]
    refused: dict[str, frozenset[str]]

    def value(self, section: str, key: str) -> Any:
        """The valid value of `section.key` (its default when not written), or `_MISSING`."""
        part = self.parts.get(section)
        if part is None or key in self.refused.get(section, ()):
            return _MISSING
        return getattr(part, key, _MISSING)


def _sections(
    raw: Mapping[str, Any], errors: Sequence[Mapping[str, Any]], whole: AgentSection | None
) -> _Sections:
    models = {
        name: model for name, info in AgentSection.model_fields.items() if (model := _model(info.annotation))
    }
    names = list(models)
    if whole is not None:
        return _Sections({name: getattr(whole, name) for name in names}, {})
    parts: dict[str, BaseModel | None] = {}
    refused: dict[str, frozenset[str]] = {}
    for name in names:
        info = AgentSection.model_fields[name]
        own = [tuple(e["loc"][1:]) for e in errors if tuple(e["loc"][:1]) == (name,)]
        if () in own or (name in raw and not isinstance(raw[name], dict)):
            parts[name] = None
        elif name not in raw:
            parts[name] = None if info.is_required() else info.get_default(call_default_factory=True)
        else:
            parts[name], refused[name] = _partial(models[name], raw[name], {str(loc[0]) for loc in own})
    return _Sections(parts, refused)


def _partial(model: type[M], raw: Mapping[str, Any], bad: set[str]) -> tuple[M, frozenset[str]]:
    """`model` holding the keys of `raw` not in `bad` (each valid, as the whole's errors said), the
    others at their defaults; and the keys left out."""
    values: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        key = info.alias or name
        if key in bad or key not in raw:
            continue
        try:
            values[name] = _adapter(model, name).validate_json(
                _as_json(raw[key]), strict=True, context=_LOADER_CHECKS
            )
        except ValidationError:
            bad.add(key)
    return model.model_construct(_fields_set=set(values), **values), frozenset(bad)


@functools.cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    annotation: Any = model.model_fields[name].annotation
    return TypeAdapter(annotation)


def _model(annotation: object) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _with_toml_time(error: dict[str, Any], raw: Any) -> dict[str, Any]:
    """The error with the value as TOML gave it when that was a time or date (`night_start =
    02:00`, unquoted): its ISO text ('02:00:00') would read as a typo of what was written."""
    value = raw
    for part in error["loc"]:
        found = isinstance(value, dict) and part in value
        found = found or (isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value))
        if found:
            value = value[part]
        elif not isinstance(value, dict | list):
            break  # a union's branch name or a validator's own step: the value is found
    return {**error, "input": value} if isinstance(value, datetime.date | datetime.time) else error


def _iso_text(value: object) -> str:
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a TOML value")


@dataclass(frozen=True)
class Config:
    source: Path
    gateway: GatewaySection
    uplink: MqttConfig
    buffer: BufferSection
    status: StatusSection
    log: LogSection
    devices: tuple[DeviceConfig, ...]
    security: SecuritySection = field(default_factory=SecuritySection)
    writes: WritesSection = field(default_factory=WritesSection)
    update: UpdateSection = field(default_factory=UpdateSection)
    clock: ClockSection = field(default_factory=ClockSection)
    state_backup: StateBackupSection = field(default_factory=StateBackupSection)
    # `[[models.<kind>]]` tables by processor kind, each validated by that kind's config model;
    # only kinds with at least one table, in file order.
    models: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    # Accepted but worth saying (a deprecated key): "file: key: what to do", for check-config and
    # the agent's log.
    warnings: tuple[str, ...] = ()

    @property
    def buffer_path(self) -> Path:
        return self.gateway.state_dir / self.buffer.path

    @property
    def status_socket(self) -> Path:
        return self.gateway.state_dir / self.status.socket


def key_path(loc: Sequence[int | str]) -> str:
    """("devices", 0, "tags", 3, "type") -> "devices[0].tags[3].type"; a table's key that is itself
    refused (pydantic's ("flows", "x", "[key]")) -> "flows key 'x'"."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue
        elif i + 1 < len(loc) and loc[i + 1] == "[key]":
            out += f" key {part!r}"
        else:
            out += f".{part}" if out else str(part)
    return out


# Type errors in the words of the file's own language (TOML), not pydantic's or JSON's.
_TOML_TYPES = {
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "model_attributes_type": "expected a table",
    "list_type": "expected a list",
    "tuple_type": "expected a list",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "finite_number": "expected a finite number",
    "nul_character": "expected text without a NUL character (\\u0000)",
}


def _describe(error: Any, secret: bool = False) -> str:
    kind = error["type"]
    message = _TOML_TYPES.get(kind) or str(error["msg"])
    got = error.get("input")
    if kind == "int_type" and isinstance(got, str) and got.strip().lstrip("+-").isdigit():
        message = "expected an integer, without quotes"
    if kind == "extra_forbidden":
        return "unknown key (not part of the schema; check the spelling)"
    if kind == "missing":
        return "required key is missing"
    if kind == "string_pattern_mismatch":
        words = pattern_words(error.get("ctx", {}).get("pattern"))
        message = f"expected {words}" if words else message
    if kind in ("value_error", "assertion_error"):
        message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if secret:
        # A mistyped password is still a password: say what is wrong, never what was given.
        return f"{message} (value not shown)"
    if isinstance(got, datetime.date | datetime.time) and kind != "missing":
        text = got.strftime("%H:%M") if isinstance(got, datetime.time) and not got.second else got.isoformat()
        what = "time" if isinstance(got, datetime.time) else "date"
        message = message.replace(f" (got {got.isoformat()!r})", "")  # a validator's own, as ISO text
        return (
            f'{message} (got {got.isoformat()}: TOML reads {text} without quotes as a {what}; write "{text}")'
        )
    if kind != "missing" and not isinstance(got, dict | list) and f"(got {got!r})" not in message:
        return f"{message} (got {got!r})"
    return message


def _problems(source: Path, exc: ValidationError, prefix: str = "") -> list[str]:
    return _lines(source, merge_union_errors(exc.errors()), prefix)


def _lines(source: Path, errors: Sequence[Any], prefix: str = "") -> list[str]:
    problems = []
    for err in errors:
        rest = key_path(err["loc"]) if err["loc"] else ""
        where = f"{prefix}.{rest}" if prefix and rest else (prefix or rest or "(top level)")
        secret = any(is_secret_key(part) for part in err["loc"])
        problem = f"{source}: {where}: {_describe(err, secret)}"
        if err["type"] in ("list_type", "tuple_type") and isinstance(err.get("input"), dict):
            table = re.sub(r"\[\d+\]| \([^)]*\)", "", where)  # devices[0] (plc).tags -> devices.tags
            problem += f" of tables: [[{table}]], in double brackets ([{table}] is one table)"
        problems.append(problem)
    return problems


def _read_toml(source: Path) -> dict[str, Any]:
    try:
        text = read_toml_text(source)
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read the config file: {exc.strerror}"]) from exc
    except NotUtf8TextError as exc:
        raise ConfigError([f"{source}: {exc}"]) from exc
    try:
        return parse_toml(text)
    except TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc


def _validate_device(
    source: Path, index: int, raw: dict[str, Any], problems: list[str]
) -> DeviceConfig | None:
    name = raw.get("name")
    where = f"devices[{index}]" + (f" ({name})" if isinstance(name, str) else "")
    kind = raw.get("kind")
    if not isinstance(kind, str):
        problems.append(f"{source}: {where}.kind: required, one of {', '.join(registry.known_kinds())}")
        return None
    factory = registry.load(kind)
    if factory is None:
        problems.append(
            f"{source}: {where}.kind: unknown driver {kind!r}; installed drivers are "
            f"{', '.join(registry.known_kinds())}"
        )
        return None
    return _validate(source, factory.config_model, raw, where, problems)


def _validate_models(
    source: Path,
    raw_models: object,
    devices: Mapping[str, str],
    problems: list[str],
    warnings: list[str] | None = None,
) -> dict[str, tuple[Any, ...]]:
    """Each `[[models.<kind>]]` list by the config model of the processor kind that its key names,
    then by the kind's own checks across its tables (`ChecksSections`) when every table is valid;
    the kind's warnings (`WarnsSections`) go to `warnings`."""
    if raw_models is None:
        return {}
    if not isinstance(raw_models, dict):
        problems.append(f"{source}: models: expected a table of [[models.<kind>]] lists (got {raw_models!r})")
        return {}
    models: dict[str, tuple[Any, ...]] = {}
    for kind, raw_tables in raw_models.items():
        factory = processors.load(kind)
        if factory is None:
            problems.append(
                f"{source}: models.{kind}: unknown processor kind {kind!r}; installed processors are "
                f"{', '.join(processors.known_kinds())}"
            )
            continue
        if isinstance(raw_tables, dict):
            problems.append(
                f"{source}: models.{kind}: expected [[models.{kind}]] tables "
                f"(double brackets; [models.{kind}] is one table)"
            )
            continue
        sections = _validate_kind(
            source, kind, factory, raw_tables, devices=devices, problems=problems, warnings=warnings
        )
        if sections:
            models[kind] = tuple(sections)
    return models


def _validate_kind(
    source: Path,
    kind: str,
    factory: type[ProcessorFactory],
    raw_tables: object,
    *,
    devices: Mapping[str, str],
    problems: list[str],
    warnings: list[str] | None,
) -> list[Any]:
    """The valid tables of one processor kind; problems and warnings appended as found."""
    try:
        tables = _TABLES.validate_python(raw_tables)
    except ValidationError as exc:
        problems.extend(_problems(source, exc, f"models.{kind}"))
        return []
    sections = []
    for index, table in enumerate(tables):
        section = _validate(source, factory.config_model, table, f"models.{kind}[{index}]", problems)
        if section is not None:
            sections.append(section)
    if len(sections) == len(tables) and isinstance(factory, ChecksSections):
        for found in factory.check_sections(sections, devices):
            problems.append(f"{source}: {key_path(('models', kind, *found.where))}: {found.message}")
    if warnings is not None and isinstance(factory, WarnsSections):
        for found in factory.section_warnings(sections):
            warnings.append(f"{source}: {key_path(('models', kind, *found.where))}: {found.message}")
    return sections


def _device_kinds(raw_devices: object) -> dict[str, str]:
    """Name -> kind of every `[[devices]]` table that has both, valid or not (a device with a
    mistake elsewhere must not also make the processors that name it look wrong)."""
    if not isinstance(raw_devices, list):
        return {}
    return {
        d["name"]: d["kind"]
        for d in raw_devices
        if isinstance(d, dict) and isinstance(d.get("name"), str) and isinstance(d.get("kind"), str)
    }


class StateFilesClosedError(ConfigError):
    """The config is valid as far as it could be checked, but the files it names in the agent's
    state directory may not be looked at by this user (the directory is the agent's, 0750): one
    line naming the path and who may (`str(exc)`), for a command that would work on those files."""

    def __init__(self, message: str, paths: Sequence[Path]) -> None:
        self.paths = tuple(paths)
        super().__init__([message])


def load_config(path: str | Path, *, closed_state: Literal["error", "warning"] = "error") -> Config:
    """Parse and validate the whole file; raise ConfigError listing every problem found.

    State files this user may not look at (the agent's state directory is 0750) cannot be checked:
    `StateFilesClosedError` for a command that works on them (`closed_state="error"`), or one
    warning and the rest checked (`"warning"`: `check-config`)."""
    source = Path(path)
    raw = _read_toml(source)
    if (untouched := untouched_example(source)) is not None:  # not a site's config: never run on it
        raise UntouchedExampleError([untouched])
    if not raw:
        raise ConfigError(
            [
                f"{source}: the file holds no settings; a config needs at least schema_version = "
                f"{SCHEMA_VERSION}, [gateway] and [uplink] (see deploy/config.example.toml)"
            ]
        )
    problems: list[str] = []
    version = raw.get("schema_version")
    # `true` equals 1 in Python, and the schema's Literal[1] takes it too.
    if version != SCHEMA_VERSION or isinstance(version, bool):
        # Reported, then the rest is checked as this version's: every problem in one pass.
        problems.append(
            f"{source}: schema_version: required key is missing (expected {SCHEMA_VERSION})"
            if version is None
            else f"{source}: schema_version: expected {SCHEMA_VERSION} (got {version!r})"
        )
        raw = {**raw, "schema_version": SCHEMA_VERSION}
    warnings: list[str] = []
    closed: list[tuple[str, Path, OSError]] = []  # state files this user may not look at
    # Devices and models are validated table by table below, each by its own model: a copy of
    # every table here would double what a large config costs to check.
    rest = {k: v for k, v in raw.items() if k not in ("devices", "models")}
    section, errors = _checked(AgentSection, rest, _LOADER_CHECKS)
    problems.extend(_lines(source, errors, ""))
    # Every check across keys is made beside the keys' own errors, skipping only one that needs a
    # key refused on its own: every independent problem of the file in one run.
    known = _sections(rest, errors, section)
    uplink = known.parts.get("uplink")
    if isinstance(uplink, MqttConfig):
        problems += [
            f"{source}: uplink.{key}: {message}"
            for key, message in cross_key_problems(uplink, known.refused.get("uplink", ()))
        ]

    models = _validate_models(
        source, raw.get("models"), _device_kinds(raw.get("devices")), problems, warnings
    )
    device_problems: list[str] = []
    # The valid devices by their place in the file: the checks of one device need only it.
    valid_devices = _validate_devices(source, raw.get("devices", []), device_problems)
    devices = list(valid_devices.values())
    problems += device_problems
    if not device_problems:
        # A tag a model names is looked for among every device's tags: not while a device is
        # refused, whose tags are not known (a bare tag could be its, or be read twice).
        _check_model_tags(source, models, devices, problems, warnings)
    warnings += [
        f"{source}: devices[{index}] ({device.name}).frozen_after_s: {note}"
        for index, device in valid_devices.items()
        if (note := device.frozen_check_note()) is not None
    ]
    warnings += _this_machine_warnings(source, known.parts.get("gateway"), valid_devices)
    if isinstance(status := known.parts.get("status"), StatusSection):
        warnings += _metrics_auth_warnings(source, status)
    if isinstance(uplink, MqttConfig):
        warnings += _uplink_warnings(source, uplink)
        if isinstance(security := known.parts.get("security"), SecuritySection):
            warnings += _claim_port_warnings(source, uplink, security)
    _check_rbe_matches(source, rest.get("uplink"), errors, problems)
    _check_paths(source, known, valid_devices, models, problems=problems, closed=closed)
    writes = known.parts.get("writes")
    if isinstance(writes, WritesSection):
        _check_write_devices(source, writes, _device_kinds(raw.get("devices")), problems)
        writes = _write_units(source, writes, devices, problems)
    if problems or section is None or not isinstance(writes, WritesSection):
        raise ConfigError(problems)
    if closed:
        key, where, error = closed[0]
        why = f"{error.strerror or error}"
        if closed_state == "error":
            raise StateFilesClosedError(
                f"{where}: {why} ({source}: {key}): {state_access_hint(where)}", [p for _, p, _ in closed]
            )
        warnings.append(
            f"{source}: {', '.join(k for k, _, _ in closed)}: not checked, {where} is not readable by "
            f"this user ({why}): {state_access_hint(where)} to check them"
        )
    return Config(
        source=source,
        gateway=section.gateway,
        uplink=section.uplink,
        buffer=section.buffer,
        status=section.status,
        log=section.log,
        devices=tuple(devices),
        security=section.security,
        writes=writes,
        update=section.update,
        clock=section.clock,
        state_backup=section.state_backup,
        models=models,
        warnings=tuple(warnings),
    )


def _check_paths(
    source: Path,
    known: _Sections,
    devices: Mapping[int, DeviceConfig],
    models: Mapping[str, tuple[Any, ...]],
    *,
    problems: list[str],
    closed: list[tuple[str, Path, OSError]],
) -> None:
    """The files the config names, of every section and device that is valid as far as they go:
    absolute, secrets readable, the status socket's path not too long, the state files each a file
    of its own."""
    relative = [
        *(p for name, part in known.parts.items() if part is not None for p in _relative_paths(part, name)),
        *(p for i, d in devices.items() for p in _relative_paths(d, f"devices[{i}] ({d.name})")),
        *(
            p
            for kind, sections in models.items()
            for i, m in enumerate(sections)
            if isinstance(m, BaseModel)
            for p in _relative_paths(m, f"models.{kind}[{i}]")
        ),
    ]
    problems += [
        f"{source}: {key}: expected an absolute path: the agent runs from / under systemd, not from "
        f"where the file is checked by hand (got {str(path)!r})"
        for key, path in relative
    ]
    if isinstance(uplink := known.parts.get("uplink"), MqttConfig):
        _check_secrets(source, uplink, "uplink", problems)
    for index, device in devices.items():
        _check_secrets(source, device, f"devices[{index}] ({device.name})", problems)
    if isinstance(status := known.parts.get("status"), StatusSection) and status.metrics_auth is not None:
        _check_secrets(source, status.metrics_auth, "status.metrics_auth", problems)
    state_dir, socket = known.value("gateway", "state_dir"), known.value("status", "socket")
    if state_dir is not _MISSING and socket is not _MISSING:
        _check_status_socket(source, state_dir / socket, problems)
    if state_dir is not _MISSING:
        files = {key: known.value(*key.split(".")) for key in _STATE_FILES}
        _check_state_files(
            source, state_dir, {k: v for k, v in files.items() if v is not _MISSING}, problems, closed
        )


def _uplink_warnings(source: Path, uplink: MqttConfig) -> list[str]:
    if uplink.protocol != "3.1.1":
        return []
    return [
        f'{source}: uplink.protocol: "3.1.1" cannot tell a topic the broker refuses: the broker '
        "acknowledges a publish its ACL denies and drops it, and the rows are deleted as delivered. "
        'Use "5" (Mosquitto, EMQX, HiveMQ, VerneMQ speak it), or check the broker\'s ACL for this '
        "gateway's topics"
    ]


def _claim_port_warnings(source: Path, uplink: MqttConfig, security: SecuritySection) -> list[str]:
    """A claim enrolment takes the uplink's transport: over WebSockets, the default 8883 is
    rarely a WebSocket listener (and a network that lets the gateway out on 443 only blocks it)."""
    claim = security.identity.claim
    if claim is None or uplink.transport != "websockets" or "port" in claim.model_fields_set:
        return []
    return [
        f"{source}: security.identity.claim.port: not given, so 8883, but the enrolment connection "
        "takes the uplink's transport = \"websockets\": give the port of the enrolment broker's "
        "WebSocket listener (often 443)"
    ]


def _check_rbe_matches(
    source: Path, raw_uplink: object, errors: Sequence[Mapping[str, Any]], problems: list[str]
) -> None:
    """A report-by-exception rule is matched against `device/tag`: a `match` with no `/` that does
    not begin with a wildcard can match no reading, and the rule would silently do nothing.

    Read from the file's table, each rule on its own: a mistake in another rule or key of
    `[uplink]` does not hold this one back (a `match` refused on its own is not judged again)."""
    rbe = raw_uplink.get("rbe") if isinstance(raw_uplink, dict) else None
    rules = rbe.get("tags") if isinstance(rbe, dict) else None
    refused = {tuple(e["loc"]) for e in errors}
    for index, rule in enumerate(rules if isinstance(rules, list) else ()):
        match = rule.get("match") if isinstance(rule, dict) else None
        if not isinstance(match, str) or ("uplink", "rbe", "tags", index, "match") in refused:
            continue
        if "/" not in match and not match.startswith(("*", "?", "[")):
            problems.append(
                f"{source}: uplink.rbe.tags[{index}].match: expected a 'device/tag' pattern, e.g. "
                f"'plc/{match}', or '*/{match}' for every device (got {match!r}, which "
                "matches no reading)"
            )


def _check_model_tags(
    source: Path,
    models: Mapping[str, tuple[Any, ...]],
    devices: list[DeviceConfig],
    problems: list[str],
    warnings: list[str],
) -> None:
    """Each tag a processor kind's tables name (`ReadsTags`) against the devices' tags, and the tables
    against the devices' configs (`ChecksDevices`)."""
    configs = {device.name: device for device in devices}
    for kind, sections in models.items():
        factory = processors.load(kind)
        if isinstance(factory, ChecksDevices):
            problems += [
                f"{source}: {key_path(('models', kind, *p.where))}: {p.message}"
                for p in factory.check_devices(sections, configs)
            ]
        if not isinstance(factory, ReadsTags):
            continue
        found, doubtful = check_tag_references(factory.tag_references(sections), devices)
        problems += [f"{source}: {key_path(('models', kind, *p.where))}: {p.message}" for p in found]
        warnings += [f"{source}: {key_path(('models', kind, *p.where))}: {p.message}" for p in doubtful]


def _check_write_devices(
    source: Path, writes: WritesSection, devices: Mapping[str, str], problems: list[str]
) -> None:
    """Each `[[writes.allow]]` rule names a device whose driver writes; otherwise the rule is one
    no write can ever pass, found only when a set-point is needed."""
    writers = sorted(name for name, kind in devices.items() if _writes(kind))
    for index, rule in enumerate(writes.allow):
        if rule.device in devices and _writes(devices[rule.device]):
            continue
        got = f"{rule.device!r}" + (f", of kind {devices[rule.device]}" if rule.device in devices else "")
        problems.append(
            f"{source}: writes.allow[{index}].device: expected the name of a device whose driver "
            f"writes, e.g. Modbus (got {got}; such devices: {', '.join(writers) or 'none'})"
        )


def _write_units(
    source: Path, writes: WritesSection, devices: list[DeviceConfig], problems: list[str]
) -> WritesSection:
    """Each rule's unit ID: the device's own when the rule names none. One the rule names must be
    a unit the device reads (its own or a tag's): any other is another device on the same serial
    line or behind the same gateway. On a serial line 0 is a broadcast that every slave obeys and
    none answers, and 248-255 are reserved."""
    by_name = {d.name: d for d in devices}
    rules = []
    for index, rule in enumerate(writes.allow):
        device = by_name.get(rule.device)
        own = getattr(device, "unit_id", None)
        if not isinstance(own, int):
            rules.append(rule)
            continue
        unit_of = getattr(device, "unit_of", None)
        read = {own} | ({unit_of(tag) for tag in getattr(device, "tags", ())} if callable(unit_of) else set())
        unit = own if rule.unit_id is None else rule.unit_id
        key = f"{source}: writes.allow[{index}].unit_id"
        if getattr(device, "kind", "") == "modbus_rtu" and not 1 <= unit <= 247:
            problems.append(f"{key}: expected 1..247 on a serial line (got {unit}: 0 is a broadcast every "
                            "slave obeys, 248-255 are reserved)")  # fmt: skip
        elif unit not in read:
            units = ", ".join(str(u) for u in sorted(read))
            problems.append(
                f"{key}: expected a unit device {rule.device!r} reads ({units}); got {unit}, which "
                "would be another device on its line or behind its gateway"
            )
        rules.append(rule if rule.unit_id == unit else rule.model_copy(update={"unit_id": unit}))
    return writes.model_copy(update={"allow": rules})


def _writes(kind: str) -> bool:
    factory = registry.load(kind)
    return factory is not None and issubclass(factory, Writable)


def _check_status_socket(source: Path, path: Path, problems: list[str]) -> None:
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH_BYTES:
        problems.append(
            f"{source}: status.socket: the status socket {path} is {size} bytes long; a Unix socket's "
            f"path holds at most {MAX_SOCKET_PATH_BYTES}: set [status] socket to a shorter "
            "absolute path, or use a shorter gateway.state_dir"
        )


# The files the agent keeps in gateway.state_dir (or wherever they are put), by key.
_STATE_FILES: Final = ("buffer.path", "status.socket", "security.nonce_db", "security.audit_log")


def _check_state_files(
    source: Path,
    state_dir: Path,
    files: Mapping[str, Path],
    problems: list[str],
    closed: list[tuple[str, Path, OSError]],
) -> None:
    """The state directory is one, and the files the agent keeps in it (or wherever they are put)
    are files, each its own: an outbox path that is the directory itself, a directory, or the
    nonce database's file would fail the start, or worse, quarantine the outbox as damaged.
    `files`: those of `_STATE_FILES` that are valid.

    A path this user may not look at (the state directory is the agent's, 0750) goes to `closed`
    with the error, by key; the checks that need no look at the disk are still made."""
    try:
        if state_dir.exists() and not state_dir.is_dir():
            problems.append(f"{source}: gateway.state_dir: expected a directory (got {state_dir}, a file)")
            return
    except OSError as exc:
        closed.append(("gateway.state_dir", state_dir, exc))
    seen: dict[Path, str] = {}
    for key, written in files.items():
        path = Path(os.path.normpath(state_dir / written))
        if str(written) in ("", "."):  # TOML's "" reads as Path("."): the state directory itself
            problems.append(f"{source}: {key}: expected a file name or path (got an empty value or '.')")
        elif path == Path(os.path.normpath(state_dir)) or _is_dir(key, path, closed):
            problems.append(
                f"{source}: {key}: expected a file, not a directory (got {str(written)!r}, {path})"
            )
        elif (other := seen.setdefault(path, key)) != key:
            problems.append(f"{source}: {key}: expected a file of its own (got {path}, which is {other})")


def _is_dir(key: str, path: Path, closed: list[tuple[str, Path, OSError]]) -> bool:
    """`path` is a directory; False, with `key` added to `closed`, when this user may not tell."""
    try:
        return path.is_dir()
    except OSError as exc:
        closed.append((key, path, exc))
        return False


# Paths taken from gateway.state_dir when relative (the rest must be absolute: `_relative_paths`).
STATE_RELATIVE_KEYS: Final = frozenset(
    {"buffer.path", "status.socket", "security.nonce_db", "security.audit_log", "security.identity.directory"}
)


def _relative_paths(model: BaseModel, where: str) -> Iterator[tuple[str, Path]]:
    """Every relative path `model` holds (its sub-tables and secret references included), by key.
    A relative path follows the working directory: the config checked by hand in /etc/edge-agent
    finds the file, and the service, started in /, does not."""
    for name in type(model).model_fields:
        value = getattr(model, name, None)  # a required key refused on its own is not set
        key = f"{where}.{name}" if where else name
        if isinstance(value, Path):
            if not value.is_absolute() and key not in STATE_RELATIVE_KEYS:
                yield key, value
        elif isinstance(value, BaseModel):
            yield from _relative_paths(value, key)
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                if isinstance(item, BaseModel):
                    yield from _relative_paths(item, f"{key}[{i}]")


def _check_secrets(source: Path, model: BaseModel, where: str, problems: list[str]) -> None:
    """Each secret reference in `model` must resolve now (file readable and private, variable set);
    a relative file is reported as such (`_relative_paths`), not looked for."""
    for name in type(model).model_fields:
        value = getattr(model, name, None)
        if isinstance(value, SecretRef) and (value.file is None or value.file.is_absolute()):
            try:
                value.resolve()
            except ConfigError as exc:
                problems.extend(
                    f"{source}: {where}.{name}: {p.removeprefix('secret: ')}" for p in exc.problems
                )


def validate_devices(source: Path, raw_devices: object) -> list[DeviceConfig]:
    """Validate `[[devices]]` sections on their own (for `probe --devices-file`)."""
    problems: list[str] = []
    devices = _validate_devices(source, raw_devices, problems)
    if problems:
        raise ConfigError(problems)
    return list(devices.values())


def _validate_devices(source: Path, raw_devices: object, problems: list[str]) -> dict[int, DeviceConfig]:
    """The valid `[[devices]]` tables by their place in the file; every problem to `problems`."""
    devices: dict[int, DeviceConfig] = {}
    if not isinstance(raw_devices, list):
        problems.append(f"{source}: devices: expected a list of [[devices]] tables")
        return devices
    for index, item in enumerate(raw_devices):
        if not isinstance(item, dict):
            problems.append(f"{source}: devices[{index}]: expected a table")
            continue
        device = _validate_device(source, index, item, problems)
        if device is not None:
            devices[index] = device
    _check_names(source, raw_devices, list(devices.values()), problems)
    return devices


def _check_names(
    source: Path, raw_devices: list[Any], devices: list[DeviceConfig], problems: list[str]
) -> None:
    # Names from the raw tables: a device with a mistake elsewhere still takes its name.
    seen: dict[str, int] = {}
    for index, item in enumerate(raw_devices):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue
        if name in seen:
            problems.append(
                f"{source}: devices[{index}].name: device name {name!r} is used twice "
                f"(also devices[{seen[name]}])"
            )
        seen.setdefault(name, index)
    _check_serial_lines(source, raw_devices, devices, problems)
    # From the tables as written: a device with a mistake elsewhere still has its stream (the
    # reserved names are valid names, so a stream or name that is one is not refused on its own).
    for index, item in enumerate(raw_devices):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        stream = item.get("stream", name)
        if isinstance(stream, str) and stream in RESERVED_STREAMS:
            label = f" ({name})" if isinstance(name, str) else ""
            problems.append(
                f"{source}: devices[{index}]{label}.stream: {stream!r} is reserved for the agent's "
                "own messages"
            )


def _metrics_auth_warnings(source: Path, status: StatusSection) -> list[str]:
    """A metrics endpoint open to the network: without TLS nor a password anyone who reaches it
    reads the site's devices and state; with a password but no TLS, the password crosses in clear."""
    address = status.metrics_address()
    if address is None or status.metrics_tls is not None or is_loopback(address[0]):
        return []
    if status.metrics_auth is None:
        return [
            f"{source}: status.metrics: {status.metrics} serves the gateway's devices, site and broker "
            "in plain HTTP to every host that reaches it: add [status.metrics_tls] (with client_ca_file) "
            "or [status.metrics_auth], let a firewall decide who reaches it, or listen on 127.0.0.1 only"
        ]
    return [
        f"{source}: status.metrics_auth: the scraper's password crosses the network in clear (base64 "
        f"is no protection) to {status.metrics}: add [status.metrics_tls] (HTTPS), or listen on "
        "127.0.0.1 only"
    ]


def _this_machine_warnings(source: Path, gateway: object, devices: Mapping[int, DeviceConfig]) -> list[str]:
    """What the config meets on the machine it is checked on: serial ports named by a number that
    can change, a state directory whose writes stay in RAM (lost at every reboot)."""
    found = _numbered_port_warnings(source, devices)
    if isinstance(gateway, GatewaySection) and not gateway.accept_state_in_ram:
        medium = in_ram(gateway.state_dir)
        if medium is not None:
            found.append(
                f"{source}: gateway.state_dir: {gateway.state_dir} is in RAM on this machine "
                f"({medium}): {RAM_ADVICE}"
            )
    return found


def _numbered_port_warnings(source: Path, devices: Mapping[int, DeviceConfig]) -> list[str]:
    """A USB serial port named by its kernel number (`/dev/ttyUSB0`) can lead to another adapter
    after a reboot; one warning per port (a line of 30 Modbus units is one adapter), naming the
    adapter's stable name to put instead."""
    users: dict[str, list[str]] = {}  # port -> "devices[i] (name).key" of each device on it
    for index, device in devices.items():
        for port, _ in device.serial_lines():
            key = "port" if getattr(device, "port", None) == port else "receivers[].port"
            users.setdefault(port, []).append(f"devices[{index}] ({device.name}).{key}")
    found = []
    for port, where in users.items():
        if (names := numbered_port(port)) is not None:
            also = f" (and {len(where) - 1} more device(s) on it)" if len(where) > 1 else ""
            found.append(f"{source}: {where[0]}{also}: {numbered_port_advice(port, names)}")
    return found


def _check_serial_lines(
    source: Path, raw_devices: list[Any], devices: list[DeviceConfig], problems: list[str]
) -> None:
    """Devices naming one serial port share it, so they must agree on its protocol and line
    settings; otherwise whichever opens second would fail on site, found here instead."""
    index = {
        item["name"]: i
        for i, item in enumerate(raw_devices)
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    }
    first: dict[str, tuple[DeviceConfig, str]] = {}  # port -> its first device, at its settings
    for device in devices:
        for port, settings in device.serial_lines():
            # where the path leads: a /dev/serial/by-id/... link and its /dev/ttyUSB0 are one port
            owner, owner_settings = first.setdefault(os.path.realpath(port), (device, settings))
            if owner is not device and owner_settings != settings:
                problems.append(
                    f"{source}: devices[{index[device.name]}] ({device.name}).port: {port} is also "
                    f"{owner.name}'s, at {owner_settings}; devices on one port share its protocol and "
                    f"line settings (got {settings})"
                )


__all__ = [
    "BufferSection",
    "Config",
    "ConfigError",
    "GatewaySection",
    "LogSection",
    "StateFilesClosedError",
    "StatusSection",
    "load_config",
]
