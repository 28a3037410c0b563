"""Consent services: the purpose catalogue, recording decisions, the ``consent_state`` projection, reads.

Services take the session and only ``flush()``; the caller owns the commit (DESIGN §2).

Decisions documented here because the API, the CMP webhooks and the scheduler rely on them:

* The ledger (``consent_records``) is append-only. ``record_consent`` inserts one row per purpose and is
  idempotent on ``(source, source_event_id, purpose)`` within the person's cluster: a repeat inserts nothing,
  even after the person's profiles were merged. Nothing here updates or deletes a ledger row.
* New decisions are written to the cluster root (the profile that identity resolution answers with).
* The projection ``consent_state`` holds, per profile and purpose, the *latest* fact of that profile's own ledger
  in force order (``ConsentLedger.latest_by_purpose``: by ``collected_at``, ties to the more restrictive).
  It deliberately does not drop expired facts: readers apply expiry at read time (consent.md §7.1 rule 2), so
  the projection is a pure function of the ledger and ``verify_projection`` can compare it exactly, whenever it
  runs. A latest fact collected in the future (a CMP clock ahead of ours) is stored too; it is not in force
  until its time, which readers of the projection must check (``current_consent`` reads the ledger instead).
* ``current_consent`` and ``load_ledger`` read a person's whole cluster and combine the members' ledgers so the
  most restrictive recent decision wins (``policy.combine_on_merge``).
* ``proof`` is evidence kept after erasure, so it may only hold hashes, the inbox id and consent signal
  strings (TC / GPP / US Privacy) and the GPC flag — never a raw identifier.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, bindparam, delete, func, insert, literal, null, select, true, union_all
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from hub.consent.ledger import fact_from_record, load_ledger
from hub.consent.models import ConsentRecord, ConsentState, Purpose
from hub.consent.policy import DENIED, STATUSES, ConsentFact, ConsentLedger, merge_denials
from hub.db import Call, json_document, json_insert, json_recordset, pipelined
from hub.profiles.models import Profile
from hub.profiles.services import ProfileNotFound, canonical_profile_id, cluster_ids

__all__ = [
    "LEGAL_BASES",
    "PROOF_KEYS",
    "PURPOSE_KINDS",
    "BatchNotApplicable",
    "ConsentDecision",
    "ConsentInputError",
    "ProjectionMismatch",
    "PurposeError",
    "RecordedConsent",
    "SubjectErased",
    "add_purpose",
    "consent_at",
    "current_consent",
    "list_purposes",
    "purpose_names",
    "rebuild_consent_state",
    "record_consent",
    "record_consent_many",
    "records_for_event",
    "remove_purpose",
    "verify_projection",
    "withdrawn_since",
]

PURPOSE_KINDS = ("consent", "opt_out_right")
# consent.md §7.1 vocabulary. CMP adapters may pass other codes through (Ketch "disclosure"); the API is strict.
LEGAL_BASES = ("consent", "legitimate_interest", "opt_out_right", "contract", "legal_obligation")
# What ``proof`` may hold. Erasure keeps consent records as evidence, so a raw email or phone here would
# survive an erasure request (CONTRACT: "consent evidence kept pseudonymised").
PROOF_KEYS = frozenset(
    {
        "inbox_id",
        "body_sha256",
        "request_sha256",
        "api_key_id",
        "tc_string",
        "gpp_string",
        "usp_string",
        "gpc",
    }
)
# Lower-case words with underscores, optionally one ``:qualifier`` (``sensitive:health``, consent.md §7.1).
_PURPOSE_NAME = re.compile(r"[a-z][a-z0-9_]{1,47}(:[a-z0-9_]{1,15})?")
_MAX_SOURCE = 120
_MAX_EVENT_ID = 255
_MAX_SHORT = 40
_MAX_REGION = 8
_MAX_NOTICE = 120


class ConsentInputError(ValueError):
    """Input that cannot be recorded; ``fields`` maps a field path to the problem."""

    def __init__(self, message: str, fields: Mapping[str, str]) -> None:
        super().__init__(message)
        self.message = message
        self.fields = dict(fields)


class PurposeError(ConsentInputError):
    """A purpose cannot be added or removed."""


class SubjectErased(Exception):
    """The person was erased; consent for them is not recorded (it would re-create what was erased)."""


@dataclass(frozen=True, slots=True)
class RecordedConsent:
    """A ledger row ``record_consent`` just wrote, with the values written (the row's columns, by name)."""

    id: int
    profile_id: str
    purpose: str
    status: str
    collected_at: datetime
    received_at: datetime
    source: str
    source_event_id: str
    legal_basis: str | None
    regulation: str | None
    region: str | None
    notice_version: str | None
    expires_at: datetime | None
    proof: Mapping[str, Any]


# ----------------------------------------------------------------------------------------------------------
# Purpose catalogue
# ----------------------------------------------------------------------------------------------------------


def list_purposes(session: Session) -> list[Purpose]:
    """Built-in purposes first (in catalogue order of creation), then custom ones by name."""
    return list(session.scalars(select(Purpose).order_by(Purpose.builtin.desc(), Purpose.created_at, Purpose.name)))


def purpose_names(session: Session) -> frozenset[str]:
    return frozenset(session.scalars(select(Purpose.name)))


def add_purpose(session: Session, name: str, *, kind: str = "consent", description: str = "", now: datetime) -> Purpose:
    """Add a custom purpose. Raises ``PurposeError`` naming the field at fault."""
    fields: dict[str, str] = {}
    clean = (name or "").strip()
    if not _PURPOSE_NAME.fullmatch(clean):
        fields["name"] = (
            "must be 2-48 lower-case letters, digits or underscores starting with a letter, optionally followed "
            "by ':qualifier' (e.g. 'email_marketing', 'sensitive:health')"
        )
    elif session.get(Purpose, clean) is not None:
        fields["name"] = f"the purpose {clean!r} already exists"
    if kind not in PURPOSE_KINDS:
        fields["kind"] = f"must be one of {', '.join(PURPOSE_KINDS)}"
    if len(description) > 500:
        fields["description"] = "must be at most 500 characters"
    if fields:
        raise PurposeError("The purpose cannot be added.", fields)
    purpose = Purpose(name=clean, kind=kind, description=description.strip(), builtin=False, created_at=now)
    session.add(purpose)
    session.flush()
    return purpose


def remove_purpose(session: Session, name: str) -> None:
    """Remove a custom purpose that no consent record uses. Built-in purposes cannot be removed."""
    purpose = session.get(Purpose, name)
    if purpose is None:
        raise PurposeError(f"There is no purpose {name!r}.", {"name": "unknown purpose"})
    if purpose.builtin:
        raise PurposeError(
            f"{name!r} is a built-in purpose; forwarding rules rely on it.", {"name": "built-in purposes stay"}
        )
    used = session.scalar(select(func.count()).select_from(ConsentRecord).where(ConsentRecord.purpose == name))
    if used:
        raise PurposeError(
            f"{name!r} has {used} consent record(s); the ledger is evidence and keeps them.",
            {"name": "in use by consent records"},
        )
    session.delete(purpose)
    session.flush()


# ----------------------------------------------------------------------------------------------------------
# Recording
# ----------------------------------------------------------------------------------------------------------


def _aware(value: datetime | None) -> bool:
    return value is None or (value.tzinfo is not None and value.utcoffset() is not None)


def _check_text(fields: dict[str, str], name: str, value: str | None, limit: int, *, required: bool = False) -> None:
    if value is None:
        if required:
            fields[name] = "is required"
        return
    if not isinstance(value, str) or not value.strip():
        fields[name] = "must be a non-empty string"
    elif len(value) > limit:
        fields[name] = f"must be at most {limit} characters"


def _check_proof(fields: dict[str, str], proof: Mapping[str, Any]) -> None:
    for key, value in proof.items():
        if key not in PROOF_KEYS:
            fields[f"proof.{key}"] = (
                f"not allowed; proof keeps only {', '.join(sorted(PROOF_KEYS))} (never raw identifiers)"
            )
        elif value is not None and not isinstance(value, str | int | bool):
            fields[f"proof.{key}"] = "must be a string, number, boolean or null"


def _validate(
    session: Session,
    purposes: Mapping[str, str],
    *,
    collected_at: datetime,
    source: str,
    source_event_id: str,
    legal_basis: str | None,
    regulation: str | None,
    region: str | None,
    notice_version: str | None,
    expires_at: datetime | None,
    proof: Mapping[str, Any],
    now: datetime,
    known: frozenset[str] | None = None,
) -> None:
    """Raise ``ConsentInputError`` naming every field at fault. ``known``: purposes known to exist (read from
    the catalogue when None)."""
    if not _aware(now):
        raise ValueError("now must be timezone-aware (UTC)")
    fields: dict[str, str] = {}
    if not purposes:
        fields["purposes"] = "name at least one purpose"
    if known is None:
        known = purpose_names(session) if purposes else frozenset()
    for purpose, status in purposes.items():
        if purpose not in known:
            fields[f"purposes.{purpose}"] = "unknown purpose (see the purpose catalogue)"
        elif status not in STATUSES:
            fields[f"purposes.{purpose}"] = f"status must be one of {', '.join(STATUSES)}"
    if not isinstance(collected_at, datetime) or not _aware(collected_at):
        fields["collected_at"] = "must be a timezone-aware time"
    if expires_at is not None:
        if not isinstance(expires_at, datetime) or not _aware(expires_at):
            fields["expires_at"] = "must be a timezone-aware time"
        elif "collected_at" not in fields and expires_at <= collected_at:
            fields["expires_at"] = "must be after collected_at"
    _check_text(fields, "source", source, _MAX_SOURCE, required=True)
    _check_text(fields, "source_event_id", source_event_id, _MAX_EVENT_ID, required=True)
    _check_text(fields, "legal_basis", legal_basis, _MAX_SHORT)
    _check_text(fields, "regulation", regulation, _MAX_SHORT)
    _check_text(fields, "region", region, _MAX_REGION)
    _check_text(fields, "notice_version", notice_version, _MAX_NOTICE)
    _check_proof(fields, proof)
    if fields:
        raise ConsentInputError("The consent decision cannot be recorded.", fields)


def _lock_root(session: Session, profile_id: str, purposes: Iterable[str] = ()) -> tuple[str | None, Any, int]:
    """The cluster root, locked: consent writes for one person take turns, so the idempotency check below sees a
    concurrent writer's rows and the projection stays exact (PostgreSQL; SQLite serializes writers anyway).

    Returns ``(root, problem, known)``: ``problem`` is the ProfileNotFound / SubjectErased to raise (the caller
    validates its input first, so input errors are reported before these) and ``known`` how many of
    ``purposes`` the catalogue holds, counted by the first statement to save a round trip."""
    names = sorted(set(purposes))
    current = profile_id
    known = 0
    for hop in range(8):  # merges are flattened: one hop at most, the bound guards against a corrupted chain
        if hop == 0 and names:
            row = session.execute(_LOCK_PROFILE_COUNTING, {"profile_id": current, "names": names}).first()
        else:
            row = session.execute(_LOCK_PROFILE, {"profile_id": current}).first()
        if row is None:
            return None, ProfileNotFound(profile_id), known
        if hop == 0 and names:
            known = row.known
        if row.merged_into_id is None:
            if row.erased_at is not None:
                return None, SubjectErased(current), known
            return current, None, known
        current = row.merged_into_id
    return None, ProfileNotFound(profile_id), known


# Statements of the write path built once (constructing them costs more Python than running them). They select
# table columns, not ORM attributes, so the session runs them as plain Core statements: nothing here needs the
# ORM's result processing, and it costs more than the statements' round trips.
_PROFILES = Profile.__table__
_RECORDS = ConsentRecord.__table__
_STATE = ConsentState.__table__
_LOCK_PROFILE = (
    select(_PROFILES.c.merged_into_id, _PROFILES.c.erased_at)
    .where(_PROFILES.c.id == bindparam("profile_id", type_=String))
    .with_for_update(of=_PROFILES)
)
_LOCK_PROFILE_COUNTING = _LOCK_PROFILE.add_columns(
    select(func.count())
    .select_from(Purpose.__table__)
    .where(Purpose.__table__.c.name.in_(bindparam("names", expanding=True)))
    .scalar_subquery()
    .label("known")
)
_CLUSTER_MEMBERS = select(_PROFILES.c.id).where(
    (_PROFILES.c.id == bindparam("root", type_=String))
    | (_PROFILES.c.merged_into_id == bindparam("root", type_=String))
)
# The projection branch comes first so its column types decode the result.
_SEEN_AND_STATE = union_all(
    select(
        literal("state").label("kind"),
        _STATE.c.purpose,
        _STATE.c.status,
        _STATE.c.collected_at,
        _STATE.c.expires_at,
        _STATE.c.record_id,
    ).where(
        _STATE.c.profile_id == bindparam("root", type_=String),
        _STATE.c.purpose.in_(bindparam("purposes", expanding=True)),
    ),
    select(literal("seen"), _RECORDS.c.purpose, null(), null(), null(), null()).where(
        _RECORDS.c.source == bindparam("source", type_=String),
        _RECORDS.c.source_event_id == bindparam("source_event_id", type_=String),
        _RECORDS.c.profile_id.in_(_CLUSTER_MEMBERS),
    ),
)
# The ledger rows of one decision in one statement (insertmanyvalues), ids returned in the rows' order.
_INSERT_RECORDS = insert(_RECORDS).returning(_RECORDS.c.id, sort_by_parameter_order=True)


def record_consent(
    session: Session,
    profile_id: str,
    *,
    purposes: Mapping[str, str],
    collected_at: datetime,
    source: str,
    source_event_id: str,
    legal_basis: str | None = None,
    regulation: str | None = None,
    region: str | None = None,
    notice_version: str | None = None,
    expires_at: datetime | None = None,
    proof: Mapping[str, Any] | None = None,
    now: datetime,
) -> list[RecordedConsent]:
    """Append one ledger row per purpose for the person ``profile_id`` belongs to and refresh the projection.

    Returns the rows inserted now; a purpose already recorded for ``(source, source_event_id)`` in the person's
    cluster is skipped, so a repeated delivery returns ``[]``. Raises ``ConsentInputError`` (fields at fault),
    ``ProfileNotFound`` or ``SubjectErased`` (nothing written in either case).
    """
    details = ConsentDecision(
        profile_id,
        purposes,
        collected_at,
        source,
        source_event_id,
        legal_basis=legal_basis,
        regulation=regulation,
        region=region,
        notice_version=notice_version,
        expires_at=expires_at,
        proof=dict(proof or {}),
    ).details()
    checks: dict[str, Any] = {**details, "now": now}
    # Everything but the catalogue first (no I/O); with that valid, the root lock also counts the purposes.
    # Any problem: the full check, which reads the catalogue and names every field at fault together.
    try:
        _validate(session, purposes, known=frozenset(purposes), **checks)
    except ConsentInputError:
        _validate(session, purposes, **checks)
        raise
    root, problem, known = _lock_root(session, profile_id, purposes)
    if known != len(purposes):
        _validate(session, purposes, **checks)  # names the unknown purposes, as before any lock was taken
    if problem is not None:
        raise problem
    assert root is not None
    seen, state = _seen_and_state(session, root, source, source_event_id, purposes)
    shared = {**details, "profile_id": root, "received_at": now}
    rows = [
        {**shared, "purpose": purpose, "status": status}
        for purpose, status in sorted(purposes.items())
        if purpose not in seen
    ]
    if not rows:
        return []
    # No savepoint/retry is needed for the unique constraint: the root's row lock makes a concurrent delivery
    # of the same event wait, and its check then sees these rows (READ COMMITTED reads committed rows afresh).
    # A Core INSERT answered with plain values rather than the unit of work and ORM objects: the rows are
    # append-only and nothing else in the session refers to them, so that bookkeeping would be pure cost.
    ids = session.execute(_INSERT_RECORDS, rows).scalars().all()
    records = [RecordedConsent(id=record_id, **row) for record_id, row in zip(ids, rows, strict=True)]
    _advance_projection(session, root, records, now, state)
    return records


def _seen_and_state(
    session: Session, root: str, source: str, source_event_id: str, purposes: Mapping[str, str]
) -> tuple[set[str], dict[str, ConsentFact]]:
    """One statement, run after the root is locked (so it sees a concurrent writer's committed rows): the
    purposes already recorded for ``(source, source_event_id)`` in the cluster, and the root's projection rows
    for ``purposes``. The projection branch comes first so its column types decode the result."""
    seen: set[str] = set()
    state: dict[str, ConsentFact] = {}
    parameters = {"root": root, "source": source, "source_event_id": source_event_id, "purposes": sorted(purposes)}
    for row in session.execute(_SEEN_AND_STATE, parameters):
        if row.kind == "seen":
            seen.add(row.purpose)
        else:
            state[row.purpose] = ConsentFact(
                id=row.record_id,
                purpose=row.purpose,
                status=row.status,
                collected_at=row.collected_at,
                expires_at=row.expires_at,
            )
    return seen, state


def records_for_event(session: Session, profile_id: str, source: str, source_event_id: str) -> list[ConsentRecord]:
    """The rows recorded for ``(source, source_event_id)`` in the person's cluster (to answer a repeat)."""
    members = cluster_ids(session, canonical_profile_id(session, profile_id))
    return list(
        session.scalars(
            select(ConsentRecord)
            .where(
                ConsentRecord.source == source,
                ConsentRecord.source_event_id == source_event_id,
                ConsentRecord.profile_id.in_(members),
            )
            .order_by(ConsentRecord.id)
        )
    )


@dataclass(frozen=True)
class ConsentDecision:
    """One ``record_consent`` call's arguments, for ``record_consent_many``. ``profile_id`` must be a cluster root
    (what identity resolution answers)."""

    profile_id: str
    purposes: Mapping[str, str]
    collected_at: datetime
    source: str
    source_event_id: str
    legal_basis: str | None = None
    regulation: str | None = None
    region: str | None = None
    notice_version: str | None = None
    expires_at: datetime | None = None
    proof: Mapping[str, Any] = field(default_factory=dict)
    received_at: datetime | None = None  # when hub received the decision; ``now`` when None

    def details(self) -> dict[str, Any]:
        """The decision's keyword arguments to ``record_consent`` besides the person, purposes and ``now``."""
        return {
            "collected_at": self.collected_at,
            "source": self.source,
            "source_event_id": self.source_event_id,
            "legal_basis": self.legal_basis,
            "regulation": self.regulation,
            "region": self.region,
            "notice_version": self.notice_version,
            "expires_at": self.expires_at,
            "proof": self.proof,
        }


class BatchNotApplicable(Exception):
    """Decisions of the batch (``decisions``: their indexes) need ``record_consent`` to answer them: their input
    is invalid, a purpose is not in the catalogue, or their person is no longer a cluster root (merged or erased
    since resolution) or is gone. Nothing was written; the caller rolls back and leaves those decisions to
    ``record_consent`` (the others can go as a batch again)."""

    def __init__(self, reason: str, decisions: Collection[int]) -> None:
        super().__init__(reason)
        self.decisions = frozenset(decisions)


# Every root of a batch locked in id order (concurrent batches wait for each other instead of deadlocking), with
# the catalogue's count of the batch's purposes.
_LOCK_ROOTS = (
    select(
        _PROFILES.c.id,
        _PROFILES.c.merged_into_id,
        _PROFILES.c.erased_at,
        select(func.count())
        .select_from(Purpose.__table__)
        .where(Purpose.__table__.c.name.in_(bindparam("names", expanding=True)))
        .scalar_subquery()
        .label("known"),
    )
    .where(_PROFILES.c.id.in_(bindparam("roots", expanding=True)))
    .order_by(_PROFILES.c.id)
    .with_for_update(of=_PROFILES)
)
_MEMBERS = Profile.__table__.alias("member")


# The roots' projection rows, and the ledger rows the roots' clusters already hold for the batch's CMP events
# (probing the ledger's unique index by source and event id). The projection branch comes first so its column
# types decode the result.
def _state_branch(state: Any) -> list[Any]:
    """The columns of the read's projection branch, from ``consent_state`` or a subquery of its columns."""
    return [
        literal("state").label("kind"),
        state.c.profile_id.label("root"),
        state.c.purpose,
        state.c.status,
        state.c.collected_at,
        state.c.expires_at,
        state.c.record_id,
        null().label("source"),
        null().label("source_event_id"),
    ]


_MANY_SEEN_AND_STATE = union_all(
    select(*_state_branch(_STATE)).where(_STATE.c.profile_id.in_(bindparam("roots", expanding=True))),
    select(
        literal("seen"),
        func.coalesce(_MEMBERS.c.merged_into_id, _MEMBERS.c.id),
        _RECORDS.c.purpose,
        null(),
        null(),
        null(),
        null(),
        _RECORDS.c.source,
        _RECORDS.c.source_event_id,
    )
    .select_from(_RECORDS.join(_MEMBERS, _MEMBERS.c.id == _RECORDS.c.profile_id))
    .where(
        _RECORDS.c.source.in_(bindparam("sources", expanding=True)),
        _RECORDS.c.source_event_id.in_(bindparam("event_ids", expanding=True)),
        _MEMBERS.c.id.in_(bindparam("roots", expanding=True))
        | _MEMBERS.c.merged_into_id.in_(bindparam("roots", expanding=True)),
    ),
)


# PostgreSQL's forms of the two statements above, for the batch's pipeline. Their text is the same for every batch,
# so they stay prepared (planning them had cost PostgreSQL more than running them); the lists travel as JSON
# documents, and each key is probed on its own (a LATERAL subquery that OFFSET 0 keeps from being flattened into a
# join): the plan a connection keeps, made when the tables were small, then stays an index probe per key
# (tests/db/consent/test_consent_batch_query_plans.py).
@functools.cache
def _postgresql_lock_roots() -> Any:
    wanted = json_recordset("wanted_roots", [("id", _PROFILES.c.id.type)], "roots")
    names = json_recordset("wanted_purposes", [("name", Purpose.__table__.c.name.type)], "names")
    root = (
        select(_PROFILES.c.id, _PROFILES.c.merged_into_id, _PROFILES.c.erased_at)
        .where(_PROFILES.c.id == wanted.c.id)
        .offset(0)
        .with_for_update(of=_PROFILES)
        .lateral("root")
    )
    known = (
        select(func.count())
        .select_from(Purpose.__table__)
        .where(Purpose.__table__.c.name.in_(select(names.c.name)))
        .scalar_subquery()
    )
    # The document lists the roots in id order: they are locked in it.
    return select(root.c.id, root.c.merged_into_id, root.c.erased_at, known.label("known")).select_from(
        wanted.join(root, true())
    )


@functools.cache
def _postgresql_seen_and_state() -> Any:
    roots = json_recordset("state_roots", [("id", _STATE.c.profile_id.type)], "roots")
    events = json_recordset(
        "wanted_events",
        [("source", _RECORDS.c.source.type), ("source_event_id", _RECORDS.c.source_event_id.type)],
        "events",
    )
    state = (
        select(
            _STATE.c.profile_id,
            _STATE.c.purpose,
            _STATE.c.status,
            _STATE.c.collected_at,
            _STATE.c.expires_at,
            _STATE.c.record_id,
        )
        .where(_STATE.c.profile_id == roots.c.id)
        .offset(0)
        .lateral("state")
    )
    seen = (
        select(
            func.coalesce(_MEMBERS.c.merged_into_id, _MEMBERS.c.id).label("root"),
            _RECORDS.c.purpose,
            _RECORDS.c.source,
            _RECORDS.c.source_event_id,
        )
        .select_from(_RECORDS.join(_MEMBERS, _MEMBERS.c.id == _RECORDS.c.profile_id))
        .where(_RECORDS.c.source == events.c.source, _RECORDS.c.source_event_id == events.c.source_event_id)
        .offset(0)
        .lateral("seen")
    )
    return union_all(
        select(*_state_branch(state)).select_from(roots.join(state, true())),
        # The roots' clusters only: a root's own rows and its merged members' (filtered here, not probed).
        select(
            literal("seen"),
            seen.c.root,
            seen.c.purpose,
            null(),
            null(),
            null(),
            null(),
            seen.c.source,
            seen.c.source_event_id,
        )
        .select_from(events.join(seen, true()))
        .where(seen.c.root.in_(select(roots.c.id))),
    )


def _acceptable(session: Session, decision: ConsentDecision, now: datetime) -> bool:
    """Whether ``decision`` passes ``record_consent``'s input checks (its purposes' existence aside)."""
    try:
        _validate(session, decision.purposes, **decision.details(), now=now, known=frozenset(decision.purposes))
    except ConsentInputError:
        return False
    return True


def record_consent_many(
    session: Session,
    decisions: Sequence[ConsentDecision],
    *,
    now: datetime,
    deferred: list[Call] | None = None,
    leading: Sequence[tuple[Call, Callable[[list[Any]], None]]] = (),
) -> list[list[RecordedConsent]]:
    """What ``record_consent`` returns for each decision called in order, in four statements whatever the batch
    size: lock the roots (and count the purposes in the catalogue), read their projection and what their
    clusters hold for the batch's events, append the ledger rows, upsert the projection. On PostgreSQL the lock
    and the read go in one round trip (``hub.db.pipelined``; the read still starts once the lock is held), and
    with ``deferred`` given the ledger and projection writes are appended to it instead of sent, for the caller to
    send with its commit. ``leading`` (PostgreSQL): the caller's statements to send first, in the same round trip
    (the decisions' new people, say), each with a check of its rows that runs before anything else and may raise.

    Raises ``BatchNotApplicable`` (nothing written) naming every decision ``record_consent`` would refuse or
    would follow to another profile; the caller records those one by one.
    """
    if not decisions:
        _send_leading(session, leading, [])
        return []
    invalid = [index for index, decision in enumerate(decisions) if not _acceptable(session, decision, now)]
    if invalid:
        raise BatchNotApplicable("decisions are invalid", invalid)
    roots = sorted({decision.profile_id for decision in decisions})
    names = sorted({purpose for decision in decisions for purpose in decision.purposes})
    found: Sequence[Any] | None = None
    allocated: list[int] = []
    postgresql_dialect = session.get_bind().dialect.name == "postgresql"
    if postgresql_dialect:
        # The ledger ids are drawn here, as many as the batch could write, so that the ledger rows and the
        # projection rows pointing at them can be sent together (and with the caller's commit); ids a batch does
        # not use are gaps, as a rollback leaves.
        documents = {
            "roots": json_document([{"id": root} for root in roots]),
            "names": json_document([{"name": name} for name in names]),
            "events": json_document(
                [
                    {"source": source, "source_event_id": event_id}
                    for source, event_id in sorted({(d.source, d.source_event_id) for d in decisions})
                ]
            ),
        }
        locked, found, drawn = _send_leading(
            session,
            leading,
            [
                Call(_postgresql_lock_roots(), {"roots": documents["roots"], "names": documents["names"]}),
                Call(_postgresql_seen_and_state(), {"roots": documents["roots"], "events": documents["events"]}),
                Call(_DRAW_RECORD_IDS, {"n": sum(len(decision.purposes) for decision in decisions)}),
            ],
        )
        allocated = sorted(row.id for row in drawn)
    else:
        locked = session.execute(_LOCK_ROOTS, {"roots": roots, "names": names}).all()
    usable = {row.id for row in locked if row.merged_into_id is None and row.erased_at is None}
    catalogue = purpose_names(session) if locked and locked[0].known != len(names) else frozenset(names)
    refused = [
        index
        for index, decision in enumerate(decisions)
        if decision.profile_id not in usable or not catalogue.issuperset(decision.purposes)
    ]
    if refused:
        raise BatchNotApplicable("people merged, erased or removed since resolution, or purposes unknown", refused)

    states: dict[str, dict[str, ConsentFact]] = {root: {} for root in roots}
    seen: set[tuple[str, str, str, str]] = set()
    if found is None:
        parameters = {
            "roots": roots,
            "sources": sorted({decision.source for decision in decisions}),
            "event_ids": sorted({decision.source_event_id for decision in decisions}),
        }
        found = session.execute(_MANY_SEEN_AND_STATE, parameters).all()
    for row in found:
        if row.kind == "seen":
            seen.add((row.root, row.source, row.source_event_id, row.purpose))
        else:
            states[row.root][row.purpose] = ConsentFact(
                id=row.record_id,
                purpose=row.purpose,
                status=row.status,
                collected_at=row.collected_at,
                expires_at=row.expires_at,
            )

    rows: list[dict[str, Any]] = []
    owners: list[int] = []
    for index, decision in enumerate(decisions):
        shared = {
            **decision.details(),
            "profile_id": decision.profile_id,
            "received_at": decision.received_at or now,
            "proof": dict(decision.proof),
        }
        for purpose, status in sorted(decision.purposes.items()):
            key = (decision.profile_id, decision.source, decision.source_event_id, purpose)
            if key in seen:
                continue  # recorded before, or by an earlier decision of this batch
            seen.add(key)
            rows.append({**shared, "purpose": purpose, "status": status})
            owners.append(index)
    recorded: list[list[RecordedConsent]] = [[] for _ in decisions]
    if not rows:
        return recorded
    # On PostgreSQL the ids drawn, ascending in the rows' order as an INSERT's own ids would be.
    ids = allocated[: len(rows)] if postgresql_dialect else list(session.execute(_INSERT_RECORDS, rows).scalars())
    changed: dict[tuple[str, str], ConsentFact] = {}
    for record_id, row, owner in zip(ids, rows, owners, strict=True):
        record = RecordedConsent(id=record_id, **row)
        recorded[owner].append(record)
        for purpose, fact in _fold(states[record.profile_id], [record]).items():
            changed[(record.profile_id, purpose)] = fact
    projection = [(root, fact) for (root, _purpose), fact in sorted(changed.items())]
    if not postgresql_dialect:
        _write_projection(session, projection, now)
        return recorded
    # The ledger rows and the projection in one round trip, or with the caller's commit.
    calls = [Call(_postgresql_records_insert(), {"rows": _records_document(rows, ids)})]
    _write_projection(session, projection, now, calls)
    if deferred is None:
        pipelined(session, calls)
    else:
        deferred.extend(calls)
    return recorded


def _send_leading(
    session: Session, leading: Sequence[tuple[Call, Callable[[list[Any]], None]]], calls: Sequence[Call]
) -> list[list[Any]]:
    """``leading`` and then ``calls`` in one round trip; the leading calls' checks run on their rows; the rows of
    ``calls``."""
    if not leading and not calls:
        return []
    results = pipelined(session, [*(call for call, _check in leading), *calls])
    for (_call, check), rows in zip(leading, results, strict=False):
        check(rows)
    return results[len(leading) :]


# Ledger ids drawn ahead of the rows (PostgreSQL's batch path): the column's own sequence, whatever its name.
_DRAW_RECORD_IDS = select(
    func.nextval(func.pg_get_serial_sequence(literal("consent_records"), literal("id"))).label("id")
).select_from(func.generate_series(1, bindparam("n", type_=Integer())))


_RECORD_COLUMNS = (
    "profile_id",
    "purpose",
    "status",
    "collected_at",
    "received_at",
    "source",
    "source_event_id",
    "legal_basis",
    "regulation",
    "region",
    "notice_version",
    "expires_at",
    "proof",
)


@functools.cache
def _postgresql_records_insert() -> Any:
    """``INSERT INTO consent_records (id, ...) SELECT ... FROM json_to_recordset(rows)``, ids drawn beforehand
    (``_DRAW_RECORD_IDS``)."""
    return json_insert(_RECORDS, ("id", *_RECORD_COLUMNS), name="new_records")


def _records_document(rows: Sequence[Mapping[str, Any]], ids: Sequence[int]) -> str:
    pairs = zip(ids, rows, strict=True)
    return json_document([{"id": id_, **{name: row[name] for name in _RECORD_COLUMNS}} for id_, row in pairs])


# ----------------------------------------------------------------------------------------------------------
# Projection
# ----------------------------------------------------------------------------------------------------------


def _advance_projection(
    session: Session,
    profile_id: str,
    records: Sequence[ConsentRecord | RecordedConsent],
    now: datetime,
    state: dict[str, ConsentFact],
) -> None:
    """Fold new rows into the profile's projection (``state``: its rows for these purposes, read under the root
    lock): each purpose keeps whichever of its current row and the new fact sorts last in force order
    (``latest_by_purpose`` of the two). Equal to a rebuild as long as the projection was (``verify_projection``
    proves it). Every changed row is written by one INSERT ... ON CONFLICT DO UPDATE."""
    changed = _fold(state, records)
    _write_projection(session, [(profile_id, fact) for _purpose, fact in sorted(changed.items())], now)


def _fold(state: dict[str, ConsentFact], records: Sequence[ConsentRecord | RecordedConsent]) -> dict[str, ConsentFact]:
    """Fold ``records`` (one person's, in insertion order) into ``state`` in place; the purposes whose row
    changed, with their new fact."""
    changed: dict[str, ConsentFact] = {}
    for record in records:
        fact = fact_from_record(record)
        current = state.get(record.purpose)
        if current is None or ConsentLedger([current, fact]).latest_by_purpose()[record.purpose] is fact:
            state[record.purpose] = changed[record.purpose] = fact
    return changed


def _write_projection(
    session: Session, rows: Sequence[tuple[str, ConsentFact]], now: datetime, deferred: list[Call] | None = None
) -> None:
    """Upsert projection rows ``(profile_id, fact)`` (at most one per profile and purpose) in one statement (on
    PostgreSQL, appended to ``deferred`` when given)."""
    if not rows:
        return
    values = [
        {
            "profile_id": profile_id,
            "purpose": fact.purpose,
            "status": fact.status,
            "collected_at": fact.collected_at,
            "expires_at": fact.expires_at,
            "record_id": int(fact.id),
            "updated_at": now,
        }
        for profile_id, fact in rows
    ]
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql" and deferred is not None:
        deferred.append(Call(_postgresql_projection_upsert(), {"rows": json_document(values)}))
    elif dialect == "postgresql":
        session.execute(_postgresql_projection_upsert(), {"rows": json_document(values)})
    else:
        session.execute(_projection_upsert(dialect), values)
    # Rows this session loaded earlier must not keep the old values (the statement bypassed the ORM). Building
    # identity keys is not free, and a session that loaded no objects at all (a webhook's) has nothing to expire.
    if not session.identity_map:
        return
    for profile_id, fact in rows:
        loaded = session.identity_map.get(session.identity_key(ConsentState, (profile_id, fact.purpose)))
        if loaded is not None:
            session.expire(loaded)


_PROJECTION_UPSERTS: dict[str, Any] = {}
_PROJECTION_COLUMNS = ("status", "collected_at", "expires_at", "record_id", "updated_at")


def _projection_upsert(dialect: str) -> Any:
    """INSERT ... ON CONFLICT (profile_id, purpose) DO UPDATE for ``consent_state``, built once per dialect."""
    statement = _PROJECTION_UPSERTS.get(dialect)
    if statement is None:
        table = ConsentState.__table__
        insert = pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
        statement = insert.on_conflict_do_update(
            index_elements=[table.c.profile_id, table.c.purpose],
            set_={name: insert.excluded[name] for name in _PROJECTION_COLUMNS},
        )
        _PROJECTION_UPSERTS[dialect] = statement
    return statement


_STATE_COLUMNS = ("profile_id", "purpose", "status", "collected_at", "expires_at", "record_id", "updated_at")


@functools.cache
def _postgresql_projection_upsert() -> Any:
    """The projection upsert as ``INSERT ... SELECT ... FROM json_to_recordset(rows) ON CONFLICT DO UPDATE``: one
    short statement for any number of rows (at most one per profile and purpose)."""
    statement = json_insert(_STATE, _STATE_COLUMNS, name="new_state")
    return statement.on_conflict_do_update(
        index_elements=[_STATE.c.profile_id, _STATE.c.purpose],
        set_={name: statement.excluded[name] for name in _PROJECTION_COLUMNS},
    )


def _state_row(profile_id: str, fact: ConsentFact, now: datetime) -> ConsentState:
    return ConsentState(
        profile_id=profile_id,
        purpose=fact.purpose,
        status=fact.status,
        collected_at=fact.collected_at,
        expires_at=fact.expires_at,
        record_id=int(fact.id),
        updated_at=now,
    )


def _expected_projection(session: Session, profile_id: str | None) -> dict[tuple[str, str], ConsentFact]:
    """The projection a rebuild would produce, streamed profile by profile."""
    query = select(
        ConsentRecord.id,
        ConsentRecord.profile_id,
        ConsentRecord.purpose,
        ConsentRecord.status,
        ConsentRecord.collected_at,
        ConsentRecord.expires_at,
        ConsentRecord.source,
    ).order_by(ConsentRecord.profile_id)
    if profile_id is not None:
        query = query.where(ConsentRecord.profile_id == profile_id)
    expected: dict[tuple[str, str], ConsentFact] = {}
    current: str | None = None
    batch: list[ConsentFact] = []

    def flush(owner: str | None) -> None:
        if owner is not None:
            for purpose, fact in ConsentLedger(batch).latest_by_purpose().items():
                expected[(owner, purpose)] = fact

    for row in session.execute(query.execution_options(yield_per=5000)):
        if row.profile_id != current:
            flush(current)
            current, batch = row.profile_id, []
        batch.append(fact_from_record(row))
    flush(current)
    return expected


def rebuild_consent_state(session: Session, profile_id: str | None = None, *, now: datetime) -> int:
    """Recompute ``consent_state`` from the ledger (one profile, or all). Returns the number of rows written."""
    expected = _expected_projection(session, profile_id)
    statement = delete(ConsentState)
    if profile_id is not None:
        statement = statement.where(ConsentState.profile_id == profile_id)
    session.execute(statement, execution_options={"synchronize_session": False})
    session.expire_all()
    session.add_all(_state_row(owner, fact, now) for (owner, _purpose), fact in sorted(expected.items()))
    session.flush()
    return len(expected)


@dataclass(frozen=True)
class ProjectionMismatch:
    """One (profile, purpose) where ``consent_state`` differs from a rebuild; ``expected``/``actual`` are
    ``"<status> record <id>"`` or None when the row is (or should be) absent."""

    profile_id: str
    purpose: str
    expected: str | None
    actual: str | None

    def __str__(self) -> str:
        return f"{self.profile_id} {self.purpose}: projection has {self.actual}, the ledger says {self.expected}"


def _describe(status: str, record_id: object, collected_at: datetime, expires_at: datetime | None) -> str:
    until = f" until {expires_at.isoformat()}" if expires_at else ""
    return f"{status} record {record_id} collected {collected_at.isoformat()}{until}"


def verify_projection(session: Session) -> list[ProjectionMismatch]:
    """Compare ``consent_state`` with a rebuild from the ledger; [] when they are equal."""
    expected = {
        key: _describe(f.status, f.id, f.collected_at, f.expires_at)
        for key, f in _expected_projection(session, None).items()
    }
    actual = {
        (row.profile_id, row.purpose): _describe(row.status, row.record_id, row.collected_at, row.expires_at)
        for row in session.execute(
            select(
                ConsentState.profile_id,
                ConsentState.purpose,
                ConsentState.status,
                ConsentState.record_id,
                ConsentState.collected_at,
                ConsentState.expires_at,
            )
        )
    }
    return [
        ProjectionMismatch(profile_id=key[0], purpose=key[1], expected=expected.get(key), actual=actual.get(key))
        for key in sorted(expected.keys() | actual.keys())
        if expected.get(key) != actual.get(key)
    ]


# ----------------------------------------------------------------------------------------------------------
# Reads (a person's whole cluster)
# ----------------------------------------------------------------------------------------------------------


def record_merge_denials(
    session: Session,
    *,
    winner_id: str,
    winner_members: Sequence[str],
    loser_id: str,
    loser_members: Sequence[str],
    now: datetime,
) -> list[ConsentRecord]:
    """Persist what merging two people's profiles means for consent (DESIGN §4.2: the most restrictive recent
    decision wins), as new ledger rows on the winner, written once at merge time.

    Where one side's latest decision for a purpose is a denial and the other side granted later
    (``policy.merge_denials``), the union of the two ledgers would let that grant — given on what we only now know
    is the same person's other device — override the denial. A ``source="merge"`` denial at the grant's instant
    restores it; its proof names the denial it re-asserts and the merged profile. Decisions the person makes after
    that instant simply win again, whichever profile of the cluster they are recorded on. Called by identity
    resolution before the loser's rows are re-pointed; ``*_members`` are the two clusters' profile ids.
    """

    def facts(ids: Sequence[str]) -> list[ConsentFact]:
        rows = session.scalars(select(ConsentRecord).where(ConsentRecord.profile_id.in_(list(ids))))
        return [fact_from_record(row) for row in rows]

    derived = merge_denials(facts(winner_members), facts(loser_members))
    if not derived:
        return []
    records = [
        ConsentRecord(
            profile_id=winner_id,
            purpose=fact.purpose,
            status=DENIED,
            collected_at=fact.collected_at,
            received_at=now,
            source="merge",
            # A profile is merged away at most once, so this is unique per (purpose, winner).
            source_event_id=f"merge:{loser_id}",
            expires_at=fact.expires_at,
            proof={"merged_profile_id": loser_id, "denial_record_id": _record_id(fact)},
        )
        for fact in derived
    ]
    session.add_all(records)
    session.flush()
    purposes = [record.purpose for record in records]
    state = {
        row.purpose: ConsentFact(
            id=row.record_id,
            purpose=row.purpose,
            status=row.status,
            collected_at=row.collected_at,
            expires_at=row.expires_at,
        )
        for row in session.scalars(
            select(ConsentState).where(ConsentState.profile_id == winner_id, ConsentState.purpose.in_(purposes))
        )
    }
    _advance_projection(session, winner_id, records, now, state)
    return records


def _record_id(fact: ConsentFact) -> int | str:
    # Merge-derived denials carry "merge:<id of the denial they re-assert>": that denial is the evidence.
    if isinstance(fact.id, str) and fact.id.startswith("merge:"):
        tail = fact.id.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else fact.id
    return fact.id


def current_consent(session: Session, profile_id: str, now: datetime) -> dict[str, dict[str, Any]]:
    """The decision in force at ``now`` per purpose for the person ``profile_id`` belongs to.

    ``{purpose: {"status", "collected_at", "expires_at", "record_id", "source"}}``; purposes never decided, or
    whose decision expired, are absent. Across a merged cluster the most restrictive recent decision wins; such a
    derived denial reports the denial's record and ``source`` ``"merge"``. Raises ProfileNotFound.
    """
    state = load_ledger(session, profile_id).state(now)
    return {
        purpose: {
            "status": fact.status,
            "collected_at": fact.collected_at,
            "expires_at": fact.expires_at,
            "record_id": _record_id(fact),
            "source": fact.source,
        }
        for purpose, fact in sorted(state.items())
    }


def consent_at(session: Session, profile_id: str, purpose: str, when: datetime) -> ConsentFact | None:
    """The decision for ``purpose`` in force at ``when`` (None: never decided, or expired by then)."""
    return load_ledger(session, profile_id, purpose).at(purpose, when)


def withdrawn_since(
    session: Session, profile_id: str, purpose: str, since: datetime, until: datetime
) -> ConsentFact | None:
    """The first denial of ``purpose`` collected in ``(since, until]`` (see ``ConsentLedger.withdrawn_since``)."""
    return load_ledger(session, profile_id, purpose).withdrawn_since(purpose, since, until)
