"""Plain values the turn machinery passes around: no I/O, no Flask.

TurnInfo, the facts a turn log stores, lives below in store/turn.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from chatapp.store.turn import TurnInfo


@dataclass(frozen=True, slots=True)
class TurnEnd:
    """How a turn ended: the record that limits, metrics and logs consume."""

    info: TurnInfo
    finish_reason: str
    error_code: str | None
    input_tokens: int | None
    output_tokens: int | None
    output_chars: int
    first_token_seconds: float | None
    max_gap_seconds: float | None = None
    cancel_seconds: float | None = None  # from a client's cancel to upstream closed
    cached: bool = False
    cached_input_tokens: int | None = None  # of input_tokens, from a prompt cache


@dataclass(frozen=True, slots=True)
class TurnSettings:
    """The timing and size bounds the turn machinery works with."""

    provider: str
    model: str
    stream_ttl: float
    total_timeout: float
    idle_timeout: float
    heartbeat: float
    orphan: float
    cache_ttl: float = 0
    # Bounds the wait for the first text or reasoning; idle_timeout after it.
    first_token_timeout: float = 300.0
    show_reasoning: bool = False  # relay reasoning text, not only `thinking`
    fallback_provider: str = ""
    fallback_model: str = ""
