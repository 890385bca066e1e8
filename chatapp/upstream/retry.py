"""Retries and a fallback model, only before the first word.

`Resilient` is the Upstream around the configured ones. While an attempt has
produced nothing (no text, no reasoning), a failure that asking again may
cure (ProviderError.reason set: refused or reset connection, 429, 5xx, 529,
overloaded) is retried up to `retries` times, then the fallback model is
asked the same way. Each new attempt is announced by yielding an `Attempt`
before its wait, so the reader sees `status` `retrying`. Once anything of
an answer came, a failure is the turn's end: an answer is never asked
twice. The wait is a plain gevent sleep inside the producer's upstream
wait, so a cancel, the orphan rule or the watchdog interrupt it at once.

Per chunk, nothing runs here once the first text came (the rest is handed
over with `yield from`): a turn without a retry pays nothing for this
(BENCHMARKS.md, "What the retry path costs").
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from collections.abc import Generator
from dataclasses import dataclass
from dataclasses import replace

import gevent

from chatapp.errors import ProviderError
from chatapp.upstream.base import Attempt
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Chunk
from chatapp.upstream.base import Provider

log = logging.getLogger(__name__)

# Why an attempt may be asked again: the metrics' reason labels.
REASONS = (
    "connect",
    "connect_timeout",
    "timeout",
    "reset",
    "429",
    "5xx",
    "529",
    "overloaded",
)
# Backoff without Retry-After: 0.25 s, 0.5 s, 1 s … at most 2 s, jittered.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 2.0


@dataclass(frozen=True, slots=True)
class Route:
    """A model at a provider."""

    provider: Provider
    model: str


def backoff(error: ProviderError, retry: int) -> float:
    """Return how long to wait before retry number `retry` (0-based)."""
    if error.retry_after is not None:
        return error.retry_after  # already capped at the edge
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2**retry)
    return random.uniform(ceiling / 2, ceiling)


class Resilient:
    """Ask the primary model, retrying before the first word, then the fallback."""

    def __init__(
        self,
        primary: Route,
        fallback: Route | None = None,
        *,
        retries: int = 2,
        sleep: Callable[[float], object] = gevent.sleep,
    ) -> None:
        self.primary = primary
        self.fallback = fallback
        self.name = primary.provider.name
        self._retries = retries
        self._sleep = sleep
        # Called with each new attempt and the provider and model that
        # failed before it: metrics.
        self.on_attempt: list[Callable[[Attempt, str, str], None]] = []

    def route(self, request: ChatRequest) -> Route:
        """Return the route a request asks first."""
        if request.route == "fallback" and self.fallback is not None:
            return self.fallback
        return self.primary

    def stream(self, request: ChatRequest) -> Generator[Chunk | Attempt]:
        """Yield one attempt's chunks; announce and start another on failure."""
        first = self.route(request)
        routes = [first]
        if self.fallback is not None and first is not self.fallback:
            routes.append(self.fallback)
        number = 0
        for route in routes:
            # The primary's model is usually the request's own: no copy then.
            asked = (
                request
                if request.model == route.model
                else replace(request, model=route.model)
            )
            for retry in range(self._retries + 1):
                number += 1
                answered = False
                stream = route.provider.stream(asked)
                try:
                    for chunk in stream:
                        yield chunk
                        if chunk.text or chunk.reasoning:
                            # Committed to this answer: hand the rest over
                            # with no test per chunk.
                            answered = True
                            yield from stream
                            return
                    return
                except ProviderError as exc:
                    if answered or exc.reason is None:
                        raise
                    failure = exc
                finally:
                    stream.close()
                last_try = retry == self._retries
                if last_try and route is routes[-1]:
                    raise failure
                nxt = routes[routes.index(route) + 1] if last_try else route
                attempt = Attempt(
                    number + 1,
                    nxt.provider.name,
                    nxt.model,
                    str(failure.reason),
                    fallback=nxt is not route,
                )
                log.warning(
                    "upstream %s %s failed (%s); asking %s %s",
                    route.provider.name,
                    route.model,
                    failure.reason,
                    attempt.provider,
                    attempt.model,
                )
                for hook in self.on_attempt:
                    hook(attempt, route.provider.name, route.model)
                yield attempt
                if not last_try:
                    self._sleep(backoff(failure, retry))
