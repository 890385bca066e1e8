"""/widget.js on a hostile host page: open, chat, close, remember, phone layout,
and the host page driving it (methods, events, greeting, suggestions, language).

The host is a real site on another loopback origin whose CSP allows scripts
and frames from chatapp only, and whose stylesheet tries its best to hide or
distort anything it can reach.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import expect

from tests.browser import PHONE
from tests.browser import LocalSite
from tests.browser import PageWatch
from tests.browser import new_context
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"

HOSTILE_CSS = b"""
* { font-size: 40px !important; color: red !important;
    box-sizing: content-box !important; }
button, iframe, section, div { display: none !important; }
chatapp-widget { display: none !important; opacity: 0 !important;
                 transform: scale(0.1) !important; visibility: hidden !important; }
body > * { position: absolute !important; left: -9999px !important; }
"""

HOST_PAGE = """<!doctype html>
<html lang="en"><head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none';
      style-src 'self'; script-src {chat}; frame-src {chat}">
<title>A shop</title>
<link rel="stylesheet" href="/hostile.css">
{scripts}
</head><body><main><h1>A shop</h1><p>Things for sale.</p></main></body></html>"""


def widget_tag(chat: str, attrs: str = "") -> str:
    return f'<script src="{chat}/widget.js" defer {attrs}></script>'


@pytest.fixture
def site() -> Iterator[LocalSite]:
    site = LocalSite()
    yield site
    site.close()


@pytest.fixture
def service(
    service_factory: ServiceFactory, fake_provider: FakeProvider, site: LocalSite
) -> Any:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_EMBED_ORIGINS=site.origin)
    )
    chat = service.url
    pages = {
        "/": widget_tag(chat),
        "/other": widget_tag(chat),
        "/twice": widget_tag(chat) + widget_tag(chat),
        "/left": widget_tag(chat, 'data-position="left" data-title="Ask us" data-open'),
        "/bare": "",
    }
    for path, scripts in pages.items():
        html = HOST_PAGE.format(chat=chat, scripts=scripts)
        site.files[path] = (html.encode(), "text/html; charset=utf-8")
    site.files["/hostile.css"] = (HOSTILE_CSS, "text/css")
    return service


class Widget:
    """The widget as a visitor meets it on the host page."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.launcher = page.locator("chatapp-widget button[data-chatapp-launcher]")
        self.panel = page.locator("chatapp-widget [role=dialog]")
        self.frame = page.frame_locator("chatapp-widget iframe")
        self.textarea = self.frame.locator("form[data-chatapp-form] textarea")
        # The chat's own bar closes the panel: the widget shows no second one.
        self.closer = self.frame.locator("[data-chatapp-close]")

    def csp_violations(self) -> list[str]:
        return list(self.page.evaluate("() => window.__cspViolations || []"))


def open_page(context: BrowserContext, url: str) -> tuple[Widget, PageWatch]:
    page = context.new_page()
    watch = PageWatch()
    watch.attach(page)
    page.goto(url)
    widget = Widget(page)
    expect(widget.launcher).to_be_visible()
    return widget, watch


def test_widget_opens_chats_and_closes_on_a_hostile_page(
    context: BrowserContext, service: Any, site: LocalSite
) -> None:
    embeds: list[str] = []
    context.on(
        "request",
        lambda r: embeds.append(r.url) if urlsplit(r.url).path == "/embed" else None,
    )
    widget, watch = open_page(context, site.origin + "/")
    page = widget.page

    # Untouched by the host's CSS: a real, round, clickable button.
    box = widget.launcher.bounding_box()
    assert box is not None
    assert box["width"] == pytest.approx(56, abs=1)
    assert box["x"] + box["width"] > 1200  # bottom right
    expect(widget.launcher).to_have_attribute("aria-expanded", "false")
    expect(widget.panel).to_be_hidden()
    assert page.locator("chatapp-widget iframe").count() == 0
    assert embeds == []  # lazy: nothing loads before the first open

    widget.launcher.click()
    expect(widget.panel).to_be_visible()
    expect(widget.launcher).to_have_attribute("aria-expanded", "true")
    expect(widget.textarea).to_be_focused()
    assert len(embeds) == 1

    widget.textarea.fill(
        Behaviour(text="Hello from the widget.", delay_ms=5).as_directive()
    )
    widget.textarea.press("Enter")
    answer = widget.frame.locator('[data-role="assistant"]')
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".msg__body")).to_have_text("Hello from the widget.")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "widget-desktop.png"), animations="disabled")

    # Esc inside the chat closes the panel and gives focus back.
    widget.textarea.press("Escape")
    expect(widget.panel).to_be_hidden()
    expect(widget.launcher).to_be_focused()
    # And by keyboard again, Esc from the panel's own controls too.
    page.keyboard.press("Enter")
    expect(widget.panel).to_be_visible()
    widget.closer.focus()
    page.keyboard.press("Escape")
    expect(widget.panel).to_be_hidden()
    expect(widget.launcher).to_be_focused()

    assert widget.csp_violations() == []
    assert watch.page_errors == []
    assert watch.console_errors == []


def test_widget_remembers_open_across_the_sites_pages(
    context: BrowserContext, service: Any, site: LocalSite
) -> None:
    widget, _ = open_page(context, site.origin + "/")
    widget.launcher.click()
    expect(widget.panel).to_be_visible()

    widget.page.goto(site.origin + "/other")
    again = Widget(widget.page)
    expect(again.panel).to_be_visible()
    expect(again.frame.locator("form[data-chatapp-form][data-ready]")).to_be_attached()
    again.closer.click()
    expect(again.panel).to_be_hidden()

    widget.page.goto(site.origin + "/")
    expect(Widget(widget.page).launcher).to_be_visible()
    expect(Widget(widget.page).panel).to_be_hidden()


def test_widget_options_and_one_widget_per_page(
    context: BrowserContext, service: Any, site: LocalSite
) -> None:
    bare, _ = open_page_without_widget(context, site.origin + "/bare")
    baseline = set(bare.evaluate("() => Object.getOwnPropertyNames(window)"))

    widget, _ = open_page(context, site.origin + "/left")
    expect(widget.launcher).to_have_attribute("aria-label", "Ask us")
    expect(widget.panel).to_be_visible()  # data-open
    expect(widget.panel).to_have_accessible_name("Ask us")
    box = widget.launcher.bounding_box()
    assert box is not None
    assert box["x"] < 100  # data-position="left"
    added = set(widget.page.evaluate("() => Object.getOwnPropertyNames(window)"))
    assert len(added - baseline) <= 1

    twice, _ = open_page(context, site.origin + "/twice")
    expect(twice.page.locator("chatapp-widget")).to_have_count(1)
    expect(twice.launcher).to_have_count(1)


def open_page_without_widget(context: BrowserContext, url: str) -> tuple[Page, None]:
    page = context.new_page()
    page.goto(url)
    return page, None


def test_widget_goes_full_screen_on_a_phone(
    browser: Browser, service: Any, site: LocalSite
) -> None:
    context = new_context(
        browser, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2
    )
    try:
        widget, watch = open_page(context, site.origin + "/")
        widget.launcher.tap()
        expect(widget.panel).to_be_visible()
        box = widget.panel.bounding_box()
        assert box is not None
        assert (box["x"], box["y"]) == (0, 0)
        assert (box["width"], box["height"]) == (PHONE["width"], PHONE["height"])
        expect(widget.launcher).to_be_hidden()
        expect(
            widget.frame.locator("form[data-chatapp-form][data-ready]")
        ).to_be_attached()
        widget.textarea.fill(Behaviour(text="Small screen.", delay_ms=5).as_directive())
        widget.textarea.press("Enter")
        expect(widget.frame.locator('[data-role="assistant"] .msg__body')).to_have_text(
            "Small screen."
        )
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        widget.page.screenshot(path=str(SCREENSHOTS / "widget-phone.png"))
        # One header on a phone: the chat's own bar, with its close button.
        expect(widget.page.locator("chatapp-widget .head")).to_be_hidden()
        expect(widget.frame.locator(".bar")).to_be_visible()
        expect(widget.frame.locator("#chatapp-hint")).to_be_hidden()  # no keyboard
        widget.closer.tap()
        expect(widget.panel).to_be_hidden()
        expect(widget.launcher).to_be_visible()
        assert widget.csp_violations() == []
        assert watch.page_errors == []
    finally:
        context.close()


# -- driven by its host page --------------------------------------------------

PRODUCT_PAGE = """<!doctype html>
<html lang="de"><head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none';
      script-src 'self' {chat}; frame-src {chat}">
<title>Wanderschuh</title>
<script src="{chat}/widget.js" defer
        data-greeting="Hallo! Fragen Sie mich alles zu diesem Schuh."
        data-suggestions="Ist er wasserdicht? | Welche Größen gibt es?"></script>
<script src="/product.js" defer></script>
</head><body><main>
<h1>Wanderschuh</h1>
<button type="button" id="ask">Frage zu diesem Produkt</button>
<ol id="events"></ol>
</main></body></html>"""

# What a product page writes: a button that asks, and a log of the events.
PRODUCT_JS = b"""
const widget = () => document.querySelector('chatapp-widget');
const log = (line) => {
  const item = document.createElement('li');
  item.textContent = line;
  document.getElementById('events').append(item);
};
document.getElementById('ask').addEventListener('click', () => {
  widget().ask(document.body.dataset.question);
});
const watch = () => {
  const el = widget();
  if (!el) return setTimeout(watch, 10);
  el.addEventListener('chatapp:open', () => log('open'));
  el.addEventListener('chatapp:close', () => log('close'));
  el.addEventListener('chatapp:answer', (event) => {
    log('answer ' + JSON.stringify(event.detail));
  });
};
watch();
"""


@pytest.fixture
def product(service: Any, site: LocalSite) -> str:
    html = PRODUCT_PAGE.format(chat=service.url)
    site.files["/product"] = (html.encode(), "text/html; charset=utf-8")
    site.files["/product.js"] = (PRODUCT_JS, "text/javascript")
    return site.origin + "/product"


def chat_posts(context: BrowserContext) -> list[str]:
    posts: list[str] = []
    context.on(
        "request",
        lambda r: (
            posts.append(r.post_data or "")
            if r.method == "POST" and urlsplit(r.url).path == "/api/chat"
            else None
        ),
    )
    return posts


def test_ask_from_the_host_page_sends_exactly_one_turn_and_tells_the_answer(
    context: BrowserContext, product: str, fake_provider: FakeProvider
) -> None:
    posts = chat_posts(context)
    api: list[str] = []
    context.on("request", lambda r: api.append(urlsplit(r.url).path))
    widget, watch = open_page(context, product)
    page = widget.page
    question = Behaviour(text="Ja, er ist wasserdicht.", delay_ms=5).as_directive()
    page.evaluate("(q) => { document.body.dataset.question = q; }", question)
    # A forged answer from the host page itself must not become an event.
    page.evaluate(
        "() => window.postMessage({type: 'chatapp:answer', turn_id: 'forged',"
        " conversation_id: 'forged'}, '*')"
    )

    page.locator("#ask").click()

    expect(widget.panel).to_be_visible()
    answer = widget.frame.locator('[data-role="assistant"]')
    expect(answer).to_have_attribute("data-state", "done")
    expect(answer.locator(".msg__body")).to_have_text("Ja, er ist wasserdicht.")
    expect(widget.frame.locator('[data-role="user"]')).to_have_count(1)
    events = page.locator("#events li")
    expect(events).to_have_count(2)  # open, then the answer
    assert events.nth(0).text_content() == "open"
    detail = json.loads(str(events.nth(1).text_content()).removeprefix("answer "))
    assert len(posts) == 1
    # One request per turn: the answer came in the POST's own response.
    assert not [path for path in api if path.endswith("/events")]
    started = fake_provider.requests
    assert len(started) == 1
    assert detail["turn_id"] != "forged" and len(detail["turn_id"]) >= 8
    stored = widget.frame.locator("html").evaluate(
        "() => JSON.parse(localStorage.getItem('chatapp:v1'))"
    )
    assert detail["conversation_id"] == stored["conversationId"]

    # close() and toggle() from the host page, with their events.
    page.evaluate("() => document.querySelector('chatapp-widget').close()")
    expect(widget.panel).to_be_hidden()
    page.evaluate("() => document.querySelector('chatapp-widget').toggle()")
    expect(widget.panel).to_be_visible()
    expect(events).to_have_count(4)
    assert [events.nth(i).text_content() for i in (2, 3)] == ["close", "open"]
    # prefill() puts text in the box without sending it.
    page.evaluate("() => document.querySelector('chatapp-widget').prefill('Größe 44?')")
    expect(widget.textarea).to_have_value("Größe 44?")
    assert len(posts) == 1
    assert widget.csp_violations() == []
    assert watch.page_errors == []


def test_greeting_suggestions_and_language_come_from_the_host_page(
    context: BrowserContext, product: str, fake_provider: FakeProvider
) -> None:
    posts = chat_posts(context)
    widget, _ = open_page(context, product)
    widget.launcher.click()

    frame = widget.frame
    expect(frame.locator("html")).to_have_attribute("lang", "de")  # the host's
    expect(frame.locator("[data-chatapp-greeting]")).to_have_text(
        "Hallo! Fragen Sie mich alles zu diesem Schuh."
    )
    suggestions = frame.locator("[data-chatapp-suggestion]")
    expect(suggestions).to_have_text(["Ist er wasserdicht?", "Welche Größen gibt es?"])
    expect(widget.closer).to_have_accessible_name("Chat schließen")
    # One header: the chat's bar; the widget's own title bar is gone.
    expect(widget.page.locator("chatapp-widget .head")).to_be_hidden()

    suggestions.nth(1).click()

    user = frame.locator('[data-role="user"] .msg__body')
    expect(user).to_have_text("Welche Größen gibt es?")
    expect(frame.locator('[data-role="assistant"]')).to_have_attribute(
        "data-state", "done"
    )
    expect(frame.locator("[data-chatapp-welcome]")).to_be_hidden()
    assert len(posts) == 1
    assert json.loads(posts[0])["message"] == "Welche Größen gibt es?"
