"""One crawler per deployment: a Redis lock when Redis is shared, else a file lock."""

from __future__ import annotations

import fcntl
import os
import secrets
import time
from pathlib import Path
from typing import Any
from typing import Protocol

# Long enough for a slow page, short enough that a crashed crawler's lock
# frees itself soon; a live crawler renews it as it goes.
LOCK_MS = 120_000
RENEW_EVERY = LOCK_MS / 3 / 1000

# Delete or extend the key only while it still holds our token: a lock that
# expired and was taken by another crawler is never released by us.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


class CrawlLock(Protocol):
    """Held by at most one crawler of the deployment at a time."""

    def acquire(self) -> bool:
        """Take the lock if free; False when another crawler holds it."""
        ...

    def renew(self) -> None:
        """Tell the lock the crawler is still alive (cheap; call often)."""
        ...

    def due(self, every: float) -> bool:
        """While holding the lock: True when no crawl finished in `every` seconds.

        Workers wake at different times; this keeps them from crawling one
        after the other in the same period.
        """
        ...

    def done(self, every: float) -> None:
        """Record a finished crawl, so the others wait `every` seconds."""
        ...

    def release(self) -> None: ...


class RedisLock:
    """SET NX PX with a random token; released and renewed only by its holder."""

    def __init__(self, redis: Any, key: str = "chatapp:knowledge:crawl") -> None:
        self.redis = redis
        self.key = key
        self.token = ""
        self.renewed = 0.0

    def acquire(self) -> bool:
        token = secrets.token_hex(16)
        if not self.redis.set(self.key, token, nx=True, px=LOCK_MS):
            return False
        self.token = token
        self.renewed = time.monotonic()
        return True

    def renew(self) -> None:
        if self.token and time.monotonic() - self.renewed >= RENEW_EVERY:
            self.redis.eval(_RENEW, 1, self.key, self.token, LOCK_MS)
            self.renewed = time.monotonic()

    def due(self, every: float) -> bool:
        return not self.redis.exists(self.key + ":done")

    def done(self, every: float) -> None:
        self.redis.set(self.key + ":done", "1", px=max(1, int(every * 1000)))

    def release(self) -> None:
        if self.token:
            self.redis.eval(_RELEASE, 1, self.key, self.token)
            self.token = ""


class FileLock:
    """flock on a file beside the index: the kernel frees it if we die."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def renew(self) -> None:
        pass  # held until released or the process ends

    def due(self, every: float) -> bool:
        try:
            return time.time() - self._stamp.stat().st_mtime >= every
        except FileNotFoundError:
            return True

    def done(self, every: float) -> None:
        self._stamp.touch()

    @property
    def _stamp(self) -> Path:
        return self.path.with_name(self.path.name + ".done")

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
