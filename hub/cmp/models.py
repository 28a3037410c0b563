"""CMP sources (webhook senders) and the inbox that keeps every delivery before it is processed."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, utcnow

ADAPTERS = ("generic", "didomi", "usercentrics", "ketch")
AUTHENTICATORS = ("hmac", "bearer", "basic")


class CmpSource(Base):
    __tablename__ = "cmp_sources"
    __table_args__ = (
        CheckConstraint("adapter IN ('generic', 'didomi', 'usercentrics', 'ketch')", name="adapter"),
        CheckConstraint("authenticator IN ('hmac', 'bearer', 'basic')", name="authenticator"),
    )

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    adapter: Mapped[str] = mapped_column(String(32))
    authenticator: Mapped[str] = mapped_column(String(16))
    secret_encrypted: Mapped[str | None] = mapped_column(Text)
    # purpose_map, tcf_purpose_map, ip_allow_list, basic_username, ...
    settings: Mapped[dict[str, Any]]
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CmpInboxItem(Base):
    """A raw webhook delivery, stored before processing so nothing a CMP sent is lost."""

    __tablename__ = "cmp_inbox"
    __table_args__ = (CheckConstraint("status IN ('received', 'processed', 'failed', 'duplicate')", name="status"),)

    id: Mapped[intpk]
    source_id: Mapped[int] = mapped_column(ForeignKey("cmp_sources.id"))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    body_sha256: Mapped[str] = mapped_column(String(64))
    event_key: Mapped[str | None] = mapped_column(String(255))
    headers: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="received")
    error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]


# The id makes each index answer "the earliest earlier copy" by itself (hub.cmp.services._inbox_insert_statement).
Index("ix_cmp_inbox_source_body", CmpInboxItem.source_id, CmpInboxItem.body_sha256, CmpInboxItem.id)
Index("ix_cmp_inbox_source_event_key", CmpInboxItem.source_id, CmpInboxItem.event_key, CmpInboxItem.id)
