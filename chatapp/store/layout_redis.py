"""How turns lie in Redis: their keys, hash tags and stream entries.

Keys (`{tag}` is one of TURN_TAGS, picked by the turn id; a turn's keys share
it, so on Redis Cluster they share one slot):

  chatapp:t:{tag}:id          stream; an entry holds frames joined, its id `n-0`
                              is the SSE id of its last frame; entry `1-0` also
                              holds the turn's facts (owner, conversation, worker)
  chatapp:t:{tag}:id:cancel   set when a cancel is asked
  chatapp:t:{tag}:id:reader   present while a reader elsewhere follows the turn
  chatapp:t:{tag}:id:reaped   claimed by the worker that ends a dead producer's turn
  chatapp:gone:{tag}:id       the visitor deleted the turn (remembered a while)
  chatapp:worker:<id>         present while that worker produces turns (its lease)

The turn log (events_redis.py, follower_redis.py) writes and reads the
stream; coordination (coordination_redis.py) keeps the rest.
"""

from __future__ import annotations

import zlib
from typing import Any

# A Redis Cluster puts each of these tags on one slot; tag i hashes into slots
# [1024 i, 1024 i + 1024), so the turns spread evenly over a cluster whose
# primaries hold even shares of the slot space, and a worker follows turns
# elsewhere with at most one XREAD (and connection) per tag. Per-turn tags
# would need one blocking XREAD per followed turn. Never change them: keys of
# turns in flight would move.
TURN_TAGS = (
    "t3", "t14", "t47", "t61", "t2", "t15", "t46", "t60",
    "t1", "t16", "t45", "t63", "t0", "t17", "t44", "t62",
)  # fmt: skip


def turn_tag(turn_id: str) -> str:
    """The hash tag every key of a turn carries."""
    return TURN_TAGS[zlib.crc32(turn_id.encode()) % len(TURN_TAGS)]


def turn_key(turn_id: str) -> str:
    """The turn's stream; its other keys add a suffix."""
    return f"chatapp:t:{{{turn_tag(turn_id)}}}:{turn_id}"


def gone_key(turn_id: str) -> str:
    """Mark a turn the visitor deleted, in the same slot as its log."""
    return f"chatapp:gone:{{{turn_tag(turn_id)}}}:{turn_id}"


def worker_key(worker: str) -> str:
    """A worker's lease."""
    return f"chatapp:worker:{worker}"


def split(blob: bytes) -> list[bytes]:
    """Split an entry's joined frames back into frames."""
    return [part + b"\n\n" for part in blob.split(b"\n\n")[:-1]]


def streams(reply: Any) -> list[tuple[bytes, list[Any]]]:
    """Read an XREAD reply (RESP2 list or RESP3 map) as (key, entries) pairs."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(reply.items())
    return [(item[0], item[1]) for item in reply]


def fields(raw: Any) -> dict[bytes, bytes]:
    """An entry's fields, whichever way the reply carries them."""
    if isinstance(raw, dict):
        return raw
    return dict(zip(raw[::2], raw[1::2], strict=True))
