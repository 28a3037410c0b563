"""Writing the audit trail: who changed what, before and after."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry
from hub.db import utcnow

MASK = "***"
# Key fragments that mark a secret; their string values never reach the audit log, whatever a caller passes.
_SECRET_MARKERS = ("token", "secret", "password")


def mask_secrets(value: Any) -> Any:
    """``value`` with the string value of every secret-looking key replaced by ``***`` (nested dicts and lists)."""
    if isinstance(value, Mapping):
        return {
            key: MASK
            if isinstance(item, str) and any(marker in str(key).lower() for marker in _SECRET_MARKERS)
            else mask_secrets(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [mask_secrets(item) for item in value]
    return value


def record_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int | None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> AuditEntry:
    entry = AuditEntry(
        at=utcnow(),
        actor=actor[:320],
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        before=None if before is None else mask_secrets(dict(before)),
        after=None if after is None else mask_secrets(dict(after)),
    )
    session.add(entry)
    return entry
