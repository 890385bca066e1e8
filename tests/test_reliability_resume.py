"""The reliability battery: 1,000 drop-and-resume cycles across two hosts.

Readers are cut at random byte offsets (mid-event, as a network drop does)
and resume with Last-Event-ID on a random one of two gunicorn instances that
share one Redis. Every turn's text must equal the provider's exactly: no
event lost or repeated, one upstream call per turn.
"""

from __future__ import annotations

import json
import random
import threading
import time

import pytest
import requests

from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.e2e]

CYCLES = 1000
THREADS = 8
SECRET = "reliability-resume-secret-0123456789"
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa".split()


def answer_text(rng: random.Random) -> str:
    """A few hundred characters of text, with newlines and SSE look-alikes."""
    words = [rng.choice(WORDS) for _ in range(60)]
    words[10] = "\ndata: forged\n\n"
    words[30] = "id: 999\r\n"
    return " ".join(words)


class Resumer:
    """Read one turn to `done` through random cuts on random hosts."""

    def __init__(self, hosts: list[Service], token: str, rng: random.Random) -> None:
        self.hosts = hosts
        self.token = token
        self.rng = rng
        self.http = requests.Session()
        self.cycles = 0

    def read(self, stream_url: str) -> tuple[list[int], str]:
        ids: list[int] = []
        text = ""
        last = 0
        while True:
            host = self.rng.choice(self.hosts)
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            response = self.http.get(
                host.url + stream_url, headers=headers, stream=True, timeout=30
            )
            if response.status_code == 204:
                response.close()
                return ids, text
            assert response.status_code == 200, response.text
            budget = self.rng.randint(1, 1500)  # bytes before the cut
            decoder = SSEDecoder()
            done = False
            try:
                for data in response.raw.stream(min(budget, 512), decode_content=False):
                    budget -= len(data)
                    for event in decoder.feed(data):
                        if event.event == "retry" or not event.id:
                            continue
                        ids.append(int(event.id))
                        last = int(event.id)
                        if event.event == "delta":
                            text += json.loads(event.data)["text"]
                        if event.event == "done":
                            done = True
                    if done or budget <= 0:
                        break
            finally:
                response.close()
            if done:
                return ids, text
            self.cycles += 1


def test_a_thousand_cuts_lose_and_repeat_nothing(
    module_services: ServiceFactory,
    redis_server: RedisServer,
    fake_provider: FakeProvider,
) -> None:
    settings = openai_settings(
        fake_provider,
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_ORPHAN_SECONDS="5",
    )
    hosts = [module_services(**settings), module_services(**settings)]
    failures: list[str] = []
    totals = {"cycles": 0, "turns": 0}
    lock = threading.Lock()
    started = time.monotonic()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        client = ChatClient(hosts[0].url)
        resumer = Resumer(hosts, client.token, rng)
        try:
            while True:
                with lock:
                    if totals["cycles"] >= CYCLES:
                        return
                text = answer_text(rng)
                behaviour = Behaviour(text=text, pieces=3, delay_ms=5)
                turn = client.start(behaviour.as_directive())
                before = resumer.cycles
                ids, got = resumer.read(turn.stream_url)
                with lock:
                    totals["cycles"] += resumer.cycles - before
                    totals["turns"] += 1
                if ids != list(range(1, len(ids) + 1)):
                    failures.append(f"{turn.id}: ids {ids}")
                if got != text:
                    failures.append(f"{turn.id}: text differs")
        except Exception as exc:  # any failure, reported by the main thread
            failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            client.http.close()
            resumer.http.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    seconds = time.monotonic() - started
    upstream_calls = len(fake_provider.requests)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "reliability-resume.json").write_text(
        json.dumps(
            {
                "cycles": totals["cycles"],
                "turns": totals["turns"],
                "upstream_calls": upstream_calls,
                "failures": len(failures),
                "seconds": round(seconds, 1),
            },
            indent=1,
        )
    )
    assert failures == []
    assert totals["cycles"] >= CYCLES
    assert upstream_calls == totals["turns"]
    for host in hosts:
        assert "Traceback" not in host.log()
