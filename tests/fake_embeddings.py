"""An OpenAI-compatible `POST /v1/embeddings` on 127.0.0.1 with a toy model.

The toy model knows a few synonyms: words of one concept share a dimension,
so "money back" lands near "refund" though they share no word. Every other
word gets a dimension of its own by hash. Vectors are exact and repeatable.
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

DIMENSIONS = 64
CONCEPTS = {
    "refund": ("refund", "refunds", "refunded", "money", "reimburse", "repaid"),
    "delivery": ("delivery", "shipping", "ship", "parcel", "arrive", "arrives"),
    "shelter": ("tent", "tents", "shelter", "camp", "camping"),
}
_WORD = re.compile(r"\w+")


def toy_vector(text: str) -> list[float]:
    vector = [0.0] * DIMENSIONS
    concepts = list(CONCEPTS)
    for word in _WORD.findall(text.lower()):
        for n, members in enumerate(CONCEPTS.values()):
            if word in members:
                vector[n] += 3.0
                break
        else:
            vector[len(concepts) + zlib.crc32(word.encode()) % (DIMENSIONS - 3)] += 0.2
    return vector


class FakeEmbeddings:
    """The server; `requests` holds every body it was sent, `fail` breaks it."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FakeEmbeddings:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def _handler(fake: FakeEmbeddings) -> Any:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fake.requests.append(body)
            fake.headers.append(dict(self.headers))
            if fake.fail or self.path != "/v1/embeddings":
                self.answer(500, {"error": {"message": "down"}})
                return
            texts = body["input"]
            # Listed in reverse: the client must order by "index".
            data = [
                {"object": "embedding", "index": i, "embedding": toy_vector(t)}
                for i, t in reversed(list(enumerate(texts)))
            ]
            self.answer(200, {"object": "list", "data": data, "model": body["model"]})

        def answer(self, status: int, payload: dict[str, Any]) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

    return Handler
