"""Provider adapters: demo, OpenAI-compatible and Anthropic."""

from __future__ import annotations

from typing import Any

import requests

from chatapp.providers.anthropic import AnthropicProvider
from chatapp.providers.base import Provider
from chatapp.providers.capped import CappedProvider
from chatapp.providers.demo import DemoProvider
from chatapp.providers.openai_compat import OpenAIProvider


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
        "idle_timeout": config["UPSTREAM_IDLE_TIMEOUT"],
    }
    # Only remote providers can run away; the demo's answer is ours.
    if name == "openai":
        return CappedProvider(OpenAIProvider(**common))
    return CappedProvider(AnthropicProvider(**common))
