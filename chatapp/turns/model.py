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
    # The model that answered, when a retry asked another than the admitted
    # one (CHATAPP_FALLBACK_MODEL); "" for the model the turn was admitted at.
    model: str = ""
    # Of the usage above, what failed attempts reported: (model, input,
    # output) each, the model as in `model`.
    failed_usage: tuple[tuple[str, int, int], ...] = ()
