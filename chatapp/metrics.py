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

from chatapp.turns.model import TurnEnd
from chatapp.upstream.base import Attempt
from chatapp.upstream.retry import REASONS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
CANCEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The label values known in advance, shown as 0 from the start: a series that
# appears only with its first event reads as "no data" on a dashboard.
REFUSAL_CODES = ("rate_limited", "quota_exceeded", "too_many_streams", "over_capacity")
DISCONNECT_CAUSES = ("client", "storage")
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


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
        self._retries = Counter(
            "chatapp_upstream_retries",
            "Upstream attempts asked again before the first word, by the "
            "provider and model that failed and why.",
            ["provider", "model", "reason"],
            registry=r,
        )
        self._fallbacks = Counter(
            "chatapp_upstream_fallbacks",
            "Turns handed to the fallback model before the first word, by the "
            "provider and model that failed and why.",
            ["provider", "model", "reason"],
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
        # Site knowledge: what the index holds and what crawls made of pages.
        self._crawl_pages = Counter(
            "chatapp_knowledge_crawl_pages",
            "URLs seen by the site-knowledge crawler, by outcome.",
            ["outcome"],
            registry=r,
        )
        self._documents = Gauge(
            "chatapp_knowledge_documents",
            "Documents in the knowledge index, as of the last crawl.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self._passages = Gauge(
            "chatapp_knowledge_passages",
            "Passages in the knowledge index, as of the last crawl.",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        # And what each turn's retrieval came to, and how long it took.
        self._retrievals = Counter(
            "chatapp_knowledge_retrievals",
            "Turns' retrievals, by outcome: sources, none, failed, skipped.",
            ["outcome"],
            registry=r,
        )
        self._retrieval_seconds = Histogram(
            "chatapp_knowledge_retrieval_seconds",
            "Time to find a turn's sources, before the model is asked.",
            buckets=RETRIEVAL_BUCKETS,
            registry=r,
        )
        for code in REFUSAL_CODES:
            self._refusals.labels(code)
        for cause in DISCONNECT_CAUSES:
            self._disconnects.labels(cause)

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
            multiprocess.MultiProcessCollector(registry, path=folder)
            text = generate_latest(registry)
        if spend is not None:
            registry = CollectorRegistry()
            registry.register(SpendCollector(spend))
            text += generate_latest(registry)
        return text


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
