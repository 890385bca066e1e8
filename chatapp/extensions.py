"""Per-worker parts, built once in the factory and kept in app.extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask
from flask import current_app
from requests.adapters import HTTPAdapter

from chatapp.history import History
from chatapp.history import MemoryHistory
from chatapp.metrics import Metrics
from chatapp.providers import build_provider
from chatapp.providers.base import Provider
from chatapp.relay import Relay
from chatapp.relay import RelaySettings
from chatapp.streams import MemoryTurnLog
from chatapp.streams import TurnLog
from chatapp.tokens import TokenSigner


@dataclass
class State:
    """Everything a worker shares between requests."""

    config: dict[str, Any]
    signer: TokenSigner
    turns: TurnLog
    history: History
    provider: Provider
    relay: Relay
    http: requests.Session
    metrics: Metrics
    redis: Any = None


def provider_session(pool_size: int) -> requests.Session:
    """Make the worker's one upstream session, pooled for its streams."""
    session = requests.Session()
    # Environment proxies and ~/.netrc are looked up per request otherwise.
    session.trust_env = False
    # The default pool keeps 10 connections and silently opens and drops the
    # rest; keep as many as the worker may stream at once. Never retry: a
    # replayed POST would be a second paid call.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def init_state(app: Flask, config: dict[str, Any]) -> State:
    """Build the worker's state from validated config."""
    http = provider_session(config["WORKER_MAX_STREAMS"])
    signer = TokenSigner(
        config["SECRET_KEYS"],
        page_ttl=config["TOKEN_TTL"],
        stream_ttl=int(config["UPSTREAM_TOTAL_TIMEOUT"] + config["STREAM_TTL"] + 3600),
    )
    turns: TurnLog
    history: History
    redis_client = None
    if config["REDIS_URL"]:
        from chatapp.redis_store import RedisHistory
        from chatapp.redis_store import RedisTurnLog
        from chatapp.redis_store import connect

        redis_client = connect(config["REDIS_URL"], config["WORKER_MAX_STREAMS"])
        running = config["UPSTREAM_TOTAL_TIMEOUT"] + config["STREAM_TTL"] + 60
        turns = RedisTurnLog(redis_client, running)
        history = RedisHistory(redis_client, config["HISTORY_TTL"])
    else:
        turns = MemoryTurnLog()
        history = MemoryHistory(config["HISTORY_TTL"])
    provider = build_provider(config, http)
    relay = Relay(
        turns,
        history,
        provider,
        RelaySettings(
            provider=provider.name,
            model=config["MODEL"],
            stream_ttl=config["STREAM_TTL"],
            total_timeout=config["UPSTREAM_TOTAL_TIMEOUT"],
            heartbeat=config["HEARTBEAT_SECONDS"],
            orphan=config["ORPHAN_SECONDS"],
            cache_ttl=config["CACHE_TTL"],
        ),
    )
    metrics = Metrics(redis_client)
    relay.on_finish.append(metrics.turn_finished)
    state = State(
        config, signer, turns, history, provider, relay, http, metrics, redis_client
    )
    app.extensions["chatapp"] = state
    return state


def state() -> State:
    """Return the current app's chatapp state."""
    value: State = current_app.extensions["chatapp"]
    return value
