"""How a client's address is keyed: by limits, logs and reader caps alike."""

from __future__ import annotations

import functools
import ipaddress

# An IPv6 client is its /56, the usual home delegation (RFC 6177).
IPV6_PREFIX = 56
# Every address that does not parse, whatever its text, is this one client.
UNPARSED_KEY = "ip:unparsed"
# The longest address with a port and zone: "[" + 45 + "%" zone + "]:65535".
MAX_ADDRESS_CHARS = 100


# Addresses keyed lately, per worker: a visitor's next request asks again
# (an IPv6 /56 costs 19 us to work out, an IPv4 address 3 us).
_RECENT = 1024


def address_key(address: str | None) -> str:
    """Key an address: IPv4 as is, IPv6 by its /56 network.

    A load balancer may write a port (`203.0.113.7:51234`, `[2001:db8::1]:443`)
    or brackets into X-Forwarded-For; they are stripped, so that each source
    port is not a new client. Whatever still does not parse is one shared
    bucket, never keyed by its raw text: a client must not buy fresh limits
    by writing garbage there.
    """
    if address is not None and len(address) <= 2 * MAX_ADDRESS_CHARS:
        return _recent_key(address)  # the cache holds short strings only
    return _key(address)


@functools.lru_cache(maxsize=_RECENT)
def _recent_key(address: str) -> str:
    return _key(address)


def _key(address: str | None) -> str:
    ip = parse_address(address)
    if ip is None:
        return UNPARSED_KEY
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False)}"
    return f"ip:{ip}"


def parse_address(
    raw: str | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """Read an address that may carry a port, brackets or an IPv6 zone; None if bad."""
    text = (raw or "").strip()
    if len(text) > MAX_ADDRESS_CHARS:
        return None
    if text.startswith("["):  # [v6] or [v6]:port
        inside, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not _is_port(rest)):
            return None
        text = inside
    elif text.count(":") == 1:  # v4:port (a bare IPv6 address has two or more)
        host, _, port = text.partition(":")
        if not _is_port(":" + port):
            return None
        text = host
    text = text.partition("%")[0]  # fe80::1%eth0: the zone names no client
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_port(text: str) -> bool:
    digits = text[1:]
    return (
        text[:1] == ":"
        and 0 < len(digits) <= 5
        and digits.isascii()
        and digits.isdigit()
    )
