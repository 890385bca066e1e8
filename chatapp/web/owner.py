"""The site owner's credentials for the owner's API (knowledge, spend).

Two kinds are accepted, as SPEC says: `Authorization: Bearer <token>` with
`CHATAPP_ADMIN_TOKEN` (compared in constant time), or a short-lived HS256 JWT
from the WordPress plugin, signed with `CHATAPP_WP_SHARED_SECRET` for one
audience per purpose. No credentials is 401, wrong ones 403, and neither
answer hints at which kind was wrong.
"""

from __future__ import annotations

import hmac
import time

import jwt
from flask import request

from chatapp.errors import ApiError
from chatapp.errors import Forbidden
from chatapp.errors import Unauthorized
from chatapp.extensions import settings

# The WordPress plugin's pushes carry this audience; a visitor's SSO token
# (audience `chatapp`) can never act as the owner.
KNOWLEDGE_AUDIENCE = "chatapp-knowledge"
OWNER_JWT_MAX_LIFETIME = 300
OWNER_JWT_LEEWAY = 30


def _unauthorized() -> ApiError:
    return Unauthorized(
        "This needs the owner's credentials.",
        headers={"WWW-Authenticate": 'Bearer realm="chatapp"'},
    )


def _forbidden() -> ApiError:
    return Forbidden("These credentials are not accepted here.")


def require_owner(*, wp_audience: str | None = None) -> None:
    """Raise 401 or 403 unless the request carries the owner's credentials.

    `wp_audience` names the JWT audience the WordPress plugin may use for this
    route; None accepts only `CHATAPP_ADMIN_TOKEN`.
    """
    owner = settings()
    admin = owner.admin_token
    wp_secret = owner.wp_shared_secret if wp_audience else ""
    header = request.headers.get("Authorization", "")
    scheme, _, credential = header.partition(" ")
    credential = credential.strip()
    if not header or scheme.lower() != "bearer" or not credential:
        raise _unauthorized()
    if not admin and not wp_secret:
        # The owner's API is off: no credential can be right.
        raise _forbidden()
    if admin and hmac.compare_digest(credential.encode(), admin.encode()):
        return
    if (
        wp_secret
        and wp_audience
        and _valid_owner_jwt(credential, wp_secret, wp_audience)
    ):
        return
    raise _forbidden()


def _valid_owner_jwt(token: str, secret: str, audience: str) -> bool:
    if len(token) > 4096 or token.count(".") != 2:
        return False
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=audience,
            leeway=OWNER_JWT_LEEWAY,
            options={"require": ["iat", "exp", "aud"]},
        )
    except jwt.InvalidTokenError:
        return False
    iat, exp = claims.get("iat"), claims.get("exp")
    if not isinstance(iat, int | float) or not isinstance(exp, int | float):
        return False
    if exp - iat > OWNER_JWT_MAX_LIFETIME or iat > time.time() + OWNER_JWT_LEEWAY:
        return False
    return True
