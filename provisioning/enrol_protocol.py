"""Claim-based enrolment over MQTT: the topics and the two messages, shared by device and service.

    client  -> {prefix}/{identity}/csr    {"csr": "<PEM>"}
    service -> {prefix}/{identity}/cert   {"status": "ok", "serial": S, "cert": "<PEM>", "ca": "<PEM>"}
                                          {"status": "refused", "serial": S, "reason": "..."}

`identity` is the common name of the certificate the client connected with, which the shipped
broker config makes its MQTT username (`use_identity_as_username`) and the ACL (`pattern write
{prefix}/%u/csr`) binds to the topic: the topic level is therefore proven by the TLS handshake,
not chosen by the client. A claim certificate (CN `claim` or `claim-...`) asks for a first
certificate for a serial on the service's allow-list; an enrolled gateway (CN = its gateway id)
asks for the renewal of its own. Replies carry the serial, because every device that holds the
same claim certificate shares its reply topic.
"""

from __future__ import annotations

from water_edge.provisioning.ca import CLAIM_PREFIX


def csr_topic(prefix: str, identity: str) -> str:
    return f"{prefix}/{identity}/csr"


def cert_topic(prefix: str, identity: str) -> str:
    return f"{prefix}/{identity}/cert"


def identity_of(prefix: str, topic: str) -> str | None:
    """The identity level of a request topic `{prefix}/{identity}/csr`; None for any other topic."""
    head = prefix + "/"
    if not topic.startswith(head) or not topic.endswith("/csr"):
        return None
    identity = topic[len(head) : -len("/csr")]
    return identity if identity and "/" not in identity else None


def is_claim(identity: str) -> bool:
    """A claim certificate's identity (`claim`, `claim-batch7`), as opposed to a gateway id."""
    return identity == CLAIM_PREFIX or identity.startswith(CLAIM_PREFIX + "-")
