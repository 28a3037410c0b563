"""Process failed CMP deliveries again, after the cause is fixed (``hub cmp reprocess``).

A delivery that could not be processed as sent (malformed JSON, an unknown purpose, a subject hub cannot
identify, an internal error) stays in ``cmp_inbox`` as ``failed`` with the reason. Once an admin has fixed the
cause (the source's ``purpose_map``, a missing purpose), ``reprocess_failed`` reads each failed row's body again
and processes it with the source's *current* configuration exactly as a fresh delivery is processed by the
webhook's one-by-one path (``hub.cmp.views._one_by_one``: ``parse_delivery``, then ``process_delivery``), but on
the existing inbox row instead of a new one:

* processed: the row becomes ``processed`` (``error`` = the notes or NULL, ``processed_at`` = now, ``event_key``
  = the CMP's event id); the ledger rows' ``proof.inbox_id`` is the row's id;
* a repeat: ``duplicate``, with the note naming the earlier copy — the earliest *other* row of the source with
  the same body or CMP event id that was processed or was a repeat (it may have arrived after the failed row:
  the CMP sent the event again once the cause was fixed);
* still failing: stays ``failed`` with the new reason.

Each row is its own transaction (committed before the next row is read), and the processing work of a row runs
in a SAVEPOINT, so a row that fails again leaves nothing of its work behind and never undoes another row. A row
whose source is disabled (or gone) is skipped and reported; so is a body no configured key decrypts. Ordering
by the CMP's timestamp is the ledger's business (``record_consent``), so processing an old row late is correct.

A dry run does the same work inside one SAVEPOINT that is rolled back at the end: it reports what would happen
(a later row sees the earlier rows' effects, as in a real run) and writes nothing.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from hub.cmp.models import CmpInboxItem, CmpSource
from hub.cmp.services import (
    DeliveryOutcome,
    DeliveryRejected,
    ParsedDelivery,
    SourceConfig,
    StoredDelivery,
    earliest_copy,
    inbox_body,
    load_source,
    parse_delivery,
    process_delivery,
    rejection_text,
)
from hub.config import Settings
from hub.encryption import DecryptionError, FieldEncryptor

log = logging.getLogger(__name__)

__all__ = ["ReprocessSummary", "ReprocessedRow", "UnknownSource", "reprocess_failed"]

_INBOX = CmpInboxItem.__table__
_SOURCES = CmpSource.__table__
_REASON_LIMIT = 2000  # as the webhook keeps it (hub.cmp.services.inbox_row)


class UnknownSource(LookupError):
    """``source`` names no CMP source."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no CMP source is called {name!r}")
        self.name = name


@dataclass(frozen=True)
class ReprocessedRow:
    """What happened to one inbox row. ``new_status`` is ``processed``, ``duplicate``, ``failed`` or ``skipped``
    (the row was left as it was); ``reason`` is the failure, the notes, or why the row was skipped. Neither
    carries the body or an identifier."""

    inbox_id: int
    source: str
    old_status: str
    new_status: str
    reason: str | None = None
    records: int = 0


@dataclass(frozen=True)
class ReprocessSummary:
    rows: tuple[ReprocessedRow, ...] = ()
    dry_run: bool = False
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def records(self) -> int:
        """Ledger rows written (or that would be, in a dry run)."""
        return sum(row.records for row in self.rows)


def reprocess_failed(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    *,
    source: str | None = None,
    ids: Sequence[int] | None = None,
    now: datetime,
    limit: int | None = None,
    dry_run: bool = False,
) -> ReprocessSummary:
    """Process failed inbox rows again, oldest first: all of them, only ``source``'s (by name), or only ``ids``
    (a listed row that is not failed, or does not exist, is reported as skipped). At most ``limit`` rows.

    Commits after every row (anything the session had pending is committed with the first row); a dry run
    rolls all of it back instead. Raises ``UnknownSource`` when ``source`` names no source (nothing done)."""
    source_id: int | None = None
    if source is not None:
        source_id = session.scalar(select(_SOURCES.c.id).where(_SOURCES.c.name == source))
        if source_id is None:
            raise UnknownSource(source)
    rows: list[ReprocessedRow] = []
    candidates = _failed_ids(session, source_id=source_id, ids=ids, limit=limit)
    if ids is not None:
        rows.extend(_not_failed(session, [i for i in dict.fromkeys(ids) if i not in set(candidates)], source_id))

    dry_run_scope = session.begin_nested() if dry_run else None
    try:
        for inbox_id in candidates:
            result = _reprocess_one(session, encryptor, settings, inbox_id, now=now)
            if result is not None:
                rows.append(result)
            if not dry_run:
                session.commit()
    finally:
        if dry_run_scope is not None and dry_run_scope.is_active:
            dry_run_scope.rollback()
    rows.sort(key=lambda row: row.inbox_id)
    counts = Counter(row.new_status for row in rows)
    return ReprocessSummary(rows=tuple(rows), dry_run=dry_run, counts=dict(counts))


# ----------------------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------------------


def _failed_ids(session: Session, *, source_id: int | None, ids: Sequence[int] | None, limit: int | None) -> list[int]:
    query = select(_INBOX.c.id).where(_INBOX.c.status == "failed").order_by(_INBOX.c.received_at, _INBOX.c.id)
    if source_id is not None:
        query = query.where(_INBOX.c.source_id == source_id)
    if ids is not None:
        if not ids:
            return []
        query = query.where(_INBOX.c.id.in_(sorted(set(ids))))
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def _not_failed(session: Session, ids: Sequence[int], source_id: int | None) -> list[ReprocessedRow]:
    """Listed ids that are not failed rows (of the chosen source): reported, never touched."""
    if not ids:
        return []
    found = {
        row.id: row
        for row in session.execute(
            select(_INBOX.c.id, _INBOX.c.status, _INBOX.c.source_id, _SOURCES.c.name)
            .join_from(_INBOX, _SOURCES, _SOURCES.c.id == _INBOX.c.source_id, isouter=True)
            .where(_INBOX.c.id.in_(sorted(set(ids))))
        )
    }
    reported = []
    for inbox_id in ids:
        row = found.get(inbox_id)
        if row is None:
            reported.append(ReprocessedRow(inbox_id, "-", "-", "skipped", "no inbox row has this id"))
        elif source_id is not None and row.source_id != source_id:
            reported.append(
                ReprocessedRow(inbox_id, row.name or "-", row.status, "skipped", "belongs to another source")
            )
        elif row.status != "failed":
            reported.append(
                ReprocessedRow(inbox_id, row.name or "-", row.status, "skipped", f"not failed (it is {row.status})")
            )
        # else: a failed row of the source beyond the limit
    return reported


# ----------------------------------------------------------------------------------------------------------
# One row
# ----------------------------------------------------------------------------------------------------------


def _reprocess_one(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    inbox_id: int,
    *,
    now: datetime,
) -> ReprocessedRow | None:
    # Locked (PostgreSQL) and read again: a concurrent run, or the moment since the selection, may have changed it.
    item = session.execute(
        select(_INBOX.c.id, _INBOX.c.source_id, _INBOX.c.body, _INBOX.c.body_sha256, _INBOX.c.status)
        .where(_INBOX.c.id == inbox_id)
        .with_for_update()
    ).one_or_none()
    if item is None:
        return None
    source_row = session.execute(
        select(_SOURCES.c.name, _SOURCES.c.enabled).where(_SOURCES.c.id == item.source_id)
    ).one_or_none()
    name = source_row.name if source_row is not None else f"#{item.source_id}"

    def skipped(reason: str) -> ReprocessedRow:
        return ReprocessedRow(inbox_id, name, item.status, "skipped", reason)

    if item.status != "failed":
        return skipped(f"not failed any more (it is {item.status})")
    if source_row is None:
        return skipped("its source was deleted")
    if not source_row.enabled:
        return skipped(f"the source {name!r} is disabled")
    source = load_source(session, encryptor, name)  # the source's current configuration
    if source is None:  # disabled between the two reads
        return skipped(f"the source {name!r} is disabled")
    try:
        body = inbox_body(encryptor, item)
    except (DecryptionError, UnicodeDecodeError):
        return skipped("the body cannot be decrypted with HUB_ENCRYPTION_KEY")

    parsed = parse_delivery(source, body)
    if parsed.body_sha256 != item.body_sha256:
        return skipped("the decrypted body does not match the row's SHA-256")
    stored = StoredDelivery(inbox_id, parsed.body_sha256, _earlier_copy(session, source.id, inbox_id, parsed))

    def failed(reason: str) -> ReprocessedRow:
        _write(session, inbox_id, status="failed", error=reason[:_REASON_LIMIT], event_key=None, now=now)
        return ReprocessedRow(inbox_id, name, "failed", "failed", reason)

    if parsed.rejection is not None and stored.duplicate_of is None:
        return failed(rejection_text(parsed.rejection))
    outcome, failure = _process(session, encryptor, settings, source, parsed, stored, now=now)
    if outcome is None:
        assert failure is not None
        return failed(failure)
    note = "; ".join(outcome.notes) or None
    return ReprocessedRow(inbox_id, name, "failed", outcome.status, note, records=outcome.records)


def _process(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    source: SourceConfig,
    parsed: ParsedDelivery,
    stored: StoredDelivery,
    *,
    now: datetime,
) -> tuple[DeliveryOutcome | None, str | None]:
    """``process_delivery`` on the existing row, in a SAVEPOINT: the outcome, or the failure with all of the
    attempt's work rolled back. The row is first written as ``store_delivery`` writes a fresh delivery that parsed
    (``processed``, with its event id); ``process_delivery`` rewrites it for a repeat or to keep notes."""
    savepoint = session.begin_nested()
    try:
        _write(session, stored.inbox_id, status="processed", error=None, event_key=parsed.event_key, now=now)
        outcome = process_delivery(session, encryptor, settings, source, parsed, stored, now=now)
        session.flush()
    except DeliveryRejected as error:
        savepoint.rollback()
        return None, rejection_text(error)
    except Exception as error:
        log.exception("CMP inbox item %s (%s): reprocessing failed; it stays failed", stored.inbox_id, source.name)
        savepoint.rollback()
        return None, f"internal error: {type(error).__name__}: {error}"
    savepoint.commit()
    return outcome, None


def _earlier_copy(session: Session, source_id: int, inbox_id: int, parsed: ParsedDelivery) -> int | None:
    """The earliest other row of the source with the same body, or the same CMP event id, that was processed or
    was a repeat — what ``store_delivery``'s insert returns for a new row, with this row in place of the new one.
    One probe per key, each answered by its index (``hub.cmp.services.earliest_copy``)."""
    keys: list[tuple[Any, str]] = [(_INBOX.c.body_sha256, parsed.body_sha256)]
    if parsed.event_key is not None:
        keys.append((_INBOX.c.event_key, parsed.event_key))
    found = [session.scalar(earliest_copy(source_id, column.name, value, inbox_id)) for column, value in keys]
    return min((earliest for earliest in found if earliest is not None), default=None)


def _write(
    session: Session, inbox_id: int, *, status: str, error: str | None, event_key: str | None, now: datetime
) -> None:
    session.execute(
        update(_INBOX)
        .where(_INBOX.c.id == inbox_id)
        .values(status=status, error=error, event_key=event_key, processed_at=now)
    )
