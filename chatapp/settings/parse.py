"""One setting's text -> its value, or ValueError saying what is wrong.

The parsers of chatapp/config.py's table. Each reads one CHATAPP_* value; the
checks across settings live in chatapp/settings/resolve.py.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable
from collections.abc import Mapping
from urllib.parse import urlsplit

from chatapp.prices import Price
from chatapp.prices import parse_ceilings
from chatapp.prices import parse_percentages
from chatapp.prices import parse_prices

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Longer than any deployment runs; keeps every TTL a Redis expiry can hold.
MAX_SECONDS = 1e9


def integer(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def seconds(*, zero_ok: bool = False) -> Callable[[str], float]:
    """Parse a duration: any positive, finite number of seconds (or 0 if allowed)."""

    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            value = math.nan
        low_ok = value >= 0 if zero_ok else value > 0
        if not (low_ok and value <= MAX_SECONDS):
            least = "0 (off) or more" if zero_ok else "more than 0"
            raise ValueError(f"must be a number of seconds, {least}, e.g. 30 or 0.5")
        return value

    return parse


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("must be 1 or 0")
    return value in ("1", "true", "yes", "on")


def text(raw: str) -> str:
    return raw.strip()


def temperature(raw: str) -> float:
    value = float(raw.strip())
    if not 0 <= value <= 2:
        raise ValueError("must be between 0 and 2")
    return value


def redis_url(raw: str) -> str:
    value = raw.strip()
    if value:
        from chatapp.store.redis import parse

        parse(value)  # one server, Sentinel or Cluster; ValueError says why not
    return value


def origins(raw: str) -> tuple[str, ...]:
    found = []
    for item in raw.split():
        origin = item.rstrip("/")
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ValueError(f"{item!r} is not an origin like https://example.com")
        found.append(origin)
    return tuple(found)


def keys(raw: str) -> tuple[str, ...]:
    found = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not found:
        raise ValueError("must hold at least one key")
    return found


def prices(raw: str) -> Mapping[str, Price]:
    return parse_prices(raw)


def ceilings(raw: str) -> Mapping[str, int]:
    return parse_ceilings(raw)


def percentages(raw: str) -> tuple[int, ...]:
    return parse_percentages(raw)


def http_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def networks(raw: str) -> tuple[Network, ...]:
    """Parse space- or comma-separated CIDRs (or addresses); ValueError if bad."""
    items = raw.replace(",", " ").split()
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


def knowledge_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError(
            "must be sqlite:///path (one host) or postgresql://… (shared by hosts)"
        )
    return value


def base_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def urls(raw: str) -> tuple[str, ...]:
    found = tuple(raw.split())
    for url in found:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
    return found
