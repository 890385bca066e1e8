"""Settings: defaults, then CHATAPP_* environment, then test overrides.

The table below names every setting, its variable, parser and default;
`load_config` reads it into the one frozen Settings value
(chatapp/settings/), which the code reads as `settings.<key lower-cased>`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from chatapp.errors import ConfigError
from chatapp.settings.parse import base_url as _base_url
from chatapp.settings.parse import ceilings as _ceilings
from chatapp.settings.parse import choice as _choice
from chatapp.settings.parse import flag as _flag
from chatapp.settings.parse import http_url as _http_url
from chatapp.settings.parse import integer as _int
from chatapp.settings.parse import keys as _keys
from chatapp.settings.parse import knowledge_url as _knowledge_url
from chatapp.settings.parse import networks as _networks
from chatapp.settings.parse import origins as _origins
from chatapp.settings.parse import percentages as _percentages
from chatapp.settings.parse import prices as _prices
from chatapp.settings.parse import redis_url as _redis_url
from chatapp.settings.parse import seconds as _seconds
from chatapp.settings.parse import temperature as _temperature
from chatapp.settings.parse import text as _text
from chatapp.settings.parse import urls as _urls
from chatapp.settings.resolve import PROVIDER_DEFAULTS
from chatapp.settings.resolve import build
from chatapp.settings.value import Settings

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, concise assistant on a website. Answer in Markdown."
)

# name -> (environment variable, parser, default)
SETTINGS: dict[str, tuple[str, Callable[[str], Any], Any]] = {
    "ENV": ("CHATAPP_ENV", _choice("development", "production"), "development"),
    "SECRET_KEYS": ("CHATAPP_SECRET_KEY", _keys, ()),
    "PROVIDER": ("CHATAPP_PROVIDER", _choice(*PROVIDER_DEFAULTS), "demo"),
    "PROVIDER_BASE_URL": ("CHATAPP_PROVIDER_BASE_URL", _text, ""),
    "MODEL": ("CHATAPP_MODEL", _text, ""),
    "SYSTEM_PROMPT": ("CHATAPP_SYSTEM_PROMPT", _text, DEFAULT_SYSTEM_PROMPT),
    "MAX_OUTPUT_TOKENS": ("CHATAPP_MAX_OUTPUT_TOKENS", _int(1, 1_000_000), 1024),
    "TEMPERATURE": ("CHATAPP_TEMPERATURE", _temperature, None),
    "MAX_MESSAGE_CHARS": ("CHATAPP_MAX_MESSAGE_CHARS", _int(1, 1_000_000), 4000),
    "REDIS_URL": ("CHATAPP_REDIS_URL", _redis_url, ""),
    "RATE_LIMITS": ("CHATAPP_RATE_LIMITS", _text, "10/minute;200/day"),
    "MAX_STREAMS_PER_CLIENT": ("CHATAPP_MAX_STREAMS_PER_CLIENT", _int(1), 3),
    "TOKEN_TTL": ("CHATAPP_TOKEN_TTL", _seconds(), 7200.0),
    "STREAM_TTL": ("CHATAPP_STREAM_TTL", _seconds(), 600.0),
    "HISTORY_TTL": ("CHATAPP_HISTORY_TTL", _seconds(), 86400.0),
    "HEARTBEAT_SECONDS": ("CHATAPP_HEARTBEAT_SECONDS", _seconds(), 15.0),
    "ORPHAN_SECONDS": ("CHATAPP_ORPHAN_SECONDS", _seconds(), 30.0),
    "UPSTREAM_CONNECT_TIMEOUT": ("CHATAPP_UPSTREAM_CONNECT_TIMEOUT", _seconds(), 5.0),
    "UPSTREAM_IDLE_TIMEOUT": ("CHATAPP_UPSTREAM_IDLE_TIMEOUT", _seconds(), 30.0),
    "UPSTREAM_TOTAL_TIMEOUT": ("CHATAPP_UPSTREAM_TOTAL_TIMEOUT", _seconds(), 600.0),
    # Models as they ship today (SPEC "Models and resilient upstreams").
    "UPSTREAM_FIRST_TOKEN_TIMEOUT": (
        "CHATAPP_UPSTREAM_FIRST_TOKEN_TIMEOUT",
        _seconds(),
        300.0,
    ),
    "UPSTREAM_RETRIES": ("CHATAPP_UPSTREAM_RETRIES", _int(0, 10), 2),
    "FALLBACK_MODEL": ("CHATAPP_FALLBACK_MODEL", _text, ""),
    "FALLBACK_PROVIDER": (
        "CHATAPP_FALLBACK_PROVIDER",
        _choice("openai", "anthropic", "demo"),
        "",
    ),
    "FALLBACK_BASE_URL": ("CHATAPP_FALLBACK_BASE_URL", _text, ""),
    "REASONING_EFFORT": (
        "CHATAPP_REASONING_EFFORT",
        _choice("low", "medium", "high"),
        "",
    ),
    "SHOW_REASONING": ("CHATAPP_SHOW_REASONING", _flag, False),
    "EMBED_ORIGINS": ("CHATAPP_EMBED_ORIGINS", _origins, ()),
    "API_ORIGINS": ("CHATAPP_API_ORIGINS", _origins, ()),
    "WP_SHARED_SECRET": ("CHATAPP_WP_SHARED_SECRET", _text, ""),
    "TRUSTED_PROXY_HOPS": ("CHATAPP_TRUSTED_PROXY_HOPS", _int(0, 10), 0),
    # Not in SPEC's table: which peers are those proxies (CIDRs); empty = any.
    "TRUSTED_PROXIES": ("CHATAPP_TRUSTED_PROXIES", _networks, ()),
    "DAILY_TOKEN_BUDGET": ("CHATAPP_DAILY_TOKEN_BUDGET", _int(0), 0),
    # The site's spend (SPEC "Spend"): prices, ceilings, alerts. Soft ceilings
    # move turns to FALLBACK_MODEL (with the upstream settings above).
    "PRICES": ("CHATAPP_PRICES", _prices, MappingProxyType({})),
    "CURRENCY": ("CHATAPP_CURRENCY", _text, "USD"),
    "SPEND_LIMITS": ("CHATAPP_SPEND_LIMITS", _ceilings, MappingProxyType({})),
    "SPEND_SOFT_LIMITS": (
        "CHATAPP_SPEND_SOFT_LIMITS",
        _ceilings,
        MappingProxyType({}),
    ),
    "SPEND_ALERTS": ("CHATAPP_SPEND_ALERTS", _percentages, (50, 80, 100)),
    "ALERT_WEBHOOK": ("CHATAPP_ALERT_WEBHOOK", _http_url, ""),
    "CACHE_TTL": ("CHATAPP_CACHE_TTL", _seconds(zero_ok=True), 0.0),
    "DRAIN_SECONDS": ("CHATAPP_DRAIN_SECONDS", _seconds(), 30.0),
    "LOG_PROMPTS": ("CHATAPP_LOG_PROMPTS", _flag, False),
    # gunicorn.conf.py reads the same variable for gunicorn's own lines.
    "LOG_LEVEL": (
        "CHATAPP_LOG_LEVEL",
        _choice("debug", "info", "warning", "error", "critical"),
        "info",
    ),
    "MODERATION": ("CHATAPP_MODERATION", _choice("off", "openai"), "off"),
    "MODERATION_BASE_URL": (
        "CHATAPP_MODERATION_BASE_URL",
        _text,
        "https://api.openai.com/v1",
    ),
    "BOT_CHECK": ("CHATAPP_BOT_CHECK", _choice("off", "pow"), "off"),
    # The owner's API (knowledge pushes, spend): a bearer secret; empty = off.
    "ADMIN_TOKEN": ("CHATAPP_ADMIN_TOKEN", _text, ""),
    # Site knowledge (SPEC "Site knowledge"): the index, its sources, answering.
    "KNOWLEDGE": ("CHATAPP_KNOWLEDGE", _flag, False),
    "KNOWLEDGE_URL": ("CHATAPP_KNOWLEDGE_URL", _knowledge_url, "sqlite:///"),
    "KNOWLEDGE_SOURCES": ("CHATAPP_KNOWLEDGE_SOURCES", _urls, ()),
    "KNOWLEDGE_REFRESH": ("CHATAPP_KNOWLEDGE_REFRESH", _seconds(), 86400.0),
    "KNOWLEDGE_MODE": ("CHATAPP_KNOWLEDGE_MODE", _choice("prefer", "strict"), "prefer"),
    "KNOWLEDGE_MAX_CHARS": ("CHATAPP_KNOWLEDGE_MAX_CHARS", _int(1, 1_000_000), 6000),
    "EMBEDDINGS_MODEL": ("CHATAPP_EMBEDDINGS_MODEL", _text, ""),
    "EMBEDDINGS_BASE_URL": (
        "CHATAPP_EMBEDDINGS_BASE_URL",
        _base_url,
        "https://api.openai.com/v1",
    ),
    # Not in SPEC's table: the demo provider's pace, so tests and benches can
    # make it fast; the size of a request body we read at all.
    "DEMO_DELAY_MS": ("CHATAPP_DEMO_DELAY_MS", _int(0, 10_000), 30),
    "MAX_BODY_BYTES": ("CHATAPP_MAX_BODY_BYTES", _int(1024), 64 * 1024),
    # How long a client may take to send a request body; then 408.
    "BODY_READ_SECONDS": ("CHATAPP_BODY_READ_SECONDS", _seconds(), 10.0),
    "HISTORY_MAX_CHARS": ("CHATAPP_HISTORY_MAX_CHARS", _int(0), 24_000),
    "WORKER_MAX_STREAMS": ("CHATAPP_WORKER_MAX_STREAMS", _int(1), 4000),
    # Event streams one client may hold open on a worker (oldest gives way).
    "READERS_PER_CLIENT": ("CHATAPP_READERS_PER_CLIENT", _int(1), 32),
    # How long a write to an event stream may wait for a client that takes no
    # bytes; then that reader is dropped (its EventSource resumes, if alive).
    "STREAM_SEND_TIMEOUT": ("CHATAPP_STREAM_SEND_TIMEOUT", _seconds(), 60.0),
    # Not in SPEC's table either: how long a moderation verdict may take, and
    # the bot check's difficulty (the largest number a solver may have to try).
    "MODERATION_TIMEOUT": ("CHATAPP_MODERATION_TIMEOUT", _seconds(), 10.0),
    "BOT_CHECK_MAX_NUMBER": (
        "CHATAPP_BOT_CHECK_MAX_NUMBER",
        _int(1000, 10_000_000),
        100_000,
    ),
}


# scheme://userinfo@ : the userinfo runs to the authority's last "@".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s'\"]*@")


def redact(text: str) -> str:
    """Hide the user name and password of every URL in `text`.

    `redis+sentinel://:secret@h:26379/m` reads `redis+sentinel://***@h:26379/m`:
    refusal lines and logs may say which URL is wrong, never its password.
    """
    return _USERINFO.sub(r"\g<scheme>***@", text)


def load_config(
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the validated settings from defaults, environment and overrides.

    Overrides (the tests') are values by key, as the table names them.

    A refusal (ConfigError) never carries a URL's credentials.
    """
    try:
        return _load_config(environ, overrides)
    except ConfigError as exc:
        raise ConfigError(redact(str(exc))) from exc.__cause__


def _load_config(
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> Settings:
    env = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name, (var, parse, default) in SETTINGS.items():
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            config[name] = default
            continue
        try:
            config[name] = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var}={raw!r} is invalid: {exc}") from exc
    if overrides:
        config.update(overrides)
    return build(config, env)
