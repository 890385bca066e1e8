"""The embedded index: SQLite FTS5 in one file, read by every worker of a host."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
# PRAGMA user_version: 1 once pages_fts holds every document (an index file
# written before it existed is filled from its passages on first open).
SCHEMA_VERSION = 1

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


class SqliteIndex:
    """Passages in an SQLite file: WAL, so readers never wait for the writer."""

    def __init__(
        self, path: str | os.PathLike[str], embedder: Embedder | None = None
    ) -> None:
        self.path = Path(path)
        self.embedder = embedder
        self._vectors = VectorCache()
        # Passages holding each query term, for _telling; `_writes` counts
        # this connection's own commits, which PRAGMA data_version ignores.
        self._counts: dict[str, int] = {}
        self._counts_version: tuple[int, int] = (-1, -1)
        self._total = 0
        self._writes = 0
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = 0

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # One connection per process (a fork must not share the parent's), used
        # by one caller at a time. Under gevent no sqlite3 call yields, so a
        # statement runs whole, and the lock only serialises real threads.
        with self._lock:
            try:
                if self._conn is None or self._pid != os.getpid():
                    self._conn = self._connect()
                    self._pid = os.getpid()
                yield self._conn
            except sqlite3.Error as exc:
                raise IndexUnavailable(f"knowledge index {self.path}: {exc}") from exc

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,  # transactions are explicit
            check_same_thread=False,  # guarded by self._lock
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        # WAL with NORMAL syncs at checkpoints only: a power cut may lose the
        # last pages indexed, never corrupt the file; a re-crawl restores them.
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.executescript(SCHEMA)
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            _migrate(conn)
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
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                _drop_page(db, url)
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
                    (
                        url,
                        title,
                        len(rows),
                        modified,
                        etag,
                        last_modified,
                        owner,
                        time.time(),
                    ),
                )
                db.execute(
                    "INSERT INTO pages_fts (rowid, title, lead) VALUES (?, ?, ?)",
                    (stored.lastrowid, title, page_lead(passages)),
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._writes += 1
        return len(rows)

    def remove(self, url: str) -> bool:
        """Drop the document at `url`; False when there was none."""
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                _drop_page(db, url)
                db.execute("DELETE FROM passages WHERE url = ?", (url,))
                gone = db.execute("DELETE FROM documents WHERE url = ?", (url,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._writes += 1
        return gone.rowcount > 0

    def document(self, url: str) -> DocumentInfo | None:
        """Describe one document, or None."""
        with self._db() as db:
            row = db.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                "FROM documents WHERE url = ?",
                (url,),
            ).fetchone()
        return DocumentInfo(*row) if row else None

    def documents(self) -> list[DocumentInfo]:
        """Describe every document, by URL."""
        with self._db() as db:
            rows = db.execute(
                "SELECT url, title, passages, modified, etag, last_modified, owner "
                "FROM documents ORDER BY url"
            ).fetchall()
        return [DocumentInfo(*row) for row in rows]

    def search(
        self, query: str, *, limit: int = 8, prefer_url: str | None = None
    ) -> list[Passage]:
        """Return the best passages for `query`, best first."""
        terms = query_terms(query)
        if limit <= 0 or not terms:
            return []
        with self._db() as db:
            match = " OR ".join(f'"{t}"' for t in self._telling(db, terms))
            rows = db.execute(SEARCH, (*WEIGHTS, match)).fetchall()
            if prefer_url:
                rows += db.execute(
                    SEARCH_PAGE, (*WEIGHTS, match, prefer_url)
                ).fetchall()
            about = dict(db.execute(SEARCH_ABOUT, (*ABOUT_WEIGHTS, match)).fetchall())
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
        with self._db() as db:
            version = tuple(
                db.execute(
                    "SELECT count(*), coalesce(max(id), 0) FROM passages "
                    "WHERE vec IS NOT NULL"
                ).fetchone()
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

    def _telling(self, db: sqlite3.Connection, terms: list[str]) -> list[str]:
        """The terms worth matching (index.telling), counted once per change."""
        version = (db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if version != self._counts_version:
            self._counts.clear()
            self._counts_version = version
            self._total = db.execute("SELECT count(*) FROM passages").fetchone()[0]
        for term in terms:
            if term not in self._counts:
                self._counts[term] = db.execute(
                    "SELECT count(*) FROM passages_fts WHERE passages_fts MATCH ?",
                    (f'"{term}"',),
                ).fetchone()[0]
        return telling(terms, self._counts, self._total)

    def _all_vectors(self) -> list[tuple[int, bytes]]:
        with self._db() as db:
            return db.execute(
                "SELECT id, vec FROM passages WHERE vec IS NOT NULL ORDER BY id"
            ).fetchall()

    def _passages_by_id(self, ids: list[int]) -> dict[int, Passage]:
        if not ids:
            return {}
        marks = ", ".join("?" * len(ids))
        with self._db() as db:
            rows = db.execute(
                f"SELECT id, url, title, headings, body FROM passages "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchall()
        return {
            i: Passage(url=u, title=t, headings=h, text=b) for i, u, t, h, b in rows
        }

    def stats(self) -> IndexStats:
        """Count documents and passages, and the file's size."""
        with self._db() as db:
            documents, passages = db.execute(
                "SELECT count(*), coalesce(sum(passages), 0) FROM documents"
            ).fetchone()
            pages, page_size = (
                db.execute("PRAGMA page_count").fetchone()[0],
                db.execute("PRAGMA page_size").fetchone()[0],
            )
        return IndexStats(documents, passages, pages * page_size)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _drop_page(db: sqlite3.Connection, url: str) -> None:
    db.execute(
        "DELETE FROM pages_fts WHERE rowid IN "
        "(SELECT rowid FROM documents WHERE url = ?)",
        (url,),
    )


def _migrate(db: sqlite3.Connection) -> None:
    """Fill pages_fts from the passages of an index file written before it."""
    db.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while this one waited for the lock.
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            db.execute("DELETE FROM pages_fts")
            heads: dict[str, list[Passage]] = {}
            for url, headings in db.execute(
                "SELECT url, headings FROM passages ORDER BY url, seq"
            ):
                heads.setdefault(url, []).append(Passage(url, "", headings, ""))
            db.executemany(
                "INSERT INTO pages_fts (rowid, title, lead) "
                "SELECT rowid, title, ? FROM documents WHERE url = ?",
                [
                    (page_lead(heads.get(url, [])), url)
                    for (url,) in db.execute("SELECT url FROM documents").fetchall()
                ],
            )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def fts_query(text: str) -> str:
    """Build an FTS5 query from any text: every term quoted, any one may match."""
    return " OR ".join(f'"{term}"' for term in query_terms(text))
