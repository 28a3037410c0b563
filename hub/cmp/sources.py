"""CMP sources: create, update, list and delete the webhook senders, with their secrets encrypted at rest.

The admin UI and ``hub config import`` call these. Reads never return a secret, only ``secret_set``
(DESIGN §3: secrets are encrypted with ``HUB_ENCRYPTION_KEY``; audit and exports mask them).

Settings keys (all optional):

* ``purpose_map``: CMP purpose / vendor / service id -> hub purpose (Didomi purposes and vendors, Usercentrics
  ``dps_id``, Ketch purpose codes; for ``generic`` optional renames).
* ``tcf_purpose_map``: hub purpose -> list of TCF purpose numbers that must all be consented (default
  ``hub.consent.tcf.DEFAULT_TCF_PURPOSE_MAP``).
* ``ip_allow_list``: addresses or CIDR networks the CMP sends from (Didomi: 35.159.1.63).
* ``forwarded_hops``: how many reverse proxies in front of hub append to ``X-Forwarded-For``; 0 (default)
  means the connection's address is the client's and the header is ignored (it is trivially forged).
* ``basic_username``: the user name for the ``basic`` authenticator (the secret is the password).
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.cmp.models import ADAPTERS, AUTHENTICATORS, CmpInboxItem, CmpSource
from hub.consent.models import Purpose
from hub.encryption import FieldEncryptor

__all__ = [
    "SETTINGS_KEYS",
    "SourceError",
    "SourceView",
    "create_source",
    "delete_source",
    "generate_secret",
    "get_source",
    "list_sources",
    "source_secret",
    "update_source",
]

SETTINGS_KEYS = ("purpose_map", "tcf_purpose_map", "ip_allow_list", "forwarded_hops", "basic_username")
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MIN_SECRET = 16
_MAX_SECRET = 512
# TCF v2 PurposesConsent is a 24-bit field (reference/consent.md §2.1).
TCF_PURPOSE_COUNT = 24
_UNSET: Any = object()


class SourceError(ValueError):
    """Invalid source configuration; ``fields`` maps a field path to the problem."""

    def __init__(self, message: str, fields: Mapping[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields)


@dataclass(frozen=True)
class SourceView:
    """A source as reads show it: everything but the secret."""

    id: int
    name: str
    adapter: str
    authenticator: str
    secret_set: bool
    settings: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def webhook_path(self) -> str:
        return f"/webhooks/cmp/{self.name}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "adapter": self.adapter,
            "authenticator": self.authenticator,
            "secret_set": self.secret_set,
            "settings": dict(self.settings),
            "enabled": self.enabled,
            "webhook_path": self.webhook_path,
        }


def _view(source: CmpSource) -> SourceView:
    return SourceView(
        id=source.id,
        name=source.name,
        adapter=source.adapter,
        authenticator=source.authenticator,
        secret_set=bool(source.secret_encrypted),
        settings=dict(source.settings or {}),
        enabled=source.enabled,
        created_at=source.created_at,
        updated_at=source.updated_at,
    )


def generate_secret() -> str:
    """A fresh secret for HMAC signing, a bearer token or a Basic password (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)


# ----------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------


def _check_settings(session: Session, settings: Any, authenticator: str, fields: dict[str, str]) -> dict[str, Any]:
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        fields["settings"] = "must be an object"
        return {}
    clean: dict[str, Any] = {}
    for key, value in settings.items():
        path = f"settings.{key}"
        if key not in SETTINGS_KEYS:
            fields[path] = f"unknown setting (known: {', '.join(SETTINGS_KEYS)})"
        elif key == "purpose_map":
            clean[key] = _check_purpose_map(session, value, path, fields)
        elif key == "tcf_purpose_map":
            clean[key] = _check_tcf_map(session, value, path, fields)
        elif key == "ip_allow_list":
            clean[key] = _check_ip_list(value, path, fields)
        elif key == "forwarded_hops":
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 5:
                fields[path] = "must be a whole number from 0 to 5"
            else:
                clean[key] = value
        elif key == "basic_username":
            if not isinstance(value, str) or not value.strip() or ":" in value or len(value) > 128:
                fields[path] = "must be a non-empty user name without ':' (at most 128 characters)"
            else:
                clean[key] = value.strip()
    if authenticator == "basic" and not fields.get("settings.basic_username") and "basic_username" not in clean:
        fields["settings.basic_username"] = "is required for the basic authenticator"
    return clean


def _known_purposes(session: Session) -> frozenset[str]:
    return frozenset(session.scalars(select(Purpose.name)))


def _check_purpose_map(session: Session, value: Any, path: str, fields: dict[str, str]) -> dict[str, str]:
    if not isinstance(value, Mapping):
        fields[path] = "must map the CMP's ids to hub purposes"
        return {}
    known = _known_purposes(session)
    clean: dict[str, str] = {}
    for cmp_id, purpose in value.items():
        if not isinstance(cmp_id, str) or not cmp_id.strip() or len(cmp_id) > 200:
            fields[path] = "CMP ids must be non-empty strings (at most 200 characters)"
        elif not isinstance(purpose, str) or purpose not in known:
            fields[f"{path}.{cmp_id}"] = f"{purpose!r} is not a hub purpose"
        else:
            clean[cmp_id] = purpose
    return clean


def _check_tcf_map(session: Session, value: Any, path: str, fields: dict[str, str]) -> dict[str, list[int]]:
    if not isinstance(value, Mapping):
        fields[path] = "must map hub purposes to lists of TCF purpose numbers"
        return {}
    known = _known_purposes(session)
    clean: dict[str, list[int]] = {}
    for purpose, numbers in value.items():
        item = f"{path}.{purpose}"
        if purpose not in known:
            fields[item] = "is not a hub purpose"
        elif (
            not isinstance(numbers, list)
            or not numbers
            or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= TCF_PURPOSE_COUNT for n in numbers)
        ):
            fields[item] = f"must be a non-empty list of TCF purpose numbers 1-{TCF_PURPOSE_COUNT}"
        else:
            clean[purpose] = sorted(set(numbers))
    return clean


def _check_ip_list(value: Any, path: str, fields: dict[str, str]) -> list[str]:
    if not isinstance(value, list):
        fields[path] = "must be a list of addresses or CIDR networks"
        return []
    clean: list[str] = []
    for index, entry in enumerate(value):
        try:
            clean.append(str(ipaddress.ip_network(str(entry).strip(), strict=False)))
        except ValueError:
            fields[f"{path}[{index}]"] = f"{entry!r} is not an address or CIDR network"
    return clean


def _check_secret(secret: Any, fields: dict[str, str]) -> None:
    if not isinstance(secret, str) or not _MIN_SECRET <= len(secret) <= _MAX_SECRET:
        fields["secret"] = f"must be {_MIN_SECRET} to {_MAX_SECRET} characters"
    elif secret != secret.strip():
        fields["secret"] = "must not start or end with spaces"  # noqa: S105 (an error message)


# ----------------------------------------------------------------------------------------------------------
# CRUD
# ----------------------------------------------------------------------------------------------------------


def create_source(
    session: Session,
    encryptor: FieldEncryptor,
    *,
    name: str,
    adapter: str,
    authenticator: str,
    secret: str,
    settings: Mapping[str, Any] | None = None,
    enabled: bool = True,
    now: datetime,
) -> SourceView:
    """Add a source. Raises ``SourceError`` naming every field at fault; nothing is written then."""
    fields: dict[str, str] = {}
    clean_name = (name or "").strip()
    if not _NAME.fullmatch(clean_name):
        fields["name"] = "must be 1-64 lower-case letters, digits, '-' or '_' (it becomes the webhook URL path)"
    elif session.scalar(select(CmpSource.id).where(CmpSource.name == clean_name)) is not None:
        fields["name"] = f"a source named {clean_name!r} already exists"
    if adapter not in ADAPTERS:
        fields["adapter"] = f"must be one of {', '.join(ADAPTERS)}"
    if authenticator not in AUTHENTICATORS:
        fields["authenticator"] = f"must be one of {', '.join(AUTHENTICATORS)}"
    _check_secret(secret, fields)
    clean_settings = _check_settings(session, settings, authenticator, fields)
    if not isinstance(enabled, bool):
        fields["enabled"] = "must be true or false"
    if fields:
        raise SourceError("The CMP source cannot be saved.", fields)
    source = CmpSource(
        name=clean_name,
        adapter=adapter,
        authenticator=authenticator,
        secret_encrypted=encryptor.encrypt(secret),
        settings=clean_settings,
        enabled=enabled,
        created_at=now,
        updated_at=now,
    )
    session.add(source)
    session.flush()
    return _view(source)


def update_source(
    session: Session,
    encryptor: FieldEncryptor,
    source_id: int,
    *,
    adapter: str = _UNSET,
    authenticator: str = _UNSET,
    secret: str | None = _UNSET,
    settings: Mapping[str, Any] = _UNSET,
    enabled: bool = _UNSET,
    now: datetime,
) -> SourceView:
    """Change the given fields (omitted ones stay; the name is fixed because it is the webhook URL).
    ``settings`` replaces the whole settings object. Raises ``SourceError`` or ``LookupError``."""
    source = session.get(CmpSource, source_id)
    if source is None:
        raise LookupError(f"no CMP source has the id {source_id}")
    fields: dict[str, str] = {}
    new_adapter = source.adapter if adapter is _UNSET else adapter
    new_auth = source.authenticator if authenticator is _UNSET else authenticator
    if new_adapter not in ADAPTERS:
        fields["adapter"] = f"must be one of {', '.join(ADAPTERS)}"
    if new_auth not in AUTHENTICATORS:
        fields["authenticator"] = f"must be one of {', '.join(AUTHENTICATORS)}"
    if secret is not _UNSET:
        _check_secret(secret, fields)
    new_settings = dict(source.settings or {}) if settings is _UNSET else settings
    clean_settings = _check_settings(session, new_settings, new_auth, fields)
    if enabled is not _UNSET and not isinstance(enabled, bool):
        fields["enabled"] = "must be true or false"
    if fields:
        raise SourceError("The CMP source cannot be saved.", fields)
    source.adapter = new_adapter
    source.authenticator = new_auth
    if secret is not _UNSET:
        source.secret_encrypted = encryptor.encrypt(secret)  # type: ignore[arg-type]
    source.settings = clean_settings
    if enabled is not _UNSET:
        source.enabled = enabled
    source.updated_at = now
    session.flush()
    return _view(source)


def list_sources(session: Session) -> list[SourceView]:
    return [_view(s) for s in session.scalars(select(CmpSource).order_by(CmpSource.name))]


def get_source(session: Session, name: str) -> SourceView | None:
    source = session.scalar(select(CmpSource).where(CmpSource.name == name))
    return None if source is None else _view(source)


def source_secret(session: Session, encryptor: FieldEncryptor, source_id: int) -> str | None:
    """The decrypted secret, for the webhook authenticator only (raises DecryptionError on a wrong key)."""
    token = session.scalar(select(CmpSource.secret_encrypted).where(CmpSource.id == source_id))
    return encryptor.decrypt_optional(token)


def delete_source(session: Session, source_id: int) -> None:
    """Remove a source that never received a delivery; otherwise its inbox is evidence: disable it instead."""
    source = session.get(CmpSource, source_id)
    if source is None:
        raise LookupError(f"no CMP source has the id {source_id}")
    deliveries = session.scalar(
        select(func.count()).select_from(CmpInboxItem).where(CmpInboxItem.source_id == source_id)
    )
    if deliveries:
        raise SourceError(
            f"{source.name!r} has {deliveries} stored deliveries (consent evidence); disable it instead.",
            {"id": "has stored deliveries"},
        )
    session.delete(source)
    session.flush()
