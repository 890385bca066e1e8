"""Prometheus metrics: per-process counters, summed per host on a scrape.

Under gunicorn every worker writes its values to its own memory-mapped files
(prometheus_client's multiprocess mode; gunicorn.conf.py names the folder in
PROMETHEUS_MULTIPROC_DIR) and /metrics adds up the files of every worker of
this host. Nothing goes to Redis and a scrape writes nothing, so /metrics
answers while Redis is down; totals across hosts are Prometheus' sum.
Everything here is counted per turn or per stream, never per token.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess

from chatapp.turns.model import TurnEnd

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
CANCEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def multiprocess_dir() -> str | None:
    """Return the folder shared by this host's workers, if there is one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Count what operators watch; render it as Prometheus text."""

    def __init__(self, running: Callable[[], int] = lambda: 0) -> None:
        self._running = running
        self._registry = CollectorRegistry()
        r = self._registry
        self._started = Counter(
            "chatapp_turns_started", "Turns accepted by POST /api/chat.", registry=r
        )
        self._finished = Counter(
            "chatapp_turns_finished",
            "Turns ended, by finish reason.",
            ["outcome"],
            registry=r,
        )
        self._upstream_errors = Counter(
            "chatapp_upstream_errors",
            "Turns ended by an error, by SPEC error code.",
            ["code"],
            registry=r,
        )
        self._tokens = Counter(
            "chatapp_tokens_relayed", "Provider output tokens relayed.", registry=r
        )
        self._refusals = Counter(
            "chatapp_refusals",
            "Requests refused by limits, by error code.",
            ["code"],
            registry=r,
        )
        self._ttft = Histogram(
            "chatapp_time_to_first_token_seconds",
            "From accepting a turn to its first token.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._gap = Histogram(
            "chatapp_token_gap_max_seconds",
            "The longest wait between two pieces of text, per turn.",
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self._resumes = Counter(
            "chatapp_resumes", "Event streams opened after an event id.", registry=r
        )
        self._cancels = Counter(
            "chatapp_cancels", "Turns cancelled by a client.", registry=r
        )
        self._cancel_closed = Histogram(
            "chatapp_cancel_to_closed_seconds",
            "From a cancel reaching the producer to its upstream closed.",
            buckets=CANCEL_BUCKETS,
            registry=r,
        )
        self._disconnects = Counter(
            "chatapp_disconnects",
            "Event streams that ended before done, by cause.",
            ["cause"],
            registry=r,
        )
        self._storage_errors = Counter(
            "chatapp_storage_errors",
            "Failed calls to shared storage (Redis).",
            registry=r,
        )
        self._feedback = Counter(
            "chatapp_feedback",
            "Ratings of answers by visitors, by rating.",
            ["rating"],
            registry=r,
        )
        for rating in ("up", "down"):
            self._feedback.labels(rating)
        self._active = Gauge(
            "chatapp_active_turns",
            "Turns generating now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._open = Gauge(
            "chatapp_open_streams",
            "Event streams open now.",
            registry=r,
            multiprocess_mode="livesum",
        )

    def turn_started(self) -> None:
        self._started.inc()
        self._active.set(self._running())

    def refused(self, code: str) -> None:
        self._refusals.labels(code).inc()

    def feedback(self, rating: str) -> None:
        self._feedback.labels(rating).inc()

    def storage_error(self) -> None:
        self._storage_errors.inc()

    def turn_ended(self, end: TurnEnd) -> None:
        """Record a finished turn: reason, tokens, errors, latencies."""
        self._active.set(self._running())
        self._finished.labels(end.finish_reason).inc()
        tokens = end.output_tokens
        if tokens is None and end.output_chars:
            tokens = max(1, end.output_chars // 4)
        if tokens:
            self._tokens.inc(tokens)
        if end.error_code:
            self._upstream_errors.labels(end.error_code).inc()
        if end.first_token_seconds is not None:
            self._ttft.observe(end.first_token_seconds)
        if end.max_gap_seconds is not None:
            self._gap.observe(end.max_gap_seconds)
        if end.cancel_seconds is not None:
            self._cancels.inc()
            self._cancel_closed.observe(end.cancel_seconds)

    def stream_opened(self, *, resumed: bool) -> None:
        self._open.inc()
        if resumed:
            self._resumes.inc()

    def stream_closed(self, cause: str | None) -> None:
        """Count a stream out; `cause` says why it ended before done, if it did."""
        self._open.dec()
        if cause is not None:
            self._disconnects.labels(cause).inc()

    def render(self) -> bytes:
        """Render every metric of this host in the Prometheus text format."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self._registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=folder)
        return generate_latest(registry)
