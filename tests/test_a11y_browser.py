"""Accessibility checked by a machine: axe-core in Chromium, WCAG 2.1 A and AA.

axe-core is vendored for the tests only (`tests/vendor/axe-core/`, with its
licence) and evaluated into the page through the DevTools protocol, so the
pages keep their strict CSP. Each page is checked with a conversation on it
(Markdown, a code line wider than the answer, a table wider than the page,
a refusal notice),
in light and dark, on a desktop and on a phone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Frame
from playwright.sync_api import Page
from playwright.sync_api import expect

from tests.browser import PHONE
from tests.browser import ChatPage
from tests.browser import LocalSite
from tests.browser import new_context
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

AXE = Path(__file__).resolve().parent / "vendor" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
WIDE_TABLE = (
    "| step | "
    + " | ".join(f"column {i}" for i in range(11))
    + " |\n|"
    + " --- |" * 12
    + "\n| 1 | read the [docs](https://example.com) | "
    + " | ".join(f"value {i}" for i in range(10))
    + " |"
)
ANSWER = (
    "Here is **how**, with `code`:\n\n"
    "```python\n"
    + "x = "
    + " + ".join(["value"] * 40)
    + "  # a long line\n```\n\n"
    + WIDE_TABLE
    + "\n\n- one\n- two\n\n> a quote"
)
WIDGET_HOST = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>A shop</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<script src="{chat}/widget.js" defer data-title="Ask us"
        data-greeting="Hello! Ask me about this shop."
        data-suggestions="Do you ship abroad? | What does delivery cost?"></script>
</head><body><main><h1>A shop</h1></main></body></html>"""


def axe_violations(target: Page | Frame, include: str | None = None) -> list[str]:
    """Run axe-core in a page or frame; describe each violation in one line."""
    if not target.evaluate("() => typeof window.axe === 'object'"):
        target.evaluate(AXE.read_text(encoding="utf-8"))
    results = target.evaluate(
        """async ([tags, include]) => window.axe.run(
             include ? { include: [include] } : document,
             { runOnly: { type: 'tag', values: tags }, iframes: false })""",
        [WCAG_21_AA, include],
    )
    return [
        f"{v['id']} ({v['impact']}): {v['help']} -> "
        + "; ".join(" ".join(map(str, n["target"])) for n in v["nodes"][:5])
        for v in results["violations"]
    ]


@pytest.fixture(params=["light", "dark"])
def scheme_context(
    request: pytest.FixtureRequest, browser: Browser
) -> Iterator[BrowserContext]:
    context = new_context(browser, color_scheme=request.param)
    yield context
    context.close()


@pytest.fixture(
    params=[
        ("light", "desktop"),
        ("dark", "desktop"),
        ("light", "phone"),
        ("dark", "phone"),
    ],
    ids=lambda p: "-".join(p),
)
def device_context(
    request: pytest.FixtureRequest, browser: Browser
) -> Iterator[BrowserContext]:
    """Light and dark, each on a desktop and on a 390 px phone."""
    scheme, device = request.param
    options: dict[str, Any] = {"color_scheme": scheme}
    if device == "phone":
        options.update(viewport=PHONE, is_mobile=True, has_touch=True)
    context = new_context(browser, **options)
    yield context
    context.close()


def converse(chat: ChatPage) -> None:
    """Put a Markdown answer and a refusal notice on the page."""
    chat.send(Behaviour(text=ANSWER, delay_ms=2).as_directive())
    chat.wait_answer_finished()
    chat.send(Behaviour(text="never", status=500).as_directive())
    expect(chat.errors.last).to_be_visible()
    chat.wait_idle()


@pytest.mark.parametrize("path", ["/", "/embed"])
def test_pages_have_no_wcag_violations(
    device_context: BrowserContext, openai_service: Any, path: str
) -> None:
    chat = ChatPage(device_context.new_page(), openai_service.url).open(path)
    assert axe_violations(chat.page) == []  # the empty page
    converse(chat)
    # The wide table and the long code line really overflow: regions that
    # scroll sideways, which axe requires to be reachable by keyboard.
    assert (
        chat.page.evaluate(
            """() => [...document.querySelectorAll('.table-scroll, pre')]
             .filter((el) => el.scrollWidth > el.clientWidth).length"""
        )
        >= 2
    )
    assert axe_violations(chat.page) == []


def test_arabic_page_with_feedback_and_confirm_has_no_wcag_violations(
    scheme_context: BrowserContext, openai_service: Any
) -> None:
    """Right to left, in light and dark, with the visitor's own controls open."""
    chat = ChatPage(scheme_context.new_page(), openai_service.url).open("/?lang=ar")
    assert axe_violations(chat.page) == []
    converse(chat)
    answer = chat.answers.last
    answer.locator('[data-chatapp-feedback="down"]').click()
    expect(answer.locator("[data-chatapp-feedback-form]")).to_be_visible()
    assert axe_violations(chat.page) == []
    chat.page.locator("[data-chatapp-delete]").click()
    expect(chat.page.locator("[data-chatapp-confirm]")).to_be_visible()
    assert axe_violations(chat.page) == []


@pytest.fixture
def widget_site(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> Iterator[tuple[LocalSite, Any]]:
    site = LocalSite()
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_EMBED_ORIGINS=site.origin)
    )
    site.html = WIDGET_HOST.format(chat=service.url).encode()
    yield site, service
    site.close()


def test_open_widget_panel_has_no_wcag_violations(
    scheme_context: BrowserContext, widget_site: tuple[LocalSite, Any]
) -> None:
    site, _ = widget_site
    page = scheme_context.new_page()
    page.goto(site.origin + "/")
    launcher = page.locator("chatapp-widget button[data-chatapp-launcher]")
    expect(launcher).to_be_visible()
    assert axe_violations(page, "chatapp-widget") == []  # closed

    launcher.click()
    frame_locator = page.frame_locator("chatapp-widget iframe")
    frame_locator.locator("form[data-chatapp-form][data-ready]").wait_for()
    frame = page.frame(url=lambda url: url.split("?")[0].endswith("/embed"))
    assert frame is not None
    # The greeting and the suggested questions, before the visitor writes.
    expect(frame_locator.locator("[data-chatapp-suggestion]")).to_have_count(2)
    assert axe_violations(frame) == []
    textarea = frame_locator.locator("form[data-chatapp-form] textarea")
    textarea.fill(Behaviour(text=ANSWER, delay_ms=2).as_directive())
    textarea.press("Enter")
    expect(frame_locator.locator('[data-role="assistant"]')).to_have_attribute(
        "data-state", "done"
    )

    assert axe_violations(page, "chatapp-widget") == []
    assert axe_violations(frame) == []
