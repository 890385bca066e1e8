"""The site's spend governor through real gunicorn, in memory and Redis modes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from chatapp.turns.spend import period_ends
from tests.conftest import ROOT
from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import Turn
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import wait_for
from tests.fake_provider import FakeProvider
from tests.test_openapi_e2e import DOCUMENT
from tests.test_openapi_e2e import Contract

pytestmark = pytest.mark.e2e

SPEND_DB = 11
ADMIN = "owner-token-for-the-spend-tests-0123456789"
MODEL = "gpt-4o-mini"
CHEAP = "gpt-4o-nano-test"
# Output at 1000 a million tokens and 100 of them at most: every turn holds
# 0.1 of the currency when it starts (input is free here).
PRICES = f"{MODEL}=0/1000;{CHEAP}=0/100"
HOLD = 0.1
STALL = "fake: stall_after=1 | held open until cancelled"
# Two pieces of three characters, then silence: 2 tokens, 0.002, once cancelled.
STALL_PAID = "fake: stall_after=3 | held open until cancelled"


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.command("-n", str(SPEND_DB), "FLUSHDB")
    return f"redis://127.0.0.1:{redis_server.port}/{SPEND_DB}"


def spend_settings(fake: FakeProvider, **extra: Any) -> dict[str, Any]:
    spend = {
        "CHATAPP_MODEL": MODEL,
        "CHATAPP_PRICES": PRICES,
        "CHATAPP_MAX_OUTPUT_TOKENS": "100",
        "CHATAPP_ADMIN_TOKEN": ADMIN,
    }
    return openai_settings(fake, **{**spend, **extra})


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def mode(request: pytest.FixtureRequest) -> dict[str, str]:
    """Memory: one worker counts alone. Redis: two workers share the count."""
    if request.param == "memory":
        return {}
    url = request.getfixturevalue("redis_url")
    return {"CHATAPP_REDIS_URL": url, "CHATAPP_WORKERS": "2"}


CONTRACT = Contract(json.loads(DOCUMENT.read_text(encoding="utf-8")))


def spend(service: Service) -> dict[str, Any]:
    response = requests.get(
        service.url + "/api/spend",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    CONTRACT.check(response, "GET", "/api/spend")
    body: dict[str, Any] = response.json()
    return body


def settled(service: Service) -> dict[str, Any]:
    """The day's figures once no turn holds anything (settlements are batched)."""
    day = wait_for(
        lambda: (d := spend(service)["periods"]["day"])["held"] == 0 and d,
        10,
        "every hold to be settled",
    )
    return dict(day)


def start_all(client: ChatClient, message: str, n: int) -> list[requests.Response]:
    def post(_: int) -> requests.Response:
        return requests.post(
            client.base_url + "/api/chat",
            json={"token": client.token, "message": message},
            timeout=30,
        )

    with ThreadPoolExecutor(min(n, 50)) as pool:
        return list(pool.map(post, range(n)))


def turn_of(response: requests.Response) -> Turn:
    body = response.json()
    return Turn(
        body["id"], body["conversation_id"], body["stream_url"], body["cancel_url"]
    )


def end_all(client: ChatClient, turns: list[Turn]) -> None:
    for turn in turns:
        client.cancel(turn)
    for turn in turns:
        assert client.events(turn)[-1].event == "done"


def test_a_hard_ceiling_refuses_until_the_day_ends(
    service_factory: ServiceFactory, fake_provider: FakeProvider, mode: dict[str, str]
) -> None:
    service = service_factory(
        **spend_settings(fake_provider, CHATAPP_SPEND_LIMITS="0.35/day", **mode)
    )
    client = ChatClient(service.url)
    held = [client.start(STALL) for _ in range(3)]  # 0.3 held, 0.05 left

    refused = client.post(message="one turn too many")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "site_budget_exhausted"
    CONTRACT.check(refused, "POST", "/api/chat")
    until_midnight = period_ends(time.time())[0] - time.time()
    assert abs(int(refused.headers["Retry-After"]) - until_midnight) <= 5

    report = spend(service)
    day = report["periods"]["day"]
    assert report["currency"] == "USD"
    assert day["limit"] == 0.35 and day["soft_limit"] is None
    assert day["held"] == pytest.approx(3 * HOLD)
    assert day["spent"] + day["held"] <= day["limit"]
    assert day["resets_at"].endswith("T00:00:00Z")
    assert report["periods"]["month"]["limit"] is None
    metrics = requests.get(service.url + "/metrics", timeout=10).text
    assert 'chatapp_spend_ceiling_used_ratio{period="day"} 0.857' in metrics
    assert 'chatapp_spend_ceiling{currency="USD",kind="hard",period="day"} 0.35' in (
        metrics
    )

    end_all(client, held)
    # Cancelled before a word: they cost nothing, and hold nothing any more.
    assert settled(service)["spent"] == 0
    _, events = client.answer("fake: | after the ceiling let go")
    assert events[-1].event == "done"
    day = settled(service)
    assert day["spent"] == 0.008  # 8 pieces of output at 1000 a million
    models = spend(service)["models"]
    assert models[MODEL] == {"spent": 0.008, "turns": 4}


def test_past_a_soft_ceiling_new_turns_ask_the_fallback_model(
    service_factory: ServiceFactory, fake_provider: FakeProvider, mode: dict[str, str]
) -> None:
    service = service_factory(
        **spend_settings(
            fake_provider,
            CHATAPP_SPEND_SOFT_LIMITS="0.000001/day",
            CHATAPP_FALLBACK_MODEL=CHEAP,
            **mode,
        )
    )
    client = ChatClient(service.url)
    _, first = client.answer("fake: | on the primary")
    _, second = client.answer("fake: | on the fallback")
    asked = [r.body["model"] for r in fake_provider.requests if r.body]
    assert asked == [MODEL, CHEAP]
    assert data_of(first, "start")[0]["model"] == MODEL
    assert data_of(second, "start")[0]["model"] == CHEAP
    report = spend(service)
    assert report["periods"]["day"]["soft_limit"] == 0.000001
    wait_for(
        lambda: spend(service)["models"].get(CHEAP, {}).get("turns") == 1,
        10,
        "the fallback's turn to be settled",
    )


def test_a_turn_that_fell_back_is_priced_at_the_fallback_model(
    service_factory: ServiceFactory, fake_provider: FakeProvider, mode: dict[str, str]
) -> None:
    service = service_factory(
        **spend_settings(
            fake_provider,
            CHATAPP_SPEND_LIMITS="1/day",
            CHATAPP_FALLBACK_MODEL=CHEAP,
            CHATAPP_UPSTREAM_RETRIES="0",
            **mode,
        )
    )
    fake_provider.fail_next(1, 503)  # the primary is down: the fallback answers
    _, events = ChatClient(service.url).answer("fake: | from the fallback")
    asked = [r.body["model"] for r in fake_provider.requests if r.body]
    assert asked == [MODEL, CHEAP]
    [usage] = data_of(events, "usage")
    assert usage["output_tokens"] > 0
    # Priced at the fallback's 100 a million output tokens, not the primary's.
    expected = {CHEAP: {"spent": usage["output_tokens"] * 100 / 1e6, "turns": 1}}
    wait_for(
        lambda: spend(service)["models"] == expected,
        10,
        f"the turn to be settled as {expected}",
    )


def test_concurrent_turns_never_overshoot_the_ceiling(
    service_factory: ServiceFactory, fake_provider: FakeProvider, mode: dict[str, str]
) -> None:
    service = service_factory(
        **spend_settings(fake_provider, CHATAPP_SPEND_LIMITS="1/day", **mode)
    )
    client = ChatClient(service.url)
    responses = start_all(client, STALL_PAID, 200)
    codes = sorted({r.status_code for r in responses})
    assert codes == [201, 429], codes
    refusals = {r.json()["error"]["code"] for r in responses if r.status_code == 429}
    assert refusals == {"site_budget_exhausted"}
    started = [turn_of(r) for r in responses if r.status_code == 201]
    day = spend(service)["periods"]["day"]
    used = day["spent"] + day["held"]
    # Never past the ceiling; full up to less than one turn's reservation.
    assert 1 - HOLD < used <= 1, day
    assert len(started) == round(used / HOLD)

    end_all(client, started)
    day = settled(service)
    assert day["spent"] == pytest.approx(len(started) * 0.002)


def test_a_cached_answer_is_served_at_the_ceiling(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **spend_settings(
            fake_provider, CHATAPP_SPEND_LIMITS="0.35/day", CHATAPP_CACHE_TTL="60"
        )
    )
    client = ChatClient(service.url)
    client.answer("fake: | an answer worth keeping")
    held = [client.start(STALL) for _ in range(3)]
    assert client.post(message="a new question").status_code == 429

    _, events = client.answer("fake: | an answer worth keeping")
    assert data_of(events, "start")[0]["cached"] is True
    end_all(client, held)


def test_a_cached_answer_with_sources_is_served_at_the_ceiling(
    service_factory: ServiceFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    # With site knowledge on, the answer is cached under a key that covers
    # its sources: the ceiling's check must look for it under that key too.
    service = service_factory(
        **spend_settings(
            fake_provider,
            CHATAPP_SPEND_LIMITS="0.35/day",
            CHATAPP_CACHE_TTL="60",
            CHATAPP_KNOWLEDGE="on",
            CHATAPP_KNOWLEDGE_URL=f"sqlite:///{tmp_path / 'knowledge.sqlite3'}",
        )
    )
    pushed = requests.put(
        service.url + "/api/knowledge/documents",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={
            "url": "https://shop.test/returns",
            "content": "Refunds are paid within five working days.",
            "content_type": "text/plain",
            "title": "Returns",
        },
        timeout=30,
    )
    assert pushed.status_code in (200, 201), pushed.text
    client = ChatClient(service.url)
    question = "fake: | Refunds take five working days [1]."
    _, first = client.answer(question)
    [sources] = data_of(first, "sources")
    assert sources["sources"][0]["url"] == "https://shop.test/returns"
    held = [client.start(STALL) for _ in range(3)]
    assert client.post(message="a new question").status_code == 429

    _, events = client.answer(question)
    assert data_of(events, "start")[0]["cached"] is True
    assert data_of(events, "sources") == [sources]
    end_all(client, held)


# -- alerts ---------------------------------------------------------------------------


class Webhook:
    """A real HTTP server on 127.0.0.1 taking alerts; the first post fails."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.attempts = 0
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with hook._lock:
                    hook.attempts += 1
                    failing = hook.attempts == 1
                    if not failing:
                        hook.posts.append(json.loads(body))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/chatapp"

    def percents(self) -> list[int]:
        with self._lock:
            return sorted(p["percent"] for p in self.posts)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.stop()


# 60 tokens of output at 1000 a million: each of these turns costs 0.06.
COSTLY = "fake: | " + "x" * 180


@pytest.mark.redis
def test_each_threshold_alerts_once_across_two_hosts(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    redis_url: str,
    webhook: Webhook,
) -> None:
    settings = spend_settings(
        fake_provider,
        CHATAPP_SPEND_LIMITS="1/day",
        CHATAPP_ALERT_WEBHOOK=webhook.url,
        CHATAPP_REDIS_URL=redis_url,
        CHATAPP_WORKERS="1",
    )
    hosts = [service_factory(**settings), service_factory(**settings)]
    clients = [ChatClient(h.url) for h in hosts]

    def spent() -> float:
        return float(spend(hosts[0])["periods"]["day"]["spent"])

    # Each host in turn sees the totals past each threshold, so both try to
    # claim each alert; one claim wins.
    refused: set[int] = set()
    for n in range(80):
        i = n % 2
        response = clients[i].post(message=COSTLY)
        if response.status_code == 201:
            clients[i].events(turn_of(response))
        else:
            assert response.json()["error"]["code"] == "site_budget_exhausted"
            refused.add(i)
            spend(hosts[i])  # settles what that host still holds
        if refused == {0, 1} and spent() >= 0.8:
            break
    assert refused == {0, 1}

    wait_for(lambda: len(webhook.percents()) >= 3, 20, "three alerts")
    assert webhook.percents() == [50, 80, 100]
    assert webhook.attempts == 4  # the first failed and was tried again
    for post in webhook.posts:
        assert post["kind"] == "threshold"
        assert post["period"] == "day"
        assert post["limit"] == 1.0
        assert post["currency"] == "USD"
        assert f"{post['percent']}%" in post["text"] or "reached" in post["text"]
    logged = [
        json.loads(line)
        for h in hosts
        for line in h.log_lines()
        if '"spend.alert"' in line
    ]
    assert sorted(line["percent"] for line in logged) == [50, 80, 100]


def test_memory_mode_alerts_each_threshold_once(
    service_factory: ServiceFactory, fake_provider: FakeProvider, webhook: Webhook
) -> None:
    service = service_factory(
        **spend_settings(
            fake_provider,
            CHATAPP_SPEND_LIMITS="0.5/day",
            CHATAPP_ALERT_WEBHOOK=webhook.url,
        )
    )
    client = ChatClient(service.url)
    for _ in range(20):
        response = client.post(message=COSTLY)
        if response.status_code != 201:
            assert response.json()["error"]["code"] == "site_budget_exhausted"
            break
        client.events(turn_of(response))
    else:
        pytest.fail("the ceiling never refused a turn")
    assert client.post(message=COSTLY).status_code == 429  # no second alert
    wait_for(lambda: len(webhook.percents()) >= 3, 20, "three alerts")
    assert webhook.percents() == [50, 80, 100]


# -- start-up and the owner's credentials ------------------------------------------


def test_a_ceiling_over_an_unpriced_model_refuses_to_start(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    with pytest.raises(RuntimeError, match="gunicorn exited early") as failed:
        service_factory(
            **spend_settings(
                fake_provider,
                CHATAPP_SPEND_LIMITS="5/day",
                CHATAPP_PRICES="gpt-5-mini=0.25/2",
            )
        )
    lines = [line for line in str(failed.value).splitlines() if MODEL in line]
    assert lines and "CHATAPP_PRICES has no price for the model" in lines[0]


def test_spend_answers_only_the_owner(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(**spend_settings(fake_provider))
    url = service.url + "/api/spend"
    bare = requests.get(url, timeout=10)
    assert bare.status_code == 401
    assert bare.json()["error"]["code"] == "unauthorized"
    CONTRACT.check(bare, "GET", "/api/spend")
    wrong = requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == "forbidden"
    CONTRACT.check(wrong, "GET", "/api/spend")
    report = spend(service)
    assert report["periods"]["day"]["limit"] is None
    assert report["periods"]["day"]["spent"] == 0

    unpriced = service_factory(
        **openai_settings(fake_provider, CHATAPP_ADMIN_TOKEN=ADMIN)
    )
    off = requests.get(
        unpriced.url + "/api/spend",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert off.status_code == 404
    CONTRACT.check(off, "GET", "/api/spend")


@pytest.mark.redis
def test_a_killed_workers_holds_are_settled_by_another_host(
    service_factory: ServiceFactory, fake_provider: FakeProvider, redis_url: str
) -> None:
    settings = spend_settings(
        fake_provider,
        CHATAPP_SPEND_LIMITS="0.35/day",
        CHATAPP_REDIS_URL=redis_url,
        CHATAPP_WORKERS="1",
    )
    dying, other = service_factory(**settings), service_factory(**settings)
    client = ChatClient(dying.url)
    held = [client.start(STALL_PAID) for _ in range(3)]
    for turn in held:  # each streamed its two pieces before the kill
        assert [e.event for e in client.events(turn, limit=3)][1:] == ["delta"] * 2
    (worker,) = dying.worker_pids()
    os.kill(worker, signal.SIGKILL)

    # The other host refuses until the dead worker's lease lapses, then
    # settles its holds to what its turns streamed, and admits again.
    survivor = ChatClient(other.url)

    def admitted() -> bool:
        response = survivor.post(message="fake: | after the kill")
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "site_budget_exhausted"
            return False
        assert response.status_code == 201, response.text
        survivor.events(turn_of(response))
        return True

    wait_for(admitted, 20, "the dead worker's holds to be settled", every=0.2)
    day = settled(other)
    # Each dead turn is charged what its log holds of the two pieces (a
    # worker writes its log a moment after its own readers see the text),
    # never the 0.1 it held; the new answer's 5 pieces cost 0.005.
    assert 3 * 0.001 + 0.005 <= day["spent"] <= 3 * 0.002 + 0.005
    assert spend(other)["models"][MODEL]["turns"] == 4


# -- the example Prometheus rule -----------------------------------------------------

RULES = ROOT / "deploy" / "prometheus-spend-rules.yml"
RATIO = "chatapp_spend_ceiling_used_ratio"


def test_the_example_alert_rule_is_valid_and_fires_past_80_percent(
    tmp_path: Path,
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (apt-get install prometheus)")
    check = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    rules = {
        r["alert"]: r for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    }
    near = rules["ChatappSpendCeilingNear"]["annotations"]
    # Two hosts report the same site-wide ratio: max() does not add them.
    series = [
        {
            "series": f'{RATIO}{{period="day",instance="{i}"}}',
            "values": "0.5 0.5 0.85x10",
        }
        for i in ("a", "b")
    ]
    firing = {
        "exp_labels": {"severity": "warning", "period": "day"},
        "exp_annotations": {
            "summary": "chatapp has used 85% of its day spend ceiling",
            "description": near["description"],
        },
    }
    unit = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "ChatappSpendCeilingNear"},
                    {
                        "eval_time": "10m",
                        "alertname": "ChatappSpendCeilingNear",
                        "exp_alerts": [firing],
                    },
                    {"eval_time": "10m", "alertname": "ChatappSpendCeilingReached"},
                ],
            }
        ],
    }
    test_file = tmp_path / "spend-rules-test.yml"
    test_file.write_text(yaml.safe_dump(unit))
    tested = subprocess.run(
        [promtool, "test", "rules", str(test_file)], capture_output=True, text=True
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
