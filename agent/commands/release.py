"""`edge-agent release keygen|bundle`: on the release machine, make a release key and signed bundles.

    edge-agent release keygen --name release-2026 --out release-2026.key
    edge-agent release bundle wheels/ --key release-2026.key --key-id release-2026 -o agent-0.2.0.tar
    edge-agent release bundle agent-wheels/ --cached deps-wheels/ --key ... -o thin.tar

`--cached` wheels are listed in the signed manifest but not packed: gateways that installed them
before hold them in their wheel cache, so an update over a cellular link carries only what changed.
See docs/updates.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, EXIT_USAGE


def register(subparsers: Any) -> None:
    release = subparsers.add_parser(
        "release", help="release keys and signed update bundles (release machine)"
    )
    sub = release.add_subparsers(dest="release_command", required=True)

    p = sub.add_parser("keygen", help="a new Ed25519 release key; prints the line for release-keys")
    p.add_argument("--name", required=True, help="the key's name (key_id in manifests)")
    p.add_argument("--out", type=Path, required=True, help="private key file to write (0600)")
    p.set_defaults(func=_keygen)

    p = sub.add_parser("bundle", help="sign a release bundle from a directory of wheels")
    p.add_argument("wheels", type=Path, nargs="+", help="directories of wheels to pack")
    p.add_argument("--cached", type=Path, nargs="*", default=[], help="directories of wheels to list only")
    p.add_argument("--key", type=Path, required=True, help="the release private key (PEM)")
    p.add_argument("--key-id", required=True)
    p.add_argument("--python", default=f"{sys.version_info.major}.{sys.version_info.minor}")
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument(
        "--min-version",
        help="the lowest release a gateway may install once it has committed this one (a release "
        "fixing a security hole sets its own version); default: the gateway's floor stays",
    )
    p.set_defaults(func=_bundle)


def _keygen(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from water_edge.agent.update.bundle import public_key_text
    from water_edge.core.files import atomic_write

    try:
        if args.out.exists():
            sys.stderr.write(f"edge-agent release: {args.out} exists; not overwriting a key\n")
            return EXIT_USAGE
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        atomic_write(args.out, pem, mode=0o600)
    except OSError as exc:  # a directory this user may not write, or that is not there
        sys.stderr.write(f"edge-agent release: cannot write {args.out}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    print(f"{args.name} {public_key_text(key)}")
    return EXIT_OK


def _bundle(args: argparse.Namespace) -> int:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from water_edge.agent.config.schema import SCHEMA_VERSION
    from water_edge.agent.update.bundle import BundleError, build_bundle
    from water_edge.buffer.schema import SCHEMA_VERSION as OUTBOX_SCHEMA

    try:
        key = serialization.load_pem_private_key(args.key.read_bytes(), None)
    except OSError as exc:
        sys.stderr.write(f"edge-agent release: cannot read --key {args.key}: {exc.strerror or exc}\n")
        return EXIT_USAGE
    except (ValueError, TypeError):  # not PEM, or locked by a passphrase
        sys.stderr.write(f"edge-agent release: {args.key} is not an unencrypted PEM private key\n")
        return EXIT_USAGE
    if not isinstance(key, Ed25519PrivateKey):
        sys.stderr.write(f"edge-agent release: {args.key} is not an Ed25519 private key\n")
        return EXIT_USAGE
    packed = [p for d in args.wheels for p in sorted(d.glob("*.whl"))]
    cached = [p for d in args.cached for p in sorted(d.glob("*.whl"))]
    try:
        manifest = build_bundle(
            packed, cached, key, args.key_id, args.out,
            python=args.python, config_schema=(SCHEMA_VERSION, SCHEMA_VERSION), outbox_schema=OUTBOX_SCHEMA,
            min_version=args.min_version,
        )  # fmt: skip
    except BundleError as exc:
        sys.stderr.write(f"edge-agent release: {exc}\n")
        return EXIT_FAILED
    print(
        f"{args.out}: water-edge-agent {manifest.version}, {len(manifest.wheels)} wheels listed, "
        f"{len(packed)} packed, signed by {args.key_id}"
        + (f"; sets the minimum release {manifest.min_version}" if manifest.min_version else "")
    )
    return EXIT_OK
