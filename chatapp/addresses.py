"""How a client's address is keyed: by limits, logs and reader caps alike."""

from __future__ import annotations

import ipaddress

# An IPv6 client is its /56, the usual home delegation (RFC 6177).
IPV6_PREFIX = 56


def address_key(address: str | None) -> str:
    """Key an address: IPv4 as is, IPv6 by its /56 network."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return f"ip:{address or 'unknown'}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        return f"ip:{ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False)}"
    return f"ip:{ip}"
