"""JSON log lines: request ids, one access line per request, turn lifecycle.

Every line is one JSON object (python-json-logger): `time`, `level`,
`logger`, `event`, then that event's fields. Under gunicorn the handler and
formatter come from gunicorn.conf.py's `logconfig_dict`; `configure_logging`
sets up the same for any other server. A line logged while a request is
handled carries its `request_id`. Clients appear only as a keyed hash.
Message text is never logged; with CHATAPP_LOG_PROMPTS=1 the prompt is,
masked by chatapp.masking.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from typing import cast

from flask import Flask
from flask import Response
from flask import current_app
from flask import g
from flask import has_request_context
from flask import request
from pythonjsonlogger.json import JsonFormatter
from werkzeug.wsgi import ClosingIterator

from chatapp.addresses import address_key
from chatapp.masking import mask
from chatapp.settings import Settings
from chatapp.turns.model import TurnEnd

REQUEST_ID_HEADER = "X-Request-ID"
# Read by gunicorn's access line (gunicorn.conf.py) from the WSGI environ.
ENVIRON_CLIENT = "chatapp.client"
# The formatter gunicorn.conf.py configures too; keep the two alike.
JSON_FORMAT: dict[str, Any] = {
    "fmt": "%(levelname)s %(name)s %(message)s",
    "rename_fields": {"levelname": "level", "name": "logger", "message": "event"},
    "timestamp": "time",
}

_WELL_FORMED_ID = re.compile(r"[A-Za-z0-9._-]{8,128}")
# Probes come every few seconds; their lines are debug unless they fail.
_QUIET_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
# Fields a line's own keys would clash with: logging's and our common ones.
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "time",
    "level",
    "logger",
    "event",
}

http_log = logging.getLogger("chatapp.http")
turn_log = logging.getLogger("chatapp.turn")


@dataclass(frozen=True)
class LogSettings:
    """What the log hooks need from the settings."""

    client_key: bytes
    log_prompts: bool


def configure_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr unless logging is set up already (gunicorn)."""
    _install_request_ids()
    _skip_unwritten_record_fields()
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(**JSON_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.getLevelNamesMapping().get(level.upper(), logging.INFO))


def _skip_unwritten_record_fields() -> None:
    """Stop logging from finding what no line of ours writes.

    JSON_FORMAT writes a record's level, logger, message, time and extras,
    never its caller (a walk up the stack per record), thread or process.
    These are the switches the logging HOWTO's "Optimization" section names
    for this; together about 5 us of a record's 27 under gevent.
    """
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False


def init_app(app: Flask, settings: Settings) -> None:
    """Give every response an X-Request-ID and log one line per request."""
    _install_request_ids()
    secret = settings.secret_keys[0].encode()
    app.extensions["chatapp.logs"] = LogSettings(
        client_key=hashlib.sha256(b"chatapp log client\0" + secret).digest(),
        log_prompts=settings.log_prompts,
    )
    # First, so that the id and the clock exist whatever a later hook does.
    app.before_request_funcs.setdefault(None, []).insert(0, _start)
    app.after_request(_finish)


def request_id() -> str:
    """Return the current request's id: the client's if well formed, else new."""
    rid = g.get("request_id")
    if rid is None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        rid = incoming if _WELL_FORMED_ID.fullmatch(incoming) else secrets.token_hex(16)
        g.request_id = rid
    return str(rid)


def client_hash() -> str:
    """Return the current request's client (as the limits see it), hashed."""
    # The limits cache their client (the WordPress user or the address) in g.
    client = g.get("chatapp_client_key") or address_key(request.remote_addr)
    return hash_client(str(client), current_app.extensions["chatapp.logs"].client_key)


def hash_client(client: str, key: bytes) -> str:
    """Hash a client name with a key, so logs can group clients but not name them."""
    return hmac.new(key, client.encode(), hashlib.sha256).hexdigest()[:16]


def log_turn(event: str, /, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log one turn lifecycle line, e.g. log_turn("turn.ended", turn_id=..., ...)."""
    if turn_log.isEnabledFor(level):
        emit(turn_log, level, event, fields)


def turn_logged(level: int = logging.INFO) -> bool:
    """Tell whether a turn line at `level` is written: its fields cost nothing
    when it is not (the client's hash, the masked prompt)."""
    return turn_log.isEnabledFor(level)


def emit(
    logger: logging.Logger, level: int, event: str, fields: dict[str, Any]
) -> None:
    """Log `event` with fields as JSON keys, none of them clashing with logging's."""
    extra = {(f"{k}_" if k in _RESERVED else k): v for k, v in fields.items()}
    if has_request_context() and "request_id" in g:
        # The record factory adds the request's own id; a second is refused.
        extra.pop("request_id", None)
    logger.log(level, event, extra=extra)


def prompt_fields(message: str) -> dict[str, Any]:
    """Return what may be logged of a user message: its length, or it masked."""
    fields: dict[str, Any] = {"prompt_chars": len(message)}
    if current_app.extensions["chatapp.logs"].log_prompts:
        fields["prompt"] = mask(message)
    return fields


def _install_request_ids() -> None:
    """Stamp the current request's id on every record logged while it is served."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "chatapp_request_ids", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if has_request_context() and "request_id" in g:
            record.request_id = g.request_id
        return record

    factory.chatapp_request_ids = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def _start() -> None:
    g.request_started = time.perf_counter()
    request_id()


def _finish(response: Response) -> Response:
    rid = request_id()
    response.headers[REQUEST_ID_HEADER] = rid
    level = logging.INFO
    if request.path in _QUIET_PATHS and response.status_code < 400:
        level = logging.DEBUG
    if not http_log.isEnabledFor(level):
        return response  # nothing to log: spend nothing on it
    client = client_hash()
    request.environ[ENVIRON_CLIENT] = client
    fields: dict[str, Any] = {
        "request_id": rid,
        "method": request.method,
        "path": request.path,
        "status": response.status_code,
        "client": client,
    }
    turn_id = _turn_id(response)
    if turn_id is not None:
        fields["turn_id"] = turn_id
    code = _error_code(response)
    if code is not None:
        fields["error"] = code
    started = g.get("request_started", time.perf_counter())
    fields["headers_ms"] = _ms(time.perf_counter() - started)

    def log_end() -> None:
        # Runs when the server closes the response: a stream's whole life.
        fields["duration_ms"] = _ms(time.perf_counter() - started)
        emit(http_log, level, "http.request", fields)

    if response.direct_passthrough:
        # Werkzeug hands such a body to the server as it is, without the
        # response's close(): close over the body itself.
        body = cast("Iterable[bytes]", response.response)
        response.response = ClosingIterator(body, log_end)
    else:
        response.call_on_close(log_end)
    return response


def _turn_id(response: Response) -> str | None:
    view_args = request.view_args or {}
    if "turn_id" in view_args:
        return str(view_args["turn_id"])
    if request.endpoint == "api.chat" and response.status_code == 201:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return body["id"]
    return None


def _error_code(response: Response) -> str | None:
    if response.status_code < 400 or not response.is_json:
        return None
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _ms(seconds: float | None) -> float | None:
    return round(seconds * 1000, 1) if seconds is not None else None


def log_end(end: TurnEnd) -> None:
    """Write a turn's `turn.ended` line."""
    log_turn(
        "turn.ended",
        turn_id=end.info.id,
        finish_reason=end.finish_reason,
        error=end.error_code,
        input_tokens=end.input_tokens,
        output_tokens=end.output_tokens,
        output_chars=end.output_chars,
        ttft_ms=_ms(end.first_token_seconds),
        max_gap_ms=_ms(end.max_gap_seconds),
        duration_ms=_ms(time.time() - end.info.created_at),
        cached=end.cached,
    )
