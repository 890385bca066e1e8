"""The checks across settings, and the values resolved from several of them.

`build` turns chatapp/config.py's table (one parsed value per key) into the
frozen Settings, or stops start-up with one ConfigError line.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from chatapp.errors import ConfigError
from chatapp.settings.value import Settings

# Set by gunicorn.conf.py in the master so that every worker signs with the
# same throw-away key when no CHATAPP_SECRET_KEY is given.
EPHEMERAL_KEY_ENV = "CHATAPP_EPHEMERAL_SECRET_KEY"

# Shorter keys are guessable offline from any token a visitor holds.
MIN_SECRET_KEY_CHARS = 32

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

SECRET_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"


def build(table: dict[str, Any], env: Mapping[str, str]) -> Settings:
    """Resolve and check `table` (changed in place), then freeze it."""
    resolve(table, env)
    return freeze(table)


def resolve(table: dict[str, Any], env: Mapping[str, str]) -> None:
    """Fill the values resolved from several settings; refuse what cannot work."""
    _resolve_provider(table, env)
    _check_moderation(table, env)
    _check_fallback(table, env)
    table.setdefault("EMBEDDINGS_API_KEY", env.get("OPENAI_API_KEY", "").strip())
    table["SYSTEM_PROMPT"] = _read_prompt(table["SYSTEM_PROMPT"])
    _resolve_secret_keys(table, env)
    _check_timeouts(table)
    _check_owner_secrets(table)
    _check_rate_limits(table["RATE_LIMITS"])
    _check_budget(table)
    _check_spend(table)


def freeze(table: Mapping[str, Any]) -> Settings:
    """Make the Settings value: each key lower-cased names its attribute."""
    known = Settings.names()
    values = {name.lower(): value for name, value in table.items()}
    unknown = sorted(name for name in table if name.lower() not in known)
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r} (no such key in chatapp)")
    return Settings(**values)


def _resolve_provider(table: dict[str, Any], env: Mapping[str, str]) -> None:
    provider = PROVIDER_DEFAULTS[table["PROVIDER"]]
    url = (table["PROVIDER_BASE_URL"] or provider["base_url"]).rstrip("/")
    table["PROVIDER_BASE_URL"] = url
    table["MODEL"] = table["MODEL"] or provider["model"]
    key_env = provider["key_env"]
    table.setdefault(
        "PROVIDER_API_KEY", env.get(key_env, "").strip() if key_env else ""
    )
    if key_env and not table["PROVIDER_API_KEY"]:
        raise ConfigError(
            f"CHATAPP_PROVIDER={table['PROVIDER']} needs {key_env}; set it in the "
            "environment (it stays on the server)"
        )
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("CHATAPP_PROVIDER_BASE_URL must be an http(s) URL")


def _resolve_secret_keys(table: dict[str, Any], env: Mapping[str, str]) -> None:
    table["EPHEMERAL_KEY"] = False
    if not table["SECRET_KEYS"]:
        if table["ENV"] == "production":
            raise ConfigError(
                "CHATAPP_ENV=production needs CHATAPP_SECRET_KEY "
                f"(generate one with: {SECRET_HINT})"
            )
        shared = env.get(EPHEMERAL_KEY_ENV, "")
        table["SECRET_KEYS"] = (shared or secrets.token_urlsafe(32),)
        table["EPHEMERAL_KEY"] = True
    elif table["ENV"] == "production" and any(
        len(key) < MIN_SECRET_KEY_CHARS for key in table["SECRET_KEYS"]
    ):
        raise ConfigError(
            f"CHATAPP_SECRET_KEY: every key must be at least {MIN_SECRET_KEY_CHARS} "
            f"characters in production ({SECRET_HINT})"
        )


def _check_timeouts(table: dict[str, Any]) -> None:
    if table["UPSTREAM_IDLE_TIMEOUT"] > table["UPSTREAM_TOTAL_TIMEOUT"]:
        raise ConfigError(
            "CHATAPP_UPSTREAM_IDLE_TIMEOUT must not exceed "
            "CHATAPP_UPSTREAM_TOTAL_TIMEOUT"
        )
    # The whole-turn deadline bounds the first word's wait as well: a short
    # total (tests, strict sites) needs no matching first-token setting.
    table["UPSTREAM_FIRST_TOKEN_TIMEOUT"] = min(
        table["UPSTREAM_FIRST_TOKEN_TIMEOUT"], table["UPSTREAM_TOTAL_TIMEOUT"]
    )


def _check_owner_secrets(table: dict[str, Any]) -> None:
    if table["WP_SHARED_SECRET"] and len(table["WP_SHARED_SECRET"].encode()) < 32:
        raise ConfigError(
            "CHATAPP_WP_SHARED_SECRET must be at least 32 bytes long "
            "(HS256 needs a key as long as its hash)"
        )
    if table["ADMIN_TOKEN"] and len(table["ADMIN_TOKEN"]) < MIN_SECRET_KEY_CHARS:
        raise ConfigError(
            f"CHATAPP_ADMIN_TOKEN must be at least {MIN_SECRET_KEY_CHARS} characters "
            f"({SECRET_HINT})"
        )


def _check_budget(table: dict[str, Any]) -> None:
    budget, hold = table["DAILY_TOKEN_BUDGET"], table["MAX_OUTPUT_TOKENS"]
    if 0 < budget < hold:
        raise ConfigError(
            f"CHATAPP_DAILY_TOKEN_BUDGET={budget} is below CHATAPP_MAX_OUTPUT_TOKENS"
            f"={hold}, which every turn holds when it starts: no turn could ever start"
        )


def _check_spend(table: dict[str, Any]) -> None:
    """Refuse ceilings over a model without a price: its spend is unknown."""
    soft = table["SPEND_SOFT_LIMITS"]
    if soft and not table["FALLBACK_MODEL"]:
        raise ConfigError(
            "CHATAPP_SPEND_SOFT_LIMITS needs CHATAPP_FALLBACK_MODEL, the cheaper "
            "model that new turns use past a soft ceiling"
        )
    if not (table["SPEND_LIMITS"] or soft):
        return
    for model in (table["MODEL"], table["FALLBACK_MODEL"]):
        if model and model not in table["PRICES"]:
            raise ConfigError(
                f"CHATAPP_PRICES has no price for the model {model!r}, and a spend "
                "ceiling is set: add it, e.g. CHATAPP_PRICES='"
                f"{model}=0.25/2.00' (per million input/output tokens)"
            )


def _check_moderation(table: dict[str, Any], env: Mapping[str, str]) -> None:
    table.setdefault("MODERATION_API_KEY", env.get("OPENAI_API_KEY", "").strip())
    url = table["MODERATION_BASE_URL"].rstrip("/")
    table["MODERATION_BASE_URL"] = url
    if table["MODERATION"] == "off":
        return
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"CHATAPP_MODERATION_BASE_URL={url!r} is invalid: must be an http(s) "
            "URL ending in /v1, e.g. https://api.openai.com/v1"
        )
    if not table["MODERATION_API_KEY"]:
        raise ConfigError(
            "CHATAPP_MODERATION=openai needs OPENAI_API_KEY; set it in the "
            "environment (it stays on the server)"
        )


def _check_fallback(table: dict[str, Any], env: Mapping[str, str]) -> None:
    """Resolve the fallback model's provider, URL and key, or stop start-up."""
    name = table["FALLBACK_PROVIDER"] or table["PROVIDER"]
    same = name == table["PROVIDER"]
    defaults = PROVIDER_DEFAULTS[name]
    if not table["FALLBACK_MODEL"]:
        if table["FALLBACK_PROVIDER"] or table["FALLBACK_BASE_URL"]:
            raise ConfigError(
                "CHATAPP_FALLBACK_PROVIDER and CHATAPP_FALLBACK_BASE_URL need "
                "CHATAPP_FALLBACK_MODEL (the model to ask there)"
            )
    url = table["FALLBACK_BASE_URL"] or (
        table["PROVIDER_BASE_URL"] if same else defaults["base_url"]
    )
    table["FALLBACK_PROVIDER"] = name
    table["FALLBACK_BASE_URL"] = url.rstrip("/")
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError("CHATAPP_FALLBACK_BASE_URL must be an http(s) URL")
    key_env = defaults["key_env"]
    table.setdefault(
        "FALLBACK_API_KEY",
        table["PROVIDER_API_KEY"]
        if same
        else (env.get(key_env, "").strip() if key_env else ""),
    )
    if table["FALLBACK_MODEL"] and key_env and not table["FALLBACK_API_KEY"]:
        raise ConfigError(
            f"CHATAPP_FALLBACK_PROVIDER={name} needs {key_env}; set it in the "
            "environment (it stays on the server)"
        )
    _check_reasoning(table, name)


def _check_reasoning(table: dict[str, Any], fallback_provider: str) -> None:
    uses_anthropic = "anthropic" in (
        table["PROVIDER"],
        fallback_provider if table["FALLBACK_MODEL"] else "",
    )
    if (
        table["REASONING_EFFORT"]
        and uses_anthropic
        and table["MAX_OUTPUT_TOKENS"] <= 1024
    ):
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
    # Imported here so that settings stay importable without the limiter.
    from limits import parse_many

    try:
        parse_many(value)
    except ValueError as exc:
        raise ConfigError(
            f"CHATAPP_RATE_LIMITS={value!r} is invalid: expected e.g. "
            "'10/minute;200/day'"
        ) from exc
