"""Logs a machine can read: JSON lines, request ids, no message text, masking."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import wait_for

pytestmark = pytest.mark.e2e

NEW_ID = re.compile(r"^[0-9a-f]{32}$")

# One of each kind the masking must catch, and its label.
SECRETS = {
    "jane.doe@example.com": "[email]",
    "+44 20 7946 0958": "[phone]",
    "4111 1111 1111 1111": "[card]",
    "sk-proj-Zq8xW2vB7nM4kL1jH6gF3dS9aP0oI5uY": "[key]",
}


@pytest.fixture(scope="module")
def logged(module_services: ServiceFactory) -> Service:
    """A service that logs at info, with gunicorn's access lines and prompts."""
    return module_services(
        CHATAPP_LOG_LEVEL="info", CHATAPP_ACCESS_LOG="-", CHATAPP_LOG_PROMPTS="1"
    )


def lines(service: Service) -> list[dict[str, Any]]:
    """Parse every line the service has finished: each must be one JSON object."""
    out = []
    for row in service.log_lines():
        parsed = json.loads(row)
        assert isinstance(parsed, dict), row
        out.append(parsed)
    return out


def about(service: Service, request_id: str, event: str) -> dict[str, Any]:
    """Wait for the line of `event` carrying a request id (written on close)."""

    def find() -> dict[str, Any] | None:
        for line in lines(service):
            if line.get("request_id") == request_id and line["event"] == event:
                return line
        return None

    found: dict[str, Any] = wait_for(find, 10, f"{event} of {request_id}")
    return found


def request_ids(service: Service) -> Iterator[str]:
    for line in lines(service):
        if "request_id" in line:
            yield line["request_id"]


def test_every_line_is_one_json_object_with_the_common_keys(logged: Service) -> None:
    ChatClient(logged.url).answer("hello")
    requests.get(logged.url + "/api/nothing-here", timeout=10)
    parsed = lines(logged)
    assert any(line["logger"] == "gunicorn.error" for line in parsed)
    assert any(line["logger"] == "gunicorn.access" for line in parsed)
    assert any(line["logger"] == "chatapp.http" for line in parsed)
    for line in parsed:
        assert {"time", "level", "logger", "event"} <= line.keys(), line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+\+00:00$", line["time"])


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/embed?sso=not-a-jwt"),
        ("GET", "/healthz"),
        ("GET", "/static/chat.css"),
        ("GET", "/no-such-page"),
        ("GET", "/api/no-such-route"),
        ("POST", "/api/chat"),
        ("DELETE", "/api/chat"),
    ],
)
@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        # Kept ones are made unique per call, so each names one request.
        (lambda: "req-" + secrets.token_hex(8), True),
        (lambda: "A.b_c-" + secrets.token_hex(2), True),
        (lambda: secrets.token_hex(64), True),
        (lambda: None, False),
        (lambda: "short", False),
        (lambda: "x" * 129, False),
        (lambda: "has space 123", False),
        (lambda: "semi;colon;123", False),
        (lambda: "ünïcödé-12345", False),
    ],
)
def test_every_response_carries_a_request_id(
    logged: Service,
    method: str,
    path: str,
    incoming: Callable[[], str | None],
    kept: bool,
) -> None:
    sent = incoming()
    headers = {} if sent is None else {"X-Request-ID": sent}
    response = requests.request(method, logged.url + path, headers=headers, timeout=10)
    assert response.status_code < 500
    rid = response.headers["X-Request-ID"]
    if kept:
        assert rid == sent
    else:
        assert NEW_ID.match(rid)
    # Probes log at debug; gunicorn's access line is there for every request.
    events = ["http.access"] if path == "/healthz" else ["http.access", "http.request"]
    for event in events:
        line = about(logged, rid, event)
        assert line["status"] == response.status_code
        assert line["path"] == path.split("?")[0]


def test_new_ids_differ_per_request(logged: Service) -> None:
    ids = {requests.get(logged.url + "/healthz").headers["X-Request-ID"] for _ in "ab"}
    assert len(ids) == 2


def test_a_turn_logs_its_request_id_client_turn_and_durations(
    logged: Service,
) -> None:
    client = ChatClient(logged.url)
    post = client.post(message="hello", headers={"X-Request-ID": "turn-post-0001"})
    assert post.status_code == 201
    turn_id = post.json()["id"]
    stream = client.http.get(
        logged.url + post.json()["stream_url"],
        headers={"X-Request-ID": "turn-read-0001"},
        timeout=30,
    )
    assert "event: done" in stream.text

    accepted = about(logged, "turn-post-0001", "http.request")
    assert accepted["turn_id"] == turn_id
    assert accepted["status"] == 201
    assert re.match(r"^[0-9a-f]{16}$", accepted["client"])
    read = about(logged, "turn-read-0001", "http.request")
    assert read["turn_id"] == turn_id
    assert read["client"] == accepted["client"]
    # The line is written when the stream closes: it spans the whole answer.
    assert read["duration_ms"] >= read["headers_ms"] > 0
    access = about(logged, "turn-read-0001", "http.access")
    assert access["status"] == 200 and access["client"] == accepted["client"]
    assert access["path"].endswith("/events")


def test_no_address_token_or_query_reaches_the_logs(logged: Service) -> None:
    client = ChatClient(logged.url)
    turn, _ = client.answer("hello")
    stream_token = turn.stream_url.split("t=")[1]
    text = logged.log()
    assert client.token not in text
    assert stream_token not in text
    assert '127.0.0.1"' not in text and "?t=" not in text


def test_refusals_log_their_error_code(logged: Service) -> None:
    response = ChatClient(logged.url).post(
        message="", headers={"X-Request-ID": "empty-message-01"}
    )
    assert response.status_code == 400
    line = about(logged, "empty-message-01", "http.request")
    assert line["error"] == "invalid_input"


def test_prompts_are_logged_masked_when_asked(logged: Service) -> None:
    message = "Reach me: " + ", ".join(SECRETS)
    response = ChatClient(logged.url).post(
        message=message, headers={"X-Request-ID": "masked-prompt-01"}
    )
    assert response.status_code == 201
    line = about(logged, "masked-prompt-01", "turn.accepted")
    assert line["prompt"] == "Reach me: " + ", ".join(SECRETS.values())
    assert line["prompt_chars"] == len(message)
    assert line["turn_id"] == response.json()["id"]
    text = logged.log()
    for secret in SECRETS:
        assert secret not in text
        assert secret.replace(" ", "") not in text


# What went through the old masking in clear (issue 19): Unicode and odd
# separators, non-ASCII addresses, AWS secrets with "/", a card followed by
# other digits, and a second secret of a kind already masked once.
LEAKS = [
    ("card, no-break spaces", "4111\u00a01111\u00a01111\u00a01111", "[card]"),
    ("card, narrow no-break spaces", "4111\u202f1111\u202f1111\u202f1111", "[card]"),
    ("card, zero-width spaces", "4111\u200b1111\u200b1111\u200b1111", "[card]"),
    ("card, double spaces", "4111  1111  1111  1111", "[card]"),
    ("card, spaced dashes", "4111 - 1111 - 1111 - 1111", "[card]"),
    ("card, dots", "4111.1111.1111.1111", "[card]"),
    ("card, slashes", "4111/1111/1111/1111", "[card]"),
    ("card, then other digits", "4111 1111 1111 1111 2", "[card] 2"),
    ("phone, no-break spaces", "06\u00a012\u00a034\u00a056\u00a078", "[phone]"),
    ("phone, narrow no-break", "+33\u202f6\u202f12\u202f34\u202f56\u202f78", "[phone]"),
    ("phone, zero-width spaces", "06\u200b12\u200b34\u200b56\u200b78", "[phone]"),
    ("phone, double spaces", "06  12  34  56  78", "[phone]"),
    ("phone, spaced dashes", "555 - 123 - 4567", "[phone]"),
    ("phone, slashes", "06/12/34/56/78", "[phone]"),
    ("e-mail, non-ASCII", "jürgen.müller@bücher.example", "[email]"),
    ("e-mail, another script", "ユーザー@例え.テスト", "[email]"),
    ("AWS secret key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "[key]"),
    ("two e-mails", "a@b.example and c@d.example", "[email] and [email]"),
    ("two cards", "4111 1111 1111 1111, 5500 0000 0000 0004", "[card], [card]"),
    ("two phones", "0612345678 0698765432", "[phone] [phone]"),
    ("two keys", "sk-" + "a" * 24 + " sk-" + "b" * 24, "[key] [key]"),
]


@pytest.mark.parametrize(
    ("why", "secret", "masked"), LEAKS, ids=[w for w, _, _ in LEAKS]
)
def test_masked_prompts_leak_nothing_that_people_type_or_paste(
    logged: Service, why: str, secret: str, masked: str
) -> None:
    rid = "leak-" + "".join(c for c in why if c.isalnum())[:40]
    response = ChatClient(logged.url).post(
        message=f"Remember {secret} please", headers={"X-Request-ID": rid}
    )
    assert response.status_code == 201, response.text
    line = about(logged, rid, "turn.accepted")
    assert line["prompt"] == f"Remember {masked} please", why
    digits = "".join(c for c in secret if c.isdigit())
    text = logged.log()
    assert secret not in text
    if len(digits) >= 7:
        assert digits not in "".join(c for c in text if c.isdigit())


def test_message_text_never_reaches_the_logs_by_default(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_LOG_LEVEL="debug", CHATAPP_ACCESS_LOG="-")
    marker = "zebra-quokka-marmalade"
    client = ChatClient(service.url)
    response = client.post(
        message=f"Tell me about {marker}", headers={"X-Request-ID": "plain-prompt-01"}
    )
    assert response.status_code == 201
    line = about(service, "plain-prompt-01", "turn.accepted")
    assert line["prompt_chars"] == len(f"Tell me about {marker}")
    assert "prompt" not in line
    turn = client.http.get(service.url + response.json()["stream_url"], timeout=30)
    assert marker in turn.text  # the demo quotes the question back
    wait_for(lambda: "plain-prompt-01" in service.log(), 10, "the access line")
    assert marker not in service.log()
