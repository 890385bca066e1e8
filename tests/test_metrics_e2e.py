"""/metrics: Prometheus text that adds up across workers."""

from __future__ import annotations

import re

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e


def scrape(url: str) -> dict[str, float]:
    response = requests.get(url + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    values = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_count_turns_tokens_errors_and_ttft(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(**openai_settings(fake_provider))
    client = ChatClient(service.url)
    client.answer("fake: | one two three")
    client.answer("fake: status=500 | x")
    values = scrape(service.url)
    assert values["chatapp_turns_started_total"] == 2
    assert values['chatapp_turns_finished_total{outcome="stop"}'] == 1
    assert values['chatapp_turns_finished_total{outcome="error"}'] == 1
    assert values['chatapp_upstream_errors_total{code="provider_unavailable"}'] == 1
    assert values["chatapp_tokens_relayed_total"] > 0
    assert values["chatapp_time_to_first_token_seconds_count"] == 1
    assert values['chatapp_time_to_first_token_seconds_bucket{le="+Inf"}'] == 1
    assert values["chatapp_active_turns"] == 0
    assert "chatapp_open_streams" in values


@pytest.mark.redis
def test_metrics_add_up_across_workers_and_count_refusals(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=redis_server.url,
            CHATAPP_WORKERS="2",
            CHATAPP_RATE_LIMITS="4/minute",
        )
    )
    client = ChatClient(service.url)
    for _ in range(4):
        client.answer("fake: | counted")
    assert client.post(message="one too many").status_code == 429
    # Scrape several times: whichever worker answers, the totals agree.
    scrapes = [scrape(service.url) for _ in range(6)]
    for values in scrapes:
        assert values["chatapp_turns_started_total"] == 4
        assert values['chatapp_turns_finished_total{outcome="stop"}'] == 4
        assert values['chatapp_refusals_total{code="rate_limited"}'] == 1


def test_idempotent_retry_is_answered_even_at_the_rate_limit(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_RATE_LIMITS="1/minute")
    )
    client = ChatClient(service.url)
    headers = {"Idempotency-Key": "lost-201-retry"}
    first = client.post(message="fake: | once", headers=dict(headers))
    retry = client.post(message="fake: | once", headers=dict(headers))
    other = client.post(message="fake: | another")
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert other.status_code == 429
    assert re.fullmatch(r"\d+", other.headers["Retry-After"])


# Every series SPEC lists that has a value before its first event: the
# label-less ones, and the known codes and causes, at 0.
FRESH_SERIES = [
    "chatapp_turns_started_total",
    "chatapp_active_turns",
    "chatapp_open_streams",
    "chatapp_time_to_first_token_seconds_count",
    "chatapp_token_gap_max_seconds_count",
    "chatapp_tokens_relayed_total",
    "chatapp_resumes_total",
    "chatapp_cancels_total",
    "chatapp_cancel_to_closed_seconds_count",
    'chatapp_disconnects_total{cause="client"}',
    'chatapp_disconnects_total{cause="storage"}',
    'chatapp_refusals_total{code="rate_limited"}',
    'chatapp_refusals_total{code="quota_exceeded"}',
    'chatapp_refusals_total{code="too_many_streams"}',
    'chatapp_refusals_total{code="over_capacity"}',
    "chatapp_storage_errors_total",
]


@pytest.mark.redis
def test_every_series_reads_zero_at_start_and_answers_during_a_redis_outage(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    redis = RedisServer()
    redis.start()
    try:
        service = service_factory(
            **openai_settings(
                fake_provider, CHATAPP_REDIS_URL=redis.url, CHATAPP_WORKERS="2"
            )
        )
        fresh = scrape(service.url)
        assert {name: fresh.get(name) for name in FRESH_SERIES} == dict.fromkeys(
            FRESH_SERIES, 0.0
        )
        client = ChatClient(service.url)
        redis.kill()
        refused = client.post(message="fake: | while redis is down")
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "over_capacity"
        during = scrape(service.url)
        assert set(FRESH_SERIES) <= set(during)
        assert during["chatapp_storage_errors_total"] >= 1
        assert during['chatapp_refusals_total{code="over_capacity"}'] >= 1
    finally:
        redis.kill()
