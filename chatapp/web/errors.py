"""The one JSON error helper: SPEC's error body, before any header is sent.

The exceptions themselves live in chatapp/errors.py, which knows no Flask,
so that turns/, store/ and upstream/ can raise them.
"""

from __future__ import annotations

from flask import Response
from flask import jsonify

from chatapp.errors import ApiError


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """Answer an API error as SPEC's JSON body, never cached."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    if retry_after is not None:
        response.headers["Retry-After"] = str(max(1, int(retry_after)))
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def api_error_response(exc: ApiError) -> Response:
    """Turn a raised ApiError into its JSON answer."""
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        retry_after=exc.retry_after,
        headers=exc.headers,
    )
