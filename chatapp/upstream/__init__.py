"""Provider adapters: demo, OpenAI-compatible and Anthropic."""

from __future__ import annotations

from typing import Any

import requests

from chatapp.settings import Settings
from chatapp.upstream.anthropic import AnthropicProvider
from chatapp.upstream.base import Provider
from chatapp.upstream.demo import DemoProvider
from chatapp.upstream.openai_compat import OpenAIProvider
from chatapp.upstream.retry import Resilient
from chatapp.upstream.retry import Route


def _provider(
    name: str,
    base_url: str,
    api_key: str,
    settings: Settings,
    session: requests.Session,
) -> Provider:
    if name == "demo":
        return DemoProvider(delay=settings.demo_delay_ms / 1000)
    common: dict[str, Any] = {
        "session": session,
        "base_url": base_url,
        "api_key": api_key,
        "connect_timeout": settings.upstream_connect_timeout,
    }
    if name == "openai":
        return OpenAIProvider(**common)
    return AnthropicProvider(**common)


def build_provider(settings: Settings, session: requests.Session) -> Resilient:
    """Build the configured models, with retries and fallback, on one session."""
    s = settings
    primary = Route(
        _provider(s.provider, s.provider_base_url, s.provider_api_key, s, session),
        s.model,
    )
    fallback = None
    if s.fallback_model:
        same = (
            s.fallback_provider == s.provider
            and s.fallback_base_url == s.provider_base_url
        )
        fallback = Route(
            primary.provider
            if same
            else _provider(
                s.fallback_provider,
                s.fallback_base_url,
                s.fallback_api_key,
                s,
                session,
            ),
            s.fallback_model,
        )
    return Resilient(primary, fallback, retries=s.upstream_retries)
