"""One database session per request and one commit point (STYLE.md: services flush, edges commit)."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, g, jsonify
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from hub.db import is_lock_conflict
from hub.web.errors import busy_retry_response

log = logging.getLogger(__name__)


def get_session() -> Session:
    """The request's session, opened on first use."""
    if "db_session" not in g:
        g.db_session = current_app.extensions["hub.sessionmaker"]()
    return g.db_session


def init_app(app: Flask) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.pop("db_session", None)
        if session is None:
            return response
        try:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        except SQLAlchemyError as error:
            session.rollback()
            if is_lock_conflict(error):
                log.warning("commit refused after a lock conflict; the request's changes were rolled back")
                return busy_retry_response()
            log.exception("commit failed; the request's changes were rolled back")
            failed = jsonify(
                error={
                    "code": "storage_unavailable",
                    "message": "The database did not accept the change; retry.",
                }
            )
            failed.status_code = 503
            return failed
        finally:
            session.close()
        return response

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.rollback()
            session.close()
