"""``POST /webhooks/cmp/<source>``: CMP consent webhooks (CONTRACT.md "CMP webhooks").

One unit of work on the request's session, so nothing a CMP sent is lost and nothing unauthenticated is kept:

1. look the source up and authenticate (unknown/disabled → 404, wrong address → 403, bad credentials → 401;
   nothing stored);
2. store the raw delivery in ``cmp_inbox`` (the same statement finds an earlier copy) and process it in the
   same transaction, committed once by ``hub.web.database`` before the CMP gets its 2xx.

A CMP is answered 2xx only after the raw body and its effects are durable together. If hub stops before the
commit, nothing of the delivery is kept, but the CMP got no 2xx either and sends it again (every CMP retries,
reference/consent.md §1); storing the inbox row in a transaction of its own first would cost a second commit
per delivery without keeping anything the CMP would not send again.

When processing fails, all of it is rolled back and the raw body is stored again, marked ``failed`` with the
error, and committed on its own before the error answer — it stays for a retry or a fix of the source's mapping.
A body that cannot be processed as sent (malformed JSON, a bad field) is stored ``failed`` directly and answered
400. Rolling back and storing again costs the failure path one more insert; a SAVEPOINT would cost every
delivery two more round trips.
"""

from __future__ import annotations

import logging
from datetime import datetime

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session

from hub.cmp.services import (
    DeliveryRejected,
    ParsedDelivery,
    SourceConfig,
    WebhookAuthError,
    authenticate,
    load_source,
    parse_delivery,
    process_delivery,
    rejection_text,
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
    # Something earlier in the request (a cookie's user lookup) may have opened the request session. The
    # delivery's unit of work starts clean, so that rolling it back on a failure undoes nothing else.
    session: Session | None = g.pop("db_session", None)
    if session is not None:
        session.rollback()
        session.close()


def _rejected(error: DeliveryRejected) -> ApiError:
    return ApiError(error.status, error.code, error.message, error.fields)


def _keep_failed(
    session: Session, source: SourceConfig, parsed: ParsedDelivery, body: bytes, failure: str, received_at: datetime
) -> None:
    # The processing work is rolled back with the inbox row written alongside it; the body is stored again,
    # marked failed, and committed on its own so it stays whatever the answer.
    session.rollback()
    store_delivery(
        session,
        current_app.extensions["hub.encryptor"],
        source,
        parsed,
        body=body,
        headers=request.headers,
        remote_addr=request.remote_addr,
        now=received_at,
        failure=failure,
    )
    session.commit()


@bp.post("/webhooks/cmp/<source_name>")
def receive(source_name: str) -> Response:
    encryptor = current_app.extensions["hub.encryptor"]
    settings = current_app.extensions["hub.settings"]
    _release_request_session()
    body = request.get_data(cache=False)
    received_at = utcnow()

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
    if parsed.rejection is not None and stored.duplicate_of is None:
        # Stored as failed with the reason: committed here, because an error answer rolls the request back.
        session.commit()
        _count(source.name, "failed")
        raise _rejected(parsed.rejection)

    try:
        outcome = process_delivery(session, encryptor, settings, source, parsed, stored, now=received_at)
        session.flush()
    except DeliveryRejected as error:
        _keep_failed(session, source, parsed, body, rejection_text(error), received_at)
        _count(source.name, "failed")
        raise _rejected(error) from None
    except Exception as error:
        log.exception("CMP webhook %s: processing a delivery failed; its body is kept as failed", source.name)
        _keep_failed(session, source, parsed, body, f"internal error: {type(error).__name__}: {error}", received_at)
        _count(source.name, "error")
        raise
    # Committed by ``hub.web.database`` before the answer leaves: a failed commit answers 503 and the CMP retries.
    _count(source.name, outcome.status)
    return jsonify(outcome.as_dict())
