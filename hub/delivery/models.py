"""Destinations (Meta pixels) and the log of every request sent to them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, utcnow

DEFAULT_API_VERSION = "v26.0"


class Destination(Base):
    __tablename__ = "destinations"
    __table_args__ = (CheckConstraint("status IN ('active', 'paused')", name="status"),)

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(120), unique=True)
    pixel_id: Mapped[str] = mapped_column(String(32))
    access_token_encrypted: Mapped[str | None] = mapped_column(Text)
    app_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    api_version: Mapped[str] = mapped_column(String(16), default=DEFAULT_API_VERSION)
    test_event_code: Mapped[str | None] = mapped_column(String(64))
    allow_test_events_in_production: Mapped[bool] = mapped_column(Boolean, default=False)
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="active")
    paused_reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime | None]
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class DeliveryAttempt(Base):
    """One request to the Graph API: what was sent (counts, never tokens) and what Meta answered."""

    __tablename__ = "delivery_attempts"

    id: Mapped[intpk]
    destination_id: Mapped[int] = mapped_column(ForeignKey("destinations.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    duration_ms: Mapped[int | None]
    event_count: Mapped[int]
    events_received: Mapped[int | None]
    http_status: Mapped[int | None]
    outcome: Mapped[str] = mapped_column(String(16))  # sent | transient | invalid | auth | permanent | unknown
    error_code: Mapped[int | None]
    error_subcode: Mapped[int | None]
    error_message: Mapped[str | None] = mapped_column(Text)
    fbtrace_id: Mapped[str | None] = mapped_column(String(64))
    response: Mapped[dict[str, Any] | None]
