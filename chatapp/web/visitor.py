"""Blueprint: the visitor's own data under /api -- erase, export, feedback."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from flask import current_app
from flask import request

from chatapp.errors import InvalidInput
from chatapp.errors import NotFound
from chatapp.errors import TokenExpired
from chatapp.errors import TokenInvalid
from chatapp.extensions import state
from chatapp.masking import mask
from chatapp.tokens import Identity
from chatapp.turns.start import check_conversation
from chatapp.turns.visitor import delete_conversation
from chatapp.turns.visitor import delete_everything
from chatapp.turns.visitor import feedback_value
from chatapp.web import api
from chatapp.web import errors
from chatapp.web import parse
from chatapp.web.logs import client_hash
from chatapp.web.logs import log_turn

bp = Blueprint("visitor", __name__, url_prefix="/api")
errors.register(bp)

NO_CONTENT = {"Cache-Control": "no-store"}


def _owner_or_404() -> Identity:
    """Read the page token (header or ?token=); expired is 403, anything else 404.

    An expired token says so, so that a long-open page renews it and asks
    again instead of taking the 404 for "already gone".
    """
    token = request.headers.get("X-Chat-Token") or request.args.get("token")
    try:
        return state().signer.read_page_token(token)
    except TokenExpired as exc:
        raise TokenExpired("The page token has expired.") from exc
    except TokenInvalid as exc:
        raise NotFound("No such conversation.") from exc


@bp.delete("/conversations/<conversation_id>")
def delete_one(conversation_id: str) -> tuple[str, int, dict[str, str]]:
    """Erase one conversation of the token's owner; its running turn ends first."""
    st = state()
    who = _owner_or_404()
    check_conversation(st.history, who, conversation_id)
    delete_conversation(st.relay, who.owner, conversation_id)
    log_turn("conversation.deleted", client=client_hash(), count=1)
    return "", 204, NO_CONTENT


@bp.delete("/conversations")
def delete_all() -> tuple[str, int, dict[str, str]]:
    """Erase every conversation of the token's identity, on every host."""
    st = state()
    token = request.headers.get("X-Chat-Token") or request.args.get("token")
    who = parse.identity(token)
    count = delete_everything(st.relay, who.owner)
    log_turn("conversation.deleted", client=client_hash(), count=count)
    return "", 204, NO_CONTENT


@bp.post("/chat/<turn_id>/feedback")
def feedback(turn_id: str) -> tuple[str, int, dict[str, str]]:
    """Keep a rating (and maybe a comment) of one answer with its conversation."""
    st = state()
    values = parse.fields()
    conversation_id = _rated_conversation(turn_id, values)
    try:
        value = feedback_value(values.get("rating"), values.get("comment"))
    except ValueError as exc:
        raise InvalidInput(str(exc).capitalize() + ".") from exc
    st.history.set_feedback(conversation_id, turn_id, value)
    st.metrics.feedback(values["rating"])
    extra: dict[str, Any] = {}
    if current_app.extensions["chatapp.logs"].log_prompts and values.get("comment"):
        extra["comment"] = mask(values["comment"])
    log_turn("turn.feedback", turn_id=turn_id, rating=values["rating"], **extra)
    return "", 204, NO_CONTENT


def _rated_conversation(turn_id: str, values: dict[str, object]) -> str:
    """Authorise like cancel (stream token or owner's page token); 404 when unknown."""
    st = state()
    stream_token = request.args.get("t") or parse.text_field(values, "t")
    if stream_token:
        api._check_stream_token(turn_id, stream_token)
        who = None
    else:
        who = parse.identity(parse.page_token(values))
    found = st.history.conversation_of(turn_id) if parse.ID.match(turn_id) else None
    owner = st.history.owner(found) if found else None
    if found is None or owner is None or (who is not None and who.owner != owner):
        raise NotFound("No such answer, or it has expired.")
    return found
