"""Fetching for the crawler: bounded GETs on the sources' hosts, robots.txt honoured.

Per fetch: connect and each read within `timeout`, the whole body within
`deadline`, at most `max_bytes` of it (decoded, so a gzip bomb counts in
full), at most MAX_REDIRECTS hops, each on a source's host and allowed by
its robots.txt. requests never follows a redirect by itself here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urldefrag
from urllib.parse import urljoin
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import requests
import urllib3.exceptions

from chatapp.knowledge.index import KnowledgeError

USER_AGENT = "chatapp-knowledge/1 (+site knowledge crawler)"
TIMEOUT_SECONDS = 10.0
DEADLINE_SECONDS = 30.0
MAX_BYTES = 5 * 1024 * 1024
MAX_REDIRECTS = 5
CHUNK_BYTES = 64 * 1024

# Outcomes of one page, as counted in the crawl's report and the metrics.
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
class Fetched:
    url: str
    status: int
    content_type: str
    body: bytes
    etag: str
    last_modified: str


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


def new_session() -> requests.Session:
    """A session that takes no proxies or .netrc from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


class Fetcher:
    """GET what the sources' hosts and their robots.txt allow, bounded."""

    def __init__(
        self,
        hosts: set[str],
        session: requests.Session,
        *,
        timeout: float = TIMEOUT_SECONDS,
        deadline: float = DEADLINE_SECONDS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        self.hosts = hosts
        self.session = session
        self.timeout = timeout
        self.deadline = deadline
        self.max_bytes = max_bytes
        self.robots: dict[str, RobotFileParser | None] = {}
        self.bytes = 0  # of every body read
        self._bytes_lock = threading.Lock()  # pages are fetched at once

    def allowed(self, url: str) -> bool:
        """Whether robots.txt lets us fetch `url` (and it is on a source's host)."""
        if origin(url) not in self.hosts:
            return False
        robots = self.robots_of(url)
        return robots is not None and robots.can_fetch(USER_AGENT, url)

    def robots_of(self, url: str) -> RobotFileParser | None:
        """The robots.txt of `url`'s host, read once per crawl.

        None: robots.txt could not be read now; nothing on that host is
        fetched, and nothing indexed from it is dropped this time.
        """
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
                    self.bytes += len(body)
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
