"""RateLimit-Policy and RateLimit on a 201, from the limiter's hit itself."""

from __future__ import annotations

import hashlib
import re
import socket
import time
from importlib import resources

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory

pytestmark = pytest.mark.e2e

FIELD = re.compile(r'^"(?P<name>[^"]+)";r=(?P<r>[0-9]+);t=(?P<t>[0-9]+)$')
LIMITS_DB = 8


def left(response: requests.Response) -> tuple[str, int, int]:
    assert response.status_code == 201, response.text
    found = FIELD.match(response.headers["RateLimit"])
    assert found, response.headers["RateLimit"]
    return found["name"], int(found["r"]), int(found["t"])


def test_each_turn_says_how_many_are_left_of_the_tightest_limit(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="3/minute;100/day")
    client = ChatClient(service.url)

    answers = [client.post(message="hello") for _ in range(3)]

    policy = answers[0].headers["RateLimit-Policy"]
    assert policy == '"3 per 1 minute";q=3;w=60'
    assert [left(a)[:2] for a in answers] == [
        ("3 per 1 minute", 2),
        ("3 per 1 minute", 1),
        ("3 per 1 minute", 0),
    ]
    assert all(55 <= left(a)[2] <= 60 for a in answers)
    assert client.post(message="one too many").status_code == 429


def test_the_tightest_limit_is_the_one_closest_to_running_out(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="10/minute;2/day")
    response = ChatClient(service.url).post(message="hello")

    assert response.headers["RateLimit-Policy"] == '"2 per 1 day";q=2;w=86400'
    assert left(response)[:2] == ("2 per 1 day", 1)


def test_a_refusal_and_other_answers_carry_no_ratelimit_fields(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="1/minute")
    client = ChatClient(service.url)
    assert client.post(message="one").status_code == 201
    refused = client.post(message="two")

    assert refused.status_code == 429
    assert "RateLimit" not in refused.headers
    assert "RateLimit" not in requests.get(service.url + "/healthz").headers


class Monitor:
    """Redis MONITOR on a raw socket: every command the server runs."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.buffer = b""
        self._line()  # +OK

    def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, "MONITOR connection closed"
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    def until(self, marker: str) -> list[str]:
        """Collect lines until a client sends ECHO <marker>."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(f"ECHO {marker}\r\n".encode())
            s.recv(100)
        lines = []
        while True:
            line = self._line().decode(errors="replace")
            if f'"{marker}"' in line:
                return lines
            lines.append(line)

    def close(self) -> None:
        self.sock.close()


@pytest.mark.redis
def test_with_redis_the_count_comes_from_the_hit_without_a_second_scan(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    redis_server.command("-n", str(LIMITS_DB), "FLUSHDB")
    url = f"redis://127.0.0.1:{redis_server.port}/{LIMITS_DB}"
    service = service_factory(
        CHATAPP_REDIS_URL=url, CHATAPP_WORKERS="2", CHATAPP_RATE_LIMITS="4/minute"
    )
    client = ChatClient(service.url)
    left(client.post(message="zero"))  # scripts loaded into Redis once
    monitor = Monitor(redis_server.port)
    try:
        monitor.until("before")
        first = client.post(message="one")
        commands = monitor.until("after")
    finally:
        monitor.close()
    second = client.post(message="two")

    assert [left(r)[1] for r in (first, second)] == [2, 1]
    # Top-level commands on the limit's key: one script call, the hit. The
    # script limits would run to look at the window again never runs.
    scan = resources.files("limits").joinpath(
        "resources/redis/lua_scripts/moving_window.lua"
    )
    scan_sha = hashlib.sha1(scan.read_text().encode()).hexdigest()
    on_limit = [c for c in commands if "LIMITS:" in c and "lua]" not in c]
    assert len(on_limit) == 1, on_limit
    assert '"evalsha"' in on_limit[0].lower()
    assert not any(scan_sha in c for c in commands)


@pytest.mark.redis
def test_with_redis_a_limit_keeps_only_the_hits_in_its_window(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    """A limit's list holds exactly the hits its window counts: those that
    left the window are dropped by the next hit, so the list and the search
    for the count stay the window's size (a limit of a million a minute used
    to keep every hit it ever had)."""
    redis_server.command("-n", str(LIMITS_DB), "FLUSHDB")
    url = f"redis://127.0.0.1:{redis_server.port}/{LIMITS_DB}"
    service = service_factory(
        CHATAPP_REDIS_URL=url, CHATAPP_RATE_LIMITS="1000 per 2 seconds"
    )
    client = ChatClient(service.url)
    counted, kept = [], []
    # Nine hits at least 0.4 s apart, so 3.2 s or more from first to last:
    # the key never expires (each hit renews it for 2 s) while the first hits
    # leave the window. A busy machine only spaces them further.
    for _ in range(9):
        counted.append(1000 - left(client.post(message="steady"))[1])
        keys = redis_server.command(
            "-n", str(LIMITS_DB), "--scan", "--pattern", "*LIMITS*"
        )
        (key,) = keys.decode().split()
        kept.append(int(redis_server.command("-n", str(LIMITS_DB), "LLEN", key)))
        time.sleep(0.4)  # the pace of the hits, not a wait for an event
    assert max(counted) < len(counted)  # hits did leave the window
    assert kept == counted


@pytest.mark.redis
def test_with_redis_the_count_costs_the_same_whatever_the_window_holds(
    service_factory: ServiceFactory, redis_server: RedisServer
) -> None:
    """Counting what is left pops expired hits off the tail and asks the
    length: a window of 500 hits costs a hit no more commands than a window
    of one (a search of the list cost log2 of its length on every hit)."""
    redis_server.command("-n", str(LIMITS_DB), "FLUSHDB")
    url = f"redis://127.0.0.1:{redis_server.port}/{LIMITS_DB}"
    service = service_factory(
        CHATAPP_REDIS_URL=url, CHATAPP_RATE_LIMITS="1000000/minute"
    )
    client = ChatClient(service.url)
    left(client.post(message="zero"))
    (key,) = (
        redis_server.command("-n", str(LIMITS_DB), "--scan", "--pattern", "*LIMITS*")
        .decode()
        .split()
    )

    def script_commands(message: str) -> list[str]:
        monitor = Monitor(redis_server.port)
        try:
            monitor.until(f"before-{message}")
            left(client.post(message=message))
            commands = monitor.until(f"after-{message}")
        finally:
            monitor.close()
        return [c for c in commands if "lua]" in c and key in c]

    small = script_commands("one")
    now = f"{time.time():.6f}"
    redis_server.command("-n", str(LIMITS_DB), "LPUSH", key, *([now] * 500))
    large = script_commands("many")

    assert 500 < int(redis_server.command("-n", str(LIMITS_DB), "LLEN", key))
    assert len(large) == len(small), (small, large)
    assert len(large) <= 7, large
