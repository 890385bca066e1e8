"""Limits kept in Redis while it answers, in this worker's memory meanwhile.

When Redis does not answer, each call falls back to this process's memory
(so, meanwhile, every worker counts alone) and Redis is asked again after
REDIS_RETRY_SECONDS; the first answer makes the limits shared again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from chatapp.errors import StoreError

log = logging.getLogger(__name__)

# After Redis failed, use memory this long before asking Redis again.
REDIS_RETRY_SECONDS = 2.0

T = TypeVar("T")
S = TypeVar("S")


class Failover:
    """Run each call on the shared (Redis) store, or on memory while it is away."""

    def __init__(self) -> None:
        self._down_until: float | None = None
        # The failure of the latest call's Redis try, if it failed.
        self.last_failure: StoreError | redis.RedisError | None = None

    @property
    def down(self) -> bool:
        """Whether Redis failed and is not yet asked again."""
        return self._down_until is not None

    def run(self, shared: S | None, memory: S, op: Callable[[S], T]) -> tuple[T, S]:
        """Run `op` on `shared` while it answers, else on `memory`; say which."""
        self.last_failure = None  # set below if this call's Redis try fails
        down_until = self._down_until
        if shared is not None and (
            down_until is None or time.monotonic() >= down_until
        ):
            try:
                result = op(shared)
            except (StoreError, redis.RedisError) as exc:
                self._failed(exc)
            else:
                if down_until is not None:
                    log.warning("limits: Redis answers again; limits are shared")
                    self._down_until = None
                return result, shared
        return op(memory), memory

    def _failed(self, exc: StoreError | redis.RedisError) -> None:
        self.last_failure = exc
        if self._down_until is None:
            log.warning(
                "limits: Redis did not answer (%s); counting in this worker's "
                "memory until it does, so limits are per worker meanwhile",
                type(exc.__cause__ or exc).__name__,
            )
        self._down_until = time.monotonic() + REDIS_RETRY_SECONDS
