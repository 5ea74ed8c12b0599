"""The TLS files (and the other files) a config names, checked on this machine.

A CA file that is missing, a key that does not belong to its certificate or one locked by a
passphrase is otherwise found at the first connection, as a TLS error repeated every backoff while
readings pile up in the buffer. A certificate issued to another name than the gateway's id (or its
Sparkplug Edge Node id) is found later still: the shipped broker ACL grants topics by the
certificate's common name, and silently drops what a gateway publishes under another.

`check-config` names each problem as a warning and `run` logs it once at start; neither refuses the
config (systemd runs check-config before every start): without its TLS files the agent still reads
and buffers the devices, and sends once the file is put right."""

from __future__ import annotations

import os
import ssl
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from water_edge.core.key_pair import KeyPairError, load_key_pair
from water_edge.drivers.mbus.keys import load_key
from water_edge.drivers.opcua.certificate_file import certificate_expiry, not_after_ns, parse_certificate
from water_edge.provisioning.ca import subject_attribute
from water_edge.provisioning.identity import DeviceIdentity

if TYPE_CHECKING:
    from water_edge.agent.config.load import Config


def _read(key: str, path: Path) -> tuple[bytes | None, str | None]:
    try:
        return path.read_bytes(), None
    except FileNotFoundError:
        return None, f'{key} = "{path}": no such file'
    except IsADirectoryError:
        return None, f'{key} = "{path}": a directory, not a file'
    except OSError as exc:
        return None, f'{key} = "{path}": cannot be read ({exc.strerror or exc})'


def _certificates(key: str, path: Path) -> str | None:
    data, problem = _read(key, path)
    if data is None:
        return problem
    try:
        with warnings.catch_warnings():
            # A system CA bundle holds old roots with negative serial numbers: cryptography warns
            # about each on stderr, in Python's words, while the bundle is fine for TLS.
            warnings.simplefilter("ignore", CryptographyDeprecationWarning)
            x509.load_pem_x509_certificates(data)
    except ValueError:
        return f'{key} = "{path}": not a PEM certificate (expected "-----BEGIN CERTIFICATE-----")'
    return None


def _pair(section: str, cert: Path, key: Path) -> list[str]:
    problems = _found(_certificates(f"{section}.cert_file", cert), _read(f"{section}.key_file", key)[1])
    if problems:
        return problems
    try:
        load_key_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), cert, key)
    except KeyPairError as exc:
        if exc.kind == "passphrase":
            return [
                f'{section}.key_file = "{key}": protected by a passphrase, which the agent cannot '
                "enter (store the key unencrypted, readable by the agent's user only)"
            ]
        if exc.kind == "mismatch":
            return [f'{section}.key_file = "{key}": not the key of {section}.cert_file "{cert}"']
        return [f'{section}.key_file = "{key}": {exc}']
    return []


def _subject(cert: Path) -> tuple[str | None, str | None]:
    """The certificate's common name and site (OU), either None when it names none."""
    subject = x509.load_pem_x509_certificates(cert.read_bytes())[0].subject
    return (
        subject_attribute(subject, NameOID.COMMON_NAME),
        subject_attribute(subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
    )


def _identity(config: Config, cert: Path) -> list[str]:
    """The names the gateway publishes under against the names its certificate proves."""
    name, site = _subject(cert)
    if name is None:
        return [
            f'uplink.tls.cert_file = "{cert}": has no common name, '
            "which the broker takes as the gateway's name"
        ]
    problems = []
    if name != config.gateway.id:
        problems.append(
            f'uplink.tls.cert_file = "{cert}": issued to "{name}", not to this gateway (gateway.id = '
            f'"{config.gateway.id}"): a broker that grants topics by the certificate\'s name, as the '
            "shipped ACL does, drops everything the gateway publishes"
        )
    problems += _sparkplug_differs(
        config,
        "edge_node_id",
        f'the name the certificate "{cert}" is issued to ("{name}")',
        name,
        "the shipped broker ACL lets an Edge Node publish only under its certificate's name",
    )
    return problems + _site(config, cert, site)


def _sparkplug_differs(config: Config, key: str, what: str, expected: str, why: str) -> list[str]:
    """`[uplink.sparkplug] key` when Sparkplug B is the encoding and it is set to other than `expected`."""
    sparkplug = config.uplink.sparkplug
    value = getattr(sparkplug, key) if sparkplug is not None else None
    if config.uplink.encoding != "sparkplug_b" or value is None or value == expected:
        return []
    return [f'uplink.sparkplug.{key} = "{value}": not {what}: {why}']


def _site(config: Config, cert: Path, site: str | None) -> list[str]:
    """The site the gateway publishes in against the one its certificate names, which a site-bound
    broker ACL (`edge-agent ca acl --dir`) binds it to; nothing when the certificate names none."""
    if site is None:
        return []
    bound = "a broker with a site-bound ACL (edge-agent ca acl --dir) drops"
    problems = []
    if site != config.gateway.site:
        problems.append(
            f'uplink.tls.cert_file = "{cert}": issued for site "{site}", not this gateway\'s '
            f'(gateway.site = "{config.gateway.site}"): {bound} everything the gateway publishes'
        )
    return problems + _sparkplug_differs(
        config,
        "group_id",
        f'the site the certificate "{cert}" is issued for ("{site}")',
        site,
        f"{bound} the Edge Node's births and data in any other group",
    )


def _found(*problems: str | None) -> list[str]:
    return [p for p in problems if p is not None]


def file_problems(config: Config) -> list[str]:
    """One line per TLS file (and other file: `_other_files`) the agent will need and cannot use,
    naming its key and path."""
    problems: list[str] = []
    claim = config.security.identity.claim
    tls = config.uplink.tls
    if tls is not None:
        if tls.ca_file is not None and not _written_at_enrolment(config, tls.ca_file):
            problems += _found(_certificates("uplink.tls.ca_file", tls.ca_file))
        if tls.cert_file is not None and tls.key_file is not None:
            # With a claim, the device certificate is written at enrolment: absent until then.
            pending = claim is not None and not tls.cert_file.exists()
            if not pending:
                pair = _pair("uplink.tls", tls.cert_file, tls.key_file)
                problems += pair or _identity(config, tls.cert_file) + _not_renewed(config, tls.cert_file)
    if claim is not None:
        problems += _found(_certificates("security.identity.claim.ca_file", claim.ca_file))
        problems += _pair("security.identity.claim", claim.cert_file, claim.key_file)
    if config.update.ca_file is not None:
        problems += _found(_certificates("update.ca_file", config.update.ca_file))
    if (metrics_tls := config.status.metrics_tls) is not None:
        problems += _pair("status.metrics_tls", metrics_tls.cert_file, metrics_tls.key_file)
        if metrics_tls.client_ca_file is not None:
            problems += _found(_certificates("status.metrics_tls.client_ca_file", metrics_tls.client_ca_file))
    return problems + _other_files(config)


def _not_renewed(config: Config, cert: Path) -> list[str]:
    """The uplink's certificate is one the agent will not renew (`agent.identity_keeper`): renewal
    is off, or it has nothing to renew through (the uplink connects with another certificate than
    the identity's and there is no claim section to reach the enrolment service)."""
    identity = config.security.identity
    own = DeviceIdentity(config.gateway.state_dir / identity.directory).cert_file
    shares = os.path.realpath(cert) == os.path.realpath(own)
    if identity.renewal.enabled and (shares or identity.claim is not None):
        return []
    why = (
        "security.identity.renewal.enabled = false"
        if not identity.renewal.enabled
        else f'the uplink does not connect with the identity\'s certificate ("{own}", which the agent '
        "renews over the uplink's connection) and there is no [security.identity.claim] section"
    )
    until = x509.load_pem_x509_certificates(cert.read_bytes())[0].not_valid_after_utc
    return [
        f'uplink.tls.cert_file = "{cert}": will not be renewed ({why}); it expires '
        f"{until:%Y-%m-%d %H:%M:%S} UTC, and the broker then refuses the gateway"
    ]


def _written_at_enrolment(config: Config, path: Path) -> bool:
    """`path` is the identity's CA bundle, not there yet, and enrolment (a claim section) writes it."""
    identity = config.security.identity
    if identity.claim is None or path.exists():
        return False
    written = DeviceIdentity(config.gateway.state_dir / identity.directory).ca_file
    return os.path.abspath(path) == os.path.abspath(written)


def _expiring(key: str, path: Path, data: bytes) -> str | None:
    """An OPC UA client certificate past or near its end (the driver says the same in `status`)."""
    try:
        cert = parse_certificate(data)
    except ValueError:
        return f'{key} = "{path}": not a PEM or DER certificate'
    said = certificate_expiry(not_after_ns(cert), time.time_ns())
    return None if said is None else f'{key} = "{path}": {said}'


def _other_files(config: Config) -> list[str]:
    """The other files a config names that the agent reads only once it runs: an OPC UA device's
    certificates and key (else its connection fails at every retry), a meter's key (else that
    meter's readings are bad), a model's manifest (else the model is not loaded), the board's ID
    (else a card copied to another board is not told apart: agent.board_change)."""
    found: list[str | None] = []
    if config.gateway.board_id_file is not None:
        data, problem = _read("gateway.board_id_file", config.gateway.board_id_file)
        empty = data is not None and not data.strip()
        found.append(f'gateway.board_id_file = "{config.gateway.board_id_file}": empty' if empty else problem)
    for index, device in enumerate(config.devices):
        for key in ("certificate", "private_key", "server_certificate"):
            path = getattr(device, key, None)
            if isinstance(path, Path):
                data, problem = _read(f"devices[{index}] ({device.name}).{key}", path)
                found.append(problem)
                if key == "certificate" and data is not None:
                    found.append(_expiring(f"devices[{index}] ({device.name}).{key}", path, data))
        for meter in getattr(device, "meters", None) or ():
            if getattr(meter, "key", None) is not None:
                _, problem = load_key(meter.key)  # resolved and parsed as the driver will at open
                if problem is not None:
                    found.append(f"devices[{index}] ({device.name}).meters ({meter.name}).key: {problem}")
    for kind, sections in config.models.items():
        for index, section in enumerate(sections):
            path = getattr(section, "model", None)
            if isinstance(path, Path):
                found.append(_read(f"models.{kind}[{index}].model", path)[1])
    return _found(*found)
