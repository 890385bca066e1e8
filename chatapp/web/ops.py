"""Blueprint: health, readiness and metrics for operators."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify
from redis import RedisError

from chatapp.errors import StoreError
from chatapp.extensions import state
from chatapp.metrics import CONTENT_TYPE
from chatapp.web.limiter import gate
from chatapp.web.limiter import storage_problem

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """Answer 200 while the process serves."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Answer 200 when shared storage answers, 503 with the reason otherwise.

    A draining worker (SIGTERM) is not ready: it refuses new turns, so a load
    balancer should stop sending it any.
    """
    if state().relay.draining:
        return jsonify({"status": "unavailable", "reason": "draining"}), 503
    try:
        state().events.ping()
    except StoreError as exc:
        return jsonify({"status": "unavailable", "reason": str(exc)}), 503
    problem = storage_problem()
    if problem is not None:
        return jsonify({"status": "unavailable", "reason": problem}), 503
    return jsonify({"status": "ready"}), 200


@bp.get("/metrics")
def metrics() -> Response:
    """Serve Prometheus text, summed across this host's workers."""
    try:
        spend = gate().spend_report()
    except (StoreError, RedisError):
        spend = None  # the rest still answers while Redis is away
    return Response(state().metrics.render(spend), content_type=CONTENT_TYPE)
