"""The rate limits, bound to the app: flask-limiter, keyed by client.

A client is the verified WordPress user when the page token carries one, else
the client address as seen through CHATAPP_TRUSTED_PROXY_HOPS proxies. An
IPv6 address counts by its /56: most ISPs delegate a /56 to one home (a /48
to a business, which so gets 256 limits; a /64 to a phone, so up to 256
phones of one carrier may share one). /64 would give a /56 holder 256 limits
and a /48 holder 65,536. Visitor ids are free to mint, so they never carry
limits alone. The key function reads the page token only from the
X-Chat-Token header: it never parses a body.

With Redis the limits live in flask-limiter's moving windows there
(`LIMITS:LIMITER/chatapp/<client>/...`), on the worker's one Redis client
(limits_storage.py), whether that is one server, Sentinel's primary or a
Redis Cluster: each window is one key, so one slot.

The limits' words (client, limit, hit, count, window, retry_after, ...) are
those of turns/holds.py's docstring.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from collections.abc import Iterator
from typing import TYPE_CHECKING

import redis
import requests
from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import request
from flask_limiter import Limiter
from flask_limiter import RateLimitExceeded
from flask_limiter import RouteLimit

from chatapp.addresses import address_key
from chatapp.errors import OverCapacity
from chatapp.errors import RateLimited
from chatapp.errors import TokenInvalid
from chatapp.extensions import settings
from chatapp.tokens import REFRESH_GRACE_SECONDS
from chatapp.tokens import Identity
from chatapp.turns.admit import Admission
from chatapp.turns.admit import Gate
from chatapp.turns.spend import Alert
from chatapp.upstream.webhook import Webhook
from chatapp.web import limits_storage
from chatapp.web import moving_window
from chatapp.web.errors import refused
from chatapp.web.readers import EXTENSION as READERS
from chatapp.web.readers import ReaderCaps

if TYPE_CHECKING:
    from flask_limiter._limits import RuntimeLimit

EXTENSION = "chatapp.limits"
spend_log = logging.getLogger("chatapp.spend")
TOKEN_REFRESH_LIMITS = "30/minute"
# The owner's API, per client: a site's worth of pushes in a few minutes, and
# far too few tries to guess a credential.
OWNER_API_LIMITS = "120/minute"
# A draining worker refuses new turns; another worker answers in this long.
DRAIN_RETRY_AFTER = 5


def client_key() -> str:
    """Name the client a request's limits count against; never raises."""
    cached = g.get("chatapp_client_key")
    if cached is None:
        cached = client_for(_header_identity())
    return str(cached)


def client_for(identity: Identity | None) -> str:
    """Name the client behind an identity read from this request."""
    if identity is not None and identity.wp_user is not None:
        key = identity.owner
    else:
        key = address_key(request.remote_addr)
    g.chatapp_client_key = key
    return key


def _header_identity() -> Identity | None:
    """Read the page token from its header only: a body is never parsed here."""
    token = request.headers.get("X-Chat-Token")
    if not token:
        return None
    signer = current_app.extensions["chatapp"].signer
    try:
        # An old but genuine token still names its WordPress user truly.
        identity: Identity = signer.read_page_token(token, grace=REFRESH_GRACE_SECONDS)
    except TokenInvalid:  # TokenExpired too
        return None
    return identity


def _chat_rate_limits() -> str:
    return settings().rate_limits


# The moving window keeps each client's recent hits and counts those younger
# than the window: no burst of twice the limit across a window edge (as
# fixed windows allow) and no approximation (as the sliding counter makes),
# so Retry-After is exact: the moment the oldest counted hit leaves. Its cost,
# one timestamp per allowed hit (at most the limit's amount), is small for
# limits sized in messages. Our variant of it (moving_window.py) also counts
# what each hit left, in the same call, for the RateLimit header fields.
# Bound to the app in init_limits().
limiter = Limiter(
    key_func=client_key,
    strategy=moving_window.NAME,
    key_prefix="chatapp",
    # Our own handler writes the headers of a refusal; flask-limiter's would
    # scan the window again on every answer.
    headers_enabled=False,
    in_memory_fallback_enabled=True,
    swallow_errors=True,
)

token_refresh_limit = limiter.limit(TOKEN_REFRESH_LIMITS)
owner_api_limit = limiter.limit(OWNER_API_LIMITS, scope="owner")
# Endpoints that declare a limit of their own (the decorators above).
_LIMITED_BLUEPRINTS = ("knowledge",)


@limiter.request_filter
def _declares_no_limit() -> bool:
    # flask-limiter would otherwise look up limits for every request (event
    # streams, pages, health checks) before its view runs, for nothing: only
    # the token refresh and admit_turn's own call hit a limit.
    return (
        not g.get("chatapp_hitting")  # first: the chat POST's hit asks again
        and request.endpoint != "api.refresh_token"
        and request.blueprint not in _LIMITED_BLUEPRINTS
    )


class _ParsedOnce(RouteLimit):
    """A route limit read from the settings, parsed once per distinct string.

    flask-limiter parses a dynamic limit's string into new limit objects on
    every call (twice per chat POST); they depend on the string alone, so the
    ones it built for a string serve every later request with that string.
    """

    def __iter__(self) -> Iterator[RuntimeLimit]:
        provider = self.limit_provider
        text = provider() if callable(provider) else provider
        parsed: dict[str, tuple[RuntimeLimit, ...]]
        parsed = self.__dict__.setdefault("_chatapp_parsed", {})
        limits = parsed.get(text)
        if limits is None:
            limits = tuple(super().__iter__())  # raises ValueError, uncached
            if len(parsed) >= _PARSED_STRINGS:
                parsed.clear()
            parsed[text] = limits
        return iter(limits)


# Distinct limit strings kept parsed: one per app (tests build many).
_PARSED_STRINGS = 16


# override_defaults: there are no default or blueprint limits to combine
# with, and saying so spares flask-limiter looking for the blueprint's on
# every hit.
@_ParsedOnce(_chat_rate_limits, limiter=limiter, override_defaults=True)
def _hit_chat_limits() -> None:
    """Hit the client's rate limits with a turn; raise when over one."""


def gate() -> Gate:
    """Return the current app's gate."""
    value: Gate = current_app.extensions[EXTENSION]
    return value


def admit_turn(
    identity: Identity, message: str = "", conversation_id: str | None = None
) -> Admission:
    """Check a valid chat POST against every limit, in SPEC's order."""
    if current_app.extensions["chatapp"].relay.draining:
        raise OverCapacity(
            "The server is restarting; try again in a few seconds.",
            retry_after=DRAIN_RETRY_AFTER,
        )
    client = client_for(identity)
    g.chatapp_hitting = True
    _hit_chat_limits()
    limits = settings()
    # The site's spend holds the turn's worst case: its whole input at most.
    # Site knowledge adds its sources and their instructions, at most
    # KNOWLEDGE_MAX_CHARS plus the wording around them.
    history = limits.history_max_chars if conversation_id else 0
    sources = 2 * limits.knowledge_max_chars if limits.knowledge else 0
    input_chars = len(limits.system_prompt) + len(message) + history + sources
    return Admission(gate(), gate().admit(client, input_chars))


def rate_limit_headers() -> dict[str, str]:
    """RateLimit-Policy and RateLimit for the tightest limit this request hit."""
    tightest = moving_window.tightest()
    return moving_window.headers(tightest) if tightest is not None else {}


def storage_problem() -> str | None:
    """Say why the limits' shared storage does not answer, if it does not."""
    return gate().storage_problem()


def _rate_limited(exc: RateLimitExceeded) -> Response:
    headers: dict[str, str] = {}
    retry_after = 60
    current = limiter.current_limit
    if current is not None:
        headers["X-RateLimit-Limit"] = str(current.limit.amount)
        headers["X-RateLimit-Remaining"] = "0"
        try:
            reset = current.window[0]
            retry_after = math.ceil(reset - time.time())
            headers["X-RateLimit-Reset"] = str(math.ceil(reset))
        except redis.RedisError:
            retry_after = current.limit.get_expiry()
    retry_after = max(1, retry_after)
    return refused(
        RateLimited(
            f"Too many requests; try again in {retry_after} seconds.",
            retry_after=retry_after,
            headers=headers,
        )
    )


def _spend_alerts(url: str, http: requests.Session) -> Callable[[Alert], None]:
    """Log each spend alert, and post it to the owner's webhook if there is one."""
    hook = Webhook(url, http) if url else None

    def alert(alert: Alert) -> None:
        payload = alert.payload()
        spend_log.warning("spend.alert", extra=payload)
        if hook is not None:
            hook.send(payload)

    return alert


def init_limits(app: Flask) -> Gate:
    """Bind the limiter and this worker's gate to the app."""
    st = app.extensions["chatapp"]
    client = st.redis
    if client is not None:
        # Every kind of Redis the URL may name, on the worker's one client.
        app.config["RATELIMIT_STORAGE_URI"] = f"{limits_storage.SCHEME}://"
        app.config["RATELIMIT_STORAGE_OPTIONS"] = {"client": client}
    else:
        app.config["RATELIMIT_STORAGE_URI"] = f"{limits_storage.MEMORY_SCHEME}://"
    caps: ReaderCaps = app.extensions[READERS]
    state_gate = Gate(
        st.settings,
        lambda: st.relay.running,
        client,
        leases=st.coordination,
        readers=lambda: caps.open,
        alert=_spend_alerts(st.settings.alert_webhook, st.http),
    )
    app.extensions[EXTENSION] = state_gate
    st.relay.on_end.append(state_gate.turn_finished)
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    limiter.init_app(app)
    return state_gate
