"""SIGTERM drains: running turns may finish, the rest end with error + done."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from chatapp.upstream.sse_decoder import ServerSentEvent
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import Turn
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e


class Reader(threading.Thread):
    """Read a turn's stream to `done` in a thread; tell when events arrive."""

    def __init__(self, client: ChatClient, turn: Turn) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.turn = turn
        self.events: list[ServerSentEvent] = []
        self.some = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._read()
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = exc
            self.some.set()

    def _read(self) -> None:
        response = self.client.open_stream(self.turn)
        assert response.status_code == 200, response.text
        decoder = SSEDecoder()
        try:
            for data in response.raw.stream(1024, decode_content=False):
                for event in decoder.feed(data):
                    self.events.append(event)
                    if len(self.events) >= 2:  # start and some text
                        self.some.set()
                    if event.event == "done":
                        return
        finally:
            response.close()


def test_sigterm_lets_quick_turns_finish_and_ends_stalled_ones(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_DRAIN_SECONDS="2")
    )
    client = ChatClient(service.url)
    quick = client.start("fake: delay_ms=100 | one two three four five")
    stalled = client.start("fake: stall_after=2 | a b c d")
    fake_provider.wait_for_stream_start(2)
    readers = [Reader(client, quick), Reader(client, stalled)]
    for reader in readers:
        reader.start()
        assert reader.some.wait(10)
        assert reader.error is None, reader.error
    assert service.proc is not None
    started = time.monotonic()
    service.proc.send_signal(signal.SIGTERM)
    for reader in readers:
        reader.join(20)
    quick_events, stalled_events = (r.events for r in readers)
    assert text_of(quick_events) == "one two three four five"
    assert data_of(quick_events, "done") == [{"finish_reason": "stop"}]
    assert [e.event for e in stalled_events[-2:]] == ["error", "done"]
    assert data_of(stalled_events, "error")[0]["code"] == "internal"
    assert service.proc.wait(30) == 0
    elapsed = time.monotonic() - started
    assert elapsed < 2 + 10, elapsed
    assert fake_provider.wait_all_closed(5)
    assert "Traceback" not in service.log()


@pytest.mark.redis
def test_a_reader_on_another_instance_gets_the_drained_end(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    settings = openai_settings(
        fake_provider,
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_WORKERS="1",
        CHATAPP_DRAIN_SECONDS="1",
        CHATAPP_SECRET_KEY="drain-test-key-" + "k" * 32,
    )
    a, b = service_factory(**settings), service_factory(**settings)
    turn = ChatClient(a.url).start("fake: stall_after=2 | a b c d")
    fake_provider.wait_for_stream_start(1)
    reader = Reader(ChatClient(b.url), turn)
    reader.start()
    assert reader.some.wait(10)  # B follows the turn before A is told to stop
    assert a.proc is not None
    a.proc.send_signal(signal.SIGTERM)
    reader.join(20)
    assert [e.event for e in reader.events[-2:]] == ["error", "done"]
    assert a.proc.wait(30) == 0


def test_readyz_says_draining_while_the_worker_drains(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    """A load balancer's kept-alive probe hears 503 draining, not 200.

    The probe's connection is open before SIGTERM; gunicorn serves the
    requests already on it while the worker drains (then closes it).
    """
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_DRAIN_SECONDS="5")
    )
    ChatClient(service.url).start("fake: stall_after=2 | a b c d")
    fake_provider.wait_for_stream_start(1)  # a turn to drain: it takes 5 s
    probe = requests.Session()
    before = probe.get(service.url + "/readyz", timeout=5)
    assert before.status_code == 200, before.text
    (worker,) = service.worker_pids()
    os.kill(worker, signal.SIGTERM)
    time.sleep(0.5)  # the signal is handled at once; give it a margin

    during = probe.get(service.url + "/readyz", timeout=5)

    assert during.status_code == 503, during.text
    assert during.json()["reason"] == "draining"
    assert during.headers.get("Connection") == "close"  # the same connection
    probe.close()
