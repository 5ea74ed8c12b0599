"""`edge-agent decode mbus HEX|-`: decode an M-Bus telegram as meter tools print it, into JSON.

Takes a whole frame (68 L L 68 ... 16, or a short frame / E5) or bare user data starting at the CI
field. Bytes may be separated by spaces or newlines; `-` reads them from stdin. A corrupt or
truncated telegram prints one line on stderr and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

EXIT_BAD_INPUT = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("decode", help="decode a captured telegram into JSON")
    kinds = parser.add_subparsers(dest="decode_kind", required=True)
    mbus = kinds.add_parser(
        "mbus",
        help="an M-Bus (EN 13757-2/-3) frame or user data in hex",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mbus.add_argument("hex", nargs="+", help="hex bytes (spaces allowed), or - to read stdin")
    mbus.add_argument("--compact", action="store_true", help="one line of JSON")
    mbus.set_defaults(func=cmd_decode_mbus)


def cmd_decode_mbus(args: argparse.Namespace) -> int:
    import orjson

    from water_edge.drivers.mbus.frame import MbusDecodeError, parse_frame, parse_hex
    from water_edge.drivers.mbus.telegram import decode_frame, decode_user_data

    text = sys.stdin.read() if args.hex == ["-"] else " ".join(args.hex)
    try:
        raw = parse_hex(text)
        doc: dict[str, Any]
        if raw[0] == 0x68:
            doc = decode_frame(raw).to_dict()
        elif raw[0] in (0x10, 0xE5):
            frame = parse_frame(raw)
            doc = {"frame": frame.kind, "control": frame.control, "address": frame.address}
        else:
            doc = decode_user_data(raw[0], raw[1:]).to_dict()
    except MbusDecodeError as exc:
        sys.stderr.write(f"edge-agent decode mbus: {exc}\n")
        return EXIT_BAD_INPUT
    option = 0 if args.compact else orjson.OPT_INDENT_2
    sys.stdout.write(orjson.dumps(doc, option=option).decode() + "\n")
    return 0
