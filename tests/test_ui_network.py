"""The chat page through a network that fails: an outage with the browser offline.

A loopback proxy stands between Chromium and the service. Mid-answer it cuts
every connection and refuses new ones for four seconds while Playwright takes
the browser offline; then both come back. The answer must complete exactly
once and grow again within about a second of the network returning, over
the event stream and over the polling fallback alike.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect

from tests.browser import ChatPage
from tests.browser import CuttingProxy
from tests.fake_provider import Behaviour

pytestmark = pytest.mark.browser

OUTAGE_SECONDS = 4
# "Within about a second": the figure is printed; the bound leaves room for
# a loaded two-core machine.
REGROWTH_BOUND_MS = 1500
# Chrome reports the connections we cut and the ones refused while offline.
NETWORK_ERRORS = (
    "net::ERR_",
    "Failed to load resource",
)

# Records, with the page's clock, every length the latest answer shows and
# the moment the browser says the network is back.
RECORD_GROWTH = """
() => {
  window.__growth = [];
  window.__onlineAt = null;
  window.addEventListener('online', () => { window.__onlineAt = performance.now(); });
  const log = document.querySelector('[data-chatapp-log]');
  new MutationObserver(() => {
    const bodies = log.querySelectorAll('[data-role="assistant"] .msg__body');
    const text = bodies.length ? bodies[bodies.length - 1].textContent.trim() : '';
    const growth = window.__growth;
    if (text && (!growth.length || growth[growth.length - 1].text !== text)) {
      growth.push({ at: performance.now(), text });
    }
  }).observe(log, { childList: true, subtree: true, characterData: true });
}
"""


@pytest.fixture
def proxy(
    request: pytest.FixtureRequest, openai_service: Any
) -> Iterator[CuttingProxy]:
    proxy = CuttingProxy(openai_service.url, **getattr(request, "param", {}))
    yield proxy
    proxy.close()


def _outage(chat: ChatPage, context: BrowserContext, proxy: CuttingProxy) -> float:
    """Cut the network for OUTAGE_SECONDS; return the page's regrowth in ms."""
    context.set_offline(True)
    proxy.outage()
    expect(chat.answers.last.locator(".msg__note")).to_have_text("Reconnecting…")
    expect(chat.page.locator("[data-chatapp-status]")).to_have_text(
        "Connection lost. Reconnecting…"
    )
    expect(chat.page.locator("[data-chatapp-log]")).to_have_attribute(
        "aria-busy", "true"
    )
    # The outage itself lasts this long: nothing to wait for but the clock.
    time.sleep(OUTAGE_SECONDS)
    frozen = len(chat.page.evaluate("() => window.__growth.at(-1).text"))
    proxy.restore()
    context.set_offline(False)
    chat.page.wait_for_function(
        """(frozen) => window.__onlineAt !== null && window.__growth.some(
             (g) => g.at > window.__onlineAt && g.text.length > frozen)""",
        arg=frozen,
    )
    return float(
        chat.page.evaluate(
            """(frozen) => window.__growth.find(
                 (g) => g.at > window.__onlineAt && g.text.length > frozen
               ).at - window.__onlineAt""",
            frozen,
        )
    )


def _assert_whole_once(chat: ChatPage, expected: str) -> None:
    chat.wait_answer_finished()
    expect(chat.answers).to_have_count(1)
    expect(chat.errors).to_have_count(0)
    assert chat.answer_text() == expected
    states = [g["text"] for g in chat.page.evaluate("() => window.__growth")]
    assert all(expected.startswith(state) for state in states)
    expect(chat.answers.last.locator(".msg__note")).to_be_hidden()
    expect(chat.page.locator("[data-chatapp-log]")).not_to_have_attribute(
        "aria-busy", "true"
    )


def _start_answer(
    context: BrowserContext, proxy: CuttingProxy, prefix: str, words: int
) -> tuple[ChatPage, str]:
    """Open the page through the proxy and start a long, paced answer."""
    expected = " ".join(f"{prefix}{i}" for i in range(words))
    chat = ChatPage(context.new_page(), proxy.url).open()
    chat.page.evaluate(RECORD_GROWTH)
    chat.send(Behaviour(text=expected, delay_ms=40).as_directive())
    return chat, expected


def _wait_shown(chat: ChatPage, word: str) -> None:
    chat.page.wait_for_function(
        "(word) => (window.__growth.at(-1)?.text || '').includes(word)", arg=word
    )


def test_answer_survives_an_outage_while_offline_and_regrows_at_once(
    context: BrowserContext, proxy: CuttingProxy
) -> None:
    chat, expected = _start_answer(context, proxy, "o", 220)
    _wait_shown(chat, "o20 ")

    regrowth_ms = _outage(chat, context, proxy)

    expect(chat.page.locator("[data-chatapp-status]")).to_have_text("Reconnected.")
    print(
        f"\nstream: answer grew again {regrowth_ms:.0f} ms after the network returned"
    )
    assert regrowth_ms < REGROWTH_BOUND_MS
    assert proxy.refused == 0  # offline, the page never even knocked
    _assert_whole_once(chat, expected)
    resumed = [i for i in proxy.last_event_ids() if i is not None]
    assert resumed
    assert int(resumed[-1]) > 1
    chat.assert_clean(allow=NETWORK_ERRORS)


@pytest.mark.parametrize("proxy", [{"buffer_streams": True}], indirect=True)
def test_polling_fallback_survives_an_outage_too(
    context: BrowserContext, proxy: CuttingProxy
) -> None:
    chat, expected = _start_answer(context, proxy, "p", 260)
    # The buffering proxy lets no event through: the page polls after 4 s.
    chat.page.wait_for_function("() => window.__growth.length > 0", timeout=15_000)
    assert any("poll=1" in path for path in proxy.requests)

    regrowth_ms = _outage(chat, context, proxy)

    print(
        f"\npolling: answer grew again {regrowth_ms:.0f} ms after the network returned"
    )
    assert regrowth_ms < REGROWTH_BOUND_MS
    _assert_whole_once(chat, expected)
    chat.assert_clean(allow=NETWORK_ERRORS)


def test_a_tab_brought_back_reopens_a_silent_stream(
    context: BrowserContext, proxy: CuttingProxy
) -> None:
    """A phone may drop a backgrounded tab's stream without telling it."""
    chat, expected = _start_answer(context, proxy, "v", 150)
    _wait_shown(chat, "v10 ")
    before = len(proxy.stream_requests)
    # The stream goes silent but stays open (as a suspended radio leaves it),
    # and the tab comes back while it is still silent. Releasing the old
    # stream first would race the page's staleness check against its bytes.
    proxy.silence_streams()
    chat.page.wait_for_timeout(3500)  # longer than the page's 3 s staleness
    chat.page.evaluate("() => document.dispatchEvent(new Event('visibilitychange'))")

    _assert_whole_once(chat, expected)
    assert len(proxy.stream_requests) > before
    chat.assert_clean(allow=NETWORK_ERRORS)
