"""The dead-letter queue: events that could not be delivered, to inspect, replay or discard.

* **list**: dead events, newest first, filtered by destination, Meta error code, source event, time.
* **inspect**: the exact CAPI event that was sent (stored encrypted in ``dead_payload_encrypted``), Meta's error
  (``last_error``) and Meta's full answer to that request (the ``delivery_attempts`` row's ``response``).
* **replay**: the consent decision is run again first (DESIGN §4.6): if it now blocks, the event becomes
  ``blocked`` with that reason; otherwise it goes back to ``pending``, due now, with a fresh retry count, and the
  scheduler sends it with the same ``event_id``. Its decision and payload are rebuilt at send time.
* **discard**: the event becomes ``blocked`` with ``reason_code = "discarded"``; the explanation names who
  discarded it and why, and the decision it had before is kept under ``previous``. It is then treated like any
  blocked event (never sent; deleted by retention after ``HUB_RETENTION_EVENTS_DAYS``). The stored payload is
  dropped.

Every replay and discard is audited. Services flush only; the caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.audit.services import record_audit
from hub.config import Settings
from hub.delivery.models import DeliveryAttempt
from hub.encryption import DecryptionError, FieldEncryptor
from hub.events.models import Event
from hub.rules.decision import Decision
from hub.rules.services import decide_stored_event

MAX_LIST = 500


class DeadLetterNotFound(LookupError):
    """No dead event has this event_id."""


@dataclass(frozen=True)
class DeadLetterFilter:
    destination_id: int | None = None
    error_code: int | None = None
    source_event: str | None = None
    since: datetime | None = None  # received at or after
    until: datetime | None = None  # received before
    before_id: int | None = None  # keyset pagination: rows with a smaller internal id
    limit: int = 50


def list_dead_letters(session: Session, filters: DeadLetterFilter = DeadLetterFilter()) -> list[Event]:
    query = select(Event).where(Event.status == "dead")
    if filters.destination_id is not None:
        query = query.where(Event.destination_id == filters.destination_id)
    if filters.source_event is not None:
        query = query.where(Event.source_event == filters.source_event)
    if filters.since is not None:
        query = query.where(Event.received_at >= filters.since)
    if filters.until is not None:
        query = query.where(Event.received_at < filters.until)
    if filters.before_id is not None:
        query = query.where(Event.id < filters.before_id)
    limit = max(1, min(filters.limit, MAX_LIST))
    if filters.error_code is None:
        return list(session.scalars(query.order_by(Event.id.desc()).limit(limit)))
    # The code lives in the last_error JSON, read portably in Python; page through until the limit is filled.
    found: list[Event] = []
    cursor = filters.before_id
    while len(found) < limit:
        page_query = query.order_by(Event.id.desc()).limit(MAX_LIST)
        if cursor is not None:
            page_query = page_query.where(Event.id < cursor)
        page = list(session.scalars(page_query))
        found.extend(e for e in page if (e.last_error or {}).get("code") == filters.error_code)
        if len(page) < MAX_LIST:
            break
        cursor = page[-1].id
    return found[:limit]


def dead_letter_summary(event: Event) -> dict[str, Any]:
    error = event.last_error or {}
    return {
        "id": event.id,
        "event_id": event.event_id,
        "event": event.source_event,
        "destination_id": event.destination_id,
        "occurred_at": _iso(event.occurred_at),
        "received_at": _iso(event.received_at),
        "attempts": event.attempts,
        "error": {
            "kind": error.get("kind"),
            "code": error.get("code"),
            "subcode": error.get("subcode"),
            "message": error.get("message"),
        },
    }


def get_dead_letter(session: Session, event_id: str) -> Event:
    event = session.execute(select(Event).where(Event.event_id == event_id)).scalar_one_or_none()
    if event is None or event.status != "dead":
        raise DeadLetterNotFound(event_id)
    return event


def dead_letter_document(session: Session, encryptor: FieldEncryptor, event: Event) -> dict[str, Any]:
    """Everything about one dead letter: the payload as sent, Meta's error and Meta's answer."""
    payload: Any = None
    if event.dead_payload_encrypted is not None:
        try:
            payload = encryptor.decrypt_json(event.dead_payload_encrypted)
        except DecryptionError:
            payload = {"unreadable": "the stored payload cannot be decrypted with HUB_ENCRYPTION_KEY"}
    error = event.last_error or {}
    answer = None
    attempt_id = error.get("attempt_id")
    if isinstance(attempt_id, int):
        attempt = session.get(DeliveryAttempt, attempt_id)
        if attempt is not None:
            answer = {
                "attempt_id": attempt.id,
                "started_at": _iso(attempt.started_at),
                "http_status": attempt.http_status,
                "event_count": attempt.event_count,
                "events_received": attempt.events_received,
                "fbtrace_id": attempt.fbtrace_id,
                "body": attempt.response,
            }
    return {
        **dead_letter_summary(event),
        "decision": event.decision,
        "last_error": event.last_error,
        "payload": payload,
        "meta_answer": answer,
        "unknown_outcome_resends": event.unknown_outcome_resends,
    }


def _audit(session: Session, actor: str, action: str, event: Event, before: Any, after: Any) -> None:
    record_audit(
        session, actor=actor, action=action, object_type="event", object_id=event.event_id, before=before, after=after
    )


def replay_dead_letter(session: Session, event_id: str, *, now: datetime, settings: Settings, actor: str) -> Decision:
    """Decide again; back to ``pending`` (due now) when consent still allows sending, else ``blocked``."""
    event = get_dead_letter(session, event_id)
    before = {"status": event.status, "last_error": event.last_error}
    decision = decide_stored_event(session, event, now=now, settings=settings)
    if decision.sends:
        event.status = "pending"
        event.next_attempt_at = now
        event.attempts = 0
        event.lease_owner = None
        event.lease_expires_at = None
    elif decision.outcome == "wait":  # only possible for an event received moments ago
        event.status = "pending"
    event.dead_payload_encrypted = None
    _audit(
        session,
        actor,
        "dead_letter.replay",
        event,
        before,
        {"status": event.status, "decision": decision.reason_code},
    )
    session.flush()
    return decision


def discard_dead_letter(session: Session, event_id: str, *, reason: str, now: datetime, actor: str) -> Event:
    """Give up on a dead letter for good: ``blocked`` with reason_code ``discarded``."""
    reason = reason.strip()
    if not reason:
        raise ValueError("say why the event is discarded")
    event = get_dead_letter(session, event_id)
    previous = event.decision
    event.status = "blocked"
    event.next_attempt_at = None
    event.dead_payload_encrypted = None
    event.decided_at = now
    event.decision = {
        "outcome": "block",
        "reason_code": "discarded",
        "explanation": f"Discarded from the dead-letter queue by {actor}: {reason[:500]}",
        "previous": previous,
    }
    _audit(session, actor, "dead_letter.discard", event, {"status": "dead"}, {"status": "blocked", "reason": reason})
    session.flush()
    return event


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
