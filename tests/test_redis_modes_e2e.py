"""Redis the way production runs it: Sentinel failover, Redis Cluster.

Real topologies on 127.0.0.1 (tests/redis_topologies.py), two gunicorn
instances on each. A session of turns on a cluster leaves every key it wrote
on the slot of its hash tag, and no command of it crossed slots; a primary
lost under 50 streaming turns ends or continues each of them cleanly,
refuses new turns only with 503 over_capacity + Retry-After, and the service
is whole again within seconds of the new primary taking over.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import pytest
import redis
import requests

from chatapp.store.layout_redis import TURN_TAGS
from chatapp.store.layout_redis import turn_tag
from chatapp.store.redis import connect
from chatapp.store.redis_cluster import slot_pipeline
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import Turn
from tests.conftest import data_of
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.redis_topologies import RedisClusterSet
from tests.redis_topologies import SentinelSet
from tests.redis_topologies import cli
from tests.test_botcheck_e2e import fresh_solution
from tests.test_relay_e2e import assert_well_formed
from tests.test_relay_e2e import client_turn

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

SECRET = "shared-test-secret-for-every-topology"
RATE = 12  # turns a client may start per minute in the cluster session


# -- a session of turns on a cluster: every key on its tag's slot ----------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    topology = RedisClusterSet().start()
    yield topology
    topology.stop()


def test_a_session_on_a_cluster_keeps_every_key_to_its_slot(
    service_factory: ServiceFactory,
    cluster: RedisClusterSet,
    fake_provider: FakeProvider,
) -> None:
    settings = openai_settings(
        fake_provider,
        CHATAPP_REDIS_URL=cluster.url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_RATE_LIMITS=f"{RATE}/minute",
        CHATAPP_DAILY_TOKEN_BUDGET="100000",
        CHATAPP_PRICES="gpt-4o-mini=0.15/0.60",  # the site's spend, held too
        CHATAPP_SPEND_LIMITS="100/day;1000/month",
        CHATAPP_CACHE_TTL="60",
        CHATAPP_BOT_CHECK="pow",
        CHATAPP_BOT_CHECK_MAX_NUMBER="2000",
        CHATAPP_HEARTBEAT_SECONDS="0.5",
    )
    host_a, host_b = service_factory(**settings), service_factory(**settings)
    a = ChatClient(host_a.url)
    first = a.post(message="fake: | hello cluster", altcha=fresh_solution(host_a))
    assert first.status_code == 201, first.text
    a.token = first.json()["token"]
    b = ChatClient(host_b.url, token=a.token)
    assert text_of(a.events(client_turn(first.json()))) == "hello cluster"

    # Resume on the other host, halfway through.
    answer = "resumed on B: every token once, in order"
    turn = a.start(Behaviour(text=answer, delay_ms=15, pieces=2).as_directive())
    head = a.events(turn, limit=4)
    events = head + b.events(turn, last_event_id=int(head[-1].id or 0))
    assert_well_formed(events)
    assert text_of(events) == answer
    # The conversation goes on from B.
    b.answer("and on B", conversation_id=turn.conversation_id)
    url = f"{host_a.url}/api/conversations/{turn.conversation_id}"
    body = a.http.get(url, headers={"X-Chat-Token": a.token}, timeout=10).json()
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"] * 2
    # Cancel from B a turn A produces.
    stalled = a.start("fake: stall_after=2 | a b c d e f")
    fake_provider.wait_for_stream_start(1)
    assert b.cancel(stalled).status_code == 202
    assert data_of(b.events(stalled), "done") == [{"finish_reason": "cancelled"}]
    # An idempotent retry lands on B.
    key = {"Idempotency-Key": "cluster-retry-1"}
    once = a.post(message="fake: | paid once", headers=dict(key))
    again = b.post(message="fake: | paid once", headers=dict(key))
    assert once.json() == again.json()
    # The same first question again: the cached answer.
    cached = b.post(message="fake: | hello cluster")
    assert cached.status_code == 201
    assert text_of(b.events(client_turn(cached.json()))) == "hello cluster"

    # The rate limit counts exactly across both hosts: after the first probe
    # says r turns are left, exactly r more are let in, from either host.
    probe = a.post(message="fake: | how many left")
    assert probe.status_code == 201
    left = int(probe.headers["RateLimit"].rsplit("r=", 1)[1].split(";")[0])
    assert 0 < left < RATE
    codes = [
        (b if n % 2 else a).post(message=f"fake: | n{n}").status_code
        for n in range(left + 3)
    ]
    assert codes == [201] * left + [429] * 3

    _assert_keys_keep_to_their_slots(cluster)


def test_a_pipeline_to_a_server_that_lost_the_slot_goes_where_it_moved(
    cluster: RedisClusterSet,
) -> None:
    """slot_pipeline goes straight to the slot's primary. With a stale slot
    map (as after a failover) that server answers a real MOVED: no command
    ran, so they go again through the cluster's pipeline, exactly once."""
    client: Any = connect(cluster.url, max_connections=8)
    key = "chatapp:t:{3}:moved-test"
    slot = client.keyslot(key)
    topology = client.topology
    right = topology.get_node_from_slot(slot)
    wrong = next(n for n in client.get_primaries() if n.name != right.name)
    try:
        topology.slots_cache[slot] = [wrong]
        with slot_pipeline(client, key) as pipe:
            pipe.rpush(key, "a")
            pipe.expire(key, 60)
            assert pipe.execute() == [1, True]
        assert client.lrange(key, 0, -1) == [b"a"]
        assert topology.get_node_from_slot(slot).name == right.name

        # Replies in place are the caller's to write again; the map is fixed.
        topology.slots_cache[slot] = [wrong]
        with slot_pipeline(client, key) as pipe:
            pipe.rpush(key, "b")
            (reply,) = pipe.execute(raise_on_error=False)
        assert isinstance(reply, redis.exceptions.MovedError)
        assert topology.get_node_from_slot(slot).name == right.name
        assert client.lrange(key, 0, -1) == [b"a"]
    finally:
        client.delete(key)
        client.close()


def _assert_keys_keep_to_their_slots(cluster: RedisClusterSet) -> None:
    keys = cluster.keys()
    families = (
        "chatapp:t:",
        "chatapp:c:",
        "chatapp:cm:",  # a conversation's turns and feedback
        "chatapp:tc:",  # a turn's conversation
        "chatapp:oc:",  # an identity's conversations
        "chatapp:idem:",
        "chatapp:answer:",
        "chatapp:worker:",
        "chatapp:limits:",
        "chatapp:spend:",
        "chatapp:altcha:",
        "LIMITS:",
    )
    assert keys, "the session wrote nothing"
    assert [k for k in keys if not k.startswith(families)] == []
    for name in (
        "chatapp:t:",
        "chatapp:c:",
        "chatapp:idem:",
        "chatapp:spend:",
        "LIMITS:",
    ):
        assert any(k.startswith(name) for k in keys), f"no {name} key"
    turns: dict[str, set[int]] = {}
    for key in keys:
        if key.startswith("chatapp:t:"):
            tag = key[key.index("{") + 1 : key.index("}")]
            turn_id = key.split("}:", 1)[1].split(":", 1)[0]
            assert tag in TURN_TAGS and tag == turn_tag(turn_id), key
            turns.setdefault(turn_id, set()).add(cluster.slot_of(key))
    # A turn's keys (stream, cancel flag, reader mark) share one slot.
    assert turns and all(len(slots) == 1 for slots in turns.values())
    # A conversation's messages and its turns and feedback share one slot.
    for key in keys:
        if key.startswith("chatapp:cm:"):
            messages = "chatapp:c:" + key.removeprefix("chatapp:cm:")
            assert cluster.slot_of(key) == cluster.slot_of(messages), key
    # Redis Cluster refuses any command that names keys of two slots
    # (CROSSSLOT) and fails a script that touches a key off its node: no
    # command of the session was refused or failed. (A new connection's HELLO
    # and CLIENT SETINFO fail on Redis 7.0, which lacks them; an EVALSHA may
    # meet a node without the script and is sent again after SCRIPT LOAD.)
    for port in cluster.primary_ports():
        noscript = _stats(cli(port, "INFO", "errorstats")).get("errorstat_NOSCRIPT")
        for name, stat in _stats(cli(port, "INFO", "commandstats")).items():
            bad = int(stat["rejected_calls"]) + int(stat["failed_calls"])
            if name in ("cmdstat_hello", "cmdstat_client|setinfo"):
                continue
            if name == "cmdstat_evalsha" and noscript:
                bad -= int(noscript["count"])
            assert bad <= 0, (port, name, stat)


def _stats(info: str) -> dict[str, dict[str, str]]:
    """Read INFO lines `name:k=v,k=v` into a dict of dicts."""
    out = {}
    for line in info.splitlines():
        name, found, rest = line.strip().partition(":")
        if found and "=" in rest:
            out[name] = dict(pair.split("=", 1) for pair in rest.split(","))
    return out


# -- failover under 50 streaming turns ---------------------------------------------


@dataclass
class Probe:
    """New turns and readiness asked for every 100 ms while a failover runs."""

    hosts: list[Service]
    results: list[tuple[float, str, int, str, str | None]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        clients = [ChatClient(h.url) for h in self.hosts]
        n = 0
        while not self.stop.is_set():
            client = clients[n % len(clients)]
            n += 1
            try:
                response = client.post(message="fake: | probe")
                code = response.json().get("error", {}).get("code", "")
                self.results.append(
                    (
                        time.monotonic(),
                        "turn",
                        response.status_code,
                        code,
                        response.headers.get("Retry-After"),
                    )
                )
                if response.status_code == 201:
                    self.results.append(self.read(client, response.json()))
                ready = client.http.get(client.base_url + "/readyz", timeout=10)
                self.results.append(
                    (time.monotonic(), "readyz", ready.status_code, "", None)
                )
            except requests.RequestException as exc:
                self.results.append((time.monotonic(), "turn", 0, repr(exc), None))
            time.sleep(0.1)

    @staticmethod
    def read(
        client: ChatClient, body: dict[str, Any]
    ) -> tuple[float, str, int, str, str | None]:
        """Read an accepted turn to its end: 200 and `done` last, or what not."""
        turn = Turn(body["id"], body["conversation_id"], body["stream_url"], "")
        response = client.open_stream(turn)
        try:
            if response.status_code != 200:
                return (time.monotonic(), "read", response.status_code, "", None)
            decoder = SSEDecoder()
            names: list[str] = []
            for data in response.raw.stream(1024, decode_content=False):
                names.extend(e.event for e in decoder.feed(data))
                if "done" in names:
                    break
            return (time.monotonic(), "read", 200, ",".join(names[-2:]), None)
        finally:
            response.close()

    def whole_again_at(self, after: float) -> float | None:
        """When the last refusal after `after` was answered (all fine since)."""
        later = [r for r in self.results if r[0] >= after]
        failed = [r[0] for r in later if r[2] not in (200, 201)]
        if not later or later[-1][2] not in (200, 201):
            return None
        return max(failed) if failed else after


def _read_all(client: ChatClient, turn: Any, out: dict[str, Any]) -> None:
    try:
        out[turn.id] = client.events(turn)
    except (requests.RequestException, AssertionError) as exc:
        out[turn.id] = exc


def _failover_under_load(
    hosts: list[Service], fail: Callable[[], None], promoted: Callable[[], bool]
) -> dict[str, float]:
    a = ChatClient(hosts[0].url)
    b = ChatClient(hosts[1].url, token=a.token)
    turns = []
    for n in range(50):
        text = f"turn {n} " + "w " * 60
        directive = Behaviour(text=text, delay_ms=60, pieces=2).as_directive()
        turns.append((a if n % 2 else b).start(directive))
    results: dict[str, Any] = {}
    readers = [
        # Half are read by the host that produces them, half by the other.
        threading.Thread(target=_read_all, args=(c, t, results), daemon=True)
        for n, t in enumerate(turns)
        for c in [(a, b)[(n // 2) % 2]]
    ]
    for reader in readers:
        reader.start()
    probe = Probe(hosts)
    prober = threading.Thread(target=probe.run, daemon=True)
    prober.start()
    time.sleep(1.0)
    lost_at = time.monotonic()
    fail()
    while not promoted():
        assert time.monotonic() - lost_at < 30, "no new primary"
        time.sleep(0.05)
    promoted_at = time.monotonic()
    deadline = promoted_at + 20
    whole_at = None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        whole_at = probe.whole_again_at(lost_at)
        if whole_at is not None and time.monotonic() - whole_at >= 2:
            break
    probe.stop.set()
    prober.join(15)
    for reader in readers:
        reader.join(40)

    # New turns: only 201, or 503 over_capacity with Retry-After; never a 500.
    for _, what, status, code, retry_after in probe.results:
        if what == "turn":
            assert status in (201, 503), (status, code)
            if status == 503:
                assert code == "over_capacity" and retry_after and int(retry_after) > 0
        elif what == "read":
            # An accepted turn's reader is never told 404, even when its first
            # writes were lost with the old primary: it ends with `done`.
            assert status == 200 and code.endswith("done"), (status, code)
        else:
            assert status in (200, 503), status
    # Turns in flight: each continues to its end or ends with error + done.
    endings: dict[str, int] = {}
    for turn in turns:
        events = results.get(turn.id)
        assert isinstance(events, list), (turn.id, events)
        names = [e.event for e in events]
        assert names.count("done") == 1 and names[-1] == "done", names[-3:]
        ending = "error" if "error" in names else "complete"
        endings[ending] = endings.get(ending, 0) + 1
    assert whole_at is not None, "the service did not become whole again"
    times = {
        "promoted_after_loss_s": round(promoted_at - lost_at, 2),
        "whole_after_loss_s": round(whole_at - lost_at, 2),
        "whole_after_promotion_s": round(max(0.0, whole_at - promoted_at), 2),
        "refused_turns": sum(
            1 for r in probe.results if r[1] == "turn" and r[2] == 503
        ),
        "turns_complete": endings.get("complete", 0),
        "turns_error_done": endings.get("error", 0),
    }
    print(f"\nfailover: {times}")
    assert times["whole_after_promotion_s"] < 5
    return times


def _hosts(factory: ServiceFactory, fake: FakeProvider, url: str) -> list[Service]:
    settings = openai_settings(
        fake,
        CHATAPP_REDIS_URL=url,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_HEARTBEAT_SECONDS="0.5",
    )
    return [factory(**settings), factory(**settings)]


@pytest.mark.serial  # times the failover against a bound
def test_sentinel_failover_under_50_streaming_turns(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    sentinels = SentinelSet().start()
    try:
        hosts = _hosts(service_factory, fake_provider, sentinels.url)
        old = sentinels.current_primary()
        _failover_under_load(
            hosts,
            sentinels.kill_primary,
            lambda: sentinels.current_primary() not in (old, None),
        )
    finally:
        sentinels.stop()


@pytest.mark.serial  # times the failover against a bound
def test_cluster_failover_under_50_streaming_turns(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    cluster = RedisClusterSet().start()
    try:
        hosts = _hosts(service_factory, fake_provider, cluster.url)
        # The primary that holds the cancel channel and some turn tags.
        victim = cluster.primary_ports()[0]
        before = set(cluster.primary_ports())
        _failover_under_load(
            hosts,
            lambda: cluster.kill(victim),
            lambda: len(set(cluster.primary_ports()) - before) == 1,
        )
    finally:
        cluster.stop()
