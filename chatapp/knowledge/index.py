"""The index behind one small interface: documents in, ranked passages out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Passage:
    """A few hundred words of one document, with where they come from."""

    url: str
    title: str
    headings: str  # the heading path, " > "-joined ("Returns > Refunds")
    text: str
    score: float = 0.0


@dataclass(frozen=True, slots=True)
class DocumentInfo:
    """What the index holds of one document."""

    url: str
    title: str
    passages: int
    modified: float | None  # seconds since the epoch, when known
    etag: str = ""  # the crawler's validators, for conditional re-fetches
    last_modified: str = ""


class Index(Protocol):
    """Where passages live; SQLite FTS5 for one host, Postgres for many."""

    def replace(
        self,
        url: str,
        title: str,
        passages: list[Passage],
        *,
        modified: float | None = None,
        etag: str = "",
        last_modified: str = "",
    ) -> int:
        """Store `passages` as the whole document at `url`; return their count."""
        ...

    def remove(self, url: str) -> bool:
        """Drop the document at `url`; False when there was none."""
        ...

    def document(self, url: str) -> DocumentInfo | None:
        """Describe one document, or None."""
        ...

    def documents(self) -> list[DocumentInfo]:
        """Describe every document, by URL."""
        ...

    def search(
        self, query: str, *, limit: int = 8, prefer_url: str | None = None
    ) -> list[Passage]:
        """Return the best passages for `query`, best first.

        Titles and headings weigh more than body text; passages of
        `prefer_url` (the visitor's page) are favoured.
        """
        ...

    def close(self) -> None: ...
