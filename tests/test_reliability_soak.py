"""The reliability battery: 200 streams at once, continuously, without drift.

200 client threads each start a turn, read it to `done`, check it and start
the next, for CHATAPP_SOAK_SECONDS (180 by default, 600 for the long soak),
against one gevent worker and the fake provider. Every turn must end with
`done` `stop` and the provider's exact text; the worker's memory may not
grow by 5 % after the warm-up, nor its descriptors drift.

Run with ``pytest -m reliability``; figures go to artifacts/ for
RELIABILITY.md.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import threading
import time
from pathlib import Path

import pytest

from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.conftest import wait_for
from tests.fake_provider import FakeProvider
from tests.test_reliability_clients import gauge
from tests.test_reliability_clients import rss_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

SOAK_SECONDS = float(os.environ.get("CHATAPP_SOAK_SECONDS", "180"))
# Memory is compared from here on: by then every cache, pool and window
# (the rate limiter's one minute, the short TTLs below) is at its size.
WARM_UP = min(60.0, SOAK_SECONDS / 3)
# Each end of the comparison is the median of this many seconds of samples.
WINDOW = 20.0
SAMPLE_EVERY = 2.0
STREAMS = 200
RSS_GROWTH_BOUND = 0.05
# 100 pieces of 5 characters, 50 ms apart: 5 s a turn, 40 turns a second.
TEXT = "Soak ü\ndata: no\n\n" + "word " * 96
MESSAGE = "fake: pieces=5 delay_ms=50 | " + TEXT
# Finished turns and conversations expire this soon, so that what is kept
# by design reaches its steady size within the warm-up.
TTL = "15"


class Soak:
    """STREAMS threads turning over turns until the deadline, counting."""

    def __init__(self, service: Service, token: str, deadline: float) -> None:
        self.service = service
        self.body = json.dumps({"token": token, "message": MESSAGE})
        self.deadline = deadline
        self.turns = 0
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=30)
        try:
            while time.monotonic() < self.deadline and not self.errors:
                problem = self._turn(conn)
                with self._lock:
                    if problem is None:
                        self.turns += 1
                    else:
                        self.errors.append(problem)
                        conn.close()
        except Exception as exc:  # noqa: BLE001 - reported as the soak's error
            with self._lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _turn(self, conn: http.client.HTTPConnection) -> str | None:
        conn.request(
            "POST",
            "/api/chat",
            body=self.body,
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        answer = response.read()
        if response.status != 201:
            return f"POST {response.status}: {answer[:200]!r}"
        stream_url = json.loads(answer)["stream_url"]
        conn.request("GET", stream_url, headers={"Accept": "text/event-stream"})
        response = conn.getresponse()
        if response.status != 200:
            return f"GET {response.status}"
        decoder = SSEDecoder()
        events = []
        while chunk := response.read1(65536):
            events.extend(decoder.feed(chunk))
        names = [e.event for e in events]
        if names.count("done") != 1 or names[-1] != "done":
            return f"stream ended without one done: {names[-3:]}"
        if json.loads(events[-1].data)["finish_reason"] != "stop":
            return f"done {events[-1].data}"
        text = "".join(json.loads(e.data)["text"] for e in events if e.event == "delta")
        if text != TEXT:
            return f"text differs: {text[:80]!r}"
        if [int(e.id or 0) for e in events] != list(range(1, len(events) + 1)):
            return "ids not 1..n"
        return None


def descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def connections_to(pid: int, port: int) -> int:
    """Count the process's TCP sockets connected to 127.0.0.1:`port`."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def test_two_hundred_streams_for_minutes_hold_memory_and_descriptors(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(fake_provider),
        CHATAPP_READERS_PER_CLIENT="1000",
        CHATAPP_STREAM_TTL=TTL,
        CHATAPP_HISTORY_TTL=TTL,
    )
    (worker,) = service.worker_pids()
    client = ChatClient(service.url)
    assert client.answer(MESSAGE)[1][-1].event == "done"
    fds_at_rest_before = descriptors(worker)
    started = time.monotonic()
    soak = Soak(service, client.token, started + SOAK_SECONDS)
    threads = [threading.Thread(target=soak.run) for _ in range(STREAMS)]
    for thread in threads:
        thread.start()
    samples: list[tuple[float, int, int]] = []
    while time.monotonic() < soak.deadline and not soak.errors:
        samples.append(
            (time.monotonic() - started, rss_bytes(worker), descriptors(worker))
        )
        time.sleep(SAMPLE_EVERY)  # a sampling period, not a wait for an event
    for thread in threads:
        thread.join(60)
    elapsed = time.monotonic() - started
    wait_for(
        lambda: (
            gauge(service, "chatapp_active_turns") == 0
            and gauge(service, "chatapp_open_streams") == 0
        ),
        30,
        "every turn and stream to end",
        every=0.2,
    )
    fds_at_rest_after = descriptors(worker)
    # The provider's connections stay pooled for the next turns (keep-alive),
    # at most one for each turn that ran at once; all else is back as it was.
    pooled = connections_to(worker, fake_provider.port)
    first = [s for s in samples if WARM_UP <= s[0] < WARM_UP + WINDOW]
    last = [s for s in samples if s[0] >= SOAK_SECONDS - WINDOW]
    assert first and last, "too few samples"
    rss_first = statistics.median(s[1] for s in first)
    rss_last = statistics.median(s[1] for s in last)
    fds_first = statistics.median(s[2] for s in first)
    fds_last = statistics.median(s[2] for s in last)
    growth = rss_last / rss_first - 1
    record(
        {
            "seconds": round(elapsed, 1),
            "streams_at_once": STREAMS,
            "turns_done": soak.turns,
            "turns_per_second": round(soak.turns / elapsed, 1),
            "errors": len(soak.errors),
            "first_errors": soak.errors[:5],
            "warm_up_s": WARM_UP,
            "rss_mib_after_warm_up": round(rss_first / 2**20, 1),
            "rss_mib_at_end": round(rss_last / 2**20, 1),
            "rss_growth_pct": round(growth * 100, 2),
            "rss_mib_max": round(max(s[1] for s in samples) / 2**20, 1),
            "fds_after_warm_up": fds_first,
            "fds_at_end": fds_last,
            "fds_min_max_under_load": [
                min(s[2] for s in samples),
                max(s[2] for s in samples),
            ],
            "fds_at_rest_before_after": [fds_at_rest_before, fds_at_rest_after],
            "idle_pooled_provider_connections_after": pooled,
            "samples": [[round(t), r // 1024, f] for t, r, f in samples],
        }
    )
    assert not soak.errors, soak.errors[:5]
    assert all(not thread.is_alive() for thread in threads)
    assert growth < RSS_GROWTH_BOUND, f"RSS grew {growth:.1%}"
    # Under load the count moves with the turns in flight (a client and an
    # upstream socket each); its level may not drift, and at rest it is back.
    assert abs(fds_last - fds_first) <= 0.1 * fds_first + 5
    assert pooled <= STREAMS + 1
    assert abs(fds_at_rest_after - pooled - fds_at_rest_before) <= 3
    assert "Traceback" not in service.log()


def record(figures: dict[str, object]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path: Path = ARTIFACTS / "reliability-soak.json"
    path.write_text(json.dumps(figures, indent=1))
