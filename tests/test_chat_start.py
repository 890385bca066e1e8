"""Starting a turn in-process: who gets which turn, when, from which context.

Flask's test client over the in-memory stores: these pin the shapes of
POST /api/chat where the real server is not the point.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask import url_for
from flask.testing import FlaskClient

from chatapp import create_app
from chatapp.store.conversations import StoredMessage
from chatapp.turns.start import cache_key
from chatapp.turns.start import context
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Message
from chatapp.web import api

OWN = "http://localhost"  # Flask's test client talks to http://localhost/


@pytest.fixture
def app() -> Flask:
    return create_app()


def visitor(client: FlaskClient) -> str:
    """Mint a new visitor's page token, as a page of chatapp's own would."""
    response = client.post("/api/token", headers={"Origin": OWN})
    assert response.status_code == 200, response.get_json()
    return str(response.get_json()["token"])


def post(client: FlaskClient, token: str, key: str, message: str) -> Any:
    return client.post(
        "/api/chat",
        json={"token": token, "message": message},
        headers={"Idempotency-Key": key, "Origin": OWN},
    )


def test_another_visitors_idempotency_key_starts_its_own_turn(app: Flask) -> None:
    client = app.test_client()
    a, b = visitor(client), visitor(client)
    first = post(client, a, "same-key-1", "from a")
    again = post(client, a, "same-key-1", "from a")
    other = post(client, b, "same-key-1", "from b")
    assert first.status_code == again.status_code == other.status_code == 201
    assert again.get_json() == first.get_json()
    assert other.get_json()["id"] != first.get_json()["id"]
    assert other.get_json()["conversation_id"] != first.get_json()["conversation_id"]


@pytest.mark.parametrize("root", ["", "/chat-prefix", "/a b"])
def test_the_turn_urls_are_url_fors_under_any_script_root(
    app: Flask, root: str
) -> None:
    # Behind a proxy mounting the app under a path (SCRIPT_NAME), both URLs
    # carry it, spelt exactly as url_for spells them.
    client = app.test_client()
    base = f"http://localhost{root}"
    token = client.post(
        "/api/token", base_url=base, headers={"Origin": OWN}
    ).get_json()["token"]
    response = client.post(
        "/api/chat",
        base_url=base,
        json={"token": token, "message": "hello"},
        headers={"Idempotency-Key": "urls-1", "Origin": OWN},
    )
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    stream_token = body["stream_url"].partition("?t=")[2]
    with app.test_request_context("/api/chat", base_url=base):
        ids = {"turn_id": body["id"], "t": stream_token}
        assert body["stream_url"] == url_for("api.events", **ids)
        assert body["cancel_url"] == url_for("api.cancel", **ids)
    assert body["cancel_url"].startswith(f"{root}/api/chat/")


@pytest.mark.parametrize(
    ("turn_id", "token"),
    [("Tu_rn-0001", "eyJ0Ijoi.axYllw.L77U-_"), ("turn 1", "x"), ("t1", "a+b/c=%")],
)
def test_the_events_url_is_url_fors_for_any_value(
    app: Flask, turn_id: str, token: str
) -> None:
    # Made once per script root and filled in; anything url_for would quote
    # goes through url_for itself.
    for root in ("", "/chat-prefix", "/a b", ""):
        with app.test_request_context("/api/chat", base_url=f"http://localhost{root}"):
            expected = url_for("api.events", turn_id=turn_id, t=token)
            assert api._events_url(turn_id, token) == expected


def test_a_draining_worker_refuses_new_turns(app: Flask) -> None:
    client = app.test_client()
    token = visitor(client)
    app.extensions["chatapp"].relay.drain(0)  # what SIGTERM starts (wsgi.py)
    response = post(client, token, "after-sigterm", "hello")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "over_capacity"
    assert int(response.headers["Retry-After"]) > 0


# -- what goes upstream --------------------------------------------------------


def stored(role: str, chars: int) -> StoredMessage:
    return StoredMessage(role, role[0] * chars, 0.0)


@pytest.mark.parametrize(
    ("sizes", "bound", "kept"),
    [
        ((100, 100, 100, 100), 250, 2),
        ((100, 100, 100, 100), 400, 4),
        # Three fit, but the oldest of them is the assistant's: dropped.
        ((100, 100, 100, 100), 399, 2),
        ((500,), 100, 0),
        ((), 100, 0),
    ],
)
def test_the_context_keeps_the_newest_messages_within_its_bound(
    sizes: tuple[int, ...], bound: int, kept: int
) -> None:
    history = [stored(("user", "assistant")[n % 2], c) for n, c in enumerate(sizes)]
    messages = context(history, bound)
    assert len(messages) == kept
    assert sum(len(m.content) for m in messages) <= bound
    assert not messages or messages[0].role == "user"
    assert [m.content for m in messages] == [
        m.content for m in history[len(history) - kept :]
    ]


BASE = ChatRequest("model-a", "Be brief.", (Message("user", "hi"),), 500, 0.2)


@pytest.mark.parametrize(
    "changed",
    [
        replace(BASE, system="Be verbose."),
        replace(BASE, model="model-b"),
        replace(BASE, max_output_tokens=501),
        replace(BASE, temperature=0.3),
        replace(BASE, messages=(Message("user", "hello"),)),
    ],
    ids=["system prompt", "model", "output bound", "temperature", "message"],
)
def test_the_answer_cache_key_takes_in_what_shapes_the_answer(
    changed: ChatRequest,
) -> None:
    assert cache_key(changed, "openai") != cache_key(BASE, "openai")
    assert cache_key(BASE, "openai") != cache_key(BASE, "anthropic")
    assert cache_key(replace(BASE), "openai") == cache_key(BASE, "openai")
