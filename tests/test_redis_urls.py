"""CHATAPP_REDIS_URL forms, and the hash tags that keep a turn on one slot."""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from chatapp.errors import StoreError
from chatapp.store.layout_redis import TURN_TAGS
from chatapp.store.layout_redis import turn_tag
from chatapp.store.redis import CLUSTER
from chatapp.store.redis import SENTINEL
from chatapp.store.redis import SINGLE
from chatapp.store.redis import connect
from chatapp.store.redis import guard
from chatapp.store.redis import parse
from tests.conftest import free_port


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "service", "db", "tls"),
    [
        ("redis://127.0.0.1:6379/0", SINGLE, (), "", 0, False),
        (
            "rediss://u:p@cache.example:6380/0?ssl_cert_reqs=required",
            SINGLE,
            (),
            "",
            0,
            True,
        ),
        ("unix:///run/redis.sock?db=2", SINGLE, (), "", 0, False),
        (
            "redis+sentinel://10.0.0.1:26379,10.0.0.2:26379/mymaster",
            SENTINEL,
            (("10.0.0.1", 26379), ("10.0.0.2", 26379)),
            "mymaster",
            0,
            False,
        ),
        (
            "redis+sentinel://:secret@s1:26379/mymaster/3",
            SENTINEL,
            (("s1", 26379),),
            "mymaster",
            3,
            False,
        ),
        (
            "rediss+cluster://user:pw@c1:7000,c2:7001?ssl_ca_certs=/etc/ca.pem",
            CLUSTER,
            (("c1", 7000), ("c2", 7001)),
            "",
            0,
            True,
        ),
    ],
)
def test_url_forms_name_their_kind_of_redis(
    url: str,
    kind: str,
    nodes: tuple[tuple[str, int], ...],
    service: str,
    db: int,
    tls: bool,
) -> None:
    target = parse(url)
    assert (target.kind, target.nodes, target.service, target.db, target.tls) == (
        kind,
        nodes,
        service,
        db,
        tls,
    )


def test_credentials_and_tls_options_reach_every_connection() -> None:
    target = parse(
        "rediss+cluster://user:pw@c1:7000?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required"
    )
    assert target.options == {
        "username": "user",
        "password": "pw",
        "ssl_ca_certs": "/ca.pem",
        "ssl_cert_reqs": "required",
    }


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://x", "must start with"),
        ("redis+cluster://", "no host:port"),
        ("redis+cluster://c1", "not host:port"),
        ("redis+cluster://c1:7000/1", "no path"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/m/x", "db"),
        ("redis+sentinel://s1:port/m", "port"),
        ("redis://h:1/0?socket_timeout=soon", "socket_timeout"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse(url)


def test_a_cluster_that_is_away_at_start_is_a_store_error_later() -> None:
    client = connect(f"redis+cluster://127.0.0.1:{free_port()}", 4)
    with pytest.raises(StoreError), guard("ping"):
        client.ping()
    with pytest.raises(redis.RedisError):
        client.set("k", "v")


def test_each_turn_tag_hashes_into_its_own_sixteenth_of_the_slots() -> None:
    bands = [key_slot(tag.encode()) // 1024 for tag in TURN_TAGS]
    assert bands == list(range(16))


def test_a_turns_keys_share_one_slot_and_turns_spread_over_the_tags() -> None:
    ids = [f"turn-{n:04d}" for n in range(1600)]
    for turn_id in ids[:50]:
        tag = turn_tag(turn_id)
        keys = [
            f"chatapp:t:{{{tag}}}:{turn_id}" + s
            for s in ("", ":cancel", ":reader", ":reaped")
        ]
        assert len({key_slot(k.encode()) for k in keys}) == 1
    counts = [sum(1 for t in ids if turn_tag(t) == tag) for tag in TURN_TAGS]
    assert min(counts) > 60 and max(counts) < 140
