"""Starting a turn: ownership, context from history, exactly-once keys."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from typing import Protocol

from chatapp.errors import ApiError
from chatapp.errors import NotFound
from chatapp.masking import has_personal_data
from chatapp.settings import Settings
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
        raise NotFound("No such conversation.")


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


@dataclass(frozen=True, slots=True)
class TurnIds:
    """A turn's ids, minted before it starts.

    So the view builds the POST's reply from them before the turn starts,
    and start_turn keeps that very reply under the idempotency key: a retry
    gets it back byte for byte.
    """

    turn_id: str
    conversation_id: str
    continues: bool  # the conversation existed before this turn

    @classmethod
    def mint(cls, conversation_id: str | None) -> TurnIds:
        """New ids: a new turn, in the given conversation or a new one."""
        return cls(new_id(), conversation_id or new_id(), conversation_id is not None)


@dataclass(frozen=True, slots=True)
class Idempotent:
    """A client's idempotency key, and the reply a retry with it gets."""

    key: str
    reply: dict[str, Any]


def start_turn(
    relay: Relay,
    settings: Settings,
    identity: Identity,
    message: str,
    ids: TurnIds,
    admitted: Admitted | None = None,
    *,
    idempotent: Idempotent | None = None,
    fallback: bool = False,
    page_url: str | None = None,
    knowledge: Knowledge | None = None,
    replace_last: bool = False,
) -> dict[str, Any] | None:
    """Start the turn `ids` names; None when it started.

    When `idempotent`'s key already started a turn, nothing starts: the
    reply that turn's POST got comes back instead. The caller has checked
    that `identity` owns the conversation. `admitted` says which model the
    turn asks (the spend governor's soft ceiling picks
    CHATAPP_FALLBACK_MODEL) and whether the site's ceiling refuses it;
    `fallback` asks the fallback model only. Without a fallback model
    configured, both ask the primary. With `replace_last` the
    conversation's last exchange is dropped first (its running turn ended),
    so the model never sees the answer being replaced.
    """
    history = relay.history
    model, route = _model(settings, admitted, fallback)
    refusal = admitted.refusal if admitted else None
    prepared = None
    if refusal is not None:
        # Only a cached first answer serves: keyed as cached, sources and all.
        if ids.continues:
            raise refusal
        prepared = _prepare(
            settings, model, route, message, [], knowledge, page_url, ids
        )
        key = _cache_key(settings, ids, message, prepared[0])
        if key is None or history.cached_answer(key) is None:
            raise refusal
    earlier = _claim(history, settings, identity, idempotent)
    if earlier is not None:
        return earlier
    if replace_last and ids.continues:
        settle(relay, ids.conversation_id)
        history.drop_last_exchange(ids.conversation_id)
    earlier_messages, now = _ask(history, identity, ids, message)
    history.remember_turn(ids.conversation_id, identity.owner, ids.turn_id)
    request, sources = prepared or _prepare(
        settings, model, route, message, earlier_messages, knowledge, page_url, ids
    )
    info = TurnInfo(ids.turn_id, identity.owner, ids.conversation_id, now)
    key = _cache_key(settings, ids, message, request)
    cached = history.cached_answer(key) if key is not None else None
    if cached is not None:
        relay.replay(info, cached, model, sources=sources)
    else:
        relay.start(info, request, cache_key=key, sources=sources)
    return None


def _claim(
    history: History,
    settings: Settings,
    identity: Identity,
    idempotent: Idempotent | None,
) -> dict[str, Any] | None:
    """Claim the idempotency key for this turn's reply, for as long as the
    turn is replayable; return the earlier reply when it was claimed."""
    if idempotent is None:
        return None
    ttl = settings.turn_grace
    earlier = history.claim_idempotency(
        idempotency_scope(identity, idempotent.key), json.dumps(idempotent.reply), ttl
    )
    return dict(json.loads(earlier)) if earlier is not None else None


def _model(
    settings: Settings, admitted: Admitted | None, fallback: bool
) -> tuple[str, str]:
    """The model a turn asks, and its route: "primary" or "fallback"."""
    model = (admitted.model if admitted else "") or settings.model
    fallback_model = settings.fallback_model
    if fallback_model and (
        fallback or (model == fallback_model and model != settings.model)
    ):
        return fallback_model, "fallback"
    return model, "primary"


def _ask(
    history: History, identity: Identity, ids: TurnIds, message: str
) -> tuple[list[StoredMessage], float]:
    """Store the question; return the conversation before it, and when."""
    cid = ids.conversation_id
    earlier = history.messages(cid) if ids.continues else []
    now = time.time()
    question = StoredMessage("user", message, now, ids.turn_id)
    if ids.continues:
        history.append(cid, question)
    else:
        history.create(cid, identity.owner, question)
    return earlier, now


def _request(
    settings: Settings,
    model: str,
    messages: tuple[Message, ...],
    *,
    route: str = "primary",
) -> ChatRequest:
    """What the provider is asked: the model, the settings, the messages."""
    return ChatRequest(
        model=model,
        system=settings.system_prompt,
        messages=messages,
        max_output_tokens=settings.max_output_tokens,
        temperature=settings.temperature,
        reasoning_effort=settings.reasoning_effort or None,
        route=route,
    )


def _prepare(
    settings: Settings,
    model: str,
    route: str,
    message: str,
    earlier: list[StoredMessage],
    knowledge: Knowledge | None,
    page_url: str | None,
    ids: TurnIds,
) -> tuple[ChatRequest, list[dict[str, Any]] | None]:
    """The request as the model will see it, and the sources it may cite."""
    asked = (*context(earlier, settings.history_max_chars), Message("user", message))
    request = _request(settings, model, asked, route=route)
    if knowledge is None:
        return request, None
    # Before the cache lookup: the key then covers the sources' text.
    request, found = knowledge.consult(
        request, page_url=page_url, earlier=earlier, turn_id=ids.turn_id
    )
    return request, [source.as_json() for source in found.sources]


def _cache_key(
    settings: Settings, ids: TurnIds, message: str, request: ChatRequest
) -> str | None:
    """The answer cache's key for a new conversation's first turn, else None."""
    if settings.cache_ttl and not ids.continues and cacheable(message):
        return cache_key(request, settings.provider)
    return None
