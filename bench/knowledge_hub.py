"""Measure how long a knowledge search holds a gevent worker's other greenlets.

    .venv/bin/python -m bench.knowledge_hub                     # temp index
    .venv/bin/python -m bench.knowledge_hub --index /tmp/k.db   # kept, reused

Patches like wsgi.py, fills an SQLite index with real documentation (as
bench/knowledge_latency.py does, `--passages` of them), then runs
`--questions` searches from `--concurrency` greenlets while one more greenlet
asks for a 1 ms timer again and again, as a stream's heartbeat or relay
would. Prints, as one JSON line, the searches' p50/p95 in milliseconds and
how late the timer greenlet woke (p50, p99, max): while a search held the
hub, it could not wake at all.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

from bench.knowledge_latency import fill  # noqa: E402
from chatapp.knowledge.sqlite_index import SqliteIndex  # noqa: E402

TICK = 0.001


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[max(0, int(len(ordered) * share) - 1)], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", default="", help="SQLite file (kept; reused)")
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        index = SqliteIndex(Path(args.index or Path(folder) / "k.db"))
        try:
            if index.stats().passages < args.passages:
                fill(index, args.passages)
            report = measure(index, args.questions, args.concurrency)
        finally:
            index.close()
    print(json.dumps(report))
    return 0


def measure(index: SqliteIndex, questions: int, concurrency: int) -> dict[str, float]:
    """Search from greenlets while a timer greenlet ticks; time both."""
    rng = random.Random(22)
    titles = [d.title for d in index.documents() if "/git/" in d.url]
    asked = [f"How do I use {rng.choice(titles).lower()}?" for _ in range(questions)]
    searches: list[float] = []
    late: list[float] = []
    running = True

    def tick() -> None:
        while running:
            started = time.perf_counter()
            gevent.sleep(TICK)
            late.append((time.perf_counter() - started - TICK) * 1000)

    def search(question: str) -> None:
        started = time.perf_counter()
        index.search(question, limit=12)
        searches.append((time.perf_counter() - started) * 1000)

    ticker = gevent.spawn(tick)
    gevent.pool.Pool(concurrency).map(search, asked)
    running = False
    ticker.join()
    return {
        "passages": index.stats().passages,
        "questions": len(searches),
        "concurrency": concurrency,
        "search_p50_ms": round(statistics.median(searches), 2),
        "search_p95_ms": percentile(searches, 0.95),
        "timer_late_p50_ms": round(statistics.median(late), 2),
        "timer_late_p99_ms": percentile(late, 0.99),
        "timer_late_max_ms": round(max(late), 2),
    }


if __name__ == "__main__":
    sys.exit(main())
