"""The reliability battery: slow and greedy clients cannot starve others.

Run with ``pytest -m reliability``; figures go to artifacts/ for
RELIABILITY.md.

The tests assert what happens: other clients are answered while the crowd
is held, and their streams come whole. How fast they are answered, alone
and beside the crowd, is recorded with the figures; other tests running
beside these would blur it, so ``bench/slow_clients.py`` runs them alone
and holds the latencies to their bounds.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from chatapp.web.readers import READERS_PER_CLIENT
from chatapp.web.readers import READERS_PER_TURN
from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.test_readers import RawReader

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

SLOW_BODIES = 200
GREEDY_READERS = 1000
# Readers spread over this many turns, so both caps come into play.
GREEDY_TURNS = 10
DEMO_DELAY_MS = 250
# Long enough to open them all and time the others on a busy 2-core machine.
BODY_SECONDS = 10.0


def record(name: str, figures: dict[str, float | int]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"reliability-{name}.json").write_text(json.dumps(figures, indent=1))


def gauge(service: Service, name: str) -> float:
    # A worker holding hundreds of streams on a busy machine may take a while.
    text = requests.get(service.url + "/metrics", timeout=30).text
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
    timed_in = time.monotonic() - started
    # Every other request was answered while all the slow bodies were held:
    # none of them has had its answer yet (a worker stuck reading one would
    # have answered the others only after the deadline).
    answered_early = sum(answered(sock) for sock in sockets)
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
            "seconds_to_open_and_time": round(timed_in, 1),
        },
    )
    assert answered_early == 0, "slow bodies answered before the others were"
    assert refused == SLOW_BODIES
    assert "Traceback" not in service.log()


def answered(sock: socket.socket) -> bool:
    """True when the server has sent something on `sock` (read nothing)."""
    sock.setblocking(False)
    try:
        return bool(sock.recv(1, socket.MSG_PEEK))
    except BlockingIOError:
        return False
    finally:
        sock.settimeout(15)


def test_a_thousand_readers_from_one_client_are_capped(
    service_factory: ServiceFactory,
) -> None:
    # Answers that last about 20 s, so that all of them run the whole time.
    service = service_factory(
        CHATAPP_DEMO_DELAY_MS=str(DEMO_DELAY_MS), CHATAPP_TRUSTED_PROXY_HOPS="1"
    )
    alone, alone_deltas = other_client_gaps(service)
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
        # Another client, beside the greedy one at its cap: its stream comes
        # whole, every delta and `done`.
        gaps, deltas = other_client_gaps(service)
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
    assert deltas == alone_deltas > 10
    assert "Traceback" not in service.log()


def other_client_gaps(service: Service) -> tuple[list[float], int]:
    """Run one turn for another client; its gaps between deltas, and deltas."""
    other = ChatClient(service.url)
    turn = other.start("hello", headers={"X-Forwarded-For": "198.51.100.2"})
    reader = RawReader(service, turn.stream_url, "198.51.100.2")
    try:
        return delta_gaps(reader)
    finally:
        reader.close()
        other.http.close()


def delta_gaps(reader: RawReader) -> tuple[list[float], int]:
    """Read a stream to `done`; the seconds between its deltas, and deltas."""
    times: list[float] = []
    while b"event: done" not in reader.data:
        chunk = reader.sock.recv(65536)
        assert chunk, "the stream ended before done"
        reader.data += chunk
        times.extend([time.monotonic()] * chunk.count(b"event: delta"))
    gaps = [b - a for a, b in zip(times, times[1:], strict=False) if b > a]
    return gaps, len(times)


# -- readers that never read ---------------------------------------------------

STUCK_READERS = 500
STUCK_TURNS = STUCK_READERS // READERS_PER_TURN
# Long answers of 1,200-character pieces, 300 ms apart: 4 KB a second per
# turn, about 120 s, so they outlast the send timeout by far: a reader
# dropped while its turn still runs was dropped by the send timeout, not by
# the turn's end. They are cancelled once that is seen.
STUCK_ANSWER = Behaviour(text="x" * 480_000, pieces=1200, delay_ms=300)
NORMAL_READERS = 4
NORMAL_ANSWER = Behaviour(text="word " * 80, pieces=5, delay_ms=100)
NORMAL_DELTAS = 80
SEND_TIMEOUT = 20.0
# Worker memory per stuck stream: a parked greenlet, its request and the one
# chunk it is writing (here at most the ~40 KB of frames the turn had when it
# joined). 256 KiB leaves room for allocator slack on a busy machine.
RSS_PER_STREAM_BOUND = 256 * 1024


def test_five_hundred_readers_that_never_read_are_bounded_and_slow_no_one(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    sockets: list[socket.socket],
) -> None:
    service = service_factory(
        **openai_settings(fake_provider),
        CHATAPP_READERS_PER_CLIENT="1000",
        CHATAPP_STREAM_SEND_TIMEOUT=str(SEND_TIMEOUT),
        CHATAPP_MAX_OUTPUT_TOKENS="10000",
    )
    (worker,) = service.worker_pids()
    client = ChatClient(service.url)
    for _ in range(STUCK_TURNS):
        fake_provider.enqueue(STUCK_ANSWER)
    turns = [client.start("hello") for _ in range(STUCK_TURNS)]
    fake_provider.wait_for_stream_start(STUCK_TURNS, timeout=30)
    alone, alone_deltas = normal_gaps(service, fake_provider)
    rss_before = rss_bytes(worker)
    kernel_before = tcp_kernel_pages()
    started = time.monotonic()
    for n in range(STUCK_READERS):
        # From event 0: each first write is the answer so far (~40 KB), more
        # than the buffers of a client whose receive window is 4 KB.
        sockets.append(stuck_reader(service, turns[n // READERS_PER_TURN].stream_url))
    wait_for(
        lambda: blocked_sockets(service.port) >= STUCK_READERS,
        30,
        "every stuck reader's socket buffers to fill",
        every=0.2,
    )
    stuck_at = time.monotonic()
    rss_stuck = rss_bytes(worker)
    kernel_stuck = tcp_kernel_pages()
    # Normal readers beside the stuck ones: each stream comes whole.
    beside, deltas = normal_gaps(service, fake_provider)
    assert gauge(service, "chatapp_open_streams") >= STUCK_READERS
    # Then the send timeout ends every one of them, and only them.
    wait_for(
        lambda: gauge(service, "chatapp_open_streams") == 0,
        SEND_TIMEOUT + 20,
        "the stuck readers to be dropped",
        every=0.25,
    )
    dropped_after = time.monotonic() - stuck_at
    # Every stuck turn is still answering: the drops were the send timeout's.
    still_answering = fake_provider.open_streams
    rss_after = rss_bytes(worker)
    closed = sum(closed_by_server(sock) for sock in sockets[:20])
    per_stream = (rss_stuck - rss_before) / STUCK_READERS
    record(
        "stuck-readers",
        {
            "stuck_readers": STUCK_READERS,
            "turns": STUCK_TURNS,
            "seconds_to_open_and_fill": round(stuck_at - started, 1),
            "worker_rss_before_mib": round(rss_before / 2**20, 1),
            "worker_rss_stuck_mib": round(rss_stuck / 2**20, 1),
            "worker_rss_after_drop_mib": round(rss_after / 2**20, 1),
            "rss_per_stuck_stream_kib": round(per_stream / 1024, 1),
            "kernel_tcp_mib_before": round(kernel_before * 4096 / 2**20, 1),
            "kernel_tcp_mib_stuck": round(kernel_stuck * 4096 / 2**20, 1),
            "normal_gap_p50_ms_alone": round(statistics.median(alone) * 1000, 1),
            "normal_gap_p50_ms_beside": round(statistics.median(beside) * 1000, 1),
            "normal_gap_max_ms_alone": round(max(alone) * 1000, 1),
            "normal_gap_max_ms_beside": round(max(beside) * 1000, 1),
            "send_timeout_s": SEND_TIMEOUT,
            "seconds_from_stuck_to_all_dropped": round(dropped_after, 1),
            "turns_still_answering_at_the_drop": still_answering,
            "sampled_sockets_closed_by_server": closed,
        },
    )
    assert per_stream < RSS_PER_STREAM_BOUND, f"{per_stream / 1024:.0f} KiB a stream"
    # Beside them, the normal readers got as many deltas as alone, to `done`.
    assert deltas == alone_deltas == NORMAL_READERS * NORMAL_DELTAS
    # Dropped by the send timeout, counted from a full buffer: not held on.
    assert dropped_after <= SEND_TIMEOUT + 20
    assert still_answering == STUCK_TURNS
    assert closed == 20
    for turn in turns:
        assert client.cancel(turn).status_code == 202
    assert fake_provider.wait_all_closed(15)
    client.http.close()
    assert "Traceback" not in service.log()


def normal_gaps(service: Service, fake: FakeProvider) -> tuple[list[float], int]:
    """Run NORMAL_READERS turns read at once; all their delta gaps, and deltas."""
    other = ChatClient(service.url)
    for _ in range(NORMAL_READERS):
        fake.enqueue(NORMAL_ANSWER)
    turns = [other.start("hello") for _ in range(NORMAL_READERS)]
    readers = [RawReader(service, turn.stream_url) for turn in turns]
    gaps: list[float] = []
    deltas = 0
    try:
        with ThreadPoolExecutor(NORMAL_READERS) as pool:
            for found, count in pool.map(delta_gaps, readers):
                gaps.extend(found)
                deltas += count
    finally:
        for reader in readers:
            reader.close()
        other.http.close()
    return gaps, deltas


def stuck_reader(service: Service, path: str) -> socket.socket:
    """Open an event stream with a 4 KB receive buffer, and never read it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", service.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def blocked_sockets(port: int) -> int:
    """Count the server's connections whose client window is full (tx queued)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, queues = fields[1], fields[4]
        if int(local.split(":")[1], 16) == port and int(queues.split(":")[0], 16):
            count += 1
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tcp_kernel_pages() -> int:
    """Pages the kernel holds for TCP buffers, host-wide (/proc/net/sockstat)."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1])
    return 0


def closed_by_server(sock: socket.socket) -> bool:
    """Drain what the server managed to send; True when it then closed."""
    sock.settimeout(10)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True
