"""Refuse a chunked request body over the size limit with 413, like any other.

Werkzeug answers 413 to a Content-Length over MAX_CONTENT_LENGTH, but cuts a
chunked body (no length) silently at the limit: an oversized JSON body turned
into a 400 and an oversized form into an empty one. So a chunked body is read
up to one byte past the limit and handed on with its true length.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from _typeshed.wsgi import WSGIApplication
    from _typeshed.wsgi import WSGIEnvironment


class ChunkedBodyLimit:
    """Give a chunked body a Content-Length, reading no more than limit + 1 bytes."""

    def __init__(self, app: WSGIApplication, limit: int) -> None:
        self.app = app
        self.limit = limit

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
            # The server has decoded the chunks; Werkzeug ignores any
            # Content-Length while the header still says chunked. Over the
            # limit, the length alone makes Werkzeug answer 413.
            body = environ["wsgi.input"].read(self.limit + 1)
            del environ["HTTP_TRANSFER_ENCODING"]
            environ["CONTENT_LENGTH"] = str(len(body))
            environ["wsgi.input"] = io.BytesIO(body)
        return self.app(environ, start_response)
