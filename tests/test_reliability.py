"""The reliability battery: upstream faults end cleanly, and leak nothing.

Run with ``pytest -m reliability``. Each case runs a turn against real
gunicorn (gevent) and the fake provider, for both provider formats, three
times; it must end with SPEC's error code (or the exact answer) and `done`,
leave the worker with as many descriptors as before and no turn running, and
log no traceback.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import anthropic_settings
from tests.conftest import data_of
from tests.conftest import free_port
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

# The worker's descriptors are counted after the first round and after the
# last: a leak grows by one or more per round, so by 3 or more over 4 rounds;
# one may come or go between the counts (a pooled or closing connection).
ROUNDS = 4
FD_SLACK = 1
STALL_TIMEOUT = "1"
BIG_TEXT = "".join(f"{n:07d} " for n in range(110_000))  # 880 KB of text
PROSE = "The quick brown fox jumps over the lazy dog. " * 4


@dataclass(frozen=True)
class Fault:
    """One upstream fault and how the turn must end."""

    behaviour: Behaviour | None  # None: the provider's port is closed
    error: str | None  # SPEC's error code, or None for a complete answer
    finish: str
    text: str | None = None  # the exact answer expected, when it completes
    # A stall is ended by the upstream timeouts, so it runs against a service
    # whose timeouts are short (STALL_TIMEOUT); every other fault against one
    # with the default timeouts, which other load on the machine cannot reach.
    stalls: bool = False


FAULTS: dict[str, Fault] = {
    **{
        f"http-{status}": Fault(Behaviour(status=status), code, "error")
        for status, code in (
            (400, "provider_error"),
            (401, "provider_error"),
            (429, "provider_rate_limited"),
            (500, "provider_unavailable"),
            (503, "provider_unavailable"),
            (529, "provider_unavailable"),
        )
    },
    "connection-refused": Fault(None, "provider_unavailable", "error"),
    "reset-before-headers": Fault(
        Behaviour(reset=True), "provider_unavailable", "error"
    ),
    "drop-mid-stream": Fault(
        Behaviour(text=PROSE, drop_after=4), "provider_unavailable", "error"
    ),
    "stall-before-first-byte": Fault(
        Behaviour(text=PROSE, ttft_ms=60_000), "provider_timeout", "error", stalls=True
    ),
    "stall-mid-stream": Fault(
        Behaviour(text=PROSE, stall_after=4), "provider_timeout", "error", stalls=True
    ),
    "malformed-json-chunk": Fault(
        Behaviour(text=PROSE, malformed=True), "provider_error", "error"
    ),
    "truncated-chunked-body": Fault(
        Behaviour(text=PROSE, truncate=True), "provider_unavailable", "error"
    ),
    "1mib-single-chunk": Fault(
        Behaviour(text=BIG_TEXT, pieces=4096, chunk=1 << 21), None, "stop", BIG_TEXT
    ),
    "1-byte-drip": Fault(Behaviour(text=PROSE, chunk=1), None, "stop", PROSE),
    "gzip-body": Fault(Behaviour(text=PROSE, gzip=True), None, "stop", PROSE),
    "wrong-content-type": Fault(Behaviour(html=True), "provider_error", "error"),
    "error-event-mid-stream": Fault(
        Behaviour(text=PROSE, midstream_error=True), "midstream", "error"
    ),
    "redirect": Fault(
        Behaviour(location="http://127.0.0.1:9/v1/elsewhere"), "provider_error", "error"
    ),
}
# The recorded mid-stream errors: OpenAI's server_error chunk and Anthropic's
# overloaded_error both say the provider failed, not that it refused.
MIDSTREAM_CODE = {"openai": "provider_unavailable", "anthropic": "provider_unavailable"}


def worker_fds(service: Service) -> int:
    """Count the (only) worker's open file descriptors."""
    (pid,) = service.worker_pids()
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(service: Service) -> int:
    """Count the worker's descriptors once closed connections are gone."""
    counts = [worker_fds(service)]

    def steady() -> bool:
        counts.append(worker_fds(service))
        return counts[-1] == counts[-2]

    wait_for(steady, 5, "a steady descriptor count", every=0.1)
    return counts[-1]


def gauge(service: Service, name: str) -> float:
    text = requests.get(service.url + "/metrics", timeout=5).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name} not in /metrics"
    return float(found.group(1))


@pytest.fixture(scope="module")
def figures() -> Iterator[list[str]]:
    """Collect each case's descriptor counts into artifacts/ for RELIABILITY.md."""
    rows: list[str] = []
    yield rows
    ARTIFACTS.mkdir(exist_ok=True)
    header = "provider\tfault\toutcome\tfds_before\tfds_after\n"
    (ARTIFACTS / "reliability-fault-matrix.tsv").write_text(
        header + "".join(row + "\n" for row in rows)
    )


@pytest.fixture(scope="module")
def services(
    module_services: ServiceFactory, fake_provider_server: FakeProvider
) -> dict[str, Service]:
    common: dict[str, Any] = {
        "CHATAPP_MAX_OUTPUT_TOKENS": "64000",
        "CHATAPP_ORPHAN_SECONDS": "30",
    }
    stall: dict[str, Any] = {
        "CHATAPP_UPSTREAM_IDLE_TIMEOUT": STALL_TIMEOUT,
        # A stall before the first byte is the first-token wait's to end.
        "CHATAPP_UPSTREAM_FIRST_TOKEN_TIMEOUT": STALL_TIMEOUT,
    }
    wanted: dict[str, dict[str, Any]] = {}
    for provider, settings in (
        ("openai", openai_settings),
        ("anthropic", anthropic_settings),
    ):
        wanted[provider] = settings(fake_provider_server, **common)
        wanted[f"{provider}-stall"] = settings(fake_provider_server, **common, **stall)
        refused = settings(fake_provider_server, **common)
        port = free_port()
        base = refused["CHATAPP_PROVIDER_BASE_URL"]
        refused["CHATAPP_PROVIDER_BASE_URL"] = re.sub(r":\d+", f":{port}", base)
        wanted[f"{provider}-refused"] = refused
    return dict(zip(wanted, module_services.many(*wanted.values()), strict=True))


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
@pytest.mark.parametrize("name", list(FAULTS))
def test_upstream_fault_ends_cleanly_and_leaks_nothing(
    services: dict[str, Service],
    fake_provider: FakeProvider,
    provider: str,
    name: str,
    figures: list[str],
) -> None:
    fault = FAULTS[name]
    kind = "-stall" if fault.stalls else "" if fault.behaviour else "-refused"
    service = services[provider + kind]
    client = ChatClient(service.url)
    outcome = fault.finish
    before = 0
    for round_ in range(ROUNDS):
        if fault.behaviour is not None:
            fake_provider.enqueue(fault.behaviour)
        _, events = client.answer("hello")
        assert events[-1].event == "done"
        assert data_of(events, "done") == [{"finish_reason": fault.finish}]
        errors = data_of(events, "error")
        if fault.error is None:
            assert errors == []
            assert text_of(events) == fault.text
        else:
            outcome = fault.error
            if fault.error == "midstream":
                outcome = MIDSTREAM_CODE[provider]
            assert [e["code"] for e in errors] == [outcome]
        assert fake_provider.wait_all_closed(10)
        if round_ == 0:
            before = settled_fds(service)
    wait_for(lambda: gauge(service, "chatapp_active_turns") == 0, 10, "no turn")
    assert gauge(service, "chatapp_open_streams") == 0
    after = settled_fds(service)
    client.http.close()
    figures.append(f"{provider}\t{name}\t{outcome}\t{before}\t{after}")
    assert after <= before + FD_SLACK, f"descriptors {before} -> {after}"
    assert "Traceback" not in service.log()
