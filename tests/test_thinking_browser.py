"""A thinking model on the page, in headless Chromium under real gunicorn.

"Thinking…" with its seconds until the first word, then the answer; the
reasoning in a disclosure that is closed by default and works by keyboard;
screen readers hear "Thinking" once.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import expect

from tests.browser import ChatPage
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import OPENAI_REASONING_STREAM
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.test_models_e2e import openai_parts

pytestmark = pytest.mark.browser

expect.set_options(timeout=15_000)


def test_thinking_then_the_answer_and_a_folded_reasoning(
    context: BrowserContext,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_SHOW_REASONING="1")
    )
    answer, thought = openai_parts(OPENAI_REASONING_STREAM)
    assert "count the number" in thought and "count the number" not in answer
    chat = ChatPage(context.new_page(), service.url).open()
    said: list[str] = []
    chat.page.expose_function("chatappHeard", lambda text: said.append(text))
    chat.page.evaluate(
        """() => new MutationObserver(() => {
             const text = document.querySelector('[data-chatapp-status]').textContent;
             if (text) window.chatappHeard(text);
           }).observe(document.querySelector('[data-chatapp-status]'),
                      {childList: true, characterData: true, subtree: true})"""
    )
    chat.send(
        Behaviour(
            fixture=OPENAI_REASONING_STREAM, ttft_ms=2500, delay_ms=2
        ).as_directive()
    )
    reply = chat.answers.last
    # Silent for 2.5 s: "Thinking…" with the seconds counted.
    expect(reply.locator(".thinking")).to_contain_text("Thinking…")
    expect(reply.locator("[data-chatapp-thinking-time]")).to_have_text(
        re.compile(r"^[1-9][0-9]* s$")
    )
    # Then the answer, without a word of the reasoning in it.
    expect(reply.locator(".msg__body")).to_have_text(answer)
    expect(reply).to_have_attribute("data-state", "done")
    assert reply.locator(".thinking").count() == 0
    # The reasoning, folded: closed by default, opened and closed by keyboard.
    details = reply.locator("details[data-chatapp-reasoning]")
    expect(details).to_have_count(1)
    expect(details).not_to_have_attribute("open", "")
    text = details.locator(".reasoning__text")
    expect(text).to_be_hidden()
    summary = details.locator("summary")
    summary.focus()
    chat.page.keyboard.press("Enter")
    expect(details).to_have_attribute("open", "")
    expect(text).to_be_visible()
    assert text.inner_text().strip() == thought.strip()
    chat.page.keyboard.press("Space")
    expect(details).not_to_have_attribute("open", "")
    # "Thinking" was announced once, not per token or per second.
    assert said.count("Thinking") == 1, said


def test_a_retry_shows_a_quiet_note_until_the_answer(
    context: BrowserContext,
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
) -> None:
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_UPSTREAM_RETRIES="2")
    )
    fake_provider.fail_next(1, 503, retry_after=3)
    chat = ChatPage(context.new_page(), service.url).open()
    chat.send(Behaviour(text="Back again.").as_directive())
    reply = chat.answers.last
    note = reply.locator(".msg__note")
    expect(note).to_have_text("The AI service is busy; asking again…")
    expect(reply.locator(".msg__body")).to_have_text("Back again.")
    expect(reply).to_have_attribute("data-state", "done")
    expect(note).not_to_have_text("The AI service is busy; asking again…")
    assert len(fake_provider.requests) == 2
