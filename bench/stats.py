"""Percentiles, merged histograms and the tables the bench prints."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence

GAP_BUCKET = 1e-4  # must match bench.loadgen: gaps come in 0.1 ms buckets


def percentile(values: Sequence[float], q: float) -> float | None:
    """Return the q-th percentile (0..100) by nearest rank; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def merge_counts(histograms: Iterable[Mapping[str, int]]) -> Counter[int]:
    """Add histograms keyed by bucket number (as JSON gives them: strings)."""
    total: Counter[int] = Counter()
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[int(bucket)] += count
    return total


def histogram_percentile(buckets: Mapping[int, int], q: float) -> float | None:
    """Return the q-th percentile of a gap histogram, in seconds."""
    n = sum(buckets.values())
    if n == 0:
        return None
    rank = max(1, math.ceil(q / 100 * n))
    seen = 0
    for bucket in sorted(buckets):
        seen += buckets[bucket]
        if seen >= rank:
            return (bucket + 0.5) * GAP_BUCKET
    raise AssertionError("unreachable")


def ms(value: float | None, digits: int = 1) -> str:
    """Format seconds as milliseconds, or an em dash."""
    return "—" if value is None else f"{value * 1000:.{digits}f}"


def number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Render a Markdown table whose columns line up in a terminal too."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [cell.rjust(w) for cell, w in zip(cells, widths, strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def errors_text(errors: Mapping[str, int]) -> str:
    """Render error counts by kind, compactly; `0` when there are none."""
    shown = [f"{kind}:{count}" for kind, count in sorted(errors.items()) if count]
    return " ".join(shown) if shown else "0"
