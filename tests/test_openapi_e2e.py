"""GET /api/openapi.json describes the API truly: real responses validate against it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from jsonschema import FormatChecker
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from chatapp import create_app
from chatapp.upstream.sse_decoder import SSEDecoder
from tests.conftest import ROOT
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import Turn

pytestmark = pytest.mark.e2e

DOCUMENT = ROOT / "chatapp" / "web" / "openapi.json"
URI = "urn:chatapp:openapi"


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


class Contract:
    """Check real responses against the OpenAPI document, by JSON pointer."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.doc = document
        resource = DRAFT202012.create_resource(document)
        self.registry: Registry[Any] = Registry().with_resource(URI, resource)

    def validate(self, instance: Any, pointer: str) -> None:
        """Validate `instance` against the schema at `pointer` in the document."""
        validator = Draft202012Validator(
            {"$ref": f"{URI}#{pointer}"},
            registry=self.registry,
            format_checker=FormatChecker(),
        )
        errors = [e.message for e in validator.iter_errors(instance)]
        assert not errors, f"{pointer}: {errors} for {instance!r}"

    def _follow(self, node: Any, pointer: str) -> tuple[Any, str]:
        while isinstance(node, dict) and "$ref" in node:
            pointer = node["$ref"].removeprefix("#")
            node = self.doc
            for part in pointer.strip("/").split("/"):
                node = node[part.replace("~1", "/").replace("~0", "~")]
        return node, pointer

    def check(self, response: requests.Response, method: str, template: str) -> None:
        """Assert that this status, media type, body and headers are documented."""
        method = method.lower()
        status = str(response.status_code)
        operation = self.doc["paths"][template].get(method)
        if operation is None:
            # A method the path does not have: the one shared 405 answer.
            assert status == "405", f"{method.upper()} {template} answered {status}"
            pointer = "/components/responses/MethodNotAllowed"
            operation = {"responses": {status: {"$ref": f"#{pointer}"}}}
        assert status in operation["responses"], (
            f"{method.upper()} {template} answered {status}, which is undocumented: "
            f"{response.text[:200]}"
        )
        pointer = f"/paths/{_escape(template)}/{method}/responses/{status}"
        spec, pointer = self._follow(operation["responses"][status], pointer)
        for name, header in spec.get("headers", {}).items():
            header, header_pointer = self._follow(header, f"{pointer}/headers/{name}")
            value = response.headers.get(name)
            if value is None:
                assert not header.get("required"), f"{status} lacks {name}"
                continue
            self.validate(value, f"{header_pointer}/schema")
        content = spec.get("content")
        if content is None:
            assert response.content == b"", f"{status} should have no body"
            return
        media = response.headers["Content-Type"].split(";")[0].strip()
        assert media in content, f"{status} sent {media}, documented {list(content)}"
        media_pointer = f"{pointer}/content/{_escape(media)}"
        if media == "application/json":
            self.validate(response.json(), f"{media_pointer}/schema")
        elif media == "text/event-stream":
            self._check_events(response.content, content[media], media_pointer)

    def _check_events(self, body: bytes, media: dict[str, Any], pointer: str) -> None:
        events = SSEDecoder().feed(body)
        assert events, "an event stream with no event"
        for event in events:
            assert event.event in media["x-events"], f"undocumented {event.event}"
            self.validate(json.loads(event.data), f"{pointer}/x-events/{event.event}")
            # The media type's schema describes each event as an EventSource
            # dispatches it (OpenAPI before 3.2; what fuzzers check).
            dispatched = {"id": event.id, "event": event.event, "data": event.data}
            self.validate(dispatched, f"{pointer}/schema")
        assert [e.event for e in events][-1] == "done"


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> Service:
    return module_services()


@pytest.fixture(scope="module")
def contract(service: Service) -> Contract:
    response = requests.get(service.url + "/api/openapi.json", timeout=10)
    assert response.status_code == 200
    document = response.json()
    assert document == json.loads(DOCUMENT.read_text(encoding="utf-8"))
    served = Contract(document)
    served.check(response, "GET", "/api/openapi.json")
    return served


def test_the_document_is_openapi_31_with_valid_schemas(contract: Contract) -> None:
    assert contract.doc["openapi"].startswith("3.1.")
    for name, schema in contract.doc["components"]["schemas"].items():
        assert name and Draft202012Validator.check_schema(schema) is None


def test_every_api_route_is_documented_and_nothing_more() -> None:
    app = create_app({"SECRET_KEYS": ("test-key",)})
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/"):
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            for method in rule.methods or ():
                if method not in ("HEAD", "OPTIONS"):
                    routes.add((method.lower(), path))
    document = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    documented = {
        (method, path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    assert routes == documented


def _turn(client: ChatClient, message: str = "hello") -> Turn:
    return client.start(message)


def _read(client: ChatClient, turn: Turn, **params: str) -> requests.Response:
    url = client.base_url + turn.stream_url
    return client.http.get(url, params=params, timeout=30)


Case = Callable[[ChatClient], tuple[requests.Response, str, str]]
CHAT = "/api/chat"
EVENTS = "/api/chat/{turn_id}/events"
CANCEL = "/api/chat/{turn_id}/cancel"
CONVERSATION = "/api/conversations/{conversation_id}"
CONVERSATIONS = "/api/conversations"
FEEDBACK = "/api/chat/{turn_id}/feedback"
TOKEN = "/api/token"
CHALLENGE = "/api/challenge"


def _post_chat(client: ChatClient, **kwargs: Any) -> requests.Response:
    return client.http.post(client.base_url + CHAT, timeout=10, **kwargs)


def _post_events(
    client: ChatClient, headers: dict[str, str] | None = None
) -> requests.Response:
    """Start a turn that answers with its own events."""
    body = {"message": "hi", "token": client.token}
    headers = {"Accept": "text/event-stream", **(headers or {})}
    return _post_chat(client, json=body, headers=headers)


def _post_events_again(
    client: ChatClient, after_done: bool = False
) -> requests.Response:
    """Retry a streamed turn with its key: its events again, or 204 past `done`."""
    key = {"Idempotency-Key": "openapi-streamed-retry"}
    events = SSEDecoder().feed(_post_events(client, key).content)
    if after_done:
        key["Last-Event-ID"] = str(len(events))
    return _post_events(client, key)


CASES: dict[str, Case] = {
    "chat 201 json": lambda c: (c.post(message="hi"), "POST", CHAT),
    "chat 201 form": lambda c: (
        _post_chat(c, data={"message": "hi", "token": c.token}),
        "POST",
        CHAT,
    ),
    "chat 201 multipart": lambda c: (
        _post_chat(c, files={"message": (None, "hi"), "token": (None, c.token)}),
        "POST",
        CHAT,
    ),
    "chat 400 empty": lambda c: (c.post(message="  "), "POST", CHAT),
    "chat 400 too long": lambda c: (c.post(message="x" * 4001), "POST", CHAT),
    "chat 400 not an object": lambda c: (
        _post_chat(c, json=[1], headers={"X-Chat-Token": c.token}),
        "POST",
        CHAT,
    ),
    "chat 403": lambda c: (
        _post_chat(c, json={"message": "hi", "token": "forged"}),
        "POST",
        CHAT,
    ),
    "chat 404": lambda c: (
        c.post(message="hi", conversation_id="nobody-s-conversation"),
        "POST",
        CHAT,
    ),
    "chat 200 events": lambda c: (_post_events(c), "POST", CHAT),
    "chat 200 events replayed": lambda c: (_post_events_again(c), "POST", CHAT),
    "chat 204 events after done": lambda c: (
        _post_events_again(c, after_done=True),
        "POST",
        CHAT,
    ),
    "chat 405": lambda c: (c.http.get(c.base_url + CHAT, timeout=10), "GET", CHAT),
    "events 405": lambda c: (
        c.http.post(c.base_url + _turn(c).stream_url, timeout=10),
        "POST",
        EVENTS,
    ),
    "chat 413": lambda c: (
        _post_chat(c, data={"message": "x" * 70_000, "token": c.token}),
        "POST",
        CHAT,
    ),
    "events 200 stream": lambda c: (_read(c, _turn(c)), "GET", EVENTS),
    "events 200 poll": lambda c: (
        _read(c, _turn(c), poll="1", last_event_id="0"),
        "GET",
        EVENTS,
    ),
    "events 204 after done": lambda c: (
        _read(c, (t := _turn(c)), last_event_id=str(len(c.events(t)))),
        "GET",
        EVENTS,
    ),
    "events 403": lambda c: (
        c.http.get(c.base_url + _turn(c).stream_url + "x", timeout=10),
        "GET",
        EVENTS,
    ),
    "events 404": lambda c: (
        c.http.get(c.base_url + "/api/chat/unknown/events?t=x", timeout=10),
        "GET",
        EVENTS,
    ),
    "cancel 202": lambda c: (
        c.http.post(c.base_url + _turn(c).cancel_url, timeout=10),
        "POST",
        CANCEL,
    ),
    "cancel 202 owner": lambda c: (
        c.http.post(
            c.base_url + f"/api/chat/{_turn(c).id}/cancel",
            json={"token": c.token},
            timeout=10,
        ),
        "POST",
        CANCEL,
    ),
    "cancel 403": lambda c: (
        c.http.post(c.base_url + _turn(c).cancel_url + "x", timeout=10),
        "POST",
        CANCEL,
    ),
    "cancel 404": lambda c: (
        c.http.post(
            c.base_url + "/api/chat/unknown-turn-id/cancel",
            json={"token": c.token},
            timeout=10,
        ),
        "POST",
        CANCEL,
    ),
    "conversation 200": lambda c: (
        c.http.get(
            c.base_url + f"/api/conversations/{c.answer('hi')[0].conversation_id}",
            headers={"X-Chat-Token": c.token},
            timeout=10,
        ),
        "GET",
        CONVERSATION,
    ),
    "conversation 404": lambda c: (
        c.http.get(
            c.base_url + "/api/conversations/unknown-conversation",
            params={"token": c.token},
            timeout=10,
        ),
        "GET",
        CONVERSATION,
    ),
    "conversation 200 markdown": lambda c: (
        c.http.get(
            c.base_url + f"/api/conversations/{c.answer('hi')[0].conversation_id}",
            params={"token": c.token, "format": "markdown"},
            timeout=10,
        ),
        "GET",
        CONVERSATION,
    ),
    "delete 204 one": lambda c: (
        c.http.delete(
            c.base_url + f"/api/conversations/{c.answer('hi')[0].conversation_id}",
            headers={"X-Chat-Token": c.token},
            timeout=10,
        ),
        "DELETE",
        CONVERSATION,
    ),
    "delete 404 one": lambda c: (
        c.http.delete(
            c.base_url + "/api/conversations/unknown-conversation",
            headers={"X-Chat-Token": c.token},
            timeout=10,
        ),
        "DELETE",
        CONVERSATION,
    ),
    "delete 204 everything": lambda c: (
        c.http.delete(
            c.base_url + CONVERSATIONS, headers={"X-Chat-Token": c.token}, timeout=10
        ),
        "DELETE",
        CONVERSATIONS,
    ),
    "delete 403 everything": lambda c: (
        c.http.delete(
            c.base_url + CONVERSATIONS, headers={"X-Chat-Token": "forged"}, timeout=10
        ),
        "DELETE",
        CONVERSATIONS,
    ),
    "feedback 204": lambda c: (
        c.http.post(
            c.base_url + f"/api/chat/{c.answer('hi')[0].id}/feedback",
            json={"rating": "down", "comment": "Too short.", "token": c.token},
            timeout=10,
        ),
        "POST",
        FEEDBACK,
    ),
    "feedback 400": lambda c: (
        c.http.post(
            c.base_url + f"/api/chat/{c.answer('hi')[0].id}/feedback",
            json={"rating": "meh", "token": c.token},
            timeout=10,
        ),
        "POST",
        FEEDBACK,
    ),
    "feedback 404": lambda c: (
        c.http.post(
            c.base_url + "/api/chat/unknown-turn-id/feedback",
            json={"rating": "up", "token": c.token},
            timeout=10,
        ),
        "POST",
        FEEDBACK,
    ),
    "token 200": lambda c: (
        c.http.post(c.base_url + TOKEN, json={"token": c.token}, timeout=10),
        "POST",
        TOKEN,
    ),
    "token 403": lambda c: (
        c.http.post(c.base_url + TOKEN, data={"token": "forged"}, timeout=10),
        "POST",
        TOKEN,
    ),
    "token 400": lambda c: (
        c.http.post(c.base_url + TOKEN, json="token", timeout=10),
        "POST",
        TOKEN,
    ),
    "challenge 404": lambda c: (
        c.http.get(c.base_url + CHALLENGE, timeout=10),
        "GET",
        CHALLENGE,
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_real_responses_match_the_document(
    service: Service, contract: Contract, name: str
) -> None:
    response, method, template = CASES[name](ChatClient(service.url))
    expected = int(name.split()[1])
    assert response.status_code == expected, response.text[:300]
    contract.check(response, method, template)


def test_a_rate_limited_turn_matches_the_document(
    service_factory: ServiceFactory,
) -> None:
    limited = service_factory(CHATAPP_RATE_LIMITS="1/minute")
    client = ChatClient(limited.url)
    document = requests.get(limited.url + "/api/openapi.json", timeout=10).json()
    assert client.post(message="one").status_code == 201
    refused = client.post(message="two")
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    Contract(document).check(refused, "POST", CHAT)


def test_a_wrong_answer_fails_the_check(contract: Contract, service: Service) -> None:
    # The checker itself can fail: a 201 body is no error body.
    response = ChatClient(service.url).post(message="hi")
    response.status_code = 400
    with pytest.raises(AssertionError):
        contract.check(response, "POST", CHAT)


def test_the_bot_check_matches_the_document(service_factory: ServiceFactory) -> None:
    from tests.test_botcheck_e2e import solve

    checked = service_factory(CHATAPP_BOT_CHECK="pow")
    document = requests.get(checked.url + "/api/openapi.json", timeout=10).json()
    contract = Contract(document)
    client = ChatClient(checked.url)

    challenge = client.http.get(checked.url + CHALLENGE, timeout=10)
    contract.check(challenge, "GET", CHALLENGE)
    refused = client.post(message="hi")
    assert refused.json()["error"]["code"] == "challenge_required"
    contract.check(refused, "POST", CHAT)
    accepted = client.post(message="hi", altcha=solve(challenge.json()))
    assert "token" in accepted.json()
    contract.check(accepted, "POST", CHAT)
