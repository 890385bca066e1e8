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

The site's spend is held the same way, in the same hold record
(spend_holds.py). What a turn holds, and what it is charged when it ends,
is holds.py's, with the limits' words; the switch between Redis and memory
is failover.py's.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from typing import TypeVar

import redis

from chatapp.errors import ApiError
from chatapp.errors import OverCapacity
from chatapp.errors import QuotaExceeded
from chatapp.errors import StoreError
from chatapp.errors import TooManyStreams
from chatapp.settings import Settings
from chatapp.store.coordination import Coordination
from chatapp.store.limits import Hold
from chatapp.store.limits import LimitStore
from chatapp.store.limits import MemoryLimitStore
from chatapp.store.limits import RedisLimitStore
from chatapp.store.redis import guard
from chatapp.store.redis import ping
from chatapp.store.spend import SpendStore
from chatapp.turns.failover import Failover
from chatapp.turns.holds import Reservation
from chatapp.turns.holds import estimate_tokens
from chatapp.turns.holds import seconds_to_utc_midnight
from chatapp.turns.holds import tokens_spent
from chatapp.turns.holds import utc_day
from chatapp.turns.model import TurnEnd
from chatapp.turns.spend import Alert
from chatapp.turns.spend import Governor
from chatapp.turns.spend_holds import SpendHolds

log = logging.getLogger(__name__)

# A slot outlives its turn's deadline by this much, then frees itself: this
# is what returns the slots of a crashed worker.
SLOT_MARGIN_SECONDS = 5.0
STREAMS_RETRY_AFTER = 5
CAPACITY_RETRY_AFTER = 10
# Settles for turns the view has not yet claimed are kept this long.
EARLY_KEEP_SECONDS = 300.0
# Look for dead workers' holds at most this often while turns are admitted.
RECLAIM_EVERY = 2.0

T = TypeVar("T")


class Gate:
    """This worker's admission of turns, and its count of open streams."""

    def __init__(
        self,
        settings: Settings,
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
        self._budget = settings.daily_token_budget
        self._turn_tokens = settings.max_output_tokens
        self._slot_limit = settings.max_streams_per_client
        self._capacity = settings.worker_max_streams
        self._slot_ttl = settings.upstream_total_timeout + SLOT_MARGIN_SECONDS
        self.redis = client
        self.memory = MemoryLimitStore()
        self._shared = RedisLimitStore(client) if client is not None else None
        self._failover = Failover()
        self._leases = leases if self._shared is not None else None
        self._reclaimed_at = -RECLAIM_EVERY
        self._held: dict[str, Reservation] = {}
        self._early: dict[str, tuple[float, TurnEnd]] = {}
        governor = Governor(settings)
        self.spend = (
            SpendHolds(
                governor,
                client,
                self._failover,
                clock=clock,
                alert=alert,
                reclaim=lambda: self._reclaim(now=True),
            )
            if governor.active
            else None
        )

    @property
    def spend_memory(self) -> SpendStore | None:
        """This worker's own ledger of the site's spend, while Redis is away."""
        return self.spend.memory if self.spend is not None else None

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
                self._hold_tokens(held, now)
            if self.spend is not None:
                self.spend.reserve(held, now, input_chars)
            self._take_slot(held)
            if self.open_streams >= self._capacity:
                raise OverCapacity(retry_after=CAPACITY_RETRY_AFTER)
        except ApiError:
            self.release(held)
            raise
        return held

    def _hold_tokens(self, held: Reservation, now: float) -> None:
        """Hold MAX_OUTPUT_TOKENS of the client's day, or refuse: 429."""

        def hold(store: LimitStore) -> bool:
            return store.hold_tokens(
                held.client, held.day, self._turn_tokens, self._budget
            )

        ok, held.tokens_store = self._call(hold)
        if not ok and self._reclaim(now=True):
            ok, held.tokens_store = self._call(hold)
        if not ok:
            held.tokens_store = None
            raise QuotaExceeded(retry_after=seconds_to_utc_midnight(now))
        held.tokens = self._turn_tokens

    def _take_slot(self, held: Reservation) -> None:
        """Take one of the client's stream slots, or refuse: 429."""

        def take(store: LimitStore) -> bool:
            return store.take_slot(
                held.client, held.ticket, self._slot_limit, self._slot_ttl
            )

        ok, held.slot_store = self._call(take)
        if not ok and self._free_dead_slots(held.client):
            ok, held.slot_store = self._call(take)
        if not ok:
            held.slot_store = None
            raise TooManyStreams(retry_after=STREAMS_RETRY_AFTER)

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
            self.spend is not None and held.spend_store is self.spend.shared
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
        if self.spend is not None:
            self.spend.settle(held, None)

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
        if self.spend is not None:
            self.spend.settle(held, outcome)

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

    def spend_report(self) -> dict[str, Any] | None:
        """The site's spend as the owner sees it; None when nothing is priced."""
        return self.spend.report() if self.spend is not None else None

    # -- Redis, or memory while Redis is away -----------------------------------

    def _call(self, op: Callable[[LimitStore], T]) -> tuple[T, LimitStore]:
        return self._failover.run(self._shared, self.memory, op)

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
        if shared is None or leases is None or self._failover.down:
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
            or self._failover.down
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
            if self.spend is not None:
                self.spend.settle_reclaimed(hold, chars)

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
