"""Group commit for CMP webhook deliveries: concurrent deliveries share one transaction and one commit.

A CMP is answered 2xx only once the delivery's raw body and its consent records are committed (``hub.cmp.views``).
Done one delivery per transaction, every webhook pays for its own connection check-out, source look-up, half a
dozen statements and a commit, and that per-request cost, not the work, bounds how many webhooks a process
takes. Here each request thread first prepares its own delivery (``prepare``: authentication against the source
as the process last read it, parsing, identifiers, the encrypted inbox row), then hands it to whichever thread
is not waiting for an answer (the *leader*). The leader processes everything queued as one batch — the batch's
sources checked as they are now, its inbox rows and the look-up of earlier copies (one statement on PostgreSQL),
one identity resolution (``resolve_many``), one consent write (``record_consent_many``) — commits once and
answers every delivery of the batch. While it works, new deliveries queue for the next batch, so batches grow
with the load and a lone delivery is processed at once (a batch of one); a batch with a successor waiting hands
it its database connection, and wakes it before its own deliveries' threads.

On PostgreSQL a batch's statements are sent together (``hub.db.pipelined``), so the whole batch costs three round
trips: the BEGIN, the inbox statement and the identity look-up; the new people (when resolution writes nothing
else), the roots' lock, the read of their projection and events and the ledger ids drawn for the batch; the ledger
rows, the projection and the COMMIT. A new person who lost a race for an identifier to a concurrent writer sends
that delivery one by one.

The guarantee is unchanged: a delivery is answered only after its batch is committed, with the same answer the
one-by-one path gives (``tests/web/cmp/test_cmp_batch.py`` compares the two), and a source's configuration as it
is in the batch's transaction governs it (a delivery prepared with an older reading goes one by one, and so does
one the older reading refuses). The batch takes the common case: a delivery that authenticates, parses and names
a person by hub identifiers. Anything else — a body that cannot be processed as sent, CMP user ids to link — is
answered ``None`` and its request thread processes it one by one. Deliveries whose outcome would depend on the
order of the batch (a subject that merges profiles) or that ``record_consent`` would refuse (a subject the
resolution cannot settle, a person merged or erased under it, an unknown purpose) make the batch roll back and
run again without them; they go one by one after it. A batch that fails otherwise (a conflict with a concurrent
writer, a database error) goes one by one as a whole.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import any_, bindparam, cast, insert, literal, null, select, true, union_all
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from hub.cmp.adapters import ConsentSubmission
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.cmp.services import (
    INBOX_COLUMNS,
    KEPT_HEADERS,
    SOURCE_COLUMNS,
    Delivery,
    DeliveryOutcome,
    DeliveryRejected,
    ParsedDelivery,
    SourceConfig,
    WebhookAuthError,
    authenticate,
    consent_decision,
    earliest_copy,
    handled,
    inbox_row,
    load_source,
    mark_inbox_rows,
    parse_delivery,
    source_config,
    store_delivery_row,
)
from hub.config import Settings
from hub.consent.services import BatchNotApplicable, ConsentDecision, record_consent_many
from hub.db import Call, json_document, json_insert, json_recordset, pipelined
from hub.encryption import FieldEncryptor
from hub.profiles.identifiers import identifier_candidates
from hub.profiles.services import (
    LookupAhead,
    PreparedIdentity,
    Resolution,
    Snapshot,
    complete_many,
    lookup_ahead,
    plan_many,
    prepare_identity,
    resolve_many_deferring_new_people,
)

log = logging.getLogger(__name__)

__all__ = [
    "REQUEST_HEADERS",
    "UNKNOWN_SOURCE_LABEL",
    "Answer",
    "Delivery",
    "DeliveryBatcher",
    "GroupCommit",
    "admit",
    "process_batch",
]

# What a delivery keeps of its request: the headers authentication reads and those the inbox keeps as evidence.
REQUEST_HEADERS = (*KEPT_HEADERS, "Authorization")
# Unknown source names come from the URL: one label for all of them keeps the metric's cardinality bounded.
UNKNOWN_SOURCE_LABEL = "_unknown"
# Deliveries per batch at most: one statement's parameters stay small, and a batch's answers wait for all of it.
MAX_BATCH = 64
# Attempts at a batch, each without the deliveries the previous one found it cannot take.
BATCH_ATTEMPTS = 3
# Batches of one process in flight at most. Normally one: the next batch collects what arrives meanwhile (two at
# a time made batches half as large and cost more per delivery). A second starts beside one that has run for
# STALLED_BATCH_SECONDS (a person's row locked by a long transaction, a slow commit; a batch takes ~10-20 ms), so
# the deliveries arriving behind it are not held up.
CONCURRENT_BATCHES = 2
STALLED_BATCH_SECONDS = 0.25


@dataclass(frozen=True)
class Answer:
    """A delivery's answer: ``outcome`` (2xx) or ``error`` (4xx); ``source`` and ``result`` label the webhook
    metric."""

    source: str
    result: str
    outcome: DeliveryOutcome | None = None
    error: DeliveryRejected | None = None


# ----------------------------------------------------------------------------------------------------------
# Leader/follower batching
# ----------------------------------------------------------------------------------------------------------

T = TypeVar("T")
R = TypeVar("R")


@dataclass(eq=False)
class _Job(Generic[T, R]):
    item: T
    ready: threading.Event = field(default_factory=threading.Event)
    lead: bool = False
    result: R | None = None


class GroupCommit(Generic[T, R]):
    """Runs ``work`` over items submitted from many threads, a batch at a time, in the submitting threads.

    ``submit`` queues an item; when no batch is running (or fewer than ``concurrency`` are and one has run for
    ``stall_seconds``), the calling thread becomes a leader and runs ``work`` over everything queued (at most
    ``max_batch``), including its own item, then hands the lead to the oldest item still queued, if any, and
    returns its own result. Other callers sleep until their batch is done. No thread of its own: nothing to start
    after a fork or to stop at exit, and a lone item waits for nobody.

    ``work`` returns one result per item; if it raises, every item of the batch gets ``None`` (logged).
    """

    def __init__(
        self,
        work: Callable[[Sequence[T]], Sequence[R | None]],
        *,
        max_batch: int = MAX_BATCH,
        concurrency: int = CONCURRENT_BATCHES,
        stall_seconds: float = STALLED_BATCH_SECONDS,
    ) -> None:
        self._work = work
        self._max_batch = max_batch
        self._concurrency = concurrency
        self._lock = threading.Lock()
        self._stall_seconds = stall_seconds
        self._queue: list[_Job[T, R]] = []
        self._running = 0
        self._started: dict[int, float] = {}  # when each running batch's leader took the lead, by its job
        self.batches = 0  # batches run, and the items they held (read by benchmarks; no lock needed for that)
        self.items = 0

    @property
    def waiting(self) -> bool:
        """Whether items are queued for a next batch (a leader is about to take them)."""
        return bool(self._queue)

    def submit(self, item: T) -> R | None:
        job: _Job[T, R] = _Job(item)
        with self._lock:
            now = time.monotonic()
            # One batch at a time makes the largest batches; another starts only beside a batch that has been
            # running for longer than a batch should (waiting on a row lock, a slow commit).
            if self._running == 0 or (
                self._running < self._concurrency and now - min(self._started.values()) > self._stall_seconds
            ):
                self._running += 1
                self._started[id(job)] = now
                job.lead = True
            else:
                self._queue.append(job)  # the queue holds the items waiting for a leader, oldest first
        if not job.lead:
            job.ready.wait()
            if not job.lead:
                return job.result
        return self._run(job)

    def _run(self, job: _Job[T, R]) -> R | None:
        with self._lock:
            batch = [job, *self._queue[: self._max_batch - 1]]
            del self._queue[: self._max_batch - 1]
            self.batches += 1
            self.items += len(batch)
        try:
            results = self._work([member.item for member in batch])
            for member, result in zip(batch, results, strict=True):
                member.result = result
        except Exception:
            log.exception("a batch of %d failed; its items go one by one", len(batch))
            for member in batch:
                member.result = None
        finally:
            with self._lock:
                del self._started[id(job)]
                # The lead passes to the oldest waiting item, taken off the queue so no other leader takes it.
                successor = self._queue.pop(0) if self._queue else None
                if successor is None:
                    self._running -= 1
                else:
                    self._started[id(successor)] = time.monotonic()
                    successor.lead = True
            # The successor first: the next batch's statements are on their way while this batch's threads answer.
            if successor is not None:
                successor.ready.set()
            for member in batch[1:]:
                member.ready.set()
        return job.result


# ----------------------------------------------------------------------------------------------------------
# Admission: source, credentials
# ----------------------------------------------------------------------------------------------------------


def admit(session: Session, encryptor: FieldEncryptor, delivery: Delivery) -> tuple[SourceConfig | None, Answer | None]:
    """The delivery's enabled source, or the answer refusing it: unknown or disabled source (404), address not
    allowed (403), credentials not accepted (401). Nothing is stored for a refused delivery."""
    source = load_source(session, encryptor, delivery.source_name)
    if source is None:
        message = f"No enabled CMP source is called {delivery.source_name!r}."
        return None, Answer(UNKNOWN_SOURCE_LABEL, "not_found", error=DeliveryRejected(404, "not_found", message))
    return source, _authenticated(source, delivery)


def _authenticate(source: SourceConfig, delivery: Delivery) -> None:
    """``authenticate`` with what the delivery's request carried; raises ``WebhookAuthError``."""
    authenticate(
        source, headers=delivery.headers, body=delivery.body, remote_addr=delivery.remote_addr, now=delivery.received_at
    )


def _authenticated(source: SourceConfig, delivery: Delivery) -> Answer | None:
    try:
        _authenticate(source, delivery)
    except WebhookAuthError as error:
        log.warning("CMP webhook for %s refused: %s", source.name, error.reason)
        if error.status == 403:
            refusal = DeliveryRejected(403, "forbidden", "This address may not deliver to this source.")
            return Answer(source.name, "forbidden", error=refusal)
        refusal = DeliveryRejected(401, "unauthenticated", "The request's credentials were not accepted.")
        return Answer(source.name, "unauthenticated", error=refusal)
    return None


def _accepted(source: SourceConfig, delivery: Delivery) -> bool:
    """Whether ``source`` admits the delivery (address, credentials); quietly: a refusal on a kept reading of the
    source is not final (``prepare``)."""
    try:
        _authenticate(source, delivery)
    except WebhookAuthError:
        return False
    return True


# ----------------------------------------------------------------------------------------------------------
# A batch
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    """A delivery the batch takes, prepared by its request thread: authenticated against ``source`` as the
    thread found it (the batch checks it is still the source's configuration), parsed to one submission about a
    person named by hub identifiers, its inbox row built (the body encrypted)."""

    delivery: Delivery
    source: SourceConfig
    parsed: ParsedDelivery
    submission: ConsentSubmission
    prepared: PreparedIdentity
    row: Mapping[str, Any]


class _OneByOne(Exception):
    """Deliveries of the batch (``indexes``) only the one-by-one path answers as it would: the batch is rolled
    back and taken again without them."""

    def __init__(self, reason: str, indexes: Iterable[int]) -> None:
        super().__init__(reason)
        self.indexes = frozenset(indexes)


class DeliveryBatcher:
    """The process's group commit for CMP deliveries (``hub.cmp.views``). ``extensions``: the app's, read when a
    delivery comes (the session factory, encryptor and settings the app holds then).

    A request thread prepares its own delivery (``prepare``: authentication, parsing, identifiers, the encrypted
    inbox row) against the source as the process last read it, so the leader, which every delivery of a batch
    waits for, only does the database work; the batch then checks, in its transaction, that each source is still
    configured as it was when its deliveries were prepared."""

    def __init__(self, extensions: Mapping[str, Any]) -> None:
        self._extensions = extensions
        self.sources: dict[str, SourceConfig] = {}  # by name, as last read (see ``prepare``)
        # The connection of a batch that had a successor waiting, for that successor: back-to-back batches skip
        # the pool's check-out and its liveness ping. Kept only while a batch is about to take it, so nothing holds
        # a connection while webhooks are quiet.
        self._spare: list[Connection] = []

        def work(items: Sequence[_Item]) -> list[Answer | None]:
            extensions["hub.metrics"].webhook_batches.observe(len(items))
            sessions = extensions["hub.sessionmaker"]
            engine = sessions.kw.get("bind")
            # Sessions on one given connection (not an engine's pool) have nothing to check out or keep.
            connection = self._connection(engine) if isinstance(engine, Engine) else None
            try:
                return process_items(
                    sessions if connection is None else functools.partial(sessions, bind=connection),
                    extensions["hub.encryptor"],
                    extensions["hub.settings"],
                    items,
                    self.sources,
                )
            finally:
                if connection is not None:
                    self._release(connection)

        self.commit: GroupCommit[_Item, Answer] = GroupCommit(work)

    def _connection(self, engine: Engine) -> Connection:
        try:
            return self._spare.pop()
        except IndexError:
            return engine.connect()

    def _release(self, connection: Connection) -> None:
        # Kept for the batch about to start (one connection at most), if it is still usable; else returned.
        waiting = self.commit.waiting and not self._spare
        if waiting and not connection.invalidated and not connection.in_transaction():
            self._spare.append(connection)
        else:
            connection.close()

    def submit(self, delivery: Delivery) -> Answer | None:
        """The delivery's answer once its batch is committed (or a refusal); None: its request thread processes
        it one by one."""
        extensions = self._extensions
        prepared = prepare(
            extensions["hub.sessionmaker"],
            extensions["hub.encryptor"],
            extensions["hub.settings"],
            self.sources,
            delivery,
        )
        if isinstance(prepared, _Item):
            return self.commit.submit(prepared)
        return prepared


def prepare(
    sessions: sessionmaker[Session],
    encryptor: FieldEncryptor,
    settings: Settings,
    sources: dict[str, SourceConfig],
    delivery: Delivery,
) -> _Item | Answer | None:
    """A delivery made ready for a batch, in its request thread; or its refusal; or None for the one-by-one path.

    ``sources`` holds each source as this process last read it; a source not in it is read (and kept). A delivery
    that the kept configuration refuses goes one by one, which reads the source again: credentials rotated or an
    address allowed since are not refused on an old reading. One it accepts is checked by the batch, in the
    batch's transaction, against the source's configuration then (``_check_sources``)."""
    source = sources.get(delivery.source_name)
    if source is None:
        with sessions() as session:
            source, refusal = admit(session, encryptor, delivery)
        if source is None or refusal is not None:
            return refusal
        sources[delivery.source_name] = source
    elif not _accepted(source, delivery):
        return None
    parsed = parse_delivery(source, delivery.body)
    eligible = _eligible(settings, parsed)
    if eligible is None:
        return None
    return _Item(delivery, source, parsed, *eligible, row=inbox_row(encryptor, source, parsed, delivery))


def process_batch(
    sessions: sessionmaker[Session], encryptor: FieldEncryptor, settings: Settings, deliveries: Sequence[Delivery]
) -> list[Answer | None]:
    """What the batcher answers for ``deliveries`` arriving together, each source read afresh: the refusals, the
    answers of the deliveries the batch takes, committed together, and ``None`` for the others (their request
    threads process them one by one)."""
    sources: dict[str, SourceConfig] = {}
    prepared = [prepare(sessions, encryptor, settings, sources, delivery) for delivery in deliveries]
    items = [item for item in prepared if isinstance(item, _Item)]
    answers = iter(process_items(sessions, encryptor, settings, items, sources))
    return [next(answers) if isinstance(item, _Item) else item for item in prepared]


def process_items(
    sessions: Callable[[], Session],
    encryptor: FieldEncryptor,
    settings: Settings,
    items: Sequence[_Item],
    sources: dict[str, SourceConfig],
) -> list[Answer | None]:
    """Answer the prepared deliveries, committed together; ``None`` for those the batch does not take (and for
    all of them when the batch fails): their request threads process them one by one. ``sources`` is updated
    with every source found changed since its deliveries were prepared."""
    excluded: set[int] = set()
    for _attempt in range(BATCH_ATTEMPTS):
        session = sessions()
        try:
            deferred: list[Call] = []
            answers = _process(session, encryptor, settings, items, excluded, sources, deferred)
            if deferred:
                pipelined(session, deferred, commit=True)  # the last writes and the commit in one round trip
            session.commit()
            return answers
        except _OneByOne as error:
            # Taken again without them; they are answered one by one after this batch is committed.
            log.debug("%d of a batch of %d deliveries go one by one: %s", len(error.indexes), len(items), error)
            excluded |= error.indexes
        except Exception as error:
            # A conflict with a concurrent writer, a database error: one by one, each answered on its own.
            log.warning("a batch of %d deliveries failed (%s); they go one by one", len(items), type(error).__name__)
            break
        finally:
            session.rollback()
            session.close()
    return [None] * len(items)


def _eligible(settings: Settings, parsed: ParsedDelivery) -> tuple[ConsentSubmission, PreparedIdentity] | None:
    """The delivery's submission and its subject prepared for resolution, when the batch can take it."""
    if parsed.rejection is not None or len(parsed.submissions) != 1:
        return None
    [submission] = parsed.submissions
    if submission.cmp_identities or not submission.subject or not submission.purposes:
        return None
    prepared = prepare_identity(dict(submission.subject), region=submission.region, settings=settings)
    if prepared.errors or not identifier_candidates(prepared.normalized):
        return None
    return submission, prepared


def _process(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    items: Sequence[_Item],
    excluded: Collection[int],
    sources: dict[str, SourceConfig],
    deferred: list[Call],
) -> list[Answer | None]:
    """The batch's answers; on PostgreSQL its last writes are left in ``deferred`` for the commit to send."""
    answers: list[Answer | None] = [None] * len(items)
    taken = {index: item for index, item in enumerate(items) if index not in excluded}
    if not taken:
        return answers
    looked_up: Snapshot | None = None
    if session.get_bind().dialect.name == "postgresql":
        # The identity look-up goes with the inbox statement (and the transaction's BEGIN): one round trip.
        lookup = lookup_ahead([item.prepared for item in taken.values()], settings=settings)
        current, inbox_ids, duplicate_of, looked_up = _store_postgresql(session, encryptor, taken, lookup)
        _check_sources(taken, current, sources)
    else:
        names = sorted({item.source.name for item in taken.values()})
        _check_sources(taken, {name: load_source(session, encryptor, name) for name in names}, sources)
        inbox_ids, duplicate_of = _store(session, taken)

    # One by one, a delivery's times are all its arrival; a batch keeps that for the inbox rows and the ledger,
    # and resolves everyone at the latest arrival of the batch (the time profiles and identities are stamped).
    now = max(item.delivery.received_at for item in taken.values())
    notes: dict[int, list[str]] = {}
    fresh: dict[int, _Item] = {}
    marks: list[dict[str, Any]] = []
    for index, item in taken.items():
        earlier = duplicate_of[index]
        if earlier is None:
            fresh[index] = item
            notes[index] = [f"ignored {label}" for label in item.submission.ignored]
            continue
        answers[index] = Answer(
            item.source.name,
            "duplicate",
            outcome=DeliveryOutcome("duplicate", notes=(f"same body or event id as delivery {earlier}",)),
        )
        marks.append(
            {
                "inbox_id": inbox_ids[index],
                "status": "duplicate",
                "note": f"same body or CMP event id as inbox item {earlier}",
            }
        )

    # On PostgreSQL the batch's new people go with the consent lock (one round trip less), unless resolution writes
    # anything else; a person who lost a race for an identifier sends the delivery one by one.
    leading: list[tuple[Call, Callable[[list[Any]], None]]] | None = [] if looked_up is not None else None
    profiles = _resolve(session, encryptor, settings, fresh, notes, now, looked_up, leading)
    decisions: list[ConsentDecision] = []
    decided: list[int] = []
    for index, item in fresh.items():
        profile_id = profiles[index]
        if profile_id is None:
            continue
        decisions.append(
            consent_decision(
                item.source,
                item.submission,
                profile_id,
                inbox_ids[index],
                item.parsed.body_sha256,
                received_at=item.delivery.received_at,
            )
        )
        decided.append(index)
    try:
        written = record_consent_many(session, decisions, now=now, deferred=deferred, leading=leading or ())
    except BatchNotApplicable as error:
        raise _OneByOne(str(error), (decided[i] for i in error.decisions)) from None
    recorded = dict(zip(decided, written, strict=True))
    for index, item in fresh.items():
        records = recorded.get(index, [])
        kept = tuple(notes[index])
        answers[index] = Answer(
            item.source.name,
            "processed",
            outcome=DeliveryOutcome(
                "processed",
                records=len(records),
                profile_id=profiles[index],
                record_ids=tuple(record.id for record in records),
                notes=kept,
            ),
        )
        if kept:
            marks.append({"inbox_id": inbox_ids[index], "status": "processed", "note": "; ".join(kept)[:2000]})
    mark_inbox_rows(session, marks)
    return answers


def _check_sources(
    taken: Mapping[int, _Item], current: Mapping[str, SourceConfig | None], sources: dict[str, SourceConfig]
) -> None:
    """Raise ``_OneByOne`` naming the deliveries whose source, as read in this transaction (``current``, by name;
    None: disabled or removed), is no longer what their request thread prepared them with (credentials, adapter,
    mapping changed): the one-by-one path admits them again. ``sources`` keeps what was read here."""
    for name, config in current.items():
        if config is None:
            sources.pop(name, None)
        else:
            sources[name] = config
    changed = [index for index, item in taken.items() if current.get(item.source.name) != item.source]
    if changed:
        raise _OneByOne("sources changed since their deliveries were prepared", changed)


_INBOX = CmpInboxItem.__table__
_SOURCES = CmpSource.__table__
_INSERT_INBOX_ROWS = insert(_INBOX).returning(_INBOX.c.id, sort_by_parameter_order=True)


def _earlier_copies_statement() -> Any:
    """Processed (or repeat) deliveries of the batch's sources with one of its bodies or CMP event ids: each
    branch probes its own index, (source_id, body_sha256, id) and (source_id, event_key, id)."""
    columns = (_INBOX.c.id, _INBOX.c.source_id, _INBOX.c.body_sha256, _INBOX.c.event_key)
    sources = _INBOX.c.source_id.in_(bindparam("source_ids", expanding=True))
    earlier = handled(_INBOX)
    return union_all(
        select(*columns).where(sources, _INBOX.c.body_sha256.in_(bindparam("bodies", expanding=True)), earlier),
        select(*columns).where(sources, _INBOX.c.event_key.in_(bindparam("event_keys", expanding=True)), earlier),
    )


_EARLIER_COPIES = _earlier_copies_statement()


def _array(name: str, column: Any) -> Any:
    """A bound list of ``column``'s values, sent as one PostgreSQL array."""
    return bindparam(name, type_=postgresql.ARRAY(column.type))


@functools.cache
def _postgresql_store_statement() -> Any:
    """One PostgreSQL statement for a batch's inbox: insert its rows (one JSON document), and read the enabled
    sources it names and the earlier copies of its deliveries (processed or repeat, by body or CMP event id). The
    reads see the database as it was before the insert. The result has columns ``kind`` ("new", "earlier" or
    "source"), the inbox columns and the source columns, NULL where they do not apply.

    The text is the same for every batch, so the statement stays prepared. Each delivery's earlier copies are
    looked up as one delivery's are (``earliest_copy``: the earliest by id, one probe of the key's index), a plan
    that holds whatever the inbox held when it was made (tests/db/cmp/test_cmp_inbox_query_plans.py)."""
    new_rows = (
        json_insert(_INBOX, INBOX_COLUMNS, name="new_inbox")
        .returning(_INBOX.c.id, _INBOX.c.body_sha256, _INBOX.c.received_at)
        .cte("inserted")
    )

    def absent(column: Any) -> Any:
        return cast(null(), column.type).label(column.name)

    def earlier_by(key: str) -> Any:
        # One row per delivery: the earliest earlier copy with its ``key`` (NULL id: none), and that key.
        wanted = json_recordset(
            f"wanted_by_{key}", [("source_id", _INBOX.c.source_id.type), (key, _INBOX.c[key].type)], "rows"
        )
        copy = earliest_copy(wanted.c.source_id, key, wanted.c[key]).scalar_subquery()
        keys = [wanted.c[name] if name == key else absent(_INBOX.c[name]) for name in ("body_sha256", "event_key")]
        return select(
            literal("earlier"),
            copy,
            wanted.c.source_id,
            *keys,
            absent(_INBOX.c.received_at),
            *map(absent, source_columns),
        )

    source_columns = [column for column in SOURCE_COLUMNS if column.name not in ("id",)]
    return union_all(
        select(
            literal("new").label("kind"),
            new_rows.c.id,
            absent(_INBOX.c.source_id),
            new_rows.c.body_sha256,
            absent(_INBOX.c.event_key),
            new_rows.c.received_at,
            *map(absent, source_columns),
        ),
        earlier_by("body_sha256"),
        earlier_by("event_key"),
        select(
            literal("source"),
            _SOURCES.c.id,
            absent(_INBOX.c.source_id),
            absent(_INBOX.c.body_sha256),
            absent(_INBOX.c.event_key),
            absent(_INBOX.c.received_at),
            *source_columns,
        ).where(_SOURCES.c.name == any_(_array("names", _SOURCES.c.name)), _SOURCES.c.enabled == true()),
    )


def _store_postgresql(
    session: Session, encryptor: FieldEncryptor, taken: Mapping[int, _Item], lookup: LookupAhead
) -> tuple[dict[str, SourceConfig | None], dict[int, int], dict[int, int | None], Snapshot]:
    """``_store`` and the read of the batch's sources in one statement, sent with the BEGIN and ``lookup``: the
    sources by name (None: not enabled), by delivery index the new inbox rows' ids and the earliest earlier
    copies, and what the look-up found."""
    items = list(taken.values())
    document = json_document([_json_row(item.row) for item in items])
    parameters = {
        "rows": document,
        "names": sorted({item.source.name for item in items}),
    }
    [found, *looked_up] = pipelined(session, [Call(_postgresql_store_statement(), parameters), *lookup.calls])
    current: dict[str, SourceConfig | None] = dict.fromkeys(parameters["names"])
    new_rows = []
    earlier = []
    for row in found:
        if row.kind == "new":
            new_rows.append(row)
        elif row.kind == "earlier":
            if row.id is not None:
                earlier.append(row)
        else:
            current[row.name] = source_config(encryptor, row)
    # The rows are inserted in the document's order, so their ids ascend in it; checked, since the statement's
    # result does not promise an order.
    new_rows.sort(key=lambda row: row.id)
    if [(row.body_sha256, row.received_at) for row in new_rows] != [
        (item.parsed.body_sha256, item.row["received_at"]) for item in items
    ]:
        raise RuntimeError("the batch's inbox rows came back in an order other than their insertion")
    ids = [row.id for row in new_rows]
    return current, dict(zip(taken, ids, strict=True)), _copies(taken, earlier, ids), lookup.read(looked_up)


def _json_row(row: Mapping[str, Any]) -> dict[str, Any]:
    # The body travels in bytea's hex input format: the JSON document carries text only.
    return {**row, "body": "\\x" + row["body"].hex()}


def _copies(taken: Mapping[int, _Item], found: Iterable[Any], ids: Sequence[int]) -> dict[int, int | None]:
    """By delivery index, the earliest delivery with its body or CMP event id: of those ``found`` before the
    batch (rows with ``id``, ``source_id``, ``body_sha256``, ``event_key``), or earlier in the batch (``ids``:
    the batch's inbox rows, in order)."""
    earliest: dict[tuple[int, str, str], int] = {}
    for row in found:
        for key in ((row.source_id, "body", row.body_sha256), (row.source_id, "event", row.event_key)):
            if key[2] is not None and (key not in earliest or row.id < earliest[key]):
                earliest[key] = row.id
    duplicate_of: dict[int, int | None] = {}
    for (index, item), inbox_id in zip(taken.items(), ids, strict=True):
        keys = [(item.source.id, "body", item.parsed.body_sha256)]
        if item.parsed.event_key is not None:
            keys.append((item.source.id, "event", item.parsed.event_key))
        duplicate_of[index] = min((earliest[key] for key in keys if key in earliest), default=None)
        for key in keys:
            earliest.setdefault(key, inbox_id)  # a copy later in the batch repeats this one
    return duplicate_of


def _store(session: Session, taken: Mapping[int, _Item]) -> tuple[dict[int, int], dict[int, int | None]]:
    """Insert the batch's inbox rows (``processed``; repeats are marked afterwards); by delivery index, their ids
    and the earliest earlier delivery with the same body or CMP event id (stored before the batch, or earlier in
    it) — what ``store_delivery`` finds for one delivery. SQLite's path; PostgreSQL's is ``_store_postgresql``."""
    if len(taken) == 1:
        # A lone delivery: its row and the look-up of earlier copies in one statement.
        [(index, item)] = taken.items()
        stored = store_delivery_row(session, item.row, item.parsed)
        return {index: stored.inbox_id}, {index: stored.duplicate_of}
    items = list(taken.values())
    parameters = {
        "source_ids": sorted({item.source.id for item in items}),
        "bodies": sorted({item.parsed.body_sha256 for item in items}),
        "event_keys": sorted({key for item in items if (key := item.parsed.event_key) is not None}),
    }
    found = session.execute(_EARLIER_COPIES, parameters).all()
    ids = session.execute(_INSERT_INBOX_ROWS, [item.row for item in items]).scalars().all()
    return dict(zip(taken, ids, strict=True)), _copies(taken, found, ids)


def _resolve_source(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    prepared: Sequence[PreparedIdentity],
    record_source: str,
    now: datetime,
    looked_up: Snapshot | None,
    leading: list[tuple[Call, Callable[[list[Any]], None]]] | None,
    members: Sequence[int],
) -> list[Resolution]:
    """``resolve_many`` for one source's deliveries (``members``: their indexes in the batch); with ``leading``
    given, new people alone are not written here but added to it, with the check that sends the deliveries whose
    person lost a race one by one."""
    plan = plan_many(session, encryptor, prepared, settings=settings, now=now, looked_up=looked_up)
    deferring = (
        None if leading is None else resolve_many_deferring_new_people(encryptor, plan, settings=settings, now=now)
    )
    if deferring is None:
        return complete_many(session, encryptor, plan, source=record_source, settings=settings, now=now)
    resolutions, people = deferring

    def check(rows: list[Any]) -> None:
        if lost := people.lost(rows):
            raise _OneByOne("new people lost a race for an identifier", (members[i] for i in lost))

    leading.append((people.call, check))
    return resolutions


def _resolve(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    items: Mapping[int, _Item],
    notes: dict[int, list[str]],
    now: datetime,
    looked_up: Snapshot | None,
    leading: list[tuple[Call, Callable[[list[Any]], None]]] | None = None,
) -> dict[int, str | None]:
    """Each item's person (None: erased; nothing is recorded), resolved a source at a time (the merge journal
    names the source). Raises ``_OneByOne`` naming the subjects the one-by-one path answers otherwise (not
    settled: an error; merging profiles)."""
    by_source: dict[str, list[int]] = {}
    for index, item in items.items():
        by_source.setdefault(item.source.record_source, []).append(index)
    profiles: dict[int, str | None] = {}
    unsettled: list[int] = []
    for record_source, members in by_source.items():
        resolutions = _resolve_source(
            session,
            encryptor,
            settings,
            [items[i].prepared for i in members],
            record_source,
            now,
            looked_up,  # read before the batch wrote anything: only the first source's resolution may use it
            leading if len(by_source) == 1 else None,  # with several, each source's writes precede the next's read
            members,
        )
        looked_up = None
        for index, resolution in zip(members, resolutions, strict=True):
            if resolution.suppressed:
                notes[index].append("the subject was erased; nothing recorded")
                profiles[index] = None
            elif resolution.profile_id is None or resolution.merged:
                # Not settled, or merging profiles: one by one, each decision is recorded for the person as they
                # were when it came (before a merge, on the profile merged away); a batch resolves everyone first.
                unsettled.append(index)
            else:
                notes[index].extend(resolution.notes)
                profiles[index] = resolution.profile_id
    if unsettled:
        raise _OneByOne("subjects not settled by resolution, or merging profiles", unsettled)
    return profiles
