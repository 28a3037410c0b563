"""PostgreSQL: a webhook's look-up of earlier copies of itself probes the inbox indexes by key.

Every delivery asks for the earliest earlier delivery of its source with the same body and with the same CMP event
id. With ``body OR event id`` in one condition, and without statistics (a young database, or autovacuum off),
PostgreSQL kept a plan that read every earlier delivery of the source through the (source, event key) index, one
more row per delivery ever received. These tests pin the plans under both plan-cache modes.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session

from hub.cmp.batch import _postgresql_store_statement
from hub.cmp.models import CmpInboxItem, CmpSource
from hub.cmp.services import _INBOX_INSERT
from hub.db import json_document, unprepared
from tests.support.plans import PreparedPlan

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
ROWS = 3000


def add_source(session: Session) -> int:
    return session.execute(
        insert(CmpSource.__table__).returning(CmpSource.__table__.c.id),
        {"name": "plans", "adapter": "generic", "authenticator": "hmac", "settings": {}, "enabled": True},
    ).scalar_one()


def fill_inbox(session: Session, source_id: int) -> None:
    """ROWS processed deliveries of the source, each with its own body and CMP event id."""
    session.execute(
        insert(CmpInboxItem.__table__),
        [
            {
                "source_id": source_id,
                "received_at": NOW,
                "body": b"x",
                "body_sha256": f"{n:064x}",
                "event_key": f"evt-{n}",
                "headers": {},
                "status": "processed",
            }
            for n in range(ROWS)
        ],
    )


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_earlier_copies_are_probed_by_key(postgresql_session: Session, mode: str) -> None:
    session = postgresql_session
    source_id = add_source(session)
    values = {
        "new_source_id": source_id,
        "new_received_at": NOW,
        "new_body": b"y",
        "new_body_sha256": f"{ROWS + 1:064x}",
        "new_event_key": "evt-new",
        "new_headers": "{}",  # the plan's parameters are written as SQL literals: JSON as its text
        "new_status": "processed",
        "new_error": None,
        "new_processed_at": NOW,
        "earlier_body_sha256": f"{ROWS + 1:064x}",
        "earlier_event_key": "evt-new",
    }
    prepared = PreparedPlan(session, _INBOX_INSERT[True], values, mode)
    prepared.explain()  # the first run, on an empty inbox: the plan a long-lived connection keeps
    fill_inbox(session, source_id)
    text = prepared.explain()
    assert "Seq Scan on cmp_inbox" not in text, text
    assert "pk_cmp_inbox" not in text, text
    # Each probe's index condition names its key, not only the source.
    for index, key in (("ix_cmp_inbox_source_body", "body_sha256"), ("ix_cmp_inbox_source_event_key", "event_key")):
        assert index in text, text
        condition = text.split(index, 1)[1].split("Index Cond:", 1)[1].split("\n", 1)[0]
        assert key in condition, text


def test_a_batch_looks_up_earlier_copies_by_key(postgresql_session: Session) -> None:
    # The batch's statement (its inbox rows, its sources, earlier copies of its deliveries) takes lists, one
    # entry per delivery, and is sent unprepared (hub.db.unprepared), so it is planned for its values: each
    # look-up must probe its index, not walk the source's deliveries.
    session = postgresql_session
    source_id = add_source(session)
    fill_inbox(session, source_id)
    row = {
        "source_id": source_id,
        "received_at": NOW,
        "body": "\\x79",
        "body_sha256": "f" * 64,
        "event_key": "evt-new",
        "headers": {},
        "status": "processed",
        "error": None,
        "processed_at": NOW,
    }
    values = {
        "rows": json_document([row]),
        "names": ["plans"],
        "source_ids": [source_id],
        "bodies": [f"{n:064x}" for n in (5, 50, 500, 5000)],
        "event_keys": [f"evt-{n}" for n in (7, 70, 700)],
    }
    # Values written into the statement: planned for them, as an unprepared statement is.
    sql = (
        _postgresql_store_statement()
        .params(**values)
        .compile(dialect=session.get_bind().dialect, compile_kwargs={"literal_binds": True})
    )
    text = "\n".join(row[0] for row in session.connection().exec_driver_sql(f"EXPLAIN {sql}"))
    assert "Seq Scan on cmp_inbox" not in text, text
    assert "ix_cmp_inbox_source_body" in text, text
    assert "ix_cmp_inbox_source_event_key" in text, text


def test_unprepared_restores_the_connection_setting(postgresql_session: Session) -> None:
    session = postgresql_session
    driver = session.connection().connection.driver_connection
    before = driver.prepare_threshold
    with unprepared(session):
        assert driver.prepare_threshold is None
    assert driver.prepare_threshold == before
    with pytest.raises(RuntimeError), unprepared(session):
        raise RuntimeError("a failing statement")
    assert driver.prepare_threshold == before
