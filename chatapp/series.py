"""The metrics chatapp keeps: each series' name, help, labels and shape.

One table, read by Metrics (metrics.py), which creates every series in its
registry and counts into them. Label values known in advance are created at
0 from the start: a series that appears only with its first event reads as
"no data" on a dashboard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter
from prometheus_client import Gauge
from prometheus_client import Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0)
CANCEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The label values known in advance, shown as 0 from the start.
REFUSAL_CODES = ("rate_limited", "quota_exceeded", "too_many_streams", "over_capacity")
DISCONNECT_CAUSES = ("client", "storage")
RETRIEVAL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)


@dataclass(frozen=True, slots=True)
class Series:
    """One metric: where Metrics keeps it, its name, help, labels and shape."""

    attr: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()  # a histogram's
    mode: str = ""  # a gauge's multiprocess_mode
    zeros: tuple[str, ...] = ()  # label values shown as 0 from the start


LIVE, LATEST = "livesum", "livemostrecent"
BY_ROUTE = ("provider", "model", "reason")
SERIES = (
    Series(
        "_started",
        Counter,
        "chatapp_turns_started",
        "Turns accepted by POST /api/chat.",
    ),
    Series(
        "_finished",
        Counter,
        "chatapp_turns_finished",
        "Turns ended, by finish reason.",
        ("outcome",),
    ),
    Series(
        "_upstream_errors",
        Counter,
        "chatapp_upstream_errors",
        "Turns ended by an error, by SPEC error code.",
        ("code",),
    ),
    Series(
        "_tokens", Counter, "chatapp_tokens_relayed", "Provider output tokens relayed."
    ),
    Series(
        "_refusals",
        Counter,
        "chatapp_refusals",
        "Requests refused by limits, by error code.",
        ("code",),
        zeros=REFUSAL_CODES,
    ),
    Series(
        "_ttft",
        Histogram,
        "chatapp_time_to_first_token_seconds",
        "From accepting a turn to its first token.",
        buckets=LATENCY_BUCKETS,
    ),
    Series(
        "_gap",
        Histogram,
        "chatapp_token_gap_max_seconds",
        "The longest wait between two pieces of text, per turn.",
        buckets=GAP_BUCKETS,
    ),
    Series(
        "_resumes",
        Counter,
        "chatapp_resumes",
        "Event streams opened after an event id.",
    ),
    Series("_cancels", Counter, "chatapp_cancels", "Turns cancelled by a client."),
    Series(
        "_cancel_closed",
        Histogram,
        "chatapp_cancel_to_closed_seconds",
        "From a cancel reaching the producer to its upstream closed.",
        buckets=CANCEL_BUCKETS,
    ),
    Series(
        "_disconnects",
        Counter,
        "chatapp_disconnects",
        "Event streams that ended before done, by cause.",
        ("cause",),
        zeros=DISCONNECT_CAUSES,
    ),
    Series(
        "_storage_errors",
        Counter,
        "chatapp_storage_errors",
        "Failed calls to shared storage (Redis).",
    ),
    Series(
        "_retries",
        Counter,
        "chatapp_upstream_retries",
        "Upstream attempts asked again before the first word, by the "
        "provider and model that failed and why.",
        BY_ROUTE,
    ),
    Series(
        "_fallbacks",
        Counter,
        "chatapp_upstream_fallbacks",
        "Turns handed to the fallback model before the first word, by the "
        "provider and model that failed and why.",
        BY_ROUTE,
    ),
    Series(
        "_feedback",
        Counter,
        "chatapp_feedback",
        "Ratings of answers by visitors, by rating.",
        ("rating",),
        zeros=("up", "down"),
    ),
    Series(
        "_active", Gauge, "chatapp_active_turns", "Turns generating now.", mode=LIVE
    ),
    Series(
        "_open", Gauge, "chatapp_open_streams", "Event streams open now.", mode=LIVE
    ),
    # Site knowledge: what the index holds and what crawls made of pages.
    Series(
        "_crawl_pages",
        Counter,
        "chatapp_knowledge_crawl_pages",
        "URLs seen by the site-knowledge crawler, by outcome.",
        ("outcome",),
    ),
    Series(
        "_documents",
        Gauge,
        "chatapp_knowledge_documents",
        "Documents in the knowledge index, as of the last crawl.",
        mode=LATEST,
    ),
    Series(
        "_passages",
        Gauge,
        "chatapp_knowledge_passages",
        "Passages in the knowledge index, as of the last crawl.",
        mode=LATEST,
    ),
    # And what each turn's retrieval came to, and how long it took.
    Series(
        "_retrievals",
        Counter,
        "chatapp_knowledge_retrievals",
        "Turns' retrievals, by outcome: sources, none, failed, skipped.",
        ("outcome",),
    ),
    Series(
        "_retrieval_seconds",
        Histogram,
        "chatapp_knowledge_retrieval_seconds",
        "Time to find a turn's sources, before the model is asked.",
        buckets=RETRIEVAL_BUCKETS,
    ),
)


def make(series: Series, registry: CollectorRegistry) -> Any:
    """Create one series in `registry`, its known label values at 0."""
    shape: dict[str, Any] = {"registry": registry}
    if series.buckets:
        shape["buckets"] = series.buckets
    if series.mode:
        shape["multiprocess_mode"] = series.mode
    metric = series.kind(series.name, series.help, series.labels, **shape)
    for value in series.zeros:
        metric.labels(value)
    return metric
