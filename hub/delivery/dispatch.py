"""The scheduler's dispatch: claim due events, decide them again, send them to Meta, record what happened.

One batch (``Dispatcher.dispatch``) is three kinds of short transactions; none of them holds rows of the batch
it sends open across that batch's HTTP request:

1. **claim + prepare** (one transaction): select due events — ``pending``/``retrying``, ``next_attempt_at <= now``,
   no live lease, not routed to a paused destination — oldest first, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL
   (several workers share the queue; SQLite's ``BEGIN IMMEDIATE`` serializes its single worker). Each event is
   decided again (as ``decide_stored_event`` decides, with the people of the whole batch read at once: the consent
   grace period → ``wait``; consent withdrawn → ``blocked``),
   mapped, its identifiers assembled and its CAPI event built; what Meta would reject is blocked with the
   reason (``payload_rejected:<code>``). Events to send get a lease (``lease_owner``, ``lease_expires_at``) and
   the transaction commits *before* anything is sent. On PostgreSQL the next batch's claim is prepared while the
   previous request is in flight and commits once that request is recorded (see ``Dispatcher``).
2. **send**: per destination, at most 1,000 events per request, with the worker's ``requests.Session``.
3. **record** (one transaction per request): a ``delivery_attempts`` row and the events' outcome, only for
   events whose lease this worker still holds.

Outcomes (reference/capi.md §9, checklist 25-28):

* success — only when ``events_received`` equals the number sent → ``sent``, ``sent_at``,
  ``delivered_attempt_id``;
* transient / throttle → ``retrying``, ``attempts + 1``, ``next_attempt_at = now + next_delay(...)`` (Meta's usage
  headers as a floor), until the retry would leave the 7-day window (``give_up_at``) → ``dead``. After a throttle
  the destination is left alone until the wait is over (Meta: continued calls extend the block, §10);
* code 100 → the batch is split in halves and each half sent again, until the invalid events are alone; a single
  invalid event is ``dead`` with Meta's error, the others are delivered;
* 190/102/104 (and missing permissions) → the destination is paused with the reason, its events are left as
  they were (``pending``/``retrying``, lease released) and go out again once it is resumed;
* other permanent errors → ``dead`` with the error and the payload (encrypted) for the dead-letter queue.

Crash safety: a lease that expired means a worker died (or stalled) after committing step 1 — it may or may not
have sent. Such an event is claimed again, resent with the same ``event_id`` and counted in
``unknown_outcome_resends`` (and the metric). A worker only records outcomes for events it still holds, so a
stalled worker cannot overwrite the newer outcome of the worker that took over.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    Row,
    Text,
    Update,
    any_,
    bindparam,
    cast,
    column,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, sessionmaker

from hub.config import Settings
from hub.consent.policy import ConsentLedger
from hub.db import UTCDateTime, session_scope, utcnow
from hub.delivery.assemble import PersonIdentifiers, capi_input, ldu_from_decision, merge_identifiers
from hub.delivery.backoff import give_up_at, next_delay
from hub.delivery.client import CapiClient, CapiResponse
from hub.delivery.destinations import destination_credentials, effective_test_event_code, pause_destination
from hub.delivery.errors import ErrorClass
from hub.delivery.ledgers import load_people_consent
from hub.delivery.models import DeliveryAttempt, Destination
from hub.delivery.options import DeliveryOptions, delivery_options
from hub.delivery.payload import MAX_EVENTS_PER_REQUEST, PayloadRejected, build_capi_event, build_request_body
from hub.encryption import FieldEncryptor
from hub.events.models import Event
from hub.mappings.apply import apply_mapping
from hub.mappings.models import EventMapping
from hub.mappings.services import load_mapping_definitions
from hub.metrics import Metrics
from hub.profiles.models import Identity, Profile
from hub.profiles.services import profile_traits
from hub.rules.decision import decide
from hub.rules.regions import RuleTable
from hub.rules.services import decision_changes, facts_of, load_rules

log = logging.getLogger(__name__)

DUE_STATUSES = ("pending", "retrying")
# An event that cannot be routed (no destination configured) is looked at again after this long.
NO_DESTINATION_RETRY = timedelta(minutes=1)

_events = Event.__table__
# The ledger of an event without a person (or whose person is gone): nothing on record.
_NO_CONSENT = ConsentLedger(())


@dataclass
class RunSummary:
    """What one batch or run did, in events (``requests`` counts HTTP requests to Meta)."""

    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    dead: int = 0
    blocked: int = 0
    waiting: int = 0
    held: int = 0  # destination paused or throttled, or no destination: left due later, untouched
    requests: int = 0
    unknown_outcome_resends: int = 0

    def add(self, other: RunSummary) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class DeliveryContext:
    """Everything one worker needs; one per worker thread or process (it owns one ``requests.Session``)."""

    sessionmaker: sessionmaker[Session]
    settings: Settings
    encryptor: FieldEncryptor
    metrics: Metrics
    client: CapiClient
    options: DeliveryOptions
    dialect: str
    worker_id: str = field(default_factory=lambda: new_worker_id())
    rng: random.Random = field(default_factory=random.Random)
    # destination id → moment before which nothing is sent there (after Meta throttled us).
    throttled_until: dict[int, datetime] = field(default_factory=dict)
    # Destinations paused by an answer during the current batch and during the batch before it (the current batch
    # may have been claimed while that answer was awaited): their events are released, not sent.
    paused_now: set[int] = field(default_factory=set)
    paused_before: set[int] = field(default_factory=set)

    def is_paused(self, destination_id: int) -> bool:
        return destination_id in self.paused_now or destination_id in self.paused_before

    def close(self) -> None:
        self.client.close()


def new_worker_id() -> str:
    return f"{socket.gethostname()[:30]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def delivery_context(app: Flask, *, client: CapiClient | None = None, worker_id: str | None = None) -> DeliveryContext:
    """A new context on the app's database, settings, encryptor and metrics (the caller closes it)."""
    settings: Settings = app.extensions["hub.settings"]
    options = delivery_options(settings)
    engine = app.extensions["hub.engine"]
    context = DeliveryContext(
        sessionmaker=app.extensions["hub.sessionmaker"],
        settings=settings,
        encryptor=app.extensions["hub.encryptor"],
        metrics=app.extensions["hub.metrics"],
        client=client or CapiClient(settings.graph_url, timeout=options.request_timeout),
        options=options,
        dialect=engine.dialect.name,
    )
    if worker_id is not None:
        context.worker_id = worker_id
    return context


def run_once(
    app_or_context: Flask | DeliveryContext, *, now: datetime | None = None, limit: int | None = None
) -> RunSummary:
    """Process due events batch after batch until none is due (or ``limit`` events were claimed).

    ``now`` fixes the clock for the whole run (tests); by default each batch reads the clock.
    """
    if isinstance(app_or_context, DeliveryContext):
        context, owned = app_or_context, False
    else:
        context, owned = delivery_context(app_or_context), True
    total = RunSummary()
    dispatcher = Dispatcher(context, on_done=total.add)
    try:
        claimed = 0
        while limit is None or claimed < limit:
            size = context.options.batch_size
            if limit is not None:
                size = min(size, limit - claimed)
            count = dispatcher.dispatch(now=now or utcnow(), size=size)
            claimed += count
            if count < size:
                break
        dispatcher.drain()
    finally:
        dispatcher.close()
        if owned:
            context.close()
    return total


# -- one batch ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Target:
    id: int
    name: str
    pixel_id: str
    api_version: str
    access_token: str
    app_secret: str | None
    test_event_code: str | None


@dataclass
class _Outgoing:
    id: int
    event_id: str
    received_at: datetime
    occurred_at: datetime
    attempts: int
    payload: dict[str, Any]


@dataclass
class _Batch:
    """Claimed events, decided and built; what changes for each is written when the claim commits."""

    now: datetime
    summary: RunSummary
    changes: list[dict[str, Any]] = field(default_factory=list)
    groups: dict[int, list[_Outgoing]] = field(default_factory=dict)
    targets: dict[int, _Target] = field(default_factory=dict)
    # Counted once the claim is committed (a claim that is rolled back and taken again must not count twice).
    decisions: Counter[tuple[str, str]] = field(default_factory=Counter)
    no_token: set[int] = field(default_factory=set)  # destinations to pause: no access token is set
    missing_destination: int = 0


class Dispatcher:
    """Dispatches batch after batch for one worker.

    On PostgreSQL the next batch is claimed, decided and built while the previous batch's request is in flight
    (the worker's CPU work overlaps the wait for Meta and the database). Its claim transaction stays open, holding
    the events' row locks (other workers skip them), and commits — writing the decisions and leases — only after the
    previous batch is sent and recorded, right before its own request: an event is leased only once it is about to
    be sent, so a crash never leaves a claimed-but-unsent batch whose resend would count as an unknown outcome.
    If the previous batch takes longer than ``PREPARED_WAIT``, the prepared claim is rolled back (nothing of it was
    written) and taken again afterwards, so row locks are never held for long and decisions stay fresh.

    The claim transaction then belongs to the sending thread: it writes, commits, sends and records; the claiming
    thread never touches a batch again once it has handed it over. SQLite (one worker, one writer) claims, sends
    and records one batch after the other.
    """

    def __init__(self, context: DeliveryContext, *, on_done: Callable[[RunSummary], None] | None = None) -> None:
        self.context = context
        self.on_done = on_done
        self.pipelined = context.dialect == "postgresql"
        self._in_flight: Future[RunSummary] | None = None

    def dispatch(self, *, now: datetime, size: int | None = None) -> int:
        """Claim up to ``size`` due events and send them (on PostgreSQL: hand them to the sending thread);
        returns how many were claimed."""
        context = self.context
        size = size or context.options.batch_size
        if not self.pipelined:
            with session_scope(context.sessionmaker) as session:
                batch = _claim(context, session, now, size)
                _write_claim(context, session, batch)
            _claimed(context, batch)
            self._done(_send(context, batch))
            return batch.summary.claimed
        while True:
            session = context.sessionmaker()
            handed_over = False
            try:
                batch = _claim(context, session, now, size)
                if batch.summary.claimed and not self._previous_done(PREPARED_WAIT):
                    log.info(
                        "the previous batch is still in flight after %.0f s: claim taken again later", PREPARED_WAIT
                    )
                    session.rollback()  # let go of the rows, take them again after that batch
                    self.drain()
                    continue
                self.drain()  # the previous batch is sent and recorded (or its error is raised here)
                if not batch.summary.claimed:
                    session.commit()
                    return 0
                self._in_flight = _in_thread(_commit_and_send, context, session, batch)
                handed_over = True
                return batch.summary.claimed
            finally:
                if not handed_over:
                    session.close()  # rolls back whatever was not committed: nothing of this claim was written

    def _previous_done(self, timeout: float) -> bool:
        if self._in_flight is None:
            return True
        return not wait([self._in_flight], timeout=timeout).not_done

    def drain(self) -> None:
        """Wait for the batch in flight; raises what went wrong with it."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None:
            self._done(in_flight.result())

    def _done(self, summary: RunSummary) -> None:
        if self.on_done is not None:
            self.on_done(summary)

    def close(self) -> None:
        """Finish the batch in flight (its errors are logged: the caller is already leaving)."""
        try:
            self.drain()
        except Exception:
            log.exception("the last batch failed")


def _in_thread(function: Callable[..., RunSummary], *args: Any) -> Future[RunSummary]:
    """Run ``function`` in a new daemon thread (one per batch, one at a time). A daemon thread, unlike an executor's,
    never holds up interpreter exit: a batch cut short there is a crash like any other (its leases expire)."""
    future: Future[RunSummary] = Future()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(function(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, name="hub-sender", daemon=True).start()
    return future


# How long a prepared claim (rows locked, nothing written) waits for the previous batch before it is rolled back.
PREPARED_WAIT = 5.0


def _commit_and_send(context: DeliveryContext, session: Session, batch: _Batch) -> RunSummary:
    """In the sending thread: write and commit the claim prepared by the claiming thread, then send it."""
    try:
        _write_claim(context, session, batch)
        session.commit()
    finally:
        session.close()
    _claimed(context, batch)
    return _send(context, batch)


def _send(context: DeliveryContext, batch: _Batch) -> RunSummary:
    """Send a committed claim, chunk by chunk, and record the outcomes."""
    now, summary = batch.now, batch.summary
    # A destination paused by an answer to the previous batch may have been claimed before that answer came.
    context.paused_before, context.paused_now = context.paused_now, set()
    for destination_id, outgoing in batch.groups.items():
        target = batch.targets[destination_id]
        for start in range(0, len(outgoing), MAX_EVENTS_PER_REQUEST):
            chunk = outgoing[start : start + MAX_EVENTS_PER_REQUEST]
            held_until = context.throttled_until.get(destination_id)
            if context.is_paused(target.id):
                _release(context, chunk, next_attempt_at=None)
                summary.held += len(chunk)
                continue
            if held_until is not None and held_until > now:
                _release(context, chunk, next_attempt_at=held_until)
                summary.held += len(chunk)
                continue
            _deliver(context, target, chunk, now, summary, renew=False)
    context.throttled_until = {k: v for k, v in context.throttled_until.items() if v > now}
    return summary


# What the batch reads of a claimed event (not its stored decision, last error or dead-letter payload: they are
# only written, and decoding them for every event costs time).
_CLAIMED_COLUMNS = tuple(
    _events.c[name]
    for name in (
        "id",
        "event_id",
        "source_event",
        "profile_id",
        "occurred_at",
        "received_at",
        "action_source",
        "source_url",
        "user_data_encrypted",
        "region",
        "gpc",
        "suppressed",
        "properties",
        "status",
        "attempts",
        "destination_id",
        "lease_owner",
        "unknown_outcome_resends",
    )
)


def _due(now: datetime, paused: Sequence[int]) -> list[ColumnElement[bool]]:
    conditions = [
        _events.c.status.in_(DUE_STATUSES),
        _events.c.next_attempt_at <= now,
        or_(_events.c.lease_expires_at.is_(None), _events.c.lease_expires_at <= now),
    ]
    if paused:
        conditions.append(or_(_events.c.destination_id.is_(None), _events.c.destination_id.not_in(paused)))
    return conditions


def _claim_query(now: datetime, paused: Sequence[int], size: int, dialect: str) -> Any:
    # Core rows, not ORM entities: the batch's changes are written back in a few UPDATEs.
    query = select(*_CLAIMED_COLUMNS).where(*_due(now, paused))
    query = query.order_by(_events.c.next_attempt_at, _events.c.id).limit(size)
    if dialect == "postgresql":
        # Several workers share the queue: each takes rows nobody else has locked (DESIGN §4.6).
        query = query.with_for_update(skip_locked=True, of=_events)
    return query


def _select_due(session: Session, now: datetime, paused: Sequence[int], size: int, dialect: str) -> list[Row[Any]]:
    """The due events of a claim, locked by the caller's transaction.

    On PostgreSQL, ``FOR UPDATE SKIP LOCKED`` also keeps a lock on a row it does not return: one that another
    worker's claim committed while this statement ran (PostgreSQL locks the row, re-checks the conditions, and
    skips it). That worker's own outcome UPDATE then waits until this transaction ends, and a prepared claim only
    ends after this worker's previous request: two workers can wait on each other (``PREPARED_WAIT`` breaks it).
    So the select runs in a savepoint that is rolled back, releasing every lock it took, and exactly the rows it
    returned are locked again by id (those another worker took in between are left to it, and the rest of the
    batch is selected again).
    """
    if dialect != "postgresql":
        return list(session.execute(_claim_query(now, paused, size, dialect)))
    events: list[Row[Any]] = []
    for _ in range(CLAIM_ROUNDS):
        query = _claim_query(now, paused, size - len(events), dialect)
        if events:  # rows this transaction holds are not locked to itself
            query = query.where(~_ids_match([e.id for e in events], dialect))
        savepoint = session.begin_nested()
        found = list(session.execute(query))
        savepoint.rollback()
        if not found:
            break
        # The rows are read again under their lock: between the savepoint and here another worker may have taken
        # one, changed it (attempts, lease) and let it go, so only what is read locked is what this claim decides on.
        locked = {
            row.id: row
            for row in session.execute(
                select(*_CLAIMED_COLUMNS)
                .where(_ids_match([e.id for e in found], dialect), *_due(now, paused))
                .with_for_update(skip_locked=True, of=_events)
            )
        }
        events.extend(locked[event.id] for event in found if event.id in locked)  # oldest first, as selected
        if len(locked) == len(found):
            break  # nothing was lost to another worker: this is all there is (or all that was asked)
    return events


# A claim that loses rows to another worker between its select and its lock selects again for the rest, a few times.
CLAIM_ROUNDS = 4


def _claim(context: DeliveryContext, session: Session, now: datetime, size: int) -> _Batch:
    """Select and lock due events (in the caller's transaction), decide and build them; nothing is written yet."""
    batch = _Batch(now=now, summary=RunSummary())
    summary, changes, groups, targets = batch.summary, batch.changes, batch.groups, batch.targets
    destinations = {d.id: d for d in session.scalars(select(Destination))}
    paused = [d.id for d in destinations.values() if d.status == "paused"]
    events = _select_due(session, now, paused, size, context.dialect)
    summary.claimed = len(events)
    if not events:
        return batch
    # Loaded once per batch: rules and mappings do not change within a batch; each region's rule is selected once.
    rules = RuleTable(load_rules(session))
    mappings = load_mapping_definitions(session)
    mapping_destinations = {
        row.id: row.destination_id for row in session.execute(select(EventMapping.id, EventMapping.destination_id))
    }
    default = next((d for d in destinations.values() if d.is_default), None)
    profile_ids = {e.profile_id for e in events if e.profile_id}
    consent = load_people_consent(session, profile_ids)
    people = _people(session, context.encryptor, profile_ids)
    grace = timedelta(seconds=context.settings.consent_grace_seconds)
    # Nothing is written per event: every event's changed columns are collected and written when the claim is,
    # rows with the same changed columns in one UPDATE (the rows are locked by the claim).
    with session.no_autoflush:
        for event in events:
            stale_lease = event.lease_owner is not None
            change: dict[str, Any] = {"id": event.id, "lease_owner": None, "lease_expires_at": None}
            changes.append(change)
            person = consent.get(event.profile_id) if event.profile_id is not None else None
            facts = facts_of(event, person.region if person is not None else None)
            decision = decide(facts, person.ledger if person else _NO_CONSENT, rules, mappings, now, grace)
            batch.decisions[(decision.outcome, decision.reason_code)] += 1
            change.update(
                decision_changes(
                    decision,
                    received_at=event.received_at,
                    now=now,
                    grace=grace,
                    mapping_destination=mapping_destinations.get,
                )
            )
            if decision.outcome == "wait":
                summary.waiting += 1
                continue
            if decision.outcome == "block":
                summary.blocked += 1
                continue
            destination_id = change.get("destination_id", event.destination_id)
            destination = destinations.get(destination_id) if destination_id is not None else default
            if destination is None:
                # Not routable: nothing configured yet. Kept (not lost) and looked at again shortly.
                change["next_attempt_at"] = now + NO_DESTINATION_RETRY
                change["last_error"] = {
                    "reason": "no_destination",
                    "message": "no destination is configured for this event (add one with `hub destination add`)",
                    "at": _iso(now),
                }
                batch.missing_destination += 1
                summary.held += 1
                continue
            change["destination_id"] = destination.id
            if destination.status == "paused" or destination.id in batch.no_token:
                summary.held += 1
                continue
            held_until = context.throttled_until.get(destination.id)
            if held_until is not None and held_until > now:
                change["next_attempt_at"] = held_until
                summary.held += 1
                continue
            payload = _build(context, event, change, mappings, people, batch)
            if payload is None:
                continue
            if destination.id not in targets:
                target = _target(context, destination)
                if target is None:
                    batch.no_token.add(destination.id)  # paused when the claim is written
                    summary.held += 1
                    continue
                targets[destination.id] = target
            if stale_lease:
                # Claimed before by a worker whose lease ran out: it may have sent this event. Resent with the same
                # event_id; counted so an operator sees it (Meta does not dedup server events, capi.md §8).
                change["unknown_outcome_resends"] = event.unknown_outcome_resends + 1
                summary.unknown_outcome_resends += 1
            change["lease_owner"] = context.worker_id
            change["lease_expires_at"] = None  # set when the claim is written: the lease runs from then
            groups.setdefault(destination.id, []).append(
                _Outgoing(event.id, event.event_id, event.received_at, event.occurred_at, event.attempts, payload)
            )
    return batch


def _write_claim(context: DeliveryContext, session: Session, batch: _Batch) -> None:
    """Write a claim's decisions and leases (in its transaction, which the caller commits right before sending)."""
    for destination_id in sorted(batch.no_token):
        reason = "no access token is set; add one and resume the destination"
        pause_destination(session, destination_id, reason, now=batch.now)
    # The lease runs from now (a prepared claim may have waited for the previous batch), never from before ``now``.
    expires = max(batch.now, utcnow()) + timedelta(seconds=context.options.lease_seconds)
    for change in batch.changes:
        if change["lease_owner"] is not None:
            change["lease_expires_at"] = expires
    _write_changes(session, batch.changes, context.dialect)


def _claimed(context: DeliveryContext, batch: _Batch) -> None:
    """Metrics and warnings of a committed claim."""
    for (outcome, reason), count in batch.decisions.items():
        context.metrics.decisions.labels(outcome=outcome, reason=reason).inc(count)
    if batch.summary.unknown_outcome_resends:
        context.metrics.unknown_outcome_resends.inc(batch.summary.unknown_outcome_resends)
    if batch.missing_destination:
        log.warning("%d event(s) are waiting for a destination: none is configured", batch.missing_destination)


def _write_changes(session: Session, changes: Sequence[dict[str, Any]], dialect: str) -> None:
    """One UPDATE per set of changed columns (a batch has a handful: sent, blocked, waiting...).

    PostgreSQL gets the rows as one JSON document joined to the events by ``json_populate_recordset``: one
    parameter and one statement to parse, plan and run instead of one per event. SQLite runs an executemany UPDATE
    (no round trips there).
    """
    by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for change in changes:
        by_columns.setdefault(tuple(sorted(change)), []).append(change)
    for columns, rows in by_columns.items():
        if dialect == "postgresql" and not any(
            row[name] is None for name in _JSON_COLUMNS.intersection(columns) for row in rows
        ):
            session.execute(_update_from_json(columns), {"rows": _rows_json(columns, rows)})
            continue
        values = {name: bindparam(f"v_{name}", type_=_events.c[name].type) for name in columns if name != "id"}
        params = [{f"v_{name}": value for name, value in row.items()} for row in rows]
        session.execute(update(_events).where(_events.c.id == bindparam("v_id")).values(values), params)


# A JSON column set to None is stored as JSON null by SQLAlchemy but would become SQL NULL through a record:
# such rows take the executemany path.
_JSON_COLUMNS = frozenset(name for name, col in _events.c.items() if isinstance(col.type, JSON))
_DATETIME_COLUMNS = frozenset(name for name, col in _events.c.items() if isinstance(col.type, UTCDateTime))
_PG_DIALECT = postgresql.dialect()
_BIGINT_ARRAY = postgresql.ARRAY(BigInteger)


def _rows_json(columns: tuple[str, ...], rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a JSON array, escaped to ASCII like SQLAlchemy's own JSON parameters; datetimes as ISO 8601 with
    their UTC offset (exact to the microsecond).

    Not ``hub.db.json_document``: the JSON columns' values are escaped as SQLAlchemy's JSON type escapes them on
    the per-row path, and only datetime columns are converted (a datetime inside a JSON value fails here as it
    would per row)."""
    times = _DATETIME_COLUMNS.intersection(columns)
    if times:
        bind = UTCDateTime().process_bind_param  # the column type's own check: aware datetimes only
        rows = [
            {**row, **{name: bind(row[name], _PG_DIALECT).isoformat() for name in times if row[name] is not None}}
            for row in rows
        ]
    return json.dumps(rows, separators=(",", ":"), check_circular=False)


@functools.cache
def _update_from_json(columns: tuple[str, ...]) -> Update:
    """``UPDATE events SET c = v.c, ... FROM json_populate_recordset(NULL::events, :rows) AS v WHERE
    events.id = v.id``: each JSON value is converted to its column's type by PostgreSQL itself."""
    rows = func.json_populate_recordset(
        literal_column("NULL::events"), cast(bindparam("rows", type_=Text), JSON)
    ).table_valued(*(column(name, _events.c[name].type) for name in columns))
    v = rows.alias("v")
    return update(_events).where(_events.c.id == v.c.id).values({name: v.c[name] for name in columns if name != "id"})


def _ids_match(ids: Sequence[int], dialect: str) -> ColumnElement[bool]:
    """``events.id`` is one of ``ids``: ``= ANY(array)`` on PostgreSQL, a single parameter however many ids
    (an IN list of a thousand placeholders costs the driver more to parse than the database to run)."""
    if dialect == "postgresql":
        return _events.c.id == any_(bindparam("ids", list(ids), type_=_BIGINT_ARRAY))
    return _events.c.id.in_(ids)


def _target(context: DeliveryContext, destination: Destination) -> _Target | None:
    token, secret = destination_credentials(context.encryptor, destination)
    if not token:
        return None
    return _Target(
        id=destination.id,
        name=destination.name,
        pixel_id=destination.pixel_id,
        api_version=destination.api_version,
        access_token=token,
        app_secret=secret,
        test_event_code=effective_test_event_code(destination, context.settings),
    )


def _people(session: Session, encryptor: FieldEncryptor, profile_ids: Iterable[str]) -> dict[str, PersonIdentifiers]:
    """Identities and traits of each event's person, across the merged cluster, for a whole batch at once."""
    ids = list(profile_ids)
    if not ids:
        return {}
    root_of: dict[str, str] = {}
    for row in session.execute(select(Profile.id, Profile.merged_into_id).where(Profile.id.in_(ids))):
        root_of[row.id] = row.merged_into_id or row.id  # merges are flattened: one hop reaches the root
    roots = set(root_of.values())
    members: dict[str, str] = {root: root for root in roots}
    for row in session.execute(select(Profile.id, Profile.merged_into_id).where(Profile.merged_into_id.in_(roots))):
        members[row.id] = row.merged_into_id
    identities: dict[str, list[tuple[str, str]]] = {root: [] for root in roots}
    rows = session.execute(
        select(Identity.profile_id, Identity.kind, Identity.value_hash)
        .where(Identity.profile_id.in_(list(members)))
        .order_by(Identity.id)
    )
    for row in rows:
        identities[members[row.profile_id]].append((row.kind, row.value_hash))
    traits: dict[str, dict[str, str]] = {}
    for profile in session.scalars(select(Profile).where(Profile.id.in_(roots))):
        traits[profile.id] = profile_traits(encryptor, profile)
    return {
        pid: PersonIdentifiers(identities=tuple(identities.get(root, ())), traits=traits.get(root))
        for pid, root in root_of.items()
    }


def _build(
    context: DeliveryContext,
    event: Row[Any],
    change: dict[str, Any],
    mappings: Mapping[str, Any],
    people: Mapping[str, PersonIdentifiers],
    batch: _Batch,
) -> dict[str, Any] | None:
    """The CAPI event for a decided event, or None after recording (in ``change``) why it cannot be sent."""
    now, summary = batch.now, batch.summary
    mapping = mappings[event.source_event]  # the decision said "send", so the mapping exists and is enabled
    mapped = apply_mapping(mapping, event.properties, event_action_source=event.action_source)
    if mapped.errors:
        first = next(iter(mapped.errors.items()))
        _refuse(batch, change, PayloadRejected("mapping_errors", "; ".join(mapped.errors.values()), first[0]))
        summary.blocked += 1
        return None
    user_data = context.encryptor.decrypt_json(event.user_data_encrypted) if event.user_data_encrypted else None
    hashed, plain = merge_identifiers(user_data, people.get(event.profile_id) if event.profile_id else None)
    decision = change["decision"]
    try:
        return build_capi_event(
            capi_input(
                event_id=event.event_id,
                occurred_at=event.occurred_at,
                source_url=event.source_url,
                mapped=mapped,
                hashed=hashed,
                plain=plain,
                allowed_identifiers=decision.get("identifiers"),
                ldu=ldu_from_decision(decision),
            ),
            now,
        )
    except PayloadRejected as rejected:
        if rejected.code == "too_old" and event.status == "retrying":
            # It was sendable once and our retries ran out of Meta's 7-day window: a dead letter, not a block.
            _dead_in_batch(change, _local_error(rejected, now))
            summary.dead += 1
        else:
            _refuse(batch, change, rejected)
            summary.blocked += 1
        return None


def _local_error(rejected: PayloadRejected, now: datetime) -> dict[str, Any]:
    return {
        "kind": "local",
        "reason": f"payload_rejected:{rejected.code}",
        "message": rejected.message,
        "field": rejected.field,
        "at": _iso(now),
    }


def _refuse(batch: _Batch, change: dict[str, Any], rejected: PayloadRejected) -> None:
    """Block an event Meta would reject (never sent, not a dead letter), with the reason recorded."""
    now = batch.now
    reason = f"payload_rejected:{rejected.code}"
    change["status"] = "blocked"
    change["next_attempt_at"] = None
    change["decision"] = {
        **(change.get("decision") or {}),
        "outcome": "block",
        "reason_code": reason,
        "explanation": f"Blocked before sending: {rejected.message}"
        + (f" (field {rejected.field})" if rejected.field else ""),
        "payload_error": {"code": rejected.code, "message": rejected.message, "field": rejected.field},
    }
    change["decided_at"] = now
    batch.decisions[("block", reason)] += 1


def _dead_in_batch(change: dict[str, Any], error: Mapping[str, Any]) -> None:
    change["status"] = "dead"
    change["next_attempt_at"] = None
    change["last_error"] = dict(error)


# -- sending and recording -------------------------------------------------------------------------------------
def _deliver(
    context: DeliveryContext,
    target: _Target,
    chunk: list[_Outgoing],
    now: datetime,
    summary: RunSummary,
    *,
    renew: bool,
) -> None:
    if renew:
        chunk = _renew_leases(context, chunk, now)
        if not chunk:
            return
    body = build_request_body([o.payload for o in chunk], test_event_code=target.test_event_code)
    response = context.client.send(
        target.pixel_id, target.access_token, target.api_version, body, app_secret=target.app_secret
    )
    summary.requests += 1
    error = response.error
    metrics = context.metrics
    metrics.delivery_attempts.labels(outcome="sent" if error is None else error.kind).inc()
    if error is not None and error.code is not None:
        metrics.meta_errors.labels(code=str(error.code), subcode=str(error.subcode or "")).inc()

    if error is None:
        _record(context, target, chunk, response, now, "sent")
        summary.sent += len(chunk)
        for outgoing in chunk:
            metrics.delivery_latency.observe(max(0.0, (now - outgoing.received_at).total_seconds()))
        return
    if error.pauses_destination:
        reason = _pause_reason(error)
        log.error("destination %s paused: %s", target.name, reason)
        metrics.destination_paused.labels(destination=target.name).inc()
        context.paused_now.add(target.id)
        _record(context, target, chunk, response, now, "paused", pause_reason=reason)
        summary.held += len(chunk)
        return
    if error.splits_batch and len(chunk) > 1:
        # Meta: one invalid event rejects the whole batch (§3); split to isolate it (checklist 28).
        _record(context, target, chunk, response, now, "split")
        middle = len(chunk) // 2
        for half in (chunk[:middle], chunk[middle:]):
            if context.is_paused(target.id):
                _release(context, half, next_attempt_at=None)
                summary.held += len(half)
                continue
            _deliver(context, target, half, now, summary, renew=True)
        return
    if error.retryable:
        retried, dead = _record(context, target, chunk, response, now, "retry")
        summary.retrying += retried
        summary.dead += dead
        if error.kind == "throttle":
            wait = error.retry_after or context.settings.retry_base_seconds
            context.throttled_until[target.id] = now + timedelta(seconds=wait)
        return
    _record(context, target, chunk, response, now, "dead")
    summary.dead += len(chunk)


def _pause_reason(error: ErrorClass) -> str:
    if error.code is None:
        code = error.reason
    else:
        code = f"Meta error {error.code}" + (f" (subcode {error.subcode})" if error.subcode is not None else "")
    return f"{code}: {error.message}. Fix the access token or permissions, then resume the destination."


def _error_record(error: ErrorClass, response: CapiResponse, attempt_id: int, now: datetime) -> dict[str, Any]:
    return {
        "kind": error.kind,
        "reason": error.reason,
        "code": error.code,
        "subcode": error.subcode,
        "message": error.message,
        "fbtrace_id": error.fbtrace_id or response.fbtrace_id,
        "http_status": response.status,
        "attempt_id": attempt_id,
        "at": _iso(now),
    }


def _record(
    context: DeliveryContext,
    target: _Target,
    chunk: Sequence[_Outgoing],
    response: CapiResponse,
    now: datetime,
    action: str,
    *,
    pause_reason: str | None = None,
) -> tuple[int, int]:
    """One transaction: the attempt row and the outcome of every event this worker still holds.

    Returns (retrying, dead) counts for the "retry" action.
    """
    error = response.error
    owner = context.worker_id
    ids = [o.id for o in chunk]
    retried = dead = 0
    with session_scope(context.sessionmaker) as session:
        attempt = DeliveryAttempt(
            destination_id=target.id,
            started_at=now,
            duration_ms=response.duration_ms,
            event_count=len(chunk),
            events_received=response.events_received,
            http_status=response.status,
            outcome="sent" if error is None else error.kind,
            error_code=None if error is None else error.code,
            error_subcode=None if error is None else error.subcode,
            error_message=None if error is None else error.message,
            fbtrace_id=response.fbtrace_id,
            response=dict(response.body) if response.body is not None else None,
        )
        session.add(attempt)
        session.flush()
        held = _events.c.lease_owner == owner
        if action == "sent":
            result = session.execute(
                update(_events)
                .where(_ids_match(ids, context.dialect), held)
                .values(
                    status="sent",
                    sent_at=now,
                    delivered_attempt_id=attempt.id,
                    attempts=_events.c.attempts + 1,
                    next_attempt_at=None,
                    last_error=None,
                    dead_payload_encrypted=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            _warn_if_lost(result.rowcount, len(ids), target)
        elif action == "paused":
            pause_destination(session, target.id, pause_reason or "authentication failed", now=now)
            session.execute(
                update(_events)
                .where(_ids_match(ids, context.dialect), held)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    last_error=_error_record(error, response, attempt.id, now) if error else None,
                )
            )
        elif action == "split":
            pass  # the halves are sent next; the events keep their lease
        else:
            assert error is not None
            record = _error_record(error, response, attempt.id, now)
            rows = []
            for outgoing in chunk:
                attempts = outgoing.attempts + 1
                status, next_at, payload = "dead", None, None
                if action == "retry":
                    delay = next_delay(
                        attempts,
                        context.settings.retry_base_seconds,
                        context.settings.retry_max_seconds,
                        context.rng,
                        floor=error.retry_after,
                    )
                    retry_at = now + timedelta(seconds=delay)
                    if retry_at <= give_up_at(outgoing.occurred_at):
                        status, next_at = "retrying", retry_at
                if status == "dead":
                    payload = context.encryptor.encrypt_json(outgoing.payload)
                    dead += 1
                else:
                    retried += 1
                error_json = record
                if status == "dead" and action == "retry":
                    error_json = {**record, "gave_up": "the next retry would fall outside Meta's 7-day window"}
                rows.append(
                    {
                        "_id": outgoing.id,
                        "_status": status,
                        "_attempts": attempts,
                        "_next": next_at,
                        "_error": error_json,
                        "_payload": payload,
                    }
                )
            result = session.execute(
                update(_events)
                .where(_events.c.id == bindparam("_id"), held)
                .values(
                    status=bindparam("_status"),
                    attempts=bindparam("_attempts"),
                    next_attempt_at=bindparam("_next"),
                    last_error=bindparam("_error"),
                    dead_payload_encrypted=bindparam("_payload"),
                    lease_owner=None,
                    lease_expires_at=None,
                ),
                rows,
            )
    return retried, dead


def _warn_if_lost(updated: int, expected: int, target: _Target) -> None:
    if updated != expected:
        log.warning(
            "%d of %d events sent to %s had been taken over by another worker after their lease expired; "
            "their outcome is recorded by that worker",
            expected - updated,
            expected,
            target.name,
        )


def _renew_leases(context: DeliveryContext, chunk: list[_Outgoing], now: datetime) -> list[_Outgoing]:
    """Extend the lease before another request for these events; returns those still held."""
    owner = context.worker_id
    ids = [o.id for o in chunk]
    expires = max(now, utcnow()) + timedelta(seconds=context.options.lease_seconds)
    with session_scope(context.sessionmaker) as session:
        mine = (_ids_match(ids, context.dialect), _events.c.lease_owner == owner)
        session.execute(update(_events).where(*mine).values(lease_expires_at=expires))
        held = set(session.scalars(select(_events.c.id).where(*mine)))
    return [o for o in chunk if o.id in held]


def _release(context: DeliveryContext, chunk: Sequence[_Outgoing], *, next_attempt_at: datetime | None) -> None:
    """Give events back untouched (destination paused or throttled); optionally not before ``next_attempt_at``."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    with session_scope(context.sessionmaker) as session:
        session.execute(
            update(_events)
            .where(_ids_match([o.id for o in chunk], context.dialect), _events.c.lease_owner == context.worker_id)
            .values(**values)
        )


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
