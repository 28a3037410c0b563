"""Users and API keys."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.auth.models import API_KEY_SCOPES, ROLES, ApiKey, User
from hub.db import utcnow

KEY_PREFIX = "hub_"
LOCAL_ADMIN_EMAIL = "admin@localhost"


@dataclass(frozen=True)
class NewApiKey:
    record: ApiKey
    secret: str  # shown once; only its hash is stored


def hash_api_key(secret: str) -> str:
    # API keys are 256-bit random values, so a fast unsalted hash is enough (no dictionary to attack).
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def create_api_key(session: Session, name: str, scope: str = "ingest") -> NewApiKey:
    if scope not in API_KEY_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(API_KEY_SCOPES)}")
    if not name.strip():
        raise ValueError("an API key needs a name")
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(name=name.strip(), prefix=secret[:12], key_hash=hash_api_key(secret), scope=scope)
    session.add(record)
    session.flush()
    return NewApiKey(record=record, secret=secret)


def find_api_key(session: Session, secret: str) -> ApiKey | None:
    key = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_api_key(secret)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def add_user(session: Session, email: str, role: str) -> User:
    """Pre-authorise a user (or change the role of an existing one)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    email = email.strip().lower()
    if "@" not in email:
        raise ValueError(f"{email!r} is not an email address")
    user = session.scalar(select(User).where(User.email == email))
    if user is None:
        user = User(email=email, role=role)
        session.add(user)
    else:
        user.role = role
        user.disabled = False
    session.flush()
    return user


def local_admin(session: Session) -> User:
    """The admin the one-time login link signs in as (embedded default only)."""
    user = session.scalar(select(User).where(User.email == LOCAL_ADMIN_EMAIL))
    if user is None:
        user = add_user(session, LOCAL_ADMIN_EMAIL, "admin")
    user.last_login_at = utcnow()
    return user
