"""Who may start a turn now: token budgets, stream slots, capacity.

A chat POST that passed validation and the rate limit (web/limiter.py) is
admitted in SPEC's order:

  quota       CHATAPP_DAILY_TOKEN_BUDGET per client, UTC day    429 quota_exceeded
  spend       CHATAPP_SPEND_LIMITS, the whole site, UTC day and month
                                                    429 site_budget_exhausted
  streams     CHATAPP_MAX_STREAMS_PER_CLIENT turns generating   429 too_many_streams
  capacity    CHATAPP_WORKER_MAX_STREAMS open on this worker    503 over_capacity

What a turn holds is settled from its `TurnEnd` record. With Redis, slots and
budgets are shared by every worker and host; when Redis does not answer,
each part falls back to this process's memory by itself (so, meanwhile,
every worker counts alone) and returns to Redis when it answers again.

A worker that dies cannot settle its turns. With Redis, a slot's ticket
names its worker, and a gate that finds all of a client's slots taken frees
those of workers whose lease is gone before it refuses. Budget holds are
recorded while their turns run, and the gates of the other workers settle
those of a dead worker (store/limits.py): every RECLAIM_EVERY seconds while
turns are admitted, and at once before refusing a turn for its budget.

The site's spend (turns/spend.py) is held the same way, in the same hold
record. Its settlements wait in this worker for its next reservation, which
carries them to Redis in the same command, or for a flush FLUSH_SECONDS
later: a turn costs Redis one command more than the token budget alone. A
refusal for the site's spend is not raised here but carried, so that a
cached answer can still be served (start.py raises it otherwise).
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from types import TracebackType
from typing import Any
from typing import TypeVar

import gevent
import redis

from chatapp.errors import ApiError
from chatapp.errors import StoreError
from chatapp.store.coordination import Coordination
from chatapp.store.limits import Hold
from chatapp.store.limits import LimitStore
from chatapp.store.limits import MemoryLimitStore
from chatapp.store.limits import RedisLimitStore
from chatapp.store.redis import guard
from chatapp.store.redis import ping
from chatapp.store.spend import MemorySpendStore
from chatapp.store.spend import Periods
from chatapp.store.spend import RedisSpendStore
from chatapp.store.spend import Settlement
from chatapp.store.spend import SpendStore
from chatapp.turns.model import TurnEnd
from chatapp.turns.spend import Alert
from chatapp.turns.spend import Governor
from chatapp.turns.spend import periods_at

log = logging.getLogger(__name__)

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
# Look for dead workers' holds at most this often while turns are admitted.
RECLAIM_EVERY = 2.0
NORMAL_ENDS = frozenset(("stop", "length", "content_filter"))
# Settlements of the site's spend wait at most this long for a reservation.
FLUSH_SECONDS = 1.0

T = TypeVar("T")
S = TypeVar("S")


def utc_day(now: float) -> str:
    """Name the UTC day that `now` falls in."""
    return datetime.fromtimestamp(now, UTC).strftime("%Y%m%d")


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


class Gate:
    """This worker's admission of turns, and its count of open streams."""

    def __init__(
        self,
        config: dict[str, Any],
        running: Callable[[], int],
        client: redis.Redis | None,
        clock: Callable[[], float] = time.time,
        leases: Coordination | None = None,
        readers: Callable[[], int] = lambda: 0,
        alert: Callable[[Alert], None] | None = None,
    ) -> None:
        self._running = running
        self._readers = readers
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
        self._leases = leases if self._shared is not None else None
        self._reclaimed_at = -RECLAIM_EVERY
        self._held: dict[str, Reservation] = {}
        self._early: dict[str, tuple[float, TurnEnd]] = {}
        governor = Governor(config)
        self.spend = governor if governor.active else None
        self.spend_memory: SpendStore = MemorySpendStore()
        self._spend_shared = RedisSpendStore(client) if client is not None else None
        self._alert = alert
        self._flush_at: gevent.Greenlet | None = None
        self._last_failure: StoreError | redis.RedisError | None = None

    # -- admission ------------------------------------------------------------

    def admit(self, client: str, input_chars: int = 0) -> Reservation:
        """Hold budget and a stream slot for a new turn, or refuse it.

        `input_chars` bounds the turn's input (system prompt, history and
        message), for the worst case the site's spend holds.
        """
        now = self._clock()
        ticket = secrets.token_urlsafe(12)
        if self._leases is not None:
            ticket = f"{self._leases.worker}/{ticket}"
        held = Reservation(client, ticket, utc_day(now), 0, None, None)
        self._reclaim(now=False)
        try:
            if self._budget > 0:
                ok, held.tokens_store = self._call(
                    lambda s: s.hold_tokens(client, held.day, self._hold, self._budget)
                )
                if not ok and self._reclaim(now=True):
                    ok, held.tokens_store = self._call(
                        lambda s: s.hold_tokens(
                            client, held.day, self._hold, self._budget
                        )
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
            if self.spend is not None:
                self._reserve_spend(held, now, input_chars)

            def take(s: LimitStore) -> bool:
                return s.take_slot(
                    client, held.ticket, self._max_streams, self._slot_lifetime
                )

            ok, held.slot_store = self._call(take)
            if not ok and self._free_dead_slots(client):
                ok, held.slot_store = self._call(take)
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
        return max(self._readers(), self._running())

    def started(self, held: Reservation, turn_id: str) -> None:
        """Tie a reservation to the turn it admitted, until that turn ends."""
        early = self._early.pop(turn_id, None)
        if early is not None:
            self._settle(held, early[1])
            return
        self._held[turn_id] = held
        shared, leases = self._shared, self._leases
        spend_shared = held.spend_store is not None and (
            held.spend_store is self._spend_shared
        )
        if shared is None or leases is None:
            return
        if held.tokens_store is not shared and not spend_shared:
            return
        hold = Hold(
            held.client,
            turn_id,
            held.day,
            held.tokens if held.tokens_store is shared else 0,
            held.model,
            held.spend if spend_shared else 0,
            held.periods.month if held.periods is not None else "",
        )
        held.recorded = self._quietly(
            lambda: shared.record_hold(leases.worker, held.ticket, hold)
        )

    def release(self, held: Reservation) -> None:
        """Give back all a reservation holds: the turn never started."""
        self._free(held, spent=0)
        self._settle_spend(held, None)

    def turn_finished(self, outcome: TurnEnd) -> None:
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

    def _settle(self, held: Reservation, outcome: TurnEnd) -> None:
        self._free(held, spent=tokens_spent(outcome))
        self._settle_spend(held, outcome)

    def _free(self, held: Reservation, spent: int) -> None:
        slot_store, tokens_store = held.slot_store, held.tokens_store
        if slot_store is not None:
            self._quietly(lambda: slot_store.free_slot(held.client, held.ticket))
        if tokens_store is not None and spent != held.tokens:
            delta = spent - held.tokens
            self._quietly(lambda: tokens_store.add_tokens(held.client, held.day, delta))
        shared, leases = self._shared, self._leases
        if held.recorded and shared is not None and leases is not None:
            self._quietly(lambda: shared.forget_hold(leases.worker, held.ticket))

    # -- the site's spend ----------------------------------------------------------

    def _reserve_spend(self, held: Reservation, now: float, input_chars: int) -> None:
        """Hold the turn's worst case, or carry the site's refusal."""
        governor = self.spend
        if governor is None:
            return
        periods = periods_at(now)
        ask = governor.ask(input_chars)
        shared = self._spend_shared
        pending = governor.take_pending(periods).get(periods)
        carried = [pending]  # only the first call carries the settlements

        def reserve(store: SpendStore) -> Any:
            settle = carried[0] if store is shared else None
            return store.reserve(periods, ask, settle)

        verdict, store = self._either(shared, self.spend_memory, reserve)
        carried[0] = None
        if pending is not None and store is not shared:
            self._keep_unsettled({periods: pending}, self._last_failure)
        if verdict.refused and self._reclaim(now=True):
            # A dead worker's turns held part of the ceiling: ask again.
            verdict, store = self._either(shared, self.spend_memory, reserve)
        held.model = verdict.model
        if verdict.refused:
            held.refusal = governor.refusal(verdict, now)
        else:
            held.spend, held.spend_store, held.periods = verdict.amount, store, periods
        self._check_alerts(store, periods, verdict.totals, verdict.refused)

    def _settle_spend(self, held: Reservation, outcome: TurnEnd | None) -> None:
        """Settle what a turn held: at once in memory, with the next call in Redis."""
        governor, store, periods = self.spend, held.spend_store, held.periods
        if governor is None or store is None or periods is None:
            return
        held.spend_store = None
        settlement = Settlement()
        if outcome is None or outcome.cached:
            settlement.give_back(held.spend)  # no provider call: no turn of a model
        else:
            settlement.add(held.model, held.spend, governor.cost(held.model, outcome))
        if store is not self._spend_shared:
            verdict = store.reserve(periods, None, settlement)
            self._check_alerts(store, periods, verdict.totals, ())
            return
        governor.pend(periods, settlement)
        if self._flush_at is None or self._flush_at.dead:
            self._flush_at = gevent.spawn_later(FLUSH_SECONDS, self._flush_due)

    def _flush_due(self) -> None:
        """Flush what has waited FLUSH_SECONDS; look again when that will be."""
        governor = self.spend
        since = governor.pending_since if governor is not None else None
        if since is None:
            return  # reservations carried it all
        left = since + FLUSH_SECONDS - time.monotonic()
        if left <= 0:
            self.flush_spend()
            since = governor.pending_since if governor is not None else None
            left = FLUSH_SECONDS if since is not None else 0
        if left > 0:
            self._flush_at = gevent.spawn_later(left, self._flush_due)

    def flush_spend(self) -> None:
        """Carry this worker's waiting settlements to Redis now."""
        governor, shared = self.spend, self._spend_shared
        if governor is None or shared is None:
            return
        for periods, settlement in governor.take_pending().items():
            try:
                verdict = shared.reserve(periods, None, settlement)
            except StoreError as exc:
                log.warning("spend: could not settle (%s)", exc)
                self._keep_unsettled({periods: settlement}, exc)
                if self._flush_at is None or self._flush_at.dead:
                    self._flush_at = gevent.spawn_later(FLUSH_SECONDS, self._flush_due)
                return
            self._check_alerts(shared, periods, verdict.totals, ())

    def _keep_unsettled(
        self,
        pending: dict[Periods, Settlement],
        exc: StoreError | redis.RedisError | None,
    ) -> None:
        """Keep settlements Redis did not take, unless it may have taken them.

        A call that timed out may have run: sending its settlements again
        could give a hold back twice, and the ceiling would let more through.
        Dropped, they leave the ledger holding too much until the period
        ends, which refuses early but never overspends.
        """
        governor = self.spend
        if governor is None:
            return
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        if isinstance(cause, redis.TimeoutError):
            log.warning("spend: a settlement may be lost (Redis timed out)")
            return
        governor.put_back(pending)

    def _check_alerts(
        self,
        store: SpendStore,
        periods: Periods,
        totals: Any,
        refused: tuple[str, ...],
    ) -> None:
        governor = self.spend
        if governor is None:
            return
        for name, alert in governor.crossed(periods, totals, refused):
            ttl = periods.day_ttl if alert.period == "day" else periods.month_ttl
            try:
                won = store.claim_alert(name, ttl)
            except StoreError as exc:
                log.warning("spend: could not claim an alert (%s)", exc)
                continue
            governor.claimed(name)
            if won and self._alert is not None:
                self._alert(alert)

    def spend_report(self) -> dict[str, Any] | None:
        """The site's spend as the owner sees it; None when nothing is priced."""
        governor = self.spend
        if governor is None:
            return None
        self.flush_spend()
        now = self._clock()
        periods = periods_at(now)

        def read(store: SpendStore) -> Any:
            return store.totals(periods)

        (totals, models), _ = self._either(self._spend_shared, self.spend_memory, read)
        return governor.report(totals, models, now)

    # -- Redis, or memory while Redis is away -----------------------------------

    def _call(self, op: Callable[[LimitStore], T]) -> tuple[T, LimitStore]:
        return self._either(self._shared, self.memory, op)

    def _either(self, shared: S | None, memory: S, op: Callable[[S], T]) -> tuple[T, S]:
        self._last_failure = None  # set below if this call's Redis try fails
        down_until = self._redis_down_until
        if shared is not None and (
            down_until is None or time.monotonic() >= down_until
        ):
            try:
                result = op(shared)
            except (StoreError, redis.RedisError) as exc:
                self._redis_failed(exc)
            else:
                if down_until is not None:
                    log.warning("limits: Redis answers again; limits are shared")
                    self._redis_down_until = None
                return result, shared
        return op(memory), memory

    def _redis_failed(self, exc: StoreError | redis.RedisError) -> None:
        self._last_failure = exc
        if self._redis_down_until is None:
            log.warning(
                "limits: Redis did not answer (%s); counting in this worker's "
                "memory until it does, so limits are per worker meanwhile",
                type(exc.__cause__ or exc).__name__,
            )
        self._redis_down_until = time.monotonic() + REDIS_RETRY_SECONDS

    def _quietly(self, op: Callable[[], None]) -> bool:
        # A slot Redis did not free expires by itself; unsettled tokens stay
        # held (the client is charged MAX_OUTPUT_TOKENS for that turn).
        try:
            op()
        except StoreError as exc:
            log.warning("limits: could not settle a turn (%s)", exc)
            return False
        return True

    def _free_dead_slots(self, client: str) -> bool:
        """Free the client's slots of dead workers; say whether any were."""
        shared, leases = self._shared, self._leases
        if shared is None or leases is None or self._redis_down_until is not None:
            return False
        try:
            return shared.free_dead_slots(client, leases.workers_alive) > 0
        except StoreError as exc:
            log.warning("limits: could not look at slots (%s)", exc)
            return False

    def _reclaim(self, *, now: bool) -> bool:
        """Settle what dead workers' turns held; say whether any was.

        Runs at most every RECLAIM_EVERY seconds, or at once (`now`) before
        a refusal, but then still at most once a second.
        """
        shared, leases = self._shared, self._leases
        if (
            shared is None
            or leases is None
            or (self._budget <= 0 and self.spend is None)
            or self._redis_down_until is not None
        ):
            return False
        since = time.monotonic() - self._reclaimed_at
        if since < (1.0 if now else RECLAIM_EVERY):
            return False
        self._reclaimed_at = time.monotonic()

        def settle(hold: Hold) -> None:
            chars = leases.streamed_chars(hold.turn)
            if hold.tokens:
                spent = estimate_tokens(chars)
                shared.add_tokens(hold.client, hold.day, spent - hold.tokens)
            governor, spend_shared = self.spend, self._spend_shared
            if hold.spend and governor is not None and spend_shared is not None:
                cost = governor.reclaimed_cost(hold.model, hold.spend, chars)
                settlement = Settlement()
                settlement.add(hold.model, hold.spend, cost)
                periods = periods_at(self._clock())
                periods = Periods(
                    hold.day, hold.month, periods.day_ttl, periods.month_ttl
                )
                spend_shared.reserve(periods, None, settlement)

        try:
            return shared.reclaim(leases.workers_alive, settle) > 0
        except (redis.RedisError, StoreError) as exc:
            log.warning("limits: could not reclaim holds (%s)", type(exc).__name__)
            return False

    def storage_problem(self) -> str | None:
        """Say why the limits' shared storage does not answer, if it does not."""
        if self.redis is None:
            return None
        try:
            with guard("limits: ping"):
                ping(self.redis)  # the primaries: a dead replica is no outage
        except StoreError as exc:
            cause = type(exc.__cause__).__name__
            return f"rate-limit storage (Redis) does not answer ({cause})"
        return None


class Admission:
    """A turn's admission: released on leaving unless the turn started."""

    def __init__(self, gate: Gate, held: Reservation) -> None:
        self._gate = gate
        self._held = held
        self._started = False

    def __enter__(self) -> Admission:
        return self

    @property
    def model(self) -> str:
        """The model the turn asks; empty for the configured one."""
        return self._held.model

    @property
    def refusal(self) -> ApiError | None:
        """The site's spend ceiling, if it refuses all but a cached answer."""
        return self._held.refusal

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
