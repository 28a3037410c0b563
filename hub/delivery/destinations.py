"""Destinations (Meta pixels): create, update, list, pause and resume, with their secrets encrypted.

* The access token and app secret are stored only as Fernet tokens; reads say ``token_set`` /
  ``app_secret_set`` and never return them (nor do audit entries or logs carry them).
* ``api_version`` must look like ``v26.0`` (reference/capi.md §1, checklist 1: always a pinned version).
* ``test_event_code`` routes events to Events Manager's Test Events, and Meta does *not* drop test events
  (§12, checklist 24), so with ``HUB_ENV=production`` it is refused unless the destination explicitly sets
  ``allow_test_events_in_production``; the dispatcher applies the same rule when it builds a request.
* Exactly one destination is the default (``is_default``): the first one created becomes it, and making another
  the default unsets the previous one. Events whose rule and mapping name no destination go there.
* A destination is ``active`` or ``paused``; the dispatcher pauses it on an authentication error (190/102/104)
  and sends nothing to it until someone resumes it (after fixing the token).

Services flush only; the caller commits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.audit.services import record_audit
from hub.config import Settings
from hub.db import utcnow
from hub.delivery.models import DEFAULT_API_VERSION, Destination
from hub.encryption import FieldEncryptor
from hub.errors import InvalidFields

DESTINATION_FIELDS: tuple[str, ...] = (
    "name",
    "pixel_id",
    "access_token",
    "app_secret",
    "api_version",
    "test_event_code",
    "allow_test_events_in_production",
    "is_default",
)
_API_VERSION = re.compile(r"v\d{1,3}\.0").fullmatch
_PIXEL_ID = re.compile(r"\d{1,32}").fullmatch


class DestinationInvalid(InvalidFields):
    """The destination cannot be saved; ``errors`` maps field names to sentences."""


class DestinationNotFound(LookupError):
    pass


def destination_document(destination: Destination) -> dict[str, Any]:
    """A destination as the API and CLI show it: never the token or the app secret."""
    return {
        "id": destination.id,
        "name": destination.name,
        "pixel_id": destination.pixel_id,
        "api_version": destination.api_version,
        "token_set": destination.access_token_encrypted is not None,
        "app_secret_set": destination.app_secret_encrypted is not None,
        "test_event_code": destination.test_event_code,
        "allow_test_events_in_production": destination.allow_test_events_in_production,
        "is_default": destination.is_default,
        "status": destination.status,
        "paused_reason": destination.paused_reason,
        "paused_at": _iso(destination.paused_at),
        "created_at": _iso(destination.created_at),
        "updated_at": _iso(destination.updated_at),
    }


def _audit_view(destination: Destination) -> dict[str, Any]:
    document = destination_document(destination)
    for key in ("created_at", "updated_at", "paused_at"):
        document.pop(key)
    return document


def _audit(session: Session, actor: str, action: str, destination_id: int, before: Any, after: Any) -> None:
    record_audit(
        session,
        actor=actor,
        action=action,
        object_type="destination",
        object_id=destination_id,
        before=before,
        after=after,
    )


def _secret(value: object, name: str, errors: dict[str, str], *, required: bool) -> str | None:
    if value is None:
        if required:
            errors[name] = f"{name} is required"
        return None
    if not isinstance(value, str) or not value.strip():
        errors[name] = f"{name} must be a non-empty string"
        return None
    if len(value) > 4096 or any(c.isspace() for c in value.strip()):
        errors[name] = f"{name} must be one token without spaces (at most 4096 characters)"
        return None
    return value.strip()


def check_destination(
    session: Session, data: Mapping[str, Any], *, settings: Settings, current: Destination | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The validated field values to store (secrets still in clear) and the problems, field → sentence."""
    errors: dict[str, str] = {}
    for key in data:
        if key not in DESTINATION_FIELDS:
            errors[str(key)] = f"unknown field; a destination has {', '.join(DESTINATION_FIELDS)}"
    values: dict[str, Any] = {}

    if "name" in data or current is None:
        name = data.get("name")
        if not isinstance(name, str) or not name.strip() or len(name.strip()) > 120:
            errors["name"] = "name is required (1 to 120 characters)"
        else:
            values["name"] = name.strip()
            clash = session.execute(select(Destination.id).where(Destination.name == values["name"])).scalar()
            if clash is not None and (current is None or clash != current.id):
                errors["name"] = f"a destination named {values['name']!r} already exists"
    if "pixel_id" in data or current is None:
        pixel = data.get("pixel_id")
        pixel = str(pixel) if isinstance(pixel, int) and not isinstance(pixel, bool) else pixel
        if not isinstance(pixel, str) or not _PIXEL_ID(pixel.strip()):
            errors["pixel_id"] = "pixel_id must be the numeric dataset (pixel) id from Events Manager"
        else:
            values["pixel_id"] = pixel.strip()
    if "access_token" in data or current is None:
        token = _secret(data.get("access_token"), "access_token", errors, required=True)
        if token is not None:
            values["access_token"] = token
    if "app_secret" in data:
        raw_secret = data.get("app_secret")
        # null or "" removes the app secret (no appsecret_proof is sent any more).
        if raw_secret is None or raw_secret == "":
            values["app_secret"] = None
        else:
            secret = _secret(raw_secret, "app_secret", errors, required=False)
            if secret is not None:
                values["app_secret"] = secret
    if "api_version" in data or current is None:
        version = data.get("api_version", DEFAULT_API_VERSION)
        if not isinstance(version, str) or not _API_VERSION(version.strip()):
            errors["api_version"] = f"api_version must look like {DEFAULT_API_VERSION} (v<major>.0)"
        else:
            values["api_version"] = version.strip()
    for flag in ("allow_test_events_in_production", "is_default"):
        if flag in data:
            if not isinstance(data[flag], bool):
                errors[flag] = f"{flag} must be true or false"
            else:
                values[flag] = data[flag]
    if "test_event_code" in data:
        code = data.get("test_event_code")
        if code is None or code == "":
            values["test_event_code"] = None
        elif not isinstance(code, str) or not code.strip() or len(code.strip()) > 64:
            errors["test_event_code"] = "test_event_code must be the code from Events Manager (at most 64 characters)"
        else:
            values["test_event_code"] = code.strip()
    if "test_event_code" not in errors:
        code = values.get("test_event_code", current.test_event_code if current is not None else None)
        allowed = values.get(
            "allow_test_events_in_production",
            current.allow_test_events_in_production if current is not None else False,
        )
        if code and settings.is_production and not allowed:
            # Meta: test events are not dropped; they count as real (reference/capi.md §12, checklist 24).
            errors["test_event_code"] = (
                "test_event_code is refused with HUB_ENV=production: Meta processes test events as real ones; "
                "set allow_test_events_in_production on this destination if you really mean it"
            )
    return values, errors


def _apply(destination: Destination, values: Mapping[str, Any], encryptor: FieldEncryptor) -> None:
    for name, value in values.items():
        if name == "access_token":
            destination.access_token_encrypted = encryptor.encrypt(value)
        elif name == "app_secret":
            destination.app_secret_encrypted = encryptor.encrypt_optional(value)
        else:
            setattr(destination, name, value)


def _make_sole_default(session: Session, destination: Destination) -> None:
    session.execute(
        update(Destination)
        .where(Destination.id != destination.id, Destination.is_default.is_(True))
        .values(is_default=False)
        .execution_options(synchronize_session="fetch")
    )


def create_destination(
    session: Session, encryptor: FieldEncryptor, data: Mapping[str, Any], *, settings: Settings, actor: str
) -> Destination:
    """Validate and add a destination (active). The first destination becomes the default. Raises
    DestinationInvalid."""
    values, errors = check_destination(session, data, settings=settings)
    if errors:
        raise DestinationInvalid(errors)
    now = utcnow()
    destination = Destination(
        status="active",
        is_default=False,
        allow_test_events_in_production=False,
        api_version=DEFAULT_API_VERSION,
        created_at=now,
        updated_at=now,
    )
    _apply(destination, values, encryptor)
    has_default = session.execute(select(Destination.id).where(Destination.is_default.is_(True))).first()
    if has_default is None:
        destination.is_default = True
    session.add(destination)
    session.flush()
    if destination.is_default:
        _make_sole_default(session, destination)
    _audit(session, actor, "destination.create", destination.id, None, _audit_view(destination))
    session.flush()
    return destination


def get_destination(session: Session, destination_id: int) -> Destination:
    destination = session.get(Destination, destination_id)
    if destination is None:
        raise DestinationNotFound(destination_id)
    return destination


def find_destination(session: Session, name_or_id: str) -> Destination:
    """By name, or by id when the text is a number. Raises DestinationNotFound."""
    destination = session.execute(select(Destination).where(Destination.name == name_or_id)).scalar_one_or_none()
    if destination is None and name_or_id.isdigit():
        destination = session.get(Destination, int(name_or_id))
    if destination is None:
        raise DestinationNotFound(name_or_id)
    return destination


def update_destination(
    session: Session,
    encryptor: FieldEncryptor,
    destination_id: int,
    data: Mapping[str, Any],
    *,
    settings: Settings,
    actor: str,
) -> Destination:
    """Apply the given fields. ``is_default: false`` on the default is refused (make another one the default)."""
    destination = get_destination(session, destination_id)
    values, errors = check_destination(session, data, settings=settings, current=destination)
    if values.get("is_default") is False and destination.is_default:
        errors["is_default"] = "one destination is always the default; make another destination the default instead"
    if errors:
        raise DestinationInvalid(errors)
    before = _audit_view(destination)
    _apply(destination, values, encryptor)
    destination.updated_at = utcnow()
    session.flush()
    if destination.is_default:
        _make_sole_default(session, destination)
    after = _audit_view(destination)
    if "access_token" in values:
        after["access_token"] = "(replaced)"  # noqa: S105 - a marker, never the token
    if "app_secret" in values:
        after["app_secret"] = "(replaced)" if values["app_secret"] is not None else "(removed)"
    _audit(session, actor, "destination.update", destination.id, before, after)
    session.flush()
    return destination


def list_destinations(session: Session) -> list[Destination]:
    return list(session.scalars(select(Destination).order_by(Destination.name)))


def default_destination(session: Session) -> Destination | None:
    return session.execute(select(Destination).where(Destination.is_default.is_(True))).scalars().first()


def paused_destinations(session: Session) -> list[Destination]:
    """Destinations that receive nothing until resumed (the admin UI shows them as a banner)."""
    return list(session.scalars(select(Destination).where(Destination.status == "paused").order_by(Destination.name)))


def pause_destination(
    session: Session, destination_id: int, reason: str, *, now: datetime | None = None, actor: str = "scheduler"
) -> Destination:
    """Stop sending to a destination; its events stay pending or retrying, untouched, until it is resumed."""
    destination = get_destination(session, destination_id)
    if destination.status == "paused":
        return destination
    before = _audit_view(destination)
    destination.status = "paused"
    destination.paused_reason = reason[:2000]
    destination.paused_at = now or utcnow()
    destination.updated_at = destination.paused_at
    _audit(session, actor, "destination.pause", destination.id, before, _audit_view(destination))
    session.flush()
    return destination


def resume_destination(
    session: Session, destination_id: int, *, actor: str, now: datetime | None = None
) -> Destination:
    """Send again: the events held while it was paused are due again as they were (nothing was lost)."""
    destination = get_destination(session, destination_id)
    if destination.status == "active":
        return destination
    before = _audit_view(destination)
    destination.status = "active"
    destination.paused_reason = None
    destination.paused_at = None
    destination.updated_at = now or utcnow()
    _audit(session, actor, "destination.resume", destination.id, before, _audit_view(destination))
    session.flush()
    return destination


def destination_credentials(encryptor: FieldEncryptor, destination: Destination) -> tuple[str | None, str | None]:
    """(access token, app secret) in clear, for the request only."""
    return (
        encryptor.decrypt_optional(destination.access_token_encrypted),
        encryptor.decrypt_optional(destination.app_secret_encrypted),
    )


def effective_test_event_code(destination: Destination, settings: Settings) -> str | None:
    """The test_event_code to send: never in production unless the destination explicitly allows it."""
    if not destination.test_event_code:
        return None
    if settings.is_production and not destination.allow_test_events_in_production:
        return None
    return destination.test_event_code


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")
