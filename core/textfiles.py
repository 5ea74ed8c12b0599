"""Text exports as a technician's laptop holds them: UTF-8, with or without a byte-order mark, or
UTF-16 with one — what Excel's "Unicode text" export writes (tab-separated). Shared by the CSV
readers of `models score pump` and `models score flow-leak`."""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_export(path: Path, errors: str = "strict") -> str:
    """The file's text, its byte-order mark removed. OSError when it cannot be read,
    UnicodeDecodeError (with `errors="strict"`) when it is not text in these encodings."""
    with path.open("rb") as fh:
        utf16 = fh.read(2) in UTF16_BOMS
    return path.read_text(encoding="utf-16" if utf16 else "utf-8-sig", errors=errors)


def lines_of(text: str, start: int = 0) -> Iterator[str]:
    """The lines of `text` from offset `start`, one at a time, blank ones included: `splitlines`
    held a list of them beside the text (a year of minute rows: 54 MB more than its 24 MB) and
    `io.StringIO` a copy at four bytes a character. Line ends are "\n": `read_export` reads with
    universal newlines."""
    size = len(text)
    while start < size:
        end = text.find("\n", start)
        end = size if end < 0 else end
        yield text[start:end]
        start = end + 1
