"""Event mappings: source event name -> Meta event, versioned."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, utcnow


class EventMapping(Base):
    __tablename__ = "event_mappings"

    id: Mapped[intpk]
    source_event: Mapped[str] = mapped_column(String(255), unique=True)
    event_name: Mapped[str] = mapped_column(String(255))
    action_source: Mapped[str] = mapped_column(String(32))
    custom_data: Mapped[dict[str, Any]]
    destination_id: Mapped[int | None] = mapped_column(ForeignKey("destinations.id"))
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class EventMappingVersion(Base):
    """Every saved version, so an event can say exactly which mapping it was sent with."""

    __tablename__ = "event_mapping_versions"
    __table_args__ = (UniqueConstraint("mapping_id", "version"),)

    id: Mapped[intpk]
    mapping_id: Mapped[int] = mapped_column(ForeignKey("event_mappings.id", ondelete="CASCADE"))
    version: Mapped[int]
    definition: Mapped[dict[str, Any]]
    created_by: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[created_at]
