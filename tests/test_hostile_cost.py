"""Hostile input costs linear time: one request can never freeze a worker.

A gevent worker runs every request, stream and poll in one event loop, and
parsing is C code that never yields: a parser or regex that is superlinear
in its input lets one small request stop every stream of the worker. These
tests run one worker under real gunicorn, keep it busy with the worst input
found for each parser, and ask `/healthz` meanwhile: it must answer while
the hostile requests are being served, within a bound far below what the
old code took (a 64 KB body held the worker for about 18 s; a 60,000
character prompt with logging on, about 4 s). RELIABILITY.md ("Hostile
input cost") has the measured worst cases; bench/hostile.py measures them.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory

pytestmark = pytest.mark.e2e

# '"' then '\"' 32,760 times: 65,521 bytes, one unterminated JSON string.
# The old depth check's regex restarted at every quote: quadratic.
ESCAPED_QUOTES = b'"' + b'\\"' * 32760
# Nested 30,000 deep: Python's parser raises RecursionError, not ValueError.
DEEP = b"[" * 30000 + b"]" * 30000
# Prompts the old masking regexes scanned again from every position.
LONG_WORD = "a" * 60000  # the e-mail pattern's local part
DASHED_DIGITS = "1-" * 30000  # the phone pattern
# Far below the old freeze, far above a healthy answer on a loaded machine.
HEALTH_BOUND = 3.0
HOSTILE_CLIENTS = 2


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> Service:
    return module_services(
        CHATAPP_LOG_PROMPTS="1",
        CHATAPP_LOG_LEVEL="info",
        CHATAPP_MAX_MESSAGE_CHARS="60000",
    )


def worker_stays_responsive(
    service: Service, path: str, body: bytes, headers: dict[str, str]
) -> tuple[list[int], list[float], float]:
    """Send `body` from a few clients at once; ask /healthz while they wait.

    Returns the hostile requests' statuses, how long each /healthz took, and
    how long the hostile requests took in all.
    """
    statuses: list[int] = []
    finished: list[float] = []

    def hostile() -> None:
        with requests.Session() as session:
            response = session.post(
                service.url + path, data=body, headers=headers, timeout=300
            )
            statuses.append(response.status_code)
            finished.append(time.monotonic())

    threads = [
        threading.Thread(target=hostile, daemon=True) for _ in range(HOSTILE_CLIENTS)
    ]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.2)  # the bodies are in: the worker is on them now
    waits: list[float] = []
    with requests.Session() as probe:
        while not waits or any(t.is_alive() for t in threads):
            asked = time.monotonic()
            health = probe.get(service.url + "/healthz", timeout=60)
            waits.append(time.monotonic() - asked)
            assert health.status_code == 200
            if waits[-1] > HEALTH_BOUND:
                break  # frozen: no need to wait out the old code's minutes
            time.sleep(0.05)
    for thread in threads:
        thread.join(300)
    took = (max(finished) if finished else time.monotonic()) - started
    return statuses, waits, took


def json_headers(token: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["X-Chat-Token"] = token
    return headers


@pytest.mark.parametrize("body", [ESCAPED_QUOTES, DEEP], ids=["quotes", "deep"])
@pytest.mark.parametrize("path", ["/api/chat", "/api/chat/{turn}/cancel"])
def test_a_hostile_json_body_never_freezes_the_worker(
    service: Service, path: str, body: bytes
) -> None:
    # The cancel URL has no rate limit at all, and parses its body first.
    turn = ChatClient(service.url).start("hello")
    statuses, waits, took = worker_stays_responsive(
        service, path.format(turn=turn.id), body, json_headers()
    )

    assert max(waits) < HEALTH_BOUND, f"/healthz waited {max(waits):.1f}s"
    assert statuses == [400] * HOSTILE_CLIENTS
    assert took < 10, f"the hostile bodies took {took:.1f}s"
    assert "Traceback" not in service.log()


@pytest.mark.parametrize("message", [LONG_WORD, DASHED_DIGITS], ids=["word", "digits"])
def test_a_hostile_prompt_never_freezes_the_worker_with_prompt_logging_on(
    service: Service, message: str
) -> None:
    client = ChatClient(service.url)
    body = json.dumps({"token": client.token, "message": message}).encode()
    statuses, waits, took = worker_stays_responsive(
        service, "/api/chat", body, json_headers()
    )

    assert max(waits) < HEALTH_BOUND, f"/healthz waited {max(waits):.1f}s"
    assert statuses == [201] * HOSTILE_CLIENTS
    assert took < 10, f"the hostile prompts took {took:.1f}s"
    logged: list[dict[str, Any]] = [
        json.loads(line)
        for line in service.log_lines()
        if line.startswith("{") and '"turn.accepted"' in line
    ]
    assert any(len(line.get("prompt", "")) == len(message) for line in logged)
