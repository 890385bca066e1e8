"""The site's spend held by admitted turns, settled when they end.

The gate (admit.py) asks the governor (spend.py) how much a turn may cost at
worst, holds that in the ledger (store/spend.py: Redis, or this worker's
memory while Redis is away) and settles it to what the turn cost. Redis
settlements wait in this worker for its next reservation, which carries
them to Redis in the same command, or for a flush FLUSH_SECONDS later: a
turn costs Redis one command more than the token budget alone. A refusal
for the site's spend is not raised here but carried on the reservation, so
that a cached answer can still be served (start.py raises it otherwise).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import redis

from chatapp.errors import StoreError
from chatapp.store.limits import Hold
from chatapp.store.spend import MemorySpendStore
from chatapp.store.spend import Periods
from chatapp.store.spend import RedisSpendStore
from chatapp.store.spend import Settlement
from chatapp.store.spend import SpendStore
from chatapp.turns.failover import Failover
from chatapp.turns.holds import Reservation
from chatapp.turns.model import TurnEnd
from chatapp.turns.spend import Alert
from chatapp.turns.spend import Governor
from chatapp.turns.spend import periods_at

log = logging.getLogger(__name__)

# Settlements of the site's spend wait at most this long for a reservation.
FLUSH_SECONDS = 1.0


class SpendHolds:
    """Hold each admitted turn's worst case of the site's spend; settle it."""

    def __init__(
        self,
        governor: Governor,
        client: redis.Redis | None,
        failover: Failover,
        *,
        clock: Callable[[], float],
        alert: Callable[[Alert], None] | None,
        reclaim: Callable[[], bool],
    ) -> None:
        self.governor = governor
        self.memory: SpendStore = MemorySpendStore()
        self.shared = RedisSpendStore(client) if client is not None else None
        self._failover = failover
        self._clock = clock
        self._alert = alert
        self._reclaim = reclaim  # settles dead workers' holds; True if any
        self._flush_at: gevent.Greenlet | None = None

    def _run(self, op: Callable[[SpendStore], Any]) -> tuple[Any, SpendStore]:
        return self._failover.run(self.shared, self.memory, op)

    def reserve(self, held: Reservation, now: float, input_chars: int) -> None:
        """Hold the turn's worst case, or carry the site's refusal."""
        governor, shared = self.governor, self.shared
        periods = periods_at(now)
        ask = governor.ask(input_chars)
        pending = governor.take_pending(periods).get(periods)
        carried = [pending]  # only the first call carries the settlements

        def reserve(store: SpendStore) -> Any:
            settle = carried[0] if store is shared else None
            return store.reserve(periods, ask, settle)

        verdict, store = self._run(reserve)
        carried[0] = None
        if pending is not None and store is not shared:
            self._keep_unsettled({periods: pending}, self._failover.last_failure)
        if verdict.refused and self._reclaim():
            # A dead worker's turns held part of the ceiling: ask again.
            verdict, store = self._run(reserve)
        held.model = verdict.model
        if verdict.refused:
            held.refusal = governor.refusal(verdict, now)
        else:
            held.spend, held.spend_store, held.periods = verdict.amount, store, periods
        self._check_alerts(store, periods, verdict.totals, verdict.refused)

    def settle(self, held: Reservation, outcome: TurnEnd | None) -> None:
        """Settle what a turn held: at once in memory, with the next call in Redis."""
        governor, store, periods = self.governor, held.spend_store, held.periods
        if store is None or periods is None:
            return
        held.spend_store = None
        settlement = Settlement()
        if outcome is None or outcome.cached:
            settlement.give_back(held.spend)  # no provider call: no turn of a model
        else:
            # By the model that answered (a fallback's price after retries);
            # a failed attempt's reported usage by the model it asked.
            *failed, (model, cost) = governor.costs(held.model, outcome)
            for asked, spent in failed:
                settlement.charge(asked, spent)
            settlement.add(model, held.spend, cost)
        if store is not self.shared:
            verdict = store.reserve(periods, None, settlement)
            self._check_alerts(store, periods, verdict.totals, ())
            return
        governor.pend(periods, settlement)
        self._flush_later(FLUSH_SECONDS)

    def settle_reclaimed(self, hold: Hold, chars: int) -> None:
        """Settle a dead worker's hold to the text its turn streamed."""
        shared = self.shared
        if not hold.spend or shared is None:
            return
        cost = self.governor.reclaimed_cost(hold.model, hold.spend, chars)
        settlement = Settlement()
        settlement.add(hold.model, hold.spend, cost)
        now = periods_at(self._clock())
        periods = Periods(hold.day, hold.month, now.day_ttl, now.month_ttl)
        shared.reserve(periods, None, settlement)

    def _flush_later(self, seconds: float) -> None:
        if self._flush_at is None or self._flush_at.dead:
            self._flush_at = gevent.spawn_later(seconds, self._flush_due)

    def _flush_due(self) -> None:
        """Flush what has waited FLUSH_SECONDS; look again when that will be."""
        since = self.governor.pending_since
        if since is None:
            return  # reservations carried it all
        left = since + FLUSH_SECONDS - time.monotonic()
        if left <= 0:
            self.flush()
            left = FLUSH_SECONDS if self.governor.pending_since is not None else 0
        if left > 0:
            self._flush_at = gevent.spawn_later(left, self._flush_due)

    def flush(self) -> None:
        """Carry this worker's waiting settlements to Redis now."""
        shared = self.shared
        if shared is None:
            return
        for periods, settlement in self.governor.take_pending().items():
            try:
                verdict = shared.reserve(periods, None, settlement)
            except StoreError as exc:
                log.warning("spend: could not settle (%s)", exc)
                self._keep_unsettled({periods: settlement}, exc)
                self._flush_later(FLUSH_SECONDS)
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
        cause = exc.__cause__ if isinstance(exc, StoreError) else exc
        if isinstance(cause, redis.TimeoutError):
            log.warning("spend: a settlement may be lost (Redis timed out)")
            return
        self.governor.put_back(pending)

    def _check_alerts(
        self,
        store: SpendStore,
        periods: Periods,
        totals: Any,
        refused: tuple[str, ...],
    ) -> None:
        governor = self.governor
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

    def report(self) -> dict[str, Any]:
        """The site's spend as the owner sees it."""
        self.flush()
        now = self._clock()
        periods = periods_at(now)
        (totals, models), _ = self._run(lambda store: store.totals(periods))
        return self.governor.report(totals, models, now)
