"""The WordPress plugin's own PHP pushes a page to a real chatapp, then removes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.fake_provider import FakeProvider
from tests.test_knowledge_e2e import WP_SECRET
from tests.test_knowledge_e2e import Owner
from tests.test_knowledge_e2e import knowledge_settings
from tests.test_knowledge_e2e import sources_of
from tests.test_wordpress_plugin import WORDPRESS
from tests.test_wordpress_plugin import run_php

pytestmark = [pytest.mark.php, pytest.mark.e2e]

PUSH = WORDPRESS / "tests" / "push_post.php"
PAGE = "https://wp.example/chatapp-push-test/"
CONTENT = (
    "<h2>Opening hours</h2><p>The Tromsø shop opens at ten on Saturdays and "
    "stays closed on Sundays.</p>"
)


def push(chat_url: str, action: str, secret: str = WP_SECRET) -> list[str]:
    result = run_php(PUSH, chat_url, secret, "Opening hours", CONTENT, action)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_a_published_page_is_answered_from_and_a_trashed_one_is_gone(
    service_factory: ServiceFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    chat = service_factory(**knowledge_settings(fake_provider, tmp_path))
    assert push(chat.url, "publish") == ["PUT 200", "queued 0"]
    [document] = Owner(chat.url).list().json()["documents"]
    assert document["url"] == PAGE and document["title"] == "Opening hours"
    client = ChatClient(chat.url)
    _, events = client.answer("When does the Tromsø shop open on Saturdays?")
    assert [s["url"] for s in sources_of(events)] == [PAGE]

    assert push(chat.url, "trash") == ["DELETE 204", "queued 0"]
    assert Owner(chat.url).list().json()["documents"] == []
    _, events = client.answer("When does the Tromsø shop open on Saturdays?")
    assert sources_of(events) == []


def test_a_push_chatapp_refuses_or_cannot_receive_stays_queued(
    service_factory: ServiceFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    chat = service_factory(**knowledge_settings(fake_provider, tmp_path))
    wrong = push(chat.url, "publish", secret="not-the-shared-secret-0123456789")
    assert wrong == ["PUT 403", "queued 1"]
    chat.stop()  # chatapp away: the connection is refused
    assert push(chat.url, "publish") == ["PUT 0", "queued 1"]


def test_a_post_of_one_paragraph_is_indexed_and_cited(
    service_factory: ServiceFactory, fake_provider: FakeProvider, tmp_path: Path
) -> None:
    # WordPress renders such a post as one <p> element: the plugin must send
    # it as a page, or chatapp finds no page in it and indexes nothing.
    chat = service_factory(**knowledge_settings(fake_provider, tmp_path))
    one = "<p>The Quillmoor lantern has amber glass and a brass handle.</p>\n"
    result = run_php(PUSH, chat.url, WP_SECRET, "The lantern", one, "publish")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    [document] = Owner(chat.url).list().json()["documents"]
    assert document["passages"] >= 1
    client = ChatClient(chat.url)
    _, events = client.answer("What colour is the Quillmoor lantern's glass?")
    assert [s["url"] for s in sources_of(events)] == [PAGE]
