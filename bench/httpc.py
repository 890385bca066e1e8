"""A small HTTP/1.1 keep-alive client over gevent sockets, and an SSE reader.

The load client opens thousands of connections from one process, so it
speaks HTTP itself: a request is one `sendall`, a response head is parsed
once, and a chunked body is handed on as each piece arrives.
"""

from __future__ import annotations

import codecs
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

import gevent.socket

MAX_HEAD = 64 * 1024
READ_SIZE = 64 * 1024
# gunicorn closes a keep-alive connection after 5 s without a request (its
# `keepalive`); one idle for longer than this is replaced before it is used,
# as a browser would retry, so that the race is not counted as an error.
MAX_IDLE = 4.0


class HTTPError(Exception):
    """The connection broke or the server spoke something we do not expect."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Response:
    """A response head, and the body once it has been read whole."""

    status: int
    headers: dict[str, str]
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()


class Connection:
    """One keep-alive connection to host:port, reconnected on demand."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self._buf = bytearray()
        self._reusable = False
        self._idle_since = 0.0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self._buf.clear()
        self._reusable = False

    def _connect(self) -> socket.socket:
        if self._reusable and time.monotonic() - self._idle_since > MAX_IDLE:
            self._reusable = False
        if self.sock is None or not self._reusable:
            self.close()
            try:
                sock = gevent.socket.create_connection(
                    (self.host, self.port), timeout=self.timeout
                )
            except OSError as exc:
                raise HTTPError("connect") from exc
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = sock
        return self.sock

    def send(
        self, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> None:
        """Send one request, on the open connection when it can be reused."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        sock = self._connect()
        self._reusable = False
        try:
            sock.sendall(data)
        except OSError as exc:
            self.close()
            raise HTTPError("send") from exc

    def _fill(self) -> None:
        assert self.sock is not None
        try:
            data = self.sock.recv(READ_SIZE)
        except TimeoutError as exc:
            self.close()
            raise HTTPError("timeout") from exc
        except OSError as exc:
            self.close()
            raise HTTPError("reset") from exc
        if not data:
            self.close()
            raise HTTPError("eof")
        self._buf += data

    def head(self) -> Response:
        """Read a response's status line and headers."""
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self._buf) > MAX_HEAD:
                raise HTTPError("bad_head")
            self._fill()
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError) as exc:
            raise HTTPError("bad_head") from exc
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(status, headers)

    def body(self, response: Response) -> Response:
        """Read the whole body of `response`; leave the connection reusable."""
        if response.chunked:
            response.body = b"".join(self.chunks(response))
            return response
        length = int(response.headers.get("content-length", "0"))
        while len(self._buf) < length:
            self._fill()
        response.body = bytes(self._buf[:length])
        del self._buf[:length]
        self._done(response)
        return response

    def request(
        self,
        method: str,
        target: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> Response:
        """Send a request and read its whole response."""
        self.send(method, target, headers or {}, body)
        return self.body(self.head())

    def chunks(self, response: Response) -> Iterator[bytes]:
        """Yield a chunked body's data as it arrives, piece by piece."""
        buf = self._buf
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(buf[:eol]).split(b";", 1)[0], 16)
            del buf[: eol + 2]
            if size == 0:
                while len(buf) < 2:
                    self._fill()
                del buf[:2]  # no trailers from our servers
                self._done(response)
                return
            while size:
                if not buf:
                    self._fill()
                piece = bytes(buf[:size])
                del buf[: len(piece)]
                size -= len(piece)
                yield piece
            while len(buf) < 2:
                self._fill()
            del buf[:2]

    def _done(self, response: Response) -> None:
        self._reusable = response.headers.get("connection", "").lower() != "close"
        self._idle_since = time.monotonic()
        if not self._reusable:
            self.close()


@dataclass
class SSEReader:
    """Split LF-delimited server-sent events as our servers send them."""

    _text: str = ""
    _event: str = "message"
    _data: list[str] = field(default_factory=list)
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")()
    )

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        """Return the (event, data) pairs that `data` completes."""
        out: list[tuple[str, str]] = []
        text = self._text + self._decoder.decode(data)
        *lines, self._text = text.split("\n")
        for line in lines:
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data = "message", []
            elif line.startswith("data:"):
                self._data.append(line[6:] if line[5:6] == " " else line[5:])
            elif line.startswith("event:"):
                self._event = line[6:].strip()
        return out
