"""Blueprint: /widget.js, the one-line script that puts the chat on any website."""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request

from chatapp import i18n

bp = Blueprint("widget", __name__)

# Short, because the URL never changes; the ETag makes the check after it a
# 304 unless chatapp was upgraded.
MAX_AGE_SECONDS = 600
# The script's own few words, from the catalogues, for every language: the
# widget picks one on the host page (data-lang, then the page's <html lang>).
WORDS_MARK = "const WORDS = {};"


@functools.cache
def _script(folder: str) -> tuple[str, str]:
    """Return the widget script with its words filled in, and its ETag."""
    source = (Path(folder) / "widget.js").read_text("utf-8")
    words = {
        lang: {
            key.removeprefix("widget."): value
            for key, value in i18n.catalogue(lang).items()
            if key.startswith("widget.")
        }
        for lang in i18n.LANGUAGES
    }
    filled = json.dumps(words, ensure_ascii=False, sort_keys=True)
    text = source.replace(WORDS_MARK, f"const WORDS = {filled};", 1)
    return text, hashlib.sha256(text.encode()).hexdigest()[:32]


@bp.get("/widget.js")
def widget() -> Response:
    """Serve the widget script, cacheable and revalidated by ETag."""
    text, etag = _script(str(current_app.static_folder))
    response = Response(text, mimetype="text/javascript")
    response.set_etag(etag)
    response.cache_control.public = True
    response.cache_control.max_age = MAX_AGE_SECONDS
    # Any site may load it, also one that isolates itself (COEP).
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    response.make_conditional(request)  # 304 when the ETag still matches
    return response
