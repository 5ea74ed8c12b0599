"""The text of a TOML file as editors save it: UTF-8, with or without the byte order mark Windows
editors put first (the parser refuses it: "Invalid statement (at line 1, column 1)"). UTF-16 or
UTF-32 text ("Unicode" in Notepad) is named as such instead of failing on its first byte.

`parse_toml` is tomli, the parser the standard library's tomllib was taken from, in its compiled
(mypyc) wheel where one exists (x86-64, aarch64; elsewhere the same pure Python as tomllib): a
10,000-tag config (880 kB) parses in 0.14 s instead of 0.5 s, and every start of the agent reads
its config twice (`check-config`, then `run`)."""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import tomli

TOMLDecodeError = tomli.TOMLDecodeError


def parse_toml(text: str) -> dict[str, Any]:
    """The TOML document `text`; `TOMLDecodeError` (a ValueError) says where it is not valid."""
    try:
        return tomli.loads(text)
    except RecursionError as exc:  # tomli's limit on nesting (400 levels) is a RecursionError
        raise TOMLDecodeError(str(exc), text, 0) from None


class NotUtf8TextError(ValueError):
    """The file's bytes are not UTF-8 text; the message says what they are and what to do."""


_WIDE_ENCODINGS = (
    # UTF-32 first: its little-endian mark begins with UTF-16's.
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


MAX_CONFIG_BYTES = 64 * 2**20  # a 10,000-tag config is ~1 MB


def read_toml_text(path: Path) -> str:
    """`path`'s text; OSError as reading raises it, NotUtf8TextError for any other encoding, and
    for more than MAX_CONFIG_BYTES (`/dev/zero`, a log file given by mistake: read to the end,
    either would take all the memory there is)."""
    with path.open("rb") as file:
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise NotUtf8TextError(f"more than {MAX_CONFIG_BYTES // 2**20} MiB: not a config file")
    if data.startswith(codecs.BOM_UTF8):
        return _decode(data[len(codecs.BOM_UTF8) :])
    return _decode(data)


def _decode(data: bytes) -> str:
    for mark, name in _WIDE_ENCODINGS:
        if data.startswith(mark):
            raise NotUtf8TextError(f"the file is {name} text; save it as UTF-8")
    if b"\x00" in data:
        raise NotUtf8TextError("the file holds NUL bytes: UTF-16 text or not a text file; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        where = f"{exc.reason} on line {line}"
        raise NotUtf8TextError(f"not UTF-8 text ({where}); save it as UTF-8") from None


__all__ = ["NotUtf8TextError", "read_toml_text"]
