"""A profile as the API and the admin UI show it: the summary (masked identifiers) and the full export.

Both are read through the cluster: a merged-away id answers with its root's data and says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.encryption import DecryptionError, FieldEncryptor
from hub.events.models import Event
from hub.profiles.identifiers import mask_identifier
from hub.profiles.models import Identity, Profile, ProfileMerge
from hub.profiles.services import ProfileNotFound, canonical_profile_id, cluster_ids, decrypt_or_marker

RECENT_EVENTS = 20
UNREADABLE = "<cannot be decrypted with HUB_ENCRYPTION_KEY>"


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return iso(value)
    return value


def _consent_summary(session: Session, root_id: str, now: datetime) -> dict[str, Any]:
    """INTEGRATION POINT with the consent domain: current consent per purpose for the cluster of ``root_id``.

    ``hub.consent.services.current_consent(session, profile_id, now) -> dict`` is provided by the consent
    domain (which combines the ledgers of a cluster). Until that module exists this returns {}; only a
    missing module/function is tolerated, any other error propagates.
    """
    try:
        from hub.consent.services import current_consent  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return _jsonable(current_consent(session, root_id, now))


def _decrypt_json_or_marker(encryptor: FieldEncryptor, token: str | None) -> Any:
    if token is None:
        return None
    try:
        return encryptor.decrypt_json(token)
    except (DecryptionError, ValueError):
        return UNREADABLE


def _load_cluster(session: Session, profile_id: str) -> tuple[Profile, list[Profile]]:
    root_id = canonical_profile_id(session, profile_id)
    members = cluster_ids(session, root_id)
    profiles = {p.id: p for p in session.scalars(select(Profile).where(Profile.id.in_(members)))}
    root = profiles.get(root_id)
    if root is None:  # pragma: no cover - canonical_profile_id found it a moment ago
        raise ProfileNotFound(profile_id)
    return root, [profiles[m] for m in members if m in profiles]


def _profile_header(root: Profile, members: list[Profile], requested_id: str) -> dict[str, Any]:
    return {
        "id": root.id,
        "requested_id": requested_id,
        # A merged-away id is answered with its root's data; say so rather than silently switching ids.
        "merged_into": root.id if requested_id != root.id else None,
        "merged_profiles": [m.id for m in members if m.id != root.id],
        "region": root.region,
        "created_at": iso(root.created_at),
        "updated_at": iso(root.updated_at),
        "erased_at": iso(root.erased_at),
    }


def _events(session: Session, members: list[str], limit: int | None) -> list[Event]:
    query = select(Event).where(Event.profile_id.in_(members)).order_by(Event.received_at.desc(), Event.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def profile_summary(session: Session, encryptor: FieldEncryptor, profile_id: str, now: datetime) -> dict[str, Any]:
    """The profile, its identities (kind, hash, masked value), traits, current consent and recent events.

    Raises ProfileNotFound."""
    root, members = _load_cluster(session, profile_id)
    member_ids = [m.id for m in members]
    identities = session.scalars(
        select(Identity).where(Identity.profile_id.in_(member_ids)).order_by(Identity.kind, Identity.id)
    )
    document = _profile_header(root, members, profile_id)
    document["identities"] = [
        {
            "kind": identity.kind,
            "hash": identity.value_hash,
            "value_masked": mask_identifier(identity.kind, decrypt_or_marker(encryptor, identity.value_encrypted)),
            "created_at": iso(identity.created_at),
            "last_seen_at": iso(identity.last_seen_at),
        }
        for identity in identities
    ]
    document["traits"] = _decrypt_json_or_marker(encryptor, root.traits_encrypted) or {}
    document["consent"] = _consent_summary(session, root.id, now)
    document["recent_events"] = [
        {
            "event_id": event.event_id,
            "event": event.source_event,
            "status": event.status,
            "occurred_at": iso(event.occurred_at),
            "received_at": iso(event.received_at),
            "profile_id": event.profile_id,
        }
        for event in _events(session, member_ids, RECENT_EVENTS)
    ]
    return document


def profile_export(session: Session, encryptor: FieldEncryptor, profile_id: str, now: datetime) -> dict[str, Any]:
    """Everything hub holds about the person (data-subject access): profiles of the cluster, traits,
    identities with decrypted values, the merge journal, consent records and events. Raises ProfileNotFound."""
    from hub.consent.models import ConsentRecord

    root, members = _load_cluster(session, profile_id)
    member_ids = [m.id for m in members]
    document = _profile_header(root, members, profile_id)
    document["exported_at"] = iso(now)
    document["profiles"] = [
        {
            "id": m.id,
            "merged_into": m.merged_into_id,
            "region": m.region,
            "traits": _decrypt_json_or_marker(encryptor, m.traits_encrypted),
            "created_at": iso(m.created_at),
            "updated_at": iso(m.updated_at),
            "erased_at": iso(m.erased_at),
        }
        for m in members
    ]
    document["traits"] = _decrypt_json_or_marker(encryptor, root.traits_encrypted) or {}
    document["identities"] = [
        {
            "kind": identity.kind,
            "hash": identity.value_hash,
            "value": decrypt_or_marker(encryptor, identity.value_encrypted),
            "profile_id": identity.profile_id,
            "created_at": iso(identity.created_at),
            "last_seen_at": iso(identity.last_seen_at),
        }
        for identity in session.scalars(
            select(Identity).where(Identity.profile_id.in_(member_ids)).order_by(Identity.kind, Identity.id)
        )
    ]
    merges = session.scalars(
        select(ProfileMerge)
        .where(ProfileMerge.winner_id.in_(member_ids) | ProfileMerge.loser_id.in_(member_ids))
        .order_by(ProfileMerge.id)
    )
    document["merges"] = [_merge_document(encryptor, merge) for merge in merges]
    records = session.scalars(
        select(ConsentRecord)
        .where(ConsentRecord.profile_id.in_(member_ids))
        .order_by(ConsentRecord.collected_at, ConsentRecord.id)
    )
    document["consent_records"] = [
        {
            "id": r.id,
            "profile_id": r.profile_id,
            "purpose": r.purpose,
            "status": r.status,
            "collected_at": iso(r.collected_at),
            "received_at": iso(r.received_at),
            "source": r.source,
            "source_event_id": r.source_event_id,
            "legal_basis": r.legal_basis,
            "regulation": r.regulation,
            "region": r.region,
            "notice_version": r.notice_version,
            "expires_at": iso(r.expires_at),
            "proof": r.proof,
            "supersedes_id": r.supersedes_id,
        }
        for r in records
    ]
    document["consent"] = _consent_summary(session, root.id, now)
    document["events"] = [
        {
            "event_id": e.event_id,
            "event": e.source_event,
            "profile_id": e.profile_id,
            "status": e.status,
            "occurred_at": iso(e.occurred_at),
            "received_at": iso(e.received_at),
            "action_source": e.action_source,
            "source_url": e.source_url,
            "region": e.region,
            "gpc": e.gpc,
            "user_data": _decrypt_json_or_marker(encryptor, e.user_data_encrypted),
            "properties": e.properties,
            "decision": e.decision,
            "sent_at": iso(e.sent_at),
        }
        for e in _events(session, member_ids, None)
    ]
    return document


def _merge_document(encryptor: FieldEncryptor, merge: ProfileMerge) -> dict[str, Any]:
    details: dict[str, Any] = {}
    for key, value in (merge.details or {}).items():
        if key.endswith("_encrypted"):
            details[key.removesuffix("_encrypted")] = _decrypt_json_or_marker(encryptor, value)
        else:
            details[key] = value
    return {
        "winner_id": merge.winner_id,
        "loser_id": merge.loser_id,
        "link_kind": merge.link_kind,
        "link_hash": merge.link_hash,
        "source": merge.source,
        "created_at": iso(merge.created_at),
        "details": details,
    }
