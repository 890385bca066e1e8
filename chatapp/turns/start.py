"""Starting a turn: ownership, context from history, exactly-once keys."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any
from typing import Protocol

from chatapp.errors import ApiError
from chatapp.masking import has_personal_data
from chatapp.store.conversations import History
from chatapp.store.conversations import StoredMessage
from chatapp.tokens import Identity
from chatapp.turns.knowledge import Knowledge
from chatapp.turns.model import TurnInfo
from chatapp.turns.relay import Relay
from chatapp.turns.visitor import settle
from chatapp.upstream.base import ChatRequest
from chatapp.upstream.base import Message

_ID = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
# Three digits in a row: an order, customer or account number, a postcode.
_NUMBER = re.compile(r"\d{3}")


def new_id() -> str:
    """Mint an opaque, unguessable id for a turn or a conversation."""
    return secrets.token_urlsafe(16)


def context(history: list[StoredMessage], max_chars: int) -> list[Message]:
    """Keep the newest earlier exchanges that fit `max_chars`, oldest first.

    Only answered questions count: a message moderation blocked (or could
    not check), one whose turn failed before any text, and one still being
    answered have no answer of their turn, and never reach the model, not
    even as context of a later turn (SPEC: a flagged message never reaches
    the model). The answer names its turn, so interleaved turns cannot lend
    an unanswered question someone else's answer.
    """
    answered = {m.turn for m in history if m.role == "assistant" and m.turn}
    kept: list[Message] = []
    used = 0
    for index in range(len(history) - 1, -1, -1):
        stored = history[index]
        if stored.role == "user" and not _answered(history, index, answered):
            continue
        used += len(stored.content)
        if used > max_chars:
            break
        kept.append(Message(stored.role, stored.content))
    kept.reverse()
    # Providers want the conversation to open with the user.
    while kept and kept[0].role != "user":
        kept.pop(0)
    return kept


def _answered(history: list[StoredMessage], index: int, answered: set[str]) -> bool:
    question = history[index]
    if question.turn:
        return question.turn in answered
    # Stored before messages named their turn: answered if an answer follows.
    following = history[index + 1] if index + 1 < len(history) else None
    return following is not None and following.role == "assistant"


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


def cacheable(question: str) -> bool:
    """Tell whether a first question may be answered from (and fill) the cache.

    The cache is shared by every visitor, so an answer replayed from it tells
    the asker that someone asked exactly this within CHATAPP_CACHE_TTL. A
    question that holds personal data (what the log masking finds: e-mail
    addresses, phone and card numbers, keys) or any number of three digits
    or more (orders, customers, accounts, postcodes) is never cached, so it
    cannot be confirmed that way. Names are not recognised: see docs/api.md.
    """
    return not has_personal_data(question) and not _NUMBER.search(question)


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
        if m.role == "assistant" and m.turn:
            message["turn_id"] = m.turn  # lets the page rate a restored answer
        if m.role == "assistant" and m.sources:
            message["sources"] = list(m.sources)  # and show what it cited
        out.append(message)
    return out


class Admitted(Protocol):
    """What a turn's admission decided beyond yes (turns/admit.py)."""

    @property
    def model(self) -> str:
        """The model to ask (the fallback past a soft ceiling); empty: the usual."""

    @property
    def refusal(self) -> ApiError | None:
        """The site's spend ceiling: raised unless a cached answer serves."""


def start_turn(
    relay: Relay,
    config: dict[str, Any],
    identity: Identity,
    message: str,
    conversation_id: str | None,
    idempotency_key: str | None,
    describe: Callable[[str, str], dict[str, Any]],
    admitted: Admitted | None = None,
    *,
    fallback: bool = False,
    page_url: str | None = None,
    knowledge: Knowledge | None = None,
    replace_last: bool = False,
) -> tuple[dict[str, Any], bool]:
    """Start a turn (or find the one this key started); return body and newness.

    `describe(turn_id, conversation_id)` builds the response body, so that a
    retry with the same key gets the very same body back. The caller has
    checked that `identity` owns `conversation_id`. `admitted` says which
    model the turn asks (past the soft ceiling, CHATAPP_FALLBACK_MODEL) and
    whether the site's ceiling refuses it; `fallback` asks the fallback
    model only (without one configured, both ask the primary). With
    `replace_last` the last exchange is dropped first (its running turn
    ended), so the model never sees the answer being replaced.
    """
    history = relay.history
    model, route = _model(config, admitted, fallback)
    turn_id, prepared = new_id(), None
    refusal = admitted.refusal if admitted else None
    if refusal is not None:
        # Only a cached first answer serves: keyed as cached, sources and all.
        if conversation_id is not None:
            raise refusal
        prepared = _prepare(
            config, model, route, message, [], knowledge, page_url, turn_id
        )
        key = _cache_key(config, None, message, prepared[0])
        if key is None or history.cached_answer(key) is None:
            raise refusal
    cid = conversation_id or new_id()
    body = describe(turn_id, cid)
    earlier = _claim(history, config, identity, idempotency_key, body)
    if earlier is not None:
        return earlier, False
    question = StoredMessage("user", message, time.time(), turn_id)
    earlier_messages = _ask(
        relay, identity, cid, conversation_id, question, replace_last
    )
    request, sources = prepared or _prepare(
        config, model, route, message, earlier_messages, knowledge, page_url, turn_id
    )
    info = TurnInfo(turn_id, identity.owner, cid, question.created_at)
    key = _cache_key(config, conversation_id, message, request)
    cached = history.cached_answer(key) if key is not None else None
    if cached is not None:
        relay.replay(info, cached, model, sources=sources)
    else:
        relay.start(info, request, cache_key=key, sources=sources)
    return body, True


def _claim(
    history: History,
    config: dict[str, Any],
    identity: Identity,
    idempotency_key: str | None,
    body: dict[str, Any],
) -> dict[str, Any] | None:
    """Claim the idempotency key for `body`; the earlier body if it was taken."""
    if not idempotency_key:
        return None
    ttl = config["STREAM_TTL"] + config["UPSTREAM_TOTAL_TIMEOUT"]
    earlier = history.claim_idempotency(
        idempotency_scope(identity, idempotency_key), json.dumps(body), ttl
    )
    return json.loads(earlier) if earlier is not None else None


def _ask(
    relay: Relay,
    identity: Identity,
    cid: str,
    conversation_id: str | None,
    question: StoredMessage,
    replace_last: bool,
) -> list[StoredMessage]:
    """Store the question in its conversation; return the messages before it."""
    history = relay.history
    if replace_last and conversation_id:
        settle(relay, conversation_id)
        history.drop_last_exchange(conversation_id)
    earlier = history.messages(cid) if conversation_id else []
    if conversation_id is None:
        history.create(cid, identity.owner, question)
    else:
        history.append(cid, question)
    history.remember_turn(cid, identity.owner, question.turn)
    return earlier


def _model(
    config: dict[str, Any], admitted: Admitted | None, fallback: bool
) -> tuple[str, str]:
    """The model a turn asks, and its route: "primary" or "fallback"."""
    model = (admitted.model if admitted else "") or config["MODEL"]
    fallback_model = config["FALLBACK_MODEL"]
    if fallback_model and (
        fallback or (model == fallback_model and model != config["MODEL"])
    ):
        return fallback_model, "fallback"
    return model, "primary"


def _prepare(
    config: dict[str, Any],
    model: str,
    route: str,
    message: str,
    earlier: list[StoredMessage],
    knowledge: Knowledge | None,
    page_url: str | None,
    turn_id: str,
) -> tuple[ChatRequest, list[dict[str, Any]] | None]:
    """The request as the model will see it, and the sources it may cite."""
    request = ChatRequest(
        model=model,
        system=config["SYSTEM_PROMPT"],
        messages=(
            *context(earlier, config["HISTORY_MAX_CHARS"]),
            Message("user", message),
        ),
        max_output_tokens=config["MAX_OUTPUT_TOKENS"],
        temperature=config["TEMPERATURE"],
        reasoning_effort=config["REASONING_EFFORT"] or None,
        route=route,
    )
    if knowledge is None:
        return request, None
    # Before the cache lookup: the key then covers the sources' text.
    request, found = knowledge.consult(
        request, page_url=page_url, earlier=earlier, turn_id=turn_id
    )
    return request, [source.as_json() for source in found.sources]


def _cache_key(
    config: dict[str, Any],
    conversation_id: str | None,
    message: str,
    request: ChatRequest,
) -> str | None:
    """The answer cache's key for a new conversation's first turn, else None."""
    if config["CACHE_TTL"] and conversation_id is None and cacheable(message):
        return cache_key(request, config["PROVIDER"])
    return None
