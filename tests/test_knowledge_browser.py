"""Citations on the page: [n] links to its source, a list of sources follows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect

from chatapp.knowledge.engines import open_index
from chatapp.knowledge.index import Passage
from tests.browser import ChatPage
from tests.browser import LocalSite
from tests.browser import new_context
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.test_a11y_browser import axe_violations
from tests.test_knowledge_e2e import SHIPPING_TEXT
from tests.test_knowledge_e2e import SITE
from tests.test_knowledge_e2e import Owner
from tests.test_knowledge_e2e import knowledge_settings

pytestmark = pytest.mark.browser

RETURNS = f"{SITE}/returns"
SHIPPING = f"{SITE}/shipping"


@pytest.fixture
def service(
    service_factory: ServiceFactory, fake_provider: FakeProvider, tmp_path: Path
) -> Service:
    started = service_factory(**knowledge_settings(fake_provider, tmp_path))
    owner = Owner(started.url)
    owner.put(
        RETURNS,
        "Refunds are paid within five working days of the parcel's return.",
        title="Returns <b>policy</b>",
    )
    owner.put(SHIPPING, SHIPPING_TEXT, title="Shipping")
    return started


@pytest.fixture(params=["light", "dark"])
def scheme_context(
    request: pytest.FixtureRequest, browser: Browser
) -> Iterator[BrowserContext]:
    context = new_context(browser, color_scheme=request.param)
    yield context
    context.close()


def test_citations_become_links_and_the_sources_follow_the_answer(
    scheme_context: BrowserContext, service: Service, fake_provider: FakeProvider
) -> None:
    page = scheme_context.new_page()
    posted: list[dict[str, Any]] = []
    page.on(
        "request",
        lambda r: (
            posted.append(json.loads(r.post_data or "{}"))
            if r.url.endswith("/api/chat") and r.method == "POST"
            else None
        ),
    )
    # The page the widget or the plugin frames the chat in.
    chat = ChatPage(page, service.url).open(f"/embed?page_url={RETURNS}%23top")
    answer = (
        "Refunds take five working days [1]; parcels leave on Mondays [2]. See [7]."
    )
    chat.send(Behaviour(text=answer, delay_ms=2).as_directive())
    chat.wait_answer_finished()
    assert posted[-1]["page_url"] == RETURNS

    body = chat.answers.last.locator(".msg__body")
    expect(body).to_contain_text("See [7].")  # no such source: plain text
    cites = body.locator("a.cite")
    expect(cites).to_have_count(2)
    # The visitor's page is favoured: it is source 1.
    expect(cites.nth(0)).to_have_attribute("href", RETURNS)
    expect(cites.nth(1)).to_have_attribute("href", SHIPPING)
    expect(
        page.get_by_role("link", name="source 1: Returns <b>policy</b>")
    ).to_have_count(1)
    for link in [cites.nth(0), cites.nth(1)]:
        expect(link).to_have_attribute("target", "_blank")
        expect(link).to_have_attribute("rel", "noopener noreferrer")

    listed = chat.answers.last.locator("[data-chatapp-sources]")
    expect(listed.get_by_role("heading", name="Sources")).to_be_visible()
    items = listed.locator("li a")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_text("Returns <b>policy</b> (opens in a new tab)")
    expect(items.nth(0)).to_have_attribute("href", RETURNS)
    expect(items.nth(1)).to_have_attribute("href", SHIPPING)
    expect(items.nth(1)).to_have_attribute("rel", "noopener noreferrer")
    assert listed.locator("b").count() == 0  # a title is text, never markup

    # Reachable by keyboard, in reading order: the first citation first.
    cites.nth(0).focus()
    expect(cites.nth(0)).to_be_focused()
    page.keyboard.press("Tab")
    expect(cites.nth(1)).to_be_focused()
    assert axe_violations(page) == []
    assert chat.watch.console_errors == [] and chat.watch.page_errors == []


def test_a_reload_shows_the_answers_citations_and_sources_again(
    context: BrowserContext, service: Service
) -> None:
    chat = ChatPage(context.new_page(), service.url).open("/")
    answer = "Refunds take five working days [1]; parcels leave on Mondays [2]."
    chat.send(Behaviour(text=answer, delay_ms=2).as_directive())
    chat.wait_answer_finished()
    expect(chat.answers.last.locator("a.cite")).to_have_count(2)

    chat.reload()
    expect(chat.answers).to_have_count(1)
    restored = chat.answers.last
    expect(restored.locator(".msg__body")).to_contain_text("five working days")
    cites = restored.locator(".msg__body a.cite")
    expect(cites).to_have_count(2)
    expect(cites.nth(0)).to_have_attribute("href", RETURNS)
    expect(cites.nth(1)).to_have_attribute("href", SHIPPING)
    expect(cites.nth(0)).to_have_attribute("rel", "noopener noreferrer")
    listed = restored.locator("[data-chatapp-sources]")
    expect(listed.get_by_role("heading", name="Sources")).to_be_visible()
    items = listed.locator("li a")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_have_text("Returns <b>policy</b> (opens in a new tab)")
    expect(items.nth(1)).to_have_attribute("href", SHIPPING)
    assert axe_violations(chat.page) == []
    assert chat.watch.console_errors == [] and chat.watch.page_errors == []


def test_the_downloaded_transcript_lists_the_sources_under_the_answer(
    context: BrowserContext, service: Service
) -> None:
    chat = ChatPage(context.new_page(), service.url).open("/")
    answer = "Refunds take five working days [1]; parcels leave on Mondays [2]."
    chat.send(Behaviour(text=answer, delay_ms=2).as_directive())
    chat.wait_answer_finished()
    expect(chat.answers.last.locator("[data-chatapp-sources] li")).to_have_count(2)

    with chat.page.expect_download() as info:
        chat.page.locator("[data-chatapp-download]").click()

    text = Path(info.value.path()).read_text(encoding="utf-8")
    # As the page lists them: by number, the title a link to the page; the
    # title's markup is escaped, text to read, never formatting.
    assert text.endswith(
        f"{answer}\n\nSources:\n\n"
        f"1. [Returns \\<b\\>policy\\</b\\>](<{RETURNS}>)\n"
        f"2. [Shipping](<{SHIPPING}>)\n"
    )
    chat.assert_clean()


def test_an_answer_without_knowledge_has_no_sources(
    context: BrowserContext, openai_service: Any
) -> None:
    chat = ChatPage(context.new_page(), openai_service.url).open("/")
    chat.send(Behaviour(text="Plain answer [1].", delay_ms=2).as_directive())
    chat.wait_answer_finished()
    expect(chat.answers.last.locator(".msg__body")).to_have_text("Plain answer [1].")
    expect(chat.page.locator("[data-chatapp-sources], a.cite")).to_have_count(0)


def test_the_widget_sends_its_host_page_as_page_url(
    context: BrowserContext,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    tmp_path: Path,
) -> None:
    site = LocalSite()
    try:
        chat = service_factory(
            **knowledge_settings(
                fake_provider, tmp_path, CHATAPP_EMBED_ORIGINS=site.origin
            )
        )
        Owner(chat.url).put(f"{site.origin}/jackets", "The Alpha jacket costs 120.")
        host = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>Jackets</title><script src="{chat.url}/widget.js" defer>'
            "</script></head><body><main><h1>Jackets</h1></main></body></html>"
        )
        site.files["/jackets"] = (host.encode(), "text/html; charset=utf-8")
        page = context.new_page()
        page.goto(f"{site.origin}/jackets#sizes")
        page.locator("chatapp-widget button[data-chatapp-launcher]").click()
        frame = page.frame_locator("chatapp-widget iframe")
        textarea = frame.locator("form[data-chatapp-form] textarea")
        expect(textarea).to_be_focused()
        src = page.locator("chatapp-widget iframe").get_attribute("src") or ""
        query = parse_qs(urlsplit(src).query)
        assert query["page_url"] == [f"{site.origin}/jackets"]
        textarea.fill("How much is the Alpha jacket?")
        textarea.press("Enter")
        frame.locator("[data-chatapp-sources] li a").wait_for()
        [call] = [r for r in fake_provider.requests if r.path.endswith("/completions")]
        assert call.body is not None
        # The host page is the document: the model is told it is the current one.
        assert 'page=\\"current\\"' in json.dumps(call.body)
    finally:
        site.close()


def test_the_widget_reads_its_host_page_again_at_each_message(
    context: BrowserContext,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    tmp_path: Path,
) -> None:
    site = LocalSite()
    try:
        chat = service_factory(
            **knowledge_settings(
                fake_provider, tmp_path, CHATAPP_EMBED_ORIGINS=site.origin
            )
        )
        owner = Owner(chat.url)
        owner.put(f"{site.origin}/jackets", "The Alpha jacket costs 120.")
        owner.put(f"{site.origin}/coats", "The Beta coat costs 150.")
        host = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<title>Shop</title><script src="{chat.url}/widget.js" defer>'
            "</script></head><body><main><h1>Shop</h1></main></body></html>"
        )
        site.files["/jackets"] = (host.encode(), "text/html; charset=utf-8")
        page = context.new_page()
        posted: list[dict[str, Any]] = []
        page.on(
            "request",
            lambda r: (
                posted.append(json.loads(r.post_data or "{}"))
                if r.url.endswith("/api/chat") and r.method == "POST"
                else None
            ),
        )
        page.goto(f"{site.origin}/jackets")
        page.locator("chatapp-widget button[data-chatapp-launcher]").click()
        frame = page.frame_locator("chatapp-widget iframe")
        textarea = frame.locator("form[data-chatapp-form] textarea")
        answers = frame.locator("[data-role='assistant'][data-state='done']")
        # Wired up, and set up by the widget (which says it names its page).
        frame.locator("form[data-chatapp-form][data-ready]").wait_for()
        expect(textarea).to_be_focused()
        textarea.fill("How much is the Alpha jacket?")
        textarea.press("Enter")
        expect(answers).to_have_count(1, timeout=20_000)
        assert posted[-1]["page_url"] == f"{site.origin}/jackets"

        # The single-page app moves on; the widget's frame stays as it was.
        page.evaluate("() => history.pushState({}, '', '/coats#reviews')")
        textarea.fill("And how much is the Beta coat?")
        textarea.press("Enter")
        expect(answers).to_have_count(2, timeout=20_000)
        assert posted[-1]["page_url"] == f"{site.origin}/coats"
        chat_calls = [
            r for r in fake_provider.requests if r.path.endswith("/completions")
        ]
        assert chat_calls[-1].body is not None
        system = str(chat_calls[-1].body["messages"][0]["content"])
        # The new page is the one the model is told the visitor reads.
        current = system.index('page="current"')
        assert "Beta coat" in system[current : current + 400]
        assert axe_violations(page) == []
    finally:
        site.close()


def test_a_source_that_is_no_web_page_is_named_never_linked(
    context: BrowserContext,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    tmp_path: Path,
) -> None:
    chat_service = service_factory(**knowledge_settings(fake_provider, tmp_path))
    # As `flask --app wsgi knowledge add faq.md` files it, without --base-url.
    index = open_index(f"sqlite:///{tmp_path / 'knowledge.sqlite3'}", tmp_path)
    try:
        url = "file:///srv/help/faq.md"
        index.replace(
            url, "Help FAQ", [Passage(url, "Help FAQ", "", "Gift wrap is free.")]
        )
    finally:
        index.close()
    chat = ChatPage(context.new_page(), chat_service.url).open("/")
    chat.send(Behaviour(text="Gift wrap is free [1].", delay_ms=2).as_directive())
    chat.wait_answer_finished()
    listed = chat.answers.last.locator("[data-chatapp-sources] li")
    expect(listed).to_have_text("Help FAQ")
    expect(chat.page.locator("[data-chatapp-sources] a, a.cite")).to_have_count(0)
    expect(chat.answers.last.locator(".msg__body")).to_have_text(
        "Gift wrap is free [1]."
    )
