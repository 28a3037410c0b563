"""Event ingestion into the outbox, and the stored event as the API shows it (CONTRACT.md, events).

`ingest_events` validates a batch event by event (`hub.events.schemas` for the structure, identity preparation for
the `user` values and the region), then plans the identities of all valid events with one lookup
(`hub.profiles.services.plan_many`) and writes their `Event` rows with one INSERT:

* when resolution writes nothing (returning people, anonymous browsers, erased people — most traffic), the
  events are inserted with ON CONFLICT (event_id) DO NOTHING: no SAVEPOINT, no look-up of stored ids; a skipped
  event_id is a duplicate;
* otherwise stored event_ids are looked up first, and resolution (`complete_many`: new people written together)
  and the insert run inside one SAVEPOINT. When a concurrent request stored one of the event_ids first, that
  SAVEPOINT is rolled back and the events are stored again one SAVEPOINT each, so that event is reported as a
  duplicate and never undoes the others. A deadlock or lock timeout rolls the SAVEPOINT back and retries the batch
  (bounded).

The caller owns the commit (the request's single commit point): the API answers 202 only after that commit
succeeded, so every "accepted" result is durable.

Decisions:

* A rejected event stores nothing — no profile, no identity, no event. That includes an event whose `user` has a
  field that cannot be normalized: the sender learns which field (`user.phone`) and resends, rather than hub
  silently forwarding less than the sender believes.
* `event_id` repeated (already stored, or earlier in the same batch) → `duplicate`, nothing changes, even if the
  repeat carries different data (at-least-once senders retry with the same id; the first copy wins).
* fbc: a `user.fbc` wins; otherwise an `fbclid` in `source_url` becomes `fb.1.<occurred_at ms>.<fbclid>` (Meta
  [FBC], capi.md §5: subdomain index 1 server-side, creation time = when the click was first seen).
* Browser posts (header `X-Hub-Client: browser`, sent by `static/hub.js`): a missing `user.ip_address` /
  `user.user_agent` is taken from the request (remote address, User-Agent header). Server-to-server posts never
  get the backend's own address or agent attached. `context.gpc` wins over the `Sec-GPC: 1` header.
* Identifiers, IP and user agent are stored only as one Fernet token (`user_data_encrypted`: JSON
  `{"hashes": {em, ph, ...}, "browser": {fbp, fbc, client_ip_address, client_user_agent}}`), never in columns.
  For a person on the erasure suppression list nothing about them is kept: the event is stored (so the sender
  sees it blocked, and a retry stays a duplicate) without user data, and will be decided `suppressed`.
* `region` is the validated `context.region`; when absent the decision falls back to the profile's region at
  decision time (DESIGN §4.3), so it is not copied here.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, String, Text, bindparam, insert, select, true
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.db import UTCDateTime, is_lock_conflict, json_document, json_recordset
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.events.schemas import ParsedEvent, parse_event
from hub.profiles.identifiers import identity_policy
from hub.profiles.normalize import fbc_from_url
from hub.profiles.services import (
    BatchPlan,
    PreparedIdentity,
    Resolution,
    complete_many,
    insert_ignoring_conflicts,
    plan_many,
    prepare_identity,
    refresh_last_seen,
    resolve_prepared,
)

MAX_BATCH = 1000
ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
# Identity resolution journals merges with the source that caused them.
RESOLUTION_SOURCE = "events"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestFacts:
    """What the HTTP request itself says about the person, used only for browser posts (see module docstring)."""

    browser: bool = False
    remote_addr: str | None = None
    user_agent: str | None = None
    sec_gpc: bool = False


@dataclass(frozen=True)
class IngestResult:
    index: int
    event_id: str | None
    status: str  # "accepted" | "duplicate" | "rejected"
    profile_id: str | None = None
    errors: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "event_id": self.event_id,
            "status": self.status,
            "profile_id": self.profile_id,
            "errors": dict(self.errors),
        }


@dataclass
class _Candidate:
    index: int
    event_id: str
    parsed: ParsedEvent
    prepared: PreparedIdentity
    gpc: bool | None


def _user_with_request_facts(parsed: ParsedEvent, request: RequestFacts) -> dict[str, Any]:
    user = dict(parsed.user)
    if user.get("fbc") is None and parsed.source_url:
        fbc = fbc_from_url(parsed.source_url, parsed.occurred_at)
        if fbc is not None:
            user["fbc"] = fbc
    if request.browser:
        if user.get("ip_address") is None and request.remote_addr:
            user["ip_address"] = request.remote_addr
        if user.get("user_agent") is None and request.user_agent:
            user["user_agent"] = request.user_agent
    return user


def validate_event(
    raw: object, index: int, *, now: datetime, settings: Settings, request: RequestFacts
) -> _Candidate | IngestResult:
    """Parse and prepare one event; a rejected `IngestResult` when anything is wrong."""
    parsed, errors = parse_event(raw, now)
    raw_id = raw.get("event_id") if isinstance(raw, dict) else None
    echo_id = raw_id if isinstance(raw_id, str) else (str(raw_id) if isinstance(raw_id, int) else None)
    if parsed is None:
        return IngestResult(index, echo_id, REJECTED, errors=errors)
    prepared = prepare_identity(_user_with_request_facts(parsed, request), region=parsed.region, settings=settings)
    if prepared.errors:
        return IngestResult(index, parsed.event_id, REJECTED, errors=dict(prepared.errors))
    gpc = parsed.gpc if parsed.gpc is not None else (True if request.sec_gpc else None)
    return _Candidate(index, parsed.event_id or uuid.uuid4().hex, parsed, prepared, gpc)


@functools.cache
def _postgresql_existing_statement() -> Any:
    """The stored copies of a list of event_ids, each probed on its own in a LATERAL subquery: one query text
    for any batch, and one probe of the event_id unique index per id whatever the planner believes about the
    table's size. An ``IN`` list leaves the access path to the planner, which on a young or never-analyzed
    database chose a sequential scan and kept it in the connection's cached generic plan while the table grew
    (tens of milliseconds of server CPU per batch). ``LIMIT 1`` states what the unique constraint guarantees and
    keeps the subquery from being flattened into a join that could be planned as a hash join over the table."""
    wanted = json_recordset("wanted", (("event_id", String()),), parameter="event_ids")
    stored = (
        select(Event.event_id, Event.profile_id).where(Event.event_id == wanted.c.event_id).limit(1).lateral("stored")
    )
    return select(stored.c.event_id, stored.c.profile_id).select_from(wanted.join(stored, true()))


def _existing(session: Session, event_ids: Sequence[str]) -> dict[str, str | None]:
    """event_id → profile_id of those already stored."""
    found: dict[str, str | None] = {}
    postgresql_dialect = session.get_bind().dialect.name == "postgresql"
    for start in range(0, len(event_ids), 500):
        chunk = list(event_ids[start : start + 500])
        if postgresql_dialect:
            document = json_document([{"event_id": event_id} for event_id in chunk])
            rows = session.execute(_postgresql_existing_statement(), {"event_ids": document})
        else:
            rows = session.execute(select(Event.event_id, Event.profile_id).where(Event.event_id.in_(chunk)))
        for row in rows:
            found[row.event_id] = row.profile_id
    return found


def _user_data_token(encryptor: FieldEncryptor, prepared: PreparedIdentity) -> str | None:
    hashes = dict(prepared.normalized.hashes)
    browser = dict(prepared.normalized.browser)
    if not hashes and not browser:
        return None
    return encryptor.encrypt_json({"hashes": hashes, "browser": browser})


def ingest_events(
    session: Session,
    encryptor: FieldEncryptor,
    raw_events: Sequence[object],
    *,
    settings: Settings,
    now: datetime,
    request: RequestFacts | None = None,
) -> list[IngestResult]:
    """Validate, resolve and store each event; one result per input, in input order (see module docstring).

    Flushes only; the caller commits. Raises ValueError for more than MAX_BATCH events (the API answers 413
    before calling).
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    if len(raw_events) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} events per request")
    request = request or RequestFacts()
    grace = timedelta(seconds=settings.consent_grace_seconds)
    results: dict[int, IngestResult] = {}
    candidates: list[_Candidate] = []
    seen_in_batch: dict[str, int] = {}
    for index, raw in enumerate(raw_events):
        checked = validate_event(raw, index, now=now, settings=settings, request=request)
        if isinstance(checked, IngestResult):
            results[index] = checked
        elif checked.event_id in seen_in_batch:
            results[index] = IngestResult(index, checked.event_id, DUPLICATE)
        else:
            seen_in_batch[checked.event_id] = index
            candidates.append(checked)

    policy = identity_policy(settings.extra)
    plan = (
        plan_many(session, encryptor, [c.prepared for c in candidates], settings=settings, now=now, policy=policy)
        if candidates
        else None
    )
    stored_results: list[IngestResult] = []
    if plan is not None and not plan.writes:
        stored_results = _store_without_resolution_writes(session, encryptor, candidates, plan, now, grace)
    elif plan is not None:
        stored = _existing(session, [c.event_id for c in candidates])
        new: list[_Candidate] = []
        for candidate in candidates:
            if candidate.event_id in stored:
                results[candidate.index] = IngestResult(
                    candidate.index, candidate.event_id, DUPLICATE, profile_id=stored[candidate.event_id]
                )
            else:
                new.append(candidate)
        # The plan stays valid when no event was dropped as a duplicate: nothing was written since it was read.
        reuse = plan if len(new) == len(candidates) else None
        stored_results = _store_retrying_lock_conflicts(session, encryptor, new, settings, now, grace, policy, reuse)
    first_profile: dict[str, str | None] = {}
    for result in stored_results:
        results[result.index] = result
        first_profile[result.event_id or ""] = result.profile_id
    # In-batch repeats report the profile of the copy that was stored.
    for index, result in results.items():
        if result.status == DUPLICATE and result.profile_id is None and result.event_id in first_profile:
            results[index] = IngestResult(index, result.event_id, DUPLICATE, profile_id=first_profile[result.event_id])
    return [results[index] for index in range(len(raw_events))]


# Attempts of the batch when PostgreSQL picks it as a deadlock victim or a lock wait times out; the batch is
# idempotent (event_id), and its SAVEPOINT rollback releases what it locked, so the other transaction proceeds.
LOCK_CONFLICT_ATTEMPTS = 3
LOCK_CONFLICT_BACKOFF_SECONDS = 0.02


# Columns taken from each event row; the others are the same for the whole batch (see _insert_events).
_ROW_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("event_id", String()),
    ("source_event", String()),
    ("profile_id", String()),
    ("occurred_at", UTCDateTime()),
    ("action_source", String()),
    ("source_url", Text()),
    ("user_data_encrypted", Text()),
    ("region", String()),
    ("gpc", Boolean()),
    ("suppressed", Boolean()),
    ("properties", postgresql.JSONB()),
)
_BATCH_COLUMNS = ("received_at", "status", "attempts", "next_attempt_at", "unknown_outcome_resends")


@functools.cache
def _postgresql_events_insert(ignore_conflicts: bool) -> Any:
    """``INSERT INTO events ... SELECT ... FROM json_to_recordset(rows)``: one short statement for any batch size,
    rows in input order (see ``json_recordset``)."""
    rows = json_recordset("new_events", _ROW_COLUMNS)
    values = [rows.c[name] for name, _kind in _ROW_COLUMNS]
    values += [bindparam(name, type_=Event.__table__.c[name].type) for name in _BATCH_COLUMNS]
    columns = [name for name, _kind in _ROW_COLUMNS] + list(_BATCH_COLUMNS)
    statement = postgresql_insert(Event.__table__).from_select(columns, select(*values))
    if ignore_conflicts:
        return statement.on_conflict_do_nothing(index_elements=["event_id"]).returning(Event.event_id)
    return statement


def _insert_events(session: Session, rows: Sequence[dict[str, Any]], *, ignore_conflicts: bool) -> set[str]:
    """Insert the batch's event rows in input order (one statement); with ``ignore_conflicts`` an event_id
    already stored is skipped. The event_ids inserted (all of them without ``ignore_conflicts``)."""
    if not rows:
        return set()
    if session.get_bind().dialect.name == "postgresql" and all(
        row[name] == rows[0][name] for row in rows for name in _BATCH_COLUMNS
    ):
        document = json_document([{name: row[name] for name, _kind in _ROW_COLUMNS} for row in rows])
        params: dict[str, Any] = {"rows": document, **{name: rows[0][name] for name in _BATCH_COLUMNS}}
        result = session.execute(_postgresql_events_insert(ignore_conflicts), params)
        return set(result.scalars()) if ignore_conflicts else {row["event_id"] for row in rows}
    if ignore_conflicts:
        statement = insert_ignoring_conflicts(session, Event.__table__, ("event_id",)).returning(Event.event_id)
        return set(session.scalars(statement, rows))
    session.execute(insert(Event.__table__), rows)
    return {row["event_id"] for row in rows}


def _store_without_resolution_writes(
    session: Session,
    encryptor: FieldEncryptor,
    candidates: Sequence[_Candidate],
    plan: BatchPlan,
    now: datetime,
    grace: timedelta,
) -> list[IngestResult]:
    """The batch creates, attaches and merges nothing (returning people, unknown browsers, erased people): its
    events are inserted with ON CONFLICT (event_id) DO NOTHING, so no SAVEPOINT and no look-up of existing ids
    is needed. An event_id already stored (or being stored by a concurrent request) is skipped and reported as
    a duplicate with the stored copy's profile, and changes nothing: last_seen_at is refreshed only for the
    events that were inserted."""
    answers = [answer for answer in plan.answers if answer is not None]
    rows = [_event_row(encryptor, c, r, now, grace) for c, r in zip(candidates, answers, strict=True)]
    inserted = _insert_events(session, rows, ignore_conflicts=True)
    kept = [index for index, c in enumerate(candidates) if c.event_id in inserted]
    refresh_last_seen(session, plan.touch_ids(kept), now)
    taken = [c.event_id for c in candidates if c.event_id not in inserted]
    stored = _existing(session, taken) if taken else {}
    return [
        IngestResult(c.index, c.event_id, ACCEPTED, r.profile_id)
        if c.event_id in inserted
        else IngestResult(c.index, c.event_id, DUPLICATE, profile_id=stored.get(c.event_id))
        for c, r in zip(candidates, answers, strict=True)
    ]


def _store_retrying_lock_conflicts(
    session: Session,
    encryptor: FieldEncryptor,
    candidates: Sequence[_Candidate],
    settings: Settings,
    now: datetime,
    grace: timedelta,
    policy: Any,
    plan: BatchPlan | None = None,
) -> list[IngestResult]:
    for attempt in range(1, LOCK_CONFLICT_ATTEMPTS + 1):
        try:
            return _store_together(session, encryptor, candidates, settings, now, grace, policy, plan)
        except IntegrityError:
            # Another request stored one of these event_ids after our look-up: redo them one SAVEPOINT each, so
            # that event is reported as a duplicate and the others are kept.
            return [_store(session, encryptor, c, settings, now, grace, policy) for c in candidates]
        except DBAPIError as error:
            # The SAVEPOINT was rolled back with everything the batch wrote or locked; a lock conflict left after
            # the last attempt reaches the web layer, which answers 503 busy_retry (never a 500).
            if not is_lock_conflict(error) or attempt == LOCK_CONFLICT_ATTEMPTS:
                raise
            log.info("event batch retried after a lock conflict (attempt %d): %s", attempt, type(error.orig).__name__)
            plan = None  # read again: the conflicting transaction may have changed what the plan saw
            time.sleep(LOCK_CONFLICT_BACKOFF_SECONDS * attempt * (0.5 + random.random()))  # noqa: S311 (jitter, not a secret)
    raise AssertionError("unreachable")  # pragma: no cover


def _event_row(
    encryptor: FieldEncryptor,
    candidate: _Candidate,
    resolution: Resolution,
    now: datetime,
    grace: timedelta,
) -> dict[str, Any]:
    parsed = candidate.parsed
    return {
        "event_id": candidate.event_id,
        "source_event": parsed.source_event,
        "profile_id": resolution.profile_id,
        "occurred_at": parsed.occurred_at,
        "received_at": now,
        "action_source": parsed.action_source,
        "source_url": parsed.source_url,
        "user_data_encrypted": None if resolution.suppressed else _user_data_token(encryptor, candidate.prepared),
        "region": candidate.prepared.region,
        "gpc": candidate.gpc,
        "suppressed": resolution.suppressed,
        "properties": dict(parsed.properties) if parsed.properties is not None else None,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now + grace,
        "unknown_outcome_resends": 0,
    }


def _store_together(
    session: Session,
    encryptor: FieldEncryptor,
    candidates: Sequence[_Candidate],
    settings: Settings,
    now: datetime,
    grace: timedelta,
    policy: Any,
    plan: BatchPlan | None = None,
) -> list[IngestResult]:
    """The batch path when resolution writes: the batch's identities resolved together (``plan_many`` and
    ``complete_many``: one lookup, new people written together, no SAVEPOINT per person), then every event
    inserted in one statement, all in one SAVEPOINT. ``plan``: a plan read earlier in this transaction, still valid.

    Raises IntegrityError (with the SAVEPOINT rolled back, so nothing of the batch remains) when an event_id was
    taken concurrently; the caller then falls back to one SAVEPOINT per event. Per-event SAVEPOINTs cost two
    round trips each, which is most of an event's cost, so they are only paid when a race actually happened.
    """
    if not candidates:
        return []
    with session.begin_nested():
        if plan is None:
            plan = plan_many(
                session, encryptor, [c.prepared for c in candidates], settings=settings, now=now, policy=policy
            )
        resolutions = complete_many(
            session, encryptor, plan, source=RESOLUTION_SOURCE, settings=settings, now=now, policy=policy
        )
        rows = [_event_row(encryptor, c, r, now, grace) for c, r in zip(candidates, resolutions, strict=True)]
        # Core insert: one multi-row INSERT without the ORM's per-object bookkeeping, in input order.
        _insert_events(session, rows, ignore_conflicts=False)
    return [
        IngestResult(c.index, c.event_id, ACCEPTED, r.profile_id) for c, r in zip(candidates, resolutions, strict=True)
    ]


def _store(
    session: Session,
    encryptor: FieldEncryptor,
    candidate: _Candidate,
    settings: Settings,
    now: datetime,
    grace: timedelta,
    policy: Any,
) -> IngestResult:
    try:
        with session.begin_nested():
            resolution = resolve_prepared(
                session,
                encryptor,
                candidate.prepared,
                source=RESOLUTION_SOURCE,
                settings=settings,
                now=now,
                policy=policy,
            )
            session.execute(insert(Event.__table__), [_event_row(encryptor, candidate, resolution, now, grace)])
    except IntegrityError:
        # Another request stored the same event_id between our look-up and this insert: it is a duplicate.
        # Anything else (a foreign key, a check constraint) is a bug and must not be reported as one.
        existing = session.execute(
            select(Event.event_id, Event.profile_id).where(Event.event_id == candidate.event_id)
        ).first()
        if existing is None:
            raise
        return IngestResult(candidate.index, candidate.event_id, DUPLICATE, profile_id=existing.profile_id)
    return IngestResult(candidate.index, candidate.event_id, ACCEPTED, profile_id=resolution.profile_id)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def event_document(event: Event) -> dict[str, Any]:
    """The stored event as `GET /api/v1/events/{event_id}` shows it: status, the decision explained, delivery.

    Never includes identifiers, IP or user agent (they stay encrypted); `properties` are the sender's own data.
    """
    waiting = None
    if event.decided_at is None and event.status == "pending":
        # Not decided yet (DESIGN §4.4): the scheduler decides once the grace period for late consent is over.
        waiting = (
            f"Not decided yet: consent is evaluated after the grace period, from {_iso(event.next_attempt_at)}."
            if event.next_attempt_at
            else "Not decided yet."
        )
    return {
        "event_id": event.event_id,
        "event": event.source_event,
        "status": event.status,
        "profile_id": event.profile_id,
        "occurred_at": _iso(event.occurred_at),
        "received_at": _iso(event.received_at),
        "action_source": event.action_source,
        "source_url": event.source_url,
        "region": event.region,
        "gpc": event.gpc,
        "suppressed": event.suppressed,
        "decided_at": _iso(event.decided_at),
        "decision": event.decision,
        "waiting": waiting,
        "mapping": None if event.mapping_id is None else {"id": event.mapping_id, "version": event.mapping_version},
        "attempts": event.attempts,
        "next_attempt_at": _iso(event.next_attempt_at),
        "last_error": event.last_error,
        "delivery": {
            "destination_id": event.destination_id,
            "delivered_attempt_id": event.delivered_attempt_id,
            "sent_at": _iso(event.sent_at),
            "unknown_outcome_resends": event.unknown_outcome_resends,
        },
    }


def find_event(session: Session, event_id: str) -> Event | None:
    return session.execute(select(Event).where(Event.event_id == event_id)).scalar_one_or_none()
