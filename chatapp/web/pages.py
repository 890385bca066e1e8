"""Blueprint: the chat page at / and the framable one at /embed."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import render_template
from flask import request

from chatapp import i18n
from chatapp.errors import SSOExpired
from chatapp.errors import SSOInvalid
from chatapp.extensions import settings
from chatapp.extensions import state
from chatapp.tokens import WPUser
from chatapp.tokens import new_identity
from chatapp.tokens import verify_wp_sso

bp = Blueprint("pages", __name__)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; "
    "worker-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors {ancestors}"
)


def _page(*, embed: bool, wp_user: WPUser | None = None) -> Response:
    st = state()
    origins = list(st.settings.embed_origins) if embed else []
    token = st.signer.page_token(new_identity(wp_user))
    lang = _language()
    html = render_template(
        "chat.html",
        lang=lang,
        dir=i18n.direction(lang),
        t=i18n.words_of(lang),
        token=token,
        embed=embed,
        embed_origins=origins,
        max_message_chars=st.settings.max_message_chars,
        # WordPress-signed users are never asked to solve a challenge.
        bot_check=st.botcheck is not None and wp_user is None,
    )
    # Every render mints a fresh token: never let a cache share one.
    response = _secured(Response(html, mimetype="text/html"), embed=embed)
    response.vary.add("Accept-Language")
    return response


def _language() -> str:
    """Pick the page's language: ?lang=, then Accept-Language, then English."""
    return i18n.pick(request.args.get("lang"), request.accept_languages.best_match)


def _secured(response: Response, *, embed: bool) -> Response:
    """Send a page's strict CSP, who may frame it, and no caching."""
    origins = list(settings().embed_origins) if embed else []
    response.headers["Content-Security-Policy"] = CSP.format(
        ancestors=" ".join(["'self'", *origins])
    )
    if not embed:
        response.headers["X-Frame-Options"] = "SAMEORIGIN"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/")
def index() -> Response:
    """Serve the standalone chat page."""
    return _page(embed=False)


@bp.get("/embed")
def embed() -> Response:
    """Serve the chat for iframes, signing in a WordPress user by SSO."""
    sso = request.args.get("sso")
    wp_user = None
    if sso:
        try:
            wp_user = verify_wp_sso(sso, settings().wp_shared_secret)
        except SSOExpired:
            wp_user = None  # degrade to an anonymous visitor
        except SSOInvalid:
            lang = _language()
            html = render_template(
                "refused.html",
                lang=lang,
                dir=i18n.direction(lang),
                t=i18n.words_of(lang),
            )
            refusal = Response(html, status=403, mimetype="text/html")
            return _secured(refusal, embed=True)
    return _page(embed=True, wp_user=wp_user)
