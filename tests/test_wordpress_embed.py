"""WordPress embedding end to end: the plugin's page, SSO, CSP, resizing.

The host page is rendered by the plugin's own PHP and served from another
loopback origin, as a WordPress site would be; the iframe talks to chatapp
under real gunicorn; Debian's headless Chromium enforces the CSP.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
import requests
from playwright.sync_api import Browser
from playwright.sync_api import Frame
from playwright.sync_api import Page
from playwright.sync_api import sync_playwright

from chatapp.tokens import Identity
from chatapp.tokens import TokenSigner
from tests.browser import LocalSite
from tests.browser import launch_chromium
from tests.browser import new_context
from tests.conftest import ROOT
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.fake_provider import FakeProvider

pytestmark = [pytest.mark.e2e, pytest.mark.php]

SECRET = "wordpress-shared-secret-for-the-tests-0123456789"
PLUGIN = ROOT / "wordpress" / "chatapp-embed"
SCRIPT_PATH = "/wp-content/plugins/chatapp-embed/assets/chatapp-embed.js"


class WordPressSite(LocalSite):
    """A loopback 'WordPress' serving a page the plugin rendered, and its script."""

    def __init__(self) -> None:
        super().__init__()
        script = (PLUGIN / "assets" / "chatapp-embed.js").read_bytes()
        self.files[SCRIPT_PATH] = (script, "text/javascript")

    def render(self, chatapp_url: str, user_id: int, name: str = "Ada") -> None:
        """Render the page with the plugin's PHP for this user (0: logged out)."""
        result = subprocess.run(
            [
                "php",
                str(ROOT / "wordpress" / "tests" / "render_page.php"),
                self.origin,
                chatapp_url,
                SECRET,
                str(user_id),
                name,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        self.html = result.stdout.encode()


@pytest.fixture
def site() -> Iterator[WordPressSite]:
    wordpress = WordPressSite()
    yield wordpress
    wordpress.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


def mint(sub: str = "42", ttl: int | None = None) -> str:
    """A token made by the plugin's own PHP code."""
    args = ["php", str(ROOT / "wordpress" / "tests" / "mint_token.php"), SECRET]
    args += [sub, "Ada", "https://blog.example"]
    if ttl is not None:
        args.append(str(ttl))
    return subprocess.run(
        args, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def page_identity(html: str) -> dict[str, Any]:
    """Read the (signed, not secret) payload of the page token in a page."""
    marker = 'name="chatapp-token" content="'
    token = html[html.index(marker) + len(marker) :].split('"', 1)[0]
    payload = token.split(".")[0]
    return dict(
        json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    )


def embed_service(factory: ServiceFactory, origins: str, **extra: Any) -> Service:
    return factory(
        CHATAPP_WP_SHARED_SECRET=SECRET, CHATAPP_EMBED_ORIGINS=origins, **extra
    )


# -- SSO over HTTP ------------------------------------------------------------------


def test_sso_from_the_plugin_signs_the_user_in(service_factory: ServiceFactory) -> None:
    service = embed_service(service_factory, "https://blog.example")
    response = requests.get(service.url + "/embed", params={"sso": mint()}, timeout=10)
    assert response.status_code == 200
    identity = page_identity(response.text)
    assert identity["u"] == "42"
    assert identity["s"] == "https://blog.example"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"), id="tampered"
        ),
        pytest.param(
            lambda t: jwt.encode(
                {**jwt.decode(t, options={"verify_signature": False})},
                key=None,
                algorithm="none",
            ),
            id="alg-none",
        ),
        pytest.param(
            lambda t: jwt.encode(
                {**jwt.decode(t, options={"verify_signature": False}), "aud": "other"},
                SECRET,
                algorithm="HS256",
            ),
            id="wrong-audience",
        ),
        pytest.param(
            lambda t: jwt.encode(
                {
                    **jwt.decode(t, options={"verify_signature": False}),
                    "exp": int(time.time()) + 3600,
                },
                SECRET,
                algorithm="HS256",
            ),
            id="over-long",
        ),
    ],
)
def test_forged_sso_gets_a_403_page(
    service_factory: ServiceFactory, forge: Any
) -> None:
    service = embed_service(service_factory, "https://blog.example")
    response = requests.get(
        service.url + "/embed", params={"sso": forge(mint())}, timeout=10
    )
    assert response.status_code == 403
    assert response.headers["Content-Type"].startswith("text/html")
    assert "chatapp-token" not in response.text
    assert "Traceback" not in response.text
    # In the site's language, like the chat it stands in for.
    german = requests.get(
        service.url + "/embed",
        params={"sso": forge(mint()), "lang": "de_DE"},
        timeout=10,
    )
    assert german.status_code == 403
    assert '<html lang="de" dir="ltr">' in german.text
    assert "Anmeldung abgelehnt" in german.text
    # The refusal is framed where the chat is, under the same strict policy.
    page = requests.get(service.url + "/embed", timeout=10).headers
    policy = response.headers["Content-Security-Policy"]
    assert policy == page["Content-Security-Policy"]
    assert "frame-ancestors 'self' https://blog.example" in policy
    assert "script-src 'self'" in policy
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_expired_sso_degrades_to_an_anonymous_visitor(
    service_factory: ServiceFactory,
) -> None:
    service = embed_service(service_factory, "https://blog.example")
    # A token the plugin made 20 minutes ago, for five minutes.
    claims = jwt.decode(mint(), options={"verify_signature": False})
    claims["iat"] = int(time.time()) - 1200
    claims["exp"] = claims["iat"] + 300
    old = jwt.encode(claims, SECRET, algorithm="HS256")
    response = requests.get(service.url + "/embed", params={"sso": old}, timeout=10)
    assert response.status_code == 200
    assert "u" not in page_identity(response.text)


def test_frame_ancestors_follow_the_setting(service_factory: ServiceFactory) -> None:
    service = embed_service(
        service_factory, "https://blog.example https://shop.example"
    )
    embed = requests.get(service.url + "/embed", timeout=10).headers
    index = requests.get(service.url + "/", timeout=10).headers
    assert (
        "frame-ancestors 'self' https://blog.example https://shop.example"
        in embed["Content-Security-Policy"]
    )
    assert "X-Frame-Options" not in embed
    assert "frame-ancestors 'self'" in index["Content-Security-Policy"]
    assert "https://blog.example" not in index["Content-Security-Policy"]
    assert index["X-Frame-Options"] == "SAMEORIGIN"


# -- in the browser -----------------------------------------------------------------


def chat_frame(page: Page) -> Frame:
    page.wait_for_selector("iframe[data-chatapp-embed]")
    handle = page.query_selector("iframe[data-chatapp-embed]")
    assert handle is not None
    frame = handle.content_frame()
    assert frame is not None
    return frame


FRAME_HEIGHT = (
    "() => document.querySelector('iframe[data-chatapp-embed]')"
    ".getBoundingClientRect().height"
)


def iframe_height(page: Page) -> int:
    return int(
        page.eval_on_selector(
            "iframe[data-chatapp-embed]", "(f) => f.getBoundingClientRect().height"
        )
    )


def test_allowed_wordpress_page_chats_in_the_iframe_and_is_resized(
    browser: Browser,
    service_factory: ServiceFactory,
    site: WordPressSite,
    fake_provider: FakeProvider,
) -> None:
    service = embed_service(
        service_factory, site.origin, **openai_settings(fake_provider)
    )
    site.render(service.url, user_id=42)
    long_answer = "\n\n".join(f"Paragraph {i} of a long answer." for i in range(30))
    context = new_context(browser)
    try:
        page = context.new_page()
        page.goto(site.origin + "/")
        frame = chat_frame(page)
        frame.wait_for_selector("form[data-chatapp-form][data-ready]")
        assert page_identity(frame.content())["u"] == "42"
        # The plugin's listener fits the frame to the chat: an empty chat is
        # short, so the 600 px frame shrinks; a long answer makes it grow.
        page.wait_for_function(FRAME_HEIGHT + " < 600")
        box = frame.locator("form[data-chatapp-form] textarea[name=message]")
        box.fill(f"fake: | {long_answer}")
        box.press("Enter")
        frame.wait_for_selector('[data-role="assistant"][data-state="done"]')
        # Text, not innerText: blocks scrolled out of view skip rendering
        # (content-visibility), and innerText leaves unrendered text out.
        answer = str(frame.locator('[data-role="assistant"]').text_content())
        assert "Paragraph 29 of a long answer." in answer
        page.wait_for_function(FRAME_HEIGHT + " > 900")
        assert iframe_height(page) <= 2000
    finally:
        context.close()


def test_page_from_an_origin_not_allowed_is_refused_by_the_browser(
    browser: Browser, service_factory: ServiceFactory, site: WordPressSite
) -> None:
    service = embed_service(service_factory, "https://some-other-site.example")
    site.render(service.url, user_id=0)
    context = new_context(browser)
    refusals: list[str] = []
    try:
        page = context.new_page()
        page.on("console", lambda m: refusals.append(m.text))
        page.goto(site.origin + "/")
        page.wait_for_selector("iframe[data-chatapp-embed]")
        frame = chat_frame(page)
        frame.wait_for_load_state()
        assert frame.url.startswith("chrome-error://") or frame.url == "about:blank"
        assert frame.query_selector("[data-chatapp-form]") is None
        assert iframe_height(page) == 600  # no resize message ever arrived
    finally:
        context.close()


def test_a_sign_in_past_its_lifetime_reloads_the_wordpress_page(
    browser: Browser,
    service_factory: ServiceFactory,
    site: WordPressSite,
    fake_provider: FakeProvider,
) -> None:
    """After 8 hours a WordPress identity needs a fresh SSO: the page's Reload
    asks the plugin to reload the WordPress page, which renders a new one."""
    key = "wordpress-embed-page-key-0123456789abcdef"
    service = embed_service(
        service_factory,
        site.origin,
        CHATAPP_SECRET_KEY=key,
        **openai_settings(fake_provider),
    )
    site.render(service.url, user_id=42)
    # The frame's page as chatapp rendered it 9 hours ago: the same user,
    # first signed in then. (A browser cannot age 8 hours in a test; the
    # server's answers to this token are real.)
    signer = TokenSigner((key,), page_ttl=3600, stream_ttl=3600)
    aged = Identity(
        "visitor-of-old", "42", "blog", "Ada", issued=time.time() - 9 * 3600
    )
    old_token = signer.page_token(aged)
    context = new_context(browser)
    try:
        page = context.new_page()

        def as_rendered_long_ago(route: Any) -> None:
            response = route.fetch()
            html = response.text()
            fresh = page_identity(html)
            assert fresh["u"] == "42"
            marker = 'name="chatapp-token" content="'
            start = html.index(marker) + len(marker)
            token = html[start : html.index('"', start)]
            route.fulfill(response=response, body=html.replace(token, old_token))

        page.route("**/embed?*", as_rendered_long_ago)
        page.goto(site.origin + "/")
        frame = chat_frame(page)
        frame.wait_for_selector("form[data-chatapp-form][data-ready]")
        page.unroute("**/embed?*")
        page.evaluate("() => { window.renderedBefore = true; }")

        box = frame.locator("form[data-chatapp-form] textarea[name=message]")
        box.fill("fake: | hello again")
        box.press("Enter")
        # The server refuses the identity and its renewal: the chat says so.
        notice = frame.get_by_text("This chat session has expired")
        notice.wait_for()
        with page.expect_navigation():
            frame.get_by_role("button", name="Reload").click()
        # A new WordPress page: a fresh SSO and a fresh identity for user 42.
        assert page.evaluate("() => window.renderedBefore === undefined")
        frame = chat_frame(page)
        frame.wait_for_selector("form[data-chatapp-form][data-ready]")
        renewed = page_identity(frame.content())
        assert renewed["u"] == "42"
        assert renewed["o"] > time.time() - 60
        box = frame.locator("form[data-chatapp-form] textarea[name=message]")
        box.fill("fake: | signed in again")
        box.press("Enter")
        frame.wait_for_selector('[data-role="assistant"][data-state="done"]')
        assert "signed in again" in str(
            frame.locator('[data-role="assistant"]').last.text_content()
        )
    finally:
        context.close()
