"""The visitor's own data: erase it, take it away, say what helped.

Deleting cancels a conversation's running turns and waits for their `done`
(whose answer is stored before it), so that nothing is written back after
the conversation is gone. Knows no Flask.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC
from datetime import datetime
from typing import Any

from chatapp.store.conversations import StoredMessage
from chatapp.turns.relay import Relay

# Cancelled turns close their upstream within a second; wait a little longer.
SETTLE_SECONDS = 5.0
RATINGS = ("up", "down")
MAX_COMMENT_CHARS = 1000
# What a transcript links to, and what in a link's text could format,
# link or stand for another character (an entity such as &lt;).
WEB_URL = re.compile(r"https?://\S+\Z", re.IGNORECASE)
MARKDOWN_INLINE = re.compile(r"[\\`*_\[\]<>~!]|&(?=#?\w+;)")


def settle(relay: Relay, conversation_id: str) -> list[str]:
    """Cancel the conversation's running turns, wait for their end; return all ids."""
    turn_ids = relay.history.turns(conversation_id)
    recent = time.time() - relay.settings.turn_seconds
    deadline = time.monotonic() + SETTLE_SECONDS
    for turn_id in turn_ids:
        info = relay.info(turn_id)
        if info is None or info.created_at < recent:
            continue
        tail = relay.open(turn_id)
        if tail is None:
            continue
        try:
            if not tail.done:
                relay.cancel(turn_id)
            while not (tail.done or tail.lost):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                tail.wait(min(0.5, left))
        finally:
            relay.close(turn_id, tail)
    return turn_ids


def delete_conversation(relay: Relay, owner: str, conversation_id: str) -> None:
    """Erase one conversation of `owner`: running turns first, then every trace."""
    # Remembered while a stream token of the turn may still be fresh, so
    # that its reader hears 404 (deleted), not a lost log's error + done.
    remember = relay.settings.stream_ttl
    for turn_id in settle(relay, conversation_id):
        relay.events.forget(turn_id, remember)
    relay.history.delete(conversation_id, owner)


def delete_everything(relay: Relay, owner: str) -> int:
    """Erase every conversation of `owner`; return how many there were."""
    ids = relay.history.conversations_of(owner)
    for conversation_id in ids:
        if relay.history.owner(conversation_id) == owner:
            delete_conversation(relay, owner, conversation_id)
    return len(ids)


def feedback_value(rating: object, comment: object) -> str:
    """Encode a rating and an optional comment; raise ValueError for anything else."""
    if rating not in RATINGS:
        raise ValueError("rating must be 'up' or 'down'")
    if comment is not None and not isinstance(comment, str):
        raise ValueError("comment must be a string")
    if comment is not None and len(comment) > MAX_COMMENT_CHARS:
        raise ValueError(f"comment is limited to {MAX_COMMENT_CHARS} characters")
    return json.dumps({"rating": rating, "comment": comment or None, "at": time.time()})


def transcript(conversation_id: str, messages: list[StoredMessage]) -> str:
    """Write a conversation as a Markdown transcript the visitor can keep.

    An answer drawn from the site's content is followed by its sources, by
    the numbers its `[n]` citations use, as the page lists them under it.
    """
    lines = [f"# Conversation {conversation_id}", ""]
    for message in messages:
        who = {"user": "You", "assistant": "Assistant"}.get(message.role, message.role)
        when = datetime.fromtimestamp(message.created_at, UTC)
        lines += [f"## {who} — {when:%Y-%m-%d %H:%M} UTC", "", message.content, ""]
        listed = [line for s in message.sources if (line := source_line(s))]
        if message.role == "assistant" and listed:
            lines += ["Sources:", "", *listed, ""]
    return "\n".join(lines)


def source_line(source: dict[str, Any]) -> str | None:
    """One source as a Markdown list item: `n. [title](url)`; None if malformed.

    Only an http(s) address becomes a link (a file added on the command line
    is named, never linked), and nothing in a title can format or link.
    """
    n, title, url = source.get("n"), source.get("title"), source.get("url")
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    url = url if isinstance(url, str) and WEB_URL.match(url) else None
    title = " ".join(title.split()) if isinstance(title, str) else ""
    label = MARKDOWN_INLINE.sub(r"\\\g<0>", title or url or "")
    if not label:
        return None
    if url is None:
        return f"{n}. {label}"
    # A destination in <…> may hold parentheses, never < or >.
    target = url.replace("<", "%3C").replace(">", "%3E")
    return f"{n}. [{label}](<{target}>)"
