"""`flask --app wsgi knowledge …`, and the service's own re-crawl under gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from flask import Flask

from chatapp import create_app
from chatapp.config import load_config
from chatapp.errors import ConfigError
from chatapp.knowledge.lock import FileLock
from chatapp.knowledge.sqlite_index import SqliteIndex
from tests.conftest import ROOT
from tests.conftest import RedisServer
from tests.conftest import ServiceFactory
from tests.conftest import wait_for
from tests.site import ShopSite

FIXTURES = Path(__file__).parent / "fixtures" / "site"


@pytest.fixture
def site() -> Iterator[ShopSite]:
    with ShopSite() as running:
        # The slow page would hold every crawl for the default 30 s deadline;
        # the crawler's own tests cover it with a short one.
        running.listed.pop("/slow.html")
        yield running


def app_for(tmp_path: Path, **settings: object) -> Flask:
    config = {"KNOWLEDGE_URL": f"sqlite:///{tmp_path / 'knowledge.sqlite3'}"}
    config.update({k: v for k, v in settings.items()})
    return create_app(config)


def test_flask_cli_crawls_the_sources_with_progress_and_a_summary(
    tmp_path: Path, site: ShopSite
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHATAPP_")}
    env["CHATAPP_KNOWLEDGE_URL"] = f"sqlite:///{tmp_path / 'knowledge.sqlite3'}"
    env["CHATAPP_KNOWLEDGE_SOURCES"] = site.sitemap
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "knowledge", "crawl"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"disallowed  {site.url('/private.html')}" in lines
    assert any(
        line.startswith(f"indexed     {site.url('/returns.html')} ") for line in lines
    )
    assert lines[-1].startswith("crawled ") and "indexed" in lines[-1]
    index = SqliteIndex(tmp_path / "knowledge.sqlite3")
    assert index.document(site.url("/shipping.html")) is not None
    index.close()


def test_add_list_stats_and_remove(tmp_path: Path) -> None:
    app = app_for(tmp_path)
    runner = app.test_cli_runner()
    added = runner.invoke(
        args=[
            "knowledge",
            "add",
            str(FIXTURES / "faq.md"),
            str(FIXTURES / "tents"),
            "--base-url",
            "https://shop.test/help/",
        ]
    )
    assert added.exit_code == 0, added.output
    listed = runner.invoke(args=["knowledge", "list"]).output.splitlines()
    urls = [line.split("\t")[0] for line in listed]
    assert urls == [
        "https://shop.test/help/alpine.html",
        "https://shop.test/help/faq.md",
        "https://shop.test/help/summit.html",
    ]
    assert "Frequently asked questions" in listed[1]
    stats = runner.invoke(args=["knowledge", "stats"]).output
    assert "documents  3" in stats and "engine     sqlite" in stats
    removed = runner.invoke(
        args=["knowledge", "remove", "https://shop.test/help/faq.md"]
    )
    assert removed.exit_code == 0
    again = runner.invoke(args=["knowledge", "remove", "https://shop.test/help/faq.md"])
    assert again.exit_code == 1 and "not in the index" in again.output


def test_add_takes_a_page_by_url_and_honours_robots(
    tmp_path: Path, site: ShopSite
) -> None:
    runner = app_for(tmp_path).test_cli_runner()
    ok = runner.invoke(args=["knowledge", "add", site.url("/shipping.html")])
    assert ok.exit_code == 0 and ok.output.startswith("indexed")
    refused = runner.invoke(args=["knowledge", "add", site.url("/private.html")])
    assert refused.exit_code == 1 and "disallowed" in refused.output
    assert site.hits["/private.html"] == 0


def test_add_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    picture = tmp_path / "logo.png"
    picture.write_bytes(b"\x89PNG")
    runner = app_for(tmp_path).test_cli_runner()
    result = runner.invoke(
        args=["knowledge", "add", str(picture), str(tmp_path / "missing.md")]
    )
    assert result.exit_code == 1
    assert "unsupported" in result.output and "no such file" in result.output


def test_a_second_crawler_is_turned_away_while_one_runs(
    tmp_path: Path, site: ShopSite
) -> None:
    app = app_for(tmp_path, KNOWLEDGE_SOURCES=(site.sitemap,))
    held = FileLock(tmp_path / "knowledge.sqlite3.crawl-lock")
    assert held.acquire()
    try:
        result = app.test_cli_runner().invoke(args=["knowledge", "crawl"])
    finally:
        held.release()
    assert result.exit_code == 1 and "another crawler is running" in result.output
    assert site.hits["/sitemap.xml"] == 0


@pytest.mark.e2e
@pytest.mark.redis
def test_the_service_crawls_its_sources_at_start_up_with_one_worker_of_two(
    tmp_path: Path,
    site: ShopSite,
    service_factory: ServiceFactory,
    redis_server: RedisServer,
) -> None:
    redis_server.flush()
    db = tmp_path / "knowledge.sqlite3"
    service = service_factory(
        CHATAPP_REDIS_URL=redis_server.url,
        CHATAPP_KNOWLEDGE="on",
        CHATAPP_KNOWLEDGE_URL=f"sqlite:///{db}",
        CHATAPP_KNOWLEDGE_SOURCES=site.sitemap,
        CHATAPP_WORKERS="2",
    )
    index = SqliteIndex(db)

    def crawled() -> bool:
        return (
            db.exists()
            and index.document(site.url("/gone.html")) is None
            and (
                site.hits["/gone.html"] > 0
                and index.document(site.url("/faq.md")) is not None
            )
        )

    wait_for(crawled, 60, "the start-up crawl")

    def counted() -> str:
        text = requests.get(service.url + "/metrics", timeout=5).text
        return text if "\nchatapp_knowledge_documents " in text else ""

    # The gauge is set when the crawl has ended (pages are fetched several
    # at a time, so the pages above may be done before the others).
    metrics = wait_for(counted, 30, "the crawl's metrics")
    assert index.search("express delivery")[0].url == site.url("/shipping.html")
    assert site.hits["/private.html"] == 0
    documents = len(index.documents())
    index.close()
    indexed = f'chatapp_knowledge_crawl_pages_total{{outcome="indexed"}} {documents}.0'
    assert indexed in metrics
    assert 'chatapp_knowledge_crawl_pages_total{outcome="disallowed"} 1.0' in metrics
    assert f"\nchatapp_knowledge_documents {documents}.0" in metrics
    assert site.hits["/sitemap.xml"] == 1  # one worker crawled, the other did not


@pytest.mark.e2e
def test_a_worker_mid_crawl_quits_when_told(
    tmp_path: Path, service_factory: ServiceFactory
) -> None:
    """A crawl's page in flight must not hold the worker at exit. It once
    did: concurrent.futures' exit hook waited on its threads (greenlets,
    under gevent) until the page's 30 s deadline, and gunicorn killed the
    worker first."""
    with ShopSite() as site:  # with its page that trickles a byte at a time
        service = service_factory(
            CHATAPP_KNOWLEDGE="on",
            CHATAPP_KNOWLEDGE_URL=f"sqlite:///{tmp_path / 'knowledge.sqlite3'}",
            CHATAPP_KNOWLEDGE_SOURCES=site.sitemap,
        )
        wait_for(lambda: site.hits["/slow.html"] > 0, 60, "the slow page's fetch")
        assert service.proc is not None
        service.signal_stop()
        # gunicorn gives a worker 30 s (graceful_timeout) before it kills it.
        assert service.proc.wait(20) == 0


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHATAPP_KNOWLEDGE_URL", "mysql://db/knowledge"),
        ("CHATAPP_KNOWLEDGE_SOURCES", "https://ok.test/sitemap.xml ftp://x/y"),
        ("CHATAPP_KNOWLEDGE_MODE", "sometimes"),
        ("CHATAPP_KNOWLEDGE_REFRESH", "0"),
        ("CHATAPP_EMBEDDINGS_BASE_URL", "localhost:11434"),
    ],
)
def test_bad_knowledge_settings_stop_start_up_with_one_line(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


def test_knowledge_settings_have_spec_defaults() -> None:
    config = load_config({"OPENAI_API_KEY": "sk-x"})
    assert config.knowledge is False
    assert config.knowledge_url == "sqlite:///"
    assert config.knowledge_sources == ()
    assert config.knowledge_refresh == 86400.0
    assert config.knowledge_mode == "prefer"
    assert config.knowledge_max_chars == 6000
    assert config.embeddings_model == ""
    assert config.embeddings_base_url == "https://api.openai.com/v1"
    assert config.embeddings_api_key == "sk-x"
