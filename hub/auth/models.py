"""Admin-UI users and API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, String
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, created_at, intpk

ROLES = ("admin", "editor", "viewer")
API_KEY_SCOPES = ("ingest", "admin")


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint("role IN ('admin', 'editor', 'viewer')", name="role"),)

    id: Mapped[intpk]
    email: Mapped[str] = mapped_column(String(320), unique=True)
    oidc_subject: Mapped[str | None] = mapped_column(String(255), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[created_at]
    last_login_at: Mapped[datetime | None]


class ApiKey(Base):
    """An API key; only a SHA-256 of the secret is stored, the key itself is shown once at creation."""

    __tablename__ = "api_keys"
    __table_args__ = (CheckConstraint("scope IN ('ingest', 'admin')", name="scope"),)

    id: Mapped[intpk]
    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[created_at]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
