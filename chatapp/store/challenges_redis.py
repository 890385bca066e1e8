"""Which bot-check solutions were used already, shared through Redis.

chatapp:altcha:<challenge>    "1", expiring with its challenge
"""

from __future__ import annotations

import math

from chatapp.store.challenges import SpentSolutions
from chatapp.store.redis import Client
from chatapp.store.redis import guard

KEY_PREFIX = "chatapp:altcha:"


class RedisSpentSolutions(SpentSolutions):
    """Used solutions, one SET NX with a TTL each, on the worker's client."""

    def __init__(self, client: Client) -> None:
        self._r = client

    def claim(self, key: str, ttl: float) -> bool:
        with guard("record a bot-check solution"):
            fresh = self._r.set(
                KEY_PREFIX + key, b"1", nx=True, px=max(1, math.ceil(ttl * 1000))
            )
        return bool(fresh)
