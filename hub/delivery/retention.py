"""Retention: forget what is no longer needed (``hub purge`` and the scheduler's daily job).

* After ``retention_context_days`` (``HUB_RETENTION_CONTEXT_DAYS``, default 30): an event's IP address and user
  agent (inside ``user_data_encrypted`` and inside a dead letter's stored payload) and its ``properties`` are
  removed; ``context_purged_at`` records when. Hashed identifiers, fbp/fbc, the decision and the delivery record
  stay (they explain what was sent). The minimum of 8 days keeps everything Meta's 7-day window could still use.
* After ``retention_events_days`` (``HUB_RETENTION_EVENTS_DAYS``, default 90): ``sent`` and ``blocked`` events
  are deleted (dead letters and events still due are kept until someone replays or discards them), then the
  delivery log rows older than that which no remaining event points to.

Works in batches, committing each, so a large backlog never becomes one long transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.db import session_scope
from hub.delivery.models import DeliveryAttempt
from hub.delivery.options import DeliveryOptions
from hub.encryption import DecryptionError, FieldEncryptor
from hub.events.models import Event

PURGE_BATCH = 1000
CONTEXT_KEYS = ("client_ip_address", "client_user_agent")
DELETABLE_STATUSES = ("sent", "blocked")


@dataclass
class PurgeSummary:
    context_cutoff: datetime
    events_cutoff: datetime
    contexts_purged: int = 0
    events_deleted: int = 0
    attempts_deleted: int = 0
    dry_run: bool = False

    def lines(self) -> list[str]:
        verb = "would remove" if self.dry_run else "removed"
        return [
            f"{verb} IP address, user agent and properties of {self.contexts_purged} event(s) received before "
            f"{self.context_cutoff:%Y-%m-%d %H:%M} UTC",
            f"{verb} {self.events_deleted} sent or blocked event(s) received before "
            f"{self.events_cutoff:%Y-%m-%d %H:%M} UTC",
            f"{verb} {self.attempts_deleted} delivery log row(s) from before that",
        ]


def _strip_user_data(encryptor: FieldEncryptor, token: str | None) -> str | None:
    if token is None:
        return None
    try:
        data = encryptor.decrypt_json(token)
    except DecryptionError:
        return None  # unreadable with the current keys: nothing can use it, so dropping it loses nothing
    browser = {k: v for k, v in (data.get("browser") or {}).items() if k not in CONTEXT_KEYS}
    hashes = data.get("hashes") or {}
    if not browser and not hashes:
        return None
    return encryptor.encrypt_json({"hashes": hashes, "browser": browser})


def _strip_payload(encryptor: FieldEncryptor, token: str | None) -> str | None:
    if token is None:
        return None
    try:
        payload: dict[str, Any] = encryptor.decrypt_json(token)
    except DecryptionError:
        return None
    user_data = {k: v for k, v in (payload.get("user_data") or {}).items() if k not in CONTEXT_KEYS}
    return encryptor.encrypt_json({**payload, "user_data": user_data})


def purge(
    factory: sessionmaker[Session],
    encryptor: FieldEncryptor,
    options: DeliveryOptions,
    *,
    now: datetime,
    dry_run: bool = False,
) -> PurgeSummary:
    """Apply retention as of ``now``; with ``dry_run`` only count what would go."""
    summary = PurgeSummary(
        context_cutoff=now - timedelta(days=options.retention_context_days),
        events_cutoff=now - timedelta(days=options.retention_events_days),
        dry_run=dry_run,
    )
    context_due = (Event.context_purged_at.is_(None), Event.received_at < summary.context_cutoff)
    events_due = (Event.status.in_(DELETABLE_STATUSES), Event.received_at < summary.events_cutoff)
    if dry_run:
        with session_scope(factory) as session:
            summary.contexts_purged = session.scalar(select(func.count()).where(*context_due)) or 0
            summary.events_deleted = session.scalar(select(func.count()).where(*events_due)) or 0
            summary.attempts_deleted = session.scalar(select(func.count()).where(*_attempts_due(summary))) or 0
        return summary

    last_id = 0
    while True:
        with session_scope(factory) as session:
            batch = list(
                session.scalars(
                    select(Event).where(*context_due, Event.id > last_id).order_by(Event.id).limit(PURGE_BATCH)
                )
            )
            for event in batch:
                event.user_data_encrypted = _strip_user_data(encryptor, event.user_data_encrypted)
                event.dead_payload_encrypted = _strip_payload(encryptor, event.dead_payload_encrypted)
                event.properties = None
                event.context_purged_at = now
        summary.contexts_purged += len(batch)
        if len(batch) < PURGE_BATCH:
            break
        last_id = batch[-1].id

    while True:
        with session_scope(factory) as session:
            ids = list(session.scalars(select(Event.id).where(*events_due).limit(PURGE_BATCH)))
            if ids:
                session.execute(delete(Event).where(Event.id.in_(ids)))
        summary.events_deleted += len(ids)
        if len(ids) < PURGE_BATCH:
            break

    with session_scope(factory) as session:
        result = session.execute(delete(DeliveryAttempt).where(*_attempts_due(summary)))
        summary.attempts_deleted = result.rowcount or 0
    return summary


def _attempts_due(summary: PurgeSummary) -> tuple[Any, ...]:
    referenced = select(Event.delivered_attempt_id).where(Event.delivered_attempt_id.is_not(None))
    return (DeliveryAttempt.started_at < summary.events_cutoff, DeliveryAttempt.id.not_in(referenced))
