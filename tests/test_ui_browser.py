"""The chat page in a real browser: Debian's headless chromium via Playwright.

Every test drives the page through the hooks SPEC promises (the form, its
textarea, data-role on messages, data-chatapp-stop) against the service under
real gunicorn, answered by the fake provider. Waits poll the DOM; nothing
sleeps.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl
from urllib.parse import urlencode
from urllib.parse import urlsplit
from urllib.parse import urlunsplit

import pytest
from playwright.sync_api import Browser
from playwright.sync_api import BrowserContext
from playwright.sync_api import Request
from playwright.sync_api import Route
from playwright.sync_api import expect

from tests.browser import DESKTOP
from tests.browser import PHONE
from tests.browser import ChatPage
from tests.browser import CuttingProxy
from tests.browser import LocalSite
from tests.browser import new_context
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"
DOCS = ROOT / "docs"
# Set by `python -m tests.screenshots`, the one command that refreshes the
# README's pictures in docs/; otherwise screenshots stay in artifacts/.
REFRESH_DOCS = "CHATAPP_TESTS_REFRESH_DOCS"
README_PICTURES = {("desktop", "light"), ("phone", "dark")}
EVENTS_URL = "**/api/chat/*/events?*"
CHAT_URL = "**/api/chat"
# Chrome logs every non-2xx fetch as a console error; tests that provoke one
# on purpose allow exactly that line.
FAILED_LOAD = "Failed to load resource: the server responded with a status of"

expect.set_options(timeout=15_000)


def fake(text: str, **options: int | str) -> str:
    """A chat message that makes the fake provider answer exactly `text`."""
    options.setdefault("delay_ms", 5)
    spelled = " ".join(f"{name}={value}" for name, value in options.items())
    return f"fake: {spelled} | {text}"


def openai_env(provider: FakeProvider, **extra: Any) -> dict[str, Any]:
    return {
        "CHATAPP_PROVIDER": "openai",
        "CHATAPP_PROVIDER_BASE_URL": provider.openai_base_url,
        "OPENAI_API_KEY": "test-openai-key-not-secret",
        **extra,
    }


def streamed_post(request: Request) -> bool:
    """Whether a request is a turn's POST asking for its own event stream."""
    accept = request.headers.get("accept", "")
    return request.method == "POST" and "text/event-stream" in accept


def everything(url: str) -> str:
    """The same stream URL without its last_event_id: every event again."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "last_event_id"]
    return urlunsplit(parts._replace(query=urlencode(query)))


def sse_events(body: str) -> list[str]:
    """Split an SSE body into its blank-line separated blocks."""
    return [block for block in body.replace("\r\n", "\n").split("\n\n") if block]


def json_error(
    status: int, code: str, retry_after: str | None = None
) -> dict[str, Any]:
    """Route.fulfill arguments for one of SPEC's JSON refusals."""
    headers = {"Cache-Control": "no-store"}
    if retry_after is not None:
        headers["Retry-After"] = retry_after
    body = {"error": {"code": code, "message": f"server says {code}"}}
    return {
        "status": status,
        "headers": headers,
        "content_type": "application/json",
        "body": json.dumps(body),
    }


# -- fixtures ---------------------------------------------------------------


@pytest.fixture
def chat(context: BrowserContext, openai_service: Any) -> ChatPage:
    return ChatPage(context.new_page(), openai_service.url)


# -- streaming --------------------------------------------------------------


def test_answer_shows_thinking_then_grows_in_place(chat: ChatPage) -> None:
    expected = "One two three four five six seven eight nine ten eleven twelve."
    chat.open()
    chat.record_answer_states()

    chat.send(fake(expected, delay_ms=40, ttft_ms=1500))

    answer = chat.answers.last
    expect(answer).to_have_attribute("data-state", "thinking")
    expect(answer).to_contain_text("Thinking")
    expect(chat.stop_button).to_be_visible()
    expect(chat.send_button).to_be_hidden()
    chat.page.wait_for_function(
        "() => window.__answerStates.length >= 3 && document.querySelector("
        "'[data-role=assistant]').dataset.state === 'streaming'"
    )
    chat.wait_answer_finished()

    states = chat.answer_states()
    assert states[-1] == expected
    assert len(states) >= 5
    assert all(expected.startswith(state) for state in states)
    expect(answer).to_have_attribute("data-state", "done")
    expect(chat.stop_button).to_be_hidden()
    chat.assert_clean()


def test_markdown_renders_with_safe_links(chat: ChatPage) -> None:
    text = (
        "Intro with **bold** and `code`.\n\n- first\n- second\n\n"
        "```python\nprint('hi')\n```\n\nSee [the docs](https://example.com/docs)."
    )
    chat.open()
    chat.send(fake(text))
    body = chat.wait_answer_finished().locator(".msg__body")

    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("li")).to_have_text(["first", "second"])
    expect(body.locator("pre code")).to_have_text("print('hi')\n")
    link = body.locator("a", has_text="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    chat.assert_clean()


def test_hostile_markup_in_an_answer_stays_inert(chat: ChatPage) -> None:
    hostile = (
        "Look: <img src=x onerror=window.__xss=1> then "
        "<script>window.__xss=1</script> then "
        "[a link](javascript:window.__xss=1) then "
        '<a href="javascript:window.__xss=1">raw</a> then '
        "<svg onload=window.__xss=1></svg> then "
        "![pic](https://attacker.example/leak.png) end."
    )
    chat.open()
    chat.send(fake(hostile))
    body = chat.wait_answer_finished().locator(".msg__body")

    # Raw HTML is shown as text, never parsed into elements.
    expect(body).to_contain_text("<img src=x onerror=window.__xss=1>")
    expect(body).to_contain_text("<script>window.__xss=1</script>")
    assert chat.page.evaluate("() => window.__xss") is None
    log = chat.page.locator("[data-chatapp-log]")
    assert log.locator("script, img, svg:not(.icon), iframe").count() == 0
    dangerous = chat.page.evaluate(
        """() => [...document.querySelectorAll('[data-chatapp-log] *')].flatMap(
          (el) => [...el.attributes]
            .filter((a) => a.name.startsWith('on')
              || /^\\s*javascript:/i.test(a.value))
            .map((a) => `${el.tagName} ${a.name}=${a.value}`))"""
    )
    assert dangerous == []
    # A model-chosen image URL becomes a link instead of a request.
    expect(body.locator('a[href="https://attacker.example/leak.png"]')).to_have_text(
        "pic"
    )
    chat.assert_clean()


# -- stop, keys, copy, new chat ---------------------------------------------


@pytest.mark.parametrize("how", ["button", "escape"])
def test_stop_ends_the_turn_and_unlocks_the_composer(chat: ChatPage, how: str) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    chat.open()
    chat.send(fake(words, delay_ms=40))
    chat.page.wait_for_function(
        "() => (document.querySelector('[data-role=assistant] .msg__body')"
        "?.textContent || '').includes('word3 ')"
    )
    # Typing the next message while the answer streams is allowed.
    chat.textarea.fill("next question")
    if how == "button":
        chat.stop_button.click()
    else:
        chat.textarea.press("Escape")

    answer = chat.wait_answer_finished()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".msg__note")).to_have_text("Stopped")
    expect(chat.stop_button).to_be_hidden()
    expect(chat.send_button).to_be_enabled()
    expect(chat.textarea).to_have_value("next question")
    stopped_text = chat.answer_text()
    assert "word3" in stopped_text
    assert "word299" not in stopped_text

    chat.send(fake("Still here."))
    chat.wait_answer_finished()
    assert chat.answer_text() == "Still here."
    chat.assert_clean()


def test_enter_sends_and_shift_enter_adds_a_line(chat: ChatPage) -> None:
    chat.open()
    chat.textarea.focus()
    keyboard = chat.page.keyboard
    keyboard.type("fake: delay_ms=5 | first line")
    keyboard.press("Shift+Enter")
    keyboard.type("second line")
    expect(chat.textarea).to_have_value("fake: delay_ms=5 | first line\nsecond line")
    expect(chat.messages("user")).to_have_count(0)

    keyboard.press("Enter")
    expect(chat.messages("user")).to_have_count(1)
    expect(chat.messages("user").first.locator(".msg__body")).to_have_text(
        "fake: delay_ms=5 | first line\nsecond line"
    )
    expect(chat.textarea).to_have_value("")
    answer = chat.wait_answer_finished()
    assert answer.locator(".msg__body").inner_text() == "first line\nsecond line"
    chat.assert_clean()


def test_keyboard_only_round_trip_and_copy(chat: ChatPage) -> None:
    chat.page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    chat.open()
    keyboard = chat.page.keyboard
    keyboard.press("Tab")
    expect(chat.page.locator(".skip-link")).to_be_focused()
    keyboard.press("Enter")
    expect(chat.textarea).to_be_focused()

    keyboard.type(fake("Copy **me**, please."))
    keyboard.press("Enter")
    chat.wait_answer_finished()
    # Focus stayed in the text box; the answer's copy button is one step back.
    expect(chat.textarea).to_be_focused()
    keyboard.press("Shift+Tab")
    copy = chat.answers.last.get_by_role("button", name="Copy answer")
    expect(copy).to_be_focused()
    keyboard.press("Enter")
    expect(chat.page.locator("[data-chatapp-status]")).to_have_text(
        "Copied to the clipboard."
    )
    assert chat.page.evaluate("() => navigator.clipboard.readText()") == (
        "Copy **me**, please."
    )
    chat.assert_clean()


def test_new_chat_forgets_the_conversation(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Remember me."))
    chat.wait_answer_finished()
    assert chat.stored_state() is not None

    chat.page.get_by_role("button", name="New chat").click()
    expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
    expect(chat.page.get_by_role("heading", name="How can I help?")).to_be_visible()
    expect(chat.textarea).to_be_focused()
    assert chat.stored_state() is None

    chat.reload()
    expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
    chat.assert_clean()


def test_long_message_shows_a_counter_and_cannot_be_sent(chat: ChatPage) -> None:
    chat.open()
    limit = int(
        str(
            chat.page.locator('meta[name="chatapp-max-message-chars"]').get_attribute(
                "content"
            )
        )
    )
    counter = chat.page.locator("[data-chatapp-counter]")
    chat.textarea.fill("x" * (limit // 2))
    expect(counter).to_be_hidden()
    chat.textarea.fill("x" * (limit - 10))
    expect(counter).to_have_text("10 characters left")
    expect(chat.send_button).to_be_enabled()
    chat.textarea.fill("x" * (limit + 5))
    expect(counter).to_have_text("5 characters too long")
    expect(chat.send_button).to_be_disabled()
    chat.textarea.press("Enter")
    expect(chat.messages("user")).to_have_count(0)
    chat.assert_clean()


# -- dropped connections ----------------------------------------------------


def test_dropped_stream_resumes_from_last_event_id_and_repeats_nothing(
    context: BrowserContext, openai_service: Any
) -> None:
    expected = " ".join(f"w{i}" for i in range(40))
    proxy = CuttingProxy(openai_service.url, cut_after=6)
    try:
        chat = ChatPage(context.new_page(), proxy.url).open()
        chat.record_answer_states()
        chat.send(fake(expected, delay_ms=30))
        chat.wait_answer_finished()

        assert proxy.cuts == 1
        first, again = proxy.last_event_ids()
        # The browser's own reconnect asked to resume after what it had.
        assert first is None
        assert again is not None
        assert int(again) >= 1
        assert chat.answer_text() == expected
        assert all(expected.startswith(state) for state in chat.answer_states())
        # Chrome reports the connection we cut; nothing else may show up.
        chat.assert_clean(allow=("net::ERR_INCOMPLETE_CHUNKED_ENCODING",))
    finally:
        proxy.close()


def test_events_replayed_by_a_server_are_applied_once(chat: ChatPage) -> None:
    expected = " ".join(f"r{i}" for i in range(30))
    connections: list[str] = []

    def cut_short(route: Route, request: Request) -> None:
        if not streamed_post(request):
            route.continue_()
            return
        connections.append("post")
        # The turn's own stream, cut after a few events.
        blocks = sse_events(route.fetch().text())
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body="\n\n".join(blocks[:6]) + "\n\n",
        )

    def replay_everything(route: Route, request: Request) -> None:
        if "poll=1" in request.url:
            route.continue_()
            return
        connections.append("events")
        # Ask the service for everything, ignoring Last-Event-ID, as a
        # confused proxy might: the page must still not repeat a word.
        headers = {
            k: v
            for k, v in request.all_headers().items()
            if k.lower() != "last-event-id"
        }
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body=route.fetch(headers=headers, url=everything(request.url)).text(),
        )

    chat.page.route(CHAT_URL, cut_short)
    chat.page.route(EVENTS_URL, replay_everything)
    chat.open()
    chat.send(fake(expected, delay_ms=5))
    chat.wait_answer_finished()

    assert connections == ["post", "events"]
    assert chat.answer_text() == expected
    chat.assert_clean()


def test_buffering_proxy_falls_back_to_polling(chat: ChatPage) -> None:
    expected = "Polled all the way through."
    polls: list[str] = []

    def buffered(route: Route, request: Request) -> None:
        if "poll=1" in request.url or not (
            streamed_post(request) or "/events?" in request.url
        ):
            if "poll=1" in request.url:
                polls.append(request.url)
            route.continue_()
            return
        if streamed_post(request):
            route.fetch()  # the turn starts; its stream never gets through
        # A buffering proxy: headers arrive, events never do.
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body=": buffered\n\n",
        )

    chat.page.route(CHAT_URL, buffered)
    chat.page.route(EVENTS_URL, buffered)
    chat.open()
    chat.send(fake(expected, delay_ms=5))
    chat.wait_answer_finished()

    assert chat.answer_text() == expected
    assert polls
    assert "last_event_id=0" in polls[0]
    chat.assert_clean()


def test_reload_mid_answer_picks_the_answer_up_again(chat: ChatPage) -> None:
    expected = " ".join(f"m{i}" for i in range(60))
    chat.open()
    chat.send(fake(expected, delay_ms=40))
    chat.page.wait_for_function(
        "() => (document.querySelector('[data-role=assistant] .msg__body')"
        "?.textContent || '').includes('m5 ')"
    )
    chat.reload()

    expect(chat.messages("user")).to_have_count(1)
    chat.wait_answer_finished()
    expect(chat.answers).to_have_count(1)
    assert chat.answer_text() == expected
    chat.assert_clean()


# -- reload -----------------------------------------------------------------


def test_reload_restores_the_conversation_and_continues_it(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("First answer."))
    chat.wait_answer_finished()
    chat.send(fake("Second answer with `code`."))
    chat.wait_answer_finished()
    stored = chat.stored_state()
    assert stored is not None

    chat.reload()
    expect(chat.messages("user")).to_have_count(2)
    expect(chat.answers).to_have_count(2)
    assert chat.answer_text(0) == "First answer."
    expect(chat.answers.nth(1).locator(".msg__body code")).to_have_text("code")

    chat.send(fake("Third."))
    chat.wait_answer_finished()
    conversation_id = stored["conversationId"]
    assert chat.stored_state()["conversationId"] == conversation_id  # type: ignore[index]
    history = chat.page.evaluate(
        """async (id) => {
          const state = JSON.parse(localStorage.getItem('chatapp:v1'));
          const r = await fetch(`/api/conversations/${id}`,
                                {headers: {'X-Chat-Token': state.token}});
          return r.json();
        }""",
        conversation_id,
    )
    assert [m["content"] for m in history["messages"] if m["role"] == "assistant"] == [
        "First answer.",
        "Second answer with `code`.",
        "Third.",
    ]
    chat.assert_clean()


def test_reload_renews_a_remembered_token_that_has_expired(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Kept across reloads."))
    chat.wait_answer_finished()
    looked_up: list[str] = []
    renewed: list[str] = []

    def expired_once(route: Route, request: Request) -> None:
        looked_up.append(request.all_headers()["x-chat-token"])
        if len(looked_up) == 1:
            # What the service answers for a token past its lifetime.
            route.fulfill(**json_error(404, "not_found"))
        else:
            route.continue_()

    chat.page.route("**/api/conversations/*", expired_once)
    chat.page.on(
        "request",
        lambda r: renewed.append(r.url) if r.url.endswith("/api/token") else None,
    )
    chat.reload()

    expect(chat.answers).to_have_count(1)
    assert chat.answer_text() == "Kept across reloads."
    assert len(renewed) == 1
    assert len(looked_up) == 2
    chat.assert_clean(allow=(f"{FAILED_LOAD} 404",))


BLOCK_STORAGE = """
Object.defineProperty(window, 'localStorage', {
  get() { throw new DOMException('The operation is insecure.', 'SecurityError'); },
});
"""


def test_chat_works_when_storage_is_blocked(
    context: BrowserContext, openai_service: Any
) -> None:
    # Third-party iframes may get no storage at all; the chat must not care.
    context.add_init_script(BLOCK_STORAGE)
    chat = ChatPage(context.new_page(), openai_service.url).open()
    chat.send(fake("No storage, no problem."))
    chat.wait_answer_finished()
    chat.send(fake("Still the same conversation."))
    chat.wait_answer_finished()

    assert chat.answer_text(0) == "No storage, no problem."
    assert chat.answer_text(1) == "Still the same conversation."
    expect(chat.errors).to_have_count(0)
    chat.assert_clean()


def test_expired_conversation_carries_on_in_a_new_one(chat: ChatPage) -> None:
    bodies: list[dict[str, Any]] = []

    def gone_once(route: Route, request: Request) -> None:
        body = json.loads(request.post_data or "{}")
        bodies.append(body)
        if len(bodies) == 1:
            route.fulfill(**json_error(404, "not_found"))
        else:
            route.continue_()

    chat.open()
    chat.send(fake("Before."))
    chat.wait_answer_finished()
    before = chat.stored_state()
    assert before is not None
    chat.page.route("**/api/chat", gone_once)

    chat.send(fake("After."))
    chat.wait_answer_finished()

    assert chat.answer_text() == "After."
    assert bodies[0]["conversation_id"] == before["conversationId"]
    assert "conversation_id" not in bodies[1]
    expect(chat.errors).to_have_count(1)
    expect(chat.errors.first).to_contain_text("starts a new one")
    expect(chat.messages("user")).to_have_count(2)
    after = chat.stored_state()
    assert after is not None
    assert after["conversationId"] != before["conversationId"]
    chat.assert_clean(allow=(f"{FAILED_LOAD} 404",))


# -- refusals ---------------------------------------------------------------


def test_rate_limit_shows_its_message_and_a_live_countdown(
    context: BrowserContext, service_factory: Any, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_env(fake_provider, CHATAPP_RATE_LIMITS="1/minute")
    )
    chat = ChatPage(context.new_page(), service.url).open()
    chat.send(fake("Allowed."))
    chat.wait_answer_finished()

    chat.send(fake("One too many."))
    notice = chat.errors.last
    expect(notice).to_contain_text("You can send again in")
    expect(notice.get_by_role("button", name="Try again")).to_be_disabled()
    before = notice.text_content()
    chat.page.wait_for_function(
        "(before) => document.querySelector('[data-role=error]').textContent"
        " !== before",
        arg=before,
    )
    expect(chat.answers).to_have_count(1)
    expect(chat.stop_button).to_be_hidden()
    chat.assert_clean(allow=(f"{FAILED_LOAD} 429",))


@pytest.mark.parametrize(
    ("status", "code", "retry_after", "words"),
    [
        (429, "quota_exceeded", "7260", "It renews in 2 hours 1 minute."),
        (429, "site_budget_exhausted", "7260", "It opens again in 2 hours 1 minute."),
        (429, "too_many_streams", "5", "Try again in 5 seconds."),
        (503, "over_capacity", "30", "The chat is very busy right now."),
        (400, "message_too_long", None, "Shorten it and send it again."),
        (403, "invalid_token", None, "Reload the page to continue."),
    ],
)
def test_each_refusal_reads_as_plain_words(
    chat: ChatPage, status: int, code: str, retry_after: str | None, words: str
) -> None:
    chat.page.route(
        "**/api/chat",
        lambda route: route.fulfill(**json_error(status, code, retry_after)),
    )
    chat.open()
    chat.send("Hello?")
    notice = chat.errors.last
    expect(notice).to_contain_text(words)
    expect(notice).not_to_contain_text(f"server says {code}")
    expect(chat.stop_button).to_be_hidden()
    if code == "message_too_long":
        # Nothing was accepted: the text is back in the box for editing.
        expect(chat.textarea).to_have_value("Hello?")
        expect(chat.messages("user")).to_have_count(0)
    chat.assert_clean(allow=(FAILED_LOAD,))


def test_retry_after_capacity_refusal_reuses_the_idempotency_key(
    chat: ChatPage,
) -> None:
    keys: list[str | None] = []

    def busy_once(route: Route, request: Request) -> None:
        keys.append(request.all_headers().get("idempotency-key"))
        if len(keys) == 1:
            route.fulfill(**json_error(503, "over_capacity", "1"))
        else:
            route.continue_()

    chat.page.route("**/api/chat", busy_once)
    chat.open()
    chat.send(fake("Made it."))
    retry = chat.errors.last.get_by_role("button", name="Try again")
    expect(chat.errors.last).to_contain_text("The chat is very busy right now.")
    expect(retry).to_be_enabled()  # once the one-second countdown is over
    retry.click()
    chat.wait_answer_finished()

    assert chat.answer_text() == "Made it."
    expect(chat.errors).to_have_count(0)
    expect(chat.messages("user")).to_have_count(1)
    assert len(keys) == 2
    assert keys[0] is not None
    assert keys[0] == keys[1]
    chat.assert_clean(allow=(f"{FAILED_LOAD} 503",))


def test_expired_page_token_is_refreshed_silently(chat: ChatPage) -> None:
    posts: list[str] = []
    refreshed: list[str] = []

    def expired_once(route: Route, request: Request) -> None:
        posts.append(json.loads(request.post_data or "{}")["token"])
        if len(posts) == 1:
            route.fulfill(**json_error(403, "token_expired"))
        else:
            route.continue_()

    chat.page.route("**/api/chat", expired_once)
    chat.page.on(
        "request",
        lambda r: refreshed.append(r.url) if r.url.endswith("/api/token") else None,
    )
    chat.open()
    chat.send(fake("Fresh token, same me."))
    chat.wait_answer_finished()

    assert chat.answer_text() == "Fresh token, same me."
    expect(chat.errors).to_have_count(0)
    assert len(refreshed) == 1
    assert len(posts) == 2
    chat.assert_clean(allow=(f"{FAILED_LOAD} 403",))


def test_provider_failure_reads_as_words_with_a_retry(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("never shown", status=500))
    notice = chat.errors.last
    expect(notice).to_contain_text("AI service")
    expect(notice).not_to_contain_text("{")
    expect(chat.stop_button).to_be_hidden()
    expect(chat.answers).to_have_count(0)
    chat.assert_clean()


# -- embed ------------------------------------------------------------------

PARENT_PAGE = """<!doctype html>
<html><body>
<iframe id="chat" src="{src}" width="420" height="200"></iframe>
<script>
  window.__resizes = [];
  window.addEventListener('message', (e) => {{
    if (e.data && e.data.type === 'chatapp:resize') {{
      window.__resizes.push({{origin: e.origin, height: e.data.height}});
      document.getElementById('chat').height = e.data.height;
    }}
  }});
</script>
</body></html>"""


@pytest.fixture
def parent_site() -> Iterator[LocalSite]:
    site = LocalSite()
    yield site
    site.close()


def test_embed_reports_its_height_to_an_allowed_parent(
    context: BrowserContext,
    service_factory: Any,
    fake_provider: FakeProvider,
    parent_site: LocalSite,
) -> None:
    service = service_factory(
        **openai_env(fake_provider, CHATAPP_EMBED_ORIGINS=parent_site.origin)
    )
    parent_site.html = PARENT_PAGE.format(src=f"{service.url}/embed").encode()
    page = context.new_page()
    page.goto(f"{parent_site.origin}/")
    page.wait_for_function("() => window.__resizes.length > 0")
    first = page.evaluate("() => window.__resizes[window.__resizes.length - 1]")
    assert first["origin"] == service.url
    assert first["height"] > 150

    frame = page.frame_locator("#chat")
    frame.locator("form[data-chatapp-form][data-ready]").wait_for()
    textarea = frame.locator("form[data-chatapp-form] textarea[name=message]")
    textarea.fill(fake("A\n\nB\n\nC\n\nD\n\nE\n\nF"))
    textarea.press("Enter")
    expect(frame.locator('[data-role="assistant"]')).to_have_attribute(
        "data-state", "done"
    )
    page.wait_for_function(
        "(h) => window.__resizes[window.__resizes.length - 1].height > h + 100",
        arg=first["height"],
    )
    assert {r["origin"] for r in page.evaluate("() => window.__resizes")} == {
        service.url
    }


def test_embed_posts_nothing_to_a_parent_that_is_not_listed(
    context: BrowserContext,
    service_factory: Any,
    fake_provider: FakeProvider,
    parent_site: LocalSite,
) -> None:
    service = service_factory(
        **openai_env(fake_provider, CHATAPP_EMBED_ORIGINS=parent_site.origin)
    )
    page = context.new_page()
    # The service's own origin may frame /embed ('self') but is not in
    # CHATAPP_EMBED_ORIGINS, so a message to "*" would be the only way in.
    page.goto(f"{service.url}/healthz")
    page.evaluate(
        """(src) => {
          window.__messages = [];
          window.addEventListener('message', (e) => window.__messages.push(e.data));
          const frame = document.createElement('iframe');
          frame.src = src;
          document.body.append(frame);
        }""",
        f"{service.url}/embed",
    )
    frame = page.frame_locator("iframe")
    frame.locator("form[data-chatapp-form][data-ready]").wait_for()
    frame.locator("form[data-chatapp-form] textarea[name=message]").fill(fake("Hi."))
    frame.locator("form[data-chatapp-form] textarea[name=message]").press("Enter")
    expect(frame.locator('[data-role="assistant"]')).to_have_attribute(
        "data-state", "done"
    )
    assert page.evaluate("() => window.__messages") == []


@pytest.mark.parametrize("path", ["/", "/embed"])
def test_pages_load_without_console_errors_or_csp_violations(
    chat: ChatPage, path: str
) -> None:
    chat.open(path)
    chat.send(fake("Fine, **thanks**.\n\n```js\nconsole.log(1)\n```"))
    chat.wait_answer_finished()
    chat.reload()
    expect(chat.answers).to_have_count(1)
    chat.assert_clean()


# -- screenshots ------------------------------------------------------------

SCREENSHOT_QUESTION = "How do I read a file line by line in Python?"
SCREENSHOT_ANSWER = (
    "Open it with a `with` block and loop over the file object. Python reads "
    "one line at a time, so even huge files stay cheap on memory:\n\n"
    '```python\nwith open("notes.txt", encoding="utf-8") as f:\n'
    "    for line in f:\n        print(line.rstrip())\n```\n\n"
    "| method | memory | speed |\n| --- | --- | --- |\n"
    "| `for line in f` | one line | fast |\n"
    "| `f.readlines()` | whole file | fast |\n"
    "| `f.read().splitlines()` | whole file | fastest |\n\n"
    "A few tips:\n\n"
    "- `line.rstrip()` drops the trailing newline.\n"
    "- Pass `encoding=` explicitly so the result is the same on every system.\n"
    "- Need the lines as a list? Use `f.read().splitlines()`.\n\n"
    "See the [tutorial](https://docs.python.org/3/tutorial/inputoutput.html) "
    "for more."
)


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize(
    ("device", "viewport"), [("desktop", DESKTOP), ("phone", PHONE)]
)
def test_screenshots(
    browser: Browser,
    openai_service: Any,
    fake_provider: FakeProvider,
    device: str,
    viewport: dict[str, int],
    scheme: str,
) -> None:
    options: dict[str, Any] = {"viewport": viewport, "color_scheme": scheme}
    docs_before = {p: p.stat().st_mtime_ns for p in DOCS.glob("*.png")}
    if device == "phone":
        options.update(device_scale_factor=2, is_mobile=True, has_touch=True)
    context = new_context(browser, **options)
    try:
        chat = ChatPage(context.new_page(), openai_service.url).open()
        fake_provider.enqueue(Behaviour(text=SCREENSHOT_ANSWER, delay_ms=2))
        chat.send(SCREENSHOT_QUESTION)
        chat.wait_answer_finished()
        chat.textarea.fill("Can I skip blank lines?")
        chat.textarea.blur()
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{device}-{scheme}.png"
        chat.page.screenshot(path=str(path), animations="disabled", caret="hide")
        assert path.stat().st_size > 10_000
        pictured = DOCS / f"screenshot-{device}-{scheme}.png"
        if (device, scheme) in README_PICTURES and os.environ.get(REFRESH_DOCS):
            shutil.copyfile(path, pictured)
        else:
            # The README's pictures are tracked files: a test run leaves them.
            assert {p: p.stat().st_mtime_ns for p in DOCS.glob("*.png")} == docs_before
        chat.assert_clean()
    finally:
        context.close()
