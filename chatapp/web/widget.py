"""Blueprint: /widget.js, the one-line script that puts the chat on any website."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import send_from_directory

bp = Blueprint("widget", __name__)

# Short, because the URL never changes; the ETag makes the check after it a
# 304 unless chatapp was upgraded.
MAX_AGE_SECONDS = 600


@bp.get("/widget.js")
def widget() -> Response:
    """Serve the widget script, cacheable and revalidated by ETag."""
    response = send_from_directory(
        str(current_app.static_folder),
        "widget.js",
        mimetype="text/javascript",
        max_age=MAX_AGE_SECONDS,
    )
    # Any site may load it, also one that isolates itself (COEP).
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
