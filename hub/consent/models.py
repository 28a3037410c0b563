"""The append-only consent ledger, its projection and the purpose catalogue."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, utcnow


class Purpose(Base):
    __tablename__ = "purposes"
    __table_args__ = (CheckConstraint("kind IN ('consent', 'opt_out_right')", name="kind"),)

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(String(500), default="")
    builtin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]


class ConsentRecord(Base):
    """One decision for one purpose of one person. Never updated; corrections are new rows."""

    __tablename__ = "consent_records"
    __table_args__ = (
        CheckConstraint("status IN ('granted', 'denied')", name="status"),
        UniqueConstraint("source", "source_event_id", "purpose", "profile_id"),
    )

    id: Mapped[intpk]
    profile_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"))
    purpose: Mapped[str] = mapped_column(ForeignKey("purposes.name"))
    status: Mapped[str] = mapped_column(String(16))
    collected_at: Mapped[datetime]  # the CMP's own timestamp: the ordering key
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    source: Mapped[str] = mapped_column(String(120))
    source_event_id: Mapped[str] = mapped_column(String(255))
    legal_basis: Mapped[str | None] = mapped_column(String(40))
    regulation: Mapped[str | None] = mapped_column(String(40))
    region: Mapped[str | None] = mapped_column(String(8))
    notice_version: Mapped[str | None] = mapped_column(String(120))
    expires_at: Mapped[datetime | None]
    # Evidence: raw payload hash, inbox id, TC/GPP/USP strings, GPC flag. No raw identifiers.
    proof: Mapped[dict[str, Any]]
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("consent_records.id"))


Index(
    "ix_consent_records_profile_purpose_time",
    ConsentRecord.profile_id,
    ConsentRecord.purpose,
    ConsentRecord.collected_at,
)


class ConsentState(Base):
    """Projection of the ledger: the current effective decision per (profile, purpose). Rebuildable."""

    __tablename__ = "consent_state"
    __table_args__ = (CheckConstraint("status IN ('granted', 'denied')", name="status"),)

    profile_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"), primary_key=True)
    purpose: Mapped[str] = mapped_column(ForeignKey("purposes.name"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    collected_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    record_id: Mapped[int] = mapped_column(ForeignKey("consent_records.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
