"""limits' Redis storage on the worker's own client, whatever kind of Redis.

limits builds a client of its own from a URL; this storage uses the one the
worker already has instead (`chatapp-redis://`, with the client passed as a
storage option): one pool per worker, the same timeouts, TLS and no-retry
rule as every other Redis call, reads from the primary only (limits'
Sentinel storage reads replicas by default, and its URL parser reads
`/service/db` as a service named `servicedb`), and a worker that starts
while Redis is away starts all the same.
"""

from __future__ import annotations

from typing import Any

import redis
from limits.storage import RedisStorage

SCHEME = "chatapp-redis"


class SharedClientStorage(RedisStorage):
    """Moving windows kept through the worker's Redis client."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(
        self,
        uri: str,
        client: Any = None,
        key_prefix: str = RedisStorage.PREFIX,
        wrap_exceptions: bool = False,
        **options: float | str | bool,
    ) -> None:
        if client is None:
            raise ValueError(f"{SCHEME}:// needs the client as a storage option")
        super(RedisStorage, self).__init__(uri, wrap_exceptions=wrap_exceptions)
        self.key_prefix = key_prefix
        self.target_server = "redis"
        self.dependency = redis
        self.storage = client
        self.initialize_storage(uri)
