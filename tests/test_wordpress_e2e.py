"""The plugin in a real WordPress keeps a real chatapp's knowledge in step.

Debian's WordPress 6.1 with its own MariaDB, served by `php -S`
(tests/wordpress_site.py), the repository's plugin activated with
`chatapp_push_content` on, pointed at chatapp under gunicorn (knowledge on,
SQLite index, the fake provider). Posts are published, edited and trashed
through WordPress's own PHP API (wordpress/tests/wp_site.php), and WP-Cron,
started by WordPress itself, delivers the pushes.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import wait_for
from tests.fake_provider import FakeProvider
from tests.test_knowledge_e2e import WP_SECRET
from tests.test_knowledge_e2e import Owner
from tests.test_knowledge_e2e import knowledge_settings
from tests.test_knowledge_e2e import sources_of
from tests.wordpress_site import WordPressSite

pytestmark = [pytest.mark.php, pytest.mark.e2e]

# Seconds WordPress and chatapp get for a push that WP-Cron runs at once.
PUSH_WITHIN = 30


@pytest.fixture(scope="module")
def chatapp(
    module_services: ServiceFactory,
    fake_provider_server: FakeProvider,
    tmp_path_factory: pytest.TempPathFactory,
) -> Service:
    folder = tmp_path_factory.mktemp("knowledge")
    return module_services(**knowledge_settings(fake_provider_server, folder))


@pytest.fixture(scope="module")
def site(chatapp: Service) -> Iterator[WordPressSite]:
    site = WordPressSite(WP_SECRET)
    try:
        site.start(chatapp.url)
        yield site
    finally:
        site.stop()


def documents(chatapp: Service) -> dict[str, dict[str, Any]]:
    listed = Owner(chatapp.url).list()
    assert listed.status_code == 200, listed.text
    return {d["url"]: d for d in listed.json()["documents"]}


def await_cron(site: WordPressSite) -> dict[str, Any]:
    """Wait until WP-Cron has tried every queued push and released its lock.

    The site is polled, not chatapp: the owner's API allows 120 requests a
    minute per client, and the plugin's pushes come from this address too.
    WordPress starts no second cron run while one holds the lock, so the
    next edit waits for this one to finish, as an editor's next save would.
    """

    last: dict[str, Any] = {}

    def tried() -> dict[str, Any] | None:
        last.update(site.run("state"))
        untried = [job for job in last["queue"].values() if job["attempts"] == 0]
        return None if untried or last["doing_cron"] else dict(last)

    try:
        result: dict[str, Any] = wait_for(tried, PUSH_WITHIN, "WP-Cron", every=0.2)
    except TimeoutError:
        raise AssertionError(f"WP-Cron left pushes untried: {last}") from None
    return result


def pushed(site: WordPressSite) -> None:
    """Wait for WP-Cron, which must have delivered every push."""
    state = await_cron(site)
    assert not state["queue"], state


def cited(chatapp: Service, question: str) -> list[str]:
    _, events = ChatClient(chatapp.url).answer(question)
    return [source["url"] for source in sources_of(events)]


def passages_upstream(fake: FakeProvider, question: str) -> str:
    """What the model was sent along with `question` (its sources are in there)."""
    calls = [
        r
        for r in fake.requests
        if r.path.endswith("/chat/completions")
        and r.body is not None
        and question in str(r.body["messages"][-1]["content"])
    ]
    assert len(calls) == 1, [r.path for r in fake.requests]
    body = calls[0].body
    assert body is not None
    return "\n".join(str(m["content"]) for m in body["messages"])


def test_a_published_post_is_cited_an_edit_replaces_it_and_the_trash_removes_it(
    site: WordPressSite, chatapp: Service, fake_provider: FakeProvider
) -> None:
    question = "What colour is the Quillmoor lantern's glass?"
    post = site.run(
        "publish",
        "The Quillmoor lantern",
        "<!-- wp:paragraph --><p>The Quillmoor lantern has amber glass "
        "and a brass handle.</p><!-- /wp:paragraph -->",
    )
    assert post["status"] == "publish"
    url = post["url"]
    assert url.startswith(site.url + "/")

    pushed(site)
    assert documents(chatapp)[url]["title"] == "The Quillmoor lantern"
    assert cited(chatapp, question) == [url]
    assert "amber glass" in passages_upstream(fake_provider, question)

    edited = site.run(
        "edit",
        str(post["id"]),
        "<!-- wp:paragraph --><p>The Quillmoor lantern now has cobalt glass "
        "and a brass handle.</p><!-- /wp:paragraph -->",
    )
    assert edited["url"] == url
    pushed(site)
    fake_provider.reset()
    assert cited(chatapp, question) == [url]
    upstream = passages_upstream(fake_provider, question)
    assert "cobalt glass" in upstream and "amber" not in upstream

    assert site.run("trash", str(post["id"]))["status"] == "trash"
    pushed(site)
    assert url not in documents(chatapp)
    assert url not in cited(chatapp, question)
    assert site.plugin_notices() == []


class HeldChatapp:
    """chatapp's address, held by a server that accepts and does not answer.

    The worst a push can meet: a connection that hangs. It records each
    connection and whether the client gave up on it, until `close` drops
    them or answers them all.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.accepted: list[socket.socket] = []
        self.given_up = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                closing = self.listener.fileno() == -1
                if not closing:
                    self.accepted.append(conn)
            if closing:  # accepted as close() ran: dropped too
                conn.close()
                return
            threading.Thread(target=self._hold, args=(conn,), daemon=True).start()

    def _hold(self, conn: socket.socket) -> None:
        try:
            while conn.recv(65536):
                pass
        except OSError:
            return
        with self.lock:
            self.given_up += 1

    def connections(self) -> int:
        with self.lock:
            return len(self.accepted)

    def close(self, reply: bytes = b"") -> None:
        """Refuse from now on; send each held connection `reply` and close it."""
        with self.lock:
            self.listener.close()
            held, self.accepted = self.accepted, []
        for conn in held:
            try:
                conn.sendall(reply)
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # the client had gone already
            conn.close()


def test_a_push_while_chatapp_is_down_never_holds_up_the_publish_and_cron_retries_it(
    site: WordPressSite, chatapp: Service
) -> None:
    pushed(site)
    chatapp.stop()
    down = HeldChatapp(chatapp.port)
    try:
        post = site.run(
            "publish",
            "Opening hours",
            "<p>The Vintermyr depot opens at ten on Saturdays.</p>",
        )
        # Published, and back to the editor before the push WP-Cron started
        # had got an answer or given up on one.
        assert post["status"] == "publish"
        assert down.given_up == 0
        wait_for(down.connections, PUSH_WITHIN, "WP-Cron's push to reach chatapp")
    finally:
        down.close()
        chatapp.start()

    state = await_cron(site)
    [job] = state["queue"].values()
    assert job["attempts"] == 1, state
    assert job["action"] == "put" and job["url"] == post["url"]
    # Retried by WP-Cron, a minute on at first.
    assert state["next"] == job["due"]
    assert state["now"] < job["due"] <= state["now"] + 60
    assert post["url"] not in documents(chatapp)

    ran = site.run("retry")
    assert ran["ran_at"] == job["due"]
    assert post["url"] in documents(chatapp)
    assert not site.run("state")["queue"]
    question = "When does the Vintermyr depot open on Saturdays?"
    assert cited(chatapp, question) == [post["url"]]
    assert site.plugin_notices() == []


OK = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    b"Content-Length: 2\r\nConnection: close\r\n\r\n{}"
)


def test_an_edit_saved_while_the_last_push_is_under_way_is_pushed_too(
    site: WordPressSite, chatapp: Service
) -> None:
    pushed(site)
    chatapp.stop()
    slow = HeldChatapp(chatapp.port)
    try:
        post = site.run(
            "publish", "Ferry times", "<p>The Skarnes ferry leaves at eight.</p>"
        )
        wait_for(slow.connections, PUSH_WITHIN, "WP-Cron's push to reach chatapp")
        # The editor saves again while that push waits for chatapp's answer.
        site.run(
            "edit", str(post["id"]), "<p>The Skarnes ferry now leaves at nine.</p>"
        )
    finally:
        slow.close(OK)  # the first push succeeds
        chatapp.start()
    pushed(site)
    assert post["url"] in documents(chatapp)
    question = "When does the Skarnes ferry leave?"
    assert cited(chatapp, question) == [post["url"]]
    assert site.plugin_notices() == []
