"""The upstream edge's connections and bodies: kept-alive connections, dropped
ones never reused, request bodies as the provider parses them."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from urllib3.connection import HTTPSConnection

from chatapp.upstream.http import json_body
from chatapp.upstream.http import post
from chatapp.upstream.http import upstream_pool

ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)


class OneAnswerServer:
    """Answers one request per connection (keep-alive promised), then closes it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.closed = threading.Semaphore(0)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                else:
                    conn.sendall(ANSWER)
            self.closed.release()  # after close(): the FIN is on its way

    def stop(self) -> None:
        self.listener.close()


@pytest.fixture
def server() -> Iterator[OneAnswerServer]:
    srv = OneAnswerServer()
    yield srv
    srv.stop()


def _ask(pool: object, connect_timeout: float = 5.0) -> int:
    response = post(
        pool, "/v1/x", headers={}, body={"a": 1}, connect_timeout=connect_timeout
    )
    assert response.read() == b"{}"
    response.release_conn()  # the whole body read: back to the pool
    return int(response.status)


def test_a_connection_the_provider_closed_is_not_reused(
    server: OneAnswerServer,
) -> None:
    pool = upstream_pool(requests.Session(), f"http://127.0.0.1:{server.port}/v1/x")
    assert _ask(pool) == 200
    assert server.closed.acquire(timeout=5)
    # Without the drop check the kept-alive socket would be written to, and
    # the request would fail (no retries): a new connection answers instead.
    assert _ask(pool) == 200
    assert server.connections == 2


def test_a_connection_still_open_reports_connected(server: OneAnswerServer) -> None:
    pool = upstream_pool(requests.Session(), f"http://127.0.0.1:{server.port}/v1/x")
    conn = pool.ConnectionCls("127.0.0.1", server.port)
    conn.connect()
    try:
        assert conn.is_connected
    finally:
        conn.close()
    assert not conn.is_connected


def test_tls_pools_keep_tls_connections() -> None:
    pool = upstream_pool(requests.Session(), "https://provider.invalid/v1/x")
    assert issubclass(pool.ConnectionCls, HTTPSConnection)


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "n": 1},
        {"content": 'é 😀 \u2028 \x00 "quoted" \\', "temperature": 0.7},
        {"content": "a lone \ud800 surrogate"},  # orjson refuses it
    ],
)
def test_request_bodies_parse_back_to_what_was_sent(body: dict[str, Any]) -> None:
    assert json.loads(json_body(body)) == body
