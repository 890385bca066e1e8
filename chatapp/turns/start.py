"""Starting a turn: ownership, context from history, exactly-once keys."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from chatapp.errors import ApiError
from chatapp.store.conversations import History
from chatapp.store.conversations import StoredMessage
from chatapp.tokens import Identity
from chatapp.turns.model import TurnInfo
from chatapp.turns.relay import Relay
from chatapp.turns.visitor import settle
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Message

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


def new_id() -> str:
    """Mint an opaque, unguessable id for a turn or a conversation."""
    return secrets.token_urlsafe(16)


def context(history: list[StoredMessage], max_chars: int) -> list[Message]:
    """Keep the newest earlier messages that fit `max_chars`, oldest first."""
    kept: list[Message] = []
    used = 0
    for stored in reversed(history):
        used += len(stored.content)
        if used > max_chars:
            break
        kept.append(Message(stored.role, stored.content))
    kept.reverse()
    # Providers want the conversation to open with the user.
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def cache_key(request: ChatRequest, provider: str) -> str:
    """Name a first-turn answer by everything that shapes it."""
    shape = [
        provider,
        request.model,
        request.system,
        request.max_output_tokens,
        request.temperature,
        [(m.role, m.content) for m in request.messages],
    ]
    return hashlib.sha256(json.dumps(shape).encode()).hexdigest()


def idempotency_scope(identity: Identity, key: str) -> str:
    """Scope a client's idempotency key to its owner."""
    return f"{identity.owner}|{key}"


def earlier_turn(
    history: History, identity: Identity, key: str | None
) -> dict[str, Any] | None:
    """Return the body of the turn this idempotency key already started."""
    if not key:
        return None
    earlier = history.idempotent(idempotency_scope(identity, key))
    return json.loads(earlier) if earlier is not None else None


def check_conversation(
    history: History, identity: Identity, conversation_id: str | None
) -> None:
    """Refuse a conversation id that is malformed, unknown or someone else's."""
    if conversation_id is not None and (
        not _ID.match(conversation_id)
        or history.owner(conversation_id) != identity.owner
    ):
        raise ApiError(404, "not_found", "No such conversation.")


def conversation_messages(
    history: History, identity: Identity, conversation_id: str
) -> list[dict[str, Any]]:
    """Return a conversation's messages to its owner; 404 for anyone else."""
    check_conversation(history, identity, conversation_id)
    out: list[dict[str, Any]] = []
    for m in history.messages(conversation_id):
        message = {"role": m.role, "content": m.content, "created_at": m.created_at}
        if m.turn_id is not None:
            message["turn_id"] = m.turn_id  # lets the page rate a restored answer
        out.append(message)
    return out


def start_turn(
    relay: Relay,
    config: dict[str, Any],
    identity: Identity,
    message: str,
    conversation_id: str | None,
    idempotency_key: str | None,
    describe: Callable[[str, str], dict[str, Any]],
    *,
    replace_last: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Start a turn (or find the one this key started); return body and newness.

    `describe(turn_id, conversation_id)` builds the response body, so that a
    retry with the same key gets the very same body back. The caller has
    checked that `identity` owns `conversation_id`. With `replace_last` the
    conversation's last exchange is dropped first (its running turn ended),
    so the model never sees the answer being replaced.
    """
    history = relay.history
    turn_id = new_id()
    cid = conversation_id or new_id()
    body = describe(turn_id, cid)
    if idempotency_key:
        ttl = config["STREAM_TTL"] + config["UPSTREAM_TOTAL_TIMEOUT"]
        earlier = history.claim_idempotency(
            idempotency_scope(identity, idempotency_key), json.dumps(body), ttl
        )
        if earlier is not None:
            return json.loads(earlier), False
    if replace_last and conversation_id:
        settle(relay, conversation_id)
        history.drop_last_exchange(conversation_id)
    earlier_messages = history.messages(cid) if conversation_id else []
    now = time.time()
    if conversation_id is None:
        history.create(cid, identity.owner, StoredMessage("user", message, now))
    else:
        history.append(cid, StoredMessage("user", message, now))
    request = ChatRequest(
        model=config["MODEL"],
        system=config["SYSTEM_PROMPT"],
        messages=(
            *context(earlier_messages, config["HISTORY_MAX_CHARS"]),
            Message("user", message),
        ),
        max_output_tokens=config["MAX_OUTPUT_TOKENS"],
        temperature=config["TEMPERATURE"],
    )
    history.remember_turn(cid, identity.owner, turn_id)
    info = TurnInfo(turn_id, identity.owner, cid, now)
    key = None
    if config["CACHE_TTL"] and conversation_id is None:
        key = cache_key(request, config["PROVIDER"])
        cached = history.cached_answer(key)
        if cached is not None:
            relay.replay(info, cached)
            return body, True
    relay.start(info, request, cache_key=key)
    return body, True
