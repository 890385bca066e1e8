"""An accepted turn whose log was lost still ends with `error` + `done`.

A Redis failover can lose a turn's first writes after its POST answered 201
(replication is asynchronous). The stream token is the proof that the turn
was accepted, so its reader is never answered 404 while the token is younger
than a turn log lives.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

from chatapp import create_app
from chatapp.upstream.sse_decoder import SSEDecoder

NEVER_LOGGED = "AcceptedThenLost0001"


def stream_url(app: Flask, turn_id: str) -> str:
    token = app.extensions["chatapp"].signer.stream_token(turn_id)
    return f"/api/chat/{turn_id}/events?t={token}"


def test_a_fresh_stream_token_for_a_lost_log_gets_error_then_done() -> None:
    app = create_app()
    response = app.test_client().get(
        stream_url(app, NEVER_LOGGED), headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = SSEDecoder().feed(response.get_data())
    assert [e.event for e in events] == ["error", "done"]
    assert json.loads(events[0].data)["retryable"] is True
    assert json.loads(events[1].data) == {"finish_reason": "error"}


def test_a_poll_with_a_fresh_token_for_a_lost_log_gets_error_then_done() -> None:
    app = create_app()
    response = app.test_client().get(stream_url(app, NEVER_LOGGED) + "&poll=1")
    assert response.status_code == 200
    body: dict[str, Any] = response.get_json()
    assert body["done"] is True
    assert [e["event"] for e in body["events"]] == ["error", "done"]


# A token older than a turn log lives names an expired turn: 404, as before;
# test_durations_e2e waits a short CHATAPP_STREAM_TTL out for that.
