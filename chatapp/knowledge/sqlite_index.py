"""The embedded index: SQLite FTS5 in one file, read by every worker of a host."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

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
from chatapp.knowledge.index import page_lead
from chatapp.knowledge.index import query_terms
from chatapp.knowledge.index import rank
from chatapp.knowledge.index import telling
from chatapp.knowledge.sqlite_pages import SCHEMA_VERSION
from chatapp.knowledge.sqlite_pages import drop_page
from chatapp.knowledge.sqlite_pages import migrate
from chatapp.knowledge.sqlite_pool import Pool

T = TypeVar("T")

# Readers never wait in WAL mode; a writer waits this long for another one.
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    url TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    passages INTEGER NOT NULL,
    modified REAL,
    etag TEXT NOT NULL DEFAULT '',
    last_modified TEXT NOT NULL DEFAULT '',
    owner TEXT NOT NULL DEFAULT '',
    indexed REAL NOT NULL
);
-- AUTOINCREMENT: an id is never reused, so (count, max id) of the rows
-- with vectors tells a worker when its copy of them is stale.
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    url TEXT NOT NULL,
    seq INTEGER NOT NULL,
    title TEXT NOT NULL,
    headings TEXT NOT NULL,
    body TEXT NOT NULL,
    vec BLOB  -- float32 unit vector, with embeddings configured
);
CREATE INDEX IF NOT EXISTS passages_url ON passages (url);
-- External content: the text is stored once, in `passages`; the triggers
-- keep the full-text index in step with it.
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5 (
    title, headings, body,
    content='passages', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS passages_ai AFTER INSERT ON passages BEGIN
    INSERT INTO passages_fts (rowid, title, headings, body)
    VALUES (new.id, new.title, new.headings, new.body);
END;
CREATE TRIGGER IF NOT EXISTS passages_ad AFTER DELETE ON passages BEGIN
    INSERT INTO passages_fts (passages_fts, rowid, title, headings, body)
    VALUES ('delete', old.id, old.title, old.headings, old.body);
END;
-- Each page's title and lead, matched as a whole (index.ABOUT_WEIGHTS); a
-- row's rowid is its document's.
CREATE VIRTUAL TABLE IF NOT EXISTS pages_fts USING fts5 (
    title, lead, tokenize='porter unicode61 remove_diacritics 2'
);
"""

# Ranked on the full-text table alone, joined only for the candidates kept.
SEARCH = f"""
SELECT p.url, p.title, p.headings, p.body, c.score
FROM (
    SELECT rowid, -bm25(passages_fts, ?, ?, ?) AS score
    FROM passages_fts WHERE passages_fts MATCH ?
    ORDER BY score DESC LIMIT {CANDIDATES}
) AS c JOIN passages AS p ON p.id = c.rowid
"""
# How well each page's title and lead match, for index.rank.
SEARCH_ABOUT = f"""
SELECT d.url, -bm25(pages_fts, ?, ?) AS score
FROM pages_fts JOIN documents AS d ON d.rowid = pages_fts.rowid
WHERE pages_fts MATCH ? ORDER BY score DESC LIMIT {CANDIDATES}
"""
# The visitor's page may rank below the candidates and still deserve a place.
SEARCH_PAGE = f"""
SELECT p.url, p.title, p.headings, p.body, -bm25(passages_fts, ?, ?, ?)
FROM passages_fts JOIN passages AS p ON p.id = passages_fts.rowid
WHERE passages_fts MATCH ? AND passages_fts.rowid IN (
    SELECT id FROM passages WHERE url = ?
)
LIMIT {CANDIDATES}
"""


class Link:
    """One connection, and what its searches remember about the file through it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        # Passages holding each query term, for _telling; `writes` counts
        # this connection's own commits, which PRAGMA data_version ignores
        # (and whose values only one connection's calls can compare).
        self.counts: dict[str, int] = {}
        self.counts_version: tuple[int, int] = (-1, -1)
        self.total = 0
        self.writes = 0


class SqliteIndex:
    """Passages in an SQLite file: WAL, so readers never wait for the writer."""

    def __init__(
        self, path: str | os.PathLike[str], embedder: Embedder | None = None
    ) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self._vectors = VectorCache()
        # Every call runs with a connection of its own, off the gevent hub
        # (sqlite_pool): a search no longer stalls the worker's streams.
        self._pool = Pool(self._connect, _close)

    def _run(self, fn: Callable[[Link], T]) -> T:
        try:
            return self._pool.run(fn)
        except sqlite3.Error as exc:
            raise IndexUnavailable(f"knowledge index {self.path}: {exc}") from exc

    def _connect(self) -> Link:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are explicit
            # Made in one pool thread, used in others, never two at once.
            check_same_thread=False,
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL syncs at checkpoints only: a power cut may lose
            # the last pages indexed, never corrupt the file; a re-crawl
            # restores them.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(SCHEMA)
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                migrate(conn)
        except BaseException:
            conn.close()
            raise
        return Link(conn)

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
        # Embedded before the write lock is taken: the endpoint may be slow.
        vectors = (
            embed_passages(self.embedder, passages)
            if self.embedder is not None
            else [None] * len(passages)
        )
        rows = [
            (url, seq, title, p.headings, p.text, vec)
            for seq, (p, vec) in enumerate(zip(passages, vectors, strict=True))
        ]
        document = (url, title, len(rows), modified, etag, last_modified, owner)

        lead = page_lead(passages)

        def write(db: sqlite3.Connection) -> None:
            drop_page(db, url)
            db.execute("DELETE FROM passages WHERE url = ?", (url,))
            db.executemany(
                "INSERT INTO passages (url, seq, title, headings, body, vec) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            stored = db.execute(
                "INSERT OR REPLACE INTO documents (url, title, passages, "
                "modified, etag, last_modified, owner, indexed) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*document, time.time()),
            )
            db.execute(
                "INSERT INTO pages_fts (rowid, title, lead) VALUES (?, ?, ?)",
                (stored.lastrowid, title, lead),
            )

        self._run(lambda link: _transaction(link, write))
        return len(rows)

    def remove(self, url: str) -> bool:
        """Drop the document at `url`; False when there was none."""

        def write(db: sqlite3.Connection) -> int:
            drop_page(db, url)
            db.execute("DELETE FROM passages WHERE url = ?", (url,))
            return db.execute("DELETE FROM documents WHERE url = ?", (url,)).rowcount

        return self._run(lambda link: _transaction(link, write)) > 0

    def document(self, url: str) -> DocumentInfo | None:
        """Describe one document, or None."""
        row = self._run(
            lambda link: link.conn.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                "FROM documents WHERE url = ?",
                (url,),
            ).fetchone()
        )
        return DocumentInfo(*row) if row else None

    def documents(self) -> list[DocumentInfo]:
        """Describe every document, by URL."""
        rows = self._run(
            lambda link: link.conn.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                "FROM documents ORDER BY url"
            ).fetchall()
        )
        return [DocumentInfo(*row) for row in rows]

    def search(
        self, query: str, *, limit: int = 8, prefer_url: str | None = None
    ) -> list[Passage]:
        """Return the best passages for `query`, best first."""
        terms = query_terms(query)
        if limit <= 0 or not terms:
            return []
        rows, about = self._run(lambda link: self._lexical(link, terms, prefer_url))
        hits = {
            (u, b): Passage(url=u, title=t, headings=h, text=b, score=float(s))
            for u, t, h, b, s in rows
        }
        if self.embedder is None:
            return rank(
                list(hits.values()), limit=limit, prefer_url=prefer_url, about=about
            )
        lexical = rank(
            list(hits.values()), limit=CANDIDATES, prefer_url=prefer_url, about=about
        )
        # The question is embedded here, on the caller's greenlet: only the
        # index's own calls go to the pool's threads.
        version = self._run(
            lambda link: tuple(
                link.conn.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM passages "
                    "WHERE vec IS NOT NULL"
                ).fetchone()
            )
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

    def _lexical(
        self, link: Link, terms: list[str], prefer_url: str | None
    ) -> tuple[list[tuple[str, str, str, str, float]], dict[str, float]]:
        """The full-text candidates (the best overall, and the visitor's
        page's), and how well each page's title and lead match."""
        match = " OR ".join(f'"{t}"' for t in _telling(link, terms))
        rows: list[tuple[str, str, str, str, float]]
        rows = link.conn.execute(SEARCH, (*WEIGHTS, match)).fetchall()
        if prefer_url:
            rows += link.conn.execute(
                SEARCH_PAGE, (*WEIGHTS, match, prefer_url)
            ).fetchall()
        about = dict(link.conn.execute(SEARCH_ABOUT, (*ABOUT_WEIGHTS, match)))
        return rows, about

    def _all_vectors(self) -> list[tuple[int, bytes]]:
        return self._run(
            lambda link: link.conn.execute(
                "SELECT id, vec FROM passages WHERE vec IS NOT NULL ORDER BY id"
            ).fetchall()
        )

    def _passages_by_id(self, ids: list[int]) -> dict[int, Passage]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        rows = self._run(
            lambda link: link.conn.execute(
                f"SELECT id, url, title, headings, body FROM passages "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchall()
        )
        return {
            i: Passage(url=u, title=t, headings=h, text=b) for i, u, t, h, b in rows
        }

    def stats(self) -> IndexStats:
        """Count documents and passages, and the file's size."""

        def count(db: sqlite3.Connection) -> IndexStats:
            documents, passages = db.execute(
                "SELECT count(*), coalesce(sum(passages), 0) FROM documents"
            ).fetchone()
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            return IndexStats(documents, passages, pages * page_size)

        return self._run(lambda link: count(link.conn))

    def close(self) -> None:
        self._pool.close()


def _close(link: Link) -> None:
    link.conn.close()


def _transaction(link: Link, write: Callable[[sqlite3.Connection], T]) -> T:
    """Run `write` in one immediate transaction on `link`; count the commit."""
    db = link.conn
    db.execute("BEGIN IMMEDIATE")
    try:
        result = write(db)
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    link.writes += 1
    return result


def _telling(link: Link, terms: list[str]) -> list[str]:
    """The terms worth matching (index.telling), counted once per change."""
    db = link.conn
    version = (db.execute("PRAGMA data_version").fetchone()[0], link.writes)
    if version != link.counts_version:
        link.counts.clear()
        link.counts_version = version
        link.total = db.execute("SELECT count(*) FROM passages").fetchone()[0]
    for term in terms:
        if term not in link.counts:
            link.counts[term] = db.execute(
                "SELECT count(*) FROM passages_fts WHERE passages_fts MATCH ?",
                (f'"{term}"',),
            ).fetchone()[0]
    return telling(terms, link.counts, link.total)


def fts_query(text: str) -> str:
    """Build an FTS5 query from any text: every term quoted, any one may match."""
    return " OR ".join(f'"{term}"' for term in query_terms(text))
