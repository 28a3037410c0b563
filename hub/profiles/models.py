"""Profiles, their identities, the merge journal and the erasure suppression list."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk, strpk, utcnow

IDENTITY_KINDS = ("email", "phone", "external_id", "fbp", "fbc")


class Profile(Base):
    __tablename__ = "profiles"

    id: Mapped[strpk]
    # Traits (names, gender, date of birth, city, state, zip, country) as one Fernet token of JSON: PII.
    traits_encrypted: Mapped[str | None] = mapped_column(Text)
    # ISO 3166-1/-2 region (e.g. "US-CA"); kept in clear because every forwarding decision needs it.
    region: Mapped[str | None] = mapped_column(String(8))
    merged_into_id: Mapped[str | None] = mapped_column(ForeignKey("profiles.id"), index=True)
    created_at: Mapped[created_at]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    erased_at: Mapped[datetime | None]


class Identity(Base):
    """One identifier of a profile, keyed by (kind, SHA-256 of the normalized value)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("kind", "value_hash"),)

    id: Mapped[intpk]
    profile_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"), index=True)
    kind: Mapped[str] = mapped_column(String(40))
    value_hash: Mapped[str] = mapped_column(String(64))
    # The normalized value, encrypted; NULL when only the hash was given or in hashed-only mode.
    value_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[created_at]
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProfileMerge(Base):
    """Journal of every merge: enough to explain it and to undo it."""

    __tablename__ = "profile_merges"

    id: Mapped[intpk]
    winner_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"), index=True)
    loser_id: Mapped[str] = mapped_column(ForeignKey("profiles.id"), index=True)
    link_kind: Mapped[str] = mapped_column(String(40))
    link_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(120))
    # Identity ids moved and the loser's traits before the merge (encrypted inside), for undo.
    details: Mapped[dict[str, Any]]
    created_at: Mapped[created_at]


class SuppressedIdentifier(Base):
    """Hashes of erased people's identifiers: later events carrying them never re-create a profile."""

    __tablename__ = "suppressed_identifiers"
    __table_args__ = (UniqueConstraint("kind", "value_hash"),)

    id: Mapped[intpk]
    kind: Mapped[str] = mapped_column(String(40))
    value_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[created_at]


Index("ix_identities_profile_kind", Identity.profile_id, Identity.kind)
