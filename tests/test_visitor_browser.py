"""The visitor's controls on the page, in headless Chromium through gunicorn:
thumbs on each finished answer, a comment after a thumbs down, Download as
Markdown, and Delete with a confirmation, all by keyboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import BrowserContext
from playwright.sync_api import Request
from playwright.sync_api import expect

from tests.browser import ChatPage
from tests.fake_provider import Behaviour

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)


@pytest.fixture
def chat(context: BrowserContext, openai_service: Any) -> ChatPage:
    return ChatPage(context.new_page(), openai_service.url)


def watch_feedback(chat: ChatPage) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    def seen(request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/feedback"):
            sent.append(json.loads(request.post_data or "{}"))

    chat.page.on("request", seen)
    return sent


def answered(chat: ChatPage, text: str) -> None:
    chat.send(Behaviour(text=text, delay_ms=2).as_directive())
    chat.wait_answer_finished()


def test_thumbs_toggle_aria_pressed_and_a_thumbs_down_takes_a_comment(
    chat: ChatPage,
) -> None:
    chat.open()
    sent = watch_feedback(chat)
    answered(chat, "A helpful answer.")
    answer = chat.answers.last
    up = answer.locator('[data-chatapp-feedback="up"]')
    down = answer.locator('[data-chatapp-feedback="down"]')
    expect(up).to_have_attribute("aria-pressed", "false")
    expect(down).to_have_attribute("aria-pressed", "false")
    expect(up).to_have_accessible_name("Good answer")

    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    down.focus()
    chat.page.keyboard.press("Enter")
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(up).to_have_attribute("aria-pressed", "false")

    comment = answer.get_by_role("textbox", name="What was wrong? (optional)")
    expect(comment).to_be_visible()
    comment.fill("It forgot the price.")
    answer.get_by_role("button", name="Send feedback").click()
    expect(answer.locator("[data-chatapp-feedback-form]")).to_have_count(0)
    expect(chat.page.locator("[data-chatapp-status]")).to_have_text(
        "Thanks for your feedback."
    )
    assert [s["rating"] for s in sent] == ["up", "down", "down"]
    assert sent[-1]["comment"] == "It forgot the price."
    chat.assert_clean()


def test_download_saves_the_conversation_as_markdown(chat: ChatPage) -> None:
    chat.open()
    expect(chat.page.locator("[data-chatapp-download]")).to_be_hidden()  # nothing yet
    answered(chat, "Answer to keep.")
    button = chat.page.locator("[data-chatapp-download]")
    expect(button).to_be_visible()
    cid = chat.stored_state()["conversationId"]  # type: ignore[index]

    with chat.page.expect_download() as info:
        button.focus()
        chat.page.keyboard.press("Enter")

    download = info.value
    assert download.suggested_filename == f"conversation-{cid}.md"
    text = Path(download.path()).read_text(encoding="utf-8")
    assert text.startswith(f"# Conversation {cid}")
    assert "Answer to keep." in text
    chat.assert_clean()


def test_delete_asks_first_then_erases_the_conversation_everywhere(
    chat: ChatPage, openai_service: Any
) -> None:
    chat.open()
    answered(chat, "Soon gone.")
    state = chat.stored_state()
    assert state is not None
    cid, token = state["conversationId"], state["token"]
    delete = chat.page.locator("[data-chatapp-delete]")
    dialog = chat.page.locator("[data-chatapp-confirm]")

    # Cancel (Esc) keeps everything, and gives focus back to Delete.
    delete.focus()
    chat.page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    expect(dialog).to_have_accessible_name("Delete this conversation?")
    expect(dialog.locator("[data-chatapp-confirm-cancel]")).to_be_focused()
    chat.page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    expect(delete).to_be_focused()
    expect(chat.answers).to_have_count(1)

    # Confirm by keyboard: Tab to "Delete", Enter.
    chat.page.keyboard.press("Enter")
    expect(dialog).to_be_visible()
    chat.page.keyboard.press("Tab")
    expect(dialog.locator("[data-chatapp-confirm-delete]")).to_be_focused()
    chat.page.keyboard.press("Enter")

    expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
    expect(chat.page.locator("[data-chatapp-welcome]")).to_be_visible()
    expect(chat.page.locator("[data-chatapp-status]")).to_have_text(
        "The conversation was deleted."
    )
    expect(chat.textarea).to_be_focused()
    expect(delete).to_be_hidden()
    assert chat.stored_state() is None
    gone = requests.get(
        f"{openai_service.url}/api/conversations/{cid}",
        headers={"X-Chat-Token": token},
        timeout=10,
    )
    assert gone.status_code == 404
    # A reload shows nothing of it, and New chat's undo was not offered.
    chat.reload()
    expect(chat.page.locator("[data-chatapp-log] > *")).to_have_count(0)
    expect(chat.page.locator("[data-chatapp-undo]")).to_be_hidden()
    chat.assert_clean()


def test_new_chat_still_offers_undo(chat: ChatPage) -> None:
    chat.open()
    answered(chat, "Keep me.")
    chat.page.locator("[data-chatapp-new]").click()
    expect(chat.page.locator("[data-chatapp-undo]")).to_be_visible()
    expect(chat.page.locator("[data-chatapp-delete]")).to_be_hidden()
    chat.page.locator("[data-chatapp-undo] button").click()
    expect(chat.answers).to_have_count(1)
    expect(chat.page.locator("[data-chatapp-delete]")).to_be_visible()


def test_a_restored_answer_can_be_rated_after_a_reload(chat: ChatPage) -> None:
    chat.open()
    answered(chat, "Rate me later.")
    chat.reload()
    sent = watch_feedback(chat)
    answer = chat.answers.last
    expect(answer.locator(".msg__body")).to_have_text("Rate me later.")
    up = answer.locator('[data-chatapp-feedback="up"]')
    with chat.page.expect_response(lambda r: r.url.endswith("/feedback")) as info:
        up.click()
    assert info.value.status == 204
    expect(up).to_have_attribute("aria-pressed", "true")
    assert sent == [{"rating": "up"}]
    chat.assert_clean()
