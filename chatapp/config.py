"""Settings: defaults, then CHATAPP_* environment, then test overrides."""

from __future__ import annotations

import math
import os
import re
import secrets
from collections.abc import Callable
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from chatapp.errors import ConfigError

# Set by gunicorn.conf.py in the master so that every worker signs with the
# same throw-away key when no CHATAPP_SECRET_KEY is given.
EPHEMERAL_KEY_ENV = "CHATAPP_EPHEMERAL_SECRET_KEY"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful, concise assistant on a website. Answer in Markdown."
)

PROVIDER_DEFAULTS: dict[str, dict[str, str]] = {
    "demo": {"base_url": "", "model": "demo", "key_env": ""},
    "openai": {
        "base_url": "https://api.openai.com/v1",
        "model": "gpt-4o-mini",
        "key_env": "OPENAI_API_KEY",
    },
    "anthropic": {
        "base_url": "https://api.anthropic.com",
        "model": "claude-sonnet-4-5",
        "key_env": "ANTHROPIC_API_KEY",
    },
}


def _int(lo: int, hi: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


# Longer than any deployment runs; keeps every TTL a Redis expiry can hold.
MAX_SECONDS = 1e9


def _seconds(*, zero_ok: bool = False) -> Callable[[str], float]:
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


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def _flag(raw: str) -> bool:
    value = raw.strip().lower()
    if value not in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("must be 1 or 0")
    return value in ("1", "true", "yes", "on")


def _text(raw: str) -> str:
    return raw.strip()


def _temperature(raw: str) -> float:
    value = float(raw.strip())
    if not 0 <= value <= 2:
        raise ValueError("must be between 0 and 2")
    return value


def _redis_url(raw: str) -> str:
    value = raw.strip()
    if value:
        from chatapp.store.redis import parse

        parse(value)  # one server, Sentinel or Cluster; ValueError says why not
    return value


def _origins(raw: str) -> tuple[str, ...]:
    origins = []
    for item in raw.split():
        origin = item.rstrip("/")
        if not origin.startswith(("http://", "https://")) or origin.count("/") != 2:
            raise ValueError(f"{item!r} is not an origin like https://example.com")
        origins.append(origin)
    return tuple(origins)


def _keys(raw: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise ValueError("must hold at least one key")
    return keys


def _prices(raw: str) -> Any:
    from chatapp.prices import parse_prices

    return parse_prices(raw)


def _ceilings(raw: str) -> Any:
    from chatapp.prices import parse_ceilings

    return parse_ceilings(raw)


def _percentages(raw: str) -> tuple[int, ...]:
    from chatapp.prices import parse_percentages

    return parse_percentages(raw)


def _http_url(raw: str) -> str:
    value = raw.strip()
    if value and not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def _networks(raw: str) -> tuple[Any, ...]:
    # Imported here: guards imports gevent, which config must not need.
    from chatapp.web.guards import parse_networks

    return parse_networks(raw)


def _knowledge_url(raw: str) -> str:
    value = raw.strip()
    if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ValueError(
            "must be sqlite:///path (one host) or postgresql://… (shared by hosts)"
        )
    return value


def _base_url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an http(s) URL")
    return value


def _urls(raw: str) -> tuple[str, ...]:
    urls = tuple(raw.split())
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http(s) URL")
    return urls


# Shorter keys are guessable offline from any token a visitor holds.
MIN_SECRET_KEY_CHARS = 32

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
) -> dict[str, Any]:
    """Build the validated settings from defaults, environment and overrides.

    A refusal (ConfigError) never carries a URL's credentials.
    """
    try:
        return _load_config(environ, overrides)
    except ConfigError as exc:
        raise ConfigError(redact(str(exc))) from exc.__cause__


def _load_config(
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> dict[str, Any]:
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

    provider = PROVIDER_DEFAULTS[config["PROVIDER"]]
    config["PROVIDER_BASE_URL"] = (
        config["PROVIDER_BASE_URL"] or provider["base_url"]
    ).rstrip("/")
    config["MODEL"] = config["MODEL"] or provider["model"]
    key_env = provider["key_env"]
    config.setdefault(
        "PROVIDER_API_KEY", env.get(key_env, "").strip() if key_env else ""
    )
    if key_env and not config["PROVIDER_API_KEY"]:
        raise ConfigError(
            f"CHATAPP_PROVIDER={config['PROVIDER']} needs {key_env}; set it in the "
            "environment (it stays on the server)"
        )
    if config["PROVIDER_BASE_URL"] and not config["PROVIDER_BASE_URL"].startswith(
        ("http://", "https://")
    ):
        raise ConfigError("CHATAPP_PROVIDER_BASE_URL must be an http(s) URL")

    _check_moderation(config, env)
    _check_fallback(config, env)
    config.setdefault("EMBEDDINGS_API_KEY", env.get("OPENAI_API_KEY", "").strip())
    config["SYSTEM_PROMPT"] = _read_prompt(config["SYSTEM_PROMPT"])
    config["EPHEMERAL_KEY"] = False
    if not config["SECRET_KEYS"]:
        if config["ENV"] == "production":
            raise ConfigError(
                "CHATAPP_ENV=production needs CHATAPP_SECRET_KEY "
                "(generate one with: python3 -c 'import secrets; "
                "print(secrets.token_urlsafe(32))')"
            )
        shared = env.get(EPHEMERAL_KEY_ENV, "")
        config["SECRET_KEYS"] = (shared or secrets.token_urlsafe(32),)
        config["EPHEMERAL_KEY"] = True
    elif config["ENV"] == "production" and any(
        len(key) < MIN_SECRET_KEY_CHARS for key in config["SECRET_KEYS"]
    ):
        raise ConfigError(
            f"CHATAPP_SECRET_KEY: every key must be at least {MIN_SECRET_KEY_CHARS} "
            "characters in production (python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    if config["UPSTREAM_IDLE_TIMEOUT"] > config["UPSTREAM_TOTAL_TIMEOUT"]:
        raise ConfigError(
            "CHATAPP_UPSTREAM_IDLE_TIMEOUT must not exceed "
            "CHATAPP_UPSTREAM_TOTAL_TIMEOUT"
        )
    # The whole-turn deadline bounds the first word's wait as well: a short
    # total (tests, strict sites) needs no matching first-token setting.
    config["UPSTREAM_FIRST_TOKEN_TIMEOUT"] = min(
        config["UPSTREAM_FIRST_TOKEN_TIMEOUT"], config["UPSTREAM_TOTAL_TIMEOUT"]
    )
    if config["WP_SHARED_SECRET"] and len(config["WP_SHARED_SECRET"].encode()) < 32:
        raise ConfigError(
            "CHATAPP_WP_SHARED_SECRET must be at least 32 bytes long "
            "(HS256 needs a key as long as its hash)"
        )
    if config["ADMIN_TOKEN"] and len(config["ADMIN_TOKEN"]) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(
            f"CHATAPP_ADMIN_TOKEN must be at least {MIN_SECRET_KEY_CHARS} characters "
            "(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    _check_rate_limits(config["RATE_LIMITS"])
    _check_spend(config)
    return config


def _check_spend(config: dict[str, Any]) -> None:
    """Refuse ceilings over a model without a price: its spend is unknown."""
    soft = config["SPEND_SOFT_LIMITS"]
    if soft and not config["FALLBACK_MODEL"]:
        raise ConfigError(
            "CHATAPP_SPEND_SOFT_LIMITS needs CHATAPP_FALLBACK_MODEL, the cheaper "
            "model that new turns use past a soft ceiling"
        )
    if not (config["SPEND_LIMITS"] or soft):
        return
    for model in (config["MODEL"], config["FALLBACK_MODEL"]):
        if model and model not in config["PRICES"]:
            raise ConfigError(
                f"CHATAPP_PRICES has no price for the model {model!r}, and a spend "
                "ceiling is set: add it, e.g. CHATAPP_PRICES='"
                f"{model}=0.25/2.00' (per million input/output tokens)"
            )


def _check_moderation(config: dict[str, Any], env: Mapping[str, str]) -> None:
    config.setdefault("MODERATION_API_KEY", env.get("OPENAI_API_KEY", "").strip())
    url = config["MODERATION_BASE_URL"].rstrip("/")
    config["MODERATION_BASE_URL"] = url
    if config["MODERATION"] == "off":
        return
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"CHATAPP_MODERATION_BASE_URL={url!r} is invalid: must be an http(s) "
            "URL ending in /v1, e.g. https://api.openai.com/v1"
        )
    if not config["MODERATION_API_KEY"]:
        raise ConfigError(
            "CHATAPP_MODERATION=openai needs OPENAI_API_KEY; set it in the "
            "environment (it stays on the server)"
        )


def _check_fallback(config: dict[str, Any], env: Mapping[str, str]) -> None:
    """Resolve the fallback model's provider, URL and key, or stop start-up."""
    name = config["FALLBACK_PROVIDER"] or config["PROVIDER"]
    same = name == config["PROVIDER"]
    defaults = PROVIDER_DEFAULTS[name]
    if not config["FALLBACK_MODEL"]:
        if config["FALLBACK_PROVIDER"] or config["FALLBACK_BASE_URL"]:
            raise ConfigError(
                "CHATAPP_FALLBACK_PROVIDER and CHATAPP_FALLBACK_BASE_URL need "
                "CHATAPP_FALLBACK_MODEL (the model to ask there)"
            )
    url = config["FALLBACK_BASE_URL"] or (
        config["PROVIDER_BASE_URL"] if same else defaults["base_url"]
    )
    config["FALLBACK_PROVIDER"] = name
    config["FALLBACK_BASE_URL"] = url.rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("CHATAPP_FALLBACK_BASE_URL must be an http(s) URL")
    key_env = defaults["key_env"]
    config.setdefault(
        "FALLBACK_API_KEY",
        config["PROVIDER_API_KEY"]
        if same
        else (env.get(key_env, "").strip() if key_env else ""),
    )
    if config["FALLBACK_MODEL"] and key_env and not config["FALLBACK_API_KEY"]:
        raise ConfigError(
            f"CHATAPP_FALLBACK_PROVIDER={name} needs {key_env}; set it in the "
            "environment (it stays on the server)"
        )
    effort = config["REASONING_EFFORT"]
    uses_anthropic = "anthropic" in (
        config["PROVIDER"],
        name if config["FALLBACK_MODEL"] else "",
    )
    if effort and uses_anthropic and config["MAX_OUTPUT_TOKENS"] <= 1024:
        raise ConfigError(
            "CHATAPP_REASONING_EFFORT with Anthropic needs CHATAPP_MAX_OUTPUT_TOKENS "
            "above 1024 (extended thinking takes at least 1024 of them)"
        )


def _read_prompt(value: str) -> str:
    if not value.startswith("@"):
        return value
    path = Path(value[1:]).expanduser()
    try:
        text = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"CHATAPP_SYSTEM_PROMPT=@{path}: cannot read it ({exc.strerror})"
        ) from exc
    if not text:
        raise ConfigError(f"CHATAPP_SYSTEM_PROMPT=@{path}: the file is empty")
    return text


def _check_rate_limits(value: str) -> None:
    # Imported here so that config stays importable without the limiter.
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ConfigError(
            f"CHATAPP_RATE_LIMITS={value!r} is invalid: expected e.g. "
            "'10/minute;200/day'"
        ) from exc
