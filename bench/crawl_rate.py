"""Crawl rate alone: pages/s, CPU and memory of one first crawl of a local site.

    apt-get install git-doc
    .venv/bin/python -m bench.crawl_rate [--docs /usr/share/doc/git-doc] [--runs 2]

Serves the doc set from 127.0.0.1 with a sitemap (bench.knowledge.served,
`python -m http.server` in a child process), then crawls it into a fresh
SQLite index in a fresh child process per run, two ways:

- "service": as a gunicorn gevent worker does (monkey-patched, extraction
  in the hub's thread pool, fetches in greenlets);
- "plain": the Crawler in an unpatched process (extraction inline).

each with the crawler's default number of concurrent fetches and with one
(the old sequential crawl). Prints one JSON object; the machine's load
average is in it, since the wall clock on a shared machine depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.knowledge import served

CHILD = r"""
import json, resource, sys, tempfile, time
from pathlib import Path
mode, fetchers, sitemap = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if mode == "service":
    from gevent import monkey
    monkey.patch_all()
    import gevent
from bench.knowledge import rss_mb
from chatapp.knowledge.crawl import Crawler
from chatapp.knowledge.sqlite_index import SqliteIndex

run = None
if mode == "service":
    pool = gevent.get_hub().threadpool
    run = lambda fn, *args, **kw: pool.apply(fn, args, kw)
with tempfile.TemporaryDirectory(prefix="chatapp-bench-crawl-") as tmp:
    index = SqliteIndex(Path(tmp) / "knowledge.sqlite3")
    index.stats()
    before, cpu = rss_mb(), time.process_time()
    report = Crawler(index, [sitemap], run=run, fetchers=fetchers).crawl()
    cpu = time.process_time() - cpu
    pages = report.count("indexed")
    print(json.dumps({
        "pages": pages,
        "seconds": round(report.seconds, 2),
        "pages_per_s": round(pages / report.seconds, 1),
        "pages_per_cpu_s": round(pages / cpu, 1),
        "rss_mb_before": round(before, 1),
        "rss_mb_after": round(rss_mb(), 1),
        "rss_mb_peak": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
        ),
    }))
    index.close()
"""


def crawl(mode: str, fetchers: int, sitemap: str) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(fetchers), sitemap],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["load_average"] = round(os.getloadavg()[0], 2)
    return result


def main() -> None:
    from chatapp.knowledge.crawl import FETCHERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default="/usr/share/doc/git-doc")
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    with served(Path(args.docs)) as sitemap:
        for _ in range(args.runs):
            for mode in ("service", "plain"):
                for fetchers in (FETCHERS, 1):
                    key = f"{mode}, {fetchers} fetcher{'s' if fetchers > 1 else ''}"
                    results.setdefault(key, []).append(crawl(mode, fetchers, sitemap))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
