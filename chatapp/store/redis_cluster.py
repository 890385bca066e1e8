"""Redis Cluster: a client that meets its nodes lazily, and routing by key.

Off Cluster every helper here is the plain client's own way: one server
holds every key. On Cluster they find the primary holding a key's slot,
read the slot map anew after a failover, and turn redis-py's cluster
errors, raised outside the RedisError tree, into ClusterUnavailable.
"""

from __future__ import annotations

import threading
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import AskError
from redis.exceptions import RedisClusterException

from chatapp.errors import ChatappError


class ClusterUnavailable(redis.ConnectionError, ChatappError):
    """No node of the cluster answered, or a slot has no primary right now.

    redis-py raises RedisClusterException (and SlotNotCoveredError) for these,
    outside the RedisError tree that every caller here catches.
    """


class LazyRedisCluster(RedisCluster):
    """A RedisCluster that meets its nodes on first use, not at start-up.

    redis-py's client asks a node for the slot map while it is built, so a
    cluster that is away when a worker starts would stop the worker from
    starting; a single Redis that is away only makes /readyz say so.
    """

    def __init__(self, **kwargs: Any) -> None:
        self._lazy_kwargs = kwargs
        self._lazy_lock = threading.RLock()
        self._lazy_ready = False
        self._lazy_building = False
        # Scripts are registered before the first command: they need this.
        self.encoder = redis.connection.Encoder("utf-8", "strict", False)

    def _meet(self) -> None:
        if self._lazy_ready:
            return
        with self._lazy_lock:
            # Building sends commands itself (COMMAND): those go straight on.
            if self._lazy_ready or self._lazy_building:
                return
            self._lazy_building = True
            try:
                RedisCluster.__init__(self, **self._lazy_kwargs)
            except (RedisClusterException, OSError, IndexError, KeyError) as exc:
                raise ClusterUnavailable(f"cluster unreachable: {exc}") from exc
            finally:
                self._lazy_building = False
            self._lazy_ready = True

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        self._meet()
        try:
            return super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        self._meet()
        pipe = super().pipeline(transaction, shard_hint)
        execute = pipe.execute

        def execute_translated(*args: Any, **kwargs: Any) -> Any:
            try:
                return execute(*args, **kwargs)
            except RedisClusterException as exc:
                raise ClusterUnavailable(str(exc)) from exc

        pipe.execute = execute_translated
        return pipe

    def pubsub(
        self, node: Any = None, host: Any = None, port: Any = None, **kw: Any
    ) -> Any:
        self._meet()
        return super().pubsub(node, host, port, **kw)

    @property
    def topology(self) -> Any:
        """The nodes manager, after meeting the cluster."""
        self._meet()
        return self.nodes_manager

    def close(self) -> None:
        if self._lazy_ready:
            super().close()


def is_cluster(client: Any) -> bool:
    """Whether keys of different hash slots may live on different servers."""
    return isinstance(client, RedisCluster)


def node_client(client: Any, key: str) -> redis.Redis:
    """The plain client of the server that holds `key` (all of it, off Cluster)."""
    if not is_cluster(client):
        return client
    try:
        node = client.topology.get_node_from_slot(client.keyslot(key))
        if node.redis_connection is None:
            client.topology.create_redis_connections([node])
    except RedisClusterException as exc:
        raise ClusterUnavailable(str(exc)) from exc
    return node.redis_connection


def slot_pipeline(client: Any, key: str) -> Any:
    """A pipeline (no MULTI) for commands whose keys all share `key`'s hash slot.

    Off Cluster this is the client's own pipeline. On Cluster it is the plain
    pipeline of the primary holding the slot: redis-py's cluster pipeline
    would work out every command's keys, slot and node again, which costs
    more than the commands here. A MOVED reply means the slot moved (a
    failover) and no command ran: the slot map is read anew and the commands
    go again through the cluster's own pipeline, which follows redirects. ASK
    (a slot part way through a reshard) is handled the same; it is exact when
    every command names the same key, as every caller's here does when it
    lets errors raise. With raise_on_error=False the redirected replies are
    left in place for the caller to write again. A lost connection also reads
    the map anew before it is raised.
    """
    if not is_cluster(client):
        return client.pipeline(transaction=False)
    pipe: Any = node_client(client, key).pipeline(transaction=False)
    execute = pipe.execute

    def execute_routed(raise_on_error: bool = True) -> Any:
        queued = list(pipe.command_stack)
        try:
            replies = execute(raise_on_error=raise_on_error)
        except AskError:
            pass
        except (redis.ConnectionError, redis.TimeoutError):
            _refresh_quietly(client)
            raise
        else:
            if not raise_on_error and any(_moved(r) for r in replies):
                _refresh_quietly(client)  # the caller writes these again
            return replies
        refresh(client)
        routed = client.pipeline(transaction=False)
        for args, options in queued:
            routed.pipeline_execute_command(*args, **options)
        return routed.execute(raise_on_error=raise_on_error)

    pipe.execute = execute_routed
    return pipe


def node_groups(client: Any, keys: list[str]) -> list[list[int]]:
    """The positions of `keys`, grouped by the server that holds them."""
    if not is_cluster(client) or len(keys) < 2:
        return [list(range(len(keys)))]
    groups: dict[int, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(id(node_client(client, key)), []).append(i)
    return list(groups.values())


def _moved(reply: object) -> bool:
    return isinstance(reply, AskError)  # MovedError is one too


def _refresh_quietly(client: Any) -> None:
    try:
        refresh(client)
    except redis.RedisError:
        pass


def refresh(client: Any) -> None:
    """After an error that may mean the cluster changed, read its slot map anew."""
    if is_cluster(client):
        try:
            client.topology.initialize()
        except RedisClusterException as exc:
            raise ClusterUnavailable(str(exc)) from exc
