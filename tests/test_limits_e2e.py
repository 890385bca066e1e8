"""Rate limits, stream caps, token budgets and capacity through real gunicorn."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator

import pytest
import requests

from chatapp.turns.supervise import LEASE_SECONDS
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

pytestmark = pytest.mark.e2e

# A database of its own, so flushing it between tests touches nobody else.
LIMITS_DB = 7
STALL = "fake: stall_after=1 | one two three four five six"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.command("-n", str(LIMITS_DB), "FLUSHDB")
    return f"redis://127.0.0.1:{redis_server.port}/{LIMITS_DB}"


def redis_get(redis_server: RedisServer, key: str) -> str:
    raw = redis_server.command("-n", str(LIMITS_DB), "GET", key)
    return raw.decode().strip()


def token_key(client: str) -> str:
    day = time.strftime("%Y%m%d", time.gmtime())
    return f"chatapp:limits:tokens:{day}:{client}"


def wait_charged(redis_server: RedisServer, client: str, tokens: int) -> None:
    """Wait until the client's day shows `tokens` (turns settle as they end)."""
    key = token_key(client)
    wait_for(
        lambda: redis_get(redis_server, key) == str(tokens),
        5,
        f"{tokens} tokens to be charged to {client}",
    )


def seconds_to_utc_midnight() -> float:
    return 86400 - time.time() % 86400


def error_code(response: requests.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def assert_refusal(response: requests.Response, status: int, code: str) -> int:
    """Check one of SPEC's JSON refusals; return its Retry-After."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert error_code(response) == code
    assert response.json()["error"]["message"]
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1
    return int(retry_after)


def accepted_within(client: ChatClient, message: str, timeout: float) -> Turn:
    """Post until a turn is accepted; only `too_many_streams` may refuse it."""
    found: list[Turn] = []

    def attempt() -> bool:
        response = client.post(message=message)
        if response.status_code == 201:
            body = response.json()
            found.append(
                Turn(
                    body["id"],
                    body["conversation_id"],
                    body["stream_url"],
                    body["cancel_url"],
                )
            )
            return True
        assert error_code(response) in ("too_many_streams", "over_capacity")
        return False

    wait_for(attempt, timeout, "a turn to be accepted", every=0.1)
    return found[0]


@pytest.fixture
def clients(service_factory: ServiceFactory) -> Iterator[Callable[[str], ChatClient]]:
    """Make browser-like clients; close their connections before services stop.

    gunicorn's graceful stop waits for idle keep-alive connections to time out.
    """
    made: list[ChatClient] = []

    def make(url: str) -> ChatClient:
        made.append(ChatClient(url))
        return made[-1]

    yield make
    for client in made:
        client.http.close()


@pytest.fixture
def stalled(
    fake_provider: FakeProvider, clients: Callable[[str], ChatClient]
) -> Iterator[list[tuple[ChatClient, Turn]]]:
    """Turns kept generating by a stalled upstream; cancelled at teardown."""
    turns: list[tuple[ChatClient, Turn]] = []
    yield turns
    for client, turn in turns:
        client.cancel(turn)
    fake_provider.wait_all_closed(5)


# -- rate limits -----------------------------------------------------------------------


def test_turn_past_the_rate_limit_gets_429_with_retry_after(
    service_factory: ServiceFactory, clients: Callable[[str], ChatClient]
) -> None:
    service = service_factory(
        CHATAPP_RATE_LIMITS="3/minute;100/day", CHATAPP_MAX_STREAMS_PER_CLIENT="50"
    )
    client = clients(service.url)
    first_at = time.time()
    turns = []
    for _ in range(3):
        response = client.post(message="hello")
        assert response.status_code == 201, response.text
        # A success says what is left (the RateLimit fields), not the old ones.
        assert "X-RateLimit-Remaining" not in response.headers
        assert response.headers["RateLimit"].startswith(
            f'"3 per 1 minute";r={2 - len(turns)};t='
        )
        turns.append(response.json())
    refused = client.post(message="one too many")
    retry_after = assert_refusal(refused, 429, "rate_limited")
    # The moving window frees a place when the first of the three turns is a
    # minute old.
    expected = first_at + 60 - time.time()
    assert expected - 2 <= retry_after <= expected + 2
    assert refused.headers["X-RateLimit-Limit"] == "3"
    assert refused.headers["X-RateLimit-Remaining"] == "0"
    reset = int(refused.headers["X-RateLimit-Reset"])
    assert first_at + 60 - 2 <= reset <= first_at + 60 + 2

    # Never on the stream URL, health or readiness.
    stream = client.http.get(service.url + turns[0]["stream_url"], timeout=10)
    assert stream.status_code == 200
    assert stream.headers["Content-Type"].startswith("text/event-stream")
    for path in ("/healthz", "/readyz"):
        for _ in range(5):
            assert client.http.get(service.url + path, timeout=5).status_code == 200


def test_validation_answers_before_the_rate_limit(
    service_factory: ServiceFactory, clients: Callable[[str], ChatClient]
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="1/minute")
    client = clients(service.url)
    client.start("the only one")
    assert_refusal(client.post(message="again"), 429, "rate_limited")
    cases = [
        ({"message": "   "}, 400, "invalid_input"),
        ({"message": "x" * 5000}, 400, "message_too_long"),
        ({"message": "hi", "token": "forged"}, 403, "invalid_token"),
        ({"message": "hi", "conversation_id": "no-such-conversation"}, 404, None),
    ]
    for fields, status, code in cases:
        response = client.post(**fields)
        assert response.status_code == status, response.text
        if code is not None:
            assert error_code(response) == code
        assert "Retry-After" not in response.headers


def test_token_refresh_has_a_limit_of_its_own(
    service_factory: ServiceFactory, clients: Callable[[str], ChatClient]
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="5/minute")
    client = clients(service.url)
    url = service.url + "/api/token"
    for _ in range(30):
        assert client.http.post(url, json={"token": client.token}).status_code == 200
    assert_refusal(
        client.http.post(url, json={"token": client.token}), 429, "rate_limited"
    )
    assert client.post(message="chat is counted apart").status_code == 201


@pytest.mark.redis
def test_two_services_on_one_redis_share_one_limit(
    service_factory: ServiceFactory,
    redis_url: str,
    clients: Callable[[str], ChatClient],
) -> None:
    settings = {
        "CHATAPP_REDIS_URL": redis_url,
        "CHATAPP_RATE_LIMITS": "3/minute",
        "CHATAPP_MAX_STREAMS_PER_CLIENT": "50",
    }
    a = clients(service_factory(**settings).url)
    b = clients(service_factory(**settings).url)
    assert a.post(message="one").status_code == 201
    assert b.post(message="two").status_code == 201
    assert a.post(message="three").status_code == 201
    assert_refusal(b.post(message="four"), 429, "rate_limited")
    assert_refusal(a.post(message="five"), 429, "rate_limited")


# -- who a client is -------------------------------------------------------------------


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies(
    service_factory: ServiceFactory, clients: Callable[[str], ChatClient]
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="2/minute")
    client = clients(service.url)
    for n in (1, 2):
        forged = {"X-Forwarded-For": f"10.0.0.{n}"}
        assert client.post(message="hi", headers=forged).status_code == 201
    fresh = {"X-Forwarded-For": "10.0.0.3"}
    assert_refusal(client.post(message="hi", headers=fresh), 429, "rate_limited")


def test_forwarded_for_counts_the_last_trusted_hop(
    service_factory: ServiceFactory, clients: Callable[[str], ChatClient]
) -> None:
    service = service_factory(
        CHATAPP_RATE_LIMITS="2/minute", CHATAPP_TRUSTED_PROXY_HOPS="1"
    )
    client = clients(service.url)
    visitor = {"X-Forwarded-For": "203.0.113.7"}
    assert client.post(message="hi", headers=visitor).status_code == 201
    assert client.post(message="hi", headers=visitor).status_code == 201
    assert_refusal(client.post(message="hi", headers=visitor), 429, "rate_limited")
    # The visitor prepends an address of its choice; our proxy appends the
    # real one, and only that one is trusted.
    spoofed = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
    assert_refusal(client.post(message="hi", headers=spoofed), 429, "rate_limited")
    other = {"X-Forwarded-For": "198.51.100.9"}
    assert client.post(message="hi", headers=other).status_code == 201


@pytest.mark.parametrize(
    ("why", "forwarded"),
    [
        ("an IPv4 address with its source port", "203.0.113.7:{n}"),
        ("a bracketed IPv6 address with a port", "[2001:db8::7]:{n}"),
        ("IPv6 addresses of one /56", "2001:db8:0:{n:x}::1"),
        ("text that is no address at all", "client-{n}.example"),
    ],
)
def test_a_port_or_garbage_in_forwarded_for_buys_no_fresh_limits(
    service_factory: ServiceFactory,
    clients: Callable[[str], ChatClient],
    why: str,
    forwarded: str,
) -> None:
    """Some load balancers write a port; each connection has its own. The
    client is the address, whatever the port; what does not parse at all is
    one shared client, never one per distinct text."""
    service = service_factory(
        CHATAPP_RATE_LIMITS="2/minute", CHATAPP_TRUSTED_PROXY_HOPS="1"
    )
    client = clients(service.url)
    statuses = [
        client.post(
            message="hi", headers={"X-Forwarded-For": forwarded.format(n=n)}
        ).status_code
        for n in range(40001, 40009)
    ]
    assert statuses == [201, 201] + [429] * 6, why
    other = {"X-Forwarded-For": "198.51.100.9"}
    assert client.post(message="hi", headers=other).status_code == 201


# -- turns generating at once, and this worker's capacity ------------------------------


@pytest.mark.parametrize(
    "store", ["memory", pytest.param("redis", marks=pytest.mark.redis)]
)
def test_too_many_streams_until_one_ends(
    request: pytest.FixtureRequest,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    stalled: list[tuple[ChatClient, Turn]],
    store: str,
    clients: Callable[[str], ChatClient],
) -> None:
    extra = {"CHATAPP_MAX_STREAMS_PER_CLIENT": "2"}
    if store == "redis":
        extra["CHATAPP_REDIS_URL"] = request.getfixturevalue("redis_url")
    service = service_factory(**openai_settings(fake_provider, **extra))
    client = clients(service.url)
    for _ in range(2):
        stalled.append((client, client.start(STALL)))
    fake_provider.wait_for_stream_start(2)
    retry_after = assert_refusal(client.post(message="third"), 429, "too_many_streams")
    assert retry_after <= 10
    # A new visitor id from the same address is the same client.
    assert_refusal(
        clients(service.url).post(message="new visitor id"), 429, "too_many_streams"
    )

    first = stalled[0][1]
    assert client.cancel(first).status_code == 202
    assert data_of(client.events(first), "done") == [{"finish_reason": "cancelled"}]
    stalled.append((client, accepted_within(client, STALL, 5)))
    assert_refusal(client.post(message="fourth"), 429, "too_many_streams")


def test_over_capacity_counts_the_larger_of_producers_and_readers(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    stalled: list[tuple[ChatClient, Turn]],
    clients: Callable[[str], ChatClient],
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_WORKER_MAX_STREAMS="3",
            CHATAPP_MAX_STREAMS_PER_CLIENT="10",
        )
    )
    client = clients(service.url)
    # Three turns generating with nobody reading them fill the worker.
    for _ in range(3):
        stalled.append((client, client.start(STALL)))
    fake_provider.wait_for_stream_start(3)
    assert_refusal(client.post(message="fourth"), 503, "over_capacity")
    assert client.http.get(service.url + "/healthz", timeout=5).status_code == 200
    for c, turn in stalled[-3:]:
        c.cancel(turn)
    # One turn with three readers fills it too.
    stalled.append((client, accepted_within(client, STALL, 10)))
    readers = [client.open_stream(stalled[-1][1]) for _ in range(3)]
    # Keep the chunk iterators: urllib3 closes a connection when one is dropped.
    chunks = [r.raw.stream(16, decode_content=False) for r in readers]
    try:
        for chunk in chunks:
            assert next(chunk).startswith(b"retry:")  # the reader is counted now
        retry_after = assert_refusal(client.post(message="again"), 503, "over_capacity")
        assert retry_after <= 30
    finally:
        for reader in readers:
            reader.close()
    stalled[-1][0].cancel(stalled[-1][1])
    stalled.append((client, accepted_within(client, STALL, 10)))


@pytest.mark.redis
def test_a_killed_workers_stream_slot_frees_itself(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_url: str,
    stalled: list[tuple[ChatClient, Turn]],
    clients: Callable[[str], ChatClient],
) -> None:
    total = 60.0
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=redis_url,
            CHATAPP_WORKERS="1",
            CHATAPP_MAX_STREAMS_PER_CLIENT="1",
            CHATAPP_UPSTREAM_TOTAL_TIMEOUT=str(total),
            CHATAPP_UPSTREAM_IDLE_TIMEOUT=str(total),
        )
    )
    client = clients(service.url)
    client.start(STALL)
    assert_refusal(client.post(message="second"), 429, "too_many_streams")
    [worker] = service.worker_pids()
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: service.worker_pids() not in ([], [worker]), 10, "a new worker")
    wait_for(lambda: _healthy(service), 10, "the new worker to serve")
    # The slot is held in Redis, not in the dead worker. The new worker
    # frees it once the dead one's lease lapses (turns/admit.py), long
    # before the turn's deadline would have.
    stalled.append((client, accepted_within(client, STALL, 15)))
    held_for = time.monotonic() - killed_at
    assert held_for < LEASE_SECONDS + 4, held_for


def _healthy(service: Service) -> bool:
    try:
        return requests.get(service.url + "/healthz", timeout=1).status_code == 200
    except requests.RequestException:
        return False


# -- daily token budgets ---------------------------------------------------------------


@pytest.mark.redis
def test_budget_is_spent_by_streamed_usage(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
    redis_url: str,
    clients: Callable[[str], ChatClient],
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=redis_url,
            CHATAPP_DAILY_TOKEN_BUDGET="30",
            CHATAPP_MAX_OUTPUT_TOKENS="5",
        )
    )
    client = clients(service.url)
    spent = 0
    # Each answer reports 10 input + 5 output tokens; only 5 are held at start,
    # so the budget runs out only if the reported usage is what is charged.
    for _ in range(2):
        _, events = client.answer("fake: pieces=3 | abcdefghijklmno")
        [usage] = data_of(events, "usage")
        spent += usage["input_tokens"] + usage["output_tokens"]
        wait_charged(redis_server, "ip:127.0.0.1", spent)
    # Holds alone (3 x 5 <= 30) would admit a third turn; the reported usage
    # does not.
    assert spent + 5 > 30
    refused = client.post(message="over budget")
    retry_after = assert_refusal(refused, 429, "quota_exceeded")
    assert abs(retry_after - seconds_to_utc_midnight()) <= 5


@pytest.mark.redis
def test_budget_is_spent_by_a_cancelled_turn(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
    redis_url: str,
    clients: Callable[[str], ChatClient],
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_REDIS_URL=redis_url,
            CHATAPP_DAILY_TOKEN_BUDGET="54",
            CHATAPP_MAX_OUTPUT_TOKENS="5",
        )
    )
    client = clients(service.url)
    turn = client.start("fake: stall_after=2 pieces=200 | " + "x" * 400)
    head = client.events(turn, limit=2)
    assert [e.event for e in head] == ["start", "delta"]
    assert client.cancel(turn).status_code == 202
    events = head + client.events(turn, last_event_id=2)
    assert data_of(events, "done") == [{"finish_reason": "cancelled"}]
    assert data_of(events, "usage") == []
    estimate = math.ceil(len(text_of(events)) / 4)
    assert estimate == 50
    wait_charged(redis_server, "ip:127.0.0.1", estimate)
    # 50 spent + 5 held by a new turn would pass 54.
    assert_refusal(client.post(message="one more"), 429, "quota_exceeded")


def test_a_cached_replay_spends_nothing_and_holds_no_slot(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    clients: Callable[[str], ChatClient],
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider,
            CHATAPP_CACHE_TTL="60",
            CHATAPP_DAILY_TOKEN_BUDGET="30",
            CHATAPP_MAX_OUTPUT_TOKENS="5",
            CHATAPP_MAX_STREAMS_PER_CLIENT="1",
        )
    )
    client = clients(service.url)
    question = "fake: pieces=3 | abcdefghijklmno"
    _, paid = client.answer(question)
    [usage] = data_of(paid, "usage")
    spent = usage["input_tokens"] + usage["output_tokens"]
    # Room for a turn after the paid one; but were replays charged even their
    # text (15 characters, 4 tokens), two of them would leave no room for a
    # third one's hold.
    assert spent + 5 <= 30 < spent + 2 * 4 + 5
    for _ in range(3):
        _, replay = client.answer(question)
        assert data_of(replay, "start")[0]["cached"] is True
        assert text_of(replay) == text_of(paid)
    assert len(fake_provider.requests) == 1


# -- Redis going away and coming back --------------------------------------------------


class Trickle:
    """A steady flow of limited requests from many visitors, answers recorded."""

    def __init__(self, visitors: list[tuple[Service, str]]) -> None:
        self.tokens = visitors
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickle:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            service, token = self.tokens[n % len(self.tokens)]
            response = refresh(service, f"10.9.{n % 250}.1", token)
            self.statuses.append(response.status_code)
            self._stop.wait(0.05)

    def server_errors(self) -> list[int]:
        return [status for status in self.statuses if status >= 500]


def refresh(service: Service, address: str, token: str = "x") -> requests.Response:
    """Ask for a token refresh as a visitor at `address` behind our proxy."""
    return requests.post(
        service.url + "/api/token",
        json={"token": token},
        headers={"X-Forwarded-For": address},
        timeout=10,
    )


def headroom(service: Service, address: str, most: int = 30) -> int:
    """Spend a visitor's token refreshes until refused; say how many went."""
    for allowed in range(most + 1):
        response = refresh(service, address)
        assert response.status_code < 500, response.text
        if response.status_code == 429:
            return allowed
    return most + 1


def spend(service: Service, address: str, count: int) -> None:
    for _ in range(count):
        assert refresh(service, address).status_code == 403


class Readiness:
    """Every /readyz answer of a set of services, in order."""

    def __init__(self, services: list[Service]) -> None:
        self.services = services
        self.seen: list[int] = []

    def all_answer(self, status: int) -> bool:
        answers = [
            requests.get(s.url + "/readyz", timeout=5).status_code
            for s in self.services
        ]
        self.seen.extend(answers)
        return answers == [status] * len(answers)


@pytest.mark.redis
def test_redis_outage_falls_back_to_memory_and_recovers(
    service_factory: ServiceFactory,
    redis_server: RedisServer,
    redis_url: str,
    clients: Callable[[str], ChatClient],
) -> None:
    settings = {
        "CHATAPP_REDIS_URL": redis_url,
        "CHATAPP_WORKERS": "1",
        "CHATAPP_TRUSTED_PROXY_HOPS": "1",
    }
    a, b = service_factory(**settings), service_factory(**settings)
    ready = Readiness([a, b])
    assert ready.all_answer(200)
    spend(a, "192.0.2.1", 10)
    assert headroom(b, "192.0.2.1") == 20  # one window, shared
    visitors = [(a, clients(a.url).token), (b, clients(b.url).token)]
    with Trickle(visitors) as trickle:
        redis_server.kill()
        try:
            wait_for(lambda: ready.all_answer(503), 10, "/readyz to see the outage")
            # The limiter learns of the outage from its first failed hit,
            # which it lets through uncounted: one per worker, made here, so
            # that the counts below do not depend on whether the trickle's
            # requests got there first.
            for service in (a, b):
                assert refresh(service, "192.0.2.9").status_code < 500
            # Limits still hold meanwhile, in each worker's memory.
            assert headroom(a, "192.0.2.2") == 30
            assert_refusal(refresh(a, "192.0.2.2"), 429, "rate_limited")
            assert headroom(b, "192.0.2.2") == 30  # per worker, not shared
        finally:
            redis_server.start()
        back_at = time.monotonic()
        wait_for(lambda: ready.all_answer(200), 10, "/readyz to see Redis back")
        probes = iter(range(1, 10_000))

        def shared() -> bool:
            n = next(probes)
            address = f"198.18.{n // 250}.{n % 250}"
            spend(a, address, 10)
            return headroom(b, address) == 20

        wait_for(shared, 60, "limits to be shared again", every=0.5)
        print(f"limits shared {time.monotonic() - back_at:.1f}s after Redis is back")
        # The steady flow goes on once Redis is back (during the outage a
        # request may wait out a Redis timeout, so the count then varies).
        seen = len(trickle.statuses)
        wait_for(
            lambda: len(trickle.statuses) >= seen + 10, 10, "requests after the outage"
        )
    assert 503 in ready.seen
    assert trickle.server_errors() == []
