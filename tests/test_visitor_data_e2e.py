"""The visitor's own data through real gunicorn: erase, export, feedback, replace.

Every test runs three times: one service keeping state in memory, and two
"hosts" (two gunicorn masters) sharing one real redis-server or one Redis
Cluster, where what one host erases must be gone from the other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import RedisServer
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import openai_settings
from tests.conftest import text_of
from tests.conftest import wait_for
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider
from tests.redis_topologies import RedisClusterSet
from tests.test_wordpress_embed import SECRET as WP_SECRET
from tests.test_wordpress_embed import mint

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SECRET = "visitor-data-test-secret-shared-by-hosts"
SITE = "http://site.example"


@dataclass
class Hosts:
    """Where a visitor's requests go: `a` and `b` are one host in memory mode."""

    mode: str
    a: Service
    b: Service


@pytest.fixture(scope="module", params=["memory", "redis", "cluster"])
def hosts(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    fake_provider_server: FakeProvider,
) -> Iterator[Hosts]:
    settings = openai_settings(
        fake_provider_server,
        CHATAPP_SECRET_KEY=SECRET,
        CHATAPP_LOG_LEVEL="info",
        CHATAPP_API_ORIGINS=SITE,
        CHATAPP_WP_SHARED_SECRET=WP_SECRET,
    )
    factory = ServiceFactory(tmp_path_factory.mktemp(f"visitor-{request.param}"))
    try:
        if request.param == "memory":
            one = factory(**settings)
            yield Hosts("memory", one, one)
        elif request.param == "redis":
            settings["CHATAPP_REDIS_URL"] = redis_server.url
            yield Hosts("redis", factory(**settings), factory(**settings))
        else:
            cluster = RedisClusterSet()
            try:
                settings["CHATAPP_REDIS_URL"] = cluster.start().url
                yield Hosts("cluster", factory(**settings), factory(**settings))
            finally:
                factory.stop_all()
                cluster.stop()
    finally:
        factory.stop_all()


@pytest.fixture
def visitor(hosts: Hosts, fake_provider: FakeProvider) -> tuple[ChatClient, ChatClient]:
    """One visitor as seen by host A and by host B (the same page token)."""
    on_a = ChatClient(hosts.a.url)
    return on_a, ChatClient(hosts.b.url, token=on_a.token)


def get_conversation(client: ChatClient, cid: str, **params: str) -> requests.Response:
    return client.http.get(
        f"{client.base_url}/api/conversations/{cid}",
        headers={"X-Chat-Token": client.token},
        params=params,
        timeout=10,
    )


def delete(
    client: ChatClient, path: str, token: str | None = None
) -> requests.Response:
    headers = {"X-Chat-Token": token if token is not None else client.token}
    return client.http.delete(client.base_url + path, headers=headers, timeout=15)


def rate(
    client: ChatClient, turn_id: str, body: object, **params: str
) -> requests.Response:
    headers = {} if params else {"X-Chat-Token": client.token}
    return client.http.post(
        f"{client.base_url}/api/chat/{turn_id}/feedback",
        json=body,
        headers=headers,
        params=params,
        timeout=10,
    )


def stream_token(stream_url: str) -> str:
    match = re.search(r"[?&]t=([^&]+)", stream_url)
    assert match is not None
    return requests.utils.unquote(match.group(1))


def metric(hosts: Hosts, rating: str) -> float:
    """Sum a rating's count over the hosts, as Prometheus would."""
    total = 0.0
    for service in [hosts.a] if hosts.a is hosts.b else [hosts.a, hosts.b]:
        text = requests.get(service.url + "/metrics", timeout=10).text
        pattern = rf'^chatapp_feedback_total{{rating="{rating}"}} (\S+)$'
        match = re.search(pattern, text, re.M)
        assert match is not None, "chatapp_feedback_total is not initialised"
        total += float(match.group(1))
    return total


# -- delete -----------------------------------------------------------------


def test_delete_own_conversation_erases_messages_events_and_feedback(
    visitor: tuple[ChatClient, ChatClient],
) -> None:
    on_a, on_b = visitor
    turn, _ = on_a.answer("Remember my order number please")
    assert rate(on_a, turn.id, {"rating": "up"}).status_code == 204
    assert get_conversation(on_b, turn.conversation_id).status_code == 200

    response = delete(on_b, f"/api/conversations/{turn.conversation_id}")

    assert response.status_code == 204
    assert get_conversation(on_a, turn.conversation_id).status_code == 404
    assert get_conversation(on_b, turn.conversation_id).status_code == 404
    assert on_a.open_stream(turn).status_code == 404  # no replayable events left
    assert rate(on_a, turn.id, {"rating": "down"}).status_code == 404
    # The conversation cannot be continued either.
    assert (
        on_a.post(message="again", conversation_id=turn.conversation_id).status_code
        == 404
    )


def test_delete_someone_elses_or_unknown_conversation_is_404(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    owner, _ = visitor
    stranger = ChatClient(hosts.b.url)
    turn, _ = owner.answer("mine alone")

    foreign = delete(stranger, f"/api/conversations/{turn.conversation_id}")
    unknown = delete(owner, "/api/conversations/AAAAAAAAAAAAAAAAAAAAAA")
    malformed = delete(owner, "/api/conversations/x")
    no_token = delete(owner, f"/api/conversations/{turn.conversation_id}", token="")

    for response in (foreign, unknown, malformed, no_token):
        assert response.status_code == 404, response.text
        assert response.json()["error"]["code"] == "not_found"
    assert get_conversation(owner, turn.conversation_id).status_code == 200


def test_delete_cancels_the_running_turn_first(
    visitor: tuple[ChatClient, ChatClient],
    hosts: Hosts,
    fake_provider: FakeProvider,
) -> None:
    on_a, on_b = visitor
    slow = Behaviour(text="word " * 400, pieces=400, delay_ms=50)
    turn = on_a.start(slow.as_directive())
    fake_provider.wait_for_stream_start()

    response = delete(on_b, f"/api/conversations/{turn.conversation_id}")

    assert response.status_code == 204
    assert fake_provider.wait_all_closed(timeout=5), "the upstream was left open"
    assert fake_provider.closed_by_client == 1
    # Nothing the cancelled turn streamed is written back afterwards.
    assert get_conversation(on_a, turn.conversation_id).status_code == 404
    assert get_conversation(on_b, turn.conversation_id).status_code == 404


def test_delete_everything_of_mine_on_every_host(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, on_b = visitor
    first, _ = on_a.answer("first conversation, host A")
    second, _ = on_b.answer("second conversation, host B")
    stranger = ChatClient(hosts.a.url)
    theirs, _ = stranger.answer("someone else's")

    response = delete(on_a, "/api/conversations")

    assert response.status_code == 204
    for client in (on_a, on_b):
        for turn in (first, second):
            assert get_conversation(client, turn.conversation_id).status_code == 404
    assert get_conversation(stranger, theirs.conversation_id).status_code == 200
    assert delete(on_a, "/api/conversations").status_code == 204  # nothing left: fine


def test_delete_everything_of_a_wordpress_user_whatever_page_it_came_from(
    hosts: Hosts, fake_provider: FakeProvider
) -> None:
    """A WordPress user is one identity across page renders, tabs and hosts."""
    first_tab = ChatClient(hosts.a.url, token="pending")
    first_tab.token = first_tab.page_token(f"/embed?sso={mint('77')}")
    second_tab = ChatClient(hosts.b.url, token="pending")
    second_tab.token = second_tab.page_token(f"/embed?sso={mint('77')}")
    assert first_tab.token != second_tab.token
    one, _ = first_tab.answer("from one tab")
    two, _ = second_tab.answer("from another tab, on another host")
    other_user = ChatClient(hosts.a.url, token="pending")
    other_user.token = other_user.page_token(f"/embed?sso={mint('78')}")
    theirs, _ = other_user.answer("another WordPress user")
    anonymous = ChatClient(hosts.b.url)
    visitors, _ = anonymous.answer("an anonymous visitor")

    assert delete(first_tab, "/api/conversations").status_code == 204

    for turn in (one, two):
        assert get_conversation(second_tab, turn.conversation_id).status_code == 404
    assert get_conversation(other_user, theirs.conversation_id).status_code == 200
    assert get_conversation(anonymous, visitors.conversation_id).status_code == 200


def test_delete_everything_needs_a_valid_token(
    visitor: tuple[ChatClient, ChatClient],
) -> None:
    on_a, _ = visitor
    response = delete(on_a, "/api/conversations", token="forged.token.value")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_token"


def test_preflight_allows_delete_and_foreign_origins_may_not(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("cross-origin")
    url = f"{hosts.a.url}/api/conversations/{turn.conversation_id}"
    preflight = requests.options(
        url,
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "DELETE",
            "Access-Control-Request-Headers": "X-Chat-Token",
        },
        timeout=10,
    )
    assert preflight.status_code == 204
    assert "DELETE" in preflight.headers["Access-Control-Allow-Methods"]

    foreign = requests.delete(
        url,
        headers={"Origin": "http://evil.example", "X-Chat-Token": on_a.token},
        timeout=10,
    )
    assert foreign.status_code == 403
    assert foreign.json()["error"]["code"] == "origin_not_allowed"
    assert get_conversation(on_a, turn.conversation_id).status_code == 200


# -- export -----------------------------------------------------------------


def test_markdown_transcript_is_an_attachment_with_every_message(
    visitor: tuple[ChatClient, ChatClient],
) -> None:
    on_a, on_b = visitor
    first, events = on_a.answer("fake: | The **first** answer.")
    on_a.answer("And a second question?", conversation_id=first.conversation_id)

    response = get_conversation(on_b, first.conversation_id, format="markdown")

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/markdown; charset=utf-8"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="conversation-{first.conversation_id}.md"'
    )
    body = response.text
    assert body.startswith(f"# Conversation {first.conversation_id}")
    assert "The **first** answer." in body and text_of(events) in body
    assert body.index("fake: | The") < body.index("And a second question?")
    assert body.count("## You") == 2 and body.count("## Assistant") == 2


def test_markdown_transcript_of_someone_else_is_404(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("private")
    stranger = ChatClient(hosts.b.url)
    response = get_conversation(stranger, turn.conversation_id, format="markdown")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


# -- feedback ---------------------------------------------------------------


def test_feedback_with_page_or_stream_token_is_counted_and_replaced(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, on_b = visitor
    turn, _ = on_a.answer("Was this helpful?")
    up, down = metric(hosts, "up"), metric(hosts, "down")

    first = rate(on_a, turn.id, {"rating": "up"})
    second = rate(
        on_b,
        turn.id,
        {"rating": "down", "comment": "It missed my question."},
        t=stream_token(turn.stream_url),
    )

    assert first.status_code == 204 and second.status_code == 204
    assert first.content == b""
    assert metric(hosts, "up") == up + 1
    assert metric(hosts, "down") == down + 1


def test_feedback_logs_one_line_with_the_turn_id_and_never_the_comment(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("log me")
    comment = "secret remark mail@example.com"
    assert (
        rate(on_a, turn.id, {"rating": "down", "comment": comment}).status_code == 204
    )

    def feedback_lines() -> list[dict[str, object]]:
        lines = hosts.a.log_lines() + (
            hosts.b.log_lines() if hosts.b != hosts.a else []
        )
        parsed = [json.loads(x) for x in lines if x.startswith("{")]
        return [x for x in parsed if x.get("event") == "turn.feedback"]

    found = wait_for(
        lambda: [x for x in feedback_lines() if x.get("turn_id") == turn.id],
        10,
        "the feedback log line",
    )
    assert len(found) == 1 and found[0]["rating"] == "down"
    assert "comment" not in found[0]
    assert "secret remark" not in hosts.a.log() and "secret remark" not in hosts.b.log()


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"rating": "sideways"}, "unknown rating"),
        ({}, "no rating"),
        ({"rating": 1}, "rating not a string"),
        ({"rating": "down", "comment": "x" * 1001}, "comment too long"),
        ({"rating": "down", "comment": ["list"]}, "comment not a string"),
        (["up"], "not an object"),
    ],
)
def test_feedback_refuses_bad_input(
    visitor: tuple[ChatClient, ChatClient], body: object, why: str
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("rate me")
    response = rate(on_a, turn.id, body)
    assert response.status_code == 400, why
    assert response.json()["error"]["code"] == "invalid_input", why


def test_feedback_comment_of_exactly_1000_characters_is_kept(
    visitor: tuple[ChatClient, ChatClient],
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("rate me fully")
    response = rate(on_a, turn.id, {"rating": "down", "comment": "x" * 1000})
    assert response.status_code == 204


def test_feedback_on_unknown_or_foreign_turn_is_404_forged_token_403(
    visitor: tuple[ChatClient, ChatClient], hosts: Hosts
) -> None:
    on_a, _ = visitor
    turn, _ = on_a.answer("only I may rate this")
    stranger = ChatClient(hosts.b.url)
    other, _ = stranger.answer("another answer")

    unknown = rate(on_a, "AAAAAAAAAAAAAAAAAAAAAA", {"rating": "up"})
    foreign = rate(stranger, turn.id, {"rating": "up"})
    forged = rate(on_a, turn.id, {"rating": "up"}, t="forged-stream-token")
    crossed = rate(on_a, turn.id, {"rating": "up"}, t=stream_token(other.stream_url))

    assert unknown.status_code == 404 and foreign.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
    assert forged.status_code == 403 and crossed.status_code == 403
    assert forged.json()["error"]["code"] == "invalid_token"


# -- replace_last -------------------------------------------------------------


def sent_upstream(fake: FakeProvider) -> list[list[tuple[str, str]]]:
    """The messages of every chat request the fake received, oldest first."""
    out = []
    for recorded in fake.requests:
        if recorded.body and "messages" in recorded.body:
            out.append([(m["role"], m["content"]) for m in recorded.body["messages"]])
    return out


def test_regenerate_replaces_the_last_exchange_and_hides_the_discarded_answer(
    visitor: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    on_a, on_b = visitor
    first, _ = on_a.answer("fake: | First answer.")
    question = "fake: | DISCARDED answer"
    on_a.answer(question, conversation_id=first.conversation_id)
    fake_provider.reset()

    again, events = on_b.answer(
        question, conversation_id=first.conversation_id, replace_last=True
    )

    assert again.conversation_id == first.conversation_id
    upstream = sent_upstream(fake_provider)[-1]
    assert upstream[-3:] == [
        ("user", "fake: | First answer."),
        ("assistant", "First answer."),
        ("user", question),
    ]
    assert not any("DISCARDED answer" == c for r, c in upstream if r == "assistant")
    stored = get_conversation(on_a, first.conversation_id).json()["messages"]
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert [m["content"] for m in stored].count(question) == 1
    assert stored[-1]["content"] == text_of(events)


def test_edit_replaces_the_last_question_with_a_new_one(
    visitor: tuple[ChatClient, ChatClient], fake_provider: FakeProvider
) -> None:
    on_a, _ = visitor
    first, _ = on_a.answer("fake: | One.")
    on_a.answer("fake: | Two.", conversation_id=first.conversation_id)
    fake_provider.reset()

    on_a.answer(
        "fake: | Edited.", conversation_id=first.conversation_id, replace_last="true"
    )

    assert sent_upstream(fake_provider)[-1][-3:] == [
        ("user", "fake: | One."),
        ("assistant", "One."),
        ("user", "fake: | Edited."),
    ]
    stored = get_conversation(on_a, first.conversation_id).json()["messages"]
    assert [m["content"] for m in stored] == [
        "fake: | One.",
        "One.",
        "fake: | Edited.",
        "Edited.",
    ]


def test_replace_last_needs_a_boolean(visitor: tuple[ChatClient, ChatClient]) -> None:
    on_a, _ = visitor
    first, _ = on_a.answer("hello")
    response = on_a.post(
        message="hi", conversation_id=first.conversation_id, replace_last={"x": 1}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_input"


def test_feedback_comment_is_logged_masked_only_with_log_prompts(
    service_factory: ServiceFactory, fake_provider: FakeProvider
) -> None:
    service = service_factory(
        **openai_settings(
            fake_provider, CHATAPP_LOG_LEVEL="info", CHATAPP_LOG_PROMPTS="1"
        )
    )
    client = ChatClient(service.url)
    turn, _ = client.answer("rate me")
    comment = "Wrong. Write to me at jane.doe@example.com"
    response = rate(client, turn.id, {"rating": "down", "comment": comment})
    assert response.status_code == 204

    def feedback_line() -> dict[str, object] | None:
        for line in service.log_lines():
            if line.startswith("{") and '"turn.feedback"' in line:
                return dict(json.loads(line))
        return None

    found = wait_for(feedback_line, 10, "the feedback log line")
    assert found["turn_id"] == turn.id
    assert found["comment"] == "Wrong. Write to me at [email]"
    assert "jane.doe@example.com" not in service.log()
