"""Slow and greedy clients: are the others answered as fast as alone?

    .venv/bin/python -m bench.slow_clients

Runs the three scenarios of `tests/test_reliability_clients.py` one after
another, alone (run it with nothing else on the machine): 200 slow request
bodies, one client's 1,000 readers, 500 readers that never read. The tests
assert the behaviour (the others are answered while the crowd is held, their
streams come whole); this prints the latencies the scenarios recorded in
artifacts/ and holds them to RELIABILITY.md's bounds: other requests under
100 ms beside the slow bodies; another client's gaps between deltas, beside
the greedy client, p50 within 10 % and worst within 100 ms of alone; normal
readers beside the stuck ones, p50 within 25 % and worst within 250 ms.
It exits 1 when a bound is missed.
"""

from __future__ import annotations

import json
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests import test_reliability_clients as clients
from tests.conftest import ARTIFACTS
from tests.conftest import ServiceFactory
from tests.fake_provider import FakeProvider

# (figure file, description, measured key, bound key or number, kind)
BOUNDS: list[tuple[str, str, str, str | float, str]] = [
    ("slow-bodies", "slowest other request, ms", "max_ms", 100.0, "under 100 ms"),
    (
        "greedy-readers",
        "other client's gap p50 beside the greedy one, ms",
        "beside_greedy_gap_p50_ms",
        "alone_gap_p50_ms",
        "within 10 %",
    ),
    (
        "greedy-readers",
        "other client's worst gap beside the greedy one, ms",
        "beside_greedy_gap_max_ms",
        "alone_gap_max_ms",
        "within 100 ms",
    ),
    (
        "stuck-readers",
        "normal readers' gap p50 beside the stuck ones, ms",
        "normal_gap_p50_ms_beside",
        "normal_gap_p50_ms_alone",
        "within 25 %",
    ),
    (
        "stuck-readers",
        "normal readers' worst gap beside the stuck ones, ms",
        "normal_gap_max_ms_beside",
        "normal_gap_max_ms_alone",
        "within 250 ms",
    ),
]
LIMITS: dict[str, Callable[[float], float]] = {
    "under 100 ms": lambda base: base,
    "within 10 %": lambda base: base * 1.1,
    "within 100 ms": lambda base: base + 100,
    "within 25 %": lambda base: base * 1.25,
    "within 250 ms": lambda base: base + 250,
}


def run_scenarios() -> None:
    """Run each scenario alone, with what its test's fixtures would give it."""
    with FakeProvider() as fake, tempfile.TemporaryDirectory() as tmp:
        scenarios: dict[str, Callable[[ServiceFactory, list[socket.socket]], None]] = {
            "slow bodies": clients.test_slow_bodies_do_not_slow_anyone_else,
            "greedy readers": lambda factory, _: (
                clients.test_a_thousand_readers_from_one_client_are_capped(factory)
            ),
            "stuck readers": lambda factory, sockets: (
                clients.test_five_hundred_readers_that_never_read_are_bounded_and_slow_no_one(  # noqa: E501
                    factory, fake, sockets
                )
            ),
        }
        for name, scenario in scenarios.items():
            print(f"{name} ...", flush=True)
            factory = ServiceFactory(Path(tmp))
            sockets: list[socket.socket] = []
            fake.reset()
            try:
                scenario(factory, sockets)
            finally:
                for sock in sockets:
                    sock.close()
                factory.stop_all()


def main() -> None:
    run_scenarios()
    missed = 0
    for figure, what, key, bound, kind in BOUNDS:
        figures = json.loads((ARTIFACTS / f"reliability-{figure}.json").read_text())
        base = float(figures[bound]) if isinstance(bound, str) else bound
        limit = LIMITS[kind](base)
        ok = float(figures[key]) <= limit
        missed += not ok
        print(
            f"{what}: {figures[key]} (bound: {kind}"
            f"{' of ' + str(base) if isinstance(bound, str) else ''}"
            f", at most {limit:.1f}) " + ("ok" if ok else "MISSED")
        )
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
