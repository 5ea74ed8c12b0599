"""`edge-agent scan mbus --port P [--baudrate B] [--primary] [--json]`: find the meters on a
wired M-Bus segment, to commission it.

A secondary-address scan (a wildcard search over the 8 ID digits, EN 13757-3 annex) finds every
meter that takes selection, whatever its primary address (meters leave the factory at 0); each one
found is then read once for its identity and current volume. `--primary` also tries primary
addresses 0..250 one by one (about a minute at 2400 Bd) for old meters without secondary
addressing. Encrypted meters are found and named without their keys (the header is never
encrypted); their volume needs the key. The result ends with `[[devices.meters]]` blocks to paste
into the agent's config.

Stop the agent first (`systemctl stop edge-agent`) if it polls this port: two masters on one bus
collide. Exit 0 when meters were found, 1 when none answered, 2 when the port cannot be used.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("scan", help="find the meters on a wired M-Bus segment (commissioning)")
    kinds = parser.add_subparsers(dest="scan_kind", required=True)
    mbus = kinds.add_parser(
        "mbus",
        help="find every meter on a wired M-Bus segment",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mbus.add_argument("--port", required=True, help="the M-Bus master's serial port, e.g. /dev/ttyUSB0")
    mbus.add_argument("--baudrate", type=int, choices=(300, 2400, 9600), default=2400)
    mbus.add_argument("--primary", action="store_true", help="also try primary addresses 0..250 (old meters)")
    mbus.add_argument("--local-echo", action="store_true", help="the adapter echoes every request")
    mbus.add_argument("--json", action="store_true", help="one JSON object per meter")
    mbus.set_defaults(func=cmd_scan_mbus)


def cmd_scan_mbus(args: argparse.Namespace) -> int:
    from water_edge.core import logs
    from water_edge.core.errors import DriverIOError
    from water_edge.drivers.mbus.frame import MbusDecodeError
    from water_edge.drivers.mbus.link import MbusMaster, MbusTimeoutError, MeterFound

    logs.configure("warning", json=False)
    master = MbusMaster(args.port, args.baudrate, retries=1, local_echo=args.local_echo)
    started = time.monotonic()
    _say(f"scanning {args.port} at {args.baudrate} Bd by secondary address ...")
    found: list[MeterFound] = []
    try:
        master.open()
        try:
            for secondary in master.scan_secondary():
                try:
                    found.append(master.identify(secondary))
                except (MbusTimeoutError, MbusDecodeError) as exc:
                    _say(f"{secondary}: found, but its telegram could not be read: {exc}")
            if args.primary:
                _say("trying primary addresses 0..250 ...")
                known = {m.primary for m in found}
                for address in master.scan_primary():
                    if address in known:
                        continue
                    try:
                        found.append(master.identify_primary(address))
                    except (MbusTimeoutError, MbusDecodeError) as exc:
                        _say(f"primary address {address}: answers, but its telegram could not be read: {exc}")
        finally:
            master.close()
    except DriverIOError as exc:
        _say(f"edge-agent scan mbus: {exc}")
        return EXIT_USAGE
    elapsed = time.monotonic() - started
    if not found:
        _say(
            f"no meter answered at {args.baudrate} Bd in {elapsed:.0f} s: check the wiring and the bus "
            "power, try --baudrate 300 or 9600 (meters ship at 2400 or 300), --primary for old "
            "meters, and that no other master (the agent) uses the port"
        )
        return EXIT_FAILED
    if args.json:
        _print_json(found)
    else:
        _print_table(found, args, elapsed)
    return EXIT_OK


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _meter_doc(m: Any) -> dict[str, Any]:
    h = m.header
    return {
        "secondary": m.secondary or None,
        "id": h.id if h else None,
        "primary": m.primary,
        "manufacturer": h.manufacturer if h else None,
        "version": h.version if h else None,
        "medium": h.medium_name if h else None,
        "encrypted_mode": m.security_mode or None,
        "volume_m3": m.volume_m3,
    }


def _print_json(found: list[Any]) -> None:
    import orjson

    for m in found:
        sys.stdout.write(orjson.dumps(_meter_doc(m)).decode() + "\n")


def _print_table(found: list[Any], args: argparse.Namespace, elapsed: float) -> None:
    print(f"M-Bus {args.port} at {args.baudrate} Bd: {len(found)} meter(s) in {elapsed:.0f} s")
    print(f"{'primary':>7}  {'secondary':<16}  {'manufacturer':<12}  {'version':>7}  {'medium':<12}  volume")
    for m in found:
        d = _meter_doc(m)
        volume = f"{d['volume_m3']:g} m3" if d["volume_m3"] is not None else ""
        if d["encrypted_mode"]:
            volume = f"encrypted (mode {d['encrypted_mode']}): needs its key"
        version = "" if d["version"] is None else f"0x{d['version']:02X}"
        print(
            f"{d['primary']:>7}  {d['secondary'] or '-':<16}  {d['manufacturer'] or '-':<12}  "
            f"{version:>7}  {d['medium'] or '-':<12}  {volume}"
        )
    print()
    print(f'# For the agent\'s config: a [[devices]] with kind = "mbus", port = "{args.port}", '
          f"baudrate = {args.baudrate}{', local_echo = true' if args.local_echo else ''}")  # fmt: skip
    for m in found:
        print()
        print(config_block(_meter_doc(m)))


def config_block(d: dict[str, Any]) -> str:
    """The `[[devices.meters]]` table for one meter found (by its full secondary address, which
    does not depend on the primary addresses set on the bus)."""
    lines = ["[[devices.meters]]", f'name = "meter-{d["id"] or d["primary"]}"']
    if d["secondary"]:
        where = f"{d['manufacturer']} {d['medium']}, primary address {d['primary']}"
        lines.append(f'secondary = "{d["secondary"]}"  # {where}')
    else:
        lines.append(f"address = {d['primary']}")
    if d["encrypted_mode"]:
        path = f"/etc/edge-agent/keys/meter-{d['id']}.key"
        lines.append(f'key = {{ file = "{path}" }}  # its AES-128 key, 32 hex digits (chmod 600)')
    return "\n".join(lines)
