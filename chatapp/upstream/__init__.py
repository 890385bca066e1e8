"""Provider adapters: demo, OpenAI-compatible and Anthropic."""

from __future__ import annotations

from typing import Any

import requests

from chatapp.upstream.anthropic import AnthropicProvider
from chatapp.upstream.base import Provider
from chatapp.upstream.demo import DemoProvider
from chatapp.upstream.openai_compat import OpenAIProvider


def build_provider(config: dict[str, Any], session: requests.Session) -> Provider:
    """Build the configured provider around the worker's shared HTTP session."""
    name = config["PROVIDER"]
    if name == "demo":
        return DemoProvider(delay=config["DEMO_DELAY_MS"] / 1000)
    common: dict[str, Any] = {
        "session": session,
        "base_url": config["PROVIDER_BASE_URL"],
        "api_key": config["PROVIDER_API_KEY"],
        "connect_timeout": config["UPSTREAM_CONNECT_TIMEOUT"],
    }
    if name == "openai":
        return OpenAIProvider(**common)
    return AnthropicProvider(**common)
