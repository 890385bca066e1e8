"""Site knowledge: pages in, passages indexed, numbered sources out.

knows no Flask. `extract` turns pages into passages, `index` stores and
searches them (SQLite FTS5 embedded, Postgres shared), `crawl` fills the index
from the site's sitemaps, `retrieve` picks a turn's sources.
"""
