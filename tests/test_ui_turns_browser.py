"""Regenerate, edit, refusals without chatter and the accessibility polish,
in headless Chromium against the service under real gunicorn.

Regenerate and Edit are new turns through the same `POST /api/chat` with
`replace_last`: the same conversation, a new Idempotency-Key, the last
exchange replaced (the question shown and stored once, the discarded answer
never sent upstream), and the server's history in the order the page shows.
Live regions say each thing once: never the person's own message, "Stopped"
once, no ticking countdown.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Request
from playwright.sync_api import Route
from playwright.sync_api import expect

from tests.browser import ChatPage
from tests.browser import new_context
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)

FAILED_LOAD = "Failed to load resource: the server responded with a status of"


def fake(text: str, **options: int | str | bool) -> str:
    return Behaviour(text=text, **{"delay_ms": 5, **options}).as_directive()  # type: ignore[arg-type]


@pytest.fixture
def chat(context: BrowserContext, openai_service: Any) -> ChatPage:
    return ChatPage(context.new_page(), openai_service.url)


def watch_posts(chat: ChatPage) -> list[dict[str, Any]]:
    """Every POST /api/chat the page sends: its body and Idempotency-Key."""
    posts: list[dict[str, Any]] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/api/chat"):
            body = json.loads(request.post_data or "{}")
            body["key"] = request.headers.get("idempotency-key")
            posts.append(body)

    chat.page.on("request", seen)
    return posts


def history(chat: ChatPage) -> list[tuple[str, str]]:
    """The conversation as the server keeps it."""
    body = chat.page.evaluate(
        """async () => {
          const state = JSON.parse(localStorage.getItem('chatapp:v1'));
          const r = await fetch(`/api/conversations/${state.conversationId}`,
                                {headers: {'X-Chat-Token': state.token}});
          return r.json();
        }"""
    )
    return [(m["role"], m["content"].strip()) for m in body["messages"]]


def shown(chat: ChatPage) -> list[tuple[str, str]]:
    """The conversation as the page shows it."""
    return [
        (str(role), str(text).strip())
        for role, text in chat.page.evaluate(
            """() => [...document.querySelectorAll(
                 '[data-chatapp-log] > [data-role=user], '
                 + '[data-chatapp-log] > [data-role=assistant]')]
               .map((m) => [m.dataset.role,
                            m.querySelector('.msg__body').textContent])"""
        )
    ]


# -- regenerate and edit ----------------------------------------------------


def test_regenerate_replaces_the_answer_and_never_sends_the_discarded_one(
    chat: ChatPage, fake_provider: FakeProvider
) -> None:
    chat.open()
    posts = watch_posts(chat)
    question = fake("An answer.")
    fake_provider.enqueue(Behaviour(text="The discarded answer."))
    chat.send(question)
    chat.wait_answer_finished()
    assert chat.answer_text() == "The discarded answer."
    regenerate = chat.page.locator("[data-chatapp-regenerate]")
    expect(regenerate).to_have_count(1)
    expect(chat.answers.last.locator("[data-chatapp-regenerate]")).to_be_visible()
    expect(regenerate).to_have_accessible_name("Regenerate")

    regenerate.click()
    expect(chat.answers).to_have_count(1)
    chat.wait_answer_finished()
    expect(chat.answers.last.locator(".msg__body")).to_have_text("An answer.")

    assert len(posts) == 2
    assert posts[1]["message"] == question
    assert posts[1]["conversation_id"] == chat.stored_state()["conversationId"]  # type: ignore[index]
    assert posts[1]["replace_last"] is True
    assert posts[0]["key"] != posts[1]["key"]
    # The question once, on the page and on the server, in the same order.
    assert (
        history(chat)
        == shown(chat)
        == [
            ("user", question),
            ("assistant", "An answer."),
        ]
    )
    expect(chat.messages("user")).to_have_count(1)
    # The model was asked the question alone: never its discarded answer.
    upstream = fake_provider.wait_for_requests(2)[1].body
    assert upstream is not None
    sent = json.dumps(upstream["messages"])
    assert "The discarded answer." not in sent
    assert [m["role"] for m in upstream["messages"] if m["role"] != "system"] == [
        "user"
    ]
    # Still exactly one Regenerate and one Edit: on the newest messages.
    expect(regenerate).to_have_count(1)
    expect(chat.answers.last.locator("[data-chatapp-regenerate]")).to_have_count(1)
    expect(chat.page.locator("[data-chatapp-edit]")).to_have_count(1)
    expect(chat.messages("user").last.locator("[data-chatapp-edit]")).to_have_count(1)
    chat.assert_clean()


def test_regenerate_after_stop(chat: ChatPage) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    chat.open()
    chat.send(fake(words, delay_ms=30))
    expect(chat.page.locator("[data-chatapp-regenerate]")).to_have_count(0)
    chat.page.wait_for_function(
        "() => (document.querySelector('[data-role=assistant] .msg__body')"
        "?.textContent || '').includes('word3 ')"
    )
    chat.stop_button.click()
    answer = chat.wait_answer_finished()
    expect(answer).to_have_attribute("data-state", "stopped")

    answer.locator("[data-chatapp-regenerate]").click()
    expect(chat.answers).to_have_count(1)
    expect(chat.answers.last).to_contain_text("word3")
    chat.stop_button.click()
    chat.wait_answer_finished()
    assert history(chat) == shown(chat)
    chat.assert_clean()


def test_regenerate_after_an_error_in_the_middle(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Half an answer that breaks.", midstream_error=True, pieces=4))
    answer = chat.wait_answer_finished()
    expect(answer).to_have_attribute("data-state", "error")
    expect(chat.errors.last).to_be_visible()

    answer.locator("[data-chatapp-regenerate]").click()
    chat.wait_answer_finished()
    expect(chat.answers).to_have_count(1)
    expect(chat.messages("user")).to_have_count(1)
    chat.assert_clean()


def test_edit_puts_the_last_message_back_and_sends_it_as_a_new_turn(
    chat: ChatPage,
) -> None:
    chat.open()
    posts = watch_posts(chat)
    chat.send(fake("First."))
    chat.wait_answer_finished()
    chat.send(fake("Second."))
    chat.wait_answer_finished()
    edit = chat.page.get_by_role("button", name="Edit your last message")
    expect(edit).to_have_count(1)
    expect(chat.messages("user").last.locator("[data-chatapp-edit]")).to_be_visible()

    edit.click()
    expect(chat.textarea).to_have_value(fake("Second."))
    expect(chat.textarea).to_be_focused()
    chat.textarea.fill(fake("Second, edited."))
    chat.textarea.press("Enter")
    chat.wait_answer_finished()

    assert chat.answer_text() == "Second, edited."
    assert len(posts) == 3
    assert posts[2]["conversation_id"] == posts[1]["conversation_id"]
    assert posts[2]["replace_last"] is True
    assert len({post["key"] for post in posts}) == 3
    # The edited question replaced the last exchange, here and on the server.
    assert (
        history(chat)
        == shown(chat)
        == [
            ("user", fake("First.")),
            ("assistant", "First."),
            ("user", fake("Second, edited.")),
            ("assistant", "Second, edited."),
        ]
    )
    chat.assert_clean()


# -- refusals without chatter -----------------------------------------------


def test_a_refusal_countdown_is_quiet_and_send_waits_it_out(chat: ChatPage) -> None:
    refused: list[int] = []

    def busy_once(route: Route) -> None:
        refused.append(1)
        if len(refused) == 1:
            body = {"error": {"code": "rate_limited", "message": "slow down"}}
            route.fulfill(
                status=429,
                headers={"Retry-After": "3", "Cache-Control": "no-store"},
                content_type="application/json",
                body=json.dumps(body),
            )
        else:
            route.continue_()

    chat.page.route("**/api/chat", busy_once)
    chat.open()
    chat.record_speech()
    chat.send(fake("Eventually."))
    notice = chat.errors.last
    expect(notice).to_contain_text("You can send again in")
    # Send shows the wait and is disabled meanwhile, even with text typed.
    chat.textarea.fill(fake("Too soon."))
    expect(chat.send_button).to_be_disabled()
    expect(chat.send_button.locator("[data-chatapp-wait]")).to_have_text(
        re.compile(r"^[1-3]s$")
    )
    expect(chat.send_button).to_have_accessible_name(
        re.compile(r"^Send message, possible again in [1-3] seconds?$")
    )
    chat.textarea.press("Enter")
    expect(chat.messages("user")).to_have_count(1)

    status = chat.page.locator("[data-chatapp-status]")
    expect(status).to_have_text("You can send messages again.")
    expect(chat.send_button).to_be_enabled()
    expect(chat.send_button).to_have_accessible_name("Send message")
    expect(notice).to_contain_text("You can send again now.")
    spoken = chat.spoken()
    # Read once when it appeared, then one announcement: no ticking.
    assert len([text for text in spoken if "second" in text]) == 1
    assert spoken.count("You can send messages again.") == 1
    chat.assert_clean(allow=(f"{FAILED_LOAD} 429",))


def test_older_try_again_buttons_are_disabled_once_a_newer_turn_starts(
    chat: ChatPage,
) -> None:
    chat.open()
    chat.send(fake("never shown", status=500))
    retry = chat.errors.last.get_by_role("button", name="Try again")
    expect(retry).to_be_enabled()
    chat.wait_idle()

    chat.send(fake("A newer answer."))
    chat.wait_answer_finished()
    expect(retry).to_be_disabled()
    retry.click(force=True)
    expect(chat.answers).to_have_count(1)
    assert chat.answer_text() == "A newer answer."
    chat.assert_clean()


# -- accessibility polish ---------------------------------------------------


def test_each_message_has_a_hidden_heading(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Hello."))
    chat.wait_answer_finished()
    you = chat.page.get_by_role("heading", name="You said")
    assistant = chat.page.get_by_role("heading", name="Assistant said")
    expect(you).to_have_count(1)
    expect(assistant).to_have_count(1)
    for heading in (you, assistant):
        size = heading.evaluate("(el) => el.getBoundingClientRect().width")
        assert size <= 1
    chat.assert_clean()


def test_escape_stops_from_anywhere_and_stopped_is_said_once(chat: ChatPage) -> None:
    words = " ".join(f"word{i}" for i in range(300))
    chat.open()
    chat.record_speech()
    chat.send(fake(words, delay_ms=30))
    chat.page.wait_for_function(
        "() => (document.querySelector('[data-role=assistant] .msg__body')"
        "?.textContent || '').includes('word3 ')"
    )
    new_chat = chat.page.get_by_role("button", name="New chat")
    new_chat.focus()
    chat.page.keyboard.press("Escape")

    answer = chat.wait_answer_finished()
    expect(answer).to_have_attribute("data-state", "stopped")
    expect(answer.locator(".msg__note")).to_have_text("Stopped")
    expect(new_chat).to_be_focused()
    spoken = chat.spoken()
    assert [text for text in spoken if "Stop" in text] == ["Stopped"]
    # The person's own message is never read back to them.
    assert not [text for text in spoken if "fake:" in text]
    chat.assert_clean()


def parse_rgb(value: str) -> tuple[float, float, float]:
    numbers = [float(n) for n in re.findall(r"[\d.]+", value)[:3]]
    return numbers[0], numbers[1], numbers[2]


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        def channel(c: float) -> float:
            c /= 255
            return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

        r, g, b_ = parse_rgb(colour)
        return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b_)

    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_composer_contrast_and_focus_ring(
    browser: Any, openai_service: Any, scheme: str
) -> None:
    context = new_context(browser, color_scheme=scheme)
    try:
        chat = ChatPage(context.new_page(), openai_service.url).open()
        chat.textarea.focus()
        styles = chat.page.evaluate(
            """() => {
              const box = document.querySelector('.composer__box');
              const area = box.querySelector('textarea');
              const b = getComputedStyle(box);
              const p = getComputedStyle(area, '::placeholder');
              return {
                surface: b.backgroundColor, border: b.borderTopColor,
                page: getComputedStyle(document.body).backgroundColor,
                placeholder: p.color, opacity: p.opacity,
                outline: b.outlineWidth, outlineStyle: b.outlineStyle,
                ring: b.outlineColor,
              };
            }"""
        )
        assert styles["opacity"] == "1"
        assert contrast(styles["placeholder"], styles["surface"]) >= 4.5
        assert contrast(styles["border"], styles["surface"]) >= 3
        assert contrast(styles["border"], styles["page"]) >= 3
        assert styles["outline"] == "2px"
        assert styles["outlineStyle"] == "solid"
        assert contrast(styles["ring"], styles["page"]) >= 3
        chat.assert_clean()
    finally:
        context.close()


def test_new_chat_can_be_undone_for_a_few_seconds(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Keep me."))
    chat.wait_answer_finished()
    before = chat.stored_state()
    assert before is not None

    chat.page.get_by_role("button", name="New chat").click()
    expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
    assert chat.stored_state() is None
    undo = chat.page.get_by_role("button", name="Undo")
    expect(undo).to_be_visible()
    undo.click()

    expect(undo).to_be_hidden()
    expect(chat.answers).to_have_count(1)
    assert chat.answer_text() == "Keep me."
    assert chat.stored_state()["conversationId"] == before["conversationId"]  # type: ignore[index]
    expect(chat.textarea).to_be_focused()
    expect(chat.page.locator("[data-chatapp-regenerate]")).to_have_count(1)

    # The restored conversation carries on where it was.
    chat.send(fake("Still the same chat."))
    chat.wait_answer_finished()
    assert history(chat) == shown(chat)
    chat.assert_clean()


def test_undo_goes_away_once_a_new_message_is_sent(chat: ChatPage) -> None:
    chat.open()
    chat.send(fake("Old chat."))
    chat.wait_answer_finished()
    chat.page.get_by_role("button", name="New chat").click()
    undo = chat.page.get_by_role("button", name="Undo")
    expect(undo).to_be_visible()
    chat.send(fake("A fresh start."))
    expect(undo).to_be_hidden()
    chat.wait_answer_finished()
    expect(chat.answers).to_have_count(1)
    chat.assert_clean()


def test_the_length_counter_is_announced_at_its_thresholds(chat: ChatPage) -> None:
    chat.open()
    limit = int(
        str(
            chat.page.locator('meta[name="chatapp-max-message-chars"]').get_attribute(
                "content"
            )
        )
    )
    chat.record_speech()
    status = chat.page.locator("[data-chatapp-status]")
    chat.textarea.fill("x" * (limit - 10))
    expect(status).to_have_text("10 characters left.")
    chat.textarea.press("x")
    chat.textarea.fill("x" * (limit + 5))
    expect(status).to_have_text(
        "5 characters too long. Shorten the message to send it."
    )
    spoken = chat.spoken()
    assert len([text for text in spoken if "characters" in text]) == 2
    chat.assert_clean()


def test_a_refused_edit_still_replaces_when_sent_again(chat: ChatPage) -> None:
    chat.open()
    posts = watch_posts(chat)
    chat.send(fake("First."))
    chat.wait_answer_finished()
    chat.send(fake("Second."))
    chat.wait_answer_finished()
    refused: list[int] = []

    def refuse_once(route: Route) -> None:
        if refused:
            route.continue_()
            return
        refused.append(1)
        body = {"error": {"code": "invalid_input", "message": "no"}}
        route.fulfill(
            status=400, content_type="application/json", body=json.dumps(body)
        )

    chat.page.route("**/api/chat", refuse_once)
    chat.page.get_by_role("button", name="Edit your last message").click()
    chat.textarea.fill(fake("Second, edited."))
    chat.textarea.press("Enter")
    # Handed back for editing; sent again, it still replaces.
    expect(chat.textarea).to_have_value(fake("Second, edited."))
    chat.textarea.press("Enter")
    chat.wait_answer_finished()
    expect(chat.answers.last.locator(".msg__body")).to_have_text("Second, edited.")

    assert [p.get("replace_last") for p in posts[2:]] == [True, True]
    assert history(chat) == [
        ("user", fake("First.")),
        ("assistant", "First."),
        ("user", fake("Second, edited.")),
        ("assistant", "Second, edited."),
    ]
    assert history(chat) == [
        pair for pair in shown(chat) if pair[0] in ("user", "assistant")
    ]
    chat.assert_clean(allow=(FAILED_LOAD,))
