"""Text exports as a technician's laptop holds them: UTF-8, with or without a byte-order mark, or
UTF-16 with one — what Excel's "Unicode text" export writes (tab-separated). Shared by the CSV
readers of `models score pump` and `models score flow-leak`."""

from __future__ import annotations

import codecs
from pathlib import Path

UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def read_export(path: Path, errors: str = "strict") -> str:
    """The file's text, its byte-order mark removed. OSError when it cannot be read,
    UnicodeDecodeError (with `errors="strict"`) when it is not text in these encodings."""
    with path.open("rb") as fh:
        utf16 = fh.read(2) in UTF16_BOMS
    return path.read_text(encoding="utf-16" if utf16 else "utf-8-sig", errors=errors)
