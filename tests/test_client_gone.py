"""Noticing a client that went away, whatever its file descriptor."""

from __future__ import annotations

import os
import resource
import socket
from collections.abc import Iterator

import pytest

from chatapp.web.stream import client_gone as _client_gone

HIGH_FD = 1500  # above select()'s FD_SETSIZE of 1024


@pytest.fixture
def pair(
    request: pytest.FixtureRequest,
) -> Iterator[tuple[socket.socket, socket.socket]]:
    server, client = socket.socketpair()
    if request.param == "high":
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < HIGH_FD + 1:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
        os.dup2(server.fileno(), HIGH_FD)
        server.close()
        server = socket.socket(fileno=HIGH_FD)
    yield server, client
    server.close()
    client.close()


@pytest.mark.parametrize("pair", ["low", "high"], indirect=True)
def test_gone_only_after_the_client_closes(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    server, client = pair
    gone = _client_gone(server)
    assert gone() is False
    client.sendall(b"GET /next HTTP/1.1\r\n")  # a pipelined request is not a goodbye
    assert gone() is False
    client.close()
    assert gone() is True


def test_no_socket_never_looks_gone() -> None:
    assert _client_gone(None)() is False
