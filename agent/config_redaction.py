"""Secrets in a config file's text, as a person sends it: masked in the text, and their values
found so that they can be cut out of anything else (a journal, a status document).

Used by `edge-agent support-bundle` (agent.support_bundle) and by `status`'s journal lines
(agent.service_state). It goes by the text, not only the parsed document, so that a file that no
longer parses (half-edited: when it is needed most) is masked too: every string under a key named
like a secret (`core.redact.is_secret_key`) or a meter's `key`, WebSocket header values, passwords
in URLs, and the values of secret references (`{ file = ... }`, `{ env = ... }`) resolved now.
Values shorter than 4 characters are masked where their key says so, not searched for elsewhere
(as `core.redact` does).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any, Final

import orjson

from water_edge.core.redact import MASK, is_secret_key, redact

_MIN_SECRET: Final = 4  # as core.redact: shorter values are masked by key, not searched for


def is_secret_name(key: str) -> bool:
    """A key whose string value is a secret: named like one, or a meter's AES `key`."""
    return is_secret_key(key) or key.lower() in ("key", "aes_key", "authorization")


class Redactor:
    """Cuts known secret values out of texts and documents, in every form they may be written."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values: set[str] = set()
        self._forms: list[str] = []
        self.add(values)

    def add(self, values: Iterable[str]) -> None:
        self.values |= {v for v in values if isinstance(v, str) and len(v) >= _MIN_SECRET}
        forms: set[str] = set()
        for value in self.values:
            forms.add(value)
            forms.add(orjson.dumps(value).decode()[1:-1])  # JSON and TOML basic strings
            forms.add(json.dumps(value)[1:-1])  # \uXXXX for what is not ASCII
            forms.add(repr(value)[1:-1])  # an exception's message quoting it
        self._forms = sorted((f for f in forms if len(f) >= _MIN_SECRET), key=len, reverse=True)

    def text(self, text: str) -> str:
        for form in self._forms:
            text = text.replace(form, MASK)
        return text

    def data(self, data: bytes) -> bytes:
        for form in self._forms:
            data = data.replace(form.encode("utf-8", "surrogateescape"), MASK.encode())
        return data

    def document(self, obj: Any) -> Any:
        """`obj` with secret-named keys masked and known values cut out (`core.redact.redact`)."""
        return redact(obj, self.values)


# A TOML key (bare, quoted, dotted) assigned a string (basic, literal, multi-line), where a key
# may stand: at the start of a line, or after `{` or `,` in an inline table.
_STRING = r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\''
_KEY_PART = r'[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\''
_ASSIGNED_STRING = re.compile(
    rf"(?P<lead>(?:^|[{{,])[ \t]*)(?P<key>(?:{_KEY_PART})(?:[ \t]*\.[ \t]*(?:{_KEY_PART}))*)"
    rf"(?P<eq>[ \t]*=[ \t]*)(?P<value>{_STRING})",
    re.M,
)
# `key = { file = "..." }` / `{ env = "..." }`: a secret reference written inline
_ASSIGNED_REFERENCE = re.compile(
    rf"(?P<key>(?:{_KEY_PART})(?:[ \t]*\.[ \t]*(?:{_KEY_PART}))*)[ \t]*=[ \t]*"
    rf"\{{[ \t]*(?P<kind>file|env)[ \t]*=[ \t]*(?P<value>{_STRING})[ \t]*\}}"
)
_INLINE_HEADERS = re.compile(r"websocket_headers[\"']?[ \t]*=[ \t]*\{[^}\n]*\}")
_ANY_STRING = re.compile(_STRING)
_TABLE_HEADER = re.compile(r"^[ \t]*\[\[?[ \t]*(?P<name>[^\]\n]+?)[ \t]*\]\]?[ \t]*(?:#.*)?$", re.M)
# The password of a URL's user part: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@\"']*:)(?P<pw>[^@\s\"'/]+)(?P<at>@)")


def _last_key(key: str) -> str:
    part = re.split(r"[ \t]*\.[ \t]*(?=(?:[^\"']|\"[^\"]*\"|'[^']*')*$)", key)[-1]
    return part.strip("\"'")


def _string_value(literal: str) -> str | None:
    """The value of a TOML string literal, as far as it can be told without a whole document."""
    try:
        parsed = parse_toml_text(f"v = {literal}\n")
    except ValueError:
        return None
    value = parsed.get("v")
    return value if isinstance(value, str) else None


def parse_toml_text(text: str) -> dict[str, Any]:
    from water_edge.core.toml_text import parse_toml

    return parse_toml(text)


def redact_config_text(text: str, redactor: Redactor) -> str:
    """The config's text with each secret masked: strings under secret-named keys, in WebSocket
    header tables, passwords in URLs, then every known secret value wherever it is. Works on a
    file that is no longer TOML too (half-edited): it goes by lines, not by the parsed document."""
    headers_table = _header_tables(text)

    def assigned(match: re.Match[str]) -> str:
        key = _last_key(match["key"])
        if is_secret_name(key) or _in_tables(match.start(), headers_table):
            return f'{match["lead"]}{match["key"]}{match["eq"]}"{MASK}"'
        return match.group(0)

    text = _INLINE_HEADERS.sub(lambda m: _ANY_STRING.sub(f'"{MASK}"', m.group(0)), text)
    text = _ASSIGNED_STRING.sub(assigned, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['at']}", text)
    return redactor.text(text)


def _header_tables(text: str) -> list[tuple[int, int]]:
    """Spans of the text inside `[...websocket_headers]` tables, whose values are all secret."""
    spans: list[tuple[int, int]] = []
    headers = list(_TABLE_HEADER.finditer(text))
    for i, header in enumerate(headers):
        if _last_key(header["name"]) == "websocket_headers":
            end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
            spans.append((header.end(), end))
    return spans


def _in_tables(position: int, spans: list[tuple[int, int]]) -> bool:
    return any(start <= position < end for start, end in spans)


def config_text_secrets(text: str, *, resolve: bool = True) -> list[str]:
    """The secret values a config's text holds or names: strings under secret-named keys, header
    values, URL passwords, and (with `resolve`) the values of secret references (`{ file = ... }`,
    `{ env = ... }`) resolved now (those this user may not read are skipped: they are not in the
    text either)."""
    found: list[str] = [m["pw"] for m in _URL_PASSWORD.finditer(text)]
    try:
        document: Any = parse_toml_text(text)
    except ValueError:
        document = None
    if document is not None:
        found += _document_secrets(document, resolve=resolve)
    else:  # not TOML (half-edited): what the lines say
        for match in _ASSIGNED_STRING.finditer(text):
            if is_secret_name(_last_key(match["key"])):
                value = _string_value(match["value"])
                if value:
                    found.append(value)
        for match in _ASSIGNED_REFERENCE.finditer(text):
            where = _string_value(match["value"])
            if is_secret_name(_last_key(match["key"])) and where and resolve:
                found += _resolved_reference({match["kind"]: where})
    return found


def _leaves(node: Any, *, secret: bool = False, key: str = "") -> Iterator[tuple[Any, bool]]:
    """Each string of a parsed config, and each secret reference (`{ file = ... }`, `{ env = ...
    }`) where a secret stands, with whether it is a secret: under a key named like one, or a
    value of `websocket_headers`."""
    if isinstance(node, dict):
        if secret and set(node) in ({"file"}, {"env"}):
            yield node, True
            return
        for name, value in node.items():
            within = secret or is_secret_name(str(name)) or key == "websocket_headers"
            yield from _leaves(value, secret=within, key=str(name))
    elif isinstance(node, list):
        for item in node:
            yield from _leaves(item, secret=secret, key=key)
    elif isinstance(node, str):
        yield node, secret


def _document_secrets(document: Any, *, resolve: bool) -> list[str]:
    found: list[str] = []
    for value, secret in _leaves(document):
        if isinstance(value, dict):
            found += _resolved_reference(value) if resolve else []
        else:
            found += [value] if secret else []
            found += [m["pw"] for m in _URL_PASSWORD.finditer(value)]
    return found


def unreadable_references(text: str) -> list[str]:
    """The config's secret references whose values this user cannot read: where they point, and
    why (their values cannot be looked for elsewhere)."""
    from water_edge.core.errors import ConfigError
    from water_edge.core.secrets import SecretRef, describe_secret

    try:
        document: Any = parse_toml_text(text)
    except ValueError:
        return []
    found: list[str] = []
    for value, _ in _leaves(document):
        if not isinstance(value, dict):
            continue
        try:
            reference = SecretRef.model_validate(value)
        except ValueError:
            continue
        try:
            reference.resolve()
        except ConfigError as exc:
            found.append(f"{describe_secret(reference)}: {'; '.join(exc.problems)}")
        except ValueError:
            continue
    return found


def _resolved_reference(reference: dict[str, Any]) -> list[str]:
    from water_edge.core.errors import ConfigError
    from water_edge.core.secrets import SecretRef

    try:
        value = SecretRef.model_validate(reference).resolve()
    except (ConfigError, ValueError):
        return []
    return [value] if value else []
