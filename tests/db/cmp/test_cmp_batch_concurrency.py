"""Batches of CMP deliveries racing in separate transactions (two hub processes, or a CMP retrying while the first
delivery is still being processed): each decision is recorded once and the projection stays exact."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from hub.cmp.auth import sign_hmac
from hub.cmp.batch import Answer, Delivery, process_batch
from hub.cmp.models import CmpInboxItem
from hub.cmp.sources import create_source
from hub.config import Settings
from hub.consent.models import ConsentRecord
from hub.consent.services import verify_projection
from hub.db import make_sessionmaker, utcnow
from hub.encryption import FieldEncryptor
from hub.profiles.models import Profile
from tests.conftest import make_settings
from tests.support.databases import TestDatabase

SECRET = "race-secret-race-secret-race-secret"


def delivery(event: str, email: str, minute: int, status: str) -> Delivery:
    data = json.dumps(
        {
            "id": event,
            "collected_at": f"2026-11-28T10:{minute:02d}:00Z",
            "subject": {"email": email},
            "purposes": {"ad_user_data": status, "ad_storage": status},
        }
    ).encode()
    headers = {"X-Hub-Signature": sign_hmac(SECRET.encode(), data, int(time.time()))}
    return Delivery("race", data, headers, "127.0.0.1", utcnow())


def race_source(database: TestDatabase, encryptor: FieldEncryptor) -> sessionmaker[Session]:
    """Sessions on ``database``, which holds the "race" source (generic, HMAC with ``SECRET``)."""
    sessions = make_sessionmaker(database.engine)
    with sessions() as session:
        create_source(
            session, encryptor, name="race", adapter="generic", authenticator="hmac", secret=SECRET, now=utcnow()
        )
        session.commit()
    return sessions


def test_racing_batches_record_each_decision_once(fresh_database: TestDatabase, settings: Settings) -> None:
    encryptor = FieldEncryptor(settings.encryption_keys)
    sessions = race_source(fresh_database, encryptor)

    people = [f"p{n}@race.example" for n in range(6)]
    # Every batch holds the same new people; each event is delivered to two batches at once.
    rounds = [
        [
            delivery(f"r{r}-{n}", email, r * 10 + n, "granted" if (r + n) % 2 else "denied")
            for n, email in enumerate(people)
        ]
        for r in range(4)
    ]
    answers: list[tuple[list[Delivery], list[Answer | None]]] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    for batch in rounds:
        barrier = threading.Barrier(3)

        def run(deliveries: list[Delivery], barrier: threading.Barrier = barrier) -> None:
            try:
                barrier.wait(timeout=10)
                result = process_batch(sessions, encryptor, settings, deliveries)
                with guard:
                    answers.append((deliveries, result))
            except BaseException as error:  # reported by the main thread
                errors.append(error)

        threads = [
            threading.Thread(target=run, args=(batch,)),
            threading.Thread(target=run, args=(list(reversed(batch)),)),
            threading.Thread(target=run, args=(batch[::2],)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "a batch never finished"
    assert errors == []

    answered = {
        json.loads(d.body)["id"]
        for batch, result in answers
        for d, answer in zip(batch, result, strict=True)
        if answer is not None
    }
    # Racing batches wait for each other's locks; one that lost a race goes one by one (None) having stored
    # nothing. Most are answered.
    assert len(answered) > 12, answers
    with sessions() as session:
        recorded = Counter(
            tuple(row) for row in session.execute(select(ConsentRecord.source_event_id, ConsentRecord.purpose))
        )
        assert max(recorded.values()) == 1  # however many batches carried an event
        for event in answered:  # recorded by its own batch or by the one it raced
            assert recorded[(event, "ad_user_data")] == recorded[(event, "ad_storage")] == 1
        roots = session.scalar(select(func.count()).select_from(Profile).where(Profile.merged_into_id.is_(None)))
        assert roots == len(people)
        assert set(session.scalars(select(CmpInboxItem.status))) <= {"processed", "duplicate"}
        assert verify_projection(session) == []


def test_back_to_back_batches_share_a_connection_and_quiet_holds_none(
    fresh_database: TestDatabase, tmp_path: Path, encryption_key: str
) -> None:
    from hub.app import create_app

    app = create_app(make_settings(tmp_path, fresh_database.url, encryption_key))
    batcher = app.extensions["hub.cmp_batcher"]
    engine = app.extensions["hub.engine"]
    encryptor = app.extensions["hub.encryptor"]
    with app.extensions["hub.sessionmaker"]() as session:
        create_source(
            session, encryptor, name="race", adapter="generic", authenticator="hmac", secret=SECRET, now=utcnow()
        )
        session.commit()

    def submit(event: str) -> str | None:
        answer = batcher.submit(delivery(event, f"{event}@example.com", 0, "granted"))
        return None if answer is None else answer.result

    try:
        assert submit("first") == "processed"  # the source is read and kept
        checkouts: list[object] = []

        def checkout(*_args: object) -> None:
            checkouts.append(1)

        event.listen(engine.pool, "checkout", checkout)
        batches_before = batcher.commit.batches
        answers: list[str | None] = []
        start = threading.Barrier(8)

        def sender(worker: int) -> None:
            start.wait()
            answers.extend(submit(f"w{worker}-{n}") for n in range(15))

        threads = [threading.Thread(target=sender, args=(worker,)) for worker in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        event.remove(engine.pool, "checkout", checkout)
        batches = batcher.commit.batches - batches_before
        assert answers == ["processed"] * 120
        # A batch with a successor waiting hands its connection on: fewer check-outs than batches.
        assert len(checkouts) < batches, (len(checkouts), batches)

        # A lone delivery's batch has nobody waiting: no connection stays checked out.
        assert submit("last") == "processed"
        assert engine.pool.checkedout() == 0
    finally:
        engine.dispose()


def test_new_people_go_with_the_consent_lock_and_a_lost_race_goes_one_by_one(
    fresh_database: TestDatabase, settings: Settings, monkeypatch: Any
) -> None:
    """On PostgreSQL a batch's new people are written in the round trip that locks them for their consent. When
    the look-up was stale (a concurrent writer created one of the people since), that person's insert is
    skipped, the batch is taken again without the delivery, and it goes one by one, to the existing person."""
    if fresh_database.backend != "postgresql":
        pytest.skip("the new people's statement is sent with the lock on PostgreSQL (hub.db.pipelined)")
    from hub.db import pipelined as real_pipelined
    from hub.profiles import services as profiles

    encryptor = FieldEncryptor(settings.encryption_keys)
    sessions = race_source(fresh_database, encryptor)

    round_trips: list[list[str]] = []

    def counting(session: Any, calls: Any, **kwargs: Any) -> Any:
        round_trips.append([str(call.statement).split()[0] for call in calls])
        return real_pipelined(session, calls, **kwargs)

    for module in ("hub.cmp.batch", "hub.consent.services", "hub.profiles.services"):
        monkeypatch.setattr(f"{module}.pipelined", counting)

    [answer] = process_batch(sessions, encryptor, settings, [delivery("new-1", "new@race.example", 1, "granted")])
    assert answer is not None
    assert answer.result == "processed"
    # The inbox and the look-up; the new person, the lock, the read, the ids; the ledger, the projection.
    assert len(round_trips) == 3, round_trips
    assert round_trips[1][0] == "WITH"  # the new person's statement leads the lock's round trip

    # A stale look-up: the batch believes new@race.example is new.
    def stale(self: Any, results: Any) -> Any:
        return profiles.Snapshot(held={}, suppressed=frozenset(), keys=self.keys)

    monkeypatch.setattr(profiles.LookupAhead, "read", stale)
    batch = [
        delivery("again-1", "new@race.example", 2, "denied"),
        delivery("other-1", "other@race.example", 3, "granted"),
    ]
    answers = process_batch(sessions, encryptor, settings, batch)
    # The lost race: that delivery is left to one by one (None); the other is processed by the batch again.
    assert answers[0] is None
    assert answers[1] is not None
    assert answers[1].result == "processed"
    with sessions() as session:
        people = session.scalars(select(Profile.id)).all()
        assert len(people) == 2  # the person created twice was not kept
        assert verify_projection(session) == []
