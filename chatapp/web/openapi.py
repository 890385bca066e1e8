"""Blueprint: the OpenAPI 3.1 description of /api, kept as chatapp/web/openapi.json."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from flask import Blueprint
from flask import Response

bp = Blueprint("openapi", __name__, url_prefix="/api")

DOCUMENT = Path(__file__).with_name("openapi.json")


@cache
def _document() -> bytes:
    return DOCUMENT.read_bytes()


@bp.get("/openapi.json")
def openapi() -> Response:
    """Serve the API description, for people, client generators and fuzzers."""
    response = Response(_document(), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
