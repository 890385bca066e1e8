"""Per-worker parts, built once in the factory and kept in app.extensions."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import requests
from flask import Flask
from flask import current_app
from requests.adapters import HTTPAdapter

from chatapp.botcheck import BotCheck
from chatapp.metrics import Metrics
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
from chatapp.turns.model import TurnEnd
from chatapp.turns.model import TurnSettings
from chatapp.turns.relay import Relay
from chatapp.turns.supervise import LEASE_SECONDS
from chatapp.upstream import build_provider
from chatapp.upstream.moderation import Moderator
from chatapp.upstream.moderation import OpenAIModerator
from chatapp.upstream.retry import Resilient
from chatapp.web.logs import log_turn

# Pooled Redis connections a worker may open: commands are short and never
# block (the follower and the cancel listener have connections of their own).
REDIS_POOL_SIZE = 64
# A turn ends at most this long after its whole-turn deadline (the watchdog's
# tick, writing its end); a conversation is held that much longer too.
TURN_END_SLACK = 60.0


@dataclass
class State:
    """Everything a worker shares between requests."""

    config: dict[str, Any]
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


def _stores(config: dict[str, Any]) -> tuple[EventLog, Coordination, History, Any]:
    """The turn log, coordination and history: on Redis when it is set, twins."""
    # How long a conversation is held past its TTL while a turn runs in it.
    turn_seconds = config["UPSTREAM_TOTAL_TIMEOUT"] + TURN_END_SLACK
    # A cancel is kept as long as the turn it asks may still run.
    cancel_ttl = config["UPSTREAM_TOTAL_TIMEOUT"] + config["STREAM_TTL"] + LEASE_SECONDS
    if not config["REDIS_URL"]:
        log = MemoryEventLog()
        return (
            log,
            MemoryCoordination(log, cancel_ttl=cancel_ttl),
            MemoryHistory(config["HISTORY_TTL"], turn_seconds=turn_seconds),
            None,
        )
    from chatapp.store.conversations_redis import RedisHistory
    from chatapp.store.coordination_redis import RedisCoordination
    from chatapp.store.events_redis import RedisEventLog
    from chatapp.store.redis import connect

    client = connect(config["REDIS_URL"], REDIS_POOL_SIZE)
    coordination = RedisCoordination(client, cancel_ttl=cancel_ttl)
    events = RedisEventLog(
        client,
        coordination,
        stream_ttl=config["STREAM_TTL"],
        orphan=config["ORPHAN_SECONDS"],
    )
    history = RedisHistory(
        client,
        config["HISTORY_TTL"],
        turn_seconds=turn_seconds,
        grace=config["STREAM_TTL"] + config["UPSTREAM_TOTAL_TIMEOUT"],
    )
    return events, coordination, history, client


def init_state(app: Flask, config: dict[str, Any]) -> State:
    """Build the worker's state from validated config."""
    http = provider_session(config["WORKER_MAX_STREAMS"])
    signer = TokenSigner(
        config["SECRET_KEYS"],
        page_ttl=config["TOKEN_TTL"],
        stream_ttl=int(config["UPSTREAM_TOTAL_TIMEOUT"] + config["STREAM_TTL"] + 3600),
    )
    events, coordination, history, redis_client = _stores(config)
    provider = build_provider(config, http)
    moderator: Moderator | None = None
    if config["MODERATION"] == "openai":
        moderator = OpenAIModerator(
            session=http,
            base_url=config["MODERATION_BASE_URL"],
            api_key=config["MODERATION_API_KEY"],
            connect_timeout=config["UPSTREAM_CONNECT_TIMEOUT"],
            deadline=config["MODERATION_TIMEOUT"],
        )
    relay = Relay(
        events,
        coordination,
        history,
        provider,
        TurnSettings(
            provider=provider.name,
            model=config["MODEL"],
            stream_ttl=config["STREAM_TTL"],
            total_timeout=config["UPSTREAM_TOTAL_TIMEOUT"],
            idle_timeout=config["UPSTREAM_IDLE_TIMEOUT"],
            heartbeat=config["HEARTBEAT_SECONDS"],
            orphan=config["ORPHAN_SECONDS"],
            cache_ttl=config["CACHE_TTL"],
            first_token_timeout=config["UPSTREAM_FIRST_TOKEN_TIMEOUT"],
            show_reasoning=config["SHOW_REASONING"],
            fallback_provider=config["FALLBACK_PROVIDER"],
            fallback_model=config["FALLBACK_MODEL"],
        ),
        moderator,
    )
    metrics = Metrics(lambda: relay.running)
    metrics.known_upstreams(
        [(config["PROVIDER"], config["MODEL"])]
        + (
            [(config["FALLBACK_PROVIDER"], config["FALLBACK_MODEL"])]
            if config["FALLBACK_MODEL"]
            else []
        )
    )
    provider.on_attempt.append(metrics.upstream_attempt)
    relay.on_end.append(metrics.turn_ended)
    relay.on_end.append(log_end)
    botcheck = None
    if config["BOT_CHECK"] == "pow":
        spent: SpentSolutions = MemorySpentSolutions()
        if redis_client is not None:
            from chatapp.store.challenges_redis import RedisSpentSolutions

            spent = RedisSpentSolutions(redis_client)
        botcheck = BotCheck(
            config["SECRET_KEYS"], spent, max_number=config["BOT_CHECK_MAX_NUMBER"]
        )
    knowledge = None
    if config["KNOWLEDGE"]:
        from chatapp.knowledge.embed import make_embedder
        from chatapp.knowledge.index import open_index

        embedder = make_embedder(
            config["EMBEDDINGS_MODEL"],
            config["EMBEDDINGS_BASE_URL"],
            config["EMBEDDINGS_API_KEY"],
        )
        knowledge = Knowledge(
            # Hybrid when CHATAPP_EMBEDDINGS_MODEL is set: pushes are embedded
            # as they are stored, questions as they are asked.
            open_index(config["KNOWLEDGE_URL"], app.instance_path, embedder),
            mode=config["KNOWLEDGE_MODE"],
            max_chars=config["KNOWLEDGE_MAX_CHARS"],
            observe=metrics.retrieved,
        )
    state = State(
        config,
        signer,
        events,
        coordination,
        history,
        provider,
        relay,
        http,
        metrics,
        redis_client,
        botcheck,
        knowledge,
    )
    app.extensions["chatapp"] = state
    return state


def log_end(end: TurnEnd) -> None:
    """Write a turn's `turn.ended` line."""
    log_turn(
        "turn.ended",
        turn_id=end.info.id,
        finish_reason=end.finish_reason,
        error=end.error_code,
        input_tokens=end.input_tokens,
        output_tokens=end.output_tokens,
        output_chars=end.output_chars,
        ttft_ms=_ms(end.first_token_seconds),
        max_gap_ms=_ms(end.max_gap_seconds),
        duration_ms=_ms(time.time() - end.info.created_at),
        cached=end.cached,
    )


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def state() -> State:
    """Return the current app's chatapp state."""
    value: State = current_app.extensions["chatapp"]
    return value
