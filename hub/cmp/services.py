"""CMP webhook deliveries: authenticate, keep the raw delivery, then turn it into consent records.

The webhook edge (``hub.cmp.views``) calls these in one unit of work so that nothing a CMP sent is lost
(CONTRACT.md "CMP webhooks"; reference/consent.md §1.3 "inbox first"):

1. ``load_source`` + ``authenticate`` — an unauthenticated request stores nothing;
2. ``parse_delivery`` (pure) then ``store_delivery`` — the raw body (encrypted: it carries identifiers) in
   ``cmp_inbox``; the insert also returns the earliest earlier copy of the delivery;
3. ``process_delivery`` — adapter output → identity resolution → ``record_consent``, in the same transaction as
   the inbox row. When it fails, the edge rolls all of it back and stores the body again with
   ``store_delivery(failure=...)``, committed on its own.

The inbox row is written with the status it ends in when nothing goes wrong (``processed``, or ``failed`` for a
body that cannot be processed as sent), because it only becomes visible with the transaction's commit, together
with the records; ``process_delivery`` rewrites it only for a repeat or to keep notes.

Repeats are no-ops: a body already processed for the source (same SHA-256), or a CMP event id already processed,
marks the new inbox row ``duplicate``; below that, ``record_consent`` is idempotent per
``(source, source_event_id, purpose)`` so a race between two identical deliveries records once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, bindparam, insert, literal_column, select, true, update
from sqlalchemy.orm import Session

from hub.cmp.adapters import ConsentSubmission, PayloadError, parse_payload
from hub.cmp.auth import AuthError, check_ip_allowed, verify_basic, verify_bearer, verify_hmac_signature
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.config import Settings
from hub.consent.services import ConsentDecision, ConsentInputError, SubjectErased, record_consent
from hub.encryption import FieldEncryptor
from hub.profiles.identifiers import identifier_candidates
from hub.profiles.models import Profile, SuppressedIdentifier
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import attach_identity, find_profile_by_identity, prepare_identity, resolve_prepared

log = logging.getLogger(__name__)

__all__ = [
    "Delivery",
    "DeliveryOutcome",
    "DeliveryRejected",
    "ParsedDelivery",
    "SourceConfig",
    "StoredDelivery",
    "WebhookAuthError",
    "authenticate",
    "client_address",
    "cmp_identity",
    "consent_decision",
    "earliest_copy",
    "handled",
    "inbox_body",
    "inbox_row",
    "load_source",
    "mark_inbox_rows",
    "parse_delivery",
    "process_delivery",
    "store_delivery",
]

# Request headers worth keeping as evidence. Authorization and cookies are credentials: never stored.
KEPT_HEADERS = ("Content-Type", "User-Agent", "X-Hub-Signature", "X-Request-Id", "X-Forwarded-For")
# The CMP identity that is *the* user key of an adapter; other identities carry their key in the hashed value.
_PRIMARY_IDENTITY = {"didomi": "didomi_user_id", "usercentrics": "usercentrics_controller_id"}


@dataclass(frozen=True)
class SourceConfig:
    """What the webhook needs of a source, read once per request (the secret decrypted)."""

    id: int
    name: str
    adapter: str
    authenticator: str
    secret: str | None
    settings: Mapping[str, Any] = field(default_factory=dict)

    @property
    def record_source(self) -> str:
        """``consent_records.source`` for this source's decisions."""
        return f"cmp:{self.name}"


class WebhookAuthError(Exception):
    """401 (credentials) or 403 (address not allowed). ``reason`` is for logs, never for the answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DeliveryRejected(Exception):
    """The delivery cannot be processed as sent (bad JSON, a payload field, an identity problem)."""

    def __init__(self, status: int, code: str, message: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = dict(fields or {})


@dataclass(frozen=True)
class DeliveryOutcome:
    status: str  # "processed" | "duplicate"
    records: int = 0
    profile_id: str | None = None
    record_ids: tuple[int, ...] = ()
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "records": self.records,
            "profile_id": self.profile_id,
            "record_ids": list(self.record_ids),
            "notes": list(self.notes),
        }


# ----------------------------------------------------------------------------------------------------------
# 1. Source and authentication
# ----------------------------------------------------------------------------------------------------------


_SOURCES = CmpSource.__table__
# What a webhook reads of a source (see ``source_config``).
SOURCE_COLUMNS = (
    _SOURCES.c.id,
    _SOURCES.c.name,
    _SOURCES.c.adapter,
    _SOURCES.c.authenticator,
    _SOURCES.c.secret_encrypted,
    _SOURCES.c.settings,
)
# One row of plain columns (a Core statement, built once): the ORM entity's loading cost more than the query.
_ENABLED_SOURCE = select(*SOURCE_COLUMNS).where(
    _SOURCES.c.name == bindparam("name", type_=String), _SOURCES.c.enabled == true()
)


def load_source(session: Session, encryptor: FieldEncryptor, name: str) -> SourceConfig | None:
    """The enabled source called ``name``, or None (unknown and disabled sources look the same: 404).

    Read from the database on every request, not cached: a disabled source or rotated credentials take effect
    with the next delivery."""
    row = session.execute(_ENABLED_SOURCE, {"name": name}).first()
    return None if row is None else source_config(encryptor, row)


def source_config(encryptor: FieldEncryptor, row: Any) -> SourceConfig:
    """The ``SourceConfig`` of a row of ``SOURCE_COLUMNS``."""
    return SourceConfig(
        id=row.id,
        name=row.name,
        adapter=row.adapter,
        authenticator=row.authenticator,
        secret=encryptor.decrypt_optional(row.secret_encrypted),
        settings=dict(row.settings or {}),
    )


def client_address(remote_addr: str | None, forwarded_for: str | None, hops: int) -> str | None:
    """The sender's address: the connection's, unless ``hops`` trusted proxies append to ``X-Forwarded-For``,
    in which case the address the outermost trusted proxy saw (the ``hops``-th from the right)."""
    if hops <= 0 or not forwarded_for:
        return remote_addr
    chain = [part.strip() for part in forwarded_for.split(",") if part.strip()]
    if len(chain) < hops:
        return None  # fewer entries than proxies: the header was not written by them
    return chain[-hops]


def authenticate(
    source: SourceConfig,
    *,
    headers: Mapping[str, str],
    body: bytes,
    remote_addr: str | None,
    now: datetime,
) -> None:
    """Raise ``WebhookAuthError`` unless the request comes from an allowed address (403) with valid credentials
    for the source's authenticator (401). The address is checked first, so a sender outside the allow-list
    learns nothing about the credentials."""
    hops = source.settings.get("forwarded_hops") or 0
    address = client_address(remote_addr, headers.get("X-Forwarded-For"), int(hops))
    try:
        check_ip_allowed(address, list(source.settings.get("ip_allow_list") or ()))
    except AuthError as error:
        raise WebhookAuthError(403, error.reason) from None
    try:
        if source.authenticator == "hmac":
            verify_hmac_signature((source.secret or "").encode(), headers.get("X-Hub-Signature"), body, now)
        elif source.authenticator == "bearer":
            verify_bearer(source.secret or "", headers.get("Authorization"))
        elif source.authenticator == "basic":
            username = str(source.settings.get("basic_username") or "")
            verify_basic(username, source.secret or "", headers.get("Authorization"))
        else:
            raise AuthError(f"unknown authenticator {source.authenticator!r}")
    except AuthError as error:
        raise WebhookAuthError(401, error.reason) from None


# ----------------------------------------------------------------------------------------------------------
# 2. The inbox
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """One webhook request as processing needs it, read from the request by its thread."""

    source_name: str
    body: bytes
    headers: Mapping[str, str]  # what authentication reads and the inbox keeps (``REQUEST_HEADERS``)
    remote_addr: str | None
    received_at: datetime


@dataclass(frozen=True)
class ParsedDelivery:
    """A delivery's body read by the source's adapter before it is stored (pure: no I/O), so the inbox insert can
    also look for an earlier copy. ``rejection`` is set when the body cannot be processed as sent."""

    body_sha256: str
    submissions: tuple[ConsentSubmission, ...] = ()
    rejection: DeliveryRejected | None = None

    @property
    def event_key(self) -> str | None:
        """The CMP's event id, the inbox's second duplicate key (None when the body did not parse)."""
        return self.submissions[0].source_event_id[:255] if self.submissions else None


@dataclass(frozen=True)
class StoredDelivery:
    """The inbox row just written, and the earliest processed (or repeat) delivery of the same source with the
    same body or CMP event id, if any."""

    inbox_id: int
    body_sha256: str
    duplicate_of: int | None


def handled(inbox: Any) -> Any:
    """The condition on an inbox table (or alias) for a delivery that counts as an earlier copy: processed, or a
    repeat. Two comparisons rather than IN: a literal IN list is re-rendered on every execution."""
    return (inbox.c.status == "processed") | (inbox.c.status == "duplicate")


def earliest_copy(source_id: Any, key: str, value: Any, excluding: Any = None) -> Select[Any]:
    """The earliest delivery of a source, other than ``excluding``, whose ``key`` (``body_sha256`` or
    ``event_key``) is ``value`` and that was processed or was a repeat. One probe of that key's index
    ((source_id, body_sha256, id) or (source_id, event_key, id)); values, bound parameters or columns."""
    earlier = CmpInboxItem.__table__.alias(f"earlier_by_{key}")
    conditions = [earlier.c.source_id == source_id, earlier.c[key] == value, handled(earlier)]
    if excluding is not None:
        conditions.append(earlier.c.id != excluding)
    return select(earlier.c.id).where(*conditions).order_by(earlier.c.id).limit(1)


# The columns of a new inbox row, as ``inbox_row`` builds it.
INBOX_COLUMNS = (
    "source_id",
    "received_at",
    "body",
    "body_sha256",
    "event_key",
    "headers",
    "status",
    "error",
    "processed_at",
)


def _inbox_insert_statement(*, by_event_key: bool) -> Any:
    """INSERT of an inbox row returning its id and the earliest earlier delivery of the same source with the same
    body, and the earliest with the same CMP event id, that was processed or was a repeat. Built once (parameters
    ``new_*``/``earlier_*``): constructing it costs more Python than running it.

    Each key is a probe of its own index: a single look-up with ``body OR event key`` left PostgreSQL a plan that
    walked every earlier delivery of the source, a cost growing with the inbox
    (tests/db/cmp/test_cmp_inbox_query_plans.py)."""
    table = CmpInboxItem.__table__

    def earliest(column: Any, parameter: str) -> Any:
        return earliest_copy(
            bindparam("new_source_id", type_=table.c.source_id.type),
            column.name,
            bindparam(parameter, type_=column.type),
            # The new row itself is written ``processed`` already, and SQLite's RETURNING sees it. (The column is
            # named in SQL: SQLAlchemy does not correlate a subquery in RETURNING to the inserted row.)
            literal_column(f"{table.name}.id"),
        ).scalar_subquery()

    returning = [table.c.id, earliest(table.c.body_sha256, "earlier_body_sha256").label("same_body")]
    if by_event_key:
        returning.append(earliest(table.c.event_key, "earlier_event_key").label("same_event"))
    return (
        insert(table)
        .values({name: bindparam(f"new_{name}", type_=table.c[name].type) for name in INBOX_COLUMNS})
        .returning(*returning)
    )


_INBOX_INSERT = {flag: _inbox_insert_statement(by_event_key=flag) for flag in (False, True)}


def parse_delivery(source: SourceConfig, body: bytes) -> ParsedDelivery:
    body_sha256 = hashlib.sha256(body).hexdigest()
    try:
        return ParsedDelivery(body_sha256, tuple(_parse(source, body_sha256, body)))
    except DeliveryRejected as rejection:
        return ParsedDelivery(body_sha256, rejection=rejection)


def rejection_text(rejection: DeliveryRejected) -> str:
    """How a rejection is kept on the inbox row: the message and every field at fault."""
    details = "; ".join(f"{path}: {problem}" for path, problem in rejection.fields.items())
    return f"{rejection.message}{' (' + details + ')' if details else ''}"


def store_delivery(
    session: Session,
    encryptor: FieldEncryptor,
    source: SourceConfig,
    parsed: ParsedDelivery,
    delivery: Delivery,
    *,
    failure: str | None = None,
) -> StoredDelivery:
    """Keep the raw delivery. The body is encrypted at rest because CMP payloads carry raw identifiers
    (DESIGN §3); ``body_sha256`` is of the raw bytes. The same statement looks for an earlier delivery with the
    same body (or CMP event id, when the body parsed) that was processed or was a repeat.

    The row is written with its final status when nothing goes wrong: ``failed`` with the reason when the body
    cannot be processed as sent (or ``failure`` is given: processing failed and was rolled back), else
    ``processed`` with the CMP's event id, which ``process_delivery`` completes in the same transaction."""
    return store_delivery_row(session, inbox_row(encryptor, source, parsed, delivery, failure=failure), parsed)


def store_delivery_row(session: Session, values: Mapping[str, Any], parsed: ParsedDelivery) -> StoredDelivery:
    """``store_delivery`` with the delivery's inbox row already built (``inbox_row``)."""
    parameters: dict[str, Any] = {f"new_{name}": value for name, value in values.items()}
    parameters["earlier_body_sha256"] = parsed.body_sha256
    if parsed.event_key is not None:
        parameters["earlier_event_key"] = parsed.event_key
    row = session.execute(_INBOX_INSERT[parsed.event_key is not None], parameters).one()
    earlier = [found for found in row[1:] if found is not None]
    return StoredDelivery(inbox_id=row.id, body_sha256=parsed.body_sha256, duplicate_of=min(earlier, default=None))


def inbox_row(
    encryptor: FieldEncryptor,
    source: SourceConfig,
    parsed: ParsedDelivery,
    delivery: Delivery,
    *,
    failure: str | None = None,
) -> dict[str, Any]:
    """The ``cmp_inbox`` row of a delivery, by column (see ``store_delivery``): received and processed at its
    arrival."""
    kept = {name: value for name in KEPT_HEADERS if (value := delivery.headers.get(name))}
    if delivery.remote_addr:
        kept["remote_addr"] = delivery.remote_addr
    if failure is None and parsed.rejection is not None:
        failure = rejection_text(parsed.rejection)
    return {
        "source_id": source.id,
        "received_at": delivery.received_at,
        "body": _encrypt(encryptor, delivery.body),
        "body_sha256": parsed.body_sha256,
        "event_key": None if failure is not None else parsed.event_key,
        "headers": kept,
        "status": "processed" if failure is None else "failed",
        "error": None if failure is None else failure[:2000],
        "processed_at": delivery.received_at,
    }


def _encrypt(encryptor: FieldEncryptor, body: bytes) -> bytes:
    # Fernet tokens are ASCII; latin-1 maps every byte to one character, so any body survives the round trip.
    return encryptor.encrypt(body.decode("latin-1")).encode("ascii")


def inbox_body(encryptor: FieldEncryptor, item: CmpInboxItem) -> bytes:
    """The raw body of a stored delivery (raises DecryptionError when no configured key opens it)."""
    return encryptor.decrypt(item.body.decode("ascii")).encode("latin-1")


# ----------------------------------------------------------------------------------------------------------
# 3. Processing
# ----------------------------------------------------------------------------------------------------------


def cmp_identity(adapter: str, key: str, value: str) -> tuple[str, str]:
    """The identity (kind, normalized value) under which a CMP user key is linked to a profile.

    Kind ``cmp:<adapter>``; the value is the CMP's id for the adapter's own user key (Didomi ``user.id``,
    Usercentrics ``controller_id``), else ``<space>:<value>`` (Ketch identity spaces). Event ingestion can link
    a logged-in customer to a CMP id with the same function (hash the value with ``sha256_hex``).
    """
    if key == _PRIMARY_IDENTITY.get(adapter):
        return f"cmp:{adapter}", value
    return f"cmp:{adapter}", f"{key.removeprefix(adapter + '_')}:{value}"


def _parse(source: SourceConfig, body_sha256: str, body: bytes) -> list[ConsentSubmission]:
    try:
        payload = json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise DeliveryRejected(400, "invalid_json", "The body is not UTF-8 text.") from None
    except (ValueError, RecursionError) as error:
        detail = f" (line {error.lineno}, column {error.colno})" if isinstance(error, json.JSONDecodeError) else ""
        raise DeliveryRejected(400, "invalid_json", f"The body is not valid JSON{detail}.") from None
    try:
        return parse_payload(
            source.adapter,
            payload,
            purpose_map=source.settings.get("purpose_map") or {},
            body_sha256=body_sha256,
            tcf_purpose_map=source.settings.get("tcf_purpose_map") or None,
        )
    except PayloadError as error:
        path = error.field or "body"
        raise DeliveryRejected(400, "invalid_payload", f"{path}: {error.message}", {path: error.message}) from None


_INBOX = CmpInboxItem.__table__
_MARK = (
    update(_INBOX)
    .where(_INBOX.c.id == bindparam("inbox_id", type_=_INBOX.c.id.type))
    .values(status=bindparam("status", type_=String), error=bindparam("note", type_=_INBOX.c.error.type))
)


def _mark(session: Session, inbox_id: int, status: str, note: str | None) -> None:
    session.execute(_MARK, {"inbox_id": inbox_id, "status": status, "note": note})


def mark_inbox_rows(session: Session, marks: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite inbox rows' status and note (``{"inbox_id", "status", "note"}`` each) in one statement."""
    if marks:
        session.execute(_MARK, list(marks))


def process_delivery(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    source: SourceConfig,
    parsed: ParsedDelivery,
    stored: StoredDelivery,
    *,
    now: datetime,
) -> DeliveryOutcome:
    """Turn a stored delivery into consent records in the inbox row's transaction; a repeat marks the row
    ``duplicate``, notes are kept on it (``store_delivery`` wrote it ``processed`` already).

    Raises ``DeliveryRejected`` (the body cannot be processed as sent, or its subject cannot be identified);
    the caller rolls the transaction back and stores the body as failed.
    """
    earlier = stored.duplicate_of
    if parsed.rejection is not None:
        if earlier is None:
            raise parsed.rejection
        # Processed before (the source's mapping may have changed since): a repeat stays a no-op.
        _mark(session, stored.inbox_id, "duplicate", f"same body as inbox item {earlier}")
        return DeliveryOutcome("duplicate", notes=(f"same body as delivery {earlier}",))
    if earlier is not None:
        _mark(session, stored.inbox_id, "duplicate", f"same body or CMP event id as inbox item {earlier}")
        return DeliveryOutcome("duplicate", notes=(f"same body or event id as delivery {earlier}",))

    notes: list[str] = []
    record_ids: list[int] = []
    profile_id: str | None = None
    for submission in _one_status_per_purpose(parsed.submissions):
        notes.extend(f"ignored {label}" for label in submission.ignored)
        resolved = _resolve_subject(session, encryptor, settings, source, submission, notes, now)
        if resolved is None:
            continue
        profile_id = resolved
        if not submission.purposes:
            notes.append("no hub purpose was decided (map the CMP's ids in the source's purpose_map)")
            continue
        try:
            decision = consent_decision(source, submission, resolved, stored.inbox_id, stored.body_sha256)
            records = record_consent(session, resolved, purposes=decision.purposes, **decision.details(), now=now)
        except ConsentInputError as error:
            raise DeliveryRejected(400, "invalid_payload", error.message, error.fields) from None
        except SubjectErased:
            notes.append("the subject was erased; nothing recorded")
            continue
        record_ids.extend(r.id for r in records)
    if notes:
        _mark(session, stored.inbox_id, "processed", "; ".join(notes)[:2000])
    return DeliveryOutcome(
        "processed", records=len(record_ids), profile_id=profile_id, record_ids=tuple(record_ids), notes=tuple(notes)
    )


def consent_decision(
    source: SourceConfig,
    submission: ConsentSubmission,
    profile_id: str,
    inbox_id: int,
    body_sha256: str,
    *,
    received_at: datetime | None = None,
) -> ConsentDecision:
    """What a submission records for the person ``profile_id``, as the ledger keeps it: the CMP's codes and notice
    version cut to the ledger's lengths, and the evidence of the delivery that carried it (no raw identifiers)."""
    return ConsentDecision(
        profile_id=profile_id,
        purposes=submission.purposes,
        collected_at=submission.collected_at,
        source=source.record_source,
        source_event_id=submission.source_event_id[:255],
        legal_basis=submission.legal_basis[:40] if submission.legal_basis else None,
        regulation=submission.regulation[:40] if submission.regulation else None,
        region=submission.region,
        notice_version=submission.notice_version[:120] if submission.notice_version else None,
        expires_at=submission.expires_at,
        proof={
            "inbox_id": inbox_id,
            "body_sha256": body_sha256,
            "tc_string": submission.tc_string,
            "gpp_string": submission.gpp_string,
            "usp_string": submission.usp_string,
            "gpc": submission.gpc,
        },
        received_at=received_at,
    )


def _one_status_per_purpose(submissions: Sequence[ConsentSubmission]) -> list[ConsentSubmission]:
    """Ketch splits one request by legal basis; when two bases decide the same hub purpose, keep one decision
    (a denial wins), because ``record_consent`` keys on (event id, purpose) and would keep only the first."""
    if len(submissions) == 1:
        return list(submissions)  # one submission's purposes are a mapping: one status each already
    chosen: dict[tuple[str, str], tuple[int, str]] = {}
    for index, submission in enumerate(submissions):
        for purpose, status in submission.purposes.items():
            key = (submission.source_event_id, purpose)
            previous = chosen.get(key)
            if previous is None or (status == "denied" and previous[1] != "denied"):
                chosen[key] = (index, status)
    result = []
    for index, submission in enumerate(submissions):
        purposes = {
            purpose: status
            for (event_id, purpose), (owner, status) in chosen.items()
            if owner == index and event_id == submission.source_event_id
        }
        result.append(replace(submission, purposes=purposes))
    return result


def _resolve_subject(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    source: SourceConfig,
    submission: ConsentSubmission,
    notes: list[str],
    now: datetime,
) -> str | None:
    """The profile a submission is about (created when new), with its CMP identities attached; None when the
    person was erased. Raises ``DeliveryRejected`` when nobody can be identified."""
    identities = [
        (kind, sha256_hex(value), value)
        for kind, value in (cmp_identity(source.adapter, k, v) for k, v in sorted(submission.cmp_identities.items()))
    ]
    if identities and session.scalar(
        select(SuppressedIdentifier.id)
        .where(SuppressedIdentifier.kind.in_({k for k, _, _ in identities}))
        .where(SuppressedIdentifier.value_hash.in_({h for _, h, _ in identities}))
        .limit(1)
    ):
        notes.append("the subject was erased; nothing recorded")
        return None

    profile_id: str | None = None
    if submission.subject:
        prepared = prepare_identity(dict(submission.subject), region=submission.region, settings=settings)
        if prepared.errors:
            fields = {f"subject.{k.removeprefix('user.')}": v for k, v in prepared.errors.items()}
            raise DeliveryRejected(400, "invalid_payload", "The subject has unusable fields.", fields)
        if identifier_candidates(prepared.normalized):
            resolution = resolve_prepared(
                session, encryptor, prepared, source=source.record_source, settings=settings, now=now
            )
            if resolution.suppressed:
                notes.append("the subject was erased; nothing recorded")
                return None
            if resolution.conflict is not None and resolution.profile_id is None:
                raise DeliveryRejected(409, "identity_conflict", resolution.conflict, {"subject": resolution.conflict})
            profile_id = resolution.profile_id
            notes.extend(resolution.notes)

    if profile_id is None:
        for kind, value_hash, _ in identities:
            profile_id = find_profile_by_identity(session, kind, value_hash)
            if profile_id is not None:
                break
    if profile_id is None and identities:
        profile_id = _new_profile_for(session, encryptor, identities[0], submission.region, now)
    if profile_id is None:
        raise DeliveryRejected(
            400,
            "no_identifier",
            "The subject has no identifier hub can resolve to a person (email, phone, external_id or a CMP user id).",
            {"subject": "no usable identifier"},
        )
    for kind, value_hash, value in identities:
        attachment = attach_identity(session, encryptor, profile_id, kind, value_hash, value, now=now)
        if attachment.status == "held_by_other":
            notes.append(f"{kind} id already belongs to another profile; left there")
        elif attachment.status == "over_limit":
            notes.append(f"{kind}: the profile holds the maximum number of these ids; not attached")
    return profile_id


def _new_profile_for(
    session: Session,
    encryptor: FieldEncryptor,
    identity: tuple[str, str, str],
    region: str | None,
    now: datetime,
) -> str:
    """A profile for a subject known only by a CMP id (Usercentrics sends nothing else). If a concurrent delivery
    linked the same id first, that profile is used and the new one is not kept."""
    kind, value_hash, value = identity
    with session.begin_nested() as savepoint:
        profile = Profile(region=region, created_at=now, updated_at=now)
        session.add(profile)
        session.flush()
        attachment = attach_identity(session, encryptor, profile.id, kind, value_hash, value, now=now)
        if attachment.status == "attached":
            return profile.id
        savepoint.rollback()
    if attachment.other_profile_id is not None:
        return attachment.other_profile_id
    raise DeliveryRejected(409, "identity_unavailable", f"The {kind} id cannot be linked ({attachment.status}).")
