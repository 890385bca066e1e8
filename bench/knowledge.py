"""Site knowledge, measured: crawl a real documentation set from 127.0.0.1, then
retrieval quality (recall@1/@3 by page), latency at ~10,000 passages, crawl
rate, memory and index size, for SQLite and Postgres.

    apt-get install git-doc postgresql   # the doc set and the shared engine
    .venv/bin/python -m bench.knowledge [--docs /usr/share/doc/git-doc]

    # the check against fitting git's docs (apt-get install debian-reference-en)
    .venv/bin/python -m bench.knowledge --docs /usr/share/debian-reference \
        --questions bench/knowledge_questions_debian_reference.json --quality-only

    # the held-out set, never used for tuning (apt-get install debian-handbook)
    .venv/bin/python -m bench.knowledge \
        --docs /usr/share/doc/debian-handbook/html/en-US \
        --questions bench/knowledge_questions_debian_handbook.json --quality-only

    # hybrid retrieval too, with a real model (bench/embeddings_server.py)
    .venv/bin/python -m bench.knowledge --quality-only \
        --embeddings http://127.0.0.1:8765/v1

The doc set is served as it is installed, with a sitemap of its pages, by
`python -m http.server` in a child process (so its CPU is not ours). The
questions are bench/knowledge_questions.json. Nothing here is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import requests

from bench.procs import free_port
from chatapp.knowledge.crawl import Crawler
from chatapp.knowledge.embed import OpenAIEmbedder
from chatapp.knowledge.embed import VectorCache
from chatapp.knowledge.index import CANDIDATES
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import Passage
from chatapp.knowledge.pg_index import PgIndex
from chatapp.knowledge.sqlite_index import SqliteIndex
from chatapp.knowledge.sqlite_index import fts_query

QUESTIONS = Path(__file__).with_name("knowledge_questions.json")
PG_BIN = Path("/usr/lib/postgresql/15/bin")
TARGET_PASSAGES = 10_000
LATENCY_ROUNDS = 5


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_until(probe: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@contextmanager
def served(docs: Path, exclude: Sequence[str] = ()) -> Iterator[str]:
    """Serve the doc set with a sitemap and robots.txt; yield the sitemap URL.

    Pages named in ``exclude`` (paths relative to ``docs``) stay out of the
    sitemap: a doc set's all-in-one page repeats every other page.
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="chatapp-bench-site-") as tmp:
        site = Path(tmp)
        for entry in docs.iterdir():
            (site / entry.name).symlink_to(entry.resolve())
        pages = sorted(
            page
            for page in (p.relative_to(docs).as_posix() for p in docs.rglob("*.html"))
            if page not in exclude
        )
        urls = "".join(f"<url><loc>{base}/{page}</loc></url>" for page in pages)
        (site / "sitemap.xml").write_text(
            '<?xml version="1.0" encoding="UTF-8"?>'
            '<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">'
            f"{urls}</urlset>"
        )
        (site / "robots.txt").write_text(
            f"User-agent: *\nSitemap: {base}/sitemap.xml\n"
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
            cwd=site,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: _answers(base + "/robots.txt"), 10, "the doc site to start"
            )
            yield f"{base}/sitemap.xml"
        finally:
            server.terminate()
            server.wait(10)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


@contextmanager
def postgres() -> Iterator[str]:
    """Start Debian's PostgreSQL on a free port in a temp dir; yield its URL."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="chatapp-bench-pg-"))
    user: dict[str, Any] = {}
    if os.geteuid() == 0:  # the server refuses root
        owner = pwd.getpwnam("postgres")
        os.chown(tmp, owner.pw_uid, owner.pw_gid)
        user = {"user": owner.pw_uid, "group": owner.pw_gid}
    data = tmp / "data"
    subprocess.run(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
        **user,
    )
    server = subprocess.Popen(
        [
            str(PG_BIN / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(tmp),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **user,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def ready() -> bool:
        try:
            with psycopg.connect(url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    try:
        wait_until(ready, 30, "postgres to start")
        yield url
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


def page_of(url: str, base: str) -> str:
    return url.removeprefix(base).split("?", 1)[0]


def ranked_pages(passages: list[Passage], base: str) -> list[str]:
    """Pages in the order of their best passage."""
    pages: list[str] = []
    for passage in passages:
        page = page_of(passage.url, base)
        if page not in pages:
            pages.append(page)
    return pages


def recall(
    search: Callable[[str], list[str]], questions: list[dict[str, Any]]
) -> tuple[float, float, list[str]]:
    at1 = at3 = 0
    misses: list[str] = []
    for item in questions:
        pages = search(item["q"])
        good = set(item["pages"])
        at1 += bool(good & set(pages[:1]))
        at3 += bool(good & set(pages[:3]))
        if not good & set(pages[:3]):
            misses.append(f"{item['q']} -> {pages[:3]}")
    n = len(questions)
    return at1 / n, at3 / n, misses


def baseline_search(db_path: Path, base: str) -> Callable[[str], list[str]]:
    """Plain BM25 over whole pages: the same extracted text, nothing else.

    One row per page (its title, headings and passages' text), FTS5's
    bm25() with no column weights, every question word OR'd, no word left
    out, no page evidence: what the chatapp ranking is measured against.
    """
    db = sqlite3.connect(db_path)
    db.execute(
        "CREATE VIRTUAL TABLE IF NOT EXISTS baseline USING fts5(url UNINDEXED, "
        "text, tokenize='porter unicode61 remove_diacritics 2')"
    )
    db.execute("DELETE FROM baseline")
    pages: dict[str, list[str]] = {}
    for url, title, headings, body in db.execute(
        "SELECT url, title, headings, body FROM passages ORDER BY url, seq"
    ):
        text = pages.setdefault(url, [title])
        # Each heading (and the page's lead, first in every path) once.
        text.extend(h for h in headings.split(" > ") if h and h not in text)
        text.append(body)
    db.executemany(
        "INSERT INTO baseline (url, text) VALUES (?, ?)",
        [(url, "\n".join(text)) for url, text in pages.items()],
    )
    db.commit()

    def search(question: str) -> list[str]:
        match = fts_query(question)
        if not match:
            return []
        rows = db.execute(
            "SELECT url FROM baseline WHERE baseline MATCH ? "
            "ORDER BY bm25(baseline) LIMIT 10",
            (match,),
        ).fetchall()
        return [page_of(url, base) for (url,) in rows]

    return search


def copy_documents(source: Index, target: Index) -> int:
    """Copy every document of `source` into `target`; return passages copied."""
    total = 0
    for info in source.documents():
        passages = _passages_of(source, info.url)
        total += target.replace(info.url, info.title, passages, modified=info.modified)
    return total


def _passages_of(index: Index, url: str) -> list[Passage]:
    # Read through the SQLite engine's table: the Index protocol has no
    # "passages of a document" call, and the bench needs nothing more.
    assert isinstance(index, SqliteIndex)
    rows = index._run(
        lambda link: link.conn.execute(
            "SELECT url, title, headings, body FROM passages WHERE url = ? "
            "ORDER BY seq",
            (url,),
        ).fetchall()
    )
    return [Passage(url=u, title=t, headings=h, text=b) for u, t, h, b in rows]


def grow(index: Index, source: SqliteIndex, passages: int) -> int:
    """Add copies of the documents under other URLs until ~`passages` are held."""
    copy = 0
    total = index.stats().passages
    originals = source.documents()
    while total < passages:
        copy += 1
        for info in originals:
            rows = _passages_of(source, info.url)
            url = f"{info.url}?copy={copy}"
            total += index.replace(
                url,
                info.title,
                [Passage(url, p.title, p.headings, p.text) for p in rows],
            )
            if total >= passages:
                break
    return total


def latency(index: Index, questions: list[dict[str, Any]]) -> dict[str, float]:
    """Wall-clock p50/p99 of a search, and this process's CPU time per search.

    On a shared machine the wall clock includes waiting for a core; the CPU
    time is what the search itself costs (for SQLite, all of it; for
    Postgres, only the client's share).
    """
    for item in questions[:5]:
        index.search(item["q"])  # warm caches and the connection
    samples: list[float] = []
    cpu: list[float] = []
    for _ in range(LATENCY_ROUNDS):
        for item in questions:
            started, used = time.perf_counter(), time.process_time()
            index.search(item["q"], limit=8)
            samples.append((time.perf_counter() - started) * 1000)
            cpu.append((time.process_time() - used) * 1000)
    samples.sort()
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return {
        "p50": round(statistics.median(samples), 2),
        "p99": round(p99, 2),
        "cpu_p50": round(statistics.median(cpu), 2),
        "load_average": os.getloadavg()[0],
    }


def vector_cost(passages: int, dims: int = 1536) -> dict[str, float]:
    """What the hybrid half of a search costs at `passages` vectors of `dims`.

    Random unit vectors stand in for a model's (the cost does not depend on
    their values): loading them from BLOBs once per change, then one
    matrix product and a top-200 per question.
    """
    rng = np.random.default_rng(7)
    rows = [
        (i, (v / np.linalg.norm(v)).astype(np.float32).tobytes())
        for i, v in enumerate(rng.standard_normal((passages, dims)))
    ]
    cache = VectorCache()
    started = time.perf_counter()
    cache.load((passages,), rows)
    load_ms = (time.perf_counter() - started) * 1000
    query = cache.matrix[0]
    samples = []
    for _ in range(50):
        started = time.perf_counter()
        cache.nearest(query, CANDIDATES)
        samples.append((time.perf_counter() - started) * 1000)
    return {
        "passages": passages,
        "dims": dims,
        "load_ms": round(load_ms, 1),
        "nearest_p50_ms": round(statistics.median(samples), 2),
        "bytes": passages * dims * 4,
    }


class RememberingEmbedder:
    """An endpoint's vectors, each text embedded once in this run.

    Both engines index the same passages: the second gets them from here,
    and so costs no second embedding of the whole doc set.
    """

    def __init__(self, embedder: OpenAIEmbedder) -> None:
        self.embedder = embedder
        self.known: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self.known))
        if missing:
            started = time.perf_counter()
            rows = self.embedder.embed(missing)
            self.seconds += time.perf_counter() - started
            self.texts += len(missing)
            self.known.update(zip(missing, rows, strict=True))
        return np.vstack([self.known[t] for t in texts])


def hybrid(
    index: SqliteIndex,
    work: Path,
    embedder: RememberingEmbedder,
    questions: list[dict[str, Any]],
    base: str,
) -> dict[str, Any]:
    """Embed the crawled passages into a second SQLite index; its recall, cost."""
    hybrid_index = SqliteIndex(work / "hybrid.sqlite3", embedder)
    passages = copy_documents(index, hybrid_index)
    h1, h3, misses = recall(
        lambda q: ranked_pages(hybrid_index.search(q, limit=40), base), questions
    )
    # The question's embedding is what hybrid adds to a search's wall clock
    # (the vector product is in vector_cost): one request, not remembered.
    samples = []
    for item in questions:
        started = time.perf_counter()
        embedder.embedder.embed([item["q"]])
        samples.append((time.perf_counter() - started) * 1000)
    hybrid_index.close()
    return {
        "recall": {"at1": h1, "at3": h3},
        "misses": misses,
        "passages": passages,
        "embed_seconds": round(embedder.seconds, 1),
        "passages_per_s": round(embedder.texts / embedder.seconds, 1),
        "question_embedding_ms_p50": round(statistics.median(samples), 1),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default="/usr/share/doc/git-doc")
    parser.add_argument("--questions", default=str(QUESTIONS))
    parser.add_argument(
        "--quality-only", action="store_true", help="recall only: no latency"
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="PAGE",
        help="leave this page (relative to --docs) out of the sitemap; repeatable",
    )
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--show-misses", action="store_true")
    parser.add_argument(
        "--embeddings",
        metavar="BASE_URL",
        help="also rank hybrid, with the OpenAI-compatible endpoint at BASE_URL "
        "(bench/embeddings_server.py serves a real model)",
    )
    parser.add_argument("--embeddings-model", default="all-MiniLM-L6-v2")
    args = parser.parse_args()
    embedder = (
        RememberingEmbedder(OpenAIEmbedder(args.embeddings, args.embeddings_model))
        if args.embeddings
        else None
    )
    docs = Path(args.docs)
    questions = json.loads(Path(args.questions).read_text())["questions"]
    results: dict[str, Any] = {"questions": len(questions)}
    work = Path(tempfile.mkdtemp(prefix="chatapp-bench-knowledge-"))
    try:
        index = SqliteIndex(work / "knowledge.sqlite3")
        with served(docs, args.exclude) as sitemap:
            base = sitemap.removesuffix("sitemap.xml")
            rss_before = rss_mb()
            cpu = time.process_time()
            report = Crawler(index, [sitemap]).crawl()
            cpu = time.process_time() - cpu
            rss_after = rss_mb()
            recrawl = Crawler(index, [sitemap]).crawl()
        pages = report.count("indexed")
        stats = index.stats()
        results["crawl"] = {
            "pages": pages,
            "outcomes": report.counts(),
            "seconds": round(report.seconds, 2),
            "pages_per_s": round(pages / report.seconds, 1),
            "pages_per_cpu_s": round(pages / cpu, 1),
            "rss_mb_before": round(rss_before, 1),
            "rss_mb_after": round(rss_after, 1),
            "rss_mb_peak": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1
            ),
            "recrawl_seconds": round(recrawl.seconds, 2),
            "recrawl_outcomes": recrawl.counts(),
            "mb_fetched": round(report.bytes / 1e6, 1),
            "load_average": os.getloadavg(),
        }
        results["index"] = {"documents": stats.documents, "passages": stats.passages}
        results["sqlite_bytes"] = stats.bytes

        baseline = baseline_search(index.path, base)
        b1, b3, b_miss = recall(baseline, questions)
        s1, s3, s_miss = recall(
            lambda q: ranked_pages(index.search(q, limit=40), base), questions
        )
        results["recall"] = {
            "plain_bm25_pages": {"at1": b1, "at3": b3},
            "sqlite": {"at1": s1, "at3": s3},
        }
        if args.show_misses:
            results["misses"] = {"plain_bm25_pages": b_miss, "sqlite": s_miss}
        if embedder is not None:
            found = hybrid(index, work, embedder, questions, base)
            results["recall"]["sqlite_hybrid"] = found.pop("recall")
            h_miss = found.pop("misses")
            if args.show_misses:
                results["misses"]["sqlite_hybrid"] = h_miss
            results["embeddings"] = found

        if not args.no_postgres:
            with postgres() as url:
                pg = PgIndex(url)
                copy_documents(index, pg)
                p1, p3, p_miss = recall(
                    lambda q: ranked_pages(pg.search(q, limit=40), base), questions
                )
                results["recall"]["postgres"] = {"at1": p1, "at3": p3}
                if args.show_misses:
                    results["misses"]["postgres"] = p_miss
                if embedder is not None:
                    # The same documents again, now with (remembered) vectors.
                    pg_hybrid = PgIndex(url, embedder)
                    copy_documents(index, pg_hybrid)
                    h1, h3, h_miss = recall(
                        lambda q: ranked_pages(pg_hybrid.search(q, limit=40), base),
                        questions,
                    )
                    results["recall"]["postgres_hybrid"] = {"at1": h1, "at3": h3}
                    if args.show_misses:
                        results["misses"]["postgres_hybrid"] = h_miss
                    pg_hybrid.close()
                if not args.quality_only:
                    held = grow(pg, index, TARGET_PASSAGES)
                    results["postgres_latency_ms"] = latency(pg, questions)
                    results["postgres_latency_passages"] = held
                    results["postgres_bytes"] = pg.stats().bytes
                pg.close()
        if not args.quality_only:
            held = grow(index, index, TARGET_PASSAGES)
            results["sqlite_latency_ms"] = latency(index, questions)
            results["sqlite_latency_passages"] = held
            results["sqlite_bytes_at_latency"] = index.stats().bytes
            results["vectors"] = vector_cost(held)
        index.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
