"""Turns shared through Redis: two gunicorn instances on one real Redis.

The two-host tests run against each kind of Redis the URL may name: one
redis-server, a Sentinel set (primary, replica, three sentinels) and a Redis
Cluster of three primaries with a replica each.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.redis_topologies import RedisClusterSet
from tests.redis_topologies import SentinelSet
from tests.test_relay_e2e import assert_well_formed
from tests.test_relay_e2e import client_turn

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

SECRET = "shared-test-secret-for-both-hosts"


@pytest.fixture(scope="module", params=["single", "sentinel", "cluster"])
def shared_redis_url(
    request: pytest.FixtureRequest, redis_server: RedisServer
) -> Iterator[str]:
    """One Redis server, a Sentinel-watched primary, or a Redis Cluster."""
    if request.param == "single":
        yield redis_server.url
        return
    topology = SentinelSet() if request.param == "sentinel" else RedisClusterSet()
    try:
        yield topology.start().url
    finally:
        topology.stop()


@pytest.fixture(scope="module")
def hosts(
    tmp_path_factory: pytest.TempPathFactory,
    shared_redis_url: str,
    fake_provider_server: FakeProvider,
) -> Iterator[tuple[Service, Service]]:
    """Two 'hosts': separate gunicorn masters with 2 workers each, one Redis."""
    settings = openai_settings(
        fake_provider_server,
        CHATAPP_REDIS_URL=shared_redis_url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_ORPHAN_SECONDS="2",
        CHATAPP_HEARTBEAT_SECONDS="0.5",
    )
    factory = ServiceFactory(tmp_path_factory.mktemp("hosts"))
    try:
        yield factory(**settings), factory(**settings)
    finally:
        factory.stop_all()


@pytest.fixture
def a_and_b(
    hosts: tuple[Service, Service], fake_provider: FakeProvider
) -> tuple[ChatClient, ChatClient]:
    a, b = hosts
    client_a = ChatClient(a.url)
    # The same visitor on host B: same page token, other process and host.
    return client_a, ChatClient(b.url, token=client_a.token)


def test_each_host_runs_two_workers_by_default_with_redis(
    hosts: tuple[Service, Service],
) -> None:
    # No CHATAPP_WORKERS in their settings: gunicorn.conf.py picks 2 with Redis.
    for host in hosts:
        assert "CHATAPP_WORKERS" not in host.env
        wait_for(lambda h=host: len(h.worker_pids()) >= 2, 30, "two workers")
        assert len(host.worker_pids()) == 2


def test_resume_on_another_host_repeats_nothing(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    answer = "Streams survive hosts: every token once, in order, from any worker."
    turn = a.start(Behaviour(text=answer, delay_ms=15, pieces=2).as_directive())
    head = a.events(turn, limit=6)
    tail = b.events(turn, last_event_id=int(head[-1].id or 0))
    events = head + tail
    assert_well_formed(events)
    assert text_of(events) == answer
    assert len(fake_provider.requests) == 1
    with b.open_stream(turn, last_event_id=int(events[-1].id or 0)) as after:
        assert after.status_code == 204


def test_many_readers_on_both_hosts_see_the_same_events(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    turn, from_a = a.answer(Behaviour(text="same for all", pieces=1).as_directive())
    from_b = b.events(turn)
    assert from_a == from_b
    assert len(fake_provider.requests) == 1


def test_cancel_from_the_other_host_closes_upstream(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    turn = a.start("fake: stall_after=3 | a b c d e f g h")
    fake_provider.wait_for_stream_start(1)
    a.events(turn, limit=2)
    asked = time.monotonic()
    assert b.cancel(turn).status_code == 202
    assert fake_provider.wait_all_closed(2)
    assert time.monotonic() - asked < 1.5
    events = b.events(turn, last_event_id=2)
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]


def test_cancel_from_the_other_host_before_the_first_token(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    turn = a.start("fake: ttft_ms=30000 | never")
    fake_provider.wait_for_requests(1)
    assert b.cancel(turn).status_code == 202
    assert fake_provider.wait_all_closed(2)
    events = a.events(turn)
    assert_well_formed(events)
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]


def test_orphaned_turn_is_cancelled_upstream(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    turn = a.start("fake: stall_after=2 | x y z w")
    fake_provider.wait_for_stream_start(1)
    b.events(turn, limit=2)  # read on B, then vanish
    assert fake_provider.wait_all_closed(10)
    events = a.events(turn, last_event_id=2)
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]


def test_idempotent_retry_on_the_other_host(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    headers = {"Idempotency-Key": "retry-from-b-1"}
    first = a.post(message="fake: | paid once", headers=dict(headers))
    second = b.post(message="fake: | paid once", headers=dict(headers))
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert text_of(b.events(client_turn(first.json()))) == "paid once"
    assert len(fake_provider.requests) == 1


def test_conversation_continues_on_the_other_host(
    a_and_b: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    a, b = a_and_b
    turn, _ = a.answer("fake: | first on A")
    b.answer("second on B", conversation_id=turn.conversation_id)
    sent = fake_provider.wait_for_requests(2)[-1].body
    assert sent is not None
    assert [m["content"] for m in sent["messages"][1:]] == [
        "fake: | first on A",
        "first on A",
        "second on B",
    ]
    url = f"/api/conversations/{turn.conversation_id}"
    body = b.http.get(b.base_url + url, headers={"X-Chat-Token": b.token}).json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2


def test_poll_from_the_other_host(a_and_b: tuple[ChatClient, ChatClient]) -> None:
    a, b = a_and_b
    turn, events = a.answer("fake: | polled across hosts")
    url = f"{b.base_url}{turn.stream_url}&poll=1&last_event_id=0"
    body = b.http.get(url, timeout=30).json()
    assert body["done"] is True
    assert [e["data"] for e in body["events"]] == [e.data for e in events]


def test_readyz_checks_redis(hosts: tuple[Service, Service]) -> None:
    for service in hosts:
        response = ChatClient(service.url).http.get(service.url + "/readyz")
        assert response.status_code == 200


# -- failures: a dead producer, a dead Redis ----------------------------------------


@pytest.fixture
def solo_producer(
    service_factory: ServiceFactory,
    redis_server: RedisServer,
    fake_provider: FakeProvider,
) -> Iterator[tuple[Service, Service]]:
    settings = openai_settings(
        fake_provider,
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_HEARTBEAT_SECONDS="0.5",
    )
    producer = service_factory(CHATAPP_WORKERS="1", **settings)
    reader = service_factory(**settings)
    yield producer, reader


def test_a_dead_producer_is_noticed_by_readers_elsewhere(
    solo_producer: tuple[Service, Service], fake_provider: FakeProvider
) -> None:
    producer, reader = solo_producer
    a = ChatClient(producer.url)
    b = ChatClient(reader.url, token=a.token)
    turn = a.start("fake: stall_after=2 | one two three four")
    fake_provider.wait_for_stream_start(1)
    assert len(b.events(turn, limit=2)) == 2
    (worker,) = producer.worker_pids()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    events = b.events(turn, last_event_id=2)
    noticed = time.monotonic() - killed
    assert [e.event for e in events][-2:] == ["error", "done"]
    assert data_of(events, "error")[0]["code"] == "internal"
    assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert noticed < 10
    ids = [int(e.id or 0) for e in events]
    assert ids == list(range(3, 3 + len(ids)))


def test_redis_lost_mid_turn_ends_it_and_service_recovers(
    service_factory: ServiceFactory,
    redis_server: RedisServer,
    fake_provider: FakeProvider,
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=redis_server.url,
            CHATAPP_SECRET_KEY=SECRET,
        )
    )
    client = ChatClient(service.url)
    turn = client.start(
        Behaviour(text="x " * 400, delay_ms=20, pieces=2).as_directive()
    )
    response = client.open_stream(turn)
    from chatapp.upstream.sse_decoder import SSEDecoder

    decoder = SSEDecoder()
    seen: list[str] = []
    try:
        for data in response.raw.stream(256, decode_content=False):
            for event in decoder.feed(data):
                seen.append(event.event)
                if len(seen) == 5:
                    redis_server.kill()
            if seen and seen[-1] == "done":
                break
        refused = client.post(message="while Redis is away")
    finally:
        response.close()
        redis_server.kill()
        redis_server.start()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "over_capacity"
    assert int(refused.headers["Retry-After"]) > 0
    # A reader in the producer's worker follows it in memory, so the answer
    # goes on; a reader elsewhere gets error + done (SPEC: turns in flight
    # continue or end with error + done). Never silence, never two dones.
    assert seen.count("done") == 1 and seen[-1] == "done"
    assert seen[-2] in ("usage", "error")
    assert fake_provider.wait_all_closed(10)
    wait_for(
        lambda: client.http.get(service.url + "/readyz").status_code == 200,
        15,
        "readyz to recover",
        every=0.2,
    )
    _, events = client.answer("fake: | after the outage")
    assert text_of(events) == "after the outage"


def test_readyz_reports_a_redis_outage(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    from tests.conftest import free_port

    service = service_factory(
        **openai_settings(
            fake_provider, CHATAPP_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
        )
    )
    response = ChatClient(service.url, token="unused").http.get(service.url + "/readyz")
    assert response.status_code == 503
    assert "redis" in json.dumps(response.json()).lower()
