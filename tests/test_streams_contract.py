"""Runs the store contract (turn log, coordination, history) against memory
and a real redis-server.

The contract (tests/gevent_contract.py) runs in a gevent-patched subprocess,
as the service runs; each of its cases, once per backend, is reported here
as its own item, read from that run's JUnit report.
"""

from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.conftest import RedisServer

pytestmark = pytest.mark.redis

CONTRACT = "tests/gevent_contract.py"
BOOT = (
    "from gevent import monkey; monkey.patch_all()\n"
    "import sys, pytest\n"
    "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', *sys.argv[1:]]))\n"
)


def _case_ids() -> list[str]:
    """The contract's cases, as its own collection lists them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider"]
        + ["--collect-only", "-q", CONTRACT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    prefix = CONTRACT + "::"
    return [
        line[len(prefix) :] for line in listed.splitlines() if line.startswith(prefix)
    ]


CASES = _case_ids()


@pytest.fixture(scope="module")
def outcomes(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str | None]]:
    """Run the whole contract once; map each case to None (passed) or why not."""
    report = tmp_path_factory.mktemp("contract") / "junit.xml"
    env = dict(os.environ, CHATAPP_TEST_REDIS_URL=redis_server.url)
    result = subprocess.run(
        [sys.executable, "-c", BOOT, f"--junitxml={report}", CONTRACT],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert report.exists(), result.stdout + result.stderr
    yield _read_report(report)


def _read_report(report: Path) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for case in ET.parse(report).iter("testcase"):
        problems = [
            f"{child.tag}: {child.get('message', '')}\n{child.text or ''}"
            for child in case
            if child.tag in ("failure", "error", "skipped")
        ]
        # JUnit names a case by its dotted module (and class) and its name.
        owner = case.get("classname", "").removeprefix("tests.gevent_contract")
        name = case.get("name", "")
        found[f"{owner.lstrip('.')}::{name}" if owner else name] = (
            "\n".join(problems) or None
        )
    return found


BACKENDS = ("memory", "redis")
CONCEPTS = ("TestEventLogContract", "TestCoordinationContract", "TestHistoryContract")


def test_every_contract_case_is_an_item_for_each_backend() -> None:
    """Each concept's cases are collected, each once per backend."""
    backends: dict[str, set[str]] = {}
    for case in CASES:
        name, _, param = case.partition("[")
        if name.split("::")[0] in CONCEPTS:
            backends.setdefault(name, set()).add(param.rstrip("]"))
    for concept in CONCEPTS:
        assert any(n.startswith(concept + "::") for n in backends), (concept, CASES)
    assert {n: b for n, b in backends.items() if b != set(BACKENDS)} == {}


@pytest.mark.parametrize("case", CASES)
def test_store_contract_under_gevent(
    case: str, outcomes: dict[str, str | None]
) -> None:
    assert case in outcomes, f"{case} did not run: {sorted(outcomes)}"
    assert outcomes[case] is None, outcomes[case]
