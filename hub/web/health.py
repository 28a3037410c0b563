"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from hub import migrate
from hub.db import read_only_connection

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> Response | tuple[Response, int]:
    engine = current_app.extensions["hub.engine"]
    try:
        with read_only_connection(engine) as conn:
            conn.execute(text("SELECT 1"))
        at_head = migrate.is_at_head(engine)
    except SQLAlchemyError as exc:
        return jsonify(status="unavailable", database="unreachable", detail=type(exc).__name__), 503
    if not at_head:
        return jsonify(status="unavailable", database="ok", migrations="behind; run `hub db upgrade`"), 503
    return jsonify(status="ready", database="ok", migrations="current")


@bp.get("/metrics")
def metrics() -> Response:
    registry = current_app.extensions["hub.metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
