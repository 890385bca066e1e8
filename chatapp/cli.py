"""`flask --app wsgi knowledge …`: fill and inspect the site-knowledge index."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import click
from flask import Flask
from flask import current_app
from flask.cli import AppGroup

from chatapp.extensions import settings
from chatapp.knowledge.engines import open_index
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import KnowledgeError
from chatapp.knowledge.index import sqlite_path
from chatapp.knowledge.lock import CrawlLock
from chatapp.knowledge.lock import FileLock
from chatapp.knowledge.lock import RedisLock

if TYPE_CHECKING:
    from chatapp.knowledge.crawl import CrawlReport
    from chatapp.knowledge.crawl import PageResult

# The crawler, trafilatura, lxml and numpy are imported where they are used:
# a worker with knowledge off never loads them (about 20 MB and a second).


class KnowledgeGroup(AppGroup):
    """The commands' one error edge: index and fetch failures as one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KnowledgeError as exc:
            raise click.ClickException(str(exc)) from exc


knowledge = KnowledgeGroup(
    "knowledge", help="Fill and inspect the site-knowledge index."
)

SUFFIX_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".xhtml": "application/xhtml+xml",
    ".md": "text/markdown",
    ".markdown": "text/markdown",
    ".txt": "text/plain",
    ".text": "text/plain",
}
# Who added a document from the command line (the crawler never drops it).
CLI_OWNER = "cli"


def init_app(app: Flask) -> None:
    """Register the commands; in a gunicorn worker, start the re-crawl loop."""
    app.cli.add_command(knowledge)
    settings = app.extensions["chatapp"].settings
    # Only a serving worker re-crawls: the same factory also builds the app
    # for these commands and for the tests, which must not start crawling.
    serving = os.environ.get("SERVER_SOFTWARE", "").startswith("gunicorn/")
    if serving and settings.knowledge and settings.knowledge_sources:
        from chatapp.knowledge import refresh

        index = knowledge_index(app)
        metrics = app.extensions["chatapp"].metrics

        def count(report: CrawlReport) -> None:
            stats = index.stats()
            metrics.crawl_finished(report.counts(), stats.documents, stats.passages)

        refresh.start(
            index,
            settings.knowledge_sources,
            crawl_lock(app),
            settings.knowledge_refresh,
            on_report=count,
        )


def crawl_lock(app: Flask) -> CrawlLock:
    """Lock crawls in Redis when the deployment shares one, else in a file."""
    state = app.extensions["chatapp"]
    if state.redis is not None:
        return RedisLock(state.redis)
    # Beside the SQLite file: every worker of the host that writes it agrees.
    index_file = sqlite_path(state.settings.knowledge_url, app.instance_path)
    if index_file is not None:
        return FileLock(index_file.with_name(index_file.name + ".crawl-lock"))
    return FileLock(Path(app.instance_path) / "knowledge.crawl-lock")


def knowledge_index(app: Flask) -> Index:
    """Open the index the settings name, hybrid when embeddings are configured."""
    from chatapp.knowledge.embed import make_embedder

    settings = app.extensions["chatapp"].settings
    embedder = make_embedder(
        settings.embeddings_model,
        settings.embeddings_base_url,
        settings.embeddings_api_key,
    )
    return open_index(settings.knowledge_url, app.instance_path, embedder)


def _index() -> Index:
    return knowledge_index(current_app)


@knowledge.command("crawl")
def crawl_command() -> None:
    """Crawl CHATAPP_KNOWLEDGE_SOURCES now, print each page, then a summary."""
    from chatapp.knowledge.crawl import Crawler

    sources = settings().knowledge_sources
    if not sources:
        raise click.ClickException("CHATAPP_KNOWLEDGE_SOURCES is empty")
    lock = crawl_lock(current_app)
    if not lock.acquire():
        raise click.ClickException("another crawler is running; try again later")
    index = _index()
    try:
        report = Crawler(
            index, sources, progress=_print_result, keepalive=lock.renew
        ).crawl()
    finally:
        lock.release()
        index.close()
    counts = ", ".join(
        f"{n} {outcome}" for outcome, n in sorted(report.counts().items())
    )
    pages = len(report.results)
    click.echo(
        f"crawled {pages} URLs in {report.seconds:.1f}s "
        f"({pages / max(report.seconds, 1e-9):.1f}/s, "
        f"{report.bytes / 1e6:.1f} MB): {counts or 'nothing'}"
    )


def _print_result(result: PageResult) -> None:
    detail = f" ({result.detail})" if result.detail else ""
    passages = f" {result.passages} passages" if result.passages else ""
    click.echo(f"{result.outcome:<11} {result.url}{passages}{detail}")


@knowledge.command("add")
@click.argument("items", nargs=-1, required=True, metavar="PATH_OR_URL...")
@click.option(
    "--base-url",
    default="",
    help="Cite files as this URL + their path under the given folder "
    "(e.g. https://example.com/docs/); else as file:// URLs.",
)
def add_command(items: tuple[str, ...], base_url: str) -> None:
    """Index files (Markdown, HTML, text; folders recursively) or pages by URL."""
    index = _index()
    failed = 0
    try:
        for item in items:
            if item.startswith(("http://", "https://")):
                failed += _add_url(index, item)
                continue
            root = Path(item)
            if not root.exists():
                click.echo(f"failed      {item} (no such file)", err=True)
                failed += 1
                continue
            for path in _files(root):
                failed += _add_file(index, path, root, base_url)
    finally:
        index.close()
    if failed:
        sys.exit(1)


def _files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    return sorted(
        p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIX_TYPES
    )


def _add_file(index: Index, path: Path, root: Path, base_url: str) -> int:
    from chatapp.knowledge.extract import MAX_INPUT_CHARS
    from chatapp.knowledge.extract import extract

    kind = SUFFIX_TYPES.get(path.suffix.lower())
    if kind is None:
        click.echo(f"unsupported {path} (not .md, .html or .txt)", err=True)
        return 1
    if base_url:
        relative = path.relative_to(root) if root.is_dir() else Path(path.name)
        url = base_url.rstrip("/") + "/" + relative.as_posix()
    else:
        url = path.resolve().as_uri()
    with path.open("rb") as f:
        content = f.read(MAX_INPUT_CHARS)
    document = extract(
        content, url=url, content_type=kind, modified=path.stat().st_mtime
    )
    count = index.replace(
        url,
        document.title,
        list(document.passages),
        modified=document.modified,
        owner=CLI_OWNER,
    )
    click.echo(f"indexed     {url} {count} passages")
    return 0


def _add_url(index: Index, url: str) -> int:
    from chatapp.knowledge.crawl import Crawler
    from chatapp.knowledge.crawl import Listed
    from chatapp.knowledge.crawl import PageResult

    crawler = Crawler(index, [url], owner=CLI_OWNER)
    if not crawler.allowed(url):
        _print_result(PageResult(url, "disallowed", detail="robots.txt"))
        return 1
    result = crawler.page(Listed(url))
    _print_result(result)
    return 0 if result.outcome in ("indexed", "unchanged") else 1


@knowledge.command("list")
def list_command() -> None:
    """List the indexed documents: URL, passages, title."""
    index = _index()
    try:
        for info in index.documents():
            click.echo(f"{info.url}\t{info.passages}\t{info.title}")
    finally:
        index.close()


@knowledge.command("remove")
@click.argument("url")
def remove_command(url: str) -> None:
    """Remove the document at URL from the index."""
    index = _index()
    try:
        removed = index.remove(url)
    finally:
        index.close()
    if not removed:
        raise click.ClickException(f"{url} is not in the index")
    click.echo(f"removed {url}")


@knowledge.command("stats")
def stats_command() -> None:
    """Print how many documents and passages the index holds, and its size."""
    index = _index()
    try:
        stats = index.stats()
    finally:
        index.close()
    engine = settings().knowledge_url.split(":", 1)[0]
    click.echo(f"engine     {engine}")
    click.echo(f"documents  {stats.documents}")
    click.echo(f"passages   {stats.passages}")
    click.echo(f"size       {stats.bytes / 1e6:.1f} MB")
