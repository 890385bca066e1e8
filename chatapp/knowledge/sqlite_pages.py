"""The SQLite index's pages_fts: one row per document, its title and lead.

Kept beside sqlite_index: the rows a write drops, and the migration that
fills the table in an index file written before it existed.
"""

from __future__ import annotations

import sqlite3

from chatapp.knowledge.index import LEAD_COLUMNS
from chatapp.knowledge.index import stored_leads

# PRAGMA user_version: 1 once pages_fts holds every document (an index file
# written before it existed is filled from its passages on first open); 2
# once a page without a lead has its opening words as one (index.page_lead).
SCHEMA_VERSION = 2


def drop_page(db: sqlite3.Connection, url: str) -> None:
    db.execute(
        "DELETE FROM pages_fts WHERE rowid IN "
        "(SELECT rowid FROM documents WHERE url = ?)",
        (url,),
    )


def migrate(db: sqlite3.Connection) -> None:
    """Fill pages_fts from the passages of an index file written before it
    (or before its leads were what index.page_lead now makes of a page)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have migrated while this one waited for the lock.
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            db.execute("DELETE FROM pages_fts")
            leads = stored_leads(
                db.execute(f"SELECT {LEAD_COLUMNS} FROM passages ORDER BY url, seq")
            )
            urls = [url for (url,) in db.execute("SELECT url FROM documents")]
            db.executemany(
                "INSERT INTO pages_fts (rowid, title, lead) "
                "SELECT rowid, title, ? FROM documents WHERE url = ?",
                [(leads.get(url, ""), url) for url in urls],
            )
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
