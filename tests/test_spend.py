"""The spend governor's parts: prices, a turn's cost, ceilings, the ledger."""

from __future__ import annotations

import json
import random
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from typing import ClassVar

import pytest
import requests

from chatapp.config import load_config
from chatapp.errors import ConfigError
from chatapp.prices import Price
from chatapp.prices import parse_ceilings
from chatapp.prices import parse_percentages
from chatapp.prices import parse_prices
from chatapp.store.redis import connect
from chatapp.store.spend import Ask
from chatapp.store.spend import MemorySpendStore
from chatapp.store.spend import Periods
from chatapp.store.spend import RedisSpendStore
from chatapp.store.spend import Settlement
from chatapp.store.spend import SpendStore
from chatapp.store.spend import Totals
from chatapp.store.spend import Verdict
from chatapp.turns.admit import Gate
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnInfo
from chatapp.turns.spend import Governor
from chatapp.turns.spend import period_ends
from chatapp.turns.spend import periods_at
from chatapp.upstream.anthropic import _State as AnthropicUsage
from chatapp.upstream.openai_compat import _Batch as OpenAIUsage
from chatapp.upstream.webhook import Webhook
from tests.conftest import RedisServer
from tests.redis_topologies import RedisClusterSet

# -- prices ------------------------------------------------------------------------


def test_inline_prices_are_micro_units_per_million_tokens() -> None:
    prices = parse_prices("gpt-5-mini=0.25/2.00; claude-sonnet-4-5=3/15/0.30;")
    assert prices == {
        "gpt-5-mini": Price(250_000, 2_000_000),
        "claude-sonnet-4-5": Price(3_000_000, 15_000_000, 300_000),
    }


def test_a_model_name_may_hold_slashes() -> None:
    assert parse_prices("openai/gpt-4o=2.5/10")["openai/gpt-4o"] == Price(
        2_500_000, 10_000_000
    )


def test_prices_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    path.write_text(
        json.dumps(
            {
                "gpt-5": {"input": 1.25, "output": 10, "cached_input": 0.125},
                "claude-haiku-4-5": {"input": "1", "output": "5"},
            }
        )
    )
    prices = parse_prices(f"@{path}")
    assert prices["gpt-5"] == Price(1_250_000, 10_000_000, 125_000)
    assert prices["claude-haiku-4-5"] == Price(1_000_000, 5_000_000)


BAD_PRICES = [
    "gpt-5-mini",
    "gpt-5-mini=0.25",
    "gpt-5-mini=0.25/2/1/1",
    "=0.25/2",
    "gpt-5-mini=-1/2",
    "gpt-5-mini=abc/2",
    "gpt-5-mini=0.0000001/2",  # finer than a micro-unit per million tokens
    "gpt-5-mini=nan/2",
    ";",
]


@pytest.mark.parametrize("raw", BAD_PRICES)
def test_bad_prices_stop_start_up_in_one_line(raw: str) -> None:
    with pytest.raises(ConfigError, match="CHATAPP_PRICES") as refused:
        load_config(environ={"CHATAPP_PRICES": raw})
    assert "\n" not in str(refused.value)


def test_an_unreadable_prices_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(environ={"CHATAPP_PRICES": f"@{tmp_path}/missing.json"})
    broken = tmp_path / "broken.json"
    broken.write_text('{"gpt-5": {"input": 1}}')
    with pytest.raises(ConfigError, match="needs at least input and output"):
        load_config(environ={"CHATAPP_PRICES": f"@{broken}"})


COSTS = [
    # price, input, output, cached input, micro-units
    (Price(250_000, 2_000_000), 1_000_000, 0, 0, 250_000),
    (Price(250_000, 2_000_000), 14, 30, 0, 64),  # 3.5 + 60 = 63.5, rounded up
    (Price(3_000_000, 15_000_000, 300_000), 1000, 100, 800, 600 + 240 + 1500),
    (Price(3_000_000, 15_000_000), 1000, 0, 800, 3000),  # no cached price
    (Price(1, 1), 1, 1, 0, 1),  # a trace of a cost is never zero
    (Price(250_000, 2_000_000), 0, 0, 0, 0),
]


@pytest.mark.parametrize(("price", "inp", "out", "cached", "micros"), COSTS)
def test_a_turns_cost_is_exact_and_rounded_up_once(
    price: Price, inp: int, out: int, cached: int, micros: int
) -> None:
    assert price.cost(inp, out, cached) == micros


def test_a_month_of_costs_sums_exactly() -> None:
    price = parse_prices("m=0.1/0.3")["m"]
    total = sum(price.cost(7, 3) for _ in range(1_000_000))
    assert total == 1_000_000 * 2  # 0.7 + 0.9 = 1.6 micro-units, rounded up: 2


def test_usage_reports_cached_input_of_both_providers() -> None:
    openai = OpenAIUsage()
    openai.take(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 1200,
                "completion_tokens": 300,
                "prompt_tokens_details": {"cached_tokens": 1024},
                "completion_tokens_details": {"reasoning_tokens": 250},
            },
        }
    )
    chunk = openai.chunk()
    assert (chunk.input_tokens, chunk.output_tokens) == (1200, 300)
    assert chunk.cached_input_tokens == 1024
    anthropic = AnthropicUsage()
    anthropic.handle(
        "message_start",
        {
            "type": "message_start",
            "message": {
                "usage": {
                    "input_tokens": 10,
                    "cache_read_input_tokens": 2000,
                    "output_tokens": 1,
                }
            },
        },
    )
    (usage,) = anthropic.handle(
        "message_delta",
        {"type": "message_delta", "delta": {}, "usage": {"output_tokens": 80}},
    )
    assert (usage.input_tokens, usage.output_tokens) == (2010, 80)
    assert usage.cached_input_tokens == 2000


# -- ceilings and start-up -------------------------------------------------------------


def test_ceilings_per_day_and_month() -> None:
    assert parse_ceilings("20/day;300/month") == {
        "day": 20_000_000,
        "month": 300_000_000,
    }
    assert parse_ceilings(" 0.5/DAY ") == {"day": 500_000}
    assert parse_percentages("80, 50,100") == (50, 80, 100)


@pytest.mark.parametrize(
    "raw", ["20", "20/week", "0/day", "20/day;30/day", "x/day", "2e9/day"]
)
def test_bad_ceilings_stop_start_up(raw: str) -> None:
    with pytest.raises(ConfigError, match="CHATAPP_SPEND_LIMITS"):
        load_config(environ={"CHATAPP_SPEND_LIMITS": raw, "CHATAPP_PRICES": "demo=1/1"})


def test_a_ceiling_with_an_unpriced_model_stops_start_up_naming_it() -> None:
    env = {"CHATAPP_SPEND_LIMITS": "20/day", "CHATAPP_PRICES": "gpt-5-mini=0.25/2"}
    with pytest.raises(ConfigError, match="'demo'") as refused:
        load_config(environ=env)
    assert "\n" not in str(refused.value)
    priced = {**env, "CHATAPP_MODEL": "gpt-5-mini", "CHATAPP_FALLBACK_MODEL": "nano"}
    with pytest.raises(ConfigError, match="'nano'"):
        load_config(environ=priced)
    assert load_config(environ={**priced, "CHATAPP_FALLBACK_MODEL": ""})


def test_soft_ceilings_need_a_fallback_model() -> None:
    env = {"CHATAPP_SPEND_SOFT_LIMITS": "5/day", "CHATAPP_PRICES": "demo=1/1"}
    with pytest.raises(ConfigError, match="CHATAPP_FALLBACK_MODEL"):
        load_config(environ=env)


def test_prices_without_ceilings_need_not_cover_every_model() -> None:
    config = load_config(environ={"CHATAPP_PRICES": "gpt-5-mini=0.25/2"})
    assert "demo" not in config.prices


# -- the ledger: memory and Redis, one contract ------------------------------------

PERIODS = Periods("20260115", "202601", 3600, 86400)


def ask(
    cost: int, hard: tuple[int, int] = (0, 0), soft: tuple[int, int] = (0, 0)
) -> Ask:
    return Ask("big", cost, "small", cost // 10, hard, soft)


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def ledger(request: pytest.FixtureRequest) -> SpendStore:
    if request.param == "memory":
        return MemorySpendStore()
    server: RedisServer = request.getfixturevalue("redis_server")
    server.command("-n", "9", "FLUSHDB")
    return RedisSpendStore(connect(f"redis://127.0.0.1:{server.port}/9", 64))


class TestLedgerContract:
    def test_a_turn_holds_in_both_periods_or_in_neither(
        self, ledger: SpendStore
    ) -> None:
        held = ledger.reserve(PERIODS, ask(60, hard=(100, 1000)), None)
        assert (held.model, held.amount, held.refused) == ("big", 60, ())
        assert held.totals == Totals((60, 60), (0, 0))
        refused = ledger.reserve(PERIODS, ask(60, hard=(100, 1000)), None)
        assert refused.refused == ("day",)
        assert refused.totals.used == (60, 60)  # nothing held by a refusal
        month = ledger.reserve(PERIODS, ask(40, hard=(0, 90)), None)
        assert month.refused == ("month",)
        both = ledger.reserve(PERIODS, ask(60, hard=(100, 90)), None)
        assert both.refused == ("day", "month")

    def test_past_a_soft_ceiling_the_fallback_is_held(self, ledger: SpendStore) -> None:
        first = ledger.reserve(PERIODS, ask(100, soft=(50, 0)), None)
        assert (first.model, first.amount) == ("big", 100)
        second = ledger.reserve(PERIODS, ask(100, soft=(50, 0)), None)
        assert (second.model, second.amount) == ("small", 10)
        assert second.totals.used == (110, 110)

    def test_settlements_give_back_the_unspent_and_count_by_model(
        self, ledger: SpendStore
    ) -> None:
        ledger.reserve(PERIODS, ask(100), None)
        ledger.reserve(PERIODS, ask(100), None)
        settle = Settlement()
        settle.add("big", 100, 7)
        settle.add("big", 100, 3)
        verdict = ledger.reserve(PERIODS, None, settle)
        assert verdict.totals == Totals((10, 10), (10, 10))
        totals, models = ledger.totals(PERIODS)
        assert totals == verdict.totals
        assert models == {"big": (10, 2)}
        back = Settlement()
        back.give_back(5)
        assert ledger.reserve(PERIODS, None, back).totals.used == (5, 5)

    def test_a_new_day_starts_at_zero_in_the_same_month(
        self, ledger: SpendStore
    ) -> None:
        ledger.reserve(PERIODS, ask(100), None)
        tomorrow = Periods("20260116", "202601", 3600, 86400)
        assert ledger.reserve(tomorrow, ask(1), None).totals.used == (1, 101)

    def test_an_alert_is_claimed_once(self, ledger: SpendStore) -> None:
        assert ledger.claim_alert("day:20260115:80", 60)
        assert not ledger.claim_alert("day:20260115:80", 60)
        assert ledger.claim_alert("day:20260116:80", 60)


@pytest.mark.redis
def test_concurrent_turns_never_overshoot_a_ceiling(redis_server: RedisServer) -> None:
    """200 turns of uneven sizes at once, from 50 threads on 4 clients."""
    redis_server.command("-n", "10", "FLUSHDB")
    url = f"redis://127.0.0.1:{redis_server.port}/10"
    stores = [RedisSpendStore(connect(url, 64)) for _ in range(4)]
    limit = 10_000
    costs = [random.Random(n).randint(50, 400) for n in range(200)]

    def turn(n: int) -> Verdict:
        return stores[n % 4].reserve(PERIODS, ask(costs[n], hard=(limit, 0)), None)

    with ThreadPoolExecutor(50) as pool:
        verdicts = list(pool.map(turn, range(200)))
    held = sum(v.amount for v in verdicts if not v.refused)
    refused = [c for c, v in zip(costs, verdicts, strict=True) if v.refused]
    used = stores[0].totals(PERIODS)[0].used[0]
    assert used == held <= limit
    assert refused, "the ceiling was never reached"
    assert limit - used < max(costs)  # full up to the largest single reservation


# -- alerts ----------------------------------------------------------------------------


def governor(**settings: Any) -> Governor:
    env = {"CHATAPP_PRICES": "demo=1/2;cheap=0.1/0.2", **settings}
    return Governor(load_config(environ=env))


def test_each_threshold_is_found_once_per_period() -> None:
    g = governor(CHATAPP_SPEND_LIMITS="1/day;10/month")
    assert g.crossed(PERIODS, Totals((400_000, 400_000), (400_000, 400_000)), ()) == []
    found = g.crossed(PERIODS, Totals((900_000, 900_000), (810_000, 810_000)), ())
    assert [name for name, _ in found] == ["day:20260115:50", "day:20260115:80"]
    alert = found[1][1]
    assert alert.payload() == {
        "text": "chatapp: 80% of this day's spend ceiling is used (0.81 of 1 USD).",
        "kind": "threshold",
        "period": "day",
        "percent": 80,
        "spent": 0.81,
        "limit": 1.0,
        "currency": "USD",
    }
    for name, _ in found:
        g.claimed(name)
    # The ceiling refuses a turn before what was settled reaches it.
    (reached,) = g.crossed(PERIODS, Totals((950_000, 950_000), (900_000, 0)), ("day",))
    assert reached[0] == "day:20260115:100"
    assert "reached its ceiling" in reached[1].payload()["text"]


def test_passing_a_soft_ceiling_alerts_too() -> None:
    g = governor(
        CHATAPP_SPEND_LIMITS="10/day",
        CHATAPP_SPEND_SOFT_LIMITS="2/day",
        CHATAPP_FALLBACK_MODEL="cheap",
        CHATAPP_SPEND_ALERTS="90",
    )
    (soft,) = g.crossed(PERIODS, Totals((2_000_000, 0), (1_500_000, 0)), ())
    assert soft[0] == "day:20260115:soft"
    assert soft[1].payload()["kind"] == "soft_limit"
    assert "fallback model" in soft[1].payload()["text"]


class _Hook(BaseHTTPRequestHandler):
    hits: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.hits.append(self.path)
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/moved":
            self.send_response(307)
            self.send_header("Location", "/elsewhere")
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_the_webhook_never_follows_a_redirect_and_tries_a_few_times() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with requests.Session() as http:
            assert not Webhook(base + "/moved", http, pause=0.01).post({"text": "x"})
            assert _Hook.hits == ["/moved"] * 3
            assert Webhook(base + "/fine", http, pause=0.01).post({"text": "x"})
    finally:
        server.shutdown()
        server.server_close()
    closed = Webhook(base + "/fine", requests.Session(), pause=0.01)
    assert not closed.post({"text": "nobody listens"})


@pytest.mark.redis
def test_the_ledger_keeps_to_one_slot_of_a_cluster() -> None:
    cluster = RedisClusterSet(replicas=0).start()
    try:
        ledger = RedisSpendStore(connect(cluster.url, 8))
        held = ledger.reserve(PERIODS, ask(60, hard=(100, 1000)), None)
        assert held.amount == 60
        settle = Settlement()
        settle.add("big", 60, 20)
        again = ledger.reserve(PERIODS, ask(90, hard=(200, 1000)), settle)
        assert (again.amount, again.refused) == (90, ())
        totals = (Totals((110, 110), (20, 20)), {"big": (20, 1)})
        assert ledger.totals(PERIODS) == totals
        assert ledger.claim_alert("day:20260115:50", 60)
    finally:
        cluster.stop()


# -- the gate: spend held, settled, and counted in memory while Redis is away ----


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own, to kill without disturbing others."""
    server = RedisServer()
    server.start()
    yield server
    server.kill()
    shutil.rmtree(server.dir, ignore_errors=True)


def ended(turn_id: str, output_tokens: int) -> TurnEnd:
    info = TurnInfo(turn_id, "v:x", "conv-0001", 0.0)
    return TurnEnd(info, "stop", None, 0, output_tokens, 40, None)


@pytest.mark.redis
def test_the_gate_holds_and_settles_spend_and_counts_in_memory_while_redis_is_away(
    private_redis: RedisServer,
) -> None:
    env = {
        "CHATAPP_PRICES": "demo=0/1000",  # 100 output tokens at most: 0.1 held
        "CHATAPP_SPEND_LIMITS": "0.25/day",
        "CHATAPP_MAX_OUTPUT_TOKENS": "100",
    }
    client = connect(f"redis://127.0.0.1:{private_redis.port}/0", 8)
    gate = Gate(load_config(environ=env), lambda: 0, client)
    first, second = gate.admit("ip:192.0.2.1"), gate.admit("ip:192.0.2.2")
    third = gate.admit("ip:192.0.2.3")
    assert first.refusal is None and second.refusal is None
    assert third.refusal is not None and third.refusal.code == "site_budget_exhausted"
    gate.release(third)
    gate.started(first, "turn-0001")
    gate.turn_finished(ended("turn-0001", 10))  # waits for the next reservation
    report = gate.spend_report()  # which carries it now
    assert report is not None
    assert report["periods"]["day"] == {
        **report["periods"]["day"],
        "spent": 0.01,
        "held": 0.1,
    }
    assert report["models"] == {"demo": {"spent": 0.01, "turns": 1}}

    private_redis.kill()
    away = gate.admit("ip:192.0.2.4")  # this worker's memory: nothing held yet
    assert away.refusal is None and away.spend_store is gate.spend_memory
    gate.release(away)
    gate.release(second)  # held in Redis, which is away: nothing breaks
    report = gate.spend_report()
    assert report is not None and report["periods"]["day"]["held"] == 0


PERIOD_ENDS = [
    # now (UTC), end of its day, end of its month
    ("2026-01-15T10:00:00", "2026-01-16T00:00:00", "2026-02-01T00:00:00"),
    ("2026-12-31T23:59:59", "2027-01-01T00:00:00", "2027-01-01T00:00:00"),
    ("2028-02-28T12:00:00", "2028-02-29T00:00:00", "2028-03-01T00:00:00"),
]


@pytest.mark.parametrize(("now", "day_end", "month_end"), PERIOD_ENDS)
def test_a_refusal_waits_for_the_end_of_its_period(
    now: str, day_end: str, month_end: str
) -> None:
    def at(text: str) -> float:
        return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()

    moment = at(now)
    assert period_ends(moment) == (at(day_end), at(month_end))
    g = governor(CHATAPP_SPEND_LIMITS="1/day;10/month")
    totals = Totals((0, 0), (0, 0))
    for refused, end in ((("day",), day_end), (("month",), month_end)):
        refusal = g.refusal(Verdict("demo", 1, refused, totals), moment)
        assert (refusal.status, refusal.code) == (429, "site_budget_exhausted")
        assert refusal.retry_after == max(1, round(at(end) - moment))
    both = g.refusal(Verdict("demo", 1, ("day", "month"), totals), moment)
    assert both.retry_after == max(1, round(at(month_end) - moment))
    periods = periods_at(moment)
    assert periods.day == now[:10].replace("-", "")
    assert periods.month == now[:7].replace("-", "")


def test_a_turn_that_fell_back_is_priced_at_the_model_that_answered() -> None:
    env = {
        "CHATAPP_MODEL": "demo",
        "CHATAPP_FALLBACK_MODEL": "cheap",
        "CHATAPP_PRICES": "demo=0/1000;cheap=0/100",
        "CHATAPP_SPEND_LIMITS": "1/day",
        "CHATAPP_MAX_OUTPUT_TOKENS": "100",
    }
    gate = Gate(load_config(environ=env), lambda: 0, None)
    info = TurnInfo("turn-0001", "v:x", "conv-0001", 0.0)
    held = gate.admit("ip:192.0.2.1")
    assert held.refusal is None and held.model == "demo"
    gate.started(held, info.id)
    # The primary failed after reporting 5 input and 2 output tokens; the
    # fallback answered with 10 output tokens (the usage is the sum).
    failed = (("", 5, 2),)
    gate.turn_finished(
        TurnEnd(info, "stop", None, 5, 12, 40, None, model="cheap", failed_usage=failed)
    )
    report = gate.spend_report()
    assert report is not None
    assert report["models"] == {
        "demo": {"spent": 0.002, "turns": 0},  # 2 tokens at 1000 a million
        "cheap": {"spent": 0.001, "turns": 1},  # 10 tokens at 100 a million
    }
    assert report["periods"]["day"]["spent"] == 0.003


@pytest.mark.parametrize(
    ("prices", "held"),
    [
        ("demo=0/1000;dear=0/3000", 300_000),  # the dearer fallback may answer
        ("demo=0/1000;cheap=0/100", 100_000),  # the primary is the worst case
    ],
)
def test_a_turn_holds_the_dearer_of_its_model_and_the_fallback(
    prices: str, held: int
) -> None:
    fallback = prices.split(";")[1].split("=")[0]
    env = {
        "CHATAPP_MODEL": "demo",
        "CHATAPP_FALLBACK_MODEL": fallback,
        "CHATAPP_PRICES": prices,
        "CHATAPP_SPEND_LIMITS": "1/day",
        "CHATAPP_MAX_OUTPUT_TOKENS": "100",
    }
    ask = Governor(load_config(environ=env)).ask(0)
    assert (ask.model, ask.cost) == ("demo", held)
