"""Host keys of the config file: a DNS name or an IPv4/IPv6 address, so that a URL, a `host:port` or
a stray space is refused by `check-config` instead of failing every connect on site."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final

from pydantic import AfterValidator

# One DNS label; `_` too, which Docker and Windows networks put in host names.
_LABEL: Final = re.compile(r"^\w([\w-]{0,61}\w)?$")


def check_host(host: str) -> str:
    """`host` when it is a DNS name or an IP address; otherwise a ValueError saying what is wrong."""
    if "://" in host:
        raise ValueError(
            "expected a host name or address, not a URL: leave out the scheme (mqtt://, tcp://) "
            "and give the port in 'port'"
        )
    if any(c.isspace() for c in host):
        raise ValueError("expected a host name or address, without spaces")
    if "/" in host:
        raise ValueError("expected a host name or address, without '/' or a path")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return host
    if ":" in host:  # no IPv6 address: "10.0.0.5:502", "[::1]:502" or "[::1]"
        raise ValueError(
            "expected a host name or address without ':PORT': give the port in 'port' "
            "(an IPv6 address goes without brackets, e.g. fe80::1)"
        )
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        raise ValueError("expected an IPv4 address of four numbers 0..255 (e.g. 10.0.0.5)")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            "expected a DNS name (letters, digits and '-', labels joined by '.') or an IP address"
        )
    return host


def check_port(port: str) -> int:
    """The port number of a URL (`port`: its digits); a ValueError unless it is 1..65535."""
    number = int(port)
    if not 1 <= number <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    return number


# A config key holding a host name or address.
Host = Annotated[str, AfterValidator(check_host)]

__all__ = ["Host", "check_host", "check_port"]


def host_port(host: str, port: int) -> str:
    """`host:port` as logs, errors and HTTP show an endpoint: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
