"""The crawler against a real local site: robots, sitemaps, hostile pages, re-crawls."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from chatapp.knowledge import crawl
from chatapp.knowledge.crawl import Crawler
from chatapp.knowledge.crawl import PageResult
from chatapp.knowledge.crawl import parse_sitemap
from chatapp.knowledge.index import Passage
from chatapp.knowledge.lock import FileLock
from chatapp.knowledge.lock import RedisLock
from chatapp.knowledge.sqlite_index import SqliteIndex
from tests.conftest import RedisServer
from tests.site import ShopSite

CHROME = ("NAVIGATIONMENU", "COOKIEBANNER", "FOOTERTEXT", "TRACKERSCRIPT")


@pytest.fixture
def site() -> Iterator[ShopSite]:
    with ShopSite() as running:
        yield running


@pytest.fixture
def index(tmp_path: Path) -> Iterator[SqliteIndex]:
    opened = SqliteIndex(tmp_path / "knowledge.sqlite3")
    yield opened
    opened.close()


def crawler(index: SqliteIndex, site: ShopSite, **kw: object) -> Crawler:
    # Small caps keep the hostile pages quick; the defaults are bigger.
    kw.setdefault("max_bytes", 512 * 1024)
    kw.setdefault("deadline", 0.5)
    return Crawler(index, [site.sitemap], **kw)  # type: ignore[arg-type]


def outcomes(results: list[PageResult], site: ShopSite) -> dict[str, str]:
    return {r.url.removeprefix(site.url("")): r.outcome for r in results}


def test_a_first_crawl_indexes_the_sitemaps_pages_and_refuses_the_rest(
    index: SqliteIndex, site: ShopSite
) -> None:
    seen: list[PageResult] = []
    report = crawler(index, site, progress=seen.append).crawl()
    got = outcomes(report.results, site)
    assert got["/returns.html"] == crawl.INDEXED
    assert got["/shipping.html"] == crawl.INDEXED
    assert got["/tents/alpine.html"] == crawl.INDEXED
    assert got["/faq.md"] == crawl.INDEXED
    assert got["/moved"] == crawl.INDEXED  # followed on the same host
    assert got["/private.html"] == crawl.DISALLOWED
    assert got["/away"] == crawl.OFF_HOST
    assert got["/huge.html"] == crawl.TOO_LARGE
    assert got["/slow.html"] == crawl.FAILED
    assert got["/logo.png"] == crawl.UNSUPPORTED
    assert got["/gone.html"] == crawl.FAILED
    assert got["/loop"] == crawl.FAILED  # after 5 hops, not forever
    assert site.hits["/loop"] == 6
    assert seen == report.results  # progress saw every page as it went
    # robots.txt's disallowed page and other hosts are never asked for.
    assert site.hits["/private.html"] == 0
    assert site.hits["/sitemap-elsewhere.xml"] == 0
    assert not any("localhost" in r.url for r in report.results)
    indexed = {d.url for d in index.documents()}
    assert site.url("/private.html") not in indexed
    assert site.url("/huge.html") not in indexed


def test_only_the_main_content_reaches_the_index(
    index: SqliteIndex, site: ShopSite
) -> None:
    crawler(index, site).crawl()
    for hit in index.search("cookies navigation copyright tracker menu home", limit=50):
        for marker in CHROME:
            assert marker not in hit.text + hit.title + hit.headings
    [best] = index.search("when are refunds paid to my card", limit=1)
    assert best.url == site.url("/returns.html")
    assert best.headings == "Refunds"
    assert index.search("SECRETSTAFFCODE") == []


def test_a_recrawl_asks_conditionally_and_skips_what_lastmod_says_is_unchanged(
    index: SqliteIndex, site: ShopSite
) -> None:
    crawler(index, site).crawl()
    hits_before = site.hits.copy()
    report = crawler(index, site).crawl()
    got = outcomes(report.results, site)
    # lastmod not newer: not even a conditional request.
    assert got["/returns.html"] == crawl.UNCHANGED
    assert site.hits["/returns.html"] == hits_before["/returns.html"]
    # No lastmod: a conditional GET answered 304.
    assert got["/shipping.html"] == crawl.UNCHANGED
    # Asked for itself and for /moved, which redirects to it; both 304.
    assert site.conditional_hits["/shipping.html"] == 2
    assert got["/moved"] == crawl.UNCHANGED
    info = index.document(site.url("/shipping.html"))
    assert info is not None and info.etag and info.last_modified


def test_an_edited_page_with_a_newer_lastmod_is_indexed_again(
    index: SqliteIndex, site: ShopSite
) -> None:
    crawler(index, site).crawl()
    site.pages["/returns.html"] = site.pages["/returns.html"].replace(
        b"30 days", b"100 days"
    )
    site.listed["/returns.html"] = "2026-11-20"
    got = outcomes(crawler(index, site).crawl().results, site)
    assert got["/returns.html"] == crawl.INDEXED
    assert "100 days" in index.search("return unused item days", limit=1)[0].text


def test_pages_that_left_the_sitemap_are_dropped_but_pushed_ones_stay(
    index: SqliteIndex, site: ShopSite
) -> None:
    crawler(index, site).crawl()
    pushed = site.url("/blog/new-post")
    index.replace(pushed, "New post", [Passage(pushed, "New post", "", "hello")])
    del site.listed["/shipping.html"]
    got = outcomes(crawler(index, site).crawl().results, site)
    assert got["/shipping.html"] == crawl.REMOVED
    assert index.document(site.url("/shipping.html")) is None
    assert index.document(pushed) is not None


def test_nothing_is_dropped_when_a_sitemap_could_not_be_read(
    index: SqliteIndex, site: ShopSite
) -> None:
    crawler(index, site).crawl()
    report = Crawler(index, [site.url("/sitemap-missing.xml")]).crawl()
    assert report.count(crawl.REMOVED) == 0
    assert index.document(site.url("/shipping.html")) is not None


def test_a_single_page_source_is_crawled_without_a_sitemap(
    index: SqliteIndex, site: ShopSite
) -> None:
    report = Crawler(index, [site.url("/shipping.html")]).crawl()
    assert [r.outcome for r in report.results] == [crawl.INDEXED]
    assert index.search("express delivery")[0].url == site.url("/shipping.html")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not xml at all",
        b"<urlset><url><loc>http://a.test/1</loc></url><url><loc>",
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<urlset><url><loc>http://a.test/&e;</loc></url></urlset>",
        b"<html><body>a page</body></html>",
        b"\x1f\x8b\x08\x00garbage",
    ],
)
def test_malformed_sitemaps_yield_what_they_hold_and_never_raise(body: bytes) -> None:
    kind, entries = parse_sitemap(body)
    assert kind in ("", "urlset", "sitemapindex")
    assert all("root:" not in e.url for e in entries)


def test_a_gzipped_sitemap_is_read() -> None:
    import gzip

    body = gzip.compress(
        b'<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
        b"<url><loc>http://a.test/1</loc><lastmod>2026-01-02</lastmod></url></urlset>"
    )
    kind, [entry] = parse_sitemap(body)
    assert (kind, entry.url) == ("urlset", "http://a.test/1")
    assert entry.lastmod is not None


def test_one_file_lock_holder_at_a_time(tmp_path: Path) -> None:
    first, second = FileLock(tmp_path / "crawl.lock"), FileLock(tmp_path / "crawl.lock")
    assert first.acquire() is True
    assert second.acquire() is False
    first.release()
    assert second.acquire() is True
    # A round done keeps the others from crawling again in the same period.
    assert second.due(3600) is True
    second.done(3600)
    assert first.due(3600) is False
    assert first.due(0) is True
    second.release()


@pytest.mark.redis
def test_one_redis_lock_holder_at_a_time_and_only_the_holder_releases(
    redis_server: RedisServer,
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    client.delete("chatapp:knowledge:crawl")
    first, second = RedisLock(client), RedisLock(client)
    assert first.acquire() is True
    assert second.acquire() is False
    second.release()  # not the holder: must not free the lock
    assert second.acquire() is False
    # The lock expired and someone else took it: the first must not free it.
    client.set("chatapp:knowledge:crawl", "someone-else")
    first.release()
    assert client.get("chatapp:knowledge:crawl") == b"someone-else"
    client.delete("chatapp:knowledge:crawl")
    assert second.acquire() is True
    client.delete("chatapp:knowledge:crawl:done")
    assert second.due(3600) is True
    second.done(3600)
    assert first.due(3600) is False
    second.release()
    assert client.get("chatapp:knowledge:crawl") is None
    client.close()


class _MeetingSite(ThreadingHTTPServer):
    """Each page answers only once `fetchers` pages are being fetched at once."""

    def __init__(self, pages: int, fetchers: int) -> None:
        super().__init__(("127.0.0.1", 0), _MeetingHandler)
        self.pages = pages
        self.meeting = threading.Barrier(fetchers, timeout=5)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class _MeetingHandler(BaseHTTPRequestHandler):
    server: _MeetingSite

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path == "/robots.txt":
            body, kind = b"User-agent: *\n", "text/plain"
        elif self.path == "/sitemap.xml":
            urls = "".join(
                f"<url><loc>{self.server.url(f'/p{n}.html')}</loc></url>"
                for n in range(self.server.pages)
            )
            body, kind = f"<urlset>{urls}</urlset>".encode(), "application/xml"
        else:
            try:
                self.server.meeting.wait()
            except threading.BrokenBarrierError:
                self.send_error(503)
                return
            words = " ".join(["tent"] * 40)
            body = f"<html><body><h1>{self.path}</h1><p>{words}</p></body></html>"
            body, kind = body.encode(), "text/html"  # type: ignore[assignment]
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_pages_are_fetched_several_at_a_time_and_indexed_by_one_thread(
    index: SqliteIndex,
) -> None:
    # Every page waits for the next: a crawler fetching one at a time gets 503s.
    site = _MeetingSite(pages=8, fetchers=crawl.FETCHERS)
    serving = threading.Thread(target=site.serve_forever, daemon=True)
    serving.start()
    try:
        report = Crawler(index, [site.url("/sitemap.xml")]).crawl()
    finally:
        site.shutdown()
        site.server_close()
    assert report.counts() == {crawl.INDEXED: 8}
    assert len(index.documents()) == 8
