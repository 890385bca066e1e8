"""Hostile clients through real gunicorn: bad input is a 4xx, never a 500."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from chatapp.tokens import WP_MAX_AGE
from chatapp.tokens import Identity
from chatapp.tokens import TokenSigner
from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory
from tests.conftest import data_of
from tests.conftest import text_of
from tests.fake_provider import Behaviour
from tests.fake_provider import FakeProvider

pytestmark = pytest.mark.e2e

DEEP = "[" * 2000 + "]" * 2000
BODY_SECONDS = 1.0
SECRET_KEY = "hostile-tests-secret-key-0123456789abcdef"


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> Service:
    return module_services(
        CHATAPP_BODY_READ_SECONDS=str(BODY_SECONDS), CHATAPP_SECRET_KEY=SECRET_KEY
    )


@pytest.fixture
def client(service: Service) -> Iterator[ChatClient]:
    made = ChatClient(service.url)
    yield made
    made.http.close()


def error_code(response: requests.Response) -> str:
    return str(response.json()["error"]["code"])


def assert_no_traceback(service: Service) -> None:
    assert "Traceback" not in service.log()


def raw_exchange(service: Service, data: bytes, wait: float = 10) -> bytes:
    """Send raw bytes on one connection; return all it answers until closed."""
    with socket.create_connection(("127.0.0.1", service.port), timeout=wait) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def recv_response(sock: socket.socket) -> bytes:
    """Read one response with a Content-Length body from a raw socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


# -- deep JSON nesting: 400, and the limits stay on ---------------------------


@pytest.mark.parametrize("path", ["/api/chat", "/api/token", "/api/chat/x/cancel"])
def test_deep_json_on_any_post_is_invalid_input(
    service: Service, client: ChatClient, path: str
) -> None:
    turn = client.start("hello")
    url = service.url + path.replace("/x/", f"/{turn.id}/")
    response = client.http.post(
        url,
        data=DEEP,
        headers={"Content-Type": "application/json", "X-Chat-Token": client.token},
        timeout=10,
    )
    assert response.status_code == 400, response.text
    assert error_code(response) == "invalid_input"
    assert_no_traceback(service)


def test_deep_json_cannot_switch_the_rate_limit_off(
    service_factory: ServiceFactory,
) -> None:
    service = service_factory(CHATAPP_RATE_LIMITS="3/minute")
    client = ChatClient(service.url)
    accepted = 0
    for _ in range(8):
        for path in ("/api/token", "/api/chat"):
            client.http.post(
                service.url + path,
                data=DEEP,
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
        if client.post(message="hello").status_code == 201:
            accepted += 1
    client.http.close()
    assert accepted == 3
    assert_no_traceback(service)


# -- Last-Event-ID that str.isdigit() likes -----------------------------------


def test_superscript_last_event_id_replays_from_the_start(
    service: Service, client: ChatClient
) -> None:
    turn = client.start("hello")
    complete = client.events(turn)
    for how in ("header", "query"):
        if how == "header":
            response = client.http.get(
                service.url + turn.stream_url,
                headers={"Last-Event-ID": "\u00b2"},
                timeout=10,
            )
        else:
            response = client.http.get(
                service.url + turn.stream_url + "&last_event_id=%C2%B2", timeout=10
            )
        assert response.status_code == 200, response.text
        assert "event: done" in response.text
        assert response.text.count("event: delta") == len(data_of(complete, "delta"))
    assert_no_traceback(service)


# -- bodies that are malformed on the wire, or slow ---------------------------


def test_malformed_chunk_size_is_invalid_input(
    service: Service, client: ChatClient
) -> None:
    request = (
        b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
        b"X-Chat-Token: " + client.token.encode() + b"\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    )
    answer = raw_exchange(service, request)
    assert status_of(answer) == 400, answer[:500]
    assert b'"invalid_input"' in answer
    assert_no_traceback(service)


def test_a_slow_body_gets_408_at_the_deadline(service: Service) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        answer = recv_response(sock)
        elapsed = time.monotonic() - started
    assert status_of(answer) == 408, answer[:500]
    assert b'"request_timeout"' in answer
    assert BODY_SECONDS - 0.1 <= elapsed < BODY_SECONDS + 3
    assert_no_traceback(service)


def test_a_slow_chunked_body_gets_408_at_the_deadline(service: Service) -> None:
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"1\r\n{\r\n"
        )
        answer = recv_response(sock)
    assert status_of(answer) == 408, answer[:500]


def test_slow_bodies_do_not_delay_others(service_factory: ServiceFactory) -> None:
    # A deadline long enough for the health check on a busy machine.
    service = service_factory(CHATAPP_BODY_READ_SECONDS="5")
    slow = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
            sock.sendall(
                b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            slow.append(sock)
        assert requests.get(service.url + "/healthz", timeout=5).status_code == 200
        # Answered while every slow body was still held: none has its 408 yet
        # (a worker waiting on one would answer the check only after them).
        for sock in slow:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1, socket.MSG_PEEK)
            sock.settimeout(10)
        for sock in slow:
            assert status_of(recv_response(sock)) == 408
    finally:
        for sock in slow:
            sock.close()


# -- lone surrogates: from the user, and from the provider --------------------


def assert_readable_everywhere(
    service: Service, client: ChatClient, message: str
) -> str:
    """Start a turn; its stream, its poll and its conversation all answer."""
    turn = client.start(message)
    events = client.events(turn)
    assert events[-1].event == "done"
    polled = client.http.get(
        service.url + turn.stream_url + "&poll=1&last_event_id=0", timeout=10
    )
    assert polled.status_code == 200, polled.text
    assert polled.json()["done"] is True
    assert [e["event"] for e in polled.json()["events"]] == [e.event for e in events]
    history = client.http.get(
        f"{service.url}/api/conversations/{turn.conversation_id}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    )
    assert history.status_code == 200, history.text
    assert history.json()["messages"][0]["content"] == message.replace(
        "\ud800", "\ufffd"
    )
    assert_no_traceback(service)
    return text_of(events)


def test_a_form_part_with_an_unreadable_name_is_ignored_not_a_500(
    service: Service, client: ChatClient
) -> None:
    # Found by the fuzzer: a part named "x\\" parses with the name None.
    body = (
        b'--b\r\nContent-Disposition: form-data; name="x\\"\r\n\r\n{}\r\n'
        b'--b\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n'
        b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        + client.token.encode()
        + b"\r\n--b--\r\n"
    )
    response = client.http.post(
        service.url + "/api/chat",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert_no_traceback(service)


@pytest.mark.parametrize(("parts", "status"), [(60, 201), (65, 413), (900, 413)])
def test_a_form_of_many_parts_is_refused_before_it_costs_much(
    service: Service, client: ChatClient, parts: int, status: int
) -> None:
    """Each part costs parsing time before any check: 64 at most."""
    filler = b"".join(
        b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % n
        for n in range(parts - 2)
    )
    body = (
        filler
        + b'--b\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n'
        + b'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n'
        + client.token.encode()
        + b"\r\n--b--\r\n"
    )
    response = client.http.post(
        service.url + "/api/chat",
        data=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
        timeout=10,
    )
    assert response.status_code == status, response.text
    if status == 413:
        assert error_code(response) == "payload_too_large"
    assert_no_traceback(service)


def test_a_lone_surrogate_from_the_user_becomes_a_replacement_character(
    service: Service, client: ChatClient
) -> None:
    body = json.dumps({"message": "x\ud800", "token": client.token})
    assert "\\ud800" in body
    response = client.http.post(
        service.url + "/api/chat",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 201, response.text
    assert_readable_everywhere(service, client, "x\ud800")


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_lone_surrogate_from_the_provider_becomes_a_replacement_character(
    request: pytest.FixtureRequest, fake_provider: FakeProvider, provider: str
) -> None:
    service: Service = request.getfixturevalue(f"{provider}_service")
    client = ChatClient(service.url)
    fake_provider.enqueue(Behaviour(text="ab\ud800cd", pieces=2))
    text = assert_readable_everywhere(service, client, "hello")
    assert text == "ab\ufffdcd"
    client.http.close()


# -- page tokens are not renewable forever ------------------------------------


def test_renewal_keeps_identity_but_not_past_its_absolute_lifetime(
    service: Service,
) -> None:
    signer = TokenSigner((SECRET_KEY,), page_ttl=7200, stream_ttl=600)
    now = time.time()
    fresh = Identity("v1", "42", "https://blog.example", "Ann", issued=now - 60)
    old = Identity("v2", "42", "https://blog.example", "Ann", issued=now - WP_MAX_AGE)
    url = service.url + "/api/token"
    renewed = requests.post(url, json={"token": signer.page_token(fresh)}, timeout=10)
    assert renewed.status_code == 200, renewed.text
    identity = signer.read_page_token(renewed.json()["token"])
    assert identity == fresh
    assert identity.issued == int(now - 60)
    refused = requests.post(url, json={"token": signer.page_token(old)}, timeout=10)
    assert refused.status_code == 403, refused.text
    assert error_code(refused) == "token_expired"


# -- X-Forwarded-For only from trusted proxies --------------------------------


@pytest.mark.parametrize(
    ("proxies", "honoured"), [("10.9.9.9/32", False), ("127.0.0.0/8 ::1", True)]
)
def test_forwarded_for_counts_only_from_a_trusted_proxy(
    service_factory: ServiceFactory, proxies: str, honoured: bool
) -> None:
    service = service_factory(
        CHATAPP_RATE_LIMITS="2/minute",
        CHATAPP_TRUSTED_PROXY_HOPS="1",
        CHATAPP_TRUSTED_PROXIES=proxies,
    )
    client = ChatClient(service.url)
    statuses = [
        client.post(
            message="hi", headers={"X-Forwarded-For": f"203.0.113.{n}"}
        ).status_code
        for n in range(4)
    ]
    client.http.close()
    assert statuses == ([201] * 4 if honoured else [201, 201, 429, 429])


# -- the provider's redirects are never followed ------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_redirect_from_the_provider_never_carries_the_key_elsewhere(
    request: pytest.FixtureRequest, fake_provider: FakeProvider, provider: str
) -> None:
    service: Service = request.getfixturevalue(f"{provider}_service")
    client = ChatClient(service.url)
    with FakeProvider() as elsewhere:
        path = "/v1/chat/completions" if provider == "openai" else "/v1/messages"
        fake_provider.enqueue(
            Behaviour(location=f"http://127.0.0.1:{elsewhere.port}{path}")
        )
        turn, events = client.answer("hello")
        assert elsewhere.requests == []
    client.http.close()
    assert fake_provider.requests[0].headers.get(
        "x-api-key" if provider == "anthropic" else "authorization"
    )
    assert [e.event for e in events][-2:] == ["error", "done"]
    assert data_of(events, "error")[0]["code"] == "provider_error"
    assert data_of(events, "done")[0]["finish_reason"] == "error"
    assert_no_traceback(service)


def test_slow_headers_are_cut_by_gunicorns_keepalive_deadline(
    service: Service,
) -> None:
    # The gevent worker reads each request head under `keepalive` seconds
    # (gunicorn.conf.py); with keepalive = 0 it would wait forever.
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", service.port), timeout=30) as sock:
        sock.sendall(b"POST /api/token HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        assert sock.recv(65536) == b""
    assert time.monotonic() - started < 10
