"""PostgreSQL: a consent batch's lock and read probe each key by index, in the plan a connection keeps.

Both statements stay prepared (their text is the same for every batch). A prepared statement's generic plan is
made when it first runs and kept by the connection; made on small tables, a plan over a list of keys chose a scan
of the whole projection and kept it once the table had grown. These tests make the plan on empty tables, fill
them, and read the plan the connection kept, under both plan-cache modes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from hub.consent.models import ConsentRecord, ConsentState, Purpose
from hub.consent.services import _postgresql_lock_roots, _postgresql_seen_and_state
from hub.db import json_document
from hub.profiles.models import Profile
from tests.support.plans import PreparedPlan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
PEOPLE = 3000


def purposes(session: Session) -> list[str]:
    return sorted(session.scalars(select(Purpose.name)).all())[:2]


def fill(session: Session) -> None:
    """PEOPLE people, each with two ledger rows (one CMP event) and their projection rows."""
    names = purposes(session)
    profiles = [{"id": f"p{n:05d}", "created_at": NOW, "updated_at": NOW} for n in range(PEOPLE)]
    session.execute(insert(Profile.__table__), profiles)
    records = [
        {
            "id": n * 2 + index + 1,
            "profile_id": f"p{n:05d}",
            "purpose": purpose,
            "status": "granted",
            "collected_at": NOW,
            "received_at": NOW,
            "source": "cmp:plans",
            "source_event_id": f"evt-{n}",
            "proof": {},
        }
        for n in range(PEOPLE)
        for index, purpose in enumerate(names)
    ]
    session.execute(insert(ConsentRecord.__table__), records)
    state = [
        {
            "profile_id": row["profile_id"],
            "purpose": row["purpose"],
            "status": "granted",
            "collected_at": NOW,
            "record_id": row["id"],
            "updated_at": NOW,
        }
        for row in records
    ]
    session.execute(insert(ConsentState.__table__), state)


def documents(session: Session) -> dict[str, str]:
    roots = [f"p{n:05d}" for n in (7, 70, 700)]
    return {
        "roots": json_document([{"id": root} for root in roots]),
        "names": json_document([{"name": name} for name in purposes(session)]),
        "events": json_document([{"source": "cmp:plans", "source_event_id": f"evt-{n}"} for n in (7, 70, 2000)]),
    }


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_lock_probes_each_root(postgresql_session: Session, mode: str) -> None:
    session = postgresql_session
    values = documents(session)
    parameters = {"roots": values["roots"], "names": values["names"]}
    prepared = PreparedPlan(session, _postgresql_lock_roots(), parameters, mode)
    prepared.explain()  # the first run, on empty tables: the plan a long-lived connection keeps
    fill(session)
    text = prepared.explain()
    assert "Seq Scan on profiles" not in text, text
    assert "Index Scan using pk_profiles on profiles" in text, text
    assert "Index Cond: ((id)::text = (wanted_roots.id)::text)" in text, text
    assert "LockRows" in text, text


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_the_read_probes_each_root_and_each_event(postgresql_session: Session, mode: str) -> None:
    session = postgresql_session
    values = documents(session)
    statement = _postgresql_seen_and_state()
    prepared = PreparedPlan(session, statement, {"roots": values["roots"], "events": values["events"]}, mode)
    prepared.explain()
    fill(session)
    text = prepared.explain()
    for table in ("consent_state", "consent_records", "profiles"):
        assert f"Seq Scan on {table}" not in text, text
    assert "Index Cond: ((profile_id)::text = (state_roots.id)::text)" in text, text
    assert "uq_consent_records_source" in text, text
    assert "Index Cond: ((source = (wanted_events.source)::text) AND (source_event_id = " in text, text


def test_the_read_returns_the_roots_rows_and_their_events(postgresql_session: Session) -> None:
    # What the plan reads: the projection of the roots asked, and the ledger rows of the events asked that the
    # roots' clusters hold (a member merged into a root counts as the root).
    session = postgresql_session
    fill(session)
    session.execute(Profile.__table__.update().where(Profile.id == "p00070").values(merged_into_id="p00007"))
    values = documents(session)
    rows = session.execute(_postgresql_seen_and_state(), {"roots": values["roots"], "events": values["events"]}).all()
    state = sorted((row.root, row.purpose) for row in rows if row.kind == "state")
    seen = sorted((row.root, row.source_event_id) for row in rows if row.kind == "seen")
    names = purposes(session)
    assert state == sorted((root, name) for root in ("p00007", "p00070", "p00700") for name in names)
    # evt-70 belongs to p00070, merged into p00007; evt-2000's person is not among the roots.
    assert seen == sorted([("p00007", "evt-7")] * 2 + [("p00007", "evt-70")] * 2)
