"""One request per turn, in Chromium: the page reads the answer from its POST.

The page POSTs with `Accept: text/event-stream` and reads the turn's events
from that response's body with fetch(); it needs no second request before
the first word. When that connection drops mid-answer, the answer completes
through the `stream_url` the `start` event named, resuming after the last
event shown, with nothing repeated.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Request
from playwright.sync_api import Response
from playwright.sync_api import expect

from tests.browser import ChatPage
from tests.browser import CuttingProxy
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)


def api_requests(chat: ChatPage) -> list[Request]:
    """Record every request the page makes to /api/ from now on."""
    seen: list[Request] = []
    chat.page.on(
        "request", lambda r: seen.append(r) if "/api/" in urlsplit(r.url).path else None
    )
    return seen


def described(requests: list[Request]) -> list[tuple[str, str]]:
    return [(r.method, urlsplit(r.url).path) for r in requests]


def test_each_turn_is_one_request_to_the_api(
    context: BrowserContext, openai_service: Any
) -> None:
    chat = ChatPage(context.new_page(), openai_service.url).open()
    seen = api_requests(chat)

    for n in range(2):
        expected = f"Answer number {n}, read from the POST itself."
        chat.send(Behaviour(text=expected, delay_ms=5).as_directive())
        chat.wait_answer_finished()
        assert chat.answer_text() == expected

    assert described(seen) == [("POST", "/api/chat"), ("POST", "/api/chat")]
    for request in seen:
        assert "text/event-stream" in request.headers["accept"]
        response = request.response()
        assert response is not None and response.status == 200
        assert response.headers["content-type"].startswith("text/event-stream")
    # The second turn continued the first one's conversation.
    second = seen[1].post_data_json
    stored = chat.stored_state()
    assert stored is not None
    assert second["conversation_id"] == stored["conversationId"]
    chat.assert_clean()


def test_the_first_word_shows_while_the_answer_is_still_coming(
    context: BrowserContext, openai_service: Any
) -> None:
    words = [f"slow{i}" for i in range(20)]
    chat = ChatPage(context.new_page(), openai_service.url).open()

    chat.send(Behaviour(text=" ".join(words), pieces=20, delay_ms=250).as_directive())

    expect(chat.answers.last.locator(".msg__body")).to_contain_text("slow0")
    # Shown before the last word was even sent: nothing was held back.
    assert "slow19" not in chat.answer_text()
    expect(chat.stop_button).to_be_visible()
    chat.wait_answer_finished()
    assert chat.answer_text() == " ".join(words)
    chat.assert_clean()


def test_a_dropped_post_completes_through_stream_url(
    context: BrowserContext, openai_service: Any
) -> None:
    expected = " ".join(f"d{i}" for i in range(40))
    proxy = CuttingProxy(openai_service.url, cut_after=6)
    try:
        chat = ChatPage(context.new_page(), proxy.url).open()
        chat.record_answer_states()
        seen = api_requests(chat)

        chat.send(Behaviour(text=expected, delay_ms=30).as_directive())
        chat.wait_answer_finished()

        assert proxy.cuts == 1
        assert chat.answer_text() == expected
        # Every state the answer showed was a prefix: nothing repeated.
        assert all(expected.startswith(state) for state in chat.answer_states())
        paths = described(seen)
        assert paths[0] == ("POST", "/api/chat")
        assert paths[1][0] == "GET" and paths[1][1].endswith("/events")
        assert ("POST", "/api/chat") not in paths[1:]  # resumed, never re-sent
        first, again = proxy.last_event_ids()[:2]
        assert first is None  # the POST
        assert again is not None and int(again) >= 5  # the resume
        chat.assert_clean(allow=("net::ERR_",))
    finally:
        proxy.close()


def test_new_chat_between_the_posts_200_and_its_start_cancels_the_turn(
    context: BrowserContext, openai_service: Any, fake_provider: FakeProvider
) -> None:
    # A buffering proxy passes the POST's 200 and holds its body back: the
    # page has the turn's response but not its `start` event, so no URLs.
    proxy = CuttingProxy(openai_service.url, buffer_streams=True)
    long = " ".join(f"w{i}" for i in range(100))
    try:
        chat = ChatPage(context.new_page(), proxy.url).open()
        seen = api_requests(chat)
        with chat.page.expect_response(is_chat_post) as posted:
            chat.send(Behaviour(text=long, pieces=100, delay_ms=100).as_directive())
        assert posted.value.status == 200
        assert [r for r in seen if r.url.endswith("/cancel")] == []

        with chat.page.expect_request(is_cancel, timeout=15_000) as cancelling:
            chat.page.get_by_role("button", name="New chat").click()

        cancelled = cancelling.value.response()
        assert cancelled is not None and cancelled.status == 202
        # The URLs came from the same Idempotency-Key: the same turn, no other.
        posts = [r for r in seen if is_chat_post(r)]
        keys = {r.headers["idempotency-key"] for r in posts}
        assert len(posts) == 2 and len(keys) == 1
        wait_for(lambda: fake_provider.closed_by_client == 1, 10, "upstream closed")
        assert fake_provider.streams_started == 1
        expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
        chat.assert_clean(allow=("net::ERR_",))
    finally:
        proxy.close()


def is_chat_post(message: Request | Response) -> bool:
    request = message if isinstance(message, Request) else message.request
    return request.method == "POST" and urlsplit(request.url).path == "/api/chat"


def is_cancel(request: Request) -> bool:
    return request.method == "POST" and urlsplit(request.url).path.endswith("/cancel")
