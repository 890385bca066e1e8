"""Cross-origin pages: CORS for CHATAPP_API_ORIGINS and the Origin check on /api.

A page on an origin listed in CHATAPP_API_ORIGINS may call the API from the
browser: every /api answer to it names its origin exactly, preflights are
answered here, and credentials are never allowed (state travels in tokens).
Any other origin gets no CORS headers, and its state-changing requests are
refused with 403 `origin_not_allowed` -- the CSRF defence for plain HTML forms,
which a browser posts cross-site without asking anyone. Requests that carry no
`Origin` (servers, curl) pass as before.

A small layer of our own rather than flask-cors: the refusal of foreign POSTs
must be a SPEC JSON error before the view runs, and chatapp's own origin (found
behind proxies through ProxyFix) must count as allowed without being listed.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask
from flask import Response
from flask import request

from chatapp.errors import OriginNotAllowed
from chatapp.extensions import settings
from chatapp.web.errors import api_error_response

API_PREFIX = "/api/"
ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Content-Type, X-Chat-Token, Idempotency-Key, Last-Event-ID, X-Altcha"
EXPOSE_HEADERS = "Location, Retry-After, X-Request-ID, RateLimit, RateLimit-Policy"
# Chromium caps a preflight's cache at two hours; ask for one.
MAX_AGE_SECONDS = 3600
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalise_origin(value: str) -> str | None:
    """Spell an origin as scheme://host[:port], lower case, no default port."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def own_origin() -> str | None:
    """Return chatapp's own origin as the browser sees it (ProxyFix applied)."""
    return normalise_origin(f"{request.scheme}://{request.host}")


def listed_origin() -> str | None:
    """Return the request's Origin when CHATAPP_API_ORIGINS lists it."""
    origin = normalise_origin(request.headers.get("Origin", ""))
    if origin is None:
        return None
    listed = {normalise_origin(o) for o in settings().api_origins}
    return origin if origin in listed else None


def origin_allowed() -> bool:
    """Tell whether the request comes from chatapp's own or a listed origin."""
    origin = normalise_origin(request.headers.get("Origin", ""))
    return origin is not None and (
        origin == own_origin() or listed_origin() is not None
    )


def require_page_origin() -> None:
    """Refuse, unless the request names chatapp's own or a listed origin."""
    if not origin_allowed():
        raise OriginNotAllowed()


def _refuse_foreign_origin() -> Response | None:
    if not request.path.startswith(API_PREFIX) or "Origin" not in request.headers:
        return None
    if request.method == "OPTIONS" and listed_origin() is not None:
        return Response(status=204)  # the preflight; after_request adds the rest
    if request.method in SAFE_METHODS or origin_allowed():
        return None
    return api_error_response(OriginNotAllowed())


def _add_cors_headers(response: Response) -> Response:
    if not request.path.startswith(API_PREFIX):
        return response
    if "Vary" in response.headers:
        response.vary.add("Origin")
    else:
        response.headers["Vary"] = "Origin"  # nothing to merge: vary.add's result
    origin = listed_origin()
    if origin is None:
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    if request.method == "OPTIONS":
        response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = str(MAX_AGE_SECONDS)
    return response


def init_cors(app: Flask) -> None:
    """Check Origin before every /api request and answer CORS after it."""
    # First in line, so a foreign POST is refused before any limit counts it.
    app.before_request_funcs.setdefault(None, []).insert(0, _refuse_foreign_origin)
    app.after_request(_add_cors_headers)
