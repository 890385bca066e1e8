"""The index behind one small interface: documents in, ranked passages out."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from chatapp.errors import ChatappError

# How much more a match in the title and in the heading path counts than one
# in the body (FTS5 bm25() column weights; Postgres's A/B/C weights follow).
# Measured on git's docs (BENCHMARKS.md): heavier title weights lost there,
# where titles are command names that questions rarely use.
WEIGHTS = (1.5, 1.5, 1.0)
# A page is also matched as a whole by what says what it is about: its title
# and its lead (`page_lead`), each weighing this much (FTS5 bm25() weights;
# Postgres's A/B weights follow). The page's match is added, times
# ABOUT_FACTOR, to each of its passages' scores: a short page whose title
# or one-line summary holds the question's words is no longer outranked by
# long pages that mention them in passing (git-mv's "Move or rename a file"
# for "rename a file"). Measured in BENCHMARKS.md.
ABOUT_WEIGHTS = (1.0, 1.0)
ABOUT_FACTOR = 1.0
# A page without a lead is about what its opening words say, this many
# (measured among 20, 30, 40 and 80 in BENCHMARKS.md).
OPENING_WORDS = 30
# The visitor's own page counts this much more than any other.
PREFER_FACTOR = 2.0
# Best-ranked passages an engine hands to `rank`; more cost time, not recall.
CANDIDATES = 200
# Longer questions are cut: each term costs a posting-list read.
MAX_QUERY_TERMS = 32
# Below this many passages every search is cheap: no term is dropped.
SMALL_INDEX = 1000
# On Postgres, the rarer terms that choose a search's candidates hold at most
# this many passages together (the rarest term always counts, whatever it holds).
RANKED_PASSAGES = 1000

_WORD = re.compile(r"\w+")
# Words too common to tell passages apart; matching them costs time only.
STOPWORDS = frozenset(
    """a about above after again all am an and any are as at be because been
    before being below between both but by can could did do does doing down
    during each few for from further had has have having he her here hers
    herself him himself his how i if in into is it its itself just me more
    most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their
    theirs them themselves then there these they this those through to too
    under until up very was we were what when where which while who whom why
    will with would you your yours yourself yourselves""".split()
)


class KnowledgeError(ChatappError):
    """Site knowledge failed: a document, the index or a fetch."""


class IndexUnavailable(KnowledgeError):
    """The index could not be read or written (its engine's error is chained)."""


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
    owner: str = ""  # who put it there: "crawl" (its own to drop), "cli", "" (the API)


@dataclass(frozen=True, slots=True)
class IndexStats:
    """The index's size: documents, passages, bytes on disk."""

    documents: int
    passages: int
    bytes: int


def query_terms(text: str) -> list[str]:
    """Pick a question's searchable words: lower-cased, no stopwords, no syntax."""
    terms: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word in STOPWORDS or word in terms or word == "_" * len(word):
            continue
        terms.append(word)
        if len(terms) == MAX_QUERY_TERMS:
            break
    return terms


def telling(terms: list[str], counts: dict[str, int], total: int) -> list[str]:
    """Drop the terms found in more than half of `total` passages.

    `counts` holds the passages that hold each term. BM25 gives such a term
    an IDF of almost nothing (FTS5 floors it at 1e-6), so it cannot change
    the order; but every passage holding it must be scored, which made half
    the cost of a search at 10,000 passages ("git" in git's documentation).
    Below SMALL_INDEX passages nothing is dropped; when only common words
    match, the rarest of them is kept, so such a question still finds pages.
    """
    present = [t for t in terms if counts.get(t, 0) > 0]
    if total < SMALL_INDEX or not present:
        return terms
    kept = [t for t in present if counts[t] * 2 <= total]
    return kept or [min(present, key=lambda t: counts[t])]


def page_lead(passages: list[Passage]) -> str:
    """What a page says it is about, beside its title.

    The extractor starts every heading path of a page with its lead (a man
    page's NAME line); a page without one has paths that start with its
    sections' names, which differ. So the first step of the paths, when all
    of them start with it and one at least goes on past it, is the lead.
    Otherwise a page that opens with text before its first heading says
    there what it is (a library reference's "The readline module provides
    an interface for reading data … one line at a time"): its first
    OPENING_WORDS words are the lead.
    """
    heads = {p.headings.split(" > ", 1)[0] for p in passages}
    deeper = any(" > " in p.headings for p in passages)
    if len(heads) == 1 and deeper:
        return heads.pop()
    for passage in passages:
        if passage.headings:
            break
        # A bare list of a few words an item, before any text, is a menu
        # the extractor kept ("- Table of contents\n- Index\n- Options").
        if not _is_menu(passage.text):
            return " ".join(passage.text.split()[:OPENING_WORDS])
    return ""


# What `stored_leads` reads of each stored passage, in order of url and seq:
# only the passages before a page's first heading whole (its opening words).
LEAD_COLUMNS = "url, headings, CASE headings WHEN '' THEN body ELSE '' END"


def stored_leads(rows: Iterable[tuple[str, str, str]]) -> dict[str, str]:
    """Each page's `page_lead` from its stored passages' LEAD_COLUMNS rows,
    for an engine's migration of an index written before leads were so."""
    pages: dict[str, list[Passage]] = {}
    for url, headings, body in rows:
        pages.setdefault(url, []).append(Passage(url, "", headings, body))
    return {url: page_lead(passages) for url, passages in pages.items()}


def _is_menu(text: str) -> bool:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return all(line[:2] in ("- ", "* ") and len(line.split()) <= 5 for line in lines)


def narrow(terms: list[str], counts: dict[str, int], total: int) -> list[str]:
    """The rarest terms whose passages add up to RANKED_PASSAGES (one at least).

    A passage holding none of them holds only common words of the question,
    which BM25 and ts_rank score low: it would not be among the candidates.
    Below SMALL_INDEX passages every term chooses, as on SQLite.
    """
    if total < SMALL_INDEX:
        return terms
    chosen: list[str] = []
    held = 0
    for term in sorted(terms, key=lambda t: counts.get(t, 0)):
        held += counts.get(term, 0)
        if chosen and held > RANKED_PASSAGES:
            break
        chosen.append(term)
    return chosen


def rank(
    hits: list[Passage],
    *,
    limit: int,
    prefer_url: str | None = None,
    about: dict[str, float] | None = None,
) -> list[Passage]:
    """Order an engine's candidates: page evidence, then the visitor's page.

    A passage gains the score of the next-best passage of its page: a page
    that answers with several passages beats a single lucky match (an index
    page listing every topic in a line each). It also gains its page's
    `about` score (title and lead matched as a whole), times ABOUT_FACTOR.
    Passages of `prefer_url` count PREFER_FACTOR times more.
    """
    about = about or {}
    hits = sorted(hits, key=lambda p: -p.score)
    top: dict[str, list[float]] = {}  # each page's two best scores
    for hit in hits:
        scores = top.setdefault(hit.url, [])
        if len(scores) < 2:
            scores.append(hit.score)
    ranked = []
    seen: set[str] = set()
    for hit in hits:
        scores = top[hit.url]
        # The page's best passage gains the second-best; the others the best.
        if hit.url in seen:
            bonus = scores[0]
        else:
            bonus = scores[1] if len(scores) > 1 else 0.0
            seen.add(hit.url)
        score = hit.score + bonus + ABOUT_FACTOR * about.get(hit.url, 0.0)
        if prefer_url and hit.url == prefer_url:
            score *= PREFER_FACTOR
        ranked.append(replace(hit, score=score))
    ranked.sort(key=lambda p: -p.score)
    return ranked[:limit]


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
        owner: str = "",
    ) -> int:
        """Store `passages` as the whole document at `url`; return their count.

        `owner` says who put it there: the crawler drops only its own ("crawl")
        documents when they leave the sitemap, never pushed or added ones.
        """
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

    def stats(self) -> IndexStats:
        """Count documents and passages, and the index's size in bytes."""
        ...

    def close(self) -> None: ...


DEFAULT_SQLITE_FILE = "knowledge.sqlite3"


def sqlite_path(url: str, instance_path: str | Path) -> Path | None:
    """The file a `sqlite:///…` index URL names, or None for another engine."""
    url = url.strip() or "sqlite:///"
    if not url.startswith("sqlite:///"):
        return None
    return Path(instance_path) / (url.removeprefix("sqlite:///") or DEFAULT_SQLITE_FILE)
