"""Prometheus metrics that add up across gunicorn workers (and hosts).

Counters live in one Redis hash when Redis is configured, else in this
process (which is then the only worker). Gauges are per worker: each worker
publishes its own value with a timestamp and /metrics sums the fresh ones.
Writes happen per turn, never per token.
"""

from __future__ import annotations

import os
import socket
import time
from collections import defaultdict
from typing import Any

import gevent
import redis

from chatapp.errors import StoreError
from chatapp.relay import TurnOutcome

TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TTFT = "chatapp_time_to_first_token_seconds"
TTFT_SLOT = "chatapp_ttft_slot"  # stored per bucket, not cumulative
COUNTERS_KEY = "chatapp:metrics"
GAUGES_KEY = "chatapp:metrics:gauges"
GAUGE_EVERY = 5.0
GAUGE_FRESH = 3 * GAUGE_EVERY

HELP = {
    "chatapp_turns_started_total": ("counter", "Turns accepted by POST /api/chat."),
    "chatapp_turns_finished_total": ("counter", "Turns ended, by finish reason."),
    "chatapp_upstream_errors_total": ("counter", "Turns ended by a provider error."),
    "chatapp_tokens_relayed_total": ("counter", "Provider output tokens relayed."),
    "chatapp_refusals_total": ("counter", "Requests refused by limits, by code."),
    "chatapp_time_to_first_token_seconds": (
        "histogram",
        "From accepting a turn to its first token.",
    ),
    "chatapp_active_turns": ("gauge", "Turns generating now."),
    "chatapp_open_streams": ("gauge", "Event streams open now."),
}


def _field(name: str, labels: dict[str, str] | None = None) -> str:
    if not labels:
        return name
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


class Metrics:
    """Count what operators watch; render it as Prometheus text."""

    def __init__(self, redis_client: Any = None) -> None:
        self._r = redis_client
        self._counters: dict[str, float] = defaultdict(float)
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        self._gauges: dict[str, Any] = {}
        self._publisher: gevent.Greenlet | None = None

    def add(self, counts: dict[str, float]) -> None:
        """Add to counters; one round trip whatever the number."""
        if self._r is None:
            for key, value in counts.items():
                self._counters[key] += value
            return
        try:
            with self._r.pipeline(transaction=False) as pipe:
                for key, value in counts.items():
                    pipe.hincrbyfloat(COUNTERS_KEY, key, value)
                pipe.execute()
        except redis.RedisError as exc:
            raise StoreError("metrics write failed") from exc

    def turn_started(self) -> None:
        self._safe_add({_field("chatapp_turns_started_total"): 1})

    def refused(self, code: str) -> None:
        self._safe_add({_field("chatapp_refusals_total", {"code": code}): 1})

    def turn_finished(self, outcome: TurnOutcome) -> None:
        """Record a finished turn: reason, tokens, errors, time to first token."""
        counts: dict[str, float] = {
            _field(
                "chatapp_turns_finished_total", {"outcome": outcome.finish_reason}
            ): 1
        }
        tokens = outcome.output_tokens
        if tokens is None and outcome.output_chars:
            tokens = max(1, outcome.output_chars // 4)
        if tokens:
            counts[_field("chatapp_tokens_relayed_total")] = tokens
        if outcome.error_code:
            counts[
                _field("chatapp_upstream_errors_total", {"code": outcome.error_code})
            ] = 1
        ttft = outcome.first_token_seconds
        if ttft is not None:
            # One bucket per observation (cumulated when rendered) keeps this
            # to a few Redis commands per turn.
            bound = next((b for b in TTFT_BUCKETS if ttft <= b), None)
            counts[_field(TTFT_SLOT, {"le": str(bound) if bound else "+Inf"})] = 1
            counts[_field(f"{TTFT}_sum")] = ttft
        self._safe_add(counts)

    def _safe_add(self, counts: dict[str, float]) -> None:
        try:
            self.add(counts)
        except StoreError:
            pass  # a Redis outage loses a few counts, never a request

    def watch_gauges(self, read: Any) -> None:
        """Publish this worker's gauges (a callable returning a dict) regularly."""
        self._gauges = {"read": read}
        if self._r is not None and self._publisher is None:
            self._publisher = gevent.spawn(self._publish_forever)

    def _publish_forever(self) -> None:
        while True:
            self._publish()
            gevent.sleep(GAUGE_EVERY)

    def _publish(self) -> None:
        values = self._gauges["read"]()
        payload = ",".join(f"{k}={v}" for k, v in values.items())
        try:
            self._r.hset(GAUGES_KEY, self._worker, f"{time.time()}|{payload}")
        except redis.RedisError:  # gauges catch up on the next tick
            pass

    def render(self) -> str:
        """Render every metric in the Prometheus text format."""
        counters = _cumulate(self._read_counters())
        gauges = self._read_gauges()
        lines: list[str] = []
        for name, (kind, text) in HELP.items():
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "gauge":
                lines.append(f"{name} {gauges.get(name, 0)}")
                continue
            rows = {
                k: v for k, v in counters.items() if k.split("{")[0].startswith(name)
            }
            if not rows and kind == "counter" and "{" not in name:
                rows = {name: 0.0}
            for key in sorted(rows, key=_order):
                lines.append(f"{key} {_number(rows[key])}")
        return "\n".join(lines) + "\n"

    def _read_counters(self) -> dict[str, float]:
        if self._r is None:
            return dict(self._counters)
        try:
            raw = self._r.hgetall(COUNTERS_KEY)
        except redis.RedisError as exc:
            raise StoreError("metrics read failed") from exc
        return {str(k): float(v) for k, v in raw.items()}

    def _read_gauges(self) -> dict[str, float]:
        if self._r is None:
            read = self._gauges.get("read")
            return dict(read()) if read else {}
        self._publish()
        try:
            raw = self._r.hgetall(GAUGES_KEY)
        except redis.RedisError as exc:
            raise StoreError("metrics read failed") from exc
        totals: dict[str, float] = defaultdict(float)
        now = time.time()
        for worker, value in raw.items():
            stamp, _, payload = str(value).partition("|")
            if now - float(stamp) > GAUGE_FRESH:
                self._r.hdel(GAUGES_KEY, worker)  # a worker that went away
                continue
            for pair in filter(None, payload.split(",")):
                name, _, number = pair.partition("=")
                totals[name] += float(number)
        return totals


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _order(key: str) -> tuple[str, float]:
    """Sort series by name, histogram buckets by their bound, as Prometheus wants."""
    name, _, labels = key.partition("{")
    if 'le="' in labels:
        return name, float(labels.split('le="', 1)[1].split('"', 1)[0])
    return key, 0.0


def _cumulate(counters: dict[str, float]) -> dict[str, float]:
    """Turn stored per-bucket counts into Prometheus' cumulative buckets."""
    slots = {k: v for k, v in counters.items() if k.startswith(TTFT_SLOT + "{")}
    out = {k: v for k, v in counters.items() if k not in slots}
    running = 0.0
    for bound in [*map(str, TTFT_BUCKETS), "+Inf"]:
        running += slots.get(_field(TTFT_SLOT, {"le": bound}), 0.0)
        out[_field(f"{TTFT}_bucket", {"le": bound})] = running
    out[_field(f"{TTFT}_count")] = running
    out.setdefault(_field(f"{TTFT}_sum"), 0.0)
    return out
