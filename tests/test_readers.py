"""Open readers per client and per turn are capped; the oldest gives way."""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import requests

from chatapp.web.readers import READERS_PER_CLIENT
from chatapp.web.readers import READERS_PER_TURN
from chatapp.web.readers import ReaderCaps
from chatapp.web.readers import ReaderSlot
from chatapp.web.readers import unsent_bytes
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

# -- the caps ------------------------------------------------------------------


class Closed:
    """Record which readers were made to give way."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def closer(self, name: str) -> Callable[[], None]:
        return lambda: self.names.append(name)


def test_a_turn_past_its_cap_closes_its_oldest_reader() -> None:
    caps = ReaderCaps(per_turn=2, per_client=10)
    closed = Closed()
    slots = [caps.acquire("c", "t", closed.closer(f"r{i}")) for i in range(4)]
    assert closed.names == ["r0", "r1"]
    assert [s.evicted for s in slots] == [True, True, False, False]
    assert caps.open_for_turn("t") == 2
    assert caps.evictions == 2


def test_an_evicted_reader_stops_counting_at_once() -> None:
    caps = ReaderCaps(per_turn=4, per_client=100)
    for i in range(30):
        caps.acquire("c", "t", lambda: None)
        assert caps.open == min(i + 1, 4)


def test_a_client_past_its_cap_closes_its_oldest_reader_of_any_turn() -> None:
    caps = ReaderCaps(per_turn=5, per_client=3)
    closed = Closed()
    for i in range(5):
        caps.acquire("c", f"t{i}", closed.closer(f"r{i}"))
    caps.acquire("other", "t0", closed.closer("x"))
    assert closed.names == ["r0", "r1"]
    assert caps.open_for_client("c") == 3
    assert caps.open_for_client("other") == 1


def test_a_released_reader_frees_its_place_and_forgets_empty_keys() -> None:
    caps = ReaderCaps(per_turn=1, per_client=1)
    closed = Closed()
    first = caps.acquire("c", "t", closed.closer("a"))
    caps.release(first)
    caps.release(first)
    second = caps.acquire("c", "t", closed.closer("b"))
    assert closed.names == []
    caps.release(second)
    assert caps.open_for_client("c") == caps.open_for_turn("t") == 0
    assert caps._by_turn == caps._by_client == {}
    assert caps.open == 0


def test_the_open_count_follows_every_acquire_eviction_and_release() -> None:
    caps = ReaderCaps(per_turn=2, per_client=3)
    slots = []
    for i in range(12):
        slots.append(caps.acquire(f"c{i % 4}", f"t{i % 3}", lambda: None))
        assert caps.open == sum(caps.open_for_turn(f"t{k}") for k in range(3))
    for slot in slots + slots:  # released twice, evicted ones too
        caps.release(slot)
        assert caps.open == sum(caps.open_for_turn(f"t{k}") for k in range(3))
    assert caps.open == 0


def test_the_caps_are_a_handful_per_turn_and_dozens_per_client() -> None:
    assert 2 <= READERS_PER_TURN <= 8
    assert 3 * READERS_PER_TURN <= READERS_PER_CLIENT <= 64
    assert isinstance(ReaderCaps().acquire("c", "t", lambda: None), ReaderSlot)


# -- through real gunicorn ----------------------------------------------------


class RawReader:
    """An event stream read off a raw socket, as little as a test needs."""

    def __init__(self, service: Service, path: str, forwarded: str = "") -> None:
        self.sock = socket.create_connection(("127.0.0.1", service.port), timeout=15)
        extra = f"X-Forwarded-For: {forwarded}\r\n" if forwarded else ""
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Accept: text/event-stream\r\n{extra}\r\n".encode()
        )
        self.data = b""

    def until(self, marker: bytes) -> bool:
        """Read until `marker` arrives (True) or the server closes (False)."""
        while marker not in self.data:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.data += chunk
        return True

    def closed_by_server(self) -> bool:
        """Read until the server closes; False if `done` came first."""
        return not self.until(b"event: done")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def readers() -> Iterator[list[RawReader]]:
    made: list[RawReader] = []
    yield made
    for reader in made:
        reader.close()


@pytest.mark.e2e
def test_a_turn_keeps_its_newest_readers(
    service_factory: ServiceFactory, readers: list[RawReader]
) -> None:
    service = service_factory(CHATAPP_DEMO_DELAY_MS="100")
    client = ChatClient(service.url)
    turn = client.start("hello")
    for _ in range(READERS_PER_TURN + 2):
        readers.append(RawReader(service, turn.stream_url))
        assert readers[-1].until(b"event: start")
    assert readers[0].closed_by_server()
    assert readers[1].closed_by_server()
    for survivor in readers[2:]:
        assert survivor.until(b"event: done")
    client.http.close()
    assert "Traceback" not in service.log()


@pytest.mark.e2e
def test_a_client_with_many_readers_cannot_starve_another(
    service_factory: ServiceFactory, readers: list[RawReader]
) -> None:
    service = service_factory(
        CHATAPP_DEMO_DELAY_MS="100", CHATAPP_TRUSTED_PROXY_HOPS="1"
    )
    greedy = ChatClient(service.url)
    extra = 3
    turns = (READERS_PER_CLIENT + extra) // READERS_PER_TURN + 1
    for _ in range(turns):
        turn = greedy.start("hello", headers={"X-Forwarded-For": "203.0.113.1"})
        for _ in range(READERS_PER_TURN):
            if len(readers) == READERS_PER_CLIENT + extra:
                break
            readers.append(RawReader(service, turn.stream_url, "203.0.113.1"))
            assert readers[-1].until(b"event: start")
    for evicted in readers[:extra]:
        assert evicted.closed_by_server()
    other = ChatClient(service.url)
    turn = other.start("hello", headers={"X-Forwarded-For": "198.51.100.2"})
    mine = RawReader(service, turn.stream_url, "198.51.100.2")
    readers.append(mine)
    assert mine.until(b"event: done")
    for survivor in readers[extra : READERS_PER_CLIENT + extra]:
        assert survivor.until(b"event: done")
    greedy.http.close()
    other.http.close()


def test_a_reader_whose_write_waits_past_the_send_timeout_is_dropped() -> None:
    caps = ReaderCaps(send_timeout=10)
    closed = Closed()
    stuck = caps.acquire("c", "t", closed.closer("stuck"))
    idle = caps.acquire("c", "t", closed.closer("idle"))
    writing = caps.acquire("d", "u", closed.closer("writing"))
    stuck.sending_since = 100.0
    writing.sending_since = 105.0
    assert caps.drop_stalled(now=109.9) == 0
    assert caps.drop_stalled(now=110.0) == 1
    assert closed.names == ["stuck"]
    assert stuck.evicted and not idle.evicted and not writing.evicted
    assert caps.open_for_turn("t") == 1
    assert caps.stalls == 1


@contextlib.contextmanager
def tcp_pair(rcvbuf: int = 4096) -> Iterator[tuple[socket.socket, socket.socket]]:
    """A server-side and a client-side socket over 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    with server, client:
        yield server, client


def write_unsent(caps: ReaderCaps, slot: ReaderSlot, server: socket.socket) -> None:
    """Write through `sending` until bytes wait unsent in the server's socket."""
    server.setblocking(False)
    chunk = b"x" * 65536
    while unsent_bytes(server.fileno()) == 0:
        for piece in caps.sending(slot, iter([chunk])):
            with contextlib.suppress(BlockingIOError):
                server.send(piece)


def test_a_reader_whose_bytes_wait_untaken_is_dropped_at_the_send_timeout() -> None:
    # No write blocks here: the kernel holds what the client did not take.
    caps = ReaderCaps(send_timeout=10)
    closed = Closed()
    with tcp_pair() as (server, _client):
        slot = caps.acquire("c", "t", closed.closer("untaken"), server.fileno())
        write_unsent(caps, slot, server)
        assert slot.sending_since is None and unsent_bytes(server.fileno()) > 0
        assert caps.drop_stalled(now=100.0) == 0  # first seen waiting
        assert caps.drop_stalled(now=109.9) == 0
        assert caps.drop_stalled(now=110.0) == 1
    assert closed.names == ["untaken"] and slot.evicted and caps.stalls == 1


def test_a_reader_that_takes_bytes_is_not_dropped() -> None:
    caps = ReaderCaps(send_timeout=10)
    closed = Closed()
    with tcp_pair() as (server, client):
        slot = caps.acquire("c", "t", closed.closer("slow"), server.fileno())
        write_unsent(caps, slot, server)
        assert caps.drop_stalled(now=100.0) == 0
        before = unsent_bytes(server.fileno())
        client.settimeout(5)
        # The client reads: the kernel's queue shrinks once it says so.
        wait_for(
            lambda: client.recv(65536) and unsent_bytes(server.fileno()) < before,
            10,
            "the server's queue to shrink",
        )
        assert caps.drop_stalled(now=109.0) == 0  # progress: the wait restarts
        assert caps.drop_stalled(now=118.9) == 0
        assert unsent_bytes(server.fileno()) > 0
        assert caps.drop_stalled(now=119.0) == 1
    assert closed.names == ["slow"]


def test_a_reader_with_nothing_unsent_is_never_dropped() -> None:
    caps = ReaderCaps(send_timeout=10)
    closed = Closed()
    with tcp_pair() as (server, _client):
        slot = caps.acquire("c", "t", closed.closer("idle"), server.fileno())
        for piece in caps.sending(slot, iter([b"data: hi\n\n"])):
            server.sendall(piece)
        wait_for(lambda: unsent_bytes(server.fileno()) == 0, 10, "the bytes to go")
        assert caps.drop_stalled(now=100.0) == 0
        assert caps.drop_stalled(now=1000.0) == 0
    assert closed.names == [] and not slot.evicted


def test_sending_marks_a_chunk_only_while_the_server_writes_it() -> None:
    caps = ReaderCaps()
    slot = caps.acquire("c", "t", lambda: None)
    chunks = caps.sending(slot, iter([b"a", b"b"]))
    assert slot.sending_since is None
    assert next(chunks) == b"a"
    assert slot.sending_since is not None
    assert next(chunks) == b"b"
    assert list(chunks) == []
    assert slot.sending_since is None


def test_sending_closes_its_source_then_calls_on_close_once() -> None:
    caps = ReaderCaps()
    slot = caps.acquire("c", "t", lambda: None)
    happened: list[str] = []

    def source() -> Iterator[bytes]:
        try:
            yield b"a"
            yield b"b"
        finally:
            happened.append("source closed")

    chunks = caps.sending(slot, source(), lambda: happened.append("on_close"))
    assert next(chunks) == b"a"
    chunks.close()
    chunks.close()
    assert happened == ["source closed", "on_close"]
    assert slot.sending_since is None
    # Unstarted, it still calls on_close (the server closes every body).
    unstarted = caps.sending(slot, source(), lambda: happened.append("again"))
    unstarted.close()
    assert happened[-1] == "again"


def test_sending_edits_chunks_until_one_is_edited() -> None:
    caps = ReaderCaps()
    slot = caps.acquire("c", "t", lambda: None)
    seen: list[bytes] = []

    def edit(chunk: bytes) -> bytes | None:
        seen.append(chunk)
        return chunk.upper() if chunk.startswith(b"s") else None

    chunks = caps.sending(slot, iter([b"r", b"s1", b"s2"]), edit=edit)
    assert list(chunks) == [b"r", b"S1", b"s2"]
    assert seen == [b"r", b"s1"]


@pytest.mark.e2e
def test_a_client_that_never_reads_is_dropped_at_the_send_timeout(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    timeout = 2.0
    service = service_factory(
        **openai_settings(fake_provider),
        CHATAPP_STREAM_SEND_TIMEOUT=str(timeout),
        CHATAPP_MAX_OUTPUT_TOKENS="300000",  # answers up to 9.6 MB
    )
    # About 8 MB in 2 KB pieces over 20 s: far more than any socket buffers.
    fake_provider.enqueue(Behaviour(text="x" * 8_000_000, pieces=2000, delay_ms=5))
    client = ChatClient(service.url)
    turn = client.start("hello")
    sock = stuck_reader(service, turn.stream_url)
    started = time.monotonic()
    try:
        wait_for(lambda: open_streams(service) == 1, 10, "the reader to open")
        wait_for(
            lambda: open_streams(service) == 0,
            timeout + 15,
            "the stuck reader to be dropped",
            every=0.1,
        )
        dropped = time.monotonic() - started
        # The turn goes on; only the reader that took nothing was ended.
        assert client.cancel(turn).status_code == 202
        assert dropped >= timeout
        sock.settimeout(10)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        assert 0 < received < 8_000_000
    finally:
        sock.close()
        client.http.close()
    assert "Traceback" not in service.log()


def stuck_reader(service: Service, path: str, rcvbuf: int = 4096) -> socket.socket:
    """Open an event stream on a small receive buffer and never read it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", service.port))
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    return sock


def open_streams(service: Service) -> float:
    text = requests.get(service.url + "/metrics", timeout=5).text
    found = re.search(r"^chatapp_open_streams (\S+)$", text, re.MULTILINE)
    assert found is not None
    return float(found.group(1))


@pytest.mark.e2e
def test_polls_count_against_the_reader_caps(
    service_factory: ServiceFactory, readers: list[RawReader]
) -> None:
    # A poll holds a greenlet for up to 25 s, as a stream does: a client
    # hammering polls gets no more waiting than its cap; the oldest give way
    # as streams do (closed, their greenlets freed at once; a page polls again).
    cap = 4
    service = service_factory(
        CHATAPP_DEMO_DELAY_MS="8000", CHATAPP_READERS_PER_CLIENT=str(cap)
    )
    client = ChatClient(service.url)
    turns = [client.start("hello") for _ in range(3)]
    polls = 3 * cap
    for n in range(polls):
        path = turns[n % 3].stream_url + "&poll=1&last_event_id=1"
        readers.append(RawReader(service, path))
    for oldest in readers[: polls - cap]:
        assert not oldest.until(b'"done"'), "answered instead of giving way"
    for newest in readers[polls - cap :]:
        newest.sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            newest.sock.recv(1)
    client.http.close()
    assert "Traceback" not in service.log()


@pytest.mark.e2e
def test_evicted_readers_leave_room_for_another_clients_turn_at_once(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    readers: list[RawReader],
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_WORKER_MAX_STREAMS="20",
            CHATAPP_TRUSTED_PROXY_HOPS="1",
        )
    )
    greedy = ChatClient(service.url)
    turn = greedy.start(
        "fake: stall_after=1 | one two", headers={"X-Forwarded-For": "203.0.113.1"}
    )
    # 30 readers of one turn: the per-turn cap evicts 26 as they come. The
    # turn is silent, so their greenlets have nothing to write that would
    # tell them; the count must not wait for them.
    for _ in range(30):
        readers.append(RawReader(service, turn.stream_url, "203.0.113.1"))
        assert readers[-1].until(b"event: start")
    other = ChatClient(service.url)
    response = other.post(
        message="fake: | hello", headers={"X-Forwarded-For": "198.51.100.2"}
    )
    assert response.status_code == 201, response.text
    assert greedy.cancel(turn).status_code == 202
    greedy.http.close()
    other.http.close()
