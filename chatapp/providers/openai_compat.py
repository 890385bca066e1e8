"""OpenAI Chat Completions streaming, as spoken by OpenAI, Ollama, vLLM and others."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from chatapp.errors import ProviderError
from chatapp.providers.base import ChatRequest
from chatapp.providers.base import Chunk
from chatapp.providers.streaming import SSEProvider
from chatapp.providers.streaming import parse_json
from chatapp.providers.streaming import read_to_end

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

    def stream(self, request: ChatRequest) -> Generator[list[Chunk]]:
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
            done = False
            for events in batches:
                chunks: list[Chunk] = []
                for event in events:
                    if event.data == "[DONE]":
                        done = True
                        break
                    chunks.extend(_chunks(parse_json(event.data)))
                finished = finished or any(c.finish_reason for c in chunks)
                if chunks:
                    yield chunks
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


def _chunks(payload: dict[str, Any]) -> list[Chunk]:
    if "error" in payload:
        raise ProviderError(
            "provider_error", "The provider reported an error mid-answer."
        )
    out: list[Chunk] = []
    choices = payload.get("choices") or []
    if choices and isinstance(choices, list) and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(text, str) and text:
            out.append(Chunk(text=text))
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            out.append(Chunk(finish_reason=FINISH_REASONS.get(reason, "stop")))
    usage = payload.get("usage")
    if isinstance(usage, dict):
        out.append(
            Chunk(
                input_tokens=_int(usage.get("prompt_tokens")),
                output_tokens=_int(usage.get("completion_tokens")),
            )
        )
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
