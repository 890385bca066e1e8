"""chatapp: a self-hosted streaming AI chat service."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask import Response
from flask import request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from chatapp import cli
from chatapp.config import load_config
from chatapp.extensions import init_state
from chatapp.settings import Settings
from chatapp.web import logs
from chatapp.web.cors import init_cors
from chatapp.web.errors import error_response
from chatapp.web.guards import BodyDeadline
from chatapp.web.guards import TrustedPeers
from chatapp.web.guards import body_refusal
from chatapp.web.knowledge import DOCUMENTS_PATH
from chatapp.web.knowledge import MAX_DOCUMENT_BYTES
from chatapp.web.limiter import init_limits
from chatapp.web.readers import EXTENSION as READERS
from chatapp.web.readers import ReaderCaps

log = logging.getLogger("chatapp")

# Parts a multipart body may have; more is 413 (Flask's default is 1,000).
MAX_FORM_PARTS = 64


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the application: settings, extensions, blueprints.

    `test_config` overrides settings by key, as chatapp/config.py names them.
    """
    settings = load_config(overrides=test_config)
    app = Flask(__name__)
    _flask_config(app, settings)
    state = init_state(app, settings)
    state.relay.on_end.append(logs.log_end)  # after the metrics' hook
    # Before the limits: the gate asks this registry how many readers are open.
    app.extensions[READERS] = ReaderCaps(
        per_client=settings.readers_per_client,
        send_timeout=settings.stream_send_timeout,
    )
    init_limits(app)
    init_cors(app)  # after the limiter: its Origin check must run first
    _wrap_wsgi(app, settings)
    if settings.ephemeral_key:
        log.warning(
            "CHATAPP_SECRET_KEY is not set: tokens are signed with an ephemeral "
            "key and stop working when the service restarts"
        )
    _register_blueprints(app)
    _register_hooks(app)
    _register_error_pages(app)
    cli.init_app(app)  # flask --app wsgi knowledge …; re-crawls in a worker
    logs.init_app(app, settings)  # X-Request-ID, JSON access lines
    return app


def _flask_config(app: Flask, settings: Settings) -> None:
    """Fill app.config where Flask and Werkzeug read it themselves."""
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["MAX_FORM_MEMORY_SIZE"] = settings.max_body_bytes
    # Our forms have a handful of fields; each multipart part costs parsing
    # time before any check (RELIABILITY.md, "Hostile input cost").
    app.config["MAX_FORM_PARTS"] = MAX_FORM_PARTS
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json.ensure_ascii = False  # type: ignore[attr-defined]


def _wrap_wsgi(app: Flask, settings: Settings) -> None:
    """Put the proxy fix, the peer check and the body deadline around the app."""
    hops = settings.trusted_proxy_hops
    if hops > 0:
        # Only the last `hops` X-Forwarded-For entries are proxies we trust;
        # anything a client put before them cannot buy a fresh limit.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )
        if settings.trusted_proxies:
            # Forwarding headers count only when a trusted proxy sent them.
            app.wsgi_app = TrustedPeers(  # type: ignore[method-assign]
                app.wsgi_app, settings.trusted_proxies
            )
        else:
            log.warning(
                "CHATAPP_TRUSTED_PROXY_HOPS=%d and no CHATAPP_TRUSTED_PROXIES: any "
                "client that reaches this port directly can choose its address "
                "(and so its rate limits) with X-Forwarded-For",
                hops,
            )
    # Outermost: the body is read under its deadline before anything else.
    app.wsgi_app = BodyDeadline(  # type: ignore[method-assign]
        app.wsgi_app,
        settings.body_read_seconds,
        settings.max_body_bytes,
        larger={DOCUMENTS_PATH: max(MAX_DOCUMENT_BYTES, settings.max_body_bytes)},
    )


def _register_blueprints(app: Flask) -> None:
    from chatapp.web import api
    from chatapp.web import knowledge
    from chatapp.web import openapi
    from chatapp.web import ops
    from chatapp.web import pages
    from chatapp.web import spend
    from chatapp.web import visitor
    from chatapp.web import widget

    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)
    app.register_blueprint(knowledge.bp)  # /api/knowledge/documents
    app.register_blueprint(visitor.bp)  # the visitor's own data
    app.register_blueprint(ops.bp)
    app.register_blueprint(openapi.bp)  # GET /api/openapi.json
    app.register_blueprint(widget.bp)  # GET /widget.js
    app.register_blueprint(spend.bp)  # GET /api/spend, the owner's


def _register_hooks(app: Flask) -> None:
    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault(
            "Referrer-Policy", "strict-origin-when-cross-origin"
        )
        return response

    @app.before_request
    def refuse_bad_body() -> Response | None:
        refusal = body_refusal(request.environ)
        if refusal is None:
            return None
        return error_response(*refusal)


# HTTP errors the API answers in its own words, as SPEC's JSON.
_API_CODES = {
    400: ("invalid_input", "The request is malformed."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "That method is not allowed here."),
    413: ("payload_too_large", "The request body is too large."),
}


def _register_error_pages(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | HTTPException:
        if not request.path.startswith("/api/"):
            return exc
        code, message = _API_CODES.get(exc.code or 500, ("internal", "Server error."))
        return error_response(exc.code or 500, code, message)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response | tuple[str, int]:
        log.exception("unhandled error on %s %s", request.method, request.path)
        if request.path.startswith("/api/"):
            return error_response(500, "internal", "Something went wrong on our side.")
        return "Internal server error", 500
