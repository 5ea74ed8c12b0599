"""Claim-based enrolment over MQTT: the topics and the two messages, shared by device and service.

    device  -> {prefix}/{serial}/csr    {"csr": "<PEM>"}
    service -> {prefix}/{serial}/cert   {"status": "ok", "cert": "<PEM>", "ca": "<PEM>"}
                                        {"status": "refused", "reason": "..."}

The device's MQTT client id is its serial, so a broker ACL pattern on `%c` confines each claim
connection to its own two topics (see docs/security.md for the ACL lines).
"""

from __future__ import annotations


def csr_topic(prefix: str, serial: str) -> str:
    return f"{prefix}/{serial}/csr"


def cert_topic(prefix: str, serial: str) -> str:
    return f"{prefix}/{serial}/cert"
