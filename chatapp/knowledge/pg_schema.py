"""The Postgres index's tables, and what an older table gets on connect.

Kept beside pg_index, as sqlite_pages is beside sqlite_index: the schema,
and the migrations every host runs under one lock when it first connects.
"""

from __future__ import annotations

from typing import Any

import psycopg

from chatapp.knowledge.index import LEAD_COLUMNS
from chatapp.knowledge.index import stored_leads

# Any number will do as long as every host uses the same one: it serialises
# the schema's creation when several hosts start at once.
SCHEMA_LOCK = 0x6B6E6F77  # "know"
# knowledge_meta's "leads": 2 once every page's lead is what index.page_lead
# makes of it (a page without a lead gets its opening words).
LEADS_VERSION = 2

SCHEMA = """
CREATE TABLE IF NOT EXISTS knowledge_documents (
    url text PRIMARY KEY,
    title text NOT NULL,
    passages integer NOT NULL,
    modified double precision,
    etag text NOT NULL DEFAULT '',
    last_modified text NOT NULL DEFAULT '',
    owner text NOT NULL DEFAULT '',
    indexed double precision NOT NULL,
    lead text NOT NULL DEFAULT '',  -- index.page_lead
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, lead), 'B')
    ) STORED
);
CREATE TABLE IF NOT EXISTS knowledge_passages (
    id bigserial PRIMARY KEY,
    url text NOT NULL REFERENCES knowledge_documents (url) ON DELETE CASCADE,
    seq integer NOT NULL,
    title text NOT NULL,
    headings text NOT NULL,
    body text NOT NULL,
    vec bytea,  -- float32 unit vector, with embeddings configured
    tsv tsvector GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, headings), 'B')
        || setweight(to_tsvector('english'::regconfig, body), 'C')
    ) STORED
);
CREATE INDEX IF NOT EXISTS knowledge_passages_tsv
    ON knowledge_passages USING gin (tsv);
CREATE INDEX IF NOT EXISTS knowledge_passages_url ON knowledge_passages (url);
CREATE TABLE IF NOT EXISTS knowledge_meta (
    name text PRIMARY KEY,
    value integer NOT NULL
);
"""

# A table made before pages had leads gets the columns. ALTER TABLE locks the
# table whole, even when the column is there: only then.
ADD_LEADS = """
ALTER TABLE knowledge_documents
    ADD COLUMN IF NOT EXISTS lead text NOT NULL DEFAULT '';
ALTER TABLE knowledge_documents ADD COLUMN IF NOT EXISTS tsv tsvector
    GENERATED ALWAYS AS (
        setweight(to_tsvector('english'::regconfig, title), 'A')
        || setweight(to_tsvector('english'::regconfig, lead), 'B')
    ) STORED;
"""


def prepare(conn: psycopg.Connection[Any]) -> None:
    """Create the tables, or bring older ones up to date, under the lock."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
        had_leads = conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE table_schema = "
            "current_schema() AND table_name = 'knowledge_documents' "
            "AND column_name = 'lead'"
        ).fetchone()
        conn.execute(SCHEMA)
        if not had_leads:
            conn.execute(ADD_LEADS)
        row = conn.execute(
            "SELECT value FROM knowledge_meta WHERE name = 'leads'"
        ).fetchone()
        if row is None or row[0] < LEADS_VERSION:
            _fill_leads(conn)


def _fill_leads(conn: psycopg.Connection[Any]) -> None:
    """Every page's lead from its stored passages, by index.page_lead."""
    leads = stored_leads(
        conn.execute(f"SELECT {LEAD_COLUMNS} FROM knowledge_passages ORDER BY url, seq")
    )
    with conn.cursor() as cur:
        cur.executemany(
            "UPDATE knowledge_documents SET lead = %s WHERE url = %s",
            [(lead, url) for url, lead in leads.items()],
        )
    conn.execute(
        "INSERT INTO knowledge_meta (name, value) VALUES ('leads', %s) "
        "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        (LEADS_VERSION,),
    )
