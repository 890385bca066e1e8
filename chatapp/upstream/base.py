"""What every provider adapter offers the relay."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import NamedTuple
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    """One earlier or current message of the conversation."""

    role: str  # "user" or "assistant"
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """Everything a provider needs for one turn, as plain values."""

    model: str
    system: str
    messages: tuple[Message, ...]
    max_output_tokens: int
    temperature: float | None = None
    reasoning_effort: str | None = None  # "low", "medium", "high"
    # "primary" tries the main model first, then the fallback; "fallback"
    # asks the fallback model only (the spend governor's soft ceiling).
    route: str = "primary"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A new upstream attempt, announced before it starts."""

    number: int  # 2 for the first retry
    provider: str
    model: str
    reason: str  # why the previous attempt failed (metrics label)
    fallback: bool = False


class Chunk(NamedTuple):
    """What one network read brought: text, and at the end usage and reason.

    `reasoning` is the model's thinking, never answer text. A chunk with
    nothing set says only that the provider is alive (a ping, a comment).
    Immutable, and a tuple: one is made per token, for a third of a frozen
    dataclass's cost.
    """

    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    reasoning: str = ""
    # Of input_tokens, those read from the provider's prompt cache (cheaper).
    cached_input_tokens: int | None = None


# The provider sent bytes that carry nothing (a keep-alive): still alive.
ALIVE = Chunk()


def merge(chunks: list[Chunk]) -> Chunk | None:
    """Fold the chunks of one read into one; None when they say nothing."""
    if not chunks:
        return None
    if len(chunks) == 1:
        return chunks[0]
    text = "".join(c.text for c in chunks)
    reasoning = "".join(c.reasoning for c in chunks)
    input_tokens = output_tokens = finish_reason = cached = None
    for chunk in chunks:
        if chunk.input_tokens is not None:
            input_tokens = chunk.input_tokens
        if chunk.cached_input_tokens is not None:
            cached = chunk.cached_input_tokens
        if chunk.output_tokens is not None:
            output_tokens = chunk.output_tokens
        if chunk.finish_reason:
            finish_reason = chunk.finish_reason
    return Chunk(text, input_tokens, output_tokens, finish_reason, reasoning, cached)


class Upstream(Protocol):
    """What the producer reads: a provider's chunks, and new attempts.

    An `Attempt` is its own type, not a Chunk field: the retry path then
    adds nothing to the construction of every chunk.
    """

    name: str

    def stream(self, request: ChatRequest) -> Generator[Chunk | Attempt]: ...


class Provider(Protocol):
    """A streaming chat backend.

    `stream` yields, for each network read, one Chunk merging all that read
    completed, so the relay writes one frame per read. It raises
    ProviderError for every failure and releases its connection when the
    iterator is closed (the relay closes it on cancel and timeout).
    """

    name: str

    def stream(self, request: ChatRequest) -> Generator[Chunk]: ...
