"""A body over the size limit gets 413, whether chunked or with a length."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.conftest import ChatClient
from tests.conftest import Service
from tests.conftest import ServiceFactory

pytestmark = pytest.mark.e2e

LIMIT = 2048


@pytest.fixture(scope="module")
def service(module_services: ServiceFactory) -> Service:
    return module_services(CHATAPP_MAX_BODY_BYTES=str(LIMIT))


def raw_post(
    service: Service,
    body: bytes,
    content_type: str,
    *,
    chunk: int | None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    """POST /api/chat over a plain socket: chunked in pieces of `chunk` bytes."""
    head = [
        "POST /api/chat HTTP/1.1",
        f"Host: 127.0.0.1:{service.port}",
        f"Content-Type: {content_type}",
        "Connection: close",
    ]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if chunk is None:
        head.append(f"Content-Length: {len(body)}")
        payload = body
    else:
        head.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", service.port), timeout=10) as sock:
        sock.sendall("\r\n".join(head).encode() + b"\r\n\r\n" + payload)
        received = b""
        while chunk_in := sock.recv(65536):
            received += chunk_in
    header_block, _, content = received.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    fields = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines)}
    return int(status_line.split()[1]), fields, json.loads(content)


@pytest.mark.parametrize("chunk", [None, 1000, 7])
@pytest.mark.parametrize(
    ("content_type", "make"),
    [
        ("application/json", lambda t, n: json.dumps({"token": t, "message": "x" * n})),
        (
            "application/x-www-form-urlencoded",
            lambda t, n: f"token={t}&message=" + "y" * n,
        ),
    ],
)
def test_a_body_one_byte_over_the_limit_gets_413(
    service: Service, content_type: str, make: Any, chunk: int | None
) -> None:
    token = ChatClient(service.url).token
    # The token is in the body, where the limiter reads it before the view.
    base = len(make(token, 0).encode())
    body = make(token, LIMIT + 1 - base).encode()
    assert len(body) == LIMIT + 1
    status, headers, error = raw_post(service, body, content_type, chunk=chunk)
    assert status == 413
    assert error == {
        "error": {"code": "payload_too_large", "message": error["error"]["message"]}
    }
    assert headers["cache-control"] == "no-store"
    assert "x-request-id" in headers


@pytest.mark.parametrize("chunk", [None, 1000, 7])
def test_a_body_at_the_limit_starts_a_turn(service: Service, chunk: int | None) -> None:
    token = ChatClient(service.url).token
    base = len(json.dumps({"token": token, "message": ""}))
    message = "z" * (LIMIT - base)
    body = json.dumps({"token": token, "message": message}).encode()
    assert len(body) == LIMIT
    status, _, answer = raw_post(service, body, "application/json", chunk=chunk)
    assert status == 201, answer
    assert answer["stream_url"].startswith("/api/chat/")


def test_a_chunked_body_arrives_whole(service: Service) -> None:
    client = ChatClient(service.url)
    body = json.dumps({"token": client.token, "message": "chunk-é-ünï"}).encode()
    status, _, answer = raw_post(service, body, "application/json", chunk=3)
    assert status == 201
    history = client.http.get(
        service.url + f"/api/conversations/{answer['conversation_id']}",
        headers={"X-Chat-Token": client.token},
        timeout=10,
    ).json()
    assert history["messages"][0]["content"] == "chunk-é-ünï"
