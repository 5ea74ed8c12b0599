"""The Mosquitto ACL for the gateways' broker, in its two forms.

- **Id-bound** (`render()` without sites; what `deploy/mosquitto/acl` holds): `pattern` rules
  substitute the connecting certificate's common name (`%u`), so a gateway publishes only under its
  own id, in any site. No CA is needed to write it and nothing changes when a gateway is enrolled.
- **Site-bound** (`render(sites=...)`, from a CA's register by `gateway_sites`): one `user` block
  per gateway names its site too, so a gateway (or whoever holds its key) cannot appear in a site
  that is not the one in its certificate (the OU). Mosquitto substitutes only `%u` and `%c` into
  patterns, never the OU, so this file is written again whenever a gateway is enrolled and the
  broker reloads it (SIGHUP).

Both forms share the central services' blocks and the enrolment rules. Every name written into a
site-bound file matches the agent's own rule for a gateway id or a site (`core.names`), so a
certificate can never add a line of its choosing to it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from water_edge.core.files import atomic_write
from water_edge.core.names import TOPIC_LEVEL_PATTERN, TOPIC_PREFIX_PATTERN, is_name
from water_edge.core.patterns import pattern_words
from water_edge.provisioning.ca import CertificateAuthority, Issued, reserved_name
from water_edge.provisioning.errors import ProvisioningError

DEFAULT_PREFIX: Final = "water"
DEFAULT_HOST_ID: Final = "scada"
DEFAULT_ENROL_PREFIX: Final = "enrol"
# What the gateways' config accepts for [uplink] prefix and [uplink.sparkplug] primary_host_id.
_PREFIX: Final = re.compile(TOPIC_PREFIX_PATTERN)
_LEVEL: Final = re.compile(TOPIC_LEVEL_PATTERN)

_HEADER = """\
# Mosquitto ACL for water-edge-agent (deploy/mosquitto/edge-agent.conf). Every user name is the
# common name of the client's certificate (use_identity_as_username), so each rule is keyed on
# what the TLS handshake proved, never on what the client chose to send. Topic prefix `{prefix}`
# is the gateways' [uplink] prefix and `{host_id}` their Sparkplug primary_host_id: write this file
# with `edge-agent ca acl` (--prefix, --host-id) rather than by hand when either differs.
"""

_CENTRAL = """
# The central consumer and command sender. Give each central service its own certificate and
# block (e.g. split reading from commanding); a common name listed here can never be a gateway id.
user centre
topic read {prefix}/#
topic write {prefix}/+/+/cmd/#

# The claim-enrolment service (edge-agent ca serve-enrolment).
user enrolment-service
topic read {enrol}/+/csr
topic write {enrol}/+/cert
topic deny {prefix}/#
topic deny spBv1.0/#

# The shared claim certificate: its enrolment topics only (from the patterns below), nothing else.
# Another claim certificate (CN claim-<something>) needs a block like this one.
user claim
topic deny {prefix}/#
topic deny spBv1.0/#

# A Sparkplug B Primary Host (Ignition's MQTT Engine or another host application) whose Host ID is
# `{host_id}` (the gateways' [uplink.sparkplug] primary_host_id): it reads every Edge Node, is the
# only client that may publish its STATE, and sends the Rebirth / Next Server commands (the
# gateways refuse writes through NCMD/DCMD). Its certificate's common name is `sparkplug-host`, a
# name the CA never gives a gateway; a second host (a backup Ignition) gets
# `sparkplug-host-<name>` and a block like this one with its own STATE topic.
user sparkplug-host
topic read spBv1.0/#
topic write spBv1.0/STATE/{host_id}
topic write spBv1.0/+/NCMD/+
topic write spBv1.0/+/DCMD/+/+
topic deny {prefix}/#
"""

_ID_BOUND = """
# Every certificate, by its own common name: a gateway publishes only under its own id (data
# streams, status, events), reads only its own commands, and asks the enrolment service only for
# its own certificate (a claim certificate: for a first one; a gateway: for its renewal).
pattern write {prefix}/+/%u/+
pattern read {prefix}/+/%u/cmd/#
pattern write {enrol}/%u/csr
pattern read {enrol}/%u/cert

# Sparkplug B (encoding = "sparkplug_b"): a gateway is an Edge Node under its own id only (its
# edge_node_id must be its gateway id, the default), births, data and deaths for itself and its
# devices, reads only the commands sent to it and the hosts' STATE (which only a host may write).
pattern write spBv1.0/+/NBIRTH/%u
pattern write spBv1.0/+/NDATA/%u
pattern write spBv1.0/+/NDEATH/%u
pattern write spBv1.0/+/DBIRTH/%u/+
pattern write spBv1.0/+/DDATA/%u/+
pattern write spBv1.0/+/DDEATH/%u/+
pattern read spBv1.0/+/NCMD/%u
pattern read spBv1.0/+/DCMD/%u/+
pattern read spBv1.0/STATE/+
"""

_SITE_BOUND_COMMON = """
# Every certificate asks the enrolment service only for its own certificate (a claim
# certificate: for a first one; a gateway: for its renewal), and reads the hosts' STATE.
pattern write {enrol}/%u/csr
pattern read {enrol}/%u/cert
pattern read spBv1.0/STATE/+

# Each gateway below: only under its own id *and its own site* (the OU of its newest valid
# certificate), for its JSON streams and, with encoding = "sparkplug_b", as the Edge Node of that
# id in the Sparkplug group of that site (group_id must be left to default to the site).
"""

_GATEWAY = """
user {gateway}
topic write {prefix}/{site}/{gateway}/+
topic read {prefix}/{site}/{gateway}/cmd/#
topic write spBv1.0/{site}/NBIRTH/{gateway}
topic write spBv1.0/{site}/NDATA/{gateway}
topic write spBv1.0/{site}/NDEATH/{gateway}
topic write spBv1.0/{site}/DBIRTH/{gateway}/+
topic write spBv1.0/{site}/DDATA/{gateway}/+
topic write spBv1.0/{site}/DDEATH/{gateway}/+
topic read spBv1.0/{site}/NCMD/{gateway}
topic read spBv1.0/{site}/DCMD/{gateway}/+
"""


@dataclass
class GatewaySites:
    """Gateway id -> site from a CA's register, and the valid certificates left out, with why."""

    sites: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)


def gateway_sites(holders: Mapping[str, Issued]) -> GatewaySites:
    """Each gateway's site: the OU of its newest valid certificate (`CertificateAuthority.holders`).
    Central services, claim certificates, the broker's own and certificates without a site are left
    out, as are names the agent would not accept (no such name can be written into an ACL)."""
    out = GatewaySites()
    for name, item in sorted(holders.items()):
        if reserved_name(name):
            continue
        site = item.site
        if not is_name(name):
            out.left_out[repr(name)] = "not a gateway id the agent accepts"
        elif site is None:
            out.left_out[name] = (
                "no site (OU) in its certificate: the broker, a central service or a gateway "
                "enrolled without one"
            )
        elif not is_name(site):
            out.left_out[name] = f"its site {site!r} is not one the agent accepts"
        else:
            out.sites[name] = site
    return out


def render(
    sites: Mapping[str, str] | None = None,
    *,
    prefix: str = DEFAULT_PREFIX,
    host_id: str = DEFAULT_HOST_ID,
    enrol_prefix: str = DEFAULT_ENROL_PREFIX,
) -> str:
    """The ACL file: id-bound without `sites`, else site-bound with one block per gateway."""
    for what, value, pattern in (
        ("prefix", prefix, _PREFIX),
        ("enrolment prefix", enrol_prefix, _PREFIX),
        ("Sparkplug host id", host_id, _LEVEL),
    ):
        if not pattern.match(value):
            raise ValueError(f"the {what} {value!r} is not {pattern_words(pattern.pattern)}")
    words = {"prefix": prefix, "host_id": host_id, "enrol": enrol_prefix}
    text = _HEADER.format(**words) + _CENTRAL.format(**words)
    if sites is None:
        return text + _ID_BOUND.format(**words)
    text += _SITE_BOUND_COMMON.format(**words)
    for gateway, site in sorted(sites.items()):
        if not (is_name(gateway) and is_name(site)) or reserved_name(gateway):
            raise ValueError(f"cannot bind {gateway!r} to {site!r}: not a gateway id and a site")
        text += _GATEWAY.format(prefix=prefix, site=site, gateway=gateway)
    return text


@dataclass(frozen=True)
class BrokerAcl:
    """Where the broker's ACL is written, what it assumes, and how the broker is told to reload it."""

    path: Path
    prefix: str = DEFAULT_PREFIX
    host_id: str = DEFAULT_HOST_ID
    enrol_prefix: str = DEFAULT_ENROL_PREFIX
    reload_command: Sequence[str] = ()
    reload_timeout_s: float = 30.0

    def write(self, ca: CertificateAuthority | None) -> GatewaySites:
        """Write the ACL (atomically), site-bound for the CA's register as it is now or id-bound
        without a CA, then run the reload command; `ProvisioningError` if either fails (a written
        file stays written)."""
        found = GatewaySites() if ca is None else gateway_sites(ca.holders())
        try:
            text = render(
                None if ca is None else found.sites,
                prefix=self.prefix,
                host_id=self.host_id,
                enrol_prefix=self.enrol_prefix,
            )
        except ValueError as exc:
            raise ProvisioningError(str(exc)) from exc
        atomic_write(self.path, text.encode())
        reload_broker(self.reload_command, self.reload_timeout_s)
        return found


def reload_broker(command: Sequence[str], timeout_s: float = 30.0) -> None:
    """Run `command` (e.g. `systemctl reload mosquitto`: Mosquitto re-reads its ACL on SIGHUP);
    nothing when empty. `ProvisioningError` with its output when it fails."""
    if not command:
        return
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ProvisioningError(f"the reload command {' '.join(command)!r} did not run: {exc}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-500:]
        raise ProvisioningError(
            f"the reload command {' '.join(command)!r} exited with {done.returncode}: {said or 'no output'}"
        )
