"""A bound on how much text one answer may hold, whatever the provider sends.

`max_tokens` asks the provider to stop; this makes sure of it. A provider
that streams on past the bound (a broken or hostile server, or a proxy in
between) is cut off there: the answer ends with finish reason `length`, as
if the provider had stopped at its bound, and the upstream connection is
closed. Without it, 20 MB of answer went into the turn log and the history.
"""

from __future__ import annotations

from collections.abc import Generator

from chatapp.providers.base import ChatRequest
from chatapp.providers.base import Chunk
from chatapp.providers.base import Provider

# A token is about four characters of prose; code and whitespace runs make
# some longer, so allow eight times that before calling it a runaway.
CHARS_PER_TOKEN_BOUND = 32
# Never below this, so that a small max_tokens still leaves a full answer.
MIN_ANSWER_CHARS = 64 * 1024


def answer_char_limit(max_output_tokens: int) -> int:
    """Return the most characters an answer bounded by `max_output_tokens` may hold."""
    return max(MIN_ANSWER_CHARS, max_output_tokens * CHARS_PER_TOKEN_BOUND)


def cap_stream(batches: Generator[list[Chunk]], limit: int) -> Generator[list[Chunk]]:
    """Pass batches on until their text passes `limit`; then end with `length`."""
    used = 0
    try:
        for chunks in batches:
            kept: list[Chunk] = []
            for chunk in chunks:
                if used + len(chunk.text) > limit:
                    rest = chunk.text[: limit - used]
                    if rest:
                        kept.append(Chunk(text=rest))
                    kept.append(Chunk(finish_reason="length"))
                    yield kept
                    return
                used += len(chunk.text)
                kept.append(chunk)
            yield kept
    finally:
        # Closing the provider's generator closes its upstream connection.
        batches.close()


class CappedProvider:
    """A provider whose answers never pass answer_char_limit()."""

    def __init__(self, inner: Provider) -> None:
        self.inner = inner
        self.name = inner.name

    def stream(self, request: ChatRequest) -> Generator[list[Chunk]]:
        """Stream the inner provider's answer, cut at the character bound."""
        limit = answer_char_limit(request.max_output_tokens)
        return cap_stream(self.inner.stream(request), limit)
