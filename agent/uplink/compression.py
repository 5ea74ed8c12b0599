"""Compression of JSON payloads (`[uplink] compression`), announced in the MQTT 5 content type.

One message is compressed on its own (no shared dictionary, no state across messages), so a
consumer can decode any message it receives, in any order, after any restart. The content type
says how: `application/json` plain, `application/json; compression=deflate` (zlib format,
RFC 1950/1951, what `zlib.decompress` reads) or `application/json; compression=zstd` (a zstd
frame, RFC 8878). A compressed payload is not UTF-8, so its payload format indicator is 0.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal

Compression = Literal["none", "deflate", "zstd"]

JSON: Final = "application/json"
DEFLATE_LEVEL: Final = 6  # zlib's default: most of the ratio at a fraction of level 9's CPU
ZSTD_LEVEL: Final = 3  # zstd's default


@dataclass(frozen=True, slots=True)
class Codec:
    """How payloads are compressed and the content type that says so."""

    content_type: str
    compress: Callable[[bytes], bytes] | None  # None: sent as is

    @property
    def utf8(self) -> bool:
        return self.compress is None


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data, DEFLATE_LEVEL)


def codec(kind: Compression) -> Codec:
    """The codec of one `[uplink] compression` setting."""
    if kind == "none":
        return Codec(JSON, None)
    if kind == "deflate":
        return Codec(f"{JSON}; compression=deflate", _deflate)
    import zstandard  # only gateways that ask for zstd load it

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    return Codec(f"{JSON}; compression=zstd", compressor.compress)


def decompress(content_type: str, payload: bytes) -> bytes:
    """The JSON bytes of a payload, by its content type (for consumers and tests)."""
    if content_type.endswith("compression=deflate"):
        return zlib.decompress(payload)
    if content_type.endswith("compression=zstd"):
        import zstandard

        return zstandard.ZstdDecompressor().decompress(payload)
    return payload
