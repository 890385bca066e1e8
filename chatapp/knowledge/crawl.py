"""Fill the index from the site: sitemaps and pages, robots.txt honoured, bounded.

The crawl loop: read the sources (sitemap.py) for the pages they name,
fetch each that may have changed (fetch.py: bounded, on the sources' hosts,
robots.txt honoured), index what changed and drop what left the sitemap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Executor
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from dataclasses import dataclass
from dataclasses import field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urldefrag

import gevent
import gevent.pool
import requests
from gevent import monkey

from chatapp.knowledge.extract import CONTENT_TYPES
from chatapp.knowledge.extract import Extracted
from chatapp.knowledge.extract import extract
from chatapp.knowledge.extract import media_type
from chatapp.knowledge.fetch import DEADLINE_SECONDS
from chatapp.knowledge.fetch import DISALLOWED
from chatapp.knowledge.fetch import FAILED
from chatapp.knowledge.fetch import INDEXED
from chatapp.knowledge.fetch import MAX_BYTES
from chatapp.knowledge.fetch import OFF_HOST as OFF_HOST
from chatapp.knowledge.fetch import REMOVED
from chatapp.knowledge.fetch import TIMEOUT_SECONDS
from chatapp.knowledge.fetch import TOO_LARGE as TOO_LARGE
from chatapp.knowledge.fetch import UNCHANGED
from chatapp.knowledge.fetch import UNSUPPORTED
from chatapp.knowledge.fetch import Fetched
from chatapp.knowledge.fetch import Fetcher
from chatapp.knowledge.fetch import FetchError
from chatapp.knowledge.fetch import new_session
from chatapp.knowledge.fetch import origin
from chatapp.knowledge.index import DocumentInfo
from chatapp.knowledge.index import Index
from chatapp.knowledge.sitemap import MAX_PAGES
from chatapp.knowledge.sitemap import MAX_SITEMAPS
from chatapp.knowledge.sitemap import Listed
from chatapp.knowledge.sitemap import looks_like_sitemap
from chatapp.knowledge.sitemap import parse_sitemap

# Which documents the crawler owns: only those it may drop when they leave
# the sitemap. Pushed and added documents are never touched by a crawl.
CRAWL_OWNER = "crawl"
# Pages fetched at once: while one page is parsed, the next ones download.
# Each holds at most MAX_BYTES, so memory stays bounded. Pages are parsed
# one at a time: the GIL would serialise them anyway, and parse trees
# built in several threads at once grow the heap (an arena per thread).
FETCHERS = 4


@dataclass(frozen=True, slots=True)
class PageResult:
    """What became of one URL in a crawl."""

    url: str
    outcome: str
    passages: int = 0
    detail: str = ""


@dataclass
class CrawlReport:
    """A crawl's summary: outcomes by count, and how long it took."""

    results: list[PageResult] = field(default_factory=list)
    seconds: float = 0.0
    bytes: int = 0

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for result in self.results:
            out[result.outcome] = out.get(result.outcome, 0) + 1
        return out


@dataclass(frozen=True, slots=True)
class Ready:
    """A page fetched and extracted, waiting to be written to the index."""

    url: str
    document: Extracted
    fetched: Fetched


class Crawler:
    """Crawl the sources into an index; one instance per crawl."""

    def __init__(
        self,
        index: Index,
        sources: list[str] | tuple[str, ...],
        *,
        session: requests.Session | None = None,
        progress: Callable[[PageResult], None] | None = None,
        keepalive: Callable[[], None] | None = None,
        run: Callable[..., Any] | None = None,
        timeout: float = TIMEOUT_SECONDS,
        deadline: float = DEADLINE_SECONDS,
        max_bytes: int = MAX_BYTES,
        max_pages: int = MAX_PAGES,
        owner: str = CRAWL_OWNER,
        fetchers: int = FETCHERS,
    ) -> None:
        self.index = index
        self.sources = [urldefrag(s.strip())[0] for s in sources if s.strip()]
        self.hosts = {origin(s) for s in self.sources}
        self.fetcher = Fetcher(
            self.hosts,
            session or new_session(),
            timeout=timeout,
            deadline=deadline,
            max_bytes=max_bytes,
        )
        self.progress = progress
        self.keepalive = keepalive
        # Extraction is CPU work: the service hands it to a thread so that
        # its event loop keeps serving requests meanwhile.
        self.run = run or (lambda fn, *args, **kw: fn(*args, **kw))
        self.max_pages = max_pages
        self.owner = owner
        self.fetchers = max(1, fetchers)
        self._parsing = threading.Lock()
        self.report = CrawlReport()
        self.complete = True  # every source read: pages absent from it may go

    def crawl(self) -> CrawlReport:
        """Fetch every source's pages, index what changed, drop what left."""
        started = time.monotonic()
        pages = self.listed()
        for result in self.pages(pages.values()):
            self._record(result)
        if self.complete:
            for info in self.index.documents():
                gone = info.url not in pages and origin(info.url) in self.hosts
                if gone and info.owner == self.owner == CRAWL_OWNER:
                    self.index.remove(info.url)
                    self._record(PageResult(info.url, REMOVED, detail="not listed"))
        self.report.seconds = time.monotonic() - started
        self.report.bytes = self.fetcher.bytes
        return self.report

    def _record(self, result: PageResult) -> None:
        self.report.results.append(result)
        if self.progress is not None:
            self.progress(result)
        if self.keepalive is not None:
            self.keepalive()

    # -- sources -------------------------------------------------------------

    def listed(self) -> dict[str, Listed]:
        """Read the sources: every page they name that robots.txt allows."""
        pages: dict[str, Listed] = {}
        sitemaps_read = 0
        queue = list(self.sources)
        while queue and len(pages) < self.max_pages:
            url = queue.pop(0)
            if not self.allowed(url):
                self.complete = (
                    self.complete and self.fetcher.robots_of(url) is not None
                )
                self._record(PageResult(url, DISALLOWED))
                continue
            if not looks_like_sitemap(url) and url in self.sources:
                pages.setdefault(url, Listed(url))
                continue
            if sitemaps_read >= MAX_SITEMAPS:
                self.complete = False
                continue
            sitemaps_read += 1
            try:
                fetched = self.fetcher.fetch(url)
            except FetchError as exc:
                self.complete = False
                self._record(PageResult(url, exc.outcome, detail=str(exc)))
                continue
            if fetched.status != 200:
                self.complete = False
                self._record(PageResult(url, FAILED, detail=f"HTTP {fetched.status}"))
                continue
            kind, entries = parse_sitemap(fetched.body)
            if kind == "sitemapindex":
                queue.extend(e.url for e in entries if origin(e.url) in self.hosts)
            elif kind == "urlset":
                for entry in entries:
                    if origin(entry.url) not in self.hosts:
                        continue
                    if not self.allowed(entry.url):
                        self._record(PageResult(entry.url, DISALLOWED))
                        continue
                    pages.setdefault(entry.url, entry)
                    if len(pages) >= self.max_pages:
                        self.complete = False
                        break
            elif url in self.sources:
                # Not a sitemap after all: a page given as a source.
                pages.setdefault(url, Listed(url))
            else:
                self.complete = False
                self._record(PageResult(url, FAILED, detail="not a sitemap"))
        return pages

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets us fetch `url` (and it is on a source's host)."""
        return self.fetcher.allowed(url)

    # -- pages ---------------------------------------------------------------

    def pages(self, listed: Iterable[Listed]) -> Iterator[PageResult]:
        """Fetch and extract up to `fetchers` pages at once; index them in turn.

        Only this thread touches the index; the others fetch and parse.
        """
        todo = iter(listed)
        running: dict[Any, DocumentInfo | None] = {}
        with _executor(self.fetchers) as pool:
            while True:
                while len(running) < self.fetchers and (page := next(todo, None)):
                    info = self.index.document(page.url)
                    running[pool.submit(self.prepare, page, info)] = info
                if not running:
                    return
                for task in _first_done(running):
                    yield self.store(_result(task), running.pop(task))

    def page(self, page: Listed) -> PageResult:
        """Fetch one page if it may have changed, and index it."""
        known = self.index.document(page.url)
        return self.store(self.prepare(page, known), known)

    def prepare(self, page: Listed, known: DocumentInfo | None) -> PageResult | Ready:
        """Fetch and extract one page; a PageResult when there is nothing to add."""
        if (
            known is not None
            and page.lastmod is not None
            and known.modified is not None
            and page.lastmod <= known.modified
        ):
            return PageResult(page.url, UNCHANGED, known.passages, "sitemap lastmod")
        try:
            fetched = self.fetcher.fetch(
                page.url,
                etag=known.etag if known else "",
                last_modified=known.last_modified if known else "",
            )
        except FetchError as exc:
            return PageResult(page.url, exc.outcome, detail=str(exc))
        if fetched.status == 304 and known is not None:
            return PageResult(page.url, UNCHANGED, known.passages, "304")
        if fetched.status in (404, 410) and known is not None:
            return PageResult(page.url, REMOVED, detail=f"HTTP {fetched.status}")
        if fetched.status != 200:
            return PageResult(page.url, FAILED, detail=f"HTTP {fetched.status}")
        if media_type(fetched.content_type) not in CONTENT_TYPES:
            return PageResult(page.url, UNSUPPORTED, detail=fetched.content_type)
        with self._parsing:
            document = self.run(
                extract,
                fetched.body,
                url=page.url,
                content_type=fetched.content_type,
                modified=page.lastmod or _http_date(fetched.last_modified),
            )
        return Ready(page.url, document, fetched)

    def store(
        self, prepared: PageResult | Ready, known: DocumentInfo | None
    ) -> PageResult:
        """Write what `prepare` made of a page to the index."""
        if isinstance(prepared, PageResult):
            if prepared.outcome == REMOVED and known is not None:
                self.index.remove(prepared.url)
            return prepared
        document, fetched = prepared.document, prepared.fetched
        count = self.index.replace(
            prepared.url,
            document.title,
            list(document.passages),
            modified=document.modified,
            etag=fetched.etag,
            last_modified=fetched.last_modified,
            owner=self.owner,
        )
        return PageResult(prepared.url, INDEXED, count)


def _http_date(text: str) -> float | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None


class _Greenlets(Executor):
    """An executor of greenlets, for a process gevent has monkey-patched.

    There, concurrent.futures' threads are greenlets too, and its exit hook
    waits on them when the interpreter exits: a gunicorn worker that had
    crawled did not quit until gunicorn killed it (15 s in the tests).
    """

    def __init__(self) -> None:
        self._group = gevent.pool.Group()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return self._group.spawn(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._group.kill()


def _executor(workers: int) -> Executor:
    if monkey.is_module_patched("threading"):
        return _Greenlets()
    return ThreadPoolExecutor(workers, "crawl")


def _first_done(tasks: Iterable[Any]) -> list[Any]:
    """The tasks that are done, once at least one is: futures or greenlets."""
    tasks = list(tasks)
    if isinstance(tasks[0], Future):
        return list(wait(tasks, return_when=FIRST_COMPLETED).done)
    return list(gevent.wait(tasks, count=1))


def _result(task: Any) -> Any:
    return task.result() if isinstance(task, Future) else task.get()
