"""Blueprint: the JSON and SSE API under /api."""

from __future__ import annotations

import re
import select
import socket
from collections.abc import Callable
from typing import Any

import gevent.monkey
from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify
from flask import request
from flask import url_for

from chatapp import readers
from chatapp import sse
from chatapp.bodies import read_fields
from chatapp.chat import earlier_turn
from chatapp.chat import start_turn
from chatapp.errors import ApiError
from chatapp.errors import StoreError
from chatapp.errors import api_error_response
from chatapp.errors import error_response
from chatapp.extensions import state
from chatapp.limits import admit_turn
from chatapp.limits import client_key
from chatapp.limits import count_reader
from chatapp.limits import token_refresh_limit
from chatapp.tokens import REFRESH_GRACE_SECONDS
from chatapp.tokens import Identity
from chatapp.tokens import TokenExpired
from chatapp.tokens import TokenInvalid

bp = Blueprint("api", __name__, url_prefix="/api")

_original_poll = gevent.monkey.get_original("select", "poll")
_POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
POLL_WAIT = 25.0

STORE_RETRY_AFTER = 5


@bp.errorhandler(ApiError)
def refused(exc: ApiError) -> Response:
    """Answer a refusal as SPEC's JSON, counting limit refusals."""
    if exc.status in (429, 503):
        state().metrics.refused(exc.code)
    return api_error_response(exc)


@bp.errorhandler(StoreError)
def store_unavailable(exc: StoreError) -> Response:
    """Shared storage is away: ask the client to come back, never a 500."""
    state().metrics.refused("over_capacity")
    return error_response(
        503,
        "over_capacity",
        "The service is briefly unavailable; try again in a few seconds.",
        retry_after=STORE_RETRY_AFTER,
    )


def _fields() -> dict[str, Any]:
    """Read the body as JSON or a form into a dict, refusing anything else."""
    # harden #11: bounded JSON nesting (no RecursionError), lone surrogates scrubbed.
    return read_fields()


def _text_field(fields: dict[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(400, "invalid_input", f"'{name}' must be a string.")
    return value


def _identity(token: str | None, *, grace: int = 0) -> Identity:
    try:
        return state().signer.read_page_token(token, grace=grace)
    except TokenExpired as exc:
        raise ApiError(403, "token_expired", "The page token has expired.") from exc
    except TokenInvalid as exc:
        raise ApiError(403, "invalid_token", "A valid page token is required.") from exc


def _page_token(fields: dict[str, Any]) -> str | None:
    return request.headers.get("X-Chat-Token") or _text_field(fields, "token")


def _describe(turn_id: str, conversation_id: str) -> dict[str, Any]:
    token = state().signer.stream_token(turn_id)
    return {
        "id": turn_id,
        "conversation_id": conversation_id,
        "stream_url": url_for("api.events", turn_id=turn_id, t=token),
        "cancel_url": url_for("api.cancel", turn_id=turn_id, t=token),
    }


@bp.post("/chat")
def chat() -> tuple[Response, int, dict[str, str]]:
    """Start a turn; generation begins now, the answer streams from stream_url."""
    st = state()
    fields = _fields()
    identity = _identity(_page_token(fields))
    message = _text_field(fields, "message")
    if message is None or not message.strip():
        raise ApiError(400, "invalid_input", "Type a message first.")
    if len(message) > st.config["MAX_MESSAGE_CHARS"]:
        raise ApiError(
            400,
            "message_too_long",
            f"Messages are limited to {st.config['MAX_MESSAGE_CHARS']} characters.",
        )
    conversation_id = _text_field(fields, "conversation_id")
    if conversation_id is not None and (
        not _ID.match(conversation_id)
        or st.history.owner(conversation_id) != identity.owner
    ):
        raise ApiError(404, "not_found", "No such conversation.")
    key = request.headers.get("Idempotency-Key") or _text_field(
        fields, "client_turn_id"
    )
    if key is not None and not _KEY.match(key):
        raise ApiError(400, "invalid_input", "The idempotency key is malformed.")
    # A retry of an accepted turn gets that turn back, whatever the limits say.
    body = earlier_turn(st.relay, identity, key)
    if body is None:
        with admit_turn() as admission:  # rate limit, quota, streams, capacity
            body, new = start_turn(
                st.relay, st.config, identity, message, conversation_id, key, _describe
            )
            if new:
                admission.started(body["id"])
                st.metrics.turn_started()
    return (
        jsonify(body),
        201,
        {"Location": body["stream_url"], "Cache-Control": "no-store"},
    )


def _stream_turn(turn_id: str, token: str | None) -> None:
    """Check the stream token and that the turn exists."""
    if not _ID.match(turn_id):
        raise ApiError(404, "not_found", "No such turn.")
    try:
        state().signer.check_stream_token(token, turn_id)
    except (TokenInvalid, TokenExpired) as exc:
        raise ApiError(
            403, "invalid_token", "A valid stream token is required."
        ) from exc
    if state().turns.info(turn_id) is None:
        raise ApiError(404, "not_found", "No such turn, or it has expired.")


def _last_event_id() -> int:
    raw = request.headers.get("Last-Event-ID") or request.args.get("last_event_id", "")
    raw = raw.strip()
    # harden #11: isdigit() alone accepts "²", which int() refuses.
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 10 else 0


@bp.get("/chat/<turn_id>/events")
def events(turn_id: str) -> Response:
    """Serve the turn's events as SSE (or JSON with ?poll=1) from an event id."""
    relay = state().relay
    _stream_turn(turn_id, request.args.get("t"))
    after = _last_event_id()
    done_id = relay.turns.done_id(turn_id)
    if request.args.get("poll") == "1":
        found, done = relay.poll(turn_id, after, POLL_WAIT)
        body = [{"id": e.id, "event": e.event, "data": e.data} for e in found]
        response = jsonify({"events": body, "done": done})
        response.headers["Cache-Control"] = "no-store"
        return response
    if done_id is not None and after >= done_id:
        return Response(status=204, headers={"Cache-Control": "no-store"})
    gone = _client_gone(request.environ.get("gunicorn.socket"))
    # harden #11: a few readers per turn and per client; the oldest gives way.
    caps = current_app.extensions[readers.EXTENSION]
    closer = readers.socket_closer(request.environ.get("gunicorn.socket"))
    slot = caps.acquire(client_key(), turn_id, closer)
    stream = caps.hold(slot, relay.events(turn_id, after, gone))
    response = Response(count_reader(stream), headers=sse.STREAM_HEADERS)
    response.direct_passthrough = True
    return response


def _client_gone(sock: socket.socket | None) -> Callable[[], bool]:
    """Tell, without blocking, whether the client has closed its connection."""
    if sock is None:
        return lambda: False
    # The unpatched poll(2): gevent's select() first calls select(2), which
    # refuses descriptors >= 1024 (FD_SETSIZE) with ValueError.
    poller = _original_poll()
    poller.register(sock.fileno(), select.POLLIN | _POLLRDHUP)

    def gone() -> bool:
        try:
            ready = poller.poll(0)
        except OSError:
            return True
        for _, mask in ready:
            if mask & (_POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                return True
        return False

    return gone


@bp.post("/chat/<turn_id>/cancel")
def cancel(turn_id: str) -> tuple[Response, int]:
    """Cancel a turn, from any worker; cancelling a finished turn is a no-op."""
    st = state()
    fields = _fields()
    stream_token = request.args.get("t") or _text_field(fields, "t")
    if stream_token:
        _stream_turn(turn_id, stream_token)
    else:
        identity = _identity(_page_token(fields))
        info = st.turns.info(turn_id) if _ID.match(turn_id) else None
        if info is None or info.owner != identity.owner:
            raise ApiError(404, "not_found", "No such turn, or it has expired.")
    st.relay.cancel(turn_id)
    return jsonify({"id": turn_id, "status": "cancelling"}), 202


@bp.get("/conversations/<conversation_id>")
def conversation(conversation_id: str) -> Response:
    """Return a conversation's messages to its owner."""
    history = state().history
    token = request.headers.get("X-Chat-Token") or request.args.get("token")
    try:
        identity = state().signer.read_page_token(token)
    except (TokenInvalid, TokenExpired) as exc:
        raise ApiError(404, "not_found", "No such conversation.") from exc
    if (
        not _ID.match(conversation_id)
        or history.owner(conversation_id) != identity.owner
    ):
        raise ApiError(404, "not_found", "No such conversation.")
    messages = [
        {"role": m.role, "content": m.content, "created_at": m.created_at}
        for m in history.messages(conversation_id)
    ]
    response = jsonify({"id": conversation_id, "messages": messages})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/token")
@token_refresh_limit
def refresh_token() -> Response:
    """Renew a current or recently expired page token, same identity."""
    fields = _fields()
    identity = _identity(_page_token(fields), grace=REFRESH_GRACE_SECONDS)
    response = jsonify({"token": state().signer.page_token(identity)})
    response.headers["Cache-Control"] = "no-store"
    return response
