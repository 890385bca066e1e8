"""Where the site's spend is counted: memory (one process) or Redis (every host).

chatapp:spend:{site}:day:<YYYYMMDD>    hash: `used` (settled + held by
                                       running turns, what ceilings are
                                       checked against) and `spent`
                                       (settled), in micro-units
chatapp:spend:{site}:month:<YYYYMM>    the same for the UTC month
chatapp:spend:{site}:models:<YYYYMM>   hash: `spent:<model>`, `turns:<model>`
chatapp:spend:{site}:alert:<period>:<key>:<name>   an alert claimed (SET NX)

One hash tag for all of them: the script that checks and reserves both
periods names three keys, which Redis Cluster needs in one slot. A worker
hands the settlements of its ended turns to its next reservation (or to a
flush a moment later), so a turn costs the shared store one command more
than the daily token budget alone: the reservation. Every Redis failure
leaves RedisSpendStore as StoreError.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from typing import Protocol
from typing import cast

import redis

from chatapp.store.expiring import ExpiringMap
from chatapp.store.redis import guard

TAG = "chatapp:spend:{site}"
PERIODS = ("day", "month")


@dataclass(frozen=True, slots=True)
class Periods:
    """The UTC day and month a turn counts in, and how long to keep each.

    Two are equal when they name the same day and month, whatever the TTLs.
    """

    day: str
    month: str
    day_ttl: int = field(compare=False)
    month_ttl: int = field(compare=False)


@dataclass(frozen=True, slots=True)
class Ask:
    """What a new turn would hold, on either model, against which ceilings."""

    model: str
    cost: int
    fallback: str
    fallback_cost: int
    hard: tuple[int, int]  # day, month; 0 = none
    soft: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Totals:
    """Micro-units per period: what ceilings see (used) and what was settled."""

    used: tuple[int, int]
    spent: tuple[int, int]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A reservation's outcome: the model and amount held, or the refusal."""

    model: str
    amount: int
    refused: tuple[str, ...]  # periods at their hard ceiling; empty = held
    totals: Totals


@dataclass
class Settlement:
    """Ended turns not yet settled in the store: deltas to apply at once."""

    used: int = 0
    spent: int = 0
    models: dict[str, list[int]] = field(default_factory=dict)  # spent, turns

    def add(self, model: str, held: int, cost: int) -> None:
        """Fold in one ended turn that held `held` and cost `cost`."""
        self.used += cost - held
        self.spent += cost
        entry = self.models.setdefault(model, [0, 0])
        entry[0] += cost
        entry[1] += 1

    def charge(self, model: str, cost: int) -> None:
        """Fold in spend of no turn of its own: a failed attempt's usage."""
        self.used += cost
        self.spent += cost
        self.models.setdefault(model, [0, 0])[0] += cost

    def give_back(self, held: int) -> None:
        """Fold in a reservation whose turn never started."""
        self.used -= held

    def merge(self, other: Settlement) -> None:
        """Fold in another settlement of the same periods."""
        self.used += other.used
        self.spent += other.spent
        for model, (spent, turns) in other.models.items():
            entry = self.models.setdefault(model, [0, 0])
            entry[0] += spent
            entry[1] += turns

    def empty(self) -> bool:
        return not (self.used or self.spent or self.models)


class SpendStore(Protocol):
    """Where the site's spend is kept."""

    def reserve(
        self, periods: Periods, ask: Ask | None, settle: Settlement | None
    ) -> Verdict:
        """Apply `settle`, then hold `ask` unless it would pass a hard ceiling."""

    def totals(self, periods: Periods) -> tuple[Totals, dict[str, tuple[int, int]]]:
        """Return the periods' totals and the month's spend and turns by model."""

    def claim_alert(self, name: str, ttl: int) -> bool:
        """Claim an alert once for everyone; False when someone already did."""


def _choose(ask: Ask, used: list[int]) -> tuple[str, int, tuple[str, ...]]:
    model, cost = ask.model, ask.cost
    if any(0 < soft <= u for soft, u in zip(ask.soft, used, strict=True)):
        model, cost = ask.fallback, ask.fallback_cost
    refused = tuple(
        p
        for p, hard, u in zip(PERIODS, ask.hard, used, strict=True)
        if hard > 0 and u + cost > hard
    )
    return model, cost, refused


class MemorySpendStore(SpendStore):
    """The spend of this process alone."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._periods: dict[str, list[int]] = {}  # "day:…" -> [used, spent]
        self._models: dict[str, dict[str, list[int]]] = {}
        self._alerts: ExpiringMap[str, bool] = ExpiringMap(clock, sweep_every=3600)

    def _pair(self, periods: Periods) -> list[list[int]]:
        keys = (f"day:{periods.day}", f"month:{periods.month}")
        for old in [k for k in self._periods if k.startswith("day:") and k < keys[0]]:
            del self._periods[old]
        return [self._periods.setdefault(k, [0, 0]) for k in keys]

    def reserve(
        self, periods: Periods, ask: Ask | None, settle: Settlement | None
    ) -> Verdict:
        pair = self._pair(periods)
        if settle is not None:
            for entry in pair:
                entry[0] += settle.used
                entry[1] += settle.spent
            models = self._models.setdefault(periods.month, {})
            for model, (spent, turns) in settle.models.items():
                entry = models.setdefault(model, [0, 0])
                entry[0] += spent
                entry[1] += turns
        model, amount, refused = "", 0, cast("tuple[str, ...]", ())
        if ask is not None:
            model, amount, refused = _choose(ask, [e[0] for e in pair])
            if not refused:
                for entry in pair:
                    entry[0] += amount
        totals = Totals((pair[0][0], pair[1][0]), (pair[0][1], pair[1][1]))
        return Verdict(model, amount, refused, totals)

    def totals(self, periods: Periods) -> tuple[Totals, dict[str, tuple[int, int]]]:
        totals = self.reserve(periods, None, None).totals
        models = self._models.get(periods.month, {})
        return totals, {m: (e[0], e[1]) for m, e in models.items()}

    def claim_alert(self, name: str, ttl: int) -> bool:
        return self._alerts.add(name, True, ttl)


# Apply a worker's settled turns, then check both periods' hard ceilings and
# hold the turn's worst case in both, or in neither.
# KEYS: day, month, models. ARGV: day ttl, month ttl, used delta, spent
# delta, n, n x (model, spent, turns), then 1 to reserve (else 0), the
# ceilings (day hard, day soft, month hard, month soft; 0 = none), model,
# cost, fallback model, fallback cost.
_RESERVE = """
local i = 6 + 3 * tonumber(ARGV[5])
for p = 1, 2 do
  if ARGV[3] ~= '0' then redis.call('HINCRBY', KEYS[p], 'used', ARGV[3]) end
  if ARGV[4] ~= '0' then redis.call('HINCRBY', KEYS[p], 'spent', ARGV[4]) end
end
for j = 6, i - 1, 3 do
  redis.call('HINCRBY', KEYS[3], 'spent:' .. ARGV[j], ARGV[j + 1])
  redis.call('HINCRBY', KEYS[3], 'turns:' .. ARGV[j], ARGV[j + 2])
end
if i > 6 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
local used, spent = {}, {}
for p = 1, 2 do
  local v = redis.call('HMGET', KEYS[p], 'used', 'spent')
  used[p] = tonumber(v[1] or '0')
  spent[p] = tonumber(v[2] or '0')
end
local model, cost, refused = '', 0, 0
if ARGV[i] == '1' then
  local hard = {tonumber(ARGV[i + 1]), tonumber(ARGV[i + 3])}
  local soft = {tonumber(ARGV[i + 2]), tonumber(ARGV[i + 4])}
  model, cost = ARGV[i + 5], tonumber(ARGV[i + 6])
  for p = 1, 2 do
    if soft[p] > 0 and used[p] >= soft[p] then
      model, cost = ARGV[i + 7], tonumber(ARGV[i + 8])
    end
  end
  for p = 1, 2 do
    if hard[p] > 0 and used[p] + cost > hard[p] then refused = refused + p end
  end
  if refused == 0 then
    for p = 1, 2 do
      used[p] = redis.call('HINCRBY', KEYS[p], 'used', cost)
      redis.call('EXPIRE', KEYS[p], ARGV[p])
    end
  end
end
return {model, cost, refused, used[1], used[2], spent[1], spent[2]}
"""


class RedisSpendStore(SpendStore):
    """The spend of every worker and host, shared through Redis."""

    def __init__(self, client: redis.Redis) -> None:
        self._r = client
        self._reserve = client.register_script(_RESERVE)

    @guard("spend: reserve")
    def reserve(
        self, periods: Periods, ask: Ask | None, settle: Settlement | None
    ) -> Verdict:
        s = settle or Settlement()
        args: list[str | int] = [
            periods.day_ttl,
            periods.month_ttl,
            s.used,
            s.spent,
            len(s.models),
        ]
        for model, (spent, turns) in s.models.items():
            args += [model, spent, turns]
        if ask is None:
            args.append(0)
        else:
            args += [1, ask.hard[0], ask.soft[0], ask.hard[1], ask.soft[1]]
            args += [ask.model, ask.cost, ask.fallback, ask.fallback_cost]
        raw = cast("list[bytes | int]", self._reserve(keys=_keys(periods), args=args))
        raw_model, cost, refused, *counts = raw
        nums = [int(v) for v in counts]
        model = _text(raw_model)
        codes = {1: ("day",), 2: ("month",), 3: ("day", "month")}
        return Verdict(
            model,
            int(cost),
            codes.get(int(refused), ()),
            Totals((nums[0], nums[1]), (nums[2], nums[3])),
        )

    @guard("spend: read totals")
    def totals(self, periods: Periods) -> tuple[Totals, dict[str, tuple[int, int]]]:
        day, month, models = _keys(periods)
        with self._r.pipeline(transaction=False) as pipe:
            pipe.hmget(day, "used", "spent")
            pipe.hmget(month, "used", "spent")
            pipe.hgetall(models)
            d, m, per_model = pipe.execute()
        by_model: dict[str, tuple[int, int]] = {}
        for raw_key, raw_value in per_model.items():
            kind, _, model = _text(raw_key).partition(":")
            spent, turns = by_model.get(model, (0, 0))
            value = int(raw_value)
            by_model[model] = (value, turns) if kind == "spent" else (spent, value)
        return (
            Totals((int(d[0] or 0), int(m[0] or 0)), (int(d[1] or 0), int(m[1] or 0))),
            by_model,
        )

    @guard("spend: claim alert")
    def claim_alert(self, name: str, ttl: int) -> bool:
        return bool(self._r.set(f"{TAG}:alert:{name}", "1", nx=True, ex=ttl))


def _keys(periods: Periods) -> list[str]:
    return [
        f"{TAG}:day:{periods.day}",
        f"{TAG}:month:{periods.month}",
        f"{TAG}:models:{periods.month}",
    ]


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
