"""Time what site knowledge adds before a turn's first token: one retrieval.

    .venv/bin/python -m bench.knowledge_latency                    # SQLite
    .venv/bin/python -m bench.knowledge_latency --url postgresql://…/db

Indexes real documentation that nobody here wrote: the HTML of Debian's
git-doc package (`/usr/share/doc/git-doc`, apt-get install git-doc), then
Debian's own changelogs as plain text, until the index holds `--passages`
passages. Then it times `Knowledge.consult` (the search with the page
preference, the fill to CHATAPP_KNOWLEDGE_MAX_CHARS, the numbered block and
the new system prompt) for questions made from the documents' headings, and
prints p50, p95 and p99 in milliseconds, as one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from chatapp.knowledge.engines import open_index
from chatapp.knowledge.extract import extract
from chatapp.knowledge.index import Index
from chatapp.turns.knowledge import Knowledge
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Message

GIT_DOC = Path("/usr/share/doc/git-doc")
DOC = Path("/usr/share/doc")
SITE = "https://docs.example"


def fill(index: Index, target: int) -> tuple[int, list[tuple[str, str]]]:
    """Index real documents until `target` passages; return the count and topics."""
    total = 0
    topics: list[tuple[str, str]] = []
    files = sorted(GIT_DOC.glob("*.html")) + sorted(DOC.glob("*/changelog*.gz"))
    for path in files:
        if total >= target:
            break
        if path.suffix == ".gz":
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
            kind, url = "text/plain", f"{SITE}/changelog/{path.parent.name}"
        else:
            text = path.read_text(encoding="utf-8", errors="replace")
            kind, url = "text/html", f"{SITE}/git/{path.stem}"
        found = extract(text, url=url, content_type=kind)
        if not found.passages:
            continue
        total += index.replace(url, found.title, list(found.passages))
        if kind == "text/html":  # questions about the documentation, not the filler
            # The passage's own heading, not the page's lead before it.
            topics.extend(
                (p.headings.rsplit(" > ", 1)[-1] or p.title, url)
                for p in found.passages[:3]
            )
    return total, topics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="", help="index URL (default: a temp SQLite)")
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--questions", type=int, default=400)
    parser.add_argument("--max-chars", type=int, default=6000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        index = open_index(args.url or "sqlite:///", folder)
        try:
            built = time.perf_counter()
            passages, topics = fill(index, args.passages)
            built = time.perf_counter() - built
            knowledge = Knowledge(index, mode="prefer", max_chars=args.max_chars)
            rng = random.Random(22)
            times: list[float] = []
            found = 0
            for i in range(args.questions):
                topic, url = rng.choice(topics)
                question = f"How do I {topic.lower()}?"
                asked = (Message("user", question),)
                request = ChatRequest("m", "Be helpful.", asked, 1)
                page = url if i % 2 else None  # half of them from a page
                started = time.perf_counter()
                _, result = knowledge.consult(request, page_url=page)
                times.append((time.perf_counter() - started) * 1000)
                found += bool(result.sources)
        finally:
            index.close()
    times.sort()
    report = {
        "engine": (args.url or "sqlite:///").split(":", 1)[0],
        "passages": passages,
        "index_seconds": round(built, 1),
        "questions": len(times),
        "with_sources": found,
        "p50_ms": round(statistics.median(times), 2),
        "p95_ms": round(times[int(len(times) * 0.95) - 1], 2),
        "p99_ms": round(times[int(len(times) * 0.99) - 1], 2),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
