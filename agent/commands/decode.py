"""`edge-agent decode mbus|wmbus HEX|FILE|- [--key HEX]`: decode a captured telegram into JSON.

`mbus` takes a whole wired frame (68 L L 68 ... 16, or a short frame / E5) or bare user data
starting at the CI field, or a capture of several frames (a serial sniffer's log: the E5 before an
answer, the master's requests, a wake-up preamble, noise): each frame is decoded, into a list, bytes
that start no frame are skipped and counted, and a frame that does not decode is named (exit 1).
`wmbus` takes a wireless telegram from its L field, with or without the link layer's CRCs (format A
or B), as receivers and SDR tools print it (an rtl_wmbus line or a wmbusmeters `telegram=|...|`
line is accepted as it is). Bytes may be separated by spaces or newlines; `-` reads them from
stdin, and a FILE (one argument that is no hex but names a file) from that file: hex text, a
receiver's log or, for `mbus`, a raw binary capture as on stdin. `--key` is the meter's AES-128
key (32 hex digits) for encrypted telegrams; it is never printed. A corrupt, truncated or
undecryptable telegram prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

EXIT_BAD_INPUT = 2
EXIT_PARTLY = 1  # a capture of which some frames did not decode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("decode", help="decode a captured telegram into JSON")
    kinds = parser.add_subparsers(dest="decode_kind", required=True)
    for kind, help_text, func in (
        ("mbus", "a wired M-Bus (EN 13757-2/-3) frame or user data in hex", cmd_decode_mbus),
        ("wmbus", "a wireless M-Bus (EN 13757-4, OMS) telegram in hex", cmd_decode_wmbus),
    ):
        sub = kinds.add_parser(
            kind, help=help_text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        sub.add_argument(
            "hex",
            nargs="+",
            help="hex bytes (spaces allowed), a FILE of them (mbus: or of raw bytes), or - for stdin",
        )
        sub.add_argument("--key", help="the meter's AES-128 key, 32 hex digits (encrypted telegrams)")
        sub.add_argument("--compact", action="store_true", help="one line of JSON")
        sub.set_defaults(func=func)


def _text(args: argparse.Namespace, parses: Callable[[str], object]) -> str:
    """The telegram's text: stdin for `-`, the file one argument names that does not `parse`, or the
    arguments themselves."""
    if args.hex == ["-"]:
        return sys.stdin.read()
    path = _file_argument(args.hex, parses)
    if path is not None:
        return _read_file(path).decode("utf-8", errors="replace")
    return " ".join(args.hex)


def _file_argument(given: list[str], parses: Callable[[str], object], kinds: str = "hex") -> Path | None:
    """The file named by the one argument when it does not `parse` as a telegram
    (`decode mbus capture.bin`). None for hex (even a file's name that reads as hex: `cafe`) and
    for what names no file, unless it looks like a path: then an MbusDecodeError says so, and what
    a file may hold (`kinds`)."""
    from water_edge.drivers.mbus.frame import MbusDecodeError

    if len(given) != 1 or given == ["-"]:
        return None
    try:
        parses(given[0])
    except MbusDecodeError as exc:
        path = Path(given[0])
        if _exists(path):
            return path
        if _looks_like_a_path(given[0]):
            raise MbusDecodeError(
                f"no file {given[0]!r}, nor hex ({exc}): give hex bytes, a file of {kinds}, or - to "
                "read stdin"
            ) from None
    return None


def _exists(path: Path) -> bool:
    """Whether `path` exists; False for what cannot be a file name (too long for one: a long line of
    hex with a typo in it)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _looks_like_a_path(text: str) -> bool:
    """A directory in it or a file extension, and none of what a telegram's line holds (spaces, a
    receiver log's `;`, a wmbusmeters `|`)."""
    if any(ch.isspace() or ch in ";|" for ch in text):
        return False
    return "/" in text or "\\" in text or re.search(r"\.[A-Za-z]\w*$", text) is not None


def _read_file(path: Path) -> bytes:
    from water_edge.drivers.mbus.frame import MbusDecodeError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise MbusDecodeError(f"{path}: cannot read: {exc.strerror or exc}") from None


def capture_hex(text: str) -> str:
    """The telegram's hex out of the forms tools print it in: a bare hex string, an rtl_wmbus
    line (`T1;1;1;...;0x2A44...`), or a wmbusmeters `telegram=|2A44..._7A..|` line."""
    t = text.strip().removeprefix("telegram=")
    if "|" in t:
        t = max((part for part in t.split("|")), key=len)
    if ";" in t:
        t = t.rsplit(";", 1)[-1]
    return t.replace("_", "").replace("#", "")


def _emit(kind: str, doc: dict[str, Any] | list[dict[str, Any]], compact: bool) -> int:
    import orjson

    try:
        text = orjson.dumps(doc, option=0 if compact else orjson.OPT_INDENT_2).decode()
    except orjson.JSONEncodeError as exc:  # a value the decoders should have made portable
        sys.stderr.write(f"edge-agent decode {kind}: cannot write JSON: {exc}\n")
        return EXIT_BAD_INPUT
    sys.stdout.write(text + "\n")
    return 0


def cmd_decode_mbus(args: argparse.Namespace) -> int:
    from water_edge.drivers.mbus.crypto import parse_key
    from water_edge.drivers.mbus.frame import START_BYTES, MbusDecodeError, frame_length
    from water_edge.drivers.mbus.telegram import SecurityContext, decode_user_data

    try:
        context = SecurityContext(key=parse_key(args.key)) if args.key else None
        raw = _mbus_bytes(args)
        first = frame_length(raw[:4]) if raw[0] in START_BYTES else None
        if first is not None and len(raw) > first:
            return _decode_mbus_capture(raw, context, args.compact)
        if raw[0] in START_BYTES:
            doc = _mbus_frame(raw, context)
        else:
            try:
                doc = decode_user_data(raw[0], raw[1:], security=context).to_dict()
            except MbusDecodeError:
                if _holds_a_long_frame(raw):  # bytes before it: a wake-up preamble (55 55 ...), noise
                    return _decode_mbus_capture(raw, context, args.compact)
                raise
    except MbusDecodeError as exc:
        sys.stderr.write(f"edge-agent decode mbus: {exc}\n")
        return EXIT_BAD_INPUT
    return _emit("mbus", doc, args.compact)


def _mbus_bytes(args: argparse.Namespace) -> bytes:
    """The bytes to decode: hex as tools print it, or, on stdin or in a file, a raw binary capture
    (what `cat /dev/ttyUSB0 > capture.bin` keeps) when it is not hex and a whole long frame stands
    in it."""
    from water_edge.drivers.mbus.frame import parse_hex

    stdin = getattr(sys.stdin, "buffer", None) if args.hex == ["-"] else None
    if stdin is not None:
        return _hex_or_capture(stdin.read(), "")
    path = _file_argument(args.hex, parse_hex, "hex or a raw binary capture")
    if path is not None:
        return _hex_or_capture(_read_file(path), f"{path}: ")
    return parse_hex(_text(args, parse_hex))


def _hex_or_capture(data: bytes, where: str) -> bytes:
    """`data` as hex text, else as the raw bytes of a capture holding a whole long frame; the error
    starts with `where` (the file's name)."""
    from water_edge.drivers.mbus.frame import MbusDecodeError, parse_hex

    try:
        return parse_hex(data.decode("utf-8", errors="replace"))
    except MbusDecodeError as exc:
        if data and _holds_a_long_frame(data):
            return bytes(data)
        raise MbusDecodeError(
            f"{where}{exc} (nor is it a binary capture with a whole M-Bus frame in it)"
        ) from exc


def _holds_a_long_frame(raw: bytes) -> bool:
    """Whether a whole long frame (length, checksum and stop byte right) stands in `raw`."""
    from water_edge.drivers.mbus.frame import MbusDecodeError, parse_frame, split_capture

    for frame in split_capture(raw)[0]:
        try:
            if frame[0] == 0x68 and parse_frame(frame).telegram:
                return True
        except MbusDecodeError:
            continue
    return False


def _mbus_frame(raw: bytes, context: Any) -> dict[str, Any]:
    """One whole frame: a telegram's JSON, or what a short frame or an E5 is."""
    from water_edge.drivers.mbus.frame import parse_frame
    from water_edge.drivers.mbus.telegram import decode_frame

    if raw[0] == 0x68:
        return decode_frame(raw, context).to_dict()
    frame = parse_frame(raw)
    return {"frame": frame.kind, "control": frame.control, "address": frame.address}


def _decode_mbus_capture(raw: bytes, context: Any, compact: bool) -> int:
    """More than one frame: a capture (the E5 before an answer, requests and answers, a wake-up
    preamble, noise after the stop byte), decoded frame by frame (`_decode_each`); bytes that start no
    frame are skipped and counted on stderr."""
    from water_edge.drivers.mbus.frame import split_capture

    frames, noise = split_capture(raw)
    where = "the frame" if len(frames) == 1 else "frame {} of " + str(len(frames))
    pieces = [(where.format(n), functools.partial(_mbus_frame, f, context)) for n, f in enumerate(frames, 1)]
    warning = f"warning: {noise} byte(s) that start no frame skipped" if noise else None
    return _decode_each("mbus", pieces, compact, warning)


def _decode_each(
    kind: str, pieces: Sequence[tuple[str, Callable[[], dict[str, Any]]]], compact: bool, warning: str | None
) -> int:
    """Decode each piece of a capture: one piece prints as its JSON, several as a list in order in
    which a piece that does not decode stands as `{"error": ...}` and is named on stderr (exit 1).
    None decoding is one line and exit 2, as for a single telegram."""
    from water_edge.drivers.mbus.frame import MbusDecodeError

    docs: list[dict[str, Any]] = []
    errors: list[str] = []
    for label, decode in pieces:
        try:
            docs.append(decode())
        except MbusDecodeError as exc:
            errors.append(f"{label}: {exc}")
            docs.append({"error": str(exc)})
    if len(errors) == len(pieces):
        sys.stderr.write(f"edge-agent decode {kind}: {errors[0]}\n")
        return EXIT_BAD_INPUT
    for line in [*errors, *([warning] if warning else [])]:
        sys.stderr.write(f"edge-agent decode {kind}: {line}\n")
    code = _emit(kind, docs[0] if len(docs) == 1 else docs, compact)
    return code or (EXIT_PARTLY if errors else 0)


def cmd_decode_wmbus(args: argparse.Namespace) -> int:
    from water_edge.drivers.mbus.crypto import parse_key
    from water_edge.drivers.mbus.frame import MbusDecodeError, parse_hex
    from water_edge.drivers.wmbus.telegram import decode_wireless

    try:
        key = parse_key(args.key) if args.key else None
        text = _text(args, lambda given: parse_hex(capture_hex(given)))
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if len(lines) > 1 and _whole_telegram(lines[0]):
            return _decode_wmbus_log(lines, key, args.compact)
        doc = decode_wireless(parse_hex(capture_hex(text)), key=key).to_dict()
    except MbusDecodeError as exc:
        sys.stderr.write(f"edge-agent decode wmbus: {exc}\n")
        return EXIT_BAD_INPUT
    return _emit("wmbus", doc, args.compact)


def _whole_telegram(line: str) -> bool:
    """Whether a line holds a whole telegram by its L field: a receiver's log has one a line, a
    telegram wrapped over lines (a hex dump) has not."""
    from water_edge.drivers.mbus.frame import MbusDecodeError, parse_hex

    try:
        raw = parse_hex(capture_hex(line))
    except MbusDecodeError:
        return False
    return len(raw) >= raw[0] + 1


def _decode_wmbus_log(lines: list[str], key: bytes | None, compact: bool) -> int:
    """A receiver's log (an rtl_wmbus or wmbusmeters line, or hex, a telegram a line), decoded
    line by line in order, so that a compact frame finds the format its meter's full frame gave."""
    from water_edge.drivers.mbus.frame import parse_hex
    from water_edge.drivers.wmbus.telegram import decode_wireless

    def decode(line: str) -> dict[str, Any]:
        return decode_wireless(parse_hex(capture_hex(line)), key=key).to_dict()

    pieces = [(f"line {n}", functools.partial(decode, line)) for n, line in enumerate(lines, 1)]
    return _decode_each("wmbus", pieces, compact, None)
