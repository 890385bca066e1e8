"""Reading an answer while it is written: scrolling, selecting, half-written
Markdown, wide tables and code blocks, in headless Chromium.

The page follows a growing answer only while the reader wants it to; a
selection in a settled block survives to the end; half-written Markdown never
shows its raw markers; tables and code blocks are focusable, labelled regions
that scroll sideways; code is highlighted once per block, when it settles.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect

from tests.browser import PHONE
from tests.browser import ChatPage
from tests.browser import new_context
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)

CODE = "```python\ndef total(values):\n    return sum(v * 2 for v in values)\n```\n\n"
LONG_ANSWER = CODE + "\n\n".join(
    f"Paragraph {i}: " + " ".join(f"word{i}x{j}" for j in range(30)) for i in range(70)
)
# Resolves once the thread has not scrolled for 300 ms: a wheel or touch
# scroll may be animated, and the reader's position is where it comes to rest.
SCROLL_AT_REST = """
(el) => new Promise((resolve) => {
  let timer = setTimeout(done, 300);
  function done() { el.removeEventListener('scroll', moved); resolve(el.scrollTop); }
  function moved() { clearTimeout(timer); timer = setTimeout(done, 300); }
  el.addEventListener('scroll', moved);
})
"""
# Marks the first paragraph wholly in view and returns where it sits in the
# view: what the reader is looking at.
MARK_IN_VIEW = """
(el) => {
  const view = el.getBoundingClientRect();
  const seen = [...el.querySelectorAll('.msg__body p')].find(
    (p) => p.getBoundingClientRect().top >= view.top);
  window.__inView = seen;
  return seen.getBoundingClientRect().top - view.top;
}
"""
WHERE_IN_VIEW = """
(el) => window.__inView.getBoundingClientRect().top - el.getBoundingClientRect().top
"""


@pytest.fixture
def chat(context: BrowserContext, openai_service: Any) -> ChatPage:
    return ChatPage(context.new_page(), openai_service.url)


@pytest.fixture
def touch_context(browser: Browser) -> Iterator[BrowserContext]:
    context = new_context(browser, viewport=PHONE, has_touch=True, is_mobile=True)
    yield context
    context.close()


def stream_long_answer(chat: ChatPage, fake_provider: FakeProvider) -> None:
    """Start a long answer and wait until it overflows the view while streaming."""
    chat.open()
    fake_provider.enqueue(Behaviour(text=LONG_ANSWER, pieces=24, delay_ms=12))
    chat.send("Tell me everything.")
    chat.page.wait_for_function(
        """() => {
          const s = document.querySelector('[data-chatapp-scroller]');
          const a = document.querySelector('[data-role=assistant]');
          return a && a.dataset.state === 'streaming'
            && s.scrollHeight > s.clientHeight + 800;
        }"""
    )
    # Following so far: the view sits at the end of the growing answer.
    assert chat.distance_to_end() < 200
    expect(chat.page.locator("[data-chatapp-jump]")).to_be_hidden()


def move_up(chat: ChatPage, how: str) -> None:
    """Look back the way a reader does."""
    page = chat.page
    if how == "wheel":
        box = chat.scroller.bounding_box()
        assert box is not None
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.wheel(0, -60)
    elif how == "keys":
        # Click the text in view (focus stays on the page, as after reading
        # with the mouse), then PageUp scrolls the thread.
        chat.answers.last.locator(".msg__body > p").nth(-2).click()
        page.keyboard.press("PageUp")
    elif how == "touch":
        cdp = page.context.new_cdp_session(page)
        box = chat.scroller.bounding_box()
        assert box is not None
        x, y = box["x"] + box["width"] / 2, box["y"] + 200
        cdp.send(
            "Input.dispatchTouchEvent",
            {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]},
        )
        for step in range(1, 6):
            cdp.send(
                "Input.dispatchTouchEvent",
                {"type": "touchMove", "touchPoints": [{"x": x, "y": y + step * 30}]},
            )
        cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
    else:
        # The scrollbar: a press on the scroller itself, then it scrolls up.
        # (Headless Chromium hides scrollbars, so the press is dispatched.)
        chat.scroller.evaluate(
            """(el) => {
              el.dispatchEvent(new PointerEvent('pointerdown', { bubbles: true }));
              el.scrollTop -= 150;
              el.addEventListener('scroll', () => window.dispatchEvent(
                new PointerEvent('pointerup')), { once: true });
            }"""
        )


@pytest.mark.parametrize("how", ["wheel", "keys", "touch", "scrollbar"])
def test_scrolling_up_mid_stream_leaves_the_view_where_the_reader_put_it(
    request: pytest.FixtureRequest,
    openai_service: Any,
    fake_provider: FakeProvider,
    how: str,
) -> None:
    context: BrowserContext = request.getfixturevalue(
        "touch_context" if how == "touch" else "context"
    )
    chat = ChatPage(context.new_page(), openai_service.url)
    stream_long_answer(chat, fake_provider)

    move_up(chat, how)
    jump = chat.page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_visible()
    chat.scroller.evaluate(SCROLL_AT_REST)
    length_then = len(chat.answer_text())
    assert chat.distance_to_end() > 40
    where = chat.scroller.evaluate(MARK_IN_VIEW)

    chat.wait_answer_finished()
    # The answer went on growing below; what the reader was looking at did
    # not move (scroll anchoring may shift scrollTop when Edit appears above).
    assert len(chat.answer_text()) > length_then
    assert abs(chat.scroller.evaluate(WHERE_IN_VIEW) - where) <= 1
    assert chat.distance_to_end() > 40
    expect(jump).to_be_visible()

    # "Jump to latest" goes back to the end and follows again.
    jump.click()
    expect(jump).to_be_hidden()
    chat.wait_at_end()
    expect(chat.textarea).to_be_focused()
    chat.assert_clean()


def test_reaching_the_end_again_resumes_following(
    chat: ChatPage, fake_provider: FakeProvider
) -> None:
    stream_long_answer(chat, fake_provider)
    move_up(chat, "scrollbar")
    jump = chat.page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_visible()
    # The reader scrolls back down to the end by hand.
    chat.scroller.evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
    expect(jump).to_be_hidden()
    chat.wait_answer_finished()
    chat.wait_at_end()
    chat.assert_clean()


def test_a_selection_made_mid_stream_survives_to_the_end(
    chat: ChatPage, fake_provider: FakeProvider
) -> None:
    chat.open()
    fake_provider.enqueue(
        Behaviour(
            text="The first paragraph holds the words to select.\n\n" + LONG_ANSWER,
            pieces=24,
            delay_ms=8,
        )
    )
    chat.send("Write a lot.")
    # Once a later block has begun, the first paragraph is settled.
    chat.page.wait_for_function(
        """() => {
          const body = document.querySelector('[data-role=assistant] .msg__body');
          return body && body.children.length >= 3
            && body.closest('[data-role=assistant]').dataset.state === 'streaming';
        }"""
    )
    chat.page.evaluate(
        """() => {
          const p = document.querySelector('[data-role=assistant] .msg__body p');
          const text = p.firstChild;
          const start = text.data.indexOf('words to select');
          window.getSelection().setBaseAndExtent(text, start, text, start + 15);
          window.__selectedIn = p;
        }"""
    )
    length_then = len(chat.answer_text())

    chat.wait_answer_finished()
    assert len(chat.answer_text()) > length_then + 1000
    assert (
        chat.page.evaluate("() => window.getSelection().toString()")
        == "words to select"
    )
    assert chat.page.evaluate(
        "() => window.__selectedIn.isConnected"
        " && window.getSelection().anchorNode.parentNode === window.__selectedIn"
    )
    chat.assert_clean()


HALF_WRITTEN = (
    "Some **bold words that go on** and `inline code that goes on` end.\n\n"
    "```python\nprint('fenced')\n```\n\nAfter."
)


def test_half_written_markdown_never_shows_raw_markers(chat: ChatPage) -> None:
    chat.open()
    chat.record_answer_states()
    chat.send(Behaviour(text=HALF_WRITTEN, pieces=1, delay_ms=4).as_directive())
    chat.wait_answer_finished()

    states = chat.answer_states()
    assert len(states) > 20
    raw = [state for state in states if "*" in state or "`" in state]
    assert raw == []
    body = chat.answers.last.locator(".msg__body")
    expect(body.locator("strong")).to_have_text("bold words that go on")
    expect(body.locator("p code")).to_have_text("inline code that goes on")
    chat.assert_clean()


def test_an_answer_stopped_inside_bold_shows_no_asterisks(
    chat: ChatPage,
) -> None:
    words = " ".join(f"bold{i}" for i in range(300))
    chat.open()
    chat.send(
        Behaviour(
            text=f"Intro.\n\n**{words}** tail", pieces=6, delay_ms=30
        ).as_directive()
    )
    chat.page.wait_for_function(
        "() => (document.querySelector('[data-role=assistant] .msg__body')"
        "?.textContent || '').includes('bold5 ')"
    )
    chat.stop_button.click()
    answer = chat.wait_answer_finished()
    expect(answer).to_have_attribute("data-state", "stopped")
    assert "*" not in chat.answer_text()
    expect(answer.locator(".msg__body strong")).to_contain_text("bold5")

    # A reload renders the stored (stopped) answer the same way.
    chat.reload()
    assert "*" not in chat.answer_text()
    expect(chat.answers.last.locator(".msg__body strong")).to_contain_text("bold5")
    chat.assert_clean()


# -- tables -----------------------------------------------------------------

REGIONS = ["Europe", "Asia", "Africa", "Oceania", "Americas"]
WIDE_TABLE = (
    "| Region | "
    + " | ".join(f"Year {2000 + i}" for i in range(19))
    + " |\n|"
    + " --- |" * 20
    + "\n"
    + "\n".join(
        f"| {region} | " + " | ".join(str(1200 + 37 * i + r) for i in range(19)) + " |"
        for r, region in enumerate(REGIONS)
    )
)


def test_a_20_column_table_on_a_phone_scrolls_and_does_not_squeeze(
    browser: Browser, openai_service: Any, fake_provider: FakeProvider
) -> None:
    context = new_context(browser, viewport=PHONE, is_mobile=True, has_touch=True)
    try:
        chat = ChatPage(context.new_page(), openai_service.url).open()
        fake_provider.enqueue(
            Behaviour(text="Figures:\n\n" + WIDE_TABLE, delay_ms=1, pieces=40)
        )
        chat.send("Show the table.")
        chat.wait_answer_finished()

        region = chat.answers.last.get_by_role(
            "region", name="Table: Region, Year 2000, Year 2001 and 17 more columns"
        )
        expect(region).to_have_attribute("tabindex", "0")
        expect(region.locator("th")).to_have_count(20)
        sizes = region.evaluate(
            """(el) => {
              const cells = [...el.querySelectorAll('th, td')];
              const lineHeight = parseFloat(getComputedStyle(cells[1]).lineHeight);
              return {
                scrollWidth: el.scrollWidth, clientWidth: el.clientWidth,
                page: document.documentElement.scrollWidth,
                tallest: Math.max(...cells.map((c) => c.clientHeight)),
                lineHeight,
                narrowest: Math.min(
                  ...cells.map((c) => c.getBoundingClientRect().width)),
                overflowing: cells.filter(
                  (c) => c.scrollWidth > c.clientWidth).length,
              };
            }"""
        )
        # The table is wider than the phone and scrolls inside its region...
        assert sizes["scrollWidth"] > 2 * sizes["clientWidth"]
        assert sizes["page"] <= PHONE["width"]
        # ...and no cell is squeezed: every word whole, on one line.
        assert sizes["overflowing"] == 0
        assert sizes["tallest"] < 1.5 * sizes["lineHeight"] + 16
        assert sizes["narrowest"] >= 50
        expect(region.locator("td", has_text="Europe")).to_have_text("Europe")

        # By keyboard: the region takes focus and the arrow keys scroll it.
        region.focus()
        chat.page.keyboard.press("ArrowRight")
        chat.page.wait_for_function(
            "(el) => el.scrollLeft > 0", arg=region.element_handle()
        )
        chat.assert_clean()
    finally:
        context.close()


# -- code -------------------------------------------------------------------

TWO_BLOCKS = (
    "First:\n\n```python\nimport os\n\ndef main():\n    # say hello\n"
    "    print('hello', os.getcwd())\n```\n\nThen:\n\n```js\n"
    "const answer = 42; // " + "long " * 40 + "\n```\n\nDone."
)


def test_code_blocks_are_labelled_regions_with_wrap_and_named_copy(
    chat: ChatPage,
) -> None:
    chat.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat.open()
    chat.send(Behaviour(text=TWO_BLOCKS, pieces=3, delay_ms=3).as_directive())
    answer = chat.wait_answer_finished()

    python = answer.get_by_role("region", name="Python code")
    js = answer.get_by_role("region", name="JavaScript code")
    expect(python).to_have_attribute("tabindex", "0")
    expect(js).to_have_attribute("tabindex", "0")
    # Highlighted with class names only (the CSP allows no inline style).
    expect(python.locator(".hljs-keyword").first).to_have_text("import")
    expect(python.locator(".hljs-comment")).to_have_text("# say hello")
    expect(js.locator("code.hljs")).to_have_count(1)
    assert answer.locator("[style]").count() == 0
    # Highlighting ran once per block, when it settled: never per token.
    runs = chat.page.evaluate(
        "() => performance.getEntriesByName('chatapp:highlight')"
        ".map((e) => ({ ms: e.duration, language: e.detail.language }))"
    )
    assert sorted(run["language"] for run in runs) == ["js", "python"]
    print(
        "\nhighlighting: "
        + ", ".join(f"{run['language']} {run['ms']:.2f} ms" for run in runs)
    )

    # The long line scrolls; Wrap folds it; pressed again, it scrolls again.
    wide = js.evaluate("(el) => el.scrollWidth > el.clientWidth")
    assert wide
    wrap = js.locator("xpath=..").get_by_role("button", name="Wrap")
    expect(wrap).to_have_attribute("aria-pressed", "false")
    wrap.click()
    expect(wrap).to_have_attribute("aria-pressed", "true")
    chat.page.wait_for_function(
        "(el) => el.scrollWidth <= el.clientWidth", arg=js.element_handle()
    )
    wrap.click()
    expect(wrap).to_have_attribute("aria-pressed", "false")

    copy = answer.get_by_role("button", name="Copy Python code")
    expect(answer.get_by_role("button", name="Copy JavaScript code")).to_be_visible()
    copy.click()
    expect(chat.page.locator("[data-chatapp-status]")).to_have_text(
        "Copied to the clipboard."
    )
    assert chat.page.evaluate("() => navigator.clipboard.readText()") == (
        "import os\n\ndef main():\n    # say hello\n    print('hello', os.getcwd())\n"
    )
    chat.assert_clean()


def test_highlighting_a_long_block_costs_little(
    chat: ChatPage, fake_provider: FakeProvider
) -> None:
    def program(functions: int) -> str:
        body = "".join(
            f"def step_{i}(value):\n    return value * {i}  # step {i}\n"
            for i in range(functions)
        )
        return "```python\n" + body + "```\n\n"

    # One block just under the 8,000-character bound, one far over it.
    text = program(140) + "Too long to colour:\n\n" + program(400) + "That is all."
    chat.open()
    fake_provider.enqueue(Behaviour(text=text, pieces=200, delay_ms=1))
    chat.send("Two long programs, please.")
    answer = chat.wait_answer_finished()
    blocks = answer.locator(".codeblock")
    expect(blocks.nth(0).locator("code.hljs")).to_have_count(1)
    expect(blocks.nth(1).get_by_role("button", name="Copy Python code")).to_be_visible()
    runs = chat.page.evaluate(
        "() => performance.getEntriesByName('chatapp:highlight')"
        ".map((e) => ({ ms: e.duration, chars: e.detail.chars }))"
    )
    assert len(runs) == 1
    print(
        f"\nhighlighting {runs[0]['chars']} characters of Python: "
        f"{runs[0]['ms']:.1f} ms"
    )
    assert 7000 < runs[0]["chars"] < 8000
    assert runs[0]["ms"] < 150
    # The block over the bound is still a labelled region with its tools.
    expect(blocks).to_have_count(2)
    expect(blocks.nth(1).locator(".hljs-keyword")).to_have_count(0)
    expect(blocks.nth(1).get_by_role("button", name="Copy Python code")).to_be_visible()
    chat.assert_clean()
