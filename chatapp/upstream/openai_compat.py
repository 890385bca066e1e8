"""OpenAI Chat Completions streaming, as spoken by OpenAI, Ollama, vLLM and others."""

from __future__ import annotations

import logging
import re
from collections.abc import Generator
from itertools import chain
from typing import Any

from chatapp.errors import ProviderError
from chatapp.upstream.base import ALIVE
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.http import UnsupportedParameter
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


# OpenAI's reasoning models (o1, o3, o4-mini, the gpt-5 family) refuse
# `max_tokens` and any temperature but the default. Only bare names count: a
# router's prefixed name ("openai/o4-mini") is translated by the router, and
# any server that still refuses gets the other form once (see `stream`).
REASONING_MODEL = re.compile(r"^(?:o[1-9]|gpt-5)(?:$|[-._:])")

log = logging.getLogger(__name__)


def is_reasoning_model(model: str) -> bool:
    """Tell whether `model` is one of OpenAI's reasoning models."""
    return REASONING_MODEL.match(model) is not None


def request_body(request: ChatRequest) -> dict[str, Any]:
    """Build the Chat Completions body, in the form this model understands."""
    messages = [{"role": "system", "content": request.system}] if request.system else []
    messages += [{"role": m.role, "content": m.content} for m in request.messages]
    body: dict[str, Any] = {
        "model": request.model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if is_reasoning_model(request.model):
        body["max_completion_tokens"] = request.max_output_tokens
        if request.reasoning_effort:
            body["reasoning_effort"] = request.reasoning_effort
    else:
        body["max_tokens"] = request.max_output_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
    return body


def adjusted(body: dict[str, Any], param: str) -> dict[str, Any] | None:
    """Return `body` in the other form for a refused `param`; None if none."""
    body = dict(body)
    if param == "temperature" and "temperature" in body:
        del body["temperature"]
    elif param == "max_tokens" and "max_tokens" in body:
        body["max_completion_tokens"] = body.pop("max_tokens")
        body.pop("temperature", None)
    elif param == "max_completion_tokens" and "max_completion_tokens" in body:
        body["max_tokens"] = body.pop("max_completion_tokens")
        body.pop("reasoning_effort", None)
    else:
        return None
    return body


class OpenAIProvider(SSEProvider):
    """Stream answers from an OpenAI-compatible /chat/completions endpoint."""

    path = "/chat/completions"
    name = "openai"

    def auth_headers(self, api_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"}

    def stream(self, request: ChatRequest) -> Generator[Chunk]:
        """Yield the answer's chunks per network read."""
        body = request_body(request)
        batches = self.events(body)
        try:
            first = next(batches, None)  # a refusal comes before any event
        except UnsupportedParameter as exc:
            # Refused before any answer: safe to ask once more, in the form
            # the refusal names (no generator of our own in between: this is
            # the per-chunk path).
            other = adjusted(body, exc.param)
            if other is None:
                raise
            log.warning(
                "the provider refused %r for model %s; asking again without it",
                exc.param,
                request.model,
            )
            batches = self.events(other)
            first = next(batches, None)
        finished = False
        try:
            for events in chain((first,), batches) if first is not None else ():
                payload = None
                if len(events) == 1 and events[0].data != "[DONE]":
                    payload = parse_json(events[0].data)
                    text = _text_only(payload)
                    if text is not None:
                        yield Chunk(text)  # the usual token: nothing to gather
                        continue
                batch = _Batch()
                done = False
                if payload is not None:
                    batch.take(payload)
                else:
                    for event in events:
                        if event.data == "[DONE]":
                            done = True
                            break
                        batch.take(parse_json(event.data))
                finished = finished or batch.finish_reason is not None
                yield batch.chunk() if batch.worth_yielding() else ALIVE
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
                reason="reset",
            )


def _text_only(payload: dict[str, Any]) -> str | None:
    """Return a chunk's text when text is all it says; None for anything else.

    What `_Batch.take` would make of it, for the one shape most chunks have:
    one choice whose delta is `{"content": text}`, no finish, usage or error.
    """
    choices = payload.get("choices")
    if (
        not choices
        or not isinstance(choices, list)
        or "error" in payload
        or payload.get("usage") is not None
    ):
        return None
    choice = choices[0]
    if not isinstance(choice, dict) or choice.get("finish_reason") is not None:
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict) or len(delta) != 1:
        return None
    text = delta.get("content")
    return text if isinstance(text, str) and text else None


class _Batch:
    """What one network read of an OpenAI stream says, in one pass."""

    __slots__ = (
        "cached_input_tokens",
        "finish_reason",
        "input_tokens",
        "output_tokens",
        "texts",
        "thoughts",
    )

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.thoughts: list[str] | None = None  # made for reasoning only
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cached_input_tokens: int | None = None
        self.finish_reason: str | None = None

    def take(self, payload: dict[str, Any]) -> None:
        if "error" in payload:
            raise stream_error(payload["error"])
        choices = payload.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            choice = choices[0]
            delta = choice.get("delta")
            if isinstance(delta, dict):
                text = delta.get("content")
                if isinstance(text, str) and text:
                    self.texts.append(text)
                # DeepSeek and vLLM say reasoning_content, OpenRouter and
                # Ollama reasoning: never answer text. (A plain text delta
                # has one key: no lookups for it.)
                if len(delta) > 1 or not text:
                    thought = delta.get("reasoning_content") or delta.get("reasoning")
                    if isinstance(thought, str) and thought:
                        if self.thoughts is None:
                            self.thoughts = []
                        self.thoughts.append(thought)
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
            or self.thoughts
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
            "".join(self.thoughts) if self.thoughts is not None else "",
            self.cached_input_tokens,
        )


# An in-stream error's code or type -> (SPEC code, why asking again may help)
ERROR_KINDS: dict[str, tuple[str, str | None]] = {
    "server_error": ("provider_unavailable", "5xx"),
    "overloaded": ("provider_unavailable", "overloaded"),
    "rate_limit_exceeded": ("provider_rate_limited", "429"),
}


def stream_error(error: Any) -> ProviderError:
    """Turn an in-stream `{"error": …}` chunk into SPEC's error.

    A server error or a rate limit is worth asking again while nothing was
    sent (the retry wrapper decides); anything else is the provider's refusal.
    """
    kind: tuple[str, str | None] = ("provider_error", None)
    if isinstance(error, dict):
        for key in ("code", "type"):
            name = error.get(key)
            if isinstance(name, str) and name in ERROR_KINDS:
                kind = ERROR_KINDS[name]
                break
    code, reason = kind
    return ProviderError(
        code,
        "The provider reported an error mid-answer.",
        retryable=reason is not None,
        reason=reason,
    )


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
