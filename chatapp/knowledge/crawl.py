"""Fill the index from the site: sitemaps and pages, robots.txt honoured, bounded."""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED
from concurrent.futures import Future
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field
from datetime import UTC
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urldefrag
from urllib.parse import urljoin
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import requests
import urllib3.exceptions
from lxml import etree

from chatapp.knowledge.extract import CONTENT_TYPES
from chatapp.knowledge.extract import Extracted
from chatapp.knowledge.extract import extract
from chatapp.knowledge.extract import media_type
from chatapp.knowledge.index import DocumentInfo
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import KnowledgeError

USER_AGENT = "chatapp-knowledge/1 (+site knowledge crawler)"
# Per fetch: connect + each read within TIMEOUT, the whole body within
# DEADLINE, at most MAX_BYTES of it, at most MAX_REDIRECTS hops on the host.
TIMEOUT_SECONDS = 10.0
DEADLINE_SECONDS = 30.0
MAX_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 5
# Per crawl: sitemaps read (an index may list many), and pages kept.
MAX_SITEMAPS = 100
MAX_PAGES = 20_000
CHUNK_BYTES = 64 * 1024
# Pages fetched at once: while one page is parsed, the next ones download.
# Each holds at most MAX_BYTES, so memory stays bounded. Pages are parsed
# one at a time: the GIL would serialise them anyway, and parse trees
# built in several threads at once grow the heap (an arena per thread).
FETCHERS = 4
XML_TYPES = ("application/xml", "text/xml")
# Which documents the crawler owns: only those it may drop when they leave
# the sitemap. Pushed and added documents are never touched by a crawl.
CRAWL_OWNER = "crawl"

# Outcomes of one page, as counted in the report and the metrics.
INDEXED = "indexed"
UNCHANGED = "unchanged"
REMOVED = "removed"
DISALLOWED = "disallowed"
OFF_HOST = "off_host"
TOO_LARGE = "too_large"
UNSUPPORTED = "unsupported"
FAILED = "failed"


class FetchError(KnowledgeError):
    """A fetch failed; `outcome` says how (one of the page outcomes)."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


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
class Fetched:
    url: str
    status: int
    content_type: str
    body: bytes
    etag: str
    last_modified: str


@dataclass(frozen=True, slots=True)
class Ready:
    """A page fetched and extracted, waiting to be written to the index."""

    url: str
    document: Extracted
    fetched: Fetched


@dataclass(frozen=True, slots=True)
class Listed:
    """A page a source names, with the sitemap's lastmod when it gave one."""

    url: str
    lastmod: float | None = None


def origin(url: str) -> str:
    """Reduce a URL to scheme://host[:port], lower-cased."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


@contextmanager
def transport_errors(url: str) -> Iterator[None]:
    """Turn every transport failure of one fetch into a FetchError."""
    try:
        yield
    except requests.Timeout as exc:
        raise FetchError(FAILED, f"{url}: timed out") from exc
    except (
        requests.RequestException,
        urllib3.exceptions.HTTPError,
        OSError,
    ) as exc:
        raise FetchError(FAILED, f"{url}: {type(exc).__name__}") from exc


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
        self.session = session or _session()
        self.progress = progress
        self.keepalive = keepalive
        # Extraction is CPU work: the service hands it to a thread so that
        # its event loop keeps serving requests meanwhile.
        self.run = run or (lambda fn, *args, **kw: fn(*args, **kw))
        self.timeout = timeout
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.max_pages = max_pages
        self.owner = owner
        self.fetchers = max(1, fetchers)
        self._bytes_lock = threading.Lock()
        self._parsing = threading.Lock()
        self.robots: dict[str, RobotFileParser | None] = {}
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
                self.complete = self.complete and self._robots(url) is not None
                self._record(PageResult(url, DISALLOWED))
                continue
            if not _looks_like_sitemap(url) and url in self.sources:
                pages.setdefault(url, Listed(url))
                continue
            if sitemaps_read >= MAX_SITEMAPS:
                self.complete = False
                continue
            sitemaps_read += 1
            try:
                fetched = self.fetch(url)
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
        if origin(url) not in self.hosts:
            return False
        robots = self._robots(url)
        return robots is not None and robots.can_fetch(USER_AGENT, url)

    def _robots(self, url: str) -> RobotFileParser | None:
        # None: robots.txt could not be read now; nothing on that host is
        # fetched, and nothing indexed from it is dropped this time.
        host = origin(url)
        if host in self.robots:
            return self.robots[host]
        self.robots[host] = parser = self._read_robots(host)
        return parser

    def _read_robots(self, host: str) -> RobotFileParser | None:
        # The statuses mean what urllib.robotparser's own read() makes of them.
        try:
            fetched = self.fetch(host + "/robots.txt", check_robots=False)
        except FetchError:
            return None
        parser = RobotFileParser(host + "/robots.txt")
        if fetched.status == 200:
            parser.parse(fetched.body.decode("utf-8", errors="replace").splitlines())
        elif fetched.status in (401, 403):
            parser.parse(["User-agent: *", "Disallow: /"])
        elif 400 <= fetched.status < 500:
            parser.parse([])  # no robots.txt: everything is allowed
        else:
            return None
        return parser

    # -- pages ---------------------------------------------------------------

    def pages(self, listed: Iterable[Listed]) -> Iterator[PageResult]:
        """Fetch and extract up to `fetchers` pages at once; index them in turn.

        Only this thread touches the index; the others fetch and parse.
        """
        todo = iter(listed)
        running: set[Future[PageResult | Ready]] = set()
        known: dict[Future[PageResult | Ready], DocumentInfo | None] = {}
        with ThreadPoolExecutor(self.fetchers, "crawl") as pool:
            while True:
                while len(running) < self.fetchers and (page := next(todo, None)):
                    info = self.index.document(page.url)
                    future = pool.submit(self.prepare, page, info)
                    running.add(future)
                    known[future] = info
                if not running:
                    return
                done, running = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    yield self.store(future.result(), known.pop(future))

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
            fetched = self.fetch(
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

    def fetch(
        self,
        url: str,
        *,
        etag: str = "",
        last_modified: str = "",
        check_robots: bool = True,
    ) -> Fetched:
        """GET `url` bounded in time and size, following redirects on its host only."""
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "gzip, deflate"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        ends = time.monotonic() + self.deadline
        for _ in range(MAX_REDIRECTS + 1):
            with transport_errors(url):
                response = self.session.get(
                    url,
                    headers=headers,
                    allow_redirects=False,
                    stream=True,
                    timeout=(self.timeout, self.timeout),
                )
            try:
                if response.is_redirect:
                    target = urldefrag(urljoin(url, response.headers["location"]))[0]
                    if origin(target) not in self.hosts:
                        raise FetchError(OFF_HOST, f"{url} redirects to {target}")
                    if check_robots and not self.allowed(target):
                        raise FetchError(DISALLOWED, f"{url} redirects to {target}")
                    url = target
                    continue
                body = self._read(response, url, ends)
                with self._bytes_lock:
                    self.report.bytes += len(body)
                return Fetched(
                    url=url,
                    status=response.status_code,
                    content_type=response.headers.get("content-type", ""),
                    body=body,
                    etag=response.headers.get("etag", ""),
                    last_modified=response.headers.get("last-modified", ""),
                )
            finally:
                response.close()
        raise FetchError(FAILED, f"{url}: more than {MAX_REDIRECTS} redirects")

    def _read(self, response: requests.Response, url: str, ends: float) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise FetchError(TOO_LARGE, f"{url}: {declared} bytes")
        chunks: list[bytes] = []
        size = 0
        with transport_errors(url):
            # read1 returns what one read brings, so a page that trickles in
            # meets the deadline; decoded, so a gzip bomb counts in full.
            while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(TOO_LARGE, f"{url}: over {self.max_bytes} bytes")
                if time.monotonic() > ends:
                    raise FetchError(FAILED, f"{url}: slower than {self.deadline}s")
                chunks.append(chunk)
        return b"".join(chunks)


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc from the environment
    return session


def _looks_like_sitemap(url: str) -> bool:
    path = urlsplit(url).path.lower()
    return path.endswith((".xml", ".xml.gz")) or "sitemap" in path


def parse_sitemap(body: bytes) -> tuple[str, list[Listed]]:
    """Read a sitemap or sitemap index: ("urlset" | "sitemapindex" | "", entries)."""
    if body[:2] == b"\x1f\x8b":
        try:
            body = _gunzip(body)
        except zlib.error:
            return "", []
    # No entities, no network, no huge trees; what a broken file still holds
    # is read, the rest ignored.
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        huge_tree=False,
        recover=True,
        load_dtd=False,
    )
    try:
        root = etree.fromstring(body, parser)
    except etree.XMLSyntaxError:
        return "", []
    if root is None:
        return "", []
    kind = etree.QName(root).localname if isinstance(root.tag, str) else ""
    if kind not in ("urlset", "sitemapindex"):
        return "", []
    entries: list[Listed] = []
    for item in root:
        if not isinstance(item.tag, str):
            continue
        loc, lastmod = "", None
        for child in item:
            if not isinstance(child.tag, str):
                continue
            name = etree.QName(child).localname
            if name == "loc":
                loc = (child.text or "").strip()
            elif name == "lastmod":
                lastmod = _iso_date(child.text or "")
        if loc.startswith(("http://", "https://")):
            entries.append(Listed(urldefrag(loc)[0], lastmod))
        if len(entries) >= MAX_PAGES:
            break
    return kind, entries


def _gunzip(body: bytes) -> bytes:
    # At most MAX_BYTES come out, however small the file that went in.
    return zlib.decompressobj(wbits=31).decompress(body, MAX_BYTES)


def _iso_date(text: str) -> float | None:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _http_date(text: str) -> float | None:
    if not text:
        return None
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return None
