"""Anthropic Messages streaming."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from chatapp.errors import ProviderError
from chatapp.upstream.base import ALIVE
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.base import merge
from chatapp.upstream.streaming import SSEProvider
from chatapp.upstream.streaming import parse_json
from chatapp.upstream.streaming import read_to_end

API_VERSION = "2023-06-01"
STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "refusal": "content_filter",
}
# error.type -> (SPEC code, why asking again may help, or None)
ERROR_TYPES: dict[str, tuple[str, str | None]] = {
    "overloaded_error": ("provider_unavailable", "overloaded"),
    "api_error": ("provider_unavailable", "5xx"),
    "rate_limit_error": ("provider_rate_limited", "429"),
    "timeout_error": ("provider_timeout", None),
}
# Extended thinking's budget, as a share of max_tokens, per effort.
THINKING_SHARE = {"low": 0.25, "medium": 0.5, "high": 0.8}
MIN_THINKING_BUDGET = 1024


def thinking_budget(effort: str, max_tokens: int) -> int | None:
    """Return the thinking budget for `effort`: >= 1024, < max_tokens."""
    if max_tokens <= MIN_THINKING_BUDGET:
        return None
    budget = int(max_tokens * THINKING_SHARE.get(effort, 0.5))
    return min(max(budget, MIN_THINKING_BUDGET), max_tokens - 1)


def request_body(request: ChatRequest) -> dict[str, Any]:
    """Build the Messages body, with extended thinking when effort is asked."""
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_output_tokens,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
    }
    if request.system:
        body["system"] = request.system
    budget = (
        thinking_budget(request.reasoning_effort, request.max_output_tokens)
        if request.reasoning_effort
        else None
    )
    if budget is not None:
        # Extended thinking takes no temperature.
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    elif request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    return body


class AnthropicProvider(SSEProvider):
    """Stream answers from the Anthropic Messages API."""

    path = "/v1/messages"
    name = "anthropic"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"x-api-key": api_key, "anthropic-version": API_VERSION}

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        """Yield the answer's chunks per network read."""
        body = request_body(request)
        state = _State()
        batches = self.events(body)
        try:
            for events in batches:
                chunks: list[Chunk] = []
                for event in events:
                    chunks.extend(state.handle(event.event, parse_json(event.data)))
                merged = merge(chunks)
                # Nothing to relay (a ping, a comment): the provider is alive.
                yield ALIVE if merged is None else merged
                if state.stopped:
                    read_to_end(batches)
                    return
        finally:
            batches.close()
        raise ProviderError(
            "provider_unavailable",
            "The provider closed the connection before the answer was complete.",
            retryable=True,
            reason="reset",
        )


class _State:
    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens: int | None = None
        self.stopped = False

    def handle(self, event: str, payload: dict[str, Any]) -> list[Chunk]:
        kind = payload.get("type", event)
        if kind == "content_block_delta":
            delta = payload.get("delta") or {}
            kind = delta.get("type")
            if kind == "text_delta":
                text = delta.get("text")
                return [Chunk(text=text)] if isinstance(text, str) and text else []
            if kind == "thinking_delta":
                # Never answer text; a signature_delta carries nothing to show.
                thought = delta.get("thinking")
                if isinstance(thought, str) and thought:
                    return [Chunk(reasoning=thought)]
            return []
        if kind == "message_start":
            usage = (payload.get("message") or {}).get("usage") or {}
            self._take_usage(usage)
            return []
        if kind == "message_delta":
            usage = payload.get("usage") or {}
            self._take_usage(usage)
            reason = (payload.get("delta") or {}).get("stop_reason")
            chunks = [
                Chunk(
                    input_tokens=self.input_tokens,
                    output_tokens=self.output_tokens,
                    cached_input_tokens=self.cached_input_tokens,
                )
            ]
            if isinstance(reason, str):
                chunks.append(Chunk(finish_reason=STOP_REASONS.get(reason, "stop")))
            return chunks
        if kind == "message_stop":
            self.stopped = True
            return []
        if kind == "error":
            error = payload.get("error") or {}
            code, reason = ERROR_TYPES.get(
                str(error.get("type")), ("provider_error", None)
            )
            raise ProviderError(
                code,
                "The provider reported an error mid-answer.",
                retryable=code != "provider_error",
                reason=reason,
            )
        return []

    def _take_usage(self, usage: dict[str, Any]) -> None:
        inputs = [
            usage.get(k)
            for k in (
                "input_tokens",
                "cache_creation_input_tokens",
                "cache_read_input_tokens",
            )
        ]
        counted = [v for v in inputs if isinstance(v, int)]
        if counted:
            self.input_tokens = sum(counted)
        if isinstance(usage.get("cache_read_input_tokens"), int):
            self.cached_input_tokens = usage["cache_read_input_tokens"]
        if isinstance(usage.get("output_tokens"), int):
            self.output_tokens = usage["output_tokens"]
