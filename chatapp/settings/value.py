"""The settings as one frozen, typed value: what every part of chatapp reads.

Built once per app from chatapp/config.py's validated table (defaults, then
CHATAPP_* environment, then test overrides) by chatapp/settings/resolve.py.
Each attribute is the table's key lower-cased (`UPSTREAM_TIMEOUT` ->
`settings.upstream_timeout`), so mypy catches a misspelt setting; the values
derived from several settings are computed here, once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import field
from typing import Literal

from chatapp.prices import Price
from chatapp.settings.parse import Network

# How often a producing worker renews the lease that tells other hosts it is
# alive; a running turn's log outlives its deadline by one lease.
LEASE_SECONDS = 4.0
# A turn ends at most this long after its whole-turn deadline (the watchdog's
# tick, writing its end); a conversation is held that much longer too.
TURN_END_SLACK = 60.0
# A stream token outlives its turn's log by this much (a late reader learns
# the turn expired, instead of a bad token).
STREAM_TOKEN_SLACK = 3600

LogLevel = Literal["debug", "info", "warning", "error", "critical"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Every chatapp setting, validated; see README's settings table.

    Keys, and URLs that may carry a password, stay out of its repr.
    """

    env: Literal["development", "production"]
    secret_keys: tuple[str, ...] = field(repr=False)
    provider: str
    provider_base_url: str
    model: str
    system_prompt: str
    max_output_tokens: int
    temperature: float | None
    max_message_chars: int
    redis_url: str = field(repr=False)
    rate_limits: str
    max_streams_per_client: int
    token_ttl: float
    stream_ttl: float
    history_ttl: float
    heartbeat_seconds: float
    orphan_seconds: float
    upstream_connect_timeout: float
    upstream_idle_timeout: float
    upstream_total_timeout: float
    # At most upstream_total_timeout: the whole-turn deadline bounds it too.
    upstream_first_token_timeout: float
    upstream_retries: int
    fallback_model: str
    fallback_provider: str  # the primary's when not set
    fallback_base_url: str  # resolved like the primary's
    reasoning_effort: Literal["", "low", "medium", "high"]
    show_reasoning: bool
    embed_origins: tuple[str, ...]
    api_origins: tuple[str, ...]
    wp_shared_secret: str = field(repr=False)
    trusted_proxy_hops: int
    trusted_proxies: tuple[Network, ...]
    daily_token_budget: int
    prices: Mapping[str, Price]
    currency: str
    spend_limits: Mapping[str, int]
    spend_soft_limits: Mapping[str, int]
    spend_alerts: tuple[int, ...]
    alert_webhook: str = field(repr=False)
    cache_ttl: float
    drain_seconds: float
    log_prompts: bool
    log_level: LogLevel
    moderation: Literal["off", "openai"]
    moderation_base_url: str
    bot_check: Literal["off", "pow"]
    admin_token: str = field(repr=False)
    knowledge: bool
    knowledge_url: str = field(repr=False)
    knowledge_sources: tuple[str, ...]
    knowledge_refresh: float
    knowledge_mode: Literal["prefer", "strict"]
    knowledge_max_chars: int
    embeddings_model: str
    embeddings_base_url: str
    demo_delay_ms: int
    max_body_bytes: int
    body_read_seconds: float
    history_max_chars: int
    worker_max_streams: int
    readers_per_client: int
    stream_send_timeout: float
    moderation_timeout: float
    bot_check_max_number: int
    # Resolved from the provider's own variable (OPENAI_API_KEY, …).
    provider_api_key: str = field(repr=False)
    fallback_api_key: str = field(repr=False)
    moderation_api_key: str = field(repr=False)
    embeddings_api_key: str = field(repr=False)
    # No CHATAPP_SECRET_KEY: tokens are signed with a throw-away key.
    ephemeral_key: bool = False

    # Derived from the settings above, in __post_init__.
    stream_token_ttl: int = field(init=False)
    """How long a stream token is good: its turn's log, and an hour more."""
    running_ttl: float = field(init=False)
    """A running turn's log: its deadline, its readers' time, one lease."""
    turn_seconds: float = field(init=False)
    """How long a turn may run, to the moment its end is written."""
    turn_grace: float = field(init=False)
    """How long a turn's traces outlive its start (log, idempotency keys)."""

    def __post_init__(self) -> None:
        total, ttl = self.upstream_total_timeout, self.stream_ttl
        derived = {
            "stream_token_ttl": int(total + ttl + STREAM_TOKEN_SLACK),
            "running_ttl": total + ttl + LEASE_SECONDS,
            "turn_seconds": total + TURN_END_SLACK,
            "turn_grace": ttl + total,
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> frozenset[str]:
        """The attributes a table key may name (lower-cased)."""
        return frozenset(f.name for f in dataclasses.fields(cls) if f.init)
