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
from hub.db import json_document
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


@pytest.mark.parametrize("mode", ["force_generic_plan", "force_custom_plan"])
def test_a_batch_looks_up_earlier_copies_by_key(postgresql_session: Session, mode: str) -> None:
    # The batch's statement (its inbox rows, its sources, earlier copies of its deliveries) takes its lists as
    # arrays and stays prepared: the plan a connection keeps, made on an empty inbox, must still probe each index
    # by its key once the inbox has filled, not walk the source's deliveries.
    session = postgresql_session
    source_id = add_source(session)
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
    # Four deliveries: copies of stored ones by body, by CMP event id, and new ones.
    keys = [(f"{n:064x}", f"evt-new-{n}") for n in (5, 50)] + [(f"{n:064x}", f"evt-{n}") for n in (ROWS + 5, 7)]
    rows = [{**row, "body_sha256": body, "event_key": event} for body, event in keys]
    values = {"rows": json_document(rows), "names": ["plans"]}
    prepared = PreparedPlan(session, _postgresql_store_statement(), values, mode)
    prepared.explain()  # the first run, on an empty inbox
    fill_inbox(session, source_id)
    text = prepared.explain()
    assert "Seq Scan on cmp_inbox" not in text, text
    for index, key in (("ix_cmp_inbox_source_body", "body_sha256"), ("ix_cmp_inbox_source_event_key", "event_key")):
        assert index in text, text
        condition = text.split(index, 1)[1].split("Index Cond:", 1)[1].split("\n", 1)[0]
        assert key in condition, text
