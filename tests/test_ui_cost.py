"""The page's own cost: a long answer is drawn in linear time.

A 30,000-character Markdown answer, streamed in small deltas, must have each
settled block drawn once: on every frame the renderer may take away only the
growing last block it drew on the frame before, and never draws more than a
frame's window of text. The quadratic renderer this replaced drew the whole
answer again on every frame (about 30 long tasks of the main thread).

How long the frames and tasks take depends on the machine and on whatever
else runs on it, so it is printed by ``bench/ui_cost.py``, not asserted here.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser import ChatPage
from tests.browser import new_context
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.browser]

ANSWER_CHARS = 30_000
LONG_ANSWER_TIMEOUT_MS = 60_000
# The growing block's nodes: its element and the line break after it.
TAIL_NODES_BOUND = 3
# The renderer's window (MAX_CHARS_PER_FRAME in chat/render.js) plus one
# growing block and the code blocks' bars: the most text one frame may draw.
FRAME_CHARS_BOUND = 6_000

# Installed before the page's scripts: every node drawn into or taken out of
# an answer's body, by frame (one observer call per frame that changed it).
WATCH_DRAWING = """
window.__drawn = {
  frames: 0, added: 0, removed: 0, redrawn: 0, maxRemoved: 0, maxChars: 0 };
window.__born = new WeakMap();
new MutationObserver((records) => {
  const d = window.__drawn;
  let touched = false;
  let chars = 0;
  let removed = 0;
  for (const record of records) {
    const target = record.target;
    if (!(target instanceof Element)) continue;
    if (!target.matches('[data-role="assistant"] .msg__body')) continue;
    if (!touched) { d.frames += 1; touched = true; }
    for (const node of record.removedNodes) {
      removed += 1;
      // Only the growing block drawn on the frame before may go.
      if (window.__born.get(node) !== d.frames - 1) d.redrawn += 1;
    }
    for (const node of record.addedNodes) {
      d.added += 1;
      window.__born.set(node, d.frames);
      chars += (node.textContent || '').length;
    }
  }
  if (!touched) return;
  d.removed += removed;
  d.maxRemoved = Math.max(d.maxRemoved, removed);
  d.maxChars = Math.max(d.maxChars, chars);
}).observe(document, { childList: true, subtree: true });
"""


def long_markdown(size: int) -> str:
    """A realistic answer: headings, paragraphs, lists, code and tables."""
    parts: list[str] = []
    n = 0
    while sum(map(len, parts)) < size:
        n += 1
        parts.append(
            f"## Section {n}\n\n"
            f"This paragraph explains step {n} with **bold**, *emphasis*, "
            f"`inline code` and a [link](https://example.com/{n}). It runs on "
            "for a while so that paragraphs are as long as a model writes them.\n\n"
            f"- first point of {n}\n- second point, with `code`\n"
            f"- third point\n  continued on a second line\n\n"
            f"```python\ndef step_{n}(value):\n    total = 0\n"
            "    for item in range(value):\n        total += item * 2\n"
            "    return total\n```\n\n"
            "| name | value |\n| --- | --- |\n"
            f"| alpha | {n} |\n| beta | {n * 2} |\n\n"
            f"> A quoted remark about step {n}.\n\n"
        )
    return "".join(parts)[:size].rstrip()


def stream_answer(
    browser: Browser,
    base_url: str,
    fake_provider: FakeProvider,
    text: str,
    init_script: str,
    read: str,
) -> Any:
    """Stream `text` as one answer in a fresh profile; return `read`'s value.

    `init_script` runs before the page's own scripts; `read` is evaluated
    once the answer has finished.
    """
    context = new_context(browser)
    # 2,500 deltas take a few seconds, and many more on a busy machine.
    context.set_default_timeout(LONG_ANSWER_TIMEOUT_MS)
    context.add_init_script(init_script)
    chat = ChatPage(context.new_page(), base_url).open()
    chat.page.evaluate("() => window.__streaming?.()")
    fake_provider.enqueue(Behaviour(text=text, pieces=12, delay_ms=1))
    chat.send("Explain every step, at length.")
    chat.wait_answer_finished(0)
    seen = chat.page.evaluate(read)
    body = chat.answers.first.locator(".msg__body")
    assert body.locator("h2").count() > 50
    assert body.locator("pre code").count() > 50
    chat.assert_clean()
    context.close()
    return seen


def test_a_30000_character_answer_draws_each_settled_block_once(
    browser: Browser, openai_service: Any, fake_provider: FakeProvider
) -> None:
    drawn = stream_answer(
        browser,
        openai_service.url,
        fake_provider,
        long_markdown(ANSWER_CHARS),
        WATCH_DRAWING,
        """() => {
          const body = document.querySelector('[data-role="assistant"] .msg__body');
          const kept = [...body.childNodes];
          return { ...window.__drawn, kept: kept.length,
                   keptDrawn: kept.filter((n) => window.__born.has(n)).length };
        }""",
    )
    print(f"\n{drawn}")
    # Drawn over many frames; each frame took away only the growing block
    # drawn on the frame before, so every settled block was drawn once, and
    # the nodes drawn while streaming are the ones kept at the end.
    assert drawn["frames"] > 10
    assert drawn["redrawn"] == 0
    assert drawn["maxRemoved"] <= TAIL_NODES_BOUND
    assert drawn["keptDrawn"] == drawn["kept"] > 100
    assert drawn["added"] == drawn["kept"] + drawn["removed"]
    assert drawn["maxChars"] <= FRAME_CHARS_BOUND
