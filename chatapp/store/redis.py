"""The worker's one Redis client, shared by the turn log, history and limits.

CHATAPP_REDIS_URL names one of three kinds of Redis, each served by
redis-py's own client for it:

  redis://, rediss://, unix://      one server: redis.Redis on a blocking pool
  redis[s]+sentinel://h:p[,h:p…]/service[/db]
                                    the primary Sentinel names: Sentinel.master_for,
                                    found again after a failover
  redis[s]+cluster://h:p[,h:p…]     Redis Cluster: redis.cluster.RedisCluster

The `s` of `rediss` asks for TLS; certificate options ride in the query
string as redis-py's from_url reads them (`ssl_cert_reqs`, `ssl_ca_certs`,
`ssl_certfile`, `ssl_keyfile`, `ssl_check_hostname`, …). A user name and
password before `@` authenticate every connection (with Sentinel, to the
sentinels too). Nothing here retries a command: a retried write could be
applied twice, so callers decide. How commands find their node on Cluster
is in redis_cluster.py.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from urllib.parse import unquote
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.cluster import RedisCluster
from redis.connection import BlockingConnectionPool
from redis.connection import parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel
from redis.sentinel import SentinelConnectionPool

from chatapp.errors import StoreError
from chatapp.store.redis_cluster import LazyRedisCluster
from chatapp.store.redis_cluster import is_cluster

# Every command here is short: nothing blocks on the pool's connections (the
# follower has connections of its own), so a second is plenty, and a Redis
# that does not answer is noticed quickly.
SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0
# Wait this long for a free pooled connection before giving up.
POOL_WAIT = 2.0

SINGLE = "single"
SENTINEL = "sentinel"
CLUSTER = "cluster"

Client = redis.Redis | RedisCluster


@dataclass(frozen=True)
class Target:
    """What a CHATAPP_REDIS_URL names: the kind of Redis and how to reach it."""

    kind: str
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    tls: bool = False
    # Connection options from the URL: credentials, TLS files, timeouts.
    options: dict[str, Any] = field(default_factory=dict)


def parse(url: str) -> Target:
    """Read a CHATAPP_REDIS_URL; raise ValueError saying what is wrong."""
    scheme = url.partition("://")[0]
    if scheme in ("redis", "rediss", "unix"):
        parse_url(url)  # raises ValueError on a bad query value
        return Target(SINGLE, url, tls=scheme == "rediss")
    base, _, kind = scheme.partition("+")
    if base not in ("redis", "rediss") or kind not in (SENTINEL, CLUSTER):
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel://, "
            "rediss+sentinel://, redis+cluster:// or rediss+cluster://"
        )
    parts = urlsplit(url)
    auth, _, hosts = parts.netloc.rpartition("@")
    nodes = tuple(_host_port(h) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ValueError("names no host:port")
    path = [unquote(p) for p in parts.path.split("/") if p]
    service, db = "", 0
    if kind == SENTINEL:
        if not path or len(path) > 2:
            raise ValueError("must end in /service_name or /service_name/db")
        service = path[0]
        if len(path) == 2:
            db = _int(path[1], "db")
    elif path:
        raise ValueError("a cluster URL has no path: Redis Cluster has one database")
    # The first node's own URL carries the credentials and query to redis-py's
    # parser, so the options mean exactly what they mean in rediss://.
    host, port = nodes[0]
    one = f"{base}://{auth + '@' if auth else ''}{host}:{port}"
    options = parse_url(one + (f"?{parts.query}" if parts.query else ""))
    for name in ("host", "port", "db", "connection_class"):
        options.pop(name, None)
    return Target(kind, url, nodes, service, db, base == "rediss", options)


def _host_port(raw: str) -> tuple[str, int]:
    host, sep, port = raw.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{raw.strip()!r} is not host:port")
    return host.strip("[]"), _int(port, "port")


def _int(raw: str, what: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{what} {raw!r} is not a number") from None


def connect(url: str, max_connections: int) -> Client:
    """Make the worker's Redis client: bytes in and out, no retries."""
    target = parse(url)
    if target.kind == SENTINEL:
        return _sentinel(target, max_connections)
    if target.kind == CLUSTER:
        return _cluster(target, max_connections)
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool of the current primary, waiting for a free connection."""


def _sentinel(target: Target, max_connections: int) -> redis.Redis:
    timeouts = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
    }
    for name in timeouts:
        if name in target.options:
            timeouts[name] = target.options[name]
    tls = _tls_options(target)
    auth = {k: v for k, v in target.options.items() if k in ("username", "password")}
    sentinel = Sentinel(
        list(target.nodes),
        sentinel_kwargs={**timeouts, **auth, **tls},
        **timeouts,
    )
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": POOL_WAIT,
        "db": target.db,
        "health_check_interval": 30,
        "retry": Retry(NoBackoff(), 0),
        "ssl": target.tls,
        **target.options,
    }
    client: redis.Redis = sentinel.master_for(
        target.service, connection_pool_class=BlockingSentinelPool, **options
    )
    return client


def _tls_options(target: Target) -> dict[str, Any]:
    if not target.tls:
        return {}
    tls = {k: v for k, v in target.options.items() if k.startswith("ssl_")}
    return {"connection_class": redis.SSLConnection, **tls}


def _cluster(target: Target, max_connections: int) -> RedisCluster:
    (host, port), *others = target.nodes
    scheme = "rediss" if target.tls else "redis"
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": POOL_WAIT,
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "health_check_interval": 30,
        **target.options,
    }
    return LazyRedisCluster(
        # Given as a URL, redis-py builds every node's pool with the class
        # below; the other nodes only help find the cluster.
        url=f"{scheme}://{host}:{port}",
        startup_nodes=[ClusterNode(h, p) for h, p in others],
        connection_pool_class=BlockingConnectionPool,
        # MOVED and ASK are always followed; errors that may mean a write
        # went through are not retried (the slot map is refreshed, though).
        retry=Retry(NoBackoff(), 0),
        # Start even while a slot has no primary (a failover in progress).
        require_full_coverage=False,
        **options,
    )


def ping(client: Any) -> None:
    """Ask every primary that holds our data whether it answers."""
    if is_cluster(client):
        client.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        client.ping()


def guard(what: str) -> _Guard:
    """Turn any Redis failure inside the block (or function) into StoreError."""
    return _Guard(what)


class _Guard(contextlib.ContextDecorator):
    __slots__ = ("_what",)

    def __init__(self, what: str) -> None:
        self._what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, redis.RedisError):
            raise StoreError(
                f"redis: {self._what} failed ({type(exc).__name__})"
            ) from exc
