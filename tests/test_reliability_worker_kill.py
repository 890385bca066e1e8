"""The reliability battery: a worker SIGKILLed under load.

Host A's only worker produces a client's turns (as many as it may run at
once) while readers on host B follow them, both on one Redis. A is killed
mid-answer. Within 6 s every reader on B must get `error` + `done`, and the
client's stream slots and budget holds must be free again: B admits a new
turn for it, and the day's tokens hold only what the dead turns streamed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import Turn
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.conftest import wait_for
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.e2e]

SECRET = "reliability-worker-kill-secret-0123456789"
SLOTS = 3
HOLD = 100  # CHATAPP_MAX_OUTPUT_TOKENS: what each turn holds of the budget
BUDGET = SLOTS * HOLD + HOLD // 2
ENDED_WITHIN = 6.0
FREED_WITHIN = 6.0


@pytest.fixture
def hosts(
    service_factory: ServiceFactory,
    redis_server: RedisServer,
    fake_provider: FakeProvider,
) -> Iterator[tuple[Service, Service]]:
    redis_server.flush()
    settings = openai_settings(
        fake_provider,
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_MAX_STREAMS_PER_CLIENT=str(SLOTS),
        CHATAPP_MAX_OUTPUT_TOKENS=str(HOLD),
        # Room for the turns' holds and half of one more: another turn needs
        # both the dead turns' holds settled and their slots freed.
        CHATAPP_DAILY_TOKEN_BUDGET=str(BUDGET),
        CHATAPP_RATE_LIMITS="1000/minute",
    )
    producer = service_factory(CHATAPP_WORKERS="1", **settings)
    reader = service_factory(**settings)
    yield producer, reader


def day_tokens(redis_server: RedisServer) -> int:
    keys = redis_server.command("--scan", "--pattern", "chatapp:limits:tokens:*")
    names = keys.decode().split()
    assert len(names) == 1, names
    return int(redis_server.command("GET", names[0]))


def held_slots(redis_server: RedisServer) -> int:
    keys = redis_server.command("--scan", "--pattern", "chatapp:limits:streams:*")
    return sum(
        int(redis_server.command("ZCARD", name)) for name in keys.decode().split()
    )


def test_a_killed_worker_ends_its_turns_and_frees_what_they_held(
    hosts: tuple[Service, Service],
    redis_server: RedisServer,
    fake_provider: FakeProvider,
) -> None:
    producer, reader = hosts
    a = ChatClient(producer.url)
    b = ChatClient(reader.url, token=a.token)
    turns = [
        a.start(f"fake: stall_after=3 | turn {i} " + "word " * 50) for i in range(SLOTS)
    ]
    fake_provider.wait_for_stream_start(SLOTS)
    for turn in turns:  # every turn has streamed its first events to Redis
        assert len(b.events(turn, limit=3)) == 3
    assert held_slots(redis_server) == SLOTS
    assert day_tokens(redis_server) == SLOTS * HOLD
    refused = b.post(message="fake: | one more")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"

    # Readers on B follow every turn from where they are.
    results: dict[str, Any] = {}

    def follow(turn: Turn) -> None:
        events = b.events(turn, last_event_id=0)
        results[turn.id] = (time.monotonic(), events)

    readers = [threading.Thread(target=follow, args=(t,)) for t in turns]
    for thread in readers:
        thread.start()
    wait_for(
        lambda: (
            int(redis_server.command("--scan", "--pattern", "*:reader").count(b"\n"))
            >= SLOTS
        ),
        10,
        "B's readers to follow the turns",
    )

    (worker,) = producer.worker_pids()
    os.kill(worker, signal.SIGKILL)
    killed = time.monotonic()
    for thread in readers:
        thread.join(ENDED_WITHIN + 10)
    ended_after = {tid: at - killed for tid, (at, _) in results.items()}
    assert len(ended_after) == SLOTS

    # Slots and holds: B admits a new turn for the same client.
    def admitted() -> Turn | None:
        response = b.post(message="fake: stall_after=1 | after the kill")
        if response.status_code == 201:
            body = response.json()
            return Turn(
                body["id"],
                body["conversation_id"],
                body["stream_url"],
                body["cancel_url"],
            )
        assert response.status_code == 429, response.text
        assert response.json()["error"]["code"] in (
            "quota_exceeded",
            "too_many_streams",
        )
        return None

    new_turn = wait_for(
        admitted, FREED_WITHIN + 10, "a slot to be free again", every=0.1
    )
    freed_after = time.monotonic() - killed
    streamed = [text_of(events) for _, events in results.values()]
    tokens_now = day_tokens(redis_server)
    slots_now = held_slots(redis_server)
    b.cancel(new_turn)

    figures = {
        "turns_killed": SLOTS,
        "ended_after_seconds": sorted(round(s, 2) for s in ended_after.values()),
        "slot_free_after_seconds": round(freed_after, 2),
        "day_tokens_after": tokens_now,
        "streamed_chars": [len(t) for t in streamed],
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability-worker-kill.json").write_text(
        json.dumps(figures, indent=2)
    )
    print(figures)

    for _, events in results.values():
        assert [e.event for e in events][-2:] == ["error", "done"]
        assert data_of(events, "error")[0]["code"] == "internal"
        assert data_of(events, "done") == [{"finish_reason": "error"}]
    assert max(ended_after.values()) <= ENDED_WITHIN, figures
    assert freed_after <= FREED_WITHIN, figures
    # The dead turns are charged what they streamed (as a failed turn is,
    # four characters to a token); the new turn holds its own HOLD.
    assert tokens_now == sum(math.ceil(len(t) / 4) for t in streamed) + HOLD, figures
    assert slots_now == 1, figures
    # Nothing of the dead worker is left to reclaim.
    dead = f":{worker}:".encode()
    assert dead not in redis_server.command("--scan", "--pattern", "chatapp:limits:*")
    assert dead not in redis_server.command("SMEMBERS", "chatapp:limits:holders")
