"""Errors users can act on: JSON with a code, a sentence and the fields at fault (CONTRACT.md, HTTP API)."""

from __future__ import annotations

from collections.abc import Mapping

from flask import Flask, Response, jsonify, render_template, request
from sqlalchemy.exc import OperationalError
from werkzeug.exceptions import HTTPException

from hub.db import is_lock_conflict

# Seconds a client waits before resending after a lock conflict: by then the transaction in the way has ended.
BUSY_RETRY_AFTER_SECONDS = 1


class ApiError(Exception):
    """Raised by API views; rendered as ``{"error": {"code", "message", "fields"}}``."""

    def __init__(self, status: int, code: str, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})


def error_response(status: int, code: str, message: str, fields: Mapping[str, str] | None = None) -> Response:
    body: dict[str, object] = {"code": code, "message": message}
    if fields:
        body["fields"] = dict(fields)
    response = jsonify(error=body)
    response.status_code = status
    return response


def busy_retry_response() -> Response:
    """503 for a deadlock, serialization failure or lock timeout: nothing was stored and the same request,
    sent again, succeeds (event batches are idempotent by event_id)."""
    response = error_response(
        503,
        "busy_retry",
        "The database was busy with a conflicting change and nothing was stored; send the same request again.",
    )
    response.headers["Retry-After"] = str(BUSY_RETRY_AFTER_SECONDS)
    return response


def wants_json() -> bool:
    path = request.path
    return path.startswith(("/api/", "/webhooks/")) or request.accept_mimetypes.best == "application/json"


def init_app(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        return error_response(exc.status, exc.code, exc.message, exc.fields)

    @app.errorhandler(OperationalError)
    def _operational_error(exc: OperationalError) -> Response:
        if is_lock_conflict(exc):
            # A concurrent transaction was in the way (PostgreSQL deadlock victim, lock timeout; SQLite busy):
            # the client's fault never, a server bug never, so neither a 4xx nor a 500.
            app.logger.warning("request refused with busy_retry after a lock conflict: %s", exc.orig)
            return busy_retry_response()
        raise exc  # anything else stays an internal error

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response | tuple[str, int]:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        message = exc.description or exc.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = f"The request body is larger than the {limit} bytes allowed (HUB_MAX_BODY_BYTES)."
        if wants_json():
            return error_response(status, code, message)
        return render_template("error.html", status=status, title=exc.name, message=message), status
