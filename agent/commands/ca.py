"""`edge-agent ca ...`: a small certificate authority (init, sign, revoke, crl, server/client certs),
the broker's ACL, operator signing keys and signed commands, and the reference claim-enrolment
service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from water_edge.agent.commands._ca_restore import register_restore
from water_edge.agent.commands._ca_send import register_send
from water_edge.agent.commands._console import add_command_arguments
from water_edge.agent.commands._exits import EXIT_FAILED, EXIT_OK, output_failed
from water_edge.core.cli_numbers import whole
from water_edge.provisioning.enrol_options import add_service_arguments


def register(subparsers: Any) -> None:
    ca = subparsers.add_parser("ca", help="certificate authority and operator-key tooling")
    sub = ca.add_subparsers(dest="ca_command", required=True)

    def with_dir(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", type=Path, required=True, help="CA directory (keep it root-only)")

    p = sub.add_parser("init", help="create a new CA (EC P-256) in --dir")
    with_dir(p)
    p.add_argument("--name", required=True, help="CA common name, e.g. 'North Water gateways CA'")
    p.add_argument("--days", type=whole(1), default=3650)
    p.set_defaults(func=_init)

    p = sub.add_parser("sign", help="sign a device CSR; writes the certificate")
    with_dir(p)
    p.add_argument("csr", type=Path)
    p.add_argument("-o", "--out", type=Path, required=True)
    p.add_argument("--days", type=whole(1), default=365)
    p.set_defaults(func=_sign)

    p = sub.add_parser(
        "revoke", help="revoke a certificate by serial (hex), or every one of a --name, and rewrite crl.pem"
    )
    with_dir(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("serial", nargs="?")
    which.add_argument(
        "--name", help="revoke every valid certificate of this gateway id (a lost or stolen gateway)"
    )
    p.set_defaults(func=_revoke)

    p = sub.add_parser("crl", help="rewrite crl.pem (do it before next_update, default 30 days)")
    with_dir(p)
    p.add_argument("--days", type=whole(1), default=30)
    p.set_defaults(func=_crl)

    p = sub.add_parser("list", help="issued certificates and revocations")
    with_dir(p)
    p.set_defaults(func=_list)
    _register_acl(sub)
    _register_issuing(sub, with_dir)
    _register_commands(sub, with_dir)


def _register_acl(sub: Any) -> None:
    p = sub.add_parser(
        "acl",
        help="write the broker's Mosquitto ACL: every gateway bound to its id and the site in its "
        "certificate (--dir), or to its id only (--id-bound, the shipped file)",
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--dir", type=Path, help="CA directory: bind each gateway to its certificate's site")
    which.add_argument("--id-bound", action="store_true", help="the shipped ACL (no CA needed)")
    p.add_argument("-o", "--out", type=Path, required=True, help="the ACL file Mosquitto's acl_file names")
    p.add_argument("--prefix", default="water", help="the gateways' [uplink] prefix (default water)")
    p.add_argument("--host-id", default="scada", help="the Sparkplug primary_host_id (default scada)")
    p.add_argument("--enrol-prefix", default="enrol", help="the enrolment service's --topic-prefix")
    p.add_argument(
        "--extra",
        type=Path,
        help="the utility's own user blocks (an operator console...), checked and appended (with --dir)",
    )
    p.add_argument(
        "--reload-command",
        help="run after writing, e.g. 'systemctl reload mosquitto' (Mosquitto re-reads its ACL on SIGHUP)",
    )
    p.set_defaults(func=_acl)


def _register_issuing(sub: Any, with_dir: Any) -> None:

    for name, helptext in (
        ("server-cert", "a broker certificate"),
        ("client-cert", "a claim or central-service client certificate"),
    ):
        p = sub.add_parser(name, help=f"issue {helptext} (key made here)")
        with_dir(p)
        p.add_argument("--cn", required=True)
        p.add_argument("--host", action="append", default=[], help="DNS name or IP (server-cert)")
        p.add_argument("--cert", type=Path, required=True)
        p.add_argument("--key", type=Path, required=True)
        p.add_argument("--days", type=whole(1), default=365)
        p.set_defaults(func=_server_cert if name == "server-cert" else _client_cert)


def _register_commands(sub: Any, with_dir: Any) -> None:
    p = sub.add_parser("operator-key", help="make an Ed25519 operator key; prints the public key")
    p.add_argument("--out", type=Path, required=True, help="private key file (0600)")
    p.set_defaults(func=_operator_key)

    p = sub.add_parser("sign-command", help="print a signed command envelope (see docs/security.md)")
    add_command_arguments(p)
    p.set_defaults(func=_sign_command)

    register_send(sub)
    register_restore(sub)

    p = sub.add_parser("serve-enrolment", help="run the reference claim-enrolment service")
    with_dir(p)
    add_service_arguments(p)
    p.set_defaults(func=_serve)


_ACL_HINT = (
    "with a site-bound broker ACL, write it again: edge-agent ca acl --dir CA -o ACL --reload-command CMD"
)


def _out(text: str) -> None:
    sys.stdout.write(text + "\n")


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from water_edge.core.errors import AgentError

        try:
            result: int = fn(args)
        except AgentError as exc:
            sys.stderr.write(f"edge-agent ca: {exc}\n")
            return EXIT_FAILED
        except OSError as exc:
            if output_failed(exc):
                raise  # stdout: the CLI says so
            sys.stderr.write(f"edge-agent ca: {exc.filename or ''}: {exc.strerror}\n")
            return EXIT_FAILED
        return result

    return run


@_guarded
def _init(args: argparse.Namespace) -> int:
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.init(args.dir, args.name, args.days)
    _out(f"CA created in {args.dir}: {ca.cert.subject.rfc4514_string()}")
    return EXIT_OK


@_guarded
def _sign(args: argparse.Namespace) -> int:
    from cryptography import x509

    from water_edge.core.files import atomic_write
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.open(args.dir)
    pem = ca.sign_csr(args.csr.read_bytes(), days=args.days)
    atomic_write(args.out, pem)
    subject = x509.load_pem_x509_certificate(pem).subject.rfc4514_string()
    _out(f"certificate for {subject} written to {args.out}; give it to the device with {args.dir / 'ca.pem'}")
    _out(_ACL_HINT)
    return EXIT_OK


@_guarded
def _revoke(args: argparse.Namespace) -> int:
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.open(args.dir)
    if args.name is not None:
        revoked = ", ".join(ca.revoke_name(args.name))
    else:
        ca.revoke(args.serial)
        revoked = args.serial
    _out(f"revoked {revoked}; copy {args.dir / 'crl.pem'} to the broker and reload it")
    _out(_ACL_HINT)
    return EXIT_OK


@_guarded
def _crl(args: argparse.Namespace) -> int:
    from water_edge.provisioning.ca import CertificateAuthority

    CertificateAuthority.open(args.dir).write_crl(args.days)
    _out(f"wrote {args.dir / 'crl.pem'}")
    return EXIT_OK


@_guarded
def _list(args: argparse.Namespace) -> int:
    from water_edge.provisioning.ca import CertificateAuthority

    for item in CertificateAuthority.open(args.dir).issued():
        state = f"revoked {item.revoked_at}" if item.revoked_at else "valid"
        _out(f"{item.serial}  {item.subject}  until {item.not_after}  {state}")
    return EXIT_OK


@_guarded
def _acl(args: argparse.Namespace) -> int:
    import shlex

    from water_edge.provisioning.broker_acl import BrokerAcl
    from water_edge.provisioning.ca import CertificateAuthority

    acl = BrokerAcl(
        args.out,
        prefix=args.prefix,
        host_id=args.host_id,
        enrol_prefix=args.enrol_prefix,
        reload_command=shlex.split(args.reload_command or ""),
        extra=args.extra,
    )
    found = acl.write(None if args.id_bound else CertificateAuthority.open(args.dir))
    if args.id_bound:
        _out(f"wrote {args.out}: every gateway bound to its own id, in any site")
    else:
        _out(f"wrote {args.out}: {len(found.sites)} gateway(s) bound to their id and site")
    if args.extra is not None:
        _out(f"kept {len(found.kept)} user block(s) from {args.extra}: {', '.join(found.kept) or 'none'}")
    for name, why in found.left_out.items():
        sys.stderr.write(f"edge-agent ca acl: left out {name}: {why}\n")
    if acl.reload_command:
        _out(f"ran {args.reload_command!r}")
    return EXIT_OK


@_guarded
def _server_cert(args: argparse.Namespace) -> int:
    from water_edge.core.files import atomic_write
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.open(args.dir)
    atomic_write(args.cert, ca.issue_server(args.cn, args.host or [args.cn], args.key, args.days))
    _out(f"wrote {args.cert} and {args.key}")
    return EXIT_OK


@_guarded
def _client_cert(args: argparse.Namespace) -> int:
    from water_edge.core.files import atomic_write
    from water_edge.provisioning.ca import CertificateAuthority

    ca = CertificateAuthority.open(args.dir)
    atomic_write(args.cert, ca.issue_client(args.cn, args.key, args.days))
    _out(f"wrote {args.cert} and {args.key}")
    return EXIT_OK


@_guarded
def _operator_key(args: argparse.Namespace) -> int:
    from water_edge.provisioning.sign_command import new_operator_key

    public = new_operator_key(args.out)
    _out(public)
    return EXIT_OK


@_guarded
def _sign_command(args: argparse.Namespace) -> int:
    from water_edge.provisioning.sign_command import older_release_note, signed_command

    if note := older_release_note(args.command_type):
        sys.stderr.write(note + "\n")  # stdout stays the envelope alone, for the pipe to the broker
    _out(
        signed_command(
            args.key,
            args.key_id,
            args.command_type,
            args.target,
            args.args,
            args_file=args.args_file,
            ttl_s=args.ttl,
        ).decode()
    )
    return EXIT_OK


@_guarded
def _serve(args: argparse.Namespace) -> int:
    from water_edge.provisioning.enrol_service import serve_forever

    return serve_forever(args)
