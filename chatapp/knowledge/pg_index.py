"""The shared index: Postgres full-text search, one index for every host."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from chatapp.knowledge.embed import Embedder
from chatapp.knowledge.embed import VectorCache
from chatapp.knowledge.embed import embed_passages
from chatapp.knowledge.embed import hybrid_search
from chatapp.knowledge.index import ABOUT_WEIGHTS
from chatapp.knowledge.index import CANDIDATES
from chatapp.knowledge.index import WEIGHTS
from chatapp.knowledge.index import DocumentInfo
from chatapp.knowledge.index import IndexStats
from chatapp.knowledge.index import IndexUnavailable
from chatapp.knowledge.index import Passage
from chatapp.knowledge.index import narrow
from chatapp.knowledge.index import page_lead
from chatapp.knowledge.index import query_terms
from chatapp.knowledge.index import rank
from chatapp.knowledge.index import telling
from chatapp.knowledge.pg_schema import prepare

CONNECT_TIMEOUT_SECONDS = 5
# A search that takes longer is abandoned: the turn goes on without sources.
STATEMENT_TIMEOUT_MS = 5000

# Postgres weighs A, B, C, D; ts_rank takes them as {D, C, B, A}, so title,
# headings and body keep the proportions of the SQLite engine. ts_rank, not
# ts_rank_cd: cover density rewards terms close together, which questions
# joined by OR rarely are (measured: recall@3 0.62 against 0.42).
_TOP = max(WEIGHTS)
RANK_WEIGHTS = "{0, " + ", ".join(str(w / _TOP) for w in reversed(WEIGHTS)) + "}"
# A page's title (A) and lead (B), as index.ABOUT_WEIGHTS. ts_rank of a short
# title and lead runs higher than the passages' (no IDF: a title's common word
# scores); a quarter of it measured best on the tuning sets (BENCHMARKS.md).
ABOUT_SCALE = 0.25
ABOUT_RANK_WEIGHTS = (
    "{0, 0, " + ", ".join(str(w / _TOP) for w in reversed(ABOUT_WEIGHTS)) + "}"
)
# 1: divide the rank by 1 + log(length), so long passages don't win by size.
RANK_NORMALISATION = 1

# The candidates are the passages holding one of the question's rarer terms
# (`narrow`), and only they are ranked, by every telling term (`query`):
# ts_rank reads each candidate's whole tsvector (TOASTed, about 5 buffers a
# passage), which over every passage holding "git" cost 250 ms a search.
# Ranked on ids alone, joined to the text only for the candidates kept.
SEARCH = f"""
SELECT p.url, p.title, p.headings, p.body, c.score, ts_rank(
    %(about_weights)s::float4[], d.tsv,
    to_tsquery('english'::regconfig, %(query)s), %(norm)s
)
FROM (
    SELECT id, ts_rank(
        %(weights)s::float4[], tsv,
        to_tsquery('english'::regconfig, %(query)s), %(norm)s
    ) AS score
    FROM knowledge_passages
    WHERE tsv @@ to_tsquery('english'::regconfig, %(narrow)s)
    ORDER BY score DESC
    LIMIT {CANDIDATES}
) AS c JOIN knowledge_passages AS p ON p.id = c.id
JOIN knowledge_documents AS d ON d.url = p.url
"""
# The visitor's page may rank below the candidates and still deserve a place:
# its passages are ranked too, in the same statement (no page: no rows).
SEARCH_WITH_PAGE = f"""
({SEARCH})
UNION ALL
(
    SELECT p.url, p.title, p.headings, p.body,
           ts_rank(%(weights)s::float4[], p.tsv, query, %(norm)s) AS score,
           ts_rank(%(about_weights)s::float4[], d.tsv, query, %(norm)s)
    FROM knowledge_passages AS p
    JOIN knowledge_documents AS d ON d.url = p.url,
    to_tsquery('english'::regconfig, %(query)s) AS query
    WHERE p.url = %(prefer)s AND p.tsv @@ query
    LIMIT {CANDIDATES}
)
"""
# What changes when any document is stored or dropped (the documents table
# has one row per page), then how many passages hold each term not yet
# counted, through the GIN index: one round trip. A term that is a stop word
# for 'english' makes an empty query and counts 0 (not present).
COUNTS = """
SELECT NULL, count(*), coalesce(sum(passages), 0),
       coalesce(max(indexed), 0)::float8
FROM knowledge_documents
UNION ALL
SELECT term, (
    SELECT count(*) FROM knowledge_passages
    WHERE tsv @@ to_tsquery('english'::regconfig, term)
), 0, 0
FROM unnest(%s::text[]) AS term
"""


class PgIndex:
    """Passages in Postgres: every host reads and writes the same index."""

    def __init__(self, url: str, embedder: Embedder | None = None) -> None:
        self.url = url
        self.embedder = embedder
        self._vectors = VectorCache()
        # Passages holding each query term, for _telling, until the documents
        # change; `_total` counts all passages.
        self._counts: dict[str, int] = {}
        self._counts_version: tuple[Any, ...] = ()
        self._total = 0
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._pid = 0

    @contextmanager
    def _db(self) -> Iterator[psycopg.Connection[Any]]:
        # One connection per process; psycopg waits through gevent's hub when
        # gevent has patched the process, so a query never blocks other turns.
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._pid != os.getpid():
                    self._conn = self._connect()
                    self._pid = os.getpid()
                yield self._conn
            except psycopg.Error as exc:
                if self._conn is not None and self._conn.broken:
                    self._conn = None
                raise IndexUnavailable(f"knowledge index (Postgres): {exc}") from exc

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
        prepare(conn)
        return conn

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
        """Store `passages` as the whole document at `url`; return their count."""
        # Embedded before the transaction opens: the endpoint may be slow.
        vectors = (
            embed_passages(self.embedder, passages)
            if self.embedder is not None
            else [None] * len(passages)
        )
        rows = [
            (url, seq, _clean(title), _clean(p.headings), _clean(p.text), vec)
            for seq, (p, vec) in enumerate(zip(passages, vectors, strict=True))
        ]
        with self._db() as db, db.transaction():
            db.execute(
                "INSERT INTO knowledge_documents (url, title, passages, modified, "
                "etag, last_modified, owner, indexed, lead) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (url) DO UPDATE SET title = excluded.title, "
                "lead = excluded.lead, "
                "passages = excluded.passages, modified = excluded.modified, "
                "etag = excluded.etag, last_modified = excluded.last_modified, "
                "owner = excluded.owner, "
                "indexed = excluded.indexed",
                (
                    url,
                    _clean(title),
                    len(rows),
                    modified,
                    etag,
                    last_modified,
                    owner,
                    time.time(),
                    _clean(page_lead(passages)),
                ),
            )
            db.execute("DELETE FROM knowledge_passages WHERE url = %s", (url,))
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO knowledge_passages "
                    "(url, seq, title, headings, body, vec) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
        return len(rows)

    def remove(self, url: str) -> bool:
        """Drop the document at `url`; False when there was none."""
        with self._db() as db:
            cur = db.execute("DELETE FROM knowledge_documents WHERE url = %s", (url,))
            return cur.rowcount > 0

    def document(self, url: str) -> DocumentInfo | None:
        """Describe one document, or None."""
        with self._db() as db:
            row = db.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                "FROM knowledge_documents WHERE url = %s",
                (url,),
            ).fetchone()
        return DocumentInfo(*row) if row else None

    def documents(self) -> list[DocumentInfo]:
        """Describe every document, by URL."""
        with self._db() as db:
            rows = db.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                'FROM knowledge_documents ORDER BY url COLLATE "C"'
            ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def search(
        self, query: str, *, limit: int = 8, prefer_url: str | None = None
    ) -> list[Passage]:
        """Return the best passages for `query`, best first."""
        terms = query_terms(query)
        if not terms or limit <= 0:
            return []
        with self._db() as db:
            # Terms are runs of word characters, so none can be tsquery syntax.
            terms = self._telling(db, terms)
            params = {
                "weights": RANK_WEIGHTS,
                "about_weights": ABOUT_RANK_WEIGHTS,
                "norm": RANK_NORMALISATION,
                "prefer": prefer_url or "",
                "query": " | ".join(terms),
                "narrow": " | ".join(narrow(terms, self._counts, self._total)),
            }
            rows = db.execute(SEARCH_WITH_PAGE, params).fetchall()
        hits = {
            (u, b): Passage(url=u, title=t, headings=h, text=b, score=float(s))
            for u, t, h, b, s, _ in rows
        }
        about = {row[0]: float(row[5]) * ABOUT_SCALE for row in rows}
        if self.embedder is None:
            return rank(
                list(hits.values()), limit=limit, prefer_url=prefer_url, about=about
            )
        lexical = rank(
            list(hits.values()), limit=CANDIDATES, prefer_url=prefer_url, about=about
        )
        with self._db() as db:
            version = tuple(
                db.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM knowledge_passages "
                    "WHERE vec IS NOT NULL"
                ).fetchone()
                or ()
            )
        return hybrid_search(
            query,
            lexical,
            self.embedder,
            self._vectors,
            version=version,
            load=self._all_vectors,
            fetch=self._passages_by_id,
            limit=limit,
            prefer_url=prefer_url,
        )

    def _telling(self, db: psycopg.Connection[Any], terms: list[str]) -> list[str]:
        """The terms worth matching (index.telling), counted once per change."""
        missing = [t for t in terms if t not in self._counts]
        rows = db.execute(COUNTS, (missing,)).fetchall()
        version = tuple(rows[0][1:])
        if version != self._counts_version:
            # Counted before a change: count every term again.
            self._counts.clear()
            self._counts_version = version
            self._total = int(version[1])
            if len(missing) < len(terms):
                rows = db.execute(COUNTS, (terms,)).fetchall()
        self._counts.update((str(t), int(n)) for t, n, _, _ in rows[1:])
        return telling(terms, self._counts, self._total)

    def _all_vectors(self) -> list[tuple[int, bytes]]:
        with self._db() as db:
            rows = db.execute(
                "SELECT id, vec FROM knowledge_passages WHERE vec IS NOT NULL "
                "ORDER BY id"
            ).fetchall()
        return [(int(i), bytes(v)) for i, v in rows]

    def _passages_by_id(self, ids: list[int]) -> dict[int, Passage]:
        if not ids:
            return {}
        with self._db() as db:
            rows = db.execute(
                "SELECT id, url, title, headings, body FROM knowledge_passages "
                "WHERE id = ANY(%s)",
                (ids,),
            ).fetchall()
        return {
            int(i): Passage(url=u, title=t, headings=h, text=b)
            for i, u, t, h, b in rows
        }

    def stats(self) -> IndexStats:
        """Count documents and passages, and the tables' size with indexes."""
        with self._db() as db:
            row = db.execute(
                "SELECT (SELECT count(*) FROM knowledge_documents), "
                "(SELECT count(*) FROM knowledge_passages), "
                "pg_total_relation_size('knowledge_documents') "
                "+ pg_total_relation_size('knowledge_passages')"
            ).fetchone() or (0, 0, 0)
        return IndexStats(int(row[0]), int(row[1]), int(row[2]))

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _clean(text: str) -> str:
    # Postgres text cannot hold NUL; a page with one must still be indexed.
    return text.replace("\x00", "")
