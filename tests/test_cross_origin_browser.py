"""A page on another origin chats through the API: the README's example, in Chromium.

The page is taken from the README as it stands, so the copy-paste example is
proven to work; only its `CHAT` URL is pointed at the service under test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext
from playwright.sync_api import Page
from playwright.sync_api import Request
from playwright.sync_api import Response
from playwright.sync_api import expect

from chatapp.upstream.sse_decoder import SSEDecoder
from tests.browser import LocalSite
from tests.conftest import ChatClient
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.browser

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE_MARKER = "<!-- example: api-page"
PLACEHOLDER = "https://chat.example.com"


def readme_example() -> str:
    """The example page exactly as the README shows it."""
    text = README.read_text(encoding="utf-8")
    after = text[text.index(EXAMPLE_MARKER) :]
    match = re.search(r"```html\n(.*?)```", after, re.S)
    assert match is not None
    return match.group(1)


@pytest.fixture
def sites() -> Iterator[tuple[LocalSite, LocalSite]]:
    listed, stranger = LocalSite(), LocalSite()
    yield listed, stranger
    listed.close()
    stranger.close()


@pytest.fixture
def service(
    service_factory: ServiceFactory,
    fake_provider: FakeProvider,
    sites: tuple[LocalSite, LocalSite],
) -> Any:
    listed, stranger = sites
    page = readme_example().replace(PLACEHOLDER, "{service}")
    service = service_factory(
        **openai_settings(fake_provider, CHATAPP_API_ORIGINS=listed.origin)
    )
    for site in sites:
        site.html = page.replace("{service}", service.url).encode()
    return service


def started(response: Response) -> dict[str, Any]:
    """The data of a streamed turn's `start` event."""
    events = SSEDecoder().feed(response.body())
    start = next(e for e in events if e.event == "start")
    return dict(json.loads(start.data))


def ask(page: Page, text: str) -> None:
    page.get_by_role("textbox", name="Your question").fill(text)
    page.get_by_role("button", name="Ask").click()


def test_the_readme_page_chats_from_a_listed_origin(
    context: BrowserContext, service: Any, sites: tuple[LocalSite, LocalSite]
) -> None:
    listed, _ = sites
    assert len(readme_example().splitlines()) <= 45
    page = context.new_page()
    api: list[Response] = []
    page.on("response", lambda r: api.append(r) if "/api/" in r.url else None)
    page.goto(listed.origin + "/")

    ask(page, Behaviour(text="Hello from **another** site.", delay_ms=5).as_directive())
    expect(page.locator("#answer")).to_have_text("Hello from **another** site.")
    ask(page, Behaviour(text="Same conversation.", delay_ms=5).as_directive())
    expect(page.locator("#answer")).to_have_text("Same conversation.")

    posts = [r for r in api if r.request.method == "POST"]
    assert [r.url.rsplit("/api/", 1)[1] for r in posts] == ["token", "chat", "chat"]
    # One request per turn: the answer streams in the POST's own response.
    assert not [r for r in api if "/events" in r.url]
    assert all(r.status == 200 for r in posts)
    chats = [r.request.post_data_json for r in posts[1:]]
    assert "conversation_id" not in chats[0]
    assert chats[1]["conversation_id"] == started(posts[1])["conversation_id"]
    for response in posts:
        assert response.headers["access-control-allow-origin"] == listed.origin
        assert "access-control-allow-credentials" not in response.headers


def test_another_origin_is_refused(
    context: BrowserContext,
    service: Any,
    sites: tuple[LocalSite, LocalSite],
    fake_provider: FakeProvider,
) -> None:
    _, stranger = sites
    page = context.new_page()
    answered: list[Response] = []
    failed: list[Request] = []
    page.on("response", lambda r: answered.append(r) if "/api/" in r.url else None)
    page.on("requestfailed", lambda r: failed.append(r))
    page.goto(stranger.origin + "/")

    ask(page, Behaviour(text="Never shown.", delay_ms=5).as_directive())

    expect(page.locator("#answer")).to_contain_text("Sorry, that did not work")
    # The JSON POST needs a preflight, which gets no CORS headers: the
    # browser never sends the POST, and the page cannot read a thing.
    assert answered == []
    assert [(r.method, r.url) for r in failed] == [("POST", f"{service.url}/api/token")]
    assert fake_provider.requests == []


def test_a_plain_form_from_another_origin_is_refused(
    context: BrowserContext,
    service: Any,
    sites: tuple[LocalSite, LocalSite],
    fake_provider: FakeProvider,
) -> None:
    """A form needs no preflight: the server itself must say no (CSRF)."""
    _, stranger = sites
    token = ChatClient(service.url).token  # a genuine token, a foreign page
    stranger.files["/form"] = (
        FORM.format(action=f"{service.url}/api/chat", token=token).encode(),
        "text/html; charset=utf-8",
    )
    page = context.new_page()
    page.goto(stranger.origin + "/form")

    with page.expect_response(f"{service.url}/api/chat") as refused:
        page.get_by_role("button", name="Send").click()

    assert refused.value.status == 403
    assert refused.value.json()["error"]["code"] == "origin_not_allowed"
    assert fake_provider.requests == []


FORM = """<!doctype html><title>Not chatapp</title>
<form method="post" action="{action}">
<input type="hidden" name="token" value="{token}">
<input type="hidden" name="message" value="posted from elsewhere">
<button>Send</button></form>"""
