"""Events: the outbox the scheduler delivers from."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, intpk, utcnow

EVENT_STATUSES = ("pending", "sent", "blocked", "retrying", "dead")


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (CheckConstraint("status IN ('pending', 'sent', 'blocked', 'retrying', 'dead')", name="status"),)

    id: Mapped[intpk]
    event_id: Mapped[str] = mapped_column(String(255), unique=True)
    source_event: Mapped[str] = mapped_column(String(255), index=True)
    profile_id: Mapped[str | None] = mapped_column(ForeignKey("profiles.id"), index=True)
    occurred_at: Mapped[datetime]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    action_source: Mapped[str | None] = mapped_column(String(32))
    source_url: Mapped[str | None] = mapped_column(Text)
    # Hashed identifiers plus IP, user agent, fbp and fbc as one Fernet token of JSON (IP/UA are personal data).
    user_data_encrypted: Mapped[str | None] = mapped_column(Text)
    region: Mapped[str | None] = mapped_column(String(8))
    gpc: Mapped[bool | None] = mapped_column(Boolean)
    suppressed: Mapped[bool] = mapped_column(Boolean, default=False)
    properties: Mapped[dict[str, Any] | None]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None]
    decided_at: Mapped[datetime | None]
    # Rule, consent record ids, reason code, explanation, LDU, identifiers allowed.
    decision: Mapped[dict[str, Any] | None]
    mapping_id: Mapped[int | None] = mapped_column(ForeignKey("event_mappings.id"))
    mapping_version: Mapped[int | None]
    destination_id: Mapped[int | None] = mapped_column(ForeignKey("destinations.id"))
    last_error: Mapped[dict[str, Any] | None]
    delivered_attempt_id: Mapped[int | None] = mapped_column(ForeignKey("delivery_attempts.id"))
    sent_at: Mapped[datetime | None]
    # Crash safety: a worker leases the events it sends; an expired lease means the outcome is unknown.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None]
    unknown_outcome_resends: Mapped[int] = mapped_column(default=0)
    # Dead letters: the exact CAPI event that was last sent, as a Fernet token of JSON (it holds IP and UA).
    dead_payload_encrypted: Mapped[str | None] = mapped_column(Text)
    context_purged_at: Mapped[datetime | None]


# Counting events by status (metrics, dashboards).
Index("ix_events_status_next_attempt", Event.status, Event.next_attempt_at)
# The scheduler's claim query (`status IN (...) ORDER BY next_attempt_at, id`): only waiting events are in this
# index, so a claim reads the first due rows in order instead of sorting the whole backlog on every batch.
_DUE = Event.status.in_(("pending", "retrying"))
Index("ix_events_due", Event.next_attempt_at, Event.id, postgresql_where=_DUE, sqlite_where=_DUE)
