"""Reading requests into plain values, refusing what SPEC refuses."""

from __future__ import annotations

import re
from typing import Any

from flask import request

from chatapp.errors import InvalidInput
from chatapp.errors import MessageTooLong
from chatapp.errors import TokenExpired
from chatapp.errors import TokenInvalid
from chatapp.extensions import settings
from chatapp.extensions import state
from chatapp.knowledge.documents import is_web_url
from chatapp.tokens import Identity
from chatapp.web.bodies import read_fields

ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
_EVENT_ID = re.compile(r"^[0-9]{1,9}$")
MAX_PAGE_URL_CHARS = 2048


def fields() -> dict[str, Any]:
    """Read the body as JSON or a form into a dict, refusing anything else.

    JSON nesting is bounded (never a RecursionError) and lone surrogates are
    replaced, so no body can reach a 500.
    """
    return read_fields()


def text_field(values: dict[str, Any], name: str) -> str | None:
    """Return a string field, None when absent or empty."""
    value = values.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"'{name}' must be a string.")
    return value


def identity(token: str | None, *, grace: int = 0) -> Identity:
    """Read a page token, refusing a missing, foreign or expired one."""
    try:
        return state().signer.read_page_token(token, grace=grace)
    except TokenExpired as exc:
        raise TokenExpired("The page token has expired.") from exc
    except TokenInvalid as exc:
        raise TokenInvalid("A valid page token is required.") from exc


def flag(values: dict[str, Any], name: str) -> bool:
    """Return a yes/no field: JSON true/false, or a form's "true"/"1"/"false"/"0"."""
    value = values.get(name)
    if value is None or value in (False, "", "false", "0"):
        return False
    if value in (True, "true", "1"):
        return True
    raise InvalidInput(f"'{name}' must be true or false.")


def page_token(values: dict[str, Any]) -> str | None:
    """Find the page token: header first, then the body."""
    return request.headers.get("X-Chat-Token") or text_field(values, "token")


def message(values: dict[str, Any]) -> str:
    """Return the user's message, refusing an empty or over-long one."""
    text = text_field(values, "message")
    if text is None or not text.strip():
        raise InvalidInput("Type a message first.")
    most = settings().max_message_chars
    if len(text) > most:
        raise MessageTooLong(f"Messages are limited to {most} characters.")
    return text


def idempotency_key(values: dict[str, Any]) -> str | None:
    """Return the client's key for exactly-once turns, if it sent one."""
    key = request.headers.get("Idempotency-Key") or text_field(values, "client_turn_id")
    if key is not None and not KEY.match(key):
        raise InvalidInput("The idempotency key is malformed.")
    return key


def last_event_id() -> int:
    """Return the id a reader already has (0 for none); ASCII digits only."""
    raw = request.headers.get("Last-Event-ID") or (
        # No query string, no arguments to parse (a streamed POST has none).
        request.args.get("last_event_id", "") if request.query_string else ""
    )
    raw = raw.strip()
    return int(raw) if _EVENT_ID.match(raw) else 0


def page_url(values: dict[str, Any]) -> str | None:
    """Return the visitor's page (site knowledge favours it), without its fragment."""
    url = text_field(values, "page_url")
    if url is None:
        return None
    if not is_web_url(url, MAX_PAGE_URL_CHARS):
        raise InvalidInput(
            "'page_url' must be an absolute http(s) URL of at most "
            f"{MAX_PAGE_URL_CHARS} characters.",
        )
    return url.split("#", 1)[0]
