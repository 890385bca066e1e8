"""A small shop's web site on 127.0.0.1: robots.txt, sitemaps, pages, hostile URLs.

The pages in tests/fixtures/site carry navigation, cookie banners, footers
and scripts with marker words (NAVIGATIONMENU, COOKIEBANNER, FOOTERTEXT,
TRACKERSCRIPT) that must never reach the index. Beside them the site serves:

- /robots.txt disallowing /private.html (listed in the sitemap anyway);
- /sitemap.xml, a sitemap index of /sitemap-pages.xml, /sitemap-broken.xml
  and an off-host sitemap;
- /away, a redirect to another host; /moved, a redirect on this host;
  /loop, a redirect to itself;
- /huge.html, bigger than any cap; /slow.html, trickling a byte at a time;
- /logo.png, a wrong content type; /gone.html, 404.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

PAGES = Path(__file__).parent / "fixtures" / "site"
LAST_MODIFIED = "Mon, 02 Nov 2026 10:00:00 GMT"
HUGE_BYTES = 12 * 1024 * 1024

# Sitemap entries at start: path -> lastmod (or None).
DEFAULT_LISTED: dict[str, str | None] = {
    "/returns.html": "2026-11-02",
    "/shipping.html": None,
    "/tents/alpine.html": "2026-11-01T09:00:00+00:00",
    "/tents/summit.html": "2026-11-01T09:00:00+00:00",
    "/faq.md": None,
    "/private.html": None,
    "/away": None,
    "/moved": None,
    "/huge.html": None,
    "/slow.html": None,
    "/logo.png": None,
    "/loop": None,
    "/gone.html": None,
}


class ShopSite:
    """The site's server; `listed` and `pages` may be changed between crawls."""

    def __init__(self) -> None:
        self.listed: dict[str, str | None] = dict(DEFAULT_LISTED)
        self.pages: dict[str, bytes] = {
            "/" + str(p.relative_to(PAGES)): p.read_bytes()
            for p in PAGES.rglob("*")
            if p.is_file()
        }
        self.hits: Counter[str] = Counter()
        self.conditional_hits: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ShopSite:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def sitemap(self) -> str:
        return self.url("/sitemap.xml")

    def robots(self) -> bytes:
        return (
            "User-agent: *\nDisallow: /private.html\n\n"
            f"Sitemap: {self.sitemap}\n".encode()
        )

    def sitemap_index(self) -> bytes:
        entries = "".join(
            f"<sitemap><loc>{loc}</loc></sitemap>"
            for loc in (
                self.url("/sitemap-pages.xml"),
                self.url("/sitemap-broken.xml"),
                f"http://localhost:{self.port}/sitemap-elsewhere.xml",
            )
        )
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<sitemapindex xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"{entries}</sitemapindex>"
        ).encode()

    def sitemap_pages(self) -> bytes:
        entries = []
        for path, lastmod in self.listed.items():
            stamp = f"<lastmod>{lastmod}</lastmod>" if lastmod else ""
            entries.append(f"<url><loc>{self.url(path)}</loc>{stamp}</url>")
        return (
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"{''.join(entries)}"
            # Another host's page in our sitemap is never fetched.
            f"<url><loc>http://localhost:{self.port}/returns.html</loc></url>"
            "</urlset>"
        ).encode()


def _handler(site: ShopSite) -> Any:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            site.hits[path] += 1
            if path == "/robots.txt":
                self.send(200, "text/plain", site.robots())
            elif path == "/sitemap.xml":
                self.send(200, "application/xml", site.sitemap_index())
            elif path == "/sitemap-pages.xml":
                self.send(200, "application/xml", site.sitemap_pages())
            elif path == "/sitemap-broken.xml":
                self.send(200, "application/xml", b"<urlset><url><loc>http://x")
            elif path == "/away":
                self.redirect(f"http://localhost:{site.port}/returns.html")
            elif path == "/loop":
                self.redirect("/loop")
            elif path == "/moved":
                self.redirect("/shipping.html")
            elif path == "/huge.html":
                self.stream(b"<p>" + b"filler words " * 1000 + b"</p>", HUGE_BYTES)
            elif path == "/slow.html":
                self.trickle()
            elif path == "/logo.png":
                self.send(200, "image/png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
            elif path in site.pages:
                self.page(path)
            else:
                self.send(404, "text/plain", b"not found")

        def page(self, path: str) -> None:
            body = site.pages[path]
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            if self.headers.get("If-None-Match") == etag:
                site.conditional_hits[path] += 1
                self.send_response(304)
                self.send_header("ETag", etag)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            kind = "text/markdown" if path.endswith(".md") else "text/html"
            self.send(
                200,
                f"{kind}; charset=utf-8",
                body,
                {"ETag": etag, "Last-Modified": LAST_MODIFIED},
            )

        def send(
            self,
            status: int,
            content_type: str,
            body: bytes,
            headers: dict[str, str] | None = None,
        ) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def redirect(self, location: str) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def stream(self, chunk: bytes, total: int) -> None:
            # No Content-Length: only the crawler's own count can stop it.
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                for _ in range(total // len(chunk)):
                    self.wfile.write(chunk)
            except OSError:
                pass  # the crawler stopped reading: that is the point

        def trickle(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(b"<html><body><p>")
                while not site.stopping.wait(0.2):
                    self.wfile.write(b"x")
                    self.wfile.flush()
            except OSError:
                pass

    return Handler
