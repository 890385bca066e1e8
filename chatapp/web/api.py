"""Blueprint: the JSON and SSE API under /api."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify
from flask import request
from flask import url_for
from werkzeug.datastructures import MIMEAccept
from werkzeug.http import parse_accept_header

from chatapp import sse
from chatapp.errors import NotFound
from chatapp.errors import SolutionRefused
from chatapp.errors import TokenInvalid
from chatapp.extensions import settings
from chatapp.extensions import state
from chatapp.store.conversations import StoredMessage
from chatapp.store.tail import Tail
from chatapp.tokens import REFRESH_GRACE_SECONDS
from chatapp.tokens import Identity
from chatapp.tokens import new_identity
from chatapp.turns import read
from chatapp.turns.start import Idempotent
from chatapp.turns.start import TurnIds
from chatapp.turns.start import check_conversation
from chatapp.turns.start import conversation_messages
from chatapp.turns.start import earlier_turn
from chatapp.turns.start import start_turn
from chatapp.turns.visitor import transcript
from chatapp.web import errors
from chatapp.web import parse
from chatapp.web.cors import require_page_origin
from chatapp.web.limiter import admit_turn
from chatapp.web.limiter import client_for
from chatapp.web.limiter import client_key
from chatapp.web.limiter import rate_limit_headers
from chatapp.web.limiter import token_refresh_limit
from chatapp.web.logs import client_hash
from chatapp.web.logs import log_turn
from chatapp.web.logs import prompt_fields
from chatapp.web.logs import turn_logged
from chatapp.web.readers import EXTENSION as READER_CAPS
from chatapp.web.stream import EventReader
from chatapp.web.stream import finished_response

bp = Blueprint("api", __name__, url_prefix="/api")
errors.register(bp)

POLL_WAIT = 25.0


def _reply(ids: TurnIds, renewed: str | None) -> dict[str, Any]:
    """The 201's body for a turn: its ids, its URLs, a renewed page token."""
    token = state().signer.stream_token(ids.turn_id)
    stream_url = _events_url(ids.turn_id, token)
    # The cancel route is the events route's sibling: one url_for builds both
    # (script root, quoting and all), the second URL by swapping the last step.
    path, _, query = stream_url.partition("?")
    reply = {
        "id": ids.turn_id,
        "conversation_id": ids.conversation_id,
        "stream_url": stream_url,
        "cancel_url": f"{path.removesuffix('/events')}/cancel?{query}",
    }
    if renewed is not None:
        reply["token"] = renewed
    return reply


# Characters url_for leaves as they are in a path step and a query value.
_VERBATIM = re.compile(r"[A-Za-z0-9_.-]+")
# The app's url_for URLs of a turn's events per script root, split where
# the turn id and the token go; the placeholders are verbatim characters too.
EVENTS_URLS = "chatapp.events_urls"
_TURN_MARK, _TOKEN_MARK = "TURN0mark", "TOKEN0mark"


def _events_url(turn_id: str, token: str) -> str:
    """url_for's URL of a turn's events, made once per script root.

    url_for costs about 13 us a call; for verbatim ids and tokens (all that
    our ids and itsdangerous make) its URL is the same with the two values
    put in its places.
    """
    root = request.script_root
    made: dict[str, tuple[str, str, str] | None]
    made = current_app.extensions.setdefault(EVENTS_URLS, {})
    parts = made.get(root)
    if parts is None and root not in made:
        if len(made) >= 16:
            made.clear()
        marked = url_for("api.events", turn_id=_TURN_MARK, t=_TOKEN_MARK)
        head, _, rest = marked.partition(_TURN_MARK)
        middle, _, tail = rest.partition(_TOKEN_MARK)
        once = marked.count(_TURN_MARK) == marked.count(_TOKEN_MARK) == 1
        parts = made[root] = (head, middle, tail) if once else None
    if parts is None or not (
        _VERBATIM.fullmatch(turn_id) and _VERBATIM.fullmatch(token)
    ):
        return url_for("api.events", turn_id=turn_id, t=token)
    head, middle, tail = parts
    return f"{head}{turn_id}{middle}{token}{tail}"


@bp.post("/chat")
def chat() -> Response | tuple[Response, int, dict[str, str]]:
    """Start a turn; generation begins now, its events stream here or at stream_url."""
    st = state()
    values = parse.fields()
    who = parse.identity(parse.page_token(values))
    message = parse.message(values)
    cid = parse.text_field(values, "conversation_id")
    page_url = parse.page_url(values)
    check_conversation(st.history, who, cid)
    replace_last = parse.flag(values, "replace_last")
    key = parse.idempotency_key(values)
    # A retry of an accepted turn gets that turn back, whatever the limits say.
    body, new = earlier_turn(st.history, who, key), False
    if body is None:
        who, renewed = _bot_check(who, values)
        with admit_turn(who, message, cid) as admission:  # every limit, in order
            ids = TurnIds.mint(cid)
            body = _reply(ids, renewed)
            earlier = start_turn(
                st.relay,
                st.settings,
                who,
                message,
                ids,
                admission,
                idempotent=Idempotent(key, body) if key else None,
                page_url=page_url,
                knowledge=st.knowledge,
                replace_last=replace_last and cid is not None,
            )
            if earlier is None:
                admission.started(ids.turn_id)
                st.metrics.turn_started()
                if turn_logged():
                    log_turn(
                        "turn.accepted",
                        turn_id=ids.turn_id,
                        client=client_hash(),
                        **prompt_fields(message),
                    )
        new = earlier is None
        body = earlier or body
    if _wants_events():
        return _turn_events(body, new)
    headers = {"Location": body["stream_url"], "Cache-Control": "no-store"}
    headers.update(rate_limit_headers())  # counted by the hit itself, no second scan
    return jsonify(body), 201, headers


def _wants_events() -> bool:
    """Whether the client asked for the turn's event stream as the answer."""
    return _accepts_events(request.headers.get("Accept", ""))


@lru_cache(maxsize=64)
def _accepts_events(accept: str) -> bool:
    """Werkzeug's answer for one Accept value, as `request.accept_mimetypes`
    reads it: a page sends the same few values, parsed once each (25 us)."""
    offered = ("application/json", sse.MEDIA_TYPE)  # a tie goes to JSON
    mimetypes = parse_accept_header(accept, MIMEAccept)
    return mimetypes.best_match(offered) == sse.MEDIA_TYPE


def _turn_events(body: dict[str, Any], new: bool) -> Response:
    """Answer a started turn with its events: one request per turn.

    The `start` event carries the 201 body's URLs (and a renewed token), so
    the client can resume through stream_url and cancel through cancel_url.
    """
    turn_id = body["id"]
    tail = state().relay.open(turn_id)
    if tail is None:
        if new:  # accepted, then its first writes lost (a Redis failover)
            return _lost_turn()
        raise NotFound("No such turn, or it has expired.")
    extra = {k: v for k, v in body.items() if k not in ("id", "conversation_id")}
    response = _read_turn(turn_id, tail, start=extra)
    if response.status_code == 200:
        response.headers.update(rate_limit_headers())
    return response


def _bot_check(who: Identity, values: dict[str, Any]) -> tuple[Identity, str | None]:
    """Ask an anonymous visitor for an unused ALTCHA solution, unless its
    token's stamp vouches for this very client, solved less than an hour ago.

    A visitor who solves one gets, in its 201, a renewed page token stamped
    with the client that solved it (a keyed hash of its address key) and when:
    returned here with the stamped identity.
    """
    st = state()
    if st.botcheck is None or who.wp_user is not None:
        return who, None
    client = client_for(who)
    if st.signer.is_human(who, client):
        return who, None
    solution = request.headers.get("X-Altcha") or parse.text_field(values, "altcha")
    try:
        st.botcheck.verify(solution)
    except SolutionRefused as exc:
        raise SolutionRefused() from exc  # the leaf's words, not the reason
    verified = st.signer.stamp_human(who, client)
    return verified, st.signer.page_token(verified)


@bp.get("/challenge")
def challenge() -> Response:
    """Hand out a proof-of-work challenge; 404 while the bot check is off."""
    check = state().botcheck
    if check is None:
        raise NotFound("Not found.")
    response = jsonify(check.challenge())
    response.headers["Cache-Control"] = "no-store"
    return response


def _check_stream_token(turn_id: str, token: str | None) -> float:
    """Return the age of a valid stream token for this turn; 403 otherwise."""
    if not parse.ID.match(turn_id):
        raise NotFound("No such turn.")
    try:
        return state().signer.check_stream_token(token, turn_id)
    except TokenInvalid as exc:  # TokenExpired too
        raise TokenInvalid("A valid stream token is required.") from exc


def _open_turn(turn_id: str, token: str | None) -> Tail | None:
    """Check the stream token, then follow the turn.

    A turn's log outlives its stream token's first CHATAPP_STREAM_TTL
    seconds, so a younger token whose log is missing names a turn that was
    accepted and then lost: None. An older one names an expired turn: 404.
    """
    age = _check_stream_token(turn_id, token)
    tail = state().relay.open(turn_id)
    if tail is None:
        fresh = age < settings().stream_ttl
        if fresh and not state().relay.events.forgotten(turn_id):
            return None
        raise NotFound("No such turn, or it has expired.")
    return tail


def _lost_turn() -> Response:
    """End the reader of an accepted turn whose log was lost: error + done."""
    if request.args.get("poll") == "1":
        response = jsonify({"events": list(read.LOST_TURN_EVENTS), "done": True})
        response.headers["Cache-Control"] = "no-store"
        return response
    return Response(read.LOST_TURN_STREAM, headers=sse.STREAM_HEADERS)


@bp.get("/chat/<turn_id>/events")
def events(turn_id: str) -> Response:
    """Serve the turn's events as SSE (or JSON with ?poll=1) from an event id."""
    tail = _open_turn(turn_id, request.args.get("t"))
    if tail is None:
        return _lost_turn()
    return _read_turn(turn_id, tail, poll=request.args.get("poll") == "1")


def _read_turn(
    turn_id: str, tail: Tail, *, poll: bool = False, start: dict[str, Any] | None = None
) -> Response:
    """Serve a turn's events after Last-Event-ID: SSE, or JSON when polled."""
    st = state()
    after = parse.last_event_id()
    if read.finished(tail, after):
        st.relay.close(turn_id, tail)
        return finished_response()
    reader = EventReader(
        relay=st.relay,
        metrics=st.metrics,
        caps=current_app.extensions[READER_CAPS],
        turn_id=turn_id,
        tail=tail,
        after=after,
        client=client_key(),
        environ=request.environ,
    )
    if poll:
        return reader.poll(POLL_WAIT)
    return reader.stream(
        heartbeat=st.settings.heartbeat_seconds,
        orphan=st.settings.orphan_seconds,
        start=start,
    )


@bp.post("/chat/<turn_id>/cancel")
def cancel(turn_id: str) -> tuple[Response, int]:
    """Cancel a turn, from any worker; cancelling a finished turn is a no-op."""
    st = state()
    values = parse.fields()
    stream_token = request.args.get("t") or parse.text_field(values, "t")
    if stream_token:
        _check_stream_token(turn_id, stream_token)
        info = st.relay.info(turn_id)
    else:
        who = parse.identity(parse.page_token(values))
        info = st.relay.info(turn_id) if parse.ID.match(turn_id) else None
        if info is not None and info.owner != who.owner:
            info = None
    if info is None:
        raise NotFound("No such turn, or it has expired.")
    st.relay.cancel(turn_id)
    return jsonify({"id": turn_id, "status": "cancelling"}), 202


@bp.get("/conversations/<conversation_id>")
def conversation(conversation_id: str) -> Response:
    """Return a conversation's messages to its owner."""
    token = request.headers.get("X-Chat-Token") or request.args.get("token")
    try:
        who = state().signer.read_page_token(token)
    except TokenInvalid as exc:  # TokenExpired too
        raise NotFound("No such conversation.") from exc
    messages = conversation_messages(state().history, who, conversation_id)
    if request.args.get("format") == "markdown":
        return _transcript(conversation_id, messages)
    response = jsonify({"id": conversation_id, "messages": messages})
    response.headers["Cache-Control"] = "no-store"
    return response


def _transcript(conversation_id: str, messages: list[dict[str, Any]]) -> Response:
    """Answer a conversation as a Markdown file to keep."""
    stored = [
        StoredMessage(
            m["role"],
            m["content"],
            m["created_at"],
            sources=tuple(m.get("sources", ())),
        )
        for m in messages
    ]
    response = Response(transcript(conversation_id, stored), mimetype="text/markdown")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="conversation-{conversation_id}.md"'
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/token")
@token_refresh_limit
def refresh_token() -> Response:
    """Renew a page token, same identity; without one, mint a visitor's."""
    values = parse.fields()
    token = parse.page_token(values)
    if token is None:
        require_page_origin()  # only pages on chatapp's own or listed origins
        who = new_identity()
    else:
        who = parse.identity(token, grace=REFRESH_GRACE_SECONDS)
    response = jsonify({"token": state().signer.page_token(who)})
    response.headers["Cache-Control"] = "no-store"
    return response
