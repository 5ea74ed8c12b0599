"""Operator side of signed commands: make an Ed25519 key, and sign a command envelope.

    python -m water_edge.provisioning.sign_command --key ops.pem --key-id ops --type restart --target site/gw
(the same as `edge-agent ca sign-command`); prints the JSON to publish on `.../cmd/<type>`.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from water_edge.core import envelope
from water_edge.core.cli_numbers import whole
from water_edge.core.files import atomic_write
from water_edge.provisioning.errors import ProvisioningError

# Command types added after the first releases, with the first commit (and its day) that knows each.
# A gateway of an earlier release cannot be granted them (its config refuses the name) and answers
# such a command `refused`, `not_authorised: key '<key>' may not send '<type>'`: the same words as
# a key without the right. Said when one is signed, so the operator can tell the two apart.
SINCE: dict[str, str] = {
    "leak_calibration": "b406c29 (2026-12-01)",
    "machine_sound_calibration": "32f31e9 (2026-12-01)",
    "update": "f6db063 (2026-12-01)",
    "update_chunk": "f6db063 (2026-12-01)",
    "state_restore": "47f8824 (2026-12-07)",
    "state_backup": "1440565 (2026-12-08)",
}


def older_release_note(command_type: str) -> str | None:
    """What a gateway of a release older than `command_type` answers to it, or None for a command
    every release knows."""
    since = SINCE.get(command_type)
    if since is None:
        return None
    return (
        f"note: {command_type!r} is known to releases from {since} on; a gateway of an earlier release"
        f" answers it refused, \"not_authorised: key '...' may not send {command_type!r}\": it cannot"
        " be granted there, whatever the key's rights; such a gateway needs a newer release first"
        ' (docs/fleet.md, "Mixed releases")'
    )


def new_operator_key(path: Path) -> str:
    """Write a new Ed25519 private key (PEM, 0600) to `path`; return the public key for the config."""
    if path.exists():
        raise ProvisioningError(f"{path} exists; not overwriting an operator key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    atomic_write(path, pem, mode=0o600)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_operator_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ProvisioningError(f"{path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ProvisioningError(f"{path} is not an Ed25519 key")
    return key


def signed_command(
    key_path: Path,
    key_id: str,
    command_type: str,
    target: str,
    args_json: str,
    *,
    args_file: str | None = None,
    ttl_s: int = 300,
) -> bytes:
    try:
        args: Any = orjson.loads(args_json)
    except orjson.JSONDecodeError as exc:
        raise ProvisioningError(f"--args is not JSON: {exc}") from exc
    if not isinstance(args, dict):
        raise ProvisioningError("--args must be a JSON object")
    if args_file:
        name, _, path = str(args_file).partition("=")
        if not path:
            raise ProvisioningError("--args-file takes NAME=PATH, e.g. config=new.toml")
        try:
            args[name] = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from exc
    return envelope.sign(load_operator_key(key_path), key_id, command_type, target, args, ttl_s=ttl_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m water_edge.provisioning.sign_command")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--key-id", required=True)
    parser.add_argument("--type", required=True, dest="command_type")
    parser.add_argument("--target", required=True)
    parser.add_argument("--args", default="{}")
    parser.add_argument("--args-file")
    parser.add_argument("--ttl", type=whole(1), default=300)
    a = parser.parse_args(argv)
    try:
        out = signed_command(
            a.key, a.key_id, a.command_type, a.target, a.args, args_file=a.args_file, ttl_s=a.ttl
        )
    except ProvisioningError as exc:
        sys.stderr.write(f"sign_command: {exc}\n")
        return 1
    if note := older_release_note(a.command_type):
        sys.stderr.write(note + "\n")
    sys.stdout.write(out.decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
