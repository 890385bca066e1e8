"""OpenAI Chat Completions streaming, as spoken by OpenAI, Ollama, vLLM and others."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from chatapp.errors import ProviderError
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.streaming import SSEProvider
from chatapp.upstream.streaming import parse_json
from chatapp.upstream.streaming import read_to_end

FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content_filter",
    "tool_calls": "stop",
    "function_call": "stop",
}


class OpenAIProvider(SSEProvider):
    """Stream answers from an OpenAI-compatible /chat/completions endpoint."""

    path = "/chat/completions"
    name = "openai"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        """Yield the answer's chunks per network read."""
        messages = (
            [{"role": "system", "content": request.system}] if request.system else []
        )
        messages += [{"role": m.role, "content": m.content} for m in request.messages]
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": request.max_output_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        finished = False
        batches = self.events(body)
        try:
            for events in batches:
                batch = _Batch()
                done = False
                for event in events:
                    if event.data == "[DONE]":
                        done = True
                        break
                    batch.take(parse_json(event.data))
                finished = finished or batch.finish_reason is not None
                if batch.worth_yielding():
                    yield batch.chunk()
                if done:
                    read_to_end(batches)
                    return
        finally:
            batches.close()
        if not finished:
            raise ProviderError(
                "provider_unavailable",
                "The provider closed the connection before the answer was complete.",
                retryable=True,
            )


class _Batch:
    """What one network read of an OpenAI stream says, in one pass."""

    __slots__ = (
        "cached_input_tokens",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "texts",
    )

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens: int | None = None
        self.finish_reason: str | None = None

    def take(self, payload: dict[str, Any]) -> None:
        if "error" in payload:
            raise ProviderError(
                "provider_error", "The provider reported an error mid-answer."
            )
        choices = payload.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                self.texts.append(text)
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = FINISH_REASONS.get(reason, "stop")
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.input_tokens = _int(usage.get("prompt_tokens"))
            self.output_tokens = _int(usage.get("completion_tokens"))
            details = usage.get("prompt_tokens_details")
            if isinstance(details, dict):
                self.cached_input_tokens = _int(details.get("cached_tokens"))

    def worth_yielding(self) -> bool:
        return bool(
            self.texts
            or self.finish_reason
            or self.input_tokens is not None
            or self.output_tokens is not None
        )

    def chunk(self) -> Chunk:
        texts = self.texts
        return Chunk(
            texts[0] if len(texts) == 1 else "".join(texts),
            self.input_tokens,
            self.output_tokens,
            self.finish_reason,
            self.cached_input_tokens,
        )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
