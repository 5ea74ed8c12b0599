"""`edge-agent provision ...`: the gateway's identity — make a CSR, install a signed certificate,
enrol with a claim certificate over MQTT, and show what is installed.

Identity, gateway id and site come from the config (`[gateway]`, `[security.identity]`); each can be
given on the command line instead, so a gateway can be provisioned before its config exists.

`csr`, `install` and `enrol` write the identity as the user who runs them; as root they refuse an
identity directory that is not root's own (the agent's, under its state directory): the key root
makes there is one the agent cannot read, and root would follow any link the agent placed there.
"""

from __future__ import annotations

import argparse
import os
import pwd
import stat
import sys
from pathlib import Path
from typing import Any

from water_edge.agent.commands._exits import (
    DEFAULT_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    output_failed,
)


def register(subparsers: Any) -> None:
    prov = subparsers.add_parser("provision", help="device identity: CSR, certificate install, enrolment")
    sub = prov.add_subparsers(dest="provision_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-c", "--config", default=None, help=f"config file (default {DEFAULT_CONFIG} if it exists)"
        )
        p.add_argument("--identity-dir", type=Path, help="default: <state_dir>/identity")
        p.add_argument("--cn", help="common name (default: gateway.id)")
        p.add_argument("--site", help="site (default: gateway.site)")
        p.add_argument("--serial", help="device serial (default: Pi CPU serial or machine-id)")

    p = sub.add_parser("csr", help="make the device key (if needed) and write its CSR")
    common(p)
    p.add_argument("-o", "--out", type=Path, help="also write the CSR here (default: print it)")
    p.set_defaults(func=_csr)

    p = sub.add_parser("install", help="install a signed certificate and the CA bundle")
    common(p)
    p.add_argument("cert", type=Path)
    p.add_argument("ca", type=Path)
    p.set_defaults(func=_install)

    p = sub.add_parser("enrol", help="claim-based enrolment over MQTT ([security.identity.claim])")
    common(p)
    p.add_argument(
        "--renew",
        action="store_true",
        help="renew: connect with the current certificate instead of the claim certificate",
    )
    p.add_argument(
        "--while-agent-runs",
        action="store_true",
        help="renew even though the agent runs and is connected: the broker closes the agent's "
        "connection (same client id), and the centre sees the gateway offline until it reconnects",
    )
    p.set_defaults(func=_enrol)

    p = sub.add_parser("status", help="what identity is installed")
    common(p)
    p.set_defaults(func=_status)


class _Resolved:
    def __init__(self, args: argparse.Namespace) -> None:
        from water_edge.agent.config import load_config
        from water_edge.provisioning.config import IdentitySection

        config = None
        path = args.config or (DEFAULT_CONFIG if Path(DEFAULT_CONFIG).exists() else None)
        if path is not None:
            config = load_config(path)
        security = getattr(config, "security", None)
        self.identity_cfg: IdentitySection = getattr(security, "identity", None) or IdentitySection()
        state = config.gateway.state_dir if config else None
        directory = args.identity_dir
        if directory is None:
            if state is None:
                raise _UsageError("give --identity-dir or a config (-c) with gateway.state_dir")
            directory = state / self.identity_cfg.directory
        self.directory: Path = directory
        self.cn: str | None = args.cn or (config.gateway.id if config else None)
        self.site: str | None = args.site or (config.gateway.site if config else None)
        self.serial_override: str | None = args.serial or self.identity_cfg.serial
        self.status_socket: Path | None = config.status_socket if config else None
        # Where a renewal goes without a claim section: the uplink's first broker with TLS.
        servers = [s for s in config.uplink.server_list() if s.tls] if config else []
        self.uplink_broker: tuple[str, int] | None = (servers[0].host, servers[0].port) if servers else None
        self.uplink = config.uplink if config else None  # its way out (proxy, transport) is enrolment's

    def serial(self) -> str:
        from water_edge.provisioning.identity import device_serial

        return device_serial(self.serial_override)


class _UsageError(Exception):
    pass


def _refuse_root_in_anothers_directory(directory: Path, command: str) -> None:
    """_UsageError if root would write `directory` while someone else can change it or what is in
    it: the directory (or one above it) is another user's or writable by others, or it is a link."""
    if os.geteuid() != 0:
        return
    directory = Path(os.path.abspath(directory))
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        info = None
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise _UsageError(f"{directory} is a link; not following it as root: give the directory it names")
    # Every existing directory from the identity directory up: root's, and writable by no one else
    # but under a sticky bit (/tmp), so nobody can swap a name on the way for a link.
    chain = [directory] if info is not None else []
    chain += [p for p in [directory.parent.resolve(), *directory.parent.resolve().parents] if p.exists()]
    for path in chain:
        st = os.stat(path)
        if st.st_uid == 0 and not (st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX):
            continue
        if st.st_uid == 0:
            raise _UsageError(f"not as root: {path} is writable by others, who could plant a link in it")
        owner = _user_name(st.st_uid)
        raise _UsageError(
            f"not as root: {path} is {owner}'s, and a key root makes in {directory} is one {owner} "
            f"cannot read; run it as that user: sudo -u {owner} edge-agent provision {command} ..."
        )


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"  # sudo -u takes a uid this way


def _guarded(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        from water_edge.core.errors import AgentError, ConfigError

        try:
            result: int = fn(args, _Resolved(args))
        except ConfigError:
            raise  # the CLI prints every problem
        except _UsageError as exc:
            sys.stderr.write(f"edge-agent provision: {exc}\n")
            return EXIT_USAGE
        except _RefusedError as exc:
            sys.stderr.write(f"edge-agent provision: {exc}\n")
            return EXIT_FAILED
        except AgentError as exc:
            sys.stderr.write(f"edge-agent provision: {exc}\n")
            return EXIT_FAILED
        except OSError as exc:
            if output_failed(exc):
                raise  # stdout: the CLI says so
            sys.stderr.write(f"edge-agent provision: {exc.filename or ''}: {exc.strerror}\n")
            return EXIT_FAILED
        return result

    return run


@_guarded
def _csr(args: argparse.Namespace, r: _Resolved) -> int:
    from water_edge.core.files import atomic_write
    from water_edge.provisioning.identity import DeviceIdentity

    if r.cn is None:
        raise _UsageError("give --cn (the gateway id) or a config")
    _refuse_root_in_anothers_directory(r.directory, "csr")
    pem = DeviceIdentity(r.directory).make_csr(r.serial(), r.cn, r.site)
    if args.out:
        atomic_write(args.out, pem)
        sys.stdout.write(f"CSR for {r.cn} written to {args.out}; have it signed by the CA\n")
    else:
        sys.stdout.write(pem.decode())
    return EXIT_OK


@_guarded
def _install(args: argparse.Namespace, r: _Resolved) -> int:
    from water_edge.provisioning.identity import DeviceIdentity

    _refuse_root_in_anothers_directory(r.directory, "install")
    identity = DeviceIdentity(r.directory)
    target = identity.install(args.cert.read_bytes(), args.ca.read_bytes())
    sys.stdout.write(
        f"installed in {target}; point [uplink.tls] at\n"
        f'  cert_file = "{identity.cert_file}"\n  key_file = "{identity.key_file}"\n'
        f'  ca_file = "{identity.ca_file}"\n'
    )
    return EXIT_OK


@_guarded
def _enrol(args: argparse.Namespace, r: _Resolved) -> int:
    from water_edge.agent.identity_keeper import claim_route
    from water_edge.provisioning.enrol import DIRECT, enrol_with_claim, renewal_section
    from water_edge.provisioning.identity import DeviceIdentity

    claim = r.identity_cfg.claim
    if claim is None and args.renew:
        claim = _uplink_renewal(r)
    if claim is None:
        raise _UsageError("no [security.identity.claim] section in the config")
    if r.cn is None:
        raise _UsageError("give --cn (the gateway id) or a config")
    _refuse_root_in_anothers_directory(r.directory, "enrol")
    identity = DeviceIdentity(r.directory)
    if args.renew:
        claim = renewal_section(identity, claim)
        _refuse_to_close_the_agents_connection(r, args.while_agent_runs)
    route = DIRECT if r.uplink is None else claim_route(r.uplink)
    enrol_with_claim(identity, claim, r.serial(), r.cn, r.site, route=route)
    sys.stdout.write(f"{'renewed' if args.renew else 'enrolled'}; certificate in {identity.cert_file}\n")
    return EXIT_OK


def _uplink_renewal(r: _Resolved) -> Any:
    """Without a claim section (a gateway enrolled offline), a renewal needs no claim certificate: it
    connects with the current one (`renewal_section`) to the uplink's first TLS broker, with the
    enrolment service's topic prefix."""
    from water_edge.provisioning.config import ClaimSection
    from water_edge.provisioning.enrol import renewal_topic_prefix
    from water_edge.provisioning.identity import DeviceIdentity

    if r.uplink_broker is None:
        raise _UsageError(
            "no [security.identity.claim] section and no TLS broker in [uplink] to renew through"
        )
    host, port = r.uplink_broker
    identity = DeviceIdentity(r.directory)
    return ClaimSection(
        cert_file=identity.cert_file,
        key_file=identity.key_file,
        ca_file=identity.ca_file,
        host=host,
        port=port,
        topic_prefix=renewal_topic_prefix(r.identity_cfg),
    )


def _refuse_to_close_the_agents_connection(r: _Resolved, anyway: bool) -> None:
    """A renewal connects with the gateway's certificate, whose CN the shipped broker config makes
    the client id: while the agent is connected that closes the agent's connection, and the broker
    publishes its Last Will (the centre sees the gateway offline). Refuse, unless `anyway`."""
    from water_edge.agent.status import AgentNotRunningError, request_status

    if r.status_socket is None:
        return
    try:
        status = request_status(r.status_socket, timeout=3.0)
    except (AgentNotRunningError, OSError):
        return  # no agent: nothing to close
    uplink = status.get("uplink") or {}
    if not uplink.get("connected"):
        return  # the agent is not connected: nothing to close either
    pid = (status.get("agent") or {}).get("pid", "?")
    what = (
        f"the agent is running (pid {pid}) and connected to {uplink.get('broker', 'the broker')}: a "
        f"renewal from here connects as {r.cn} too, and the broker (one connection per client id) "
        "closes the agent's, which the centre sees as the gateway going offline (its Last Will)"
    )
    if anyway:
        sys.stderr.write(f"edge-agent provision: warning: {what}\n")
        return
    raise _RefusedError(
        f"{what}; the agent renews by itself over its own connection (`edge-agent status`: cert … "
        "renews …). Stop the agent first, or give --while-agent-runs to renew from here anyway"
    )


class _RefusedError(Exception):
    pass


@_guarded
def _status(args: argparse.Namespace, r: _Resolved) -> int:
    from water_edge.provisioning.identity import DeviceIdentity

    s = DeviceIdentity(r.directory).status()
    if not s.enrolled:
        sys.stdout.write(
            "not enrolled" + (" (a key is waiting for its certificate)" if s.pending else "") + "\n"
        )
        return EXIT_OK
    sys.stdout.write(
        f"subject {s.subject}\nserial {s.serial_number}\nvalid until {s.not_after}\n"
        + ("renewal pending\n" if s.pending else "")
    )
    return EXIT_OK
