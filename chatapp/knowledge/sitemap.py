"""Reading sitemaps and sitemap indexes: the pages a source names.

Bounded: a gzipped sitemap inflates to at most MAX_BYTES, at most MAX_PAGES
entries are read, and the XML parser resolves no entities and fetches
nothing. What a broken file still holds is read, the rest ignored.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from urllib.parse import urldefrag
from urllib.parse import urlsplit

from lxml import etree

from chatapp.knowledge.fetch import MAX_BYTES

# Per crawl: sitemaps read (an index may list many), and pages kept.
MAX_SITEMAPS = 100
MAX_PAGES = 20_000


@dataclass(frozen=True, slots=True)
class Listed:
    """A page a source names, with the sitemap's lastmod when it gave one."""

    url: str
    lastmod: float | None = None


def looks_like_sitemap(url: str) -> bool:
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
