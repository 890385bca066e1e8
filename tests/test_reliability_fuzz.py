"""The reliability battery: generated requests get documented answers.

schemathesis reads GET /api/openapi.json and sends what it generates from it
(valid and invalid bodies, headers, queries, paths) to two real services at
once: memory mode and Redis mode (two workers), both with the fake provider.
No answer may be a 5xx, and every status, media type and body (each event of
an event stream too) must be the one the document gives. The requests are
counted in the services' own access logs, not taken on trust.

Run with ``pytest -m reliability``; figures go to artifacts/ for
RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest

from tests.conftest import ARTIFACTS
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.reliability, pytest.mark.redis, pytest.mark.e2e]

MIN_REQUESTS = 10_000
# Test cases per operation and run; each case is one request or a few. Two
# runs of this size send about 11,000 requests in 2-3 minutes on 2 cores
# (some operations run out of new inputs before that many).
EXAMPLES = int(os.environ.get("CHATAPP_FUZZ_EXAMPLES", "1100"))
SEED = 11
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# The identifiers a fuzzer cannot make up: a real turn and the page token
# that owns it (`${NAME}` is read from the run's environment). Bodies and
# every other parameter are generated; the header makes the requests reach
# past the token check (a token in the body gives way to it).
CONFIG = """\
[parameters]
"header.X-Chat-Token" = "${PAGE_TOKEN}"
"path.turn_id" = "${TURN_ID}"
"query.t" = "${STREAM_TOKEN}"
"path.conversation_id" = "${CONVERSATION_ID}"
"""


def record(name: str, figures: dict[str, object]) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"reliability-{name}.json").write_text(json.dumps(figures, indent=1))


class FuzzRun:
    """One schemathesis run against one service, counted in its access log."""

    def __init__(self, service: Service, name: str, workdir: Path) -> None:
        self.service = service
        self.name = name
        self.access_log = Path(service.env["CHATAPP_ACCESS_LOG"])
        client = ChatClient(service.url)
        turn = client.start("hello")
        assert client.events(turn)[-1].event == "done"
        client.http.close()
        self.skip = len(self.access_lines())  # the set-up's requests are not counted
        config = workdir / f"{name}.toml"
        config.write_text(CONFIG)
        env = {
            **os.environ,
            "PAGE_TOKEN": client.token,
            "TURN_ID": turn.id,
            "STREAM_TOKEN": parse_qs(urlsplit(turn.stream_url).query)["t"][0],
            "CONVERSATION_ID": turn.conversation_id,
        }
        self.output = workdir / f"{name}.out"
        self._out = open(self.output, "wb")  # noqa: SIM115 - closed in wait()
        schemathesis = Path(sys.executable).with_name("schemathesis")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                str(schemathesis),
                "--config-file",
                str(config),
                "run",
                f"{service.url}/api/openapi.json",
                "--checks",
                ",".join(CHECKS),
                "--phases",
                "examples,coverage,fuzzing",
                "--max-examples",
                str(EXAMPLES),
                "--seed",
                str(SEED),
                "--workers",
                "2",
                "--request-timeout",
                "30",
                "--generation-database",
                "none",
                "--no-color",
            ],
            cwd=workdir,
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self.seconds = 0.0

    def wait(self) -> int:
        try:
            code = self.proc.wait(600)
        finally:
            self.seconds = time.monotonic() - self.started
            self._out.close()
        return code

    def access_lines(self) -> list[dict[str, object]]:
        try:
            text = self.access_log.read_text(errors="replace")
        except FileNotFoundError:
            return []
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]
        return [line for line in lines if line.get("event") == "http.access"]

    def statuses(self) -> list[int]:
        return [int(str(line["status"])) for line in self.access_lines()[self.skip :]]


def test_generated_requests_get_documented_answers(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    memory = service_factory(
        **openai_settings(fake_provider),
        CHATAPP_ACCESS_LOG=str(tmp_path / "access-memory.log"),
    )
    shared = service_factory(
        **openai_settings(fake_provider),
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_WORKERS="2",
        CHATAPP_SECRET_KEY="reliability-fuzz-secret-0123456789",
        CHATAPP_ACCESS_LOG=str(tmp_path / "access-redis.log"),
    )
    runs = [FuzzRun(memory, "memory", tmp_path), FuzzRun(shared, "redis", tmp_path)]
    codes = [run.wait() for run in runs]
    figures: dict[str, object] = {"examples_per_operation": EXAMPLES, "seed": SEED}
    total = 0
    for run, code in zip(runs, codes, strict=True):
        statuses = run.statuses()
        total += len(statuses)
        summary = run.output.read_text(errors="replace")
        figures[run.name] = {
            "requests": len(statuses),
            "responses_5xx": sum(s >= 500 for s in statuses),
            "by_status": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "schemathesis_exit": code,
            "seconds": round(run.seconds, 1),
            "summary": [
                line.strip()
                for line in summary.splitlines()
                if "generated" in line or "failure" in line.lower()
            ][-3:],
        }
    figures["requests"] = total
    record("fuzz", figures)
    for run, code in zip(runs, codes, strict=True):
        output = run.output.read_text(errors="replace")
        assert code == 0, f"{run.name}: schemathesis found failures:\n{output[-6000:]}"
        assert not [s for s in run.statuses() if s >= 500], run.name
        assert "Traceback" not in run.service.log(), run.name
    assert total >= MIN_REQUESTS, f"only {total} requests"
