"""Re-crawl the sources in the service: at start-up, then every REFRESH seconds."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent

from chatapp.knowledge.crawl import Crawler
from chatapp.knowledge.crawl import CrawlReport
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import KnowledgeError
from chatapp.knowledge.lock import CrawlLock

log = logging.getLogger("chatapp.knowledge")

# When the lock is taken by another worker, look again this often: if that
# worker dies mid-crawl, its lock expires and someone finishes the round.
RETRY_SECONDS = 60.0


def crawl_once(
    index: Index,
    sources: tuple[str, ...],
    lock: CrawlLock,
    *,
    every: float = 0.0,
    on_report: Callable[[CrawlReport], None] | None = None,
) -> CrawlReport | None:
    """Crawl if no other crawler holds the lock (and, with `every`, one is due)."""
    if not lock.acquire():
        return None
    try:
        if every and not lock.due(every):
            return None
        # Page extraction is CPU work: a real thread keeps the hub serving.
        pool = gevent.get_hub().threadpool
        report = Crawler(
            index,
            sources,
            keepalive=lock.renew,
            run=lambda fn, *args, **kw: pool.apply(fn, args, kw),
        ).crawl()
        lock.done(every)
    finally:
        lock.release()
    log.info(
        "knowledge crawl done",
        extra={"seconds": round(report.seconds, 2), **report.counts()},
    )
    if on_report is not None:
        on_report(report)
    return report


def run_forever(
    index: Index,
    sources: tuple[str, ...],
    lock: CrawlLock,
    every: float,
    on_report: Callable[[CrawlReport], None] | None = None,
) -> None:
    """Crawl when due, forever; one failure never stops the next round."""
    while True:
        try:
            crawl_once(index, sources, lock, every=every, on_report=on_report)
        except (KnowledgeError, OSError) as exc:
            log.warning("knowledge crawl failed: %s", exc)
        except Exception:
            log.exception("knowledge crawl failed")
        # Look again soon: the worker that holds the lock may die mid-crawl,
        # and a failed crawl is retried; `due` keeps a done round from rerunning.
        gevent.sleep(min(every, RETRY_SECONDS))


def start(
    index: Index,
    sources: tuple[str, ...],
    lock: CrawlLock,
    every: float,
    on_report: Callable[[CrawlReport], None] | None = None,
) -> gevent.Greenlet:
    """Run the re-crawl loop in a greenlet of this worker."""
    return gevent.spawn(run_forever, index, sources, lock, every, on_report)
