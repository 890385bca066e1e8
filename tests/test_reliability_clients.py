"""The reliability battery: slow and greedy clients cannot starve others.

Run with ``pytest -m reliability``; figures go to artifacts/ for
RELIABILITY.md.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import time
from collections.abc import Iterator

import pytest
import requests

from chatapp.readers import READERS_PER_CLIENT
from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import wait_for
from tests.test_readers import RawReader

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

SLOW_BODIES = 200
GREEDY_READERS = 1000
# Readers spread over this many turns, so both caps come into play.
GREEDY_TURNS = 10
DEMO_DELAY_MS = 250
# Long enough to open them all and time the others on a busy 2-core machine.
BODY_SECONDS = 10.0
# Another client's requests must keep answering within this, meanwhile.
LATENCY_BOUND = 0.100


def record(name: str, figures: dict[str, float | int]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"reliability-{name}.json").write_text(json.dumps(figures, indent=1))


def gauge(service: Service, name: str) -> float:
    text = requests.get(service.url + "/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def timed_requests(service: Service, count: int) -> list[float]:
    """Time a health check and a chat POST, `count` times each."""
    client = ChatClient(service.url)
    seconds = []
    for _ in range(count):
        started = time.monotonic()
        assert requests.get(service.url + "/healthz", timeout=5).status_code == 200
        seconds.append(time.monotonic() - started)
        started = time.monotonic()
        assert client.post(message="hello").status_code == 201
        seconds.append(time.monotonic() - started)
    client.http.close()
    return seconds


def test_slow_bodies_do_not_slow_anyone_else(
    service_factory: ServiceFactory, sockets: list[socket.socket]
) -> None:
    service = service_factory(CHATAPP_BODY_READ_SECONDS=str(BODY_SECONDS))
    timed_requests(service, 2)  # warm up
    started = time.monotonic()
    for _ in range(SLOW_BODIES):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=15)
        sock.sendall(
            b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        sockets.append(sock)
    seconds = timed_requests(service, 20)
    assert time.monotonic() - started < BODY_SECONDS, "measured after the deadline"
    refused = sum(sock.recv(64).startswith(b"HTTP/1.1 408") for sock in sockets)
    worst = max(seconds)
    record(
        "slow-bodies",
        {
            "slow_bodies": SLOW_BODIES,
            "requests_timed": len(seconds),
            "p50_ms": round(statistics.median(seconds) * 1000, 1),
            "max_ms": round(worst * 1000, 1),
            "answered_408": refused,
        },
    )
    assert worst < LATENCY_BOUND, f"slowest answer {worst * 1000:.0f} ms"
    assert refused == SLOW_BODIES
    assert "Traceback" not in service.log()


def test_a_thousand_readers_from_one_client_are_capped(
    service_factory: ServiceFactory,
) -> None:
    # Answers that last about 20 s, so that all of them run the whole time.
    service = service_factory(
        CHATAPP_DEMO_DELAY_MS=str(DEMO_DELAY_MS), CHATAPP_TRUSTED_PROXY_HOPS="1"
    )
    alone = other_client_gaps(service)
    greedy = ChatClient(service.url)
    forwarded = {"X-Forwarded-For": "203.0.113.1"}
    turns = [greedy.start("hello", headers=forwarded) for _ in range(GREEDY_TURNS)]
    readers: list[RawReader] = []
    started = time.monotonic()
    try:
        for n in range(GREEDY_READERS):
            turn = turns[n % GREEDY_TURNS]
            reader = RawReader(service, turn.stream_url, "203.0.113.1")
            assert reader.until(b"event: start")
            readers.append(reader)
            if len(readers) > READERS_PER_CLIENT:
                # Keep our side tidy too: a reader the server closed is gone.
                readers.pop(0).close()
        opened = time.monotonic() - started
        # Readers that gave way notice at their next event or wake-up.
        wait_for(
            lambda: gauge(service, "chatapp_open_streams") <= READERS_PER_CLIENT,
            10,
            "the greedy client's readers to shrink to its cap",
            every=0.1,
        )
        settled = time.monotonic() - started - opened
        gaps = other_client_gaps(service)
    finally:
        for reader in readers:
            reader.close()
        greedy.http.close()
    record(
        "greedy-readers",
        {
            "readers_opened": GREEDY_READERS,
            "seconds_to_open": round(opened, 1),
            "turns": GREEDY_TURNS,
            "cap_per_client": READERS_PER_CLIENT,
            "seconds_to_shrink_to_cap": round(settled, 2),
            "demo_delay_ms": DEMO_DELAY_MS,
            "alone_gap_p50_ms": round(statistics.median(alone) * 1000, 1),
            "alone_gap_max_ms": round(max(alone) * 1000, 1),
            "beside_greedy_gap_p50_ms": round(statistics.median(gaps) * 1000, 1),
            "beside_greedy_gap_max_ms": round(max(gaps) * 1000, 1),
        },
    )
    # The other client's pace is unchanged: its median gap within 10 % of
    # the one it had alone, its worst within LATENCY_BOUND of its worst alone.
    assert statistics.median(gaps) <= statistics.median(alone) * 1.1
    assert max(gaps) <= max(alone) + LATENCY_BOUND
    assert "Traceback" not in service.log()


def other_client_gaps(service: Service) -> list[float]:
    """Run one turn for another client; return the seconds between its deltas."""
    other = ChatClient(service.url)
    turn = other.start("hello", headers={"X-Forwarded-For": "198.51.100.2"})
    reader = RawReader(service, turn.stream_url, "198.51.100.2")
    try:
        return delta_gaps(reader)
    finally:
        reader.close()
        other.http.close()


def delta_gaps(reader: RawReader) -> list[float]:
    """Read a stream to `done`; return the seconds between its deltas."""
    times: list[float] = []
    while b"event: done" not in reader.data:
        chunk = reader.sock.recv(65536)
        assert chunk, "the stream ended before done"
        reader.data += chunk
        times.extend([time.monotonic()] * chunk.count(b"event: delta"))
    return [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
