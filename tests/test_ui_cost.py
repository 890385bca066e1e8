"""The page's own cost: a long answer streams without blocking the main thread.

Chromium's Long Tasks API reports every task over 50 ms; a 30,000-character
Markdown answer, streamed in small deltas, must cause none (rendering is
linear: settled blocks once, the growing last block per frame).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Browser

from tests.browser import ChatPage
from tests.browser import new_context
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

# It counts the page's long tasks: other tests beside it would add their own.
pytestmark = [pytest.mark.browser, pytest.mark.serial]

ANSWER_CHARS = 30_000
ATTEMPTS = 3

# Installed before the page's scripts: every long task, and the longest gap
# between animation frames while the answer streams.
WATCH_MAIN_THREAD = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__longTasks.push({ start: entry.startTime, duration: entry.duration });
  }
}).observe({ type: 'longtask', buffered: true });
window.__frames = { last: 0, maxGap: 0, count: 0, on: false };
const tick = (now) => {
  const f = window.__frames;
  if (f.on && f.last) f.maxGap = Math.max(f.maxGap, now - f.last);
  if (f.on) f.count += 1;
  f.last = now;
  requestAnimationFrame(tick);
};
requestAnimationFrame(tick);
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


def stream_once(
    browser: Browser, base_url: str, fake_provider: FakeProvider, text: str
) -> dict[str, Any]:
    """Stream `text` as one answer in a fresh profile; return what the page saw."""
    context = new_context(browser)
    context.add_init_script(WATCH_MAIN_THREAD)
    chat = ChatPage(context.new_page(), base_url).open()
    chat.page.evaluate("() => { window.__longTasks = []; window.__frames.on = true; }")
    started = chat.page.evaluate("() => performance.now()")
    fake_provider.enqueue(Behaviour(text=text, pieces=12, delay_ms=1))
    chat.send("Explain every step, at length.")
    chat.wait_answer_finished(0)
    stats = chat.page.evaluate(
        "() => ({ tasks: window.__longTasks, frames: window.__frames,"
        " now: performance.now() })"
    )
    body = chat.answers.first.locator(".msg__body")
    assert body.locator("h2").count() > 50
    assert body.locator("pre code").count() > 50
    chat.assert_clean()
    context.close()
    longest = max((t["duration"] for t in stats["tasks"]), default=0)
    print(
        f"\n{len(text)} characters in {(stats['now'] - started) / 1000:.1f} s, "
        f"{stats['frames']['count']} frames, longest frame gap "
        f"{stats['frames']['maxGap']:.0f} ms, long tasks: {len(stats['tasks'])} "
        f"(longest {longest:.0f} ms)"
    )
    return dict(stats)


def test_a_30000_character_answer_streams_without_long_tasks(
    browser: Browser, openai_service: Any, fake_provider: FakeProvider
) -> None:
    text = long_markdown(ANSWER_CHARS)
    # The machine is shared: another process can stretch any task past 50 ms.
    # One clean run of three shows the page's own work fits; the quadratic
    # renderer this replaced had about 30 long tasks in every run.
    runs = []
    for _ in range(ATTEMPTS):
        runs.append(stream_once(browser, openai_service.url, fake_provider, text))
        if not runs[-1]["tasks"]:
            break
    assert [run["tasks"] for run in runs][-1] == []
