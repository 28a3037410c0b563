"""``POST /api/v1/consent``: consent decisions from first-party backends (CONTRACT.md, HTTP API).

Body: ``{"user": {...}, "purposes": {"ad_user_data": "granted", ...}, "collected_at": "...", "source": "api",
"context": {"region": "FR"}, "event_id"?, "expires_at"?, "legal_basis"?, "regulation"?, "notice_version"?}``.

* The subject is resolved like ``/identify`` (a new person gets a profile). Nothing is stored when any field is
  unusable (400, every field named), when the identifiers conflict (409), or when the person was erased (422:
  recording consent would re-create them).
* Idempotency key: ``event_id`` when given, else the SHA-256 of the canonical body. A repeat answers 200 with
  the records of the first call; a first call answers 201.
* Records are stored with source ``api`` (or ``api:<source>`` for another ``source`` value), so a backend
  cannot write records that look like a CMP's.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify

from hub.auth.api import api_key_required
from hub.cmp.adapters.submission import PayloadError, parse_timestamp
from hub.consent.policy import STATUSES
from hub.consent.services import (
    LEGAL_BASES,
    ConsentInputError,
    SubjectErased,
    purpose_names,
    record_consent,
    records_for_event,
)
from hub.db import utcnow
from hub.profiles.identifiers import identifier_candidates
from hub.profiles.normalize import USER_FIELDS
from hub.profiles.services import prepare_identity, resolve_prepared
from hub.web.database import get_session
from hub.web.errors import ApiError
from hub.web.json_body import check_object, read_json_object

bp = Blueprint("consent_api", __name__, url_prefix="/api/v1")

BODY_KEYS = (
    "user",
    "purposes",
    "collected_at",
    "source",
    "context",
    "event_id",
    "expires_at",
    "legal_basis",
    "regulation",
    "notice_version",
)
CONTEXT_KEYS = ("region",)
# A backend's clock may run a little ahead of ours; beyond this a collected_at is a bug, not a skew.
FUTURE_SKEW = timedelta(minutes=5)
_SOURCE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,59}")
_REGULATION = re.compile(r"[a-z0-9_]{2,40}")


def _timestamp(value: Any, path: str, fields: dict[str, str]) -> datetime | None:
    try:
        return parse_timestamp(value, path)
    except PayloadError as error:
        fields[path] = error.message
        return None


def _optional_text(body: dict[str, Any], key: str, limit: int, fields: dict[str, str]) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        fields[key] = f"must be a non-empty string of at most {limit} characters"
        return None
    return value.strip()


@bp.post("/consent")
@api_key_required("ingest")
def record() -> tuple[Response, int]:
    body = read_json_object(BODY_KEYS, required_keys=("user", "purposes", "collected_at"))
    user = check_object(body["user"], "user", USER_FIELDS)
    context = check_object(body.get("context") or {}, "context", CONTEXT_KEYS)
    purposes = check_object(body["purposes"], "purposes")
    session = get_session()
    now = utcnow()
    fields: dict[str, str] = {}

    known = purpose_names(session)
    if not purposes:
        fields["purposes"] = "name at least one purpose"
    for name, status in purposes.items():
        if name not in known:
            fields[f"purposes.{name}"] = f"unknown purpose (known: {', '.join(sorted(known))})"
        elif status not in STATUSES:
            fields[f"purposes.{name}"] = f"must be {' or '.join(STATUSES)}"

    collected_at = _timestamp(body["collected_at"], "collected_at", fields)
    if collected_at is not None and collected_at > now + FUTURE_SKEW:
        fields["collected_at"] = f"is in the future ({collected_at.isoformat()}); send the time the user decided"
    expires_at = None if body.get("expires_at") is None else _timestamp(body["expires_at"], "expires_at", fields)
    if expires_at is not None and collected_at is not None and expires_at <= collected_at:
        fields["expires_at"] = "must be after collected_at"

    source_name = body.get("source", "api")
    if not isinstance(source_name, str) or not _SOURCE.fullmatch(source_name):
        fields["source"] = "must be 1-60 lower-case letters, digits, '.', '-' or '_' (e.g. 'api' or 'crm')"
        source = "api"
    else:
        source = "api" if source_name == "api" else f"api:{source_name}"
    event_id = body.get("event_id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id.strip() or len(event_id) > 200):
        fields["event_id"] = "must be a non-empty string of at most 200 characters"
    legal_basis = _optional_text(body, "legal_basis", 40, fields)
    if legal_basis is not None and legal_basis not in LEGAL_BASES:
        fields["legal_basis"] = f"must be one of {', '.join(LEGAL_BASES)}"
    regulation = _optional_text(body, "regulation", 40, fields)
    if regulation is not None and not _REGULATION.fullmatch(regulation):
        fields["regulation"] = "must be a lower-case code such as gdpr, cpra or lgpd"
    notice_version = _optional_text(body, "notice_version", 120, fields)

    settings = current_app.extensions["hub.settings"]
    prepared = prepare_identity(user, region=context.get("region"), settings=settings)
    fields.update(prepared.errors)
    if not fields and not identifier_candidates(prepared.normalized):
        fields["user"] = "has no identifier (email, phone, external_id, fbp or fbc)"
    if fields:
        # Nothing is stored when any field is unusable: the caller fixes the input and sends it again.
        raise ApiError(400, "invalid_fields", "Some fields cannot be used; nothing was stored.", fields)
    assert collected_at is not None  # checked above

    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    request_sha256 = hashlib.sha256(canonical).hexdigest()
    source_event_id = event_id.strip() if isinstance(event_id, str) else f"sha256:{request_sha256}"

    resolution = resolve_prepared(
        session, current_app.extensions["hub.encryptor"], prepared, source=source, settings=settings, now=now
    )
    if resolution.suppressed:
        raise ApiError(
            422,
            "subject_erased",
            "This person was erased; hub does not record consent that would re-create them. Nothing was stored.",
            {"user": "belongs to an erased person"},
        )
    if resolution.conflict is not None:
        raise ApiError(
            409, "identity_conflict", resolution.conflict, {resolution.conflict_field or "user": resolution.conflict}
        )
    if resolution.profile_id is None:
        # Only weak identifiers (fbp/fbc) nobody holds yet: identity resolution never creates a person from those.
        raise ApiError(
            400,
            "no_identifier",
            "No profile holds these browser identifiers; send an email, phone or external_id.",
            {"user": "has no identifier that can create a profile (email, phone or external_id)"},
        )
    api_key = g.get("api_key")
    try:
        created = record_consent(
            session,
            resolution.profile_id,
            purposes=purposes,
            collected_at=collected_at,
            source=source,
            source_event_id=source_event_id,
            legal_basis=legal_basis,
            regulation=regulation,
            region=prepared.region or resolution.region,
            notice_version=notice_version,
            expires_at=expires_at,
            proof={"request_sha256": request_sha256, "api_key_id": getattr(api_key, "id", None)},
            now=now,
        )
    except ConsentInputError as error:
        raise ApiError(400, "invalid_fields", error.message, error.fields) from None
    except SubjectErased:
        raise ApiError(422, "subject_erased", "This person was erased; nothing was stored.") from None
    records = created or records_for_event(session, resolution.profile_id, source, source_event_id)
    return (
        jsonify(
            status="recorded" if created else "duplicate",
            profile_id=resolution.profile_id,
            created_profile=resolution.created,
            event_id=source_event_id,
            records=[{"id": r.id, "purpose": r.purpose, "status": r.status} for r in records],
        ),
        201 if created else 200,
    )
