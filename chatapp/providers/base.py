"""What every provider adapter offers the relay."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Chunk:
    """A piece of the answer: text, and at the end usage and a finish reason."""

    text: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None


class Provider(Protocol):
    """A streaming chat backend.

    `stream` yields, for each network read, the chunks that read completed, so
    the relay can write them to the turn log in one batch. It raises
    ProviderError for every failure and releases its connection when the
    iterator is closed (the relay closes it on cancel and timeout).
    """

    name: str

    def stream(self, request: ChatRequest) -> Generator[list[Chunk]]: ...
