"""The page in the visitor's language, in headless Chromium through gunicorn:
German and Arabic pages say no English word, Arabic mirrors its layout, and
numbers are written by Intl."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect

from chatapp import i18n
from tests.browser import ChatPage
from tests.browser import new_context
from tests.fake_provider import Behaviour

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)

SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
ANSWER = (
    "Antwort **eins**:\n\n```python\nx = 1\n```\n\n"
    "| Spalte | Wert |\n| --- | --- |\n| a | 1 |"
)
# Everything the page shows or says of its own, outside the conversation's
# text: visible text, names, titles, placeholders, and the status region.
PAGE_WORDS = """() => {
  const out = [];
  const inContent = (node) =>
    node.parentElement?.closest('.msg__body, .codeblock__lang');
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode;
    const el = node.parentElement;
    if (!el || inContent(node) || el.closest('noscript')) continue;
    if (el.closest('[data-chatapp-status]') || el.checkVisibility()) {
      out.push(node.textContent);
    }
  }
  for (const el of document.querySelectorAll('[aria-label], [title], [placeholder]')) {
    if (el.closest('.msg__body')) continue;
    for (const name of ['aria-label', 'title', 'placeholder']) {
      if (el.hasAttribute(name)) out.push(el.getAttribute(name));
    }
  }
  out.push(document.title);
  return out.join('\\n');
}"""


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[^\W\d_]{3,}", text)}


def catalogue_words(lang: str) -> set[str]:
    out: set[str] = set()
    for value in i18n.catalogue(lang).values():
        for form in [value] if isinstance(value, str) else value.values():
            out |= words(re.sub(r"\{\w+\}", " ", form))
    return out


def english_left(chat: ChatPage, lang: str) -> set[str]:
    """English catalogue words on a page that should speak `lang`."""
    english_only = catalogue_words("en") - catalogue_words(lang)
    return words(chat.page.evaluate(PAGE_WORDS)) & english_only


def fill_the_page(chat: ChatPage, limit: int) -> None:
    """Put an answer with code and a table, feedback and the counter on screen."""
    chat.send(Behaviour(text=ANSWER, delay_ms=2).as_directive())
    answer = chat.wait_answer_finished()
    expect(answer.locator("[data-chatapp-feedback]")).to_have_count(2)
    answer.locator('[data-chatapp-feedback="down"]').click()
    expect(answer.locator("[data-chatapp-feedback-form] textarea")).to_be_visible()
    expect(answer.locator(".codeblock__tools button")).to_have_count(2)
    chat.textarea.fill("x" * (limit - 10))
    expect(chat.page.locator("[data-chatapp-counter]")).to_be_visible()


@pytest.fixture
def arabic(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser, locale="ar")  # Accept-Language: ar
    yield context
    context.close()


def limit_of(chat: ChatPage) -> int:
    meta = chat.page.locator('meta[name="chatapp-max-message-chars"]')
    return int(str(meta.get_attribute("content")))


def test_german_page_leaves_no_english_word(
    context: BrowserContext, openai_service: Any
) -> None:
    chat = ChatPage(context.new_page(), openai_service.url).open("/?lang=de")
    expect(chat.page.locator("html")).to_have_attribute("lang", "de")
    expect(chat.page.locator("html")).to_have_attribute("dir", "ltr")
    assert english_left(chat, "de") == set()  # the empty page

    fill_the_page(chat, limit_of(chat))

    expect(chat.page.locator("[data-chatapp-counter]")).to_have_text("Noch 10 Zeichen")
    expect(chat.page.get_by_role("button", name="Neu erzeugen")).to_be_visible()
    assert english_left(chat, "de") == set()
    chat.assert_clean()


def test_the_page_notices_an_english_word_left_behind(
    context: BrowserContext, openai_service: Any
) -> None:
    """The scan above can fail: an English word put on the page is found."""
    chat = ChatPage(context.new_page(), openai_service.url).open("/?lang=de")
    chat.page.evaluate(
        "() => document.querySelector('[data-chatapp-new]').title = 'Start a new chat'"
    )
    assert "start" in english_left(chat, "de")


def test_arabic_page_is_right_to_left_and_mirrored(
    arabic: BrowserContext, openai_service: Any
) -> None:
    chat = ChatPage(arabic.new_page(), openai_service.url).open("/")
    html = chat.page.locator("html")
    expect(html).to_have_attribute("lang", "ar")
    expect(html).to_have_attribute("dir", "rtl")

    fill_the_page(chat, limit_of(chat))

    # Numbers and plurals by Intl: "ten characters left" in Arabic's own
    # plural form for ten ("few"), digits as Intl writes them for Arabic.
    ten = chat.page.evaluate("() => new Intl.NumberFormat('ar').format(10)")
    expect(chat.page.locator("[data-chatapp-counter]")).to_have_text(
        i18n.catalogue("ar")["counter.left"]["few"].replace("{n}", ten)  # type: ignore[index]
    )
    assert english_left(chat, "ar") == set()
    width = chat.page.viewport_size["width"]  # type: ignore[index]

    def box(selector: str) -> dict[str, float]:
        found = chat.page.locator(selector).first.bounding_box()
        assert found is not None, selector
        return found

    # Mirrored: the title at the right, the bar's buttons at the left, the
    # visitor's own message against the left edge, Send to the left of the box.
    assert box(".bar__title")["x"] > width / 2
    assert box("[data-chatapp-new]")["x"] < width / 2
    user = box('[data-role="user"] .msg__body')
    assert user["x"] + user["width"] < width / 2 + 100
    assert (
        box("[data-chatapp-form] textarea")["x"]
        > box("[data-chatapp-stop], [data-chatapp-send]")["x"]
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    chat.page.screenshot(
        path=str(SCREENSHOTS / "chat-arabic-rtl.png"), animations="disabled"
    )
    chat.assert_clean()


def test_english_page_is_left_to_right_for_comparison(
    context: BrowserContext, openai_service: Any
) -> None:
    chat = ChatPage(context.new_page(), openai_service.url).open("/")
    expect(chat.page.locator("html")).to_have_attribute("dir", "ltr")
    chat.send(Behaviour(text="Answer.", delay_ms=2).as_directive())
    chat.wait_answer_finished()
    width = chat.page.viewport_size["width"]  # type: ignore[index]
    user = chat.page.locator('[data-role="user"] .msg__body').bounding_box()
    assert user is not None
    assert user["x"] > width / 2 - 100
    title = chat.page.locator(".bar__title").bounding_box()
    assert title is not None and title["x"] < width / 2
