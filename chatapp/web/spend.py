"""Blueprint: the site's spend, for its owner (GET /api/spend)."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from chatapp.errors import NotFound
from chatapp.web import errors
from chatapp.web.limiter import gate
from chatapp.web.owner import require_owner

bp = Blueprint("spend", __name__, url_prefix="/api")
errors.register(bp)


@bp.get("/spend")
def spend() -> Response:
    """Show what the site spent this UTC day and month, against its ceilings."""
    require_owner()
    report = gate().spend_report()
    if report is None:
        raise NotFound("Spend is not counted: CHATAPP_PRICES has no price.")
    response = jsonify(report)
    response.headers["Cache-Control"] = "no-store"
    return response
