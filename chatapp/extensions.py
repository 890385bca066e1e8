"""Per-worker parts, built once in the factory and kept in app.extensions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask
from flask import current_app
from requests.adapters import HTTPAdapter

from chatapp.botcheck import BotCheck
from chatapp.metrics import Metrics
from chatapp.settings import Settings
from chatapp.store.challenges import MemorySpentSolutions
from chatapp.store.challenges import SpentSolutions
from chatapp.store.conversations import History
from chatapp.store.conversations import MemoryHistory
from chatapp.store.coordination import Coordination
from chatapp.store.coordination import MemoryCoordination
from chatapp.store.events import EventLog
from chatapp.store.events import MemoryEventLog
from chatapp.tokens import TokenSigner
from chatapp.turns.knowledge import Knowledge
from chatapp.turns.relay import Relay
from chatapp.upstream import build_provider
from chatapp.upstream.moderation import Moderator
from chatapp.upstream.moderation import OpenAIModerator
from chatapp.upstream.retry import Resilient

# Pooled Redis connections a worker may open: commands are short and never
# block (the follower and the cancel listener have connections of their own).
REDIS_POOL_SIZE = 64


@dataclass
class State:
    """Everything a worker shares between requests."""

    settings: Settings
    signer: TokenSigner
    events: EventLog
    coordination: Coordination
    history: History
    provider: Resilient
    relay: Relay
    http: requests.Session
    metrics: Metrics
    redis: Any = None
    botcheck: BotCheck | None = None
    knowledge: Knowledge | None = None  # with CHATAPP_KNOWLEDGE=on


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


def init_state(app: Flask, settings: Settings) -> State:
    """Build the worker's state from the validated settings."""
    http = provider_session(settings.worker_max_streams)
    signer = TokenSigner(
        settings.secret_keys,
        page_ttl=settings.token_ttl,
        stream_ttl=settings.stream_token_ttl,
    )
    redis_client, events, coordination, history = _stores(settings)
    provider = build_provider(settings, http)
    moderator = _moderator(settings, http)
    relay = Relay(events, coordination, history, provider, settings, moderator)
    metrics = Metrics(lambda: relay.running)
    metrics.known_upstreams(
        [(settings.provider, settings.model)]
        + (
            [(settings.fallback_provider, settings.fallback_model)]
            if settings.fallback_model
            else []
        )
    )
    provider.on_attempt.append(metrics.upstream_attempt)
    relay.on_end.append(metrics.turn_ended)
    state = State(
        settings,
        signer,
        events,
        coordination,
        history,
        provider,
        relay,
        http,
        metrics,
        redis_client,
        _botcheck(settings, redis_client),
        _knowledge(settings, app.instance_path, metrics),
    )
    app.extensions["chatapp"] = state
    return state


def _stores(settings: Settings) -> tuple[Any, EventLog, Coordination, History]:
    """The turn log, coordination and conversations: in Redis when one is
    named, else their twins here."""
    # A cancel is kept as long as the turn it asks may still run.
    cancel_ttl = settings.running_ttl
    if not settings.redis_url:
        log = MemoryEventLog()
        memory = MemoryHistory(settings.history_ttl, turn_seconds=settings.turn_seconds)
        return None, log, MemoryCoordination(log, cancel_ttl=cancel_ttl), memory
    from chatapp.store.conversations_redis import RedisHistory
    from chatapp.store.coordination_redis import RedisCoordination
    from chatapp.store.events_redis import RedisEventLog
    from chatapp.store.redis import connect

    client = connect(settings.redis_url, REDIS_POOL_SIZE)
    coordination = RedisCoordination(client, cancel_ttl=cancel_ttl)
    events = RedisEventLog(
        client,
        coordination,
        stream_ttl=settings.stream_ttl,
        orphan=settings.orphan_seconds,
    )
    history = RedisHistory(
        client,
        settings.history_ttl,
        # How long a conversation is held past its TTL while a turn runs in it.
        turn_seconds=settings.turn_seconds,
        grace=settings.turn_grace,
    )
    return client, events, coordination, history


def _moderator(settings: Settings, http: requests.Session) -> Moderator | None:
    if settings.moderation != "openai":
        return None
    return OpenAIModerator(
        session=http,
        base_url=settings.moderation_base_url,
        api_key=settings.moderation_api_key,
        connect_timeout=settings.upstream_connect_timeout,
        deadline=settings.moderation_timeout,
    )


def _botcheck(settings: Settings, redis_client: Any) -> BotCheck | None:
    if settings.bot_check != "pow":
        return None
    spent: SpentSolutions = MemorySpentSolutions()
    if redis_client is not None:
        from chatapp.store.challenges_redis import RedisSpentSolutions

        spent = RedisSpentSolutions(redis_client)
    return BotCheck(
        settings.secret_keys, spent, max_number=settings.bot_check_max_number
    )


def _knowledge(
    settings: Settings, instance_path: str, metrics: Metrics
) -> Knowledge | None:
    if not settings.knowledge:
        return None
    from chatapp.knowledge.embed import make_embedder
    from chatapp.knowledge.engines import open_index

    embedder = make_embedder(
        settings.embeddings_model,
        settings.embeddings_base_url,
        settings.embeddings_api_key,
    )
    return Knowledge(
        # Hybrid when CHATAPP_EMBEDDINGS_MODEL is set: pushes are embedded
        # as they are stored, questions as they are asked.
        open_index(settings.knowledge_url, instance_path, embedder),
        mode=settings.knowledge_mode,
        max_chars=settings.knowledge_max_chars,
        observe=metrics.retrieved,
    )


def state() -> State:
    """Return the current app's chatapp state."""
    value: State = current_app.extensions["chatapp"]
    return value


def settings() -> Settings:
    """Return the current app's settings: web code's one way to read them."""
    return state().settings
