"""The yardstick: a plain relay that forwards the upstream's bytes, unchanged.

What any Flask + requests app on gevent does with a streaming answer, and
nothing more: no tokens, limits, turn log or SSE of its own. The bench serves
it with gunicorn's gevent workers, as chatapp is served, and points the
floor's client at it; the upstream's base URL comes from PLAIN_RELAY_UPSTREAM.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import requests  # noqa: E402
from flask import Flask  # noqa: E402
from flask import Response  # noqa: E402
from flask import request  # noqa: E402
from requests.adapters import HTTPAdapter  # noqa: E402

UPSTREAM = os.environ.get("PLAIN_RELAY_UPSTREAM", "http://127.0.0.1:9000")
FORWARDED = ("Authorization", "Content-Type", "Accept")

app = Flask(__name__)
session = requests.Session()  # one per worker, its connections kept alive
session.trust_env = False  # as chatapp's: no proxy or .netrc lookups per call
# As chatapp's: keep a connection per open stream (the default keeps 10).
session.mount("http://", HTTPAdapter(pool_maxsize=10_000, max_retries=0))


@app.get("/healthz")
def healthz() -> str:
    return "ok"


@app.post("/v1/chat/completions")
def relay() -> Response:
    headers = {k: v for k, v in request.headers.items() if k in FORWARDED}
    upstream = session.post(
        f"{UPSTREAM}/v1/chat/completions",
        data=request.get_data(),
        headers={**headers, "Accept-Encoding": "identity"},
        stream=True,
        timeout=(5, 60),
    )

    def body() -> Iterator[bytes]:
        try:
            # Each piece as it arrives; at the end urllib3 keeps the connection.
            while piece := upstream.raw.read1(65536):
                yield piece
        finally:
            upstream.close()

    return Response(
        body(), upstream.status_code, content_type=upstream.headers.get("Content-Type")
    )
