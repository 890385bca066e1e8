"""Prometheus metrics: per-process counters, summed per host on a scrape.

Under gunicorn every worker writes its values to its own memory-mapped files
(prometheus_client's multiprocess mode; gunicorn.conf.py names the folder in
PROMETHEUS_MULTIPROC_DIR) and /metrics adds up the files of every worker of
this host. Nothing goes to Redis and a scrape writes nothing, so /metrics
answers while Redis is down; totals across hosts are Prometheus' sum.
Everything here is counted per turn or per stream, never per token.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram
from prometheus_client import generate_latest
from prometheus_client import multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from chatapp.series import SERIES
from chatapp.series import make
from chatapp.turns.model import TurnEnd
from chatapp.upstream.base import Attempt
from chatapp.upstream.retry import REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def multiprocess_dir() -> str | None:
    """Return the folder shared by this host's workers, if there is one."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """Count what operators watch; render it as Prometheus text.

    Each attribute below is one series of chatapp/series.py's table.
    """

    _started: Counter
    _finished: Counter
    _upstream_errors: Counter
    _tokens: Counter
    _refusals: Counter
    _ttft: Histogram
    _gap: Histogram
    _resumes: Counter
    _cancels: Counter
    _cancel_closed: Histogram
    _disconnects: Counter
    _storage_errors: Counter
    _retries: Counter
    _fallbacks: Counter
    _feedback: Counter
    _active: Gauge
    _open: Gauge
    _crawl_pages: Counter
    _documents: Gauge
    _passages: Gauge
    _retrievals: Counter
    _retrieval_seconds: Histogram

    def __init__(self, running: Callable[[], int] = lambda: 0) -> None:
        self._running = running
        self._registry = CollectorRegistry()
        for series in SERIES:
            setattr(self, series.attr, make(series, self._registry))

    def known_upstreams(self, routes: list[tuple[str, str]]) -> None:
        """Create the retry series at 0, so dashboards show 0, not no data."""
        for provider, model in routes:
            for reason in REASONS:
                self._retries.labels(provider, model, reason)
                self._fallbacks.labels(provider, model, reason)

    def upstream_attempt(self, attempt: Attempt, provider: str, model: str) -> None:
        """Count a new upstream attempt after `provider` `model` failed."""
        counter = self._fallbacks if attempt.fallback else self._retries
        counter.labels(provider, model, attempt.reason).inc()

    def crawl_finished(
        self, outcomes: dict[str, int], documents: int, passages: int
    ) -> None:
        """Count a crawl's URLs by outcome and what the index holds after it."""
        for outcome, count in outcomes.items():
            self._crawl_pages.labels(outcome).inc(count)
        self._documents.set(documents)
        self._passages.set(passages)

    def retrieved(self, outcome: str, seconds: float) -> None:
        """Count one turn's retrieval: with sources, without, or failed."""
        self._retrievals.labels(outcome).inc()
        self._retrieval_seconds.observe(seconds)

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

    def render(self, spend: dict[str, Any] | None = None) -> bytes:
        """Render every metric of this host in the Prometheus text format.

        `spend` is GET /api/spend's report, read from the shared count at
        scrape time: the same site-wide figures from any worker.
        """
        folder = multiprocess_dir()
        if folder is None:
            text = generate_latest(self._registry)
        else:
            registry = CollectorRegistry()
            WorkersCollector(registry, path=folder)
            text = generate_latest(registry)
        if spend is not None:
            registry = CollectorRegistry()
            registry.register(SpendCollector(spend))
            text += generate_latest(registry)
        return text


class WorkersCollector(multiprocess.MultiProcessCollector):
    """The workers' files summed, leaving out a file a worker is creating.

    prometheus_client makes a worker's file empty, then sizes it: a scrape
    in between read 0 bytes and failed the whole /metrics with a 500. An
    empty file holds no values yet, so leaving it out changes no sum.
    """

    def collect(self) -> Any:
        files = [
            path
            for path in glob.glob(os.path.join(self._path, "*.db"))
            if _has_bytes(path)
        ]
        return self.merge(files, accumulate=True)


def _has_bytes(path: str) -> bool:
    try:
        return os.stat(path).st_size > 0
    except FileNotFoundError:
        return False  # a dead worker's file, removed meanwhile


class SpendCollector(Collector):
    """The site's spend, ceilings and the fraction used, as gauges.

    Read from the count every worker shares when scraped, never kept in a
    worker's files: each host shows the whole site's figures, so aggregate
    them across hosts with max(), not sum().
    """

    def __init__(self, report: dict[str, Any]) -> None:
        self._report = report

    def collect(self) -> Iterator[GaugeMetricFamily]:
        currency = self._report["currency"]
        spent = GaugeMetricFamily(
            "chatapp_spend", "Settled spend this period.", labels=["period", "currency"]
        )
        held = GaugeMetricFamily(
            "chatapp_spend_held",
            "Spend held by running turns (their worst case) this period.",
            labels=["period", "currency"],
        )
        ceiling = GaugeMetricFamily(
            "chatapp_spend_ceiling",
            "The spend ceiling of a period, hard (refuse) or soft (fallback).",
            labels=["period", "kind", "currency"],
        )
        ratio = GaugeMetricFamily(
            "chatapp_spend_ceiling_used_ratio",
            "Spend settled and held over the hard ceiling (1: turns refused).",
            labels=["period"],
        )
        for period, figures in self._report["periods"].items():
            spent.add_metric([period, currency], figures["spent"])
            held.add_metric([period, currency], figures["held"])
            for kind, key in (("hard", "limit"), ("soft", "soft_limit")):
                if figures[key] is not None:
                    ceiling.add_metric([period, kind, currency], figures[key])
            if figures["limit"]:
                used = figures["spent"] + figures["held"]
                ratio.add_metric([period], used / figures["limit"])
        by_model = GaugeMetricFamily(
            "chatapp_spend_model",
            "Settled spend this UTC month by model.",
            labels=["model", "currency"],
        )
        turns = GaugeMetricFamily(
            "chatapp_spend_model_turns",
            "Turns settled this UTC month by model.",
            labels=["model"],
        )
        for model, figures in self._report["models"].items():
            by_model.add_metric([model, currency], figures["spent"])
            turns.add_metric([model], figures["turns"])
        yield from (spent, held, ceiling, ratio, by_model, turns)
