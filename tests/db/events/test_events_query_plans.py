"""PostgreSQL: ingestion's look-ups probe the unique indexes, whatever the planner believes about table sizes.

A young database has no statistics (autovacuum has not analyzed it yet, or is off), and a connection keeps the
generic plan it chose for a prepared statement while its tables grow. A plan left to the planner then stays a
sequential scan whose cost grows with every stored event; these tests pin the plans under both plan-cache modes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from hub.db import json_document
from hub.events.models import Event
from hub.events.services import _postgresql_existing_statement
from hub.profiles.models import Identity, Profile
from hub.profiles.services import _postgresql_lookup_statement
from tests.support.plans import PreparedPlan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ROWS = 3000


def plan(session: Session, statement: Any, values: dict[str, Any], mode: str) -> str:
    return PreparedPlan(session, statement, values, mode).explain()


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_stored_event_ids_are_probed_one_by_one(postgresql_session: Session, mode: str) -> None:
    session = postgresql_session
    session.execute(
        insert(Event.__table__),
        [
            {"event_id": f"plan-{n}", "source_event": "page_view", "occurred_at": NOW, "received_at": NOW}
            for n in range(ROWS)
        ],
    )
    values = {"event_ids": json_document([{"event_id": f"plan-{n}"} for n in range(100)])}
    text = plan(session, _postgresql_existing_statement(), values, mode)
    assert "Seq Scan on events" not in text, text
    assert "uq_events_event_id" in text, text


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_identifiers_are_probed_one_by_one(postgresql_session: Session, mode: str) -> None:
    session = postgresql_session
    session.execute(
        insert(Profile.__table__), [{"id": f"p{n:031d}", "created_at": NOW, "updated_at": NOW} for n in range(ROWS)]
    )
    session.execute(
        insert(Identity.__table__),
        [
            {
                "profile_id": f"p{n:031d}",
                "kind": "email",
                "value_hash": f"{n:064x}",
                "created_at": NOW,
                "last_seen_at": NOW,
            }
            for n in range(ROWS)
        ],
    )
    pairs = [("email", f"{n:064x}") for n in range(0, ROWS, 30)] + [("fbp", f"{n:064x}") for n in range(100)]
    values = {"keys": json_document([{"kind": kind, "value_hash": value_hash} for kind, value_hash in pairs])}
    text = plan(session, _postgresql_lookup_statement(), values, mode)
    for table in ("identities", "profiles", "suppressed_identifiers"):
        assert f"Seq Scan on {table}" not in text, text
    assert "uq_identities_kind_value_hash" in text, text
