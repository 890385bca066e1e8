"""What models cost: CHATAPP_PRICES, spend ceilings, and a turn's cost.

Money is counted in integer micro-units of CHATAPP_CURRENCY (a millionth of
a dollar, say), never in floats: a month of turns summed in floats drifts.
Prices are per million tokens, so a price in micro-units per million tokens
is an integer for any price with at most six decimals, and a turn's exact
cost is an integer number of 1e-12 units; it is rounded up to a micro-unit
once per turn, so what chatapp counts is never less than the bill.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from decimal import InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import Any

MICROS = 1_000_000  # micro-units in one unit of the currency
PER_TOKENS = 1_000_000  # prices are per million tokens
PERIODS = ("day", "month")
# Above this a month's micro-units would pass what Lua (doubles) counts exactly.
MAX_CEILING = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Price:
    """A model's prices, in micro-units per million tokens."""

    input: int
    output: int
    cached_input: int | None = None

    def cost(self, input_tokens: int, output_tokens: int, cached_input: int = 0) -> int:
        """Return the micro-units a turn's usage costs, rounded up.

        `input_tokens` counts every input token, the cached ones among them
        (as both providers' usage does once parsed); those cost
        `cached_input` when the model has such a price.
        """
        cached = min(max(cached_input, 0), max(input_tokens, 0))
        fresh = max(input_tokens, 0) - cached
        cached_price = self.input if self.cached_input is None else self.cached_input
        exact = (
            fresh * self.input
            + cached * cached_price
            + max(output_tokens, 0) * self.output
        )
        return -(-exact // PER_TOKENS)


def to_micros(value: Any, what: str) -> int:
    """Read an amount of money (a number, at most six decimals) as micro-units."""
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError) as exc:
        raise ValueError(f"{what}: {value!r} is not a number") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"{what}: {value!r} must be a number of 0 or more")
    micros = amount * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"{what}: {value!r} has more than six decimals")
    return int(micros)


def format_money(micros: int) -> float:
    """Show micro-units as an amount of the currency (for JSON and metrics)."""
    return float(Decimal(micros) / MICROS)


def parse_prices(raw: str) -> MappingProxyType[str, Price]:
    """Parse `model=input/output[/cached_input];…` or `@path` to a JSON file."""
    value = raw.strip()
    if value.startswith("@"):
        return _read_prices_file(Path(value[1:]).expanduser())
    prices: dict[str, Price] = {}
    for item in value.split(";"):
        if not item.strip():
            continue
        model, eq, numbers = item.rpartition("=")
        model = model.strip()
        parts = numbers.split("/")
        if not eq or not model or len(parts) not in (2, 3):
            raise ValueError(
                f"{item.strip()!r} is not model=input/output[/cached_input], "
                "e.g. gpt-5-mini=0.25/2.00"
            )
        prices[model] = _price(model, *parts)
    if not prices:
        raise ValueError("names no model")
    return MappingProxyType(prices)


def _read_prices_file(path: Path) -> MappingProxyType[str, Price]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_float=Decimal)
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(data, dict) or not data:
        raise ValueError(f'{path} must hold {{"model": {{"input", "output"}}, …}}')
    prices: dict[str, Price] = {}
    for model, entry in data.items():
        if not isinstance(entry, dict) or not {"input", "output"} <= entry.keys():
            raise ValueError(f"{path}: {model!r} needs at least input and output")
        prices[model] = _price(
            model, entry["input"], entry["output"], entry.get("cached_input")
        )
    return MappingProxyType(prices)


def _price(model: str, inp: Any, out: Any, cached: Any = None) -> Price:
    return Price(
        to_micros(inp, f"{model} input"),
        to_micros(out, f"{model} output"),
        None if cached is None else to_micros(cached, f"{model} cached input"),
    )


def parse_ceilings(raw: str) -> MappingProxyType[str, int]:
    """Parse `20/day;300/month` into micro-units per period."""
    ceilings: dict[str, int] = {}
    for item in raw.split(";"):
        if not item.strip():
            continue
        amount, slash, period = item.strip().partition("/")
        period = period.strip().lower()
        if not slash or period not in PERIODS or period in ceilings:
            raise ValueError(
                f"{item.strip()!r} is not amount/day or amount/month, e.g. 20/day"
            )
        micros = to_micros(amount, period)
        if not 0 < micros <= MAX_CEILING * MICROS:
            raise ValueError(f"{item.strip()!r}: must be above 0 and at most 1e9")
        ceilings[period] = micros
    if not ceilings:
        raise ValueError("names no ceiling")
    return MappingProxyType(ceilings)


def parse_percentages(raw: str) -> tuple[int, ...]:
    """Parse `50,80,100`: alert thresholds, in percent of a ceiling."""
    values = set()
    for item in raw.split(","):
        if not item.strip():
            continue
        value = int(item.strip())
        if not 1 <= value <= 100:
            raise ValueError("each percentage must be between 1 and 100")
        values.add(value)
    return tuple(sorted(values))


def estimate_input_tokens(chars: int) -> int:
    """Bound the input tokens of `chars` characters: one token per character.

    English runs about four characters to a token, some scripts one; no
    tokenizer makes more tokens than characters of ordinary text, so the
    reservation made from this bound is never below what the turn costs.
    """
    return max(chars, 0) + 16  # and the few tokens of the messages' framing
