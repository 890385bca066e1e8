"""The worker's one Redis client, shared by the turn log, history and limits."""

from __future__ import annotations

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatapp.errors import StoreError

# Every command here is short: nothing blocks on the pool's connections (the
# follower has a connection of its own), so a second is plenty, and a Redis
# that does not answer is noticed quickly.
SOCKET_TIMEOUT = 1.0
CONNECT_TIMEOUT = 1.0
# Wait this long for a free pooled connection before giving up.
POOL_WAIT = 2.0


def connect(url: str, max_connections: int) -> redis.Redis:
    """Make the worker's Redis client: bytes in and out, no retries."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=POOL_WAIT,
        socket_timeout=SOCKET_TIMEOUT,
        socket_connect_timeout=CONNECT_TIMEOUT,
        health_check_interval=30,
        # A retried write could be applied twice; callers decide instead.
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def guard(what: str) -> _Guard:
    """Turn any Redis failure inside the block into StoreError."""
    return _Guard(what)


class _Guard:
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
