"""Where web/ answers chatapp's exceptions: SPEC's JSON error body, in one place.

The exceptions live in chatapp/errors.py, which knows no Flask, so that
turns/, store/ and upstream/ raise them; each ApiError leaf carries its
status and SPEC code, so this module needs no table of its own. Blueprints
under /api call register() for their handlers.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from chatapp.errors import ApiError
from chatapp.errors import LimitReached
from chatapp.errors import OverCapacity
from chatapp.errors import StoreError
from chatapp.extensions import state

STORE_RETRY_AFTER = 5


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
    """Turn a raised ApiError into its JSON answer: the leaf's status and code."""
    return error_response(
        exc.status,
        exc.code,
        exc.message,
        retry_after=exc.retry_after,
        headers=exc.headers,
    )


def refused(exc: ApiError) -> Response:
    """Answer a refusal as SPEC's JSON, counting those of a limit."""
    if isinstance(exc, LimitReached):
        state().metrics.refused(exc.code)
    return api_error_response(exc)


def store_unavailable(exc: StoreError) -> Response:
    """Shared storage is away: ask the client to come back, never a 500."""
    state().metrics.storage_error()
    return refused(
        OverCapacity(
            "The service is briefly unavailable; try again in a few seconds.",
            retry_after=STORE_RETRY_AFTER,
        )
    )


def register(bp: Blueprint) -> None:
    """Answer the blueprint's refusals and storage failures as SPEC's JSON."""
    bp.register_error_handler(ApiError, refused)
    bp.register_error_handler(StoreError, store_unavailable)
