"""Who may start a turn now: rate limits, stream slots, token budgets, capacity.

A chat POST that passed validation is admitted in SPEC's order:

  rate limit  CHATAPP_RATE_LIMITS per client (flask-limiter)   429 rate_limited
  quota       CHATAPP_DAILY_TOKEN_BUDGET per client, UTC day    429 quota_exceeded
  streams     CHATAPP_MAX_STREAMS_PER_CLIENT turns generating   429 too_many_streams
  capacity    CHATAPP_WORKER_MAX_STREAMS open on this worker    503 over_capacity

A client is the verified WordPress user when the page token carries one, else
the client address as seen through CHATAPP_TRUSTED_PROXY_HOPS proxies. An
IPv6 address counts by its /56: most ISPs delegate a /56 to one home (a /48
to a business, which so gets 256 limits; a /64 to a phone, so up to 256
phones of one carrier may share one). /64 would give a /56 holder 256 limits
and a /48 holder 65,536. Visitor ids are free to mint, so they never carry
limits alone. The page token counts only from the X-Chat-Token header: the
key function never reads the body.

With Redis the limits are shared by every worker and host:

  LIMITS:LIMITER/chatapp/<client>/...     flask-limiter's moving windows
  chatapp:limits:streams:<client>         zset: ticket -> expiry (server time)
  chatapp:limits:tokens:<day>:<client>    tokens used and held that UTC day

Redis calls wait at most REDIS_TIMEOUT. When Redis does not answer, each
part falls back to this process's memory by itself (so, meanwhile, every
worker counts alone and the effective limits are multiplied by the number of
workers) and returns to Redis by itself when it answers again.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING
from typing import Any
from typing import Protocol
from typing import TypeVar

import redis
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import request
from flask_limiter import Limiter
from flask_limiter import RateLimitExceeded
from redis.backoff import NoBackoff
from redis.retry import Retry

from chatapp.errors import ApiError
from chatapp.errors import ConfigError
from chatapp.errors import error_response
from chatapp.tokens import REFRESH_GRACE_SECONDS
from chatapp.tokens import Identity
from chatapp.tokens import TokenExpired
from chatapp.tokens import TokenInvalid

if TYPE_CHECKING:
    from chatapp.relay import Relay
    from chatapp.relay import TurnOutcome

log = logging.getLogger(__name__)

EXTENSION = "chatapp.limits"
KEY_PREFIX = "chatapp:limits"
TOKEN_REFRESH_LIMITS = "30/minute"
# Short, so that a Redis outage costs a request half a second, not a stall.
REDIS_TIMEOUT = 0.5
# After Redis failed, use memory this long before asking Redis again.
REDIS_RETRY_SECONDS = 2.0
# A slot outlives its turn's deadline by this much, then frees itself: this
# is what returns the slots of a crashed worker.
SLOT_MARGIN_SECONDS = 5.0
STREAMS_RETRY_AFTER = 5
CAPACITY_RETRY_AFTER = 10
# Settles for turns the view has not yet claimed are kept this long.
EARLY_KEEP_SECONDS = 300.0
CHARS_PER_TOKEN = 4
# harden #11: an IPv6 client is its /56, the usual home delegation (RFC 6177).
IPV6_PREFIX = 56
NORMAL_ENDS = frozenset(("stop", "length", "content_filter"))

T = TypeVar("T")


def client_key() -> str:
    """Name the client a request's limits count against."""
    cached = g.get("chatapp_client_key")
    if cached is None:
        identity = _token_identity()
        if identity is not None and identity.wp_user is not None:
            cached = identity.owner
        else:
            cached = address_key(request.remote_addr)
        g.chatapp_client_key = cached
    return str(cached)


def address_key(address: str | None) -> str:
    """Key an address: IPv4 as is, IPv6 by its /56 network."""
    try:
        ip = ipaddress.ip_address(address or "")
    except ValueError:
        return f"ip:{address or 'unknown'}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"ip:{ip.ipv4_mapped}"
        # harden #11: by IPV6_PREFIX (/56), not /64; see the module docstring.
        return f"ip:{ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False)}"
    return f"ip:{ip}"


def _token_identity() -> Identity | None:
    """Read the page token from X-Chat-Token; None when absent or not genuine."""
    # harden #11: never the body. Parsing it here could raise (deep JSON), and
    # flask-limiter takes any error for a storage outage and forgets limits.
    token = request.headers.get("X-Chat-Token")
    if not token:
        return None
    try:
        signer = current_app.extensions["chatapp"].signer
        # An old but genuine token still names its WordPress user truly.
        identity: Identity = signer.read_page_token(token, grace=REFRESH_GRACE_SECONDS)
        return identity
    except (TokenInvalid, TokenExpired):
        return None


def _chat_rate_limits() -> str:
    return str(current_app.extensions["chatapp"].config["RATE_LIMITS"])


# The moving window keeps each client's recent hits and counts those younger
# than the window: no burst of twice the limit across a window edge (as
# fixed windows allow) and no approximation (as the sliding counter makes),
# so Retry-After is exact: the moment the oldest counted hit leaves. Its cost,
# one timestamp per allowed hit (at most the limit's amount), is small for
# limits sized in messages. Bound to the app in init_limits().
limiter = Limiter(
    key_func=client_key,
    strategy="moving-window",
    key_prefix="chatapp",
    # Our own hook writes X-RateLimit-*: flask-limiter's sets Retry-After on
    # every response, success and our other refusals included.
    headers_enabled=False,
    in_memory_fallback_enabled=True,
    swallow_errors=True,
)

token_refresh_limit = limiter.limit(TOKEN_REFRESH_LIMITS)


@limiter.limit(_chat_rate_limits)
def _count_chat_turn() -> None:
    """Count a turn against the client's rate limits; raise when over them."""


# -- the stores ---------------------------------------------------------------


class LimitStore(Protocol):
    """Where stream slots and token budgets are kept."""

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        """Hold one of `most` slots for `lifetime` seconds unless all are held."""

    def free_slot(self, client: str, ticket: str) -> None:
        """Give a slot back."""

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        """Add `amount` to the day's tokens unless that would pass `budget`."""

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        """Add (or with a negative amount, give back) tokens for the day."""


class MemoryLimitStore:
    """Slots and budgets of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._slots: dict[str, dict[str, float]] = {}
        self._tokens: dict[str, dict[str, int]] = {}

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        now = self._clock()
        held = {t: end for t, end in self._slots.get(client, {}).items() if end > now}
        if len(held) >= most:
            self._slots[client] = held
            return False
        held[ticket] = now + lifetime
        self._slots[client] = held
        return True

    def free_slot(self, client: str, ticket: str) -> None:
        held = self._slots.get(client)
        if held is not None:
            held.pop(ticket, None)
            if not held:
                del self._slots[client]

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        for old in [d for d in self._tokens if d < day]:
            del self._tokens[old]
        used = self._tokens.setdefault(day, {})
        if used.get(client, 0) + amount > budget:
            return False
        used[client] = used.get(client, 0) + amount
        return True

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        used = self._tokens.get(day)
        if used is not None:
            used[client] = used.get(client, 0) + amount


# Prune expired slots, then take one if any is free; scores are expiry times
# on the Redis server's clock, so hosts' clocks never matter.
_TAKE_SLOT = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', t)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
local lifetime = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], t + lifetime, ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(lifetime) + 1)
return 1
"""

_HOLD_TOKENS = """
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
if used + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# A day's tokens are kept a day after it ends, for turns that end late.
TOKENS_KEEP_SECONDS = 2 * 86400


class RedisLimitStore:
    """Slots and budgets shared by every worker and host through Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._take_slot = client.register_script(_TAKE_SLOT)
        self._hold_tokens = client.register_script(_HOLD_TOKENS)

    def take_slot(self, client: str, ticket: str, most: int, lifetime: float) -> bool:
        taken = self._take_slot(
            keys=[_slots_key(client)], args=[most, ticket, lifetime]
        )
        return bool(taken)

    def free_slot(self, client: str, ticket: str) -> None:
        self._r.zrem(_slots_key(client), ticket)

    def hold_tokens(self, client: str, day: str, amount: int, budget: int) -> bool:
        held = self._hold_tokens(
            keys=[_tokens_key(client, day)],
            args=[amount, budget, TOKENS_KEEP_SECONDS],
        )
        return bool(held)

    def add_tokens(self, client: str, day: str, amount: int) -> None:
        key = _tokens_key(client, day)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.incrby(key, amount)
            pipe.expire(key, TOKENS_KEEP_SECONDS)
            pipe.execute()


def _slots_key(client: str) -> str:
    return f"{KEY_PREFIX}:streams:{client}"


def _tokens_key(client: str, day: str) -> str:
    return f"{KEY_PREFIX}:tokens:{day}:{client}"


def utc_day(now: float) -> str:
    """Name the UTC day that `now` falls in."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


def seconds_to_utc_midnight(now: float) -> int:
    """Whole seconds (at least 1) until the next UTC day begins."""
    return max(1, math.ceil(86400 - now % 86400))


def estimate_tokens(chars: int) -> int:
    """Guess tokens from characters of text (about four to a token)."""
    return math.ceil(chars / CHARS_PER_TOKEN) if chars > 0 else 0


def tokens_spent(outcome: TurnOutcome) -> int:
    """Tokens a finished turn cost: its usage, else an estimate of its text.

    A cancelled or failed turn may report usage from before the text it
    streamed (Anthropic counts output at the start), so its text is a floor.
    """
    output = outcome.output_tokens
    if output is None or outcome.finish_reason not in NORMAL_ENDS:
        output = max(output or 0, estimate_tokens(outcome.output_chars))
    return (outcome.input_tokens or 0) + output


# -- the gate -----------------------------------------------------------------


@dataclass
class Reservation:
    """What an admitted turn holds until it ends, and in which store."""

    client: str
    ticket: str
    day: str
    tokens: int
    tokens_store: LimitStore | None
    slot_store: LimitStore | None


class Gate:
    """This worker's admission of turns, and its count of open streams."""

    def __init__(
        self,
        config: dict[str, Any],
        relay: Relay,
        client: redis.Redis | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._relay = relay
        self._clock = clock
        self._budget = int(config["DAILY_TOKEN_BUDGET"])
        self._hold = int(config["MAX_OUTPUT_TOKENS"])
        self._max_streams = int(config["MAX_STREAMS_PER_CLIENT"])
        self._max_open = int(config["WORKER_MAX_STREAMS"])
        self._slot_lifetime = (
            float(config["UPSTREAM_TOTAL_TIMEOUT"]) + SLOT_MARGIN_SECONDS
        )
        self.redis = client
        self.memory = MemoryLimitStore()
        self._shared = RedisLimitStore(client) if client is not None else None
        self._redis_down_until: float | None = None
        self._held: dict[str, Reservation] = {}
        self._early: dict[str, tuple[float, TurnOutcome]] = {}
        self.readers = 0

    # -- admission ------------------------------------------------------------

    def admit(self, client: str) -> Reservation:
        """Hold budget and a stream slot for a new turn, or refuse it."""
        now = self._clock()
        held = Reservation(
            client, secrets.token_urlsafe(12), utc_day(now), 0, None, None
        )
        try:
            if self._budget > 0:
                ok, held.tokens_store = self._call(
                    lambda s: s.hold_tokens(client, held.day, self._hold, self._budget)
                )
                if not ok:
                    held.tokens_store = None
                    raise ApiError(
                        429,
                        "quota_exceeded",
                        "Today's usage limit is reached; it resets at midnight UTC.",
                        retry_after=seconds_to_utc_midnight(now),
                    )
                held.tokens = self._hold
            ok, held.slot_store = self._call(
                lambda s: s.take_slot(
                    client, held.ticket, self._max_streams, self._slot_lifetime
                )
            )
            if not ok:
                held.slot_store = None
                raise ApiError(
                    429,
                    "too_many_streams",
                    "Too many answers are being written for you at once; wait "
                    "for one to finish or stop it.",
                    retry_after=STREAMS_RETRY_AFTER,
                )
            if self.open_streams >= self._max_open:
                raise ApiError(
                    503,
                    "over_capacity",
                    "The server is busy; try again in a few seconds.",
                    retry_after=CAPACITY_RETRY_AFTER,
                )
        except ApiError:
            self.release(held)
            raise
        return held

    @property
    def open_streams(self) -> int:
        """Streams this worker holds open, counting a turn and its reader once.

        Readers hold client connections (bounded by worker_connections);
        producers hold upstream ones. A turn usually has both, so the larger
        count is the load; a producer whose reader left still counts.
        """
        return max(self.readers, self._relay.running)

    def started(self, held: Reservation, turn_id: str) -> None:
        """Tie a reservation to the turn it admitted, until that turn ends."""
        early = self._early.pop(turn_id, None)
        if early is not None:
            self._settle(held, early[1])
        else:
            self._held[turn_id] = held

    def release(self, held: Reservation) -> None:
        """Give back all a reservation holds: the turn never started."""
        self._free(held, spent=0)

    def turn_finished(self, outcome: TurnOutcome) -> None:
        """Free the slot of a turn that ended and charge what it spent."""
        held = self._held.pop(outcome.info.id, None)
        if held is not None:
            self._settle(held, outcome)
            return
        # Ended before the view tied it to its reservation (a cached replay
        # ends inside start_turn): keep it until started() comes, briefly.
        now = time.monotonic()
        self._early = {
            k: v for k, v in self._early.items() if now - v[0] < EARLY_KEEP_SECONDS
        }
        self._early[outcome.info.id] = (now, outcome)

    def _settle(self, held: Reservation, outcome: TurnOutcome) -> None:
        self._free(held, spent=tokens_spent(outcome))

    def _free(self, held: Reservation, spent: int) -> None:
        slot_store, tokens_store = held.slot_store, held.tokens_store
        if slot_store is not None:
            self._quietly(lambda: slot_store.free_slot(held.client, held.ticket))
        if tokens_store is not None and spent != held.tokens:
            delta = spent - held.tokens
            self._quietly(lambda: tokens_store.add_tokens(held.client, held.day, delta))

    def count_reader(self, events: Iterator[bytes]) -> Iterator[bytes]:
        """Count an SSE response as an open stream while it is being sent."""
        self.readers += 1
        try:
            yield from events
        finally:
            self.readers -= 1

    # -- Redis, or memory while Redis is away -----------------------------------

    def _call(self, op: Callable[[LimitStore], T]) -> tuple[T, LimitStore]:
        shared = self._shared
        down_until = self._redis_down_until
        if shared is not None and (
            down_until is None or time.monotonic() >= down_until
        ):
            try:
                result = op(shared)
            except redis.RedisError as exc:
                self._redis_failed(exc)
            else:
                if down_until is not None:
                    log.warning("limits: Redis answers again; limits are shared")
                    self._redis_down_until = None
                return result, shared
        return op(self.memory), self.memory

    def _redis_failed(self, exc: redis.RedisError) -> None:
        if self._redis_down_until is None:
            log.warning(
                "limits: Redis did not answer (%s); counting in this worker's "
                "memory until it does, so limits are per worker meanwhile",
                type(exc).__name__,
            )
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _quietly(self, op: Callable[[], None]) -> None:
        # A slot Redis did not free expires by itself; unsettled tokens stay
        # held (the client is charged MAX_OUTPUT_TOKENS for that turn).
        try:
            op()
        except redis.RedisError as exc:
            log.warning("limits: could not settle a turn (%s)", type(exc).__name__)

    def storage_problem(self) -> str | None:
        """Say why the limits' shared storage does not answer, if it does not."""
        if self.redis is None:
            return None
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            return f"rate-limit storage (Redis) does not answer ({type(exc).__name__})"
        return None


# -- the app's side -------------------------------------------------------------


class Admission:
    """A turn's admission: released on leaving unless the turn started."""

    def __init__(self, gate: Gate, held: Reservation) -> None:
        self._gate = gate
        self._held = held
        self._started = False

    def __enter__(self) -> Admission:
        return self

    def started(self, turn_id: str) -> None:
        """The turn runs: keep what it holds until it ends."""
        self._started = True
        self._gate.started(self._held, turn_id)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._started:
            self._gate.release(self._held)


def gate() -> Gate:
    """Return the current app's gate."""
    value: Gate = current_app.extensions[EXTENSION]
    return value


def admit_turn() -> Admission:
    """Check a valid chat POST against every limit, in SPEC's order."""
    _count_chat_turn()
    return Admission(gate(), gate().admit(client_key()))


def count_reader(events: Iterator[bytes]) -> Iterator[bytes]:
    """Count an SSE response as open on this worker while it streams."""
    return gate().count_reader(events)


def storage_problem() -> str | None:
    """Say why the limits' shared storage does not answer, if it does not."""
    return gate().storage_problem()


def _rate_limited(exc: RateLimitExceeded) -> Response:
    retry_after = 60
    current = limiter.current_limit
    if current is not None:
        try:
            retry_after = math.ceil(current.window[0] - time.time())
        except redis.RedisError:
            retry_after = current.limit.get_expiry()
    retry_after = max(1, retry_after)
    current_app.extensions["chatapp"].metrics.refused("rate_limited")
    return error_response(
        429,
        "rate_limited",
        f"Too many requests; try again in {retry_after} seconds.",
        retry_after=retry_after,
    )


def _rate_limit_headers(response: Response) -> Response:
    current = limiter.current_limit
    if current is None:
        return response
    try:
        reset, remaining = current.window
    except redis.RedisError:
        return response
    response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(max(0, remaining))
    response.headers["X-RateLimit-Reset"] = str(math.ceil(reset))
    return response


def connect(url: str) -> redis.Redis:
    """Make the worker's Redis client for limits: short timeouts, no retries."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=100,
        timeout=REDIS_TIMEOUT,  # wait for a free connection at most this long
        socket_timeout=REDIS_TIMEOUT,
        socket_connect_timeout=REDIS_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )
    return redis.Redis(connection_pool=pool)


def init_limits(app: Flask) -> Gate:
    """Bind the limiter and this worker's gate to the app."""
    st = app.extensions["chatapp"]
    config = st.config
    budget = config["DAILY_TOKEN_BUDGET"]
    if 0 < budget < config["MAX_OUTPUT_TOKENS"]:
        raise ConfigError(
            f"CHATAPP_DAILY_TOKEN_BUDGET={budget} is below CHATAPP_MAX_OUTPUT_TOKENS"
            f"={config['MAX_OUTPUT_TOKENS']}, which every turn holds when it "
            "starts: no turn could ever start"
        )
    client = connect(config["REDIS_URL"]) if config["REDIS_URL"] else None
    if client is not None:
        url = config["REDIS_URL"]
        # limits names a Unix socket redis+unix://; the pool already knows it.
        if url.startswith("unix://"):
            url = "redis+unix://" + url.removeprefix("unix://")
        app.config["RATELIMIT_STORAGE_URI"] = url
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {
            "connection_pool": client.connection_pool
        }
    else:
        app.config["RATELIMIT_STORAGE_URI"] = "memory://"
    state_gate = Gate(config, st.relay, client)
    app.extensions[EXTENSION] = state_gate
    st.relay.on_finish.append(state_gate.turn_finished)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    app.after_request(_rate_limit_headers)
    limiter.init_app(app)
    return state_gate
