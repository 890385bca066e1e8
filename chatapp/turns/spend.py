"""The site's spend governor: what a turn may hold, which model, which alert.

With CHATAPP_PRICES set, every turn is priced. With ceilings set, a new turn
holds its worst case (its input bound plus CHATAPP_MAX_OUTPUT_TOKENS at its
model's price) in the day and the month at once, or is refused; past a soft
ceiling it asks CHATAPP_FALLBACK_MODEL and is priced at that model. The
gate's spend holds (spend_holds.py) make the store calls, with the
Redis-or-memory fallback (failover.py), and settle each turn from its usage
when it ends. Nothing here knows Flask.
"""

from __future__ import annotations

import calendar
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import Any

from chatapp.errors import ApiError
from chatapp.errors import SiteBudgetExhausted
from chatapp.prices import PERIODS
from chatapp.prices import Price
from chatapp.prices import estimate_input_tokens
from chatapp.prices import format_money
from chatapp.settings import Settings
from chatapp.store.spend import Ask
from chatapp.store.spend import Periods
from chatapp.store.spend import Settlement
from chatapp.store.spend import Totals
from chatapp.store.spend import Verdict
from chatapp.turns.model import TurnEnd

log = logging.getLogger(__name__)

DAY = 86400
# Counts outlive their period by this much, for turns that end late.
KEEP_AFTER = 2 * DAY
NORMAL_ENDS = frozenset(("stop", "length", "content_filter"))
CHARS_PER_TOKEN = 4


def period_ends(now: float) -> tuple[float, float]:
    """When the UTC day and the UTC month of `now` end (epoch seconds)."""
    moment = datetime.fromtimestamp(now, UTC)
    day_end = (math.floor(now / DAY) + 1) * DAY
    days = calendar.monthrange(moment.year, moment.month)[1]
    month_end = datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()
    return float(day_end), month_end + days * DAY


def periods_at(now: float) -> Periods:
    """Name the UTC day and month of `now`, and how long to keep their counts."""
    moment = datetime.fromtimestamp(now, UTC)
    day_end, month_end = period_ends(now)
    return Periods(
        moment.strftime("%Y%m%d"),
        moment.strftime("%Y%m"),
        math.ceil(day_end - now) + KEEP_AFTER,
        math.ceil(month_end - now) + KEEP_AFTER,
    )


@dataclass(frozen=True, slots=True)
class Alert:
    """One threshold of one period crossed, to post and log once."""

    kind: str  # "threshold" (a percentage of the hard ceiling) or "soft_limit"
    period: str
    percent: int
    spent: int
    limit: int
    currency: str

    def payload(self) -> dict[str, Any]:
        """The webhook's JSON: Slack/Mattermost `text` and structured fields."""
        spent, limit = format_money(self.spent), format_money(self.limit)
        if self.kind == "soft_limit":
            text = (
                f"chatapp: this {self.period}'s spend passed its soft ceiling "
                f"({limit:g} {self.currency}); new turns use the fallback model."
            )
        elif self.percent >= 100:
            text = (
                f"chatapp: this {self.period}'s spend reached its ceiling "
                f"({limit:g} {self.currency}); new turns are refused until it ends."
            )
        else:
            text = (
                f"chatapp: {self.percent}% of this {self.period}'s spend ceiling is "
                f"used ({spent:g} of {limit:g} {self.currency})."
            )
        return {
            "text": text,
            "kind": self.kind,
            "period": self.period,
            "percent": self.percent,
            "spent": spent,
            "limit": limit,
            "currency": self.currency,
        }


class Governor:
    """Price turns and decide what the site's ceilings allow."""

    def __init__(self, settings: Settings) -> None:
        self.prices: dict[str, Price] = dict(settings.prices)
        self.model = settings.model
        self.fallback = settings.fallback_model or self.model
        self.max_output = settings.max_output_tokens
        self.currency = settings.currency
        hard, soft = settings.spend_limits, settings.spend_soft_limits
        self.hard = (hard.get("day", 0), hard.get("month", 0))
        self.soft = (soft.get("day", 0), soft.get("month", 0))
        self.thresholds: tuple[int, ...] = tuple(settings.spend_alerts)
        self._pending: dict[Periods, Settlement] = {}
        self.pending_since: float | None = None  # monotonic; None = nothing waits
        self._alerted: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether turns are priced at all: the model has a price."""
        return self.model in self.prices

    def ask(self, input_chars: int) -> Ask:
        """What a turn with `input_chars` of input would hold, on either model.

        A turn on the primary may end up answered by the fallback (after its
        retries) and is charged at the fallback's price then: it holds the
        dearer of the two worst cases, so no ceiling is ever overshot.
        """
        tokens = estimate_input_tokens(input_chars)
        fallback = self.prices.get(self.fallback, self.prices[self.model])
        fallback_cost = fallback.cost(tokens, self.max_output)
        return Ask(
            self.model,
            max(self.prices[self.model].cost(tokens, self.max_output), fallback_cost),
            self.fallback,
            fallback_cost,
            self.hard,
            self.soft,
        )

    def refusal(self, verdict: Verdict, now: float) -> ApiError:
        """The 429 for a turn the site's ceiling refused, until its period ends."""
        ends = dict(zip(PERIODS, period_ends(now), strict=True))
        until = max(ends[p] for p in verdict.refused)
        return SiteBudgetExhausted(
            "This site's chat has reached its spending limit for now; "
            "it opens again when the period ends.",
            retry_after=max(1, math.ceil(until - now)),
        )

    def costs(self, admitted: str, end: TurnEnd) -> list[tuple[str, int]]:
        """What an ended turn cost, by model: its usage, else what it streamed.

        The answer is priced at the model that produced it (`end.model`, a
        fallback after retries), else at `admitted`, and comes last; usage
        that failed attempts reported is priced at the model each asked.
        """
        failed = [(m or admitted, i, o) for m, i, o in end.failed_usage]
        output = end.output_tokens
        if output is not None and failed:
            # The answering attempt's own; None when only failed ones reported.
            output = (output - sum(o for _, _, o in failed)) or None
        if output is None or end.finish_reason not in NORMAL_ENDS:
            streamed = math.ceil(end.output_chars / CHARS_PER_TOKEN)
            output = max(output or 0, streamed)
        input_tokens = (end.input_tokens or 0) - sum(i for _, i, _ in failed)
        costs = [(model, self._price(model, i, o)) for model, i, o in failed]
        model = end.model or admitted
        cached = end.cached_input_tokens or 0
        costs.append((model, self._price(model, input_tokens, output, cached)))
        return costs

    def _price(self, model: str, tokens_in: int, output: int, cached: int = 0) -> int:
        price = self.prices.get(model)
        return 0 if price is None else price.cost(tokens_in, output, cached)

    def reclaimed_cost(self, model: str, held: int, streamed_chars: int) -> int:
        """What a dead worker's turn cost: its input bound, and what it streamed."""
        price = self.prices.get(model)
        if price is None:
            return held
        unused = self.max_output - math.ceil(streamed_chars / CHARS_PER_TOKEN)
        return max(0, held - price.cost(0, max(unused, 0)))

    # -- settlements waiting for the next reservation ---------------------------

    def pend(self, periods: Periods, settlement: Settlement) -> None:
        """Keep a settlement for the next reservation (or flush) to carry."""
        if not self._pending:
            self.pending_since = time.monotonic()
        self._pending.setdefault(periods, Settlement()).merge(settlement)

    def take_pending(self, periods: Periods | None = None) -> dict[Periods, Settlement]:
        """Hand over what waits (for `periods` only, if named)."""
        if periods is None:
            taken, self._pending = self._pending, {}
        else:
            one = self._pending.pop(periods, None)
            taken = {periods: one} if one is not None else {}
        if not self._pending:
            self.pending_since = None
        return taken

    def put_back(self, pending: dict[Periods, Settlement]) -> None:
        """Keep settlements the store did not take, for the next try."""
        for periods, settlement in pending.items():
            self.pend(periods, settlement)

    # -- alerts -------------------------------------------------------------------

    def crossed(
        self, periods: Periods, totals: Totals, refused: tuple[str, ...]
    ) -> list[tuple[str, Alert]]:
        """Thresholds these totals crossed that this worker has not claimed yet."""
        found: list[tuple[str, Alert]] = []
        keys = (periods.day, periods.month)
        for i, period in enumerate(PERIODS):
            hard, soft = self.hard[i], self.soft[i]
            spent, used = totals.spent[i], totals.used[i]
            limit = hard or soft
            for percent in self.thresholds if limit else ():
                reached = spent * 100 >= limit * percent
                if percent >= 100 and period in refused:
                    reached = True  # the ceiling refuses turns: it is reached
                if reached:
                    found.append(
                        (
                            f"{period}:{keys[i]}:{percent}",
                            Alert(
                                "threshold",
                                period,
                                percent,
                                spent,
                                limit,
                                self.currency,
                            ),
                        )
                    )
            if hard and soft and used >= soft:
                found.append(
                    (
                        f"{period}:{keys[i]}:soft",
                        Alert("soft_limit", period, 0, spent, soft, self.currency),
                    )
                )
        return [(name, a) for name, a in found if name not in self._alerted]

    def claimed(self, name: str) -> None:
        """Remember an alert this worker need not claim again."""
        if len(self._alerted) > 1000:
            self._alerted.clear()  # old periods' names; a claim is idempotent
        self._alerted.add(name)

    def report(
        self, totals: Totals, models: dict[str, tuple[int, int]], now: float
    ) -> dict[str, Any]:
        """The owner's view: GET /api/spend's body."""
        ends = period_ends(now)
        periods = {
            period: {
                "spent": format_money(totals.spent[i]),
                "held": format_money(max(totals.used[i] - totals.spent[i], 0)),
                "limit": format_money(self.hard[i]) if self.hard[i] else None,
                "soft_limit": format_money(self.soft[i]) if self.soft[i] else None,
                "resets_at": datetime.fromtimestamp(ends[i], UTC)
                .isoformat()
                .replace("+00:00", "Z"),
            }
            for i, period in enumerate(PERIODS)
        }
        return {
            "currency": self.currency,
            "periods": periods,
            "models": {
                model: {"spent": format_money(spent), "turns": turns}
                for model, (spent, turns) in sorted(models.items())
            },
        }


AlertSink = Callable[[Alert], None]
