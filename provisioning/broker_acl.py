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

The utility's own blocks (an operator console, a second claim certificate or Sparkplug host) live
in a file of their own (`--acl-extra`), appended to every site-bound file written, after a check
(`extra_blocks`): only `user` blocks of `topic` lines, never for a gateway (a certificate with a
site or a device serial) nor for a user whose block is written here, no `pattern` (it would
grant every gateway), and no write of `.../cmd/#` (command senders get `.../cmd/+`: the `#`
also matches the bare `.../cmd`, which a reader of `{prefix}/+/+/+` takes for gateway data). A
file the check refuses is not written: the broker keeps the last one.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from water_edge.core.files import atomic_write
from water_edge.core.names import NAME_PATTERN, TOPIC_LEVEL_PATTERN, TOPIC_PREFIX_PATTERN, is_name
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
# Commands go to `{prefix}/<site>/<gateway>/cmd/<type>`, one level: `cmd/#` would also match the
# bare `.../cmd`, which a reader of `{prefix}/+/+/+` takes for a gateway's data stream `cmd`.
user centre
topic read {prefix}/#
topic write {prefix}/+/+/cmd/+

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


# The users whose block this module writes: an extra file cannot add to their rights (`claim` is
# shared by every gateway not yet enrolled).
_OWN_USERS: Final = frozenset(re.findall(r"(?m)^user (\S+)$", _CENTRAL))
_ACCESS: Final = frozenset(("read", "write", "readwrite", "deny"))

_EXTRA_HEADER = """
# The utility's own blocks, kept from {path} (--acl-extra) by edge-agent ca acl, which
# checked them: `user` blocks of other central services, none for a gateway, no `pattern`.
"""


@dataclass
class GatewaySites:
    """Gateway id -> site from a CA's register, and the valid certificates left out, with why;
    `kept`: the users of the extra blocks written after them."""

    sites: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    kept: tuple[str, ...] = ()


def _topic_filter(text: str) -> bool:
    """An MQTT topic filter: `#` only as the whole last level, `+` only as a whole level."""
    if not text or len(text.encode()) > 65535 or "\x00" in text:
        return False
    levels = text.split("/")
    return all(
        ("#" not in level or (level == "#" and i == len(levels) - 1)) and ("+" not in level or level == "+")
        for i, level in enumerate(levels)
    )


def _check_user(name: str, gateways: Mapping[str, Issued], users: list[str], where: str) -> None:
    if not is_name(name):
        raise ProvisioningError(f"{where}: user {name!r} is not {pattern_words(NAME_PATTERN)}")
    if name in _OWN_USERS:
        raise ProvisioningError(
            f"{where}: the block of {name!r} is written by edge-agent ca acl; give another service "
            "a certificate and a user block of its own"
        )
    item = gateways.get(name)
    if item is not None:
        site = f" for site {item.site}" if item.site else ""
        raise ProvisioningError(
            f"{where}: {name!r} is a gateway (certificate {item.serial}{site}): a gateway is granted "
            "only its own site's topics, by its generated block"
        )
    if name in users:
        raise ProvisioningError(f"{where}: a second block for user {name!r}")


def extra_blocks(text: str, issued: Iterable[Issued], source: str = "extra ACL") -> tuple[str, ...]:
    """Check the utility's own ACL blocks before they are appended to a site-bound ACL; their users.

    Only comments, `user NAME` and, after one, `topic [read|write|readwrite|deny] FILTER` lines,
    in printable ASCII with single spaces (as Mosquitto will read them).
    Refused (`ProvisioningError` naming the line): a `pattern` (it applies to every client, the
    gateways too), a `topic` before any `user` (it would be the anonymous clients'), a user that is
    a gateway in `issued` (any valid certificate of the name with a site or a device serial, its
    newest or not: a gateway gets its own site's topics only, from its generated block), a user
    whose block the ACL already has (`centre`, `claim`...: their rights are the shipped ones), a
    name the CA would not issue, a `write` or `readwrite` of a filter ending in `cmd/#` (it
    includes the bare `.../cmd`, where a command sender would publish gateway data; commands are
    `cmd/+`)."""
    gateways = {
        item.common_name: item
        for item in issued
        if item.valid and item.common_name and (item.site is not None or item.device_serial is not None)
    }
    users: list[str] = []
    for number, line in enumerate(text.split("\n"), 1):
        where = f"{source}:{number}"
        # Read as Mosquitto reads it: one line per line feed, words split at single spaces, a
        # comment only with `#` first. Anything it might read otherwise than this check is refused.
        if any(not " " <= c <= "~" for c in line):
            raise ProvisioningError(f"{where}: only printable ASCII characters (no tab, no carriage return)")
        if not line or line.startswith("#"):
            continue
        words = line.split(" ")
        if "" in words:
            raise ProvisioningError(f"{where}: words are separated by one space, with none before or after")
        if words[0] == "user" and len(words) == 2:
            _check_user(words[1], gateways, users, where)
            users.append(words[1])
        elif words[0] == "topic" and (
            (len(words) == 2 and words[1] not in _ACCESS) or (len(words) == 3 and words[1] in _ACCESS)
        ):
            if not users:
                raise ProvisioningError(f"{where}: a topic line before any user line")
            if not _topic_filter(words[-1]):
                raise ProvisioningError(f"{where}: {words[-1]!r} is not an MQTT topic filter")
            access = words[1] if len(words) == 3 else "readwrite"
            if access in ("write", "readwrite") and words[-1].split("/")[-2:] == ["cmd", "#"]:
                raise ProvisioningError(
                    f"{where}: {words[-1]!r} also lets {users[-1]!r} publish on the bare '.../cmd' "
                    "topic, which a reader of the gateways' streams takes for gateway data; commands "
                    f"are one level below it: {words[-1][:-1] + '+'!r}"
                )
        elif words[0] == "pattern":
            raise ProvisioningError(
                f"{where}: no pattern lines: a pattern applies to every client, the gateways too "
                "(write a user block)"
            )
        else:
            raise ProvisioningError(
                f"{where}: expected 'user NAME' or 'topic [read|write|readwrite|deny] FILTER', "
                f"got {line[:80]!r}"
            )
    return tuple(users)


def gateway_sites(holders: Mapping[str, Issued]) -> GatewaySites:
    """Each gateway's site: the OU of its newest valid certificate (`CertificateAuthority.holders`).
    Central services, claim certificates, the broker's own and certificates without a site are left
    out, as are names the agent would not accept (no such name can be written into an ACL)."""
    out = GatewaySites()
    for name, item in sorted(holders.items()):
        if reserved_name(name):
            if name != name.lower():  # signed before the CA compared names in any letter case
                out.left_out[name] = "differs from a reserved name only in letter case: revoke it"
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
    extra: tuple[str, str] | None = None,
) -> str:
    """The ACL file: id-bound without `sites`, else site-bound with one block per gateway, then
    `extra` (where it comes from, its text; checked by `extra_blocks`) as it is."""
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
    if extra is not None:
        source, blocks = extra
        where = "".join(c if c.isprintable() else "?" for c in source)
        text += _EXTRA_HEADER.format(path=where) + blocks.rstrip("\n") + "\n"
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
    extra: Path | None = None  # the utility's own blocks (`extra_blocks`), read at every write

    def write(self, ca: CertificateAuthority | None) -> GatewaySites:
        """Write the ACL (atomically), site-bound for the CA's register as it is now or id-bound
        without a CA, with the extra blocks read again and checked against that register, then run
        the reload command; `ProvisioningError` if any of it fails (nothing is written when the
        extra blocks are refused; a written file stays written when the reload fails)."""
        found = GatewaySites() if ca is None else gateway_sites(ca.holders())
        extra = None
        if self.extra is not None:
            if ca is None:
                raise ProvisioningError("extra ACL blocks are kept in a site-bound ACL only (a CA directory)")
            try:
                blocks = self.extra.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ProvisioningError(f"cannot read the extra ACL blocks {self.extra}: {exc}") from exc
            found.kept = extra_blocks(blocks, ca.issued(), str(self.extra))
            for name in found.kept:
                found.left_out.pop(name, None)  # its certificate names no site: its block is here
            extra = (str(self.extra), blocks)
        try:
            text = render(
                None if ca is None else found.sites,
                prefix=self.prefix,
                host_id=self.host_id,
                enrol_prefix=self.enrol_prefix,
                extra=extra,
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
