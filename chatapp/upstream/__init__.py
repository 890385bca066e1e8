"""Provider adapters: demo, OpenAI-compatible and Anthropic."""

from __future__ import annotations

from typing import Any

import requests

from chatapp.upstream.anthropic import AnthropicProvider
from chatapp.upstream.base import Provider
from chatapp.upstream.demo import DemoProvider
from chatapp.upstream.openai_compat import OpenAIProvider
from chatapp.upstream.retry import Resilient
from chatapp.upstream.retry import Route


def _provider(
    name: str, base_url: str, api_key: str, config: dict[str, Any], session: Any
) -> Provider:
    if name == "demo":
        return DemoProvider(delay=config["DEMO_DELAY_MS"] / 1000)
    common: dict[str, Any] = {
        "session": session,
        "base_url": base_url,
        "api_key": api_key,
        "connect_timeout": config["UPSTREAM_CONNECT_TIMEOUT"],
    }
    if name == "openai":
        return OpenAIProvider(**common)
    return AnthropicProvider(**common)


def build_provider(config: dict[str, Any], session: requests.Session) -> Resilient:
    """Build the configured models, with retries and fallback, on one session."""
    primary = Route(
        _provider(
            config["PROVIDER"],
            config["PROVIDER_BASE_URL"],
            config["PROVIDER_API_KEY"],
            config,
            session,
        ),
        config["MODEL"],
    )
    fallback = None
    if config["FALLBACK_MODEL"]:
        same = (
            config["FALLBACK_PROVIDER"] == config["PROVIDER"]
            and config["FALLBACK_BASE_URL"] == config["PROVIDER_BASE_URL"]
        )
        fallback = Route(
            primary.provider
            if same
            else _provider(
                config["FALLBACK_PROVIDER"],
                config["FALLBACK_BASE_URL"],
                config["FALLBACK_API_KEY"],
                config,
                session,
            ),
            config["FALLBACK_MODEL"],
        )
    return Resilient(primary, fallback, retries=config["UPSTREAM_RETRIES"])
