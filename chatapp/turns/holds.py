"""What an admitted turn holds until it ends, and what it is charged then.

A turn admitted by the gate (admit.py) holds MAX_OUTPUT_TOKENS of its
client's daily token budget, one of its client's stream slots and, with
CHATAPP_SPEND_LIMITS, its worst case of the site's spend (spend_holds.py).
When it ends, what it held is settled to what it spent: its usage, else an
estimate of the text it streamed.

The limits' words, one per concept, in web/ (binding: limiter.py,
moving_window.py), turns/ (policy: admit.py and its parts) and store/
(storage: limits.py, spend.py):

  client       whom limits count against: the WordPress user, else the
               address key (limiter.client_key / client_for); never "key"
  limit        how many are allowed: `limit` (a slot's, a rate limit's
               amount), `budget` (a client's tokens a UTC day), `capacity`
               (streams one worker keeps open), `ceiling` (the site's spend)
  hit          one request taken against a rate limit (flask-limiter's
               word); `count` is how many hits a `window` holds
  window       a rate limit's moving window; `reset_at`, when its oldest
               counted hit leaves it
  slot         one of a client's turns generating at once: taken, freed;
               a `ticket` names it, `<worker>/<random>`
  hold         to take budget or spend for a turn when it is admitted; a
               Reservation is all one turn holds, a Hold its record in
               Redis for reclaiming when its worker dies
  settle       charge what a turn spent, when it ends, against what it
               held; `release` gives all back (the turn never started)
  ttl          seconds a key or a slot lives in the store
  retry_after  seconds a refused client waits (`Retry-After`); constants
               are `<WHAT>_RETRY_AFTER`
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime

from chatapp.errors import ApiError
from chatapp.store.limits import LimitStore
from chatapp.store.spend import Periods
from chatapp.store.spend import SpendStore
from chatapp.turns.model import TurnEnd
from chatapp.turns.spend import CHARS_PER_TOKEN
from chatapp.turns.spend import NORMAL_ENDS


def utc_day(now: float) -> str:
    """Name the UTC day that `now` falls in."""
    # Unix time has 86,400 seconds to a UTC day: the day's number names it,
    # and the name is formatted once a day (10 us), not per turn.
    return _day_name(math.floor(now / 86400))


@functools.lru_cache(maxsize=4)
def _day_name(day: int) -> str:
    return datetime.fromtimestamp(day * 86400, UTC).strftime("%Y%m%d")


def seconds_to_utc_midnight(now: float) -> int:
    """Whole seconds (at least 1) until the next UTC day begins."""
    return max(1, math.ceil(86400 - now % 86400))


def estimate_tokens(chars: int) -> int:
    """Guess tokens from characters of text (about four to a token)."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def tokens_spent(outcome: TurnEnd) -> int:
    """Tokens a finished turn cost: its usage, else an estimate of its text.

    A cancelled or failed turn may report usage from before the text it
    streamed (Anthropic counts output at the start), so its text is a floor.
    """
    output = outcome.output_tokens
    if output is None or outcome.finish_reason not in NORMAL_ENDS:
        output = max(output or 0, estimate_tokens(outcome.output_chars))
    return (outcome.input_tokens or 0) + output


@dataclass
class Reservation:
    """What an admitted turn holds until it ends, and in which store."""

    client: str
    ticket: str
    day: str
    tokens: int
    tokens_store: LimitStore | None
    slot_store: LimitStore | None
    recorded: bool = False  # its hold is recorded for reclaiming
    model: str = ""  # the model the turn asks (the fallback past a soft ceiling)
    spend: int = 0  # micro-units of the site's spend held
    spend_store: SpendStore | None = None
    periods: Periods | None = None
    refusal: ApiError | None = None  # the site's ceiling: unless answered cached
