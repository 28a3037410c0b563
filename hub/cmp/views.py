"""``POST /webhooks/cmp/<source>``: CMP consent webhooks (CONTRACT.md "CMP webhooks").

A delivery is handed to the process's group commit (``hub.cmp.batch``), which processes it with the deliveries
that arrive alongside it in one transaction and answers it once that transaction is committed. What the batch
leaves (anything but the common case, or everything when the batch fails) is processed here, one delivery in
one unit of work on the request's session, with the same answers:

1. look the source up and authenticate (unknown/disabled → 404, wrong address → 403, bad credentials → 401;
   nothing stored);
2. store the raw delivery in ``cmp_inbox`` (the same statement finds an earlier copy) and process it in the
   same transaction, committed once by ``hub.web.database`` before the CMP gets its 2xx.

Either way a CMP is answered 2xx only after the raw body and its effects are durable together. If hub stops
before the commit, nothing of the delivery is kept, but the CMP got no 2xx either and sends it again (every CMP
retries, reference/consent.md §1); storing the inbox row in a transaction of its own first would cost a second
commit per delivery without keeping anything the CMP would not send again.

When processing fails, all of it is rolled back and the raw body is stored again, marked ``failed`` with the
error, and committed on its own before the error answer — it stays for a retry or a fix of the source's mapping.
A body that cannot be processed as sent (malformed JSON, a bad field) is stored ``failed`` directly and answered
400. Rolling back and storing again costs the failure path one more insert; a SAVEPOINT would cost every
delivery two more round trips.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, current_app, g, jsonify, request
from sqlalchemy.orm import Session

from hub.cmp.batch import REQUEST_HEADERS, Answer, admit
from hub.cmp.services import (
    Delivery,
    DeliveryRejected,
    ParsedDelivery,
    SourceConfig,
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
    session: Session, source: SourceConfig, parsed: ParsedDelivery, delivery: Delivery, failure: str
) -> None:
    # The processing work is rolled back with the inbox row written alongside it; the body is stored again,
    # marked failed, and committed on its own so it stays whatever the answer.
    session.rollback()
    store_delivery(session, current_app.extensions["hub.encryptor"], source, parsed, delivery, failure=failure)
    session.commit()


@bp.post("/webhooks/cmp/<source_name>")
def receive(source_name: str) -> Response:
    _release_request_session()
    delivery = Delivery(
        source_name=source_name,
        body=request.get_data(cache=False),
        headers={name: value for name in REQUEST_HEADERS if (value := request.headers.get(name)) is not None},
        remote_addr=request.remote_addr,
        received_at=utcnow(),
    )
    answer = current_app.extensions["hub.cmp_batcher"].submit(delivery) or _one_by_one(delivery)
    _count(answer.source, answer.result)
    if answer.error is not None:
        raise _rejected(answer.error)
    assert answer.outcome is not None
    # Committed already (a batch), or by ``hub.web.database`` before the answer leaves: a failed commit answers
    # 503 and the CMP retries.
    return jsonify(answer.outcome.as_dict())


def _one_by_one(delivery: Delivery) -> Answer:
    encryptor = current_app.extensions["hub.encryptor"]
    settings = current_app.extensions["hub.settings"]
    session = get_session()
    source, refusal = admit(session, encryptor, delivery)
    if refusal is not None:
        return refusal
    assert source is not None
    # Parsed before storing (pure) so the inbox insert also finds an earlier copy by body or CMP event id.
    parsed = parse_delivery(source, delivery.body)
    stored = store_delivery(session, encryptor, source, parsed, delivery)
    if parsed.rejection is not None and stored.duplicate_of is None:
        # Stored as failed with the reason: committed here, because an error answer rolls the request back.
        session.commit()
        return Answer(source.name, "failed", error=parsed.rejection)

    try:
        outcome = process_delivery(session, encryptor, settings, source, parsed, stored, now=delivery.received_at)
        session.flush()
    except DeliveryRejected as error:
        _keep_failed(session, source, parsed, delivery, rejection_text(error))
        return Answer(source.name, "failed", error=error)
    except Exception as error:
        log.exception("CMP webhook %s: processing a delivery failed; its body is kept as failed", source.name)
        _keep_failed(session, source, parsed, delivery, f"internal error: {type(error).__name__}: {error}")
        _count(source.name, "error")
        raise
    return Answer(source.name, outcome.status, outcome=outcome)
