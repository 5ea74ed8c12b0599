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


def host_port(host: str, port: int) -> str:
    """`host:port` as logs, errors and HTTP show an endpoint: an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_HOST_PORT_EXPECTED: Final = (
    'expected "host:port": "127.0.0.1:9464" (this machine only), "0.0.0.0:9464" (every IPv4 '
    'address), "[::1]:9464" (IPv6 in brackets), or a host name with a port'
)


def split_host_port(text: str) -> tuple[str, int]:
    """A config key's "host:port" (an address to listen on) as (host, port), the reverse of
    `host_port`; a ValueError saying what is expected. An IPv6 address goes in brackets (returned
    without them); the host is what `check_host` takes; the port 1-65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(_HOST_PORT_EXPECTED)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address; {_HOST_PORT_EXPECTED}") from None
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f'an IPv6 address goes in brackets, as in "[::1]:9464"; {_HOST_PORT_EXPECTED}')
    else:
        try:
            check_host(host)
        except ValueError as exc:
            what = (
                "is not an IPv4 address"
                if re.fullmatch(r"[0-9.]+", host)
                else "is neither an IP address nor a host name"
            )
            raise ValueError(f"{host!r} {what} ({exc}); {_HOST_PORT_EXPECTED}") from None
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port must be a number from 1 to 65535, e.g. 9464; {_HOST_PORT_EXPECTED}")
    return host, int(port)


# A config key holding a host name or address.
Host = Annotated[str, AfterValidator(check_host)]

__all__ = ["Host", "check_host", "check_port", "host_port", "is_loopback", "split_host_port"]


def is_loopback(host: str) -> bool:
    """`host` reaches this machine only: `localhost`, 127.0.0.0/8 or ::1."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
