"""Bulk profile import from CSV (``hub import profiles FILE.csv``).

Columns are named like the CONTRACT ``user`` keys (``email``, ``phone``, ``external_id``, ``first_name``, ...)
plus an optional ``region``; an unknown header stops the import before any row is read. Rows are streamed (one
row in memory at a time) and resolved exactly like ``POST /api/v1/identify``; every ``batch_size`` rows are
committed, so an interrupted import keeps its progress and, because resolution is idempotent, can simply be run
again: rows already imported match their profiles and create nothing.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from hub.config import Settings
from hub.db import utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.identifiers import IdentityPolicy, identifier_candidates, identity_policy
from hub.profiles.normalize import USER_FIELDS
from hub.profiles.services import prepare_identity, resolve_prepared

REGION_COLUMN = "region"
IMPORT_COLUMNS: frozenset[str] = USER_FIELDS | {REGION_COLUMN}
DEFAULT_BATCH_SIZE = 500
MAX_REPORTED = 50


class ImportHeaderError(ValueError):
    """The CSV header cannot be mapped; nothing was imported."""


@dataclass(frozen=True)
class RowProblem:
    row: int  # line number in the file (the header is line 1)
    reason: str


@dataclass
class ImportSummary:
    rows: int = 0
    created: int = 0
    merged: int = 0  # profiles merged away into others
    updated: int = 0  # rows that added identifiers, traits or region to an existing profile
    unchanged: int = 0
    rejected: int = 0
    rejections: list[RowProblem] = field(default_factory=list)  # the first MAX_REPORTED
    warned: int = 0
    warnings: list[RowProblem] = field(default_factory=list)  # limits, blocklist notes on imported rows

    def reject(self, row: int, reason: str, max_reported: int) -> None:
        self.rejected += 1
        if len(self.rejections) < max_reported:
            self.rejections.append(RowProblem(row, reason))

    def warn(self, row: int, reason: str, max_reported: int) -> None:
        self.warned += 1
        if len(self.warnings) < max_reported:
            self.warnings.append(RowProblem(row, reason))


def check_header(fieldnames: Sequence[str] | None) -> list[str]:
    """The header's column names, or ImportHeaderError naming every unusable column."""
    if not fieldnames:
        raise ImportHeaderError("the file is empty; the first line must name the columns (e.g. email,phone)")
    names = [name.strip() for name in fieldnames]
    problems = []
    unknown = [name for name in names if name not in IMPORT_COLUMNS]
    if unknown:
        problems.append(
            f"unknown column(s) {', '.join(repr(n) for n in unknown)}; use {', '.join(sorted(IMPORT_COLUMNS))}"
        )
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        problems.append(f"column(s) named twice: {', '.join(duplicated)}")
    if problems:
        raise ImportHeaderError("; ".join(problems))
    return names


def import_profiles(
    session_factory: sessionmaker[Session],
    encryptor: FieldEncryptor,
    settings: Settings,
    lines: Iterable[str],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    source: str = "import",
    now: Callable[[], datetime] = utcnow,
    on_row: Callable[[int], None] | None = None,
    max_reported: int = MAX_REPORTED,
) -> ImportSummary:
    """Import rows from CSV text (``lines``: an open text file with ``newline=""``). Commits every
    ``batch_size`` rows. Raises ImportHeaderError before touching the database when the header is unusable."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    reader = csv.reader(lines)
    header = check_header(next(reader, None))
    policy = identity_policy(settings.extra)
    summary = ImportSummary()
    session = session_factory()
    pending = 0
    try:
        for cells in reader:
            row_number = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            summary.rows += 1
            _import_row(
                session, encryptor, settings, policy, header, cells, row_number, summary, source, now(), max_reported
            )
            pending += 1
            if pending >= batch_size:
                session.commit()
                session.expunge_all()
                pending = 0
            if on_row is not None:
                on_row(summary.rows)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    return summary


def _import_row(
    session: Session,
    encryptor: FieldEncryptor,
    settings: Settings,
    policy: IdentityPolicy,
    header: list[str],
    cells: list[str],
    row: int,
    summary: ImportSummary,
    source: str,
    now: datetime,
    max_reported: int,
) -> None:
    if len(cells) != len(header):
        summary.reject(row, f"has {len(cells)} cells but the header names {len(header)} columns", max_reported)
        return
    user: dict[str, object] = {}
    region: str | None = None
    for name, cell in zip(header, cells, strict=True):
        value = cell.strip()
        if not value:
            continue
        if name == REGION_COLUMN:
            region = value
        else:
            user[name] = value
    prepared = prepare_identity(user, region=region, settings=settings)
    if prepared.errors:
        reason = "; ".join(f"{path}: {message}" for path, message in sorted(prepared.errors.items()))
        summary.reject(row, reason, max_reported)
        return
    if not identifier_candidates(prepared.normalized):
        summary.reject(row, "no identifier (email, phone, external_id, fbp or fbc)", max_reported)
        return
    resolution = resolve_prepared(
        session, encryptor, prepared, source=source, settings=settings, now=now, policy=policy
    )
    if resolution.conflict is not None:
        summary.reject(row, f"{resolution.conflict_field}: {resolution.conflict}", max_reported)
        return
    if resolution.suppressed:
        summary.reject(row, "belongs to an erased person; not imported", max_reported)
        return
    if resolution.profile_id is None:
        summary.reject(row, "; ".join(resolution.notes) or "no profile resolved", max_reported)
        return
    if resolution.notes:
        summary.warn(row, "; ".join(resolution.notes), max_reported)
    summary.merged += len(resolution.merged)
    if resolution.created:
        summary.created += 1
    elif resolution.changed:
        summary.updated += 1
    else:
        summary.unchanged += 1
