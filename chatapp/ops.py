"""Blueprint: health, readiness and (later) metrics for operators."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from chatapp.errors import StoreError
from chatapp.extensions import state
from chatapp.limits import storage_problem

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process serves."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer 200 when shared storage answers, 503 with the reason otherwise."""
    try:
        state().turns.ping()
    except StoreError as exc:
        return jsonify({"status": "unavailable", "reason": str(exc)}), 503
    problem = storage_problem()
    if problem is not None:
        return jsonify({"status": "unavailable", "reason": problem}), 503
    return jsonify({"status": "ready"}), 200
