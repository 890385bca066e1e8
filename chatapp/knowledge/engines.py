"""Open the index a URL names: the embedded SQLite file or shared Postgres.

Above both engines and the interface they implement (index.py), so that
the interface imports neither.
"""

from __future__ import annotations

from pathlib import Path

from chatapp.knowledge.embed import Embedder
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import sqlite_path
from chatapp.knowledge.pg_index import PgIndex
from chatapp.knowledge.sqlite_index import SqliteIndex


def open_index(
    url: str, instance_path: str | Path, embedder: Embedder | None = None
) -> Index:
    """Open the index `url` names (CHATAPP_KNOWLEDGE_URL).

    `sqlite:///` alone is a file in the instance folder, `sqlite:///name` a
    path relative to it, `sqlite:////abs/path` an absolute one;
    `postgresql://…` is one index shared by every host. With an `embedder`
    (CHATAPP_EMBEDDINGS_MODEL, see embed.make_embedder), passages are also
    embedded and searches are hybrid.
    """
    path = sqlite_path(url, instance_path)
    if path is not None:
        return SqliteIndex(path, embedder)
    if url.startswith(("postgresql://", "postgres://")):
        return PgIndex(url, embedder)
    raise ValueError("must start with sqlite:/// or postgresql://")
