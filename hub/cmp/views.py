"""``POST /webhooks/cmp/<source>``: CMP consent webhooks (CONTRACT.md "CMP webhooks").

Units of work on the request's session, in this order, so nothing a CMP sent is lost and nothing
unauthenticated is kept:

1. look the source up and authenticate (unknown/disabled → 404, wrong address → 403, bad credentials → 401;
   nothing stored);
2. store the raw delivery in ``cmp_inbox`` (the same statement finds an earlier copy) and commit it on its own;
3. process it in a new transaction (committed by ``hub.web.database`` with the inbox row's new status).
   When processing fails, that work is rolled back and the inbox row is marked ``failed`` with the error,
   committed on its own — the raw body stays for a later retry or a fix of the source's mapping.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session

from hub.cmp.services import (
    DeliveryRejected,
    WebhookAuthError,
    authenticate,
    load_source,
    mark_failed,
    parse_delivery,
    process_delivery,
    store_delivery,
)
from hub.db import utcnow
from hub.web.database import get_session
from hub.web.errors import ApiError

log = logging.getLogger(__name__)

bp = Blueprint("cmp_webhooks", __name__)

# Unknown source names come from the URL: one label for all of them keeps the metric's cardinality bounded.
UNKNOWN_SOURCE_LABEL = "_unknown"


def _count(source: str, result: str) -> None:
    current_app.extensions["hub.metrics"].webhooks.labels(source, result).inc()


def _release_request_session() -> None:
    # Something earlier in the request (a cookie's user lookup) may have opened the request session. Its
    # transaction must end before the inbox commits on its own session: on SQLite it would hold the write lock,
    # and under a shared test connection the inbox's savepoint would nest inside it and vanish on rollback.
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()


def _record_failure(session: Session, inbox_id: int, error: str) -> None:
    # The processing work was rolled back; the failure is committed on its own so the raw body stays for a retry.
    mark_failed(session, inbox_id, error, utcnow())
    session.commit()


@bp.post("/webhooks/cmp/<source_name>")
def receive(source_name: str) -> Response:
    encryptor = current_app.extensions["hub.encryptor"]
    settings = current_app.extensions["hub.settings"]
    _release_request_session()
    body = request.get_data(cache=False)
    received_at = utcnow()

    # One session for the request: the inbox row is committed before processing starts (its own transaction),
    # then the processing transaction is committed by ``hub.web.database`` or rolled back here.
    session = get_session()
    source = load_source(session, encryptor, source_name)
    if source is None:
        _count(UNKNOWN_SOURCE_LABEL, "not_found")
        raise ApiError(404, "not_found", f"No enabled CMP source is called {source_name!r}.")
    try:
        authenticate(source, headers=request.headers, body=body, remote_addr=request.remote_addr, now=received_at)
    except WebhookAuthError as error:
        log.warning("CMP webhook for %s refused: %s", source.name, error.reason)
        _count(source.name, "forbidden" if error.status == 403 else "unauthenticated")
        if error.status == 403:
            raise ApiError(403, "forbidden", "This address may not deliver to this source.") from None
        raise ApiError(401, "unauthenticated", "The request's credentials were not accepted.") from None
    # Parsed before storing (pure) so the inbox insert also finds an earlier copy by body or CMP event id.
    parsed = parse_delivery(source, body)
    stored = store_delivery(
        session,
        encryptor,
        source,
        parsed,
        body=body,
        headers=request.headers,
        remote_addr=request.remote_addr,
        now=received_at,
    )
    session.commit()
    inbox_id = stored.inbox_id

    try:
        outcome = process_delivery(session, encryptor, settings, source, parsed, stored, now=utcnow())
        session.flush()
    except DeliveryRejected as error:
        session.rollback()
        details = "; ".join(f"{path}: {problem}" for path, problem in error.fields.items())
        _record_failure(session, inbox_id, f"{error.message}{' (' + details + ')' if details else ''}")
        _count(source.name, "failed")
        raise ApiError(error.status, error.code, error.message, error.fields) from None
    except Exception as error:
        session.rollback()
        log.exception("CMP webhook %s: processing inbox item %s failed", source.name, inbox_id)
        _record_failure(session, inbox_id, f"internal error: {type(error).__name__}: {error}")
        _count(source.name, "error")
        raise
    _count(source.name, outcome.status)
    return jsonify(outcome.as_dict())
