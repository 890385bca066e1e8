"""Signed page and stream tokens, and WordPress SSO verification.

Each purpose has its own salt and max-age, so a token minted for one purpose
never verifies for another. Keys rotate by a list: the first signs, all verify.
This module signs and verifies; it never reads the request.

A page token also carries when its identity was first issued (``o``), which
renewals keep: an identity lives at most VISITOR_MAX_AGE (a visitor) or
WP_MAX_AGE (a WordPress user, renewed only by a fresh SSO) however often its
token is renewed, so a leaked token is not a permanent identity.

A visitor who passed the bot check carries a stamp (``h``): a keyed hash of
the client key (the address, as the limits see it) that solved it, and when.
It vouches for that client only, and only for HUMAN_SECONDS from the solve,
renewals included: a token that moves to another address, or outlives that,
is asked for a new solution (docs/api.md, "Bot check").
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any

import jwt
from itsdangerous import BadData
from itsdangerous import SignatureExpired
from itsdangerous import Signer
from itsdangerous import TimestampSigner
from itsdangerous import URLSafeTimedSerializer

# Raised here; they live in chatapp/errors.py's one tree.
from chatapp.errors import SSOExpired as SSOExpired
from chatapp.errors import SSOInvalid as SSOInvalid
from chatapp.errors import TokenExpired as TokenExpired
from chatapp.errors import TokenInvalid as TokenInvalid
from chatapp.text import scrub

PAGE_SALT = "chatapp.page-token.v1"
STREAM_SALT = "chatapp.stream-token.v1"
REFRESH_GRACE_SECONDS = 7 * 24 * 3600
SSO_AUDIENCE = "chatapp"
SSO_MAX_LIFETIME = 600
SSO_LEEWAY = 30
# Absolute lifetimes of an identity, across all renewals of its page token.
VISITOR_MAX_AGE = 30 * 24 * 3600
WP_MAX_AGE = 8 * 3600
# How long one solved bot check vouches for its client, renewals included.
HUMAN_SECONDS = 3600
_HUMAN_PURPOSE = b"chatapp.human.v1"


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a page token speaks for: a random visitor, maybe a WordPress user.

    `human` is the bot check's stamp, when the visitor passed it (tokens
    minted before stamps existed have none); TokenSigner.is_human reads it.
    """

    visitor: str
    wp_user: str | None = None
    wp_site: str | None = None
    wp_name: str | None = None
    # When this identity was first issued (epoch seconds); None: not yet.
    issued: float | None = field(default=None, compare=False)
    human: Human | None = None  # passed the bot check: who, when

    @property
    def owner(self) -> str:
        """Key that owns conversations and turns."""
        if self.wp_user is not None:
            # Escaped, so no site or user id can forge another's owner (or,
            # joined with "|", another's idempotency scope).
            return f"wp:{_escape(self.wp_site or '')}:{_escape(self.wp_user)}"
        return f"v:{self.visitor}"

    @property
    def max_age(self) -> int:
        """Seconds this identity may live from `issued`, renewals included."""
        return WP_MAX_AGE if self.wp_user is not None else VISITOR_MAX_AGE


@dataclass(frozen=True, slots=True)
class Human:
    """The bot check's stamp: which client solved it, and when."""

    client: str  # a keyed hash of the client key that solved it
    at: int  # when it was solved (epoch seconds)


def _escape(part: str) -> str:
    return part.replace("%", "%25").replace(":", "%3A").replace("|", "%7C")


@dataclass(frozen=True, slots=True)
class WPUser:
    """A verified WordPress user from an SSO token."""

    sub: str
    name: str
    site: str


class _KeyedSigner(TimestampSigner):
    """itsdangerous's timestamp signer, deriving each key once, not per call.

    Deriving a key hashes the salt and the secret; a signer's keys and salt
    never change, so it is done the first time each key is used.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Keyed by the argument as given: None (the signing key) or a key.
        self._derived: dict[str | bytes | None, bytes] = {}

    def derive_key(self, secret_key: str | bytes | None = None) -> bytes:
        derived = self._derived.get(secret_key)
        if derived is None:
            derived = self._derived[secret_key] = super().derive_key(secret_key)
        return derived


class _Serializer(URLSafeTimedSerializer):
    """itsdangerous's serializer, building its one signer once, not per call.

    Its HMAC is itsdangerous's default, SHA-1, named by hashlib's own
    constructor: then `hmac.new` takes OpenSSL's HMAC, not the pure-Python
    one it builds around the wrapper itsdangerous names by default (the same
    signatures, about 8 us less per token signed or checked).
    """

    default_signer = _KeyedSigner

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("signer_kwargs", {"digest_method": hashlib.sha1})
        super().__init__(*args, **kwargs)
        self._signer = super().make_signer(self.salt)

    def make_signer(self, salt: str | bytes | None = None) -> Signer:
        if salt is None or salt == self.salt:
            return self._signer
        return super().make_signer(salt)


def new_identity(wp_user: WPUser | None = None) -> Identity:
    """Mint a fresh visitor, carrying the WordPress user when one is verified."""
    visitor = secrets.token_urlsafe(12)
    if wp_user is None:
        return Identity(visitor)
    return Identity(visitor, wp_user.sub, wp_user.site, wp_user.name)


class TokenSigner:
    """Sign and verify page and stream tokens with rotating keys."""

    def __init__(
        self,
        keys: tuple[str, ...],
        *,
        page_ttl: float,
        stream_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # itsdangerous signs with the last key of the list; SPEC says the first.
        ordered = list(reversed(keys))
        self._page = _Serializer(ordered, salt=PAGE_SALT)
        self._stream = _Serializer(ordered, salt=STREAM_SALT)
        self.page_ttl = page_ttl
        self.stream_ttl = stream_ttl
        self._clock = clock
        # Keys for the human stamp's client hash; the first stamps, all verify.
        self._human_keys = [
            hmac.new(k.encode(), _HUMAN_PURPOSE, hashlib.sha256).digest() for k in keys
        ]

    def _client_hash(self, key: bytes, client: str) -> str:
        return hmac.new(key, client.encode(), hashlib.sha256).hexdigest()[:32]

    def stamp_human(self, identity: Identity, client: str) -> Identity:
        """Mark `identity` as having passed the bot check from `client`, now."""
        stamp = Human(
            self._client_hash(self._human_keys[0], client), int(self._clock())
        )
        return replace(identity, human=stamp)

    def is_human(self, identity: Identity, client: str) -> bool:
        """Tell whether the identity's bot-check stamp vouches for `client` now."""
        stamp = identity.human
        if stamp is None or not 0 <= self._clock() - stamp.at < HUMAN_SECONDS:
            return False
        return any(
            hmac.compare_digest(stamp.client, self._client_hash(key, client))
            for key in self._human_keys
        )

    def page_token(self, identity: Identity) -> str:
        """Mint a page token for this identity, keeping its first issue time."""
        issued = identity.issued if identity.issued is not None else self._clock()
        payload: dict[str, Any] = {"v": identity.visitor, "o": int(issued)}
        if identity.wp_user is not None:
            payload.update(u=identity.wp_user, s=identity.wp_site, n=identity.wp_name)
        if identity.human is not None:
            # A human, as far as the bot check can tell: which client, when.
            payload["h"] = [identity.human.client, identity.human.at]
        return str(self._page.dumps(payload))

    def read_page_token(self, token: str | None, *, grace: int = 0) -> Identity:
        """Verify a page token; `grace` extends its max-age (for refresh)."""
        payload, signed = _loads(self._page, token, self.page_ttl + grace)
        visitor = payload.get("v")
        if not isinstance(visitor, str) or not visitor:
            raise TokenInvalid("page token has no visitor")
        user = payload.get("u")
        # A token minted before `o` existed was first issued when it was signed.
        issued = payload.get("o", signed)
        if not isinstance(issued, int | float):
            raise TokenInvalid("page token has a bad issue time")
        identity = Identity(
            visitor,
            str(user) if user is not None else None,
            payload.get("s"),
            payload.get("n"),
            float(issued),
            human=_human(payload.get("h")),
        )
        if self._clock() - issued > identity.max_age:
            raise TokenExpired("identity past its absolute lifetime")
        return identity

    def stream_token(self, turn_id: str) -> str:
        """Mint the token that opens one turn's event stream."""
        return str(self._stream.dumps({"t": turn_id}))

    def check_stream_token(self, token: str | None, turn_id: str) -> float:
        """Verify that a stream token opens this very turn; return its age."""
        payload, signed = _loads(self._stream, token, self.stream_ttl)
        if payload.get("t") != turn_id:
            raise TokenInvalid("stream token is for another turn")
        return max(0.0, self._clock() - signed)


def _human(value: Any) -> Human | None:
    """Read a token's bot-check stamp; an old (`1`) or malformed one is none."""
    if (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        return Human(value[0], value[1])
    return None


def _loads(
    serializer: URLSafeTimedSerializer, token: str | None, max_age: float
) -> tuple[dict[str, Any], float]:
    """Verify a token; return its payload and when it was signed."""
    if not token or not isinstance(token, str) or len(token) > 2048:
        raise TokenInvalid("no token")
    try:
        # Typed int, but compared as seconds: CHATAPP_TOKEN_TTL=0.5 works.
        payload, signed = serializer.loads(
            token,
            max_age=max_age,  # type: ignore[arg-type]
            return_timestamp=True,
        )
    except SignatureExpired as exc:
        raise TokenExpired("token expired") from exc
    except BadData as exc:
        raise TokenInvalid("bad token") from exc
    if not isinstance(payload, dict):
        raise TokenInvalid("bad token payload")
    return payload, signed.timestamp()


def verify_wp_sso(token: str, secret: str, *, now: float | None = None) -> WPUser:
    """Verify the WordPress plugin's HS256 JWT and return its user."""
    if not secret:
        raise SSOInvalid("WordPress SSO is not configured")
    if not token or len(token) > 4096:
        raise SSOInvalid("empty or oversized SSO token")
    current = time.time() if now is None else now
    try:
        # PyJWT validates against the clock; shift the token's view when `now`
        # is given (tests) by checking time claims ourselves.
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=SSO_AUDIENCE,
            leeway=SSO_LEEWAY,
            options={
                "require": ["sub", "iat", "exp", "aud"],
                "verify_exp": False,
                "verify_iat": False,
                "verify_nbf": False,
            },
        )
    except jwt.InvalidTokenError as exc:
        raise SSOInvalid(f"SSO token refused: {exc}") from exc
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        raise SSOInvalid("iat and exp must be numbers")
    if not (math.isfinite(iat) and math.isfinite(exp)):
        # NaN compares false with everything, so it would pass every rule below.
        raise SSOInvalid("iat and exp must be finite")
    if exp - iat > SSO_MAX_LIFETIME or exp <= iat:
        raise SSOInvalid("SSO token lifetime must be at most 10 minutes")
    if iat > current + SSO_LEEWAY:
        raise SSOInvalid("SSO token issued in the future")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub or len(sub) > 64:
        raise SSOInvalid("sub must be a non-empty string")
    if exp + SSO_LEEWAY < current:
        raise SSOExpired("SSO token expired")
    name = claims.get("name")
    site = claims.get("site")
    return WPUser(
        sub=scrub(sub),
        name=scrub(name[:200]) if isinstance(name, str) else "",
        site=scrub(site[:500]) if isinstance(site, str) else "",
    )
