"""The reliability battery: Redis killed and restarted under open streams.

200 answers stream from two gevent workers when redis-server is killed: no
response may be a 500 (503 with Retry-After is the answer meanwhile), every
reader must get `done`, and within 5 s of Redis returning a new turn streams
to `done` again.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.test_readers import RawReader

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.e2e]

STREAMS = 200
WHOLE_WITHIN = 5.0
# Long answers: 200 events 100 ms apart, so every stream is open at the kill.
LONG = Behaviour(text="word " * 200, pieces=5, delay_ms=100)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill and restart."""
    server = RedisServer()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


def test_redis_killed_under_open_streams(
    service_factory: ServiceFactory,
    own_redis: RedisServer,
    fake_provider: FakeProvider,
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=own_redis.url,
            CHATAPP_SECRET_KEY="reliability-redis-secret-0123456789",
            CHATAPP_WORKERS="2",
            # Each reader is its own client (by X-Forwarded-For), as 200
            # visitors are: one address would be capped at 32 readers.
            CHATAPP_TRUSTED_PROXY_HOPS="1",
        )
    )
    statuses: list[int] = []
    client = ChatClient(service.url)
    readers: list[RawReader] = []
    try:
        for n in range(STREAMS):
            address = f"198.18.{n // 200}.{n % 200 + 1}"
            response = client.post(
                message=LONG.as_directive(), headers={"X-Forwarded-For": address}
            )
            statuses.append(response.status_code)
            assert response.status_code == 201, response.text
            reader = RawReader(service, response.json()["stream_url"], address)
            assert reader.until(b"event: start")
            readers.append(reader)
        own_redis.kill()
        # Meanwhile new turns are refused with 503 + Retry-After, never a 500.
        refused = []
        for _ in range(10):
            response = client.post(message="hello")
            statuses.append(response.status_code)
            refused.append(response)
        assert {r.status_code for r in refused} == {503}
        assert all(r.headers.get("Retry-After") for r in refused)
        ended = sum(reader.until(b"event: done") for reader in readers)
        own_redis.start()
        back = time.monotonic()

        def whole() -> bool:
            response = client.post(message="hello")
            statuses.append(response.status_code)
            if response.status_code != 201:
                return False
            reader = RawReader(service, response.json()["stream_url"])
            try:
                return reader.until(b"event: done")
            finally:
                reader.close()

        wait_for(whole, 30, "a turn to stream to done again", every=0.1)
        whole_after = time.monotonic() - back
    finally:
        for reader in readers:
            reader.close()
        client.http.close()
    metrics = requests.get(service.url + "/metrics", timeout=5)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability-redis.json").write_text(
        json.dumps(
            {
                "open_streams_at_kill": STREAMS,
                "readers_that_got_done": ended,
                "responses_500": statuses.count(500),
                "responses": len(statuses),
                "seconds_until_whole": round(whole_after, 2),
            },
            indent=1,
        )
    )
    assert 500 not in statuses
    assert metrics.status_code == 200
    assert whole_after <= WHOLE_WITHIN
    assert ended == STREAMS
