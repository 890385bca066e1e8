"""The owner's pushes: a JSON document in, checked, turned into passages, stored."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from chatapp.knowledge.index import DocumentInfo
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import KnowledgeError

CONTENT_TYPES = ("text/html", "text/markdown", "text/plain")
MAX_URL_CHARS = 2048
MAX_TITLE_CHARS = 500
# Printable ASCII without spaces: what RFC 3986 lets a URL hold, as browsers
# send it (anything else percent-encoded).
_URL_CHARS = re.compile(r"^[\x21-\x7e]+$")


class InvalidDocument(KnowledgeError):
    """A pushed document that SPEC refuses; its message says why."""


@dataclass(frozen=True, slots=True)
class Document:
    """One pushed document, checked."""

    url: str
    title: str
    content: str
    content_type: str
    modified: float | None


def is_web_url(url: str, most: int = MAX_URL_CHARS) -> bool:
    """Tell whether `url` is an absolute http(s) URL with a host, of bounded length."""
    if len(url) > most or not _URL_CHARS.match(url):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def document_from(values: dict[str, Any]) -> Document:
    """Check a pushed body's fields; raise InvalidDocument with the reason."""
    url = values.get("url")
    if not isinstance(url, str) or not is_web_url(url):
        raise InvalidDocument(
            f"'url' must be an absolute http(s) URL of at most {MAX_URL_CHARS} "
            "characters."
        )
    title = values.get("title") or ""
    if not isinstance(title, str) or len(title) > MAX_TITLE_CHARS:
        raise InvalidDocument(
            f"'title' must be a string of at most {MAX_TITLE_CHARS} characters."
        )
    content = values.get("content")
    if not isinstance(content, str):
        raise InvalidDocument("'content' must be a string.")
    content_type = values.get("content_type") or "text/html"
    if content_type not in CONTENT_TYPES:
        raise InvalidDocument(
            f"'content_type' must be one of {', '.join(CONTENT_TYPES)}."
        )
    return Document(
        url.split("#", 1)[0],
        " ".join(title.split()),
        content,
        content_type,
        modified_from(values.get("modified")),
    )


def modified_from(value: Any) -> float | None:
    """Read `modified`: seconds since the epoch, or an ISO 8601 time (UTC if bare)."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InvalidDocument("'modified' must be a time.")
    if isinstance(value, int | float):
        if not math.isfinite(value) or not 0 <= value < 1e11:
            raise InvalidDocument("'modified' must be a time.")
        return float(value)
    if isinstance(value, str) and len(value) <= 40:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            return when.timestamp()
    raise InvalidDocument(
        "'modified' must be seconds since the epoch or an ISO 8601 time."
    )


def store(index: Index, document: Document) -> int:
    """Turn the document into passages and make them the index's copy of it."""
    from chatapp.knowledge.extract import extract

    found = extract(
        document.content,
        url=document.url,
        content_type=document.content_type,
        title=document.title,
        modified=document.modified,
    )
    return index.replace(
        found.url, found.title, list(found.passages), modified=found.modified
    )


def describe(info: DocumentInfo) -> dict[str, Any]:
    """Describe one indexed document as the owner's API lists it."""
    modified = None
    if info.modified is not None:
        modified = (
            datetime.fromtimestamp(info.modified, UTC)
            .isoformat()
            .replace("+00:00", "Z")
        )
    return {
        "url": info.url,
        "title": info.title,
        "passages": info.passages,
        "modified": modified,
    }
