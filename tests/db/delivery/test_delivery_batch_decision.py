"""The scheduler decides a batch with the people read at once: the same decisions decide_stored_event makes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy.orm import Session

from hub.app import create_app
from hub.config import Settings
from hub.consent.models import ConsentRecord
from hub.db import new_id, session_scope, utcnow
from hub.delivery.dispatch import run_once
from hub.profiles.models import Profile
from hub.rules.services import decide_stored_event
from tests.support.databases import TestDatabase
from tests.support.delivery import Sandbox, add_destination, add_events, add_mapping, events_by_id, running_sandbox

H = timedelta(hours=1)


@pytest.fixture
def hub_app(fresh_database: TestDatabase, settings: Settings) -> Iterator[tuple[Flask, Sandbox]]:
    with running_sandbox() as sandbox:
        app = create_app(settings.with_overrides(database_url=fresh_database.url, graph_url=sandbox.url))
        try:
            yield app, sandbox
        finally:
            app.extensions["hub.engine"].dispose()


def _profile(session: Session, region: str | None, merged_into: str | None = None, age_days: int = 30) -> str:
    row = Profile(
        id=new_id(), region=region, merged_into_id=merged_into, created_at=utcnow() - timedelta(days=age_days)
    )
    session.add(row)
    session.flush()
    return row.id


def _consent(session: Session, profile_id: str, purpose: str, status: str, ago: timedelta) -> None:
    at = utcnow() - ago
    session.add(
        ConsentRecord(
            profile_id=profile_id,
            purpose=purpose,
            status=status,
            collected_at=at,
            received_at=at,
            source="cmp:test",
            source_event_id=new_id(),
            proof={},
        )
    )
    session.flush()


def _people(session: Session) -> dict[str, str | None]:
    """People whose events decide every way: opt-in granted/denied, opt-out with and without an opt-out, merged
    clusters whose fold re-asserts a denial, a chain of two hops, an unknown profile region, no profile."""
    eu_granted = _profile(session, "DE")
    _consent(session, eu_granted, "ad_user_data", "granted", 3 * H)
    eu_denied = _profile(session, "FR")
    _consent(session, eu_denied, "ad_user_data", "denied", 3 * H)
    ca_opted_out = _profile(session, "US-CA")
    _consent(session, ca_opted_out, "sale", "denied", 3 * H)
    root = _profile(session, "US-CA", age_days=60)
    older = _profile(session, "DE", merged_into=root, age_days=30)
    newer = _profile(session, None, merged_into=root, age_days=10)
    _consent(session, root, "sale", "denied", 5 * H)
    _consent(session, newer, "sale", "denied", 3 * H)
    _consent(session, older, "sale", "granted", 2 * H)
    _consent(session, older, "ad_user_data", "granted", 2 * H)
    top = _profile(session, "GB", age_days=50)
    middle = _profile(session, "GB", merged_into=top, age_days=40)
    bottom = _profile(session, "GB", merged_into=middle, age_days=20)
    _consent(session, top, "ad_user_data", "granted", 4 * H)
    _consent(session, middle, "ad_user_data", "denied", 3 * H)
    nowhere = _profile(session, None)
    return {
        "eu_granted": eu_granted,
        "eu_denied": eu_denied,
        "ca_opted_out": ca_opted_out,
        "merged_root": root,
        "merged_member": newer,
        "chain": bottom,
        "nowhere": nowhere,
        "none": None,
    }


def test_batch_decisions_equal_decide_stored_event(hub_app: tuple[Flask, Sandbox]) -> None:
    app, _sandbox = hub_app
    settings: Settings = app.extensions["hub.settings"]
    now = utcnow()
    with session_scope(app.extensions["hub.sessionmaker"]) as session:
        add_destination(session, settings)
        add_mapping(session)
        people = _people(session)
        ids: list[str] = []
        for name, pid in people.items():
            for region in (None, "US", "US-CA", "DE", "ZZ"):
                for extra in ({}, {"gpc": True}, {"suppressed": True}, {"received_at": now - timedelta(seconds=5)}):
                    ids += add_events(
                        session, settings, 1, now=now, region=region, prefix=name, profile_id=pid, **extra
                    )
        ids += add_events(session, settings, 2, now=now, prefix="unmapped", source_event="not_mapped")

    # What decide_stored_event records for each event, computed in a transaction that is rolled back.
    sessionmaker = app.extensions["hub.sessionmaker"]
    expected: dict[str, dict[str, Any]] = {}
    with sessionmaker() as session:
        for event_id, event in events_by_id(session, ids).items():
            decision = decide_stored_event(session, event, now=now, settings=settings)
            expected[event_id] = {
                "outcome": decision.outcome,
                "decision": event.decision,
                "next_attempt_at": event.next_attempt_at if decision.outcome == "wait" else None,
                "mapping": (event.mapping_id, event.mapping_version),
            }
        session.rollback()
    outcomes = {e["outcome"] for e in expected.values()}
    assert {"send", "send_ldu", "block", "wait"} <= outcomes

    summary = run_once(app, now=now)
    assert summary.claimed == len(ids)
    with sessionmaker() as session:
        for event_id, event in events_by_id(session, ids).items():
            want = expected[event_id]
            assert event.decision == want["decision"], event_id
            assert (event.mapping_id, event.mapping_version) == want["mapping"], event_id
            if want["outcome"] == "wait":
                assert (event.status, event.next_attempt_at) == ("pending", want["next_attempt_at"]), event_id
            elif want["outcome"] == "block":
                assert event.status == "blocked", event_id
            else:
                assert event.status == "sent", event_id
