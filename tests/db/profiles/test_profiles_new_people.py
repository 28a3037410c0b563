"""The new people of a batch: on PostgreSQL their profiles and identities are written by one statement, with the
rows the SQLite path writes, and a person who loses an identifier to a concurrent writer is still undone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.config import Settings
from hub.db import json_document, make_sessionmaker
from hub.encryption import FieldEncryptor
from hub.profiles import services
from hub.profiles.models import Identity, Profile
from hub.profiles.normalize import sha256_hex
from hub.profiles.services import Resolution, prepare_identity, resolve_identity, resolve_many
from tests.support.databases import TestDatabase

T0 = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)

NEW_PEOPLE: list[tuple[dict[str, object], str | None]] = [
    ({"email": "nia@shop.example", "phone": "+4791234567", "first_name": "Nia", "country": "NO"}, None),
    ({"email": "ola@shop.example", "external_id": "crm-ola", "fbp": "fb.1.1764300000000.111"}, "US-CA"),
    ({"external_id": "crm-pia"}, None),  # no trait, no region: NULL columns
    ({"email": "test@test.com", "phone": "+4915100000002", "last_name": "Roe"}, None),  # blocked email noted
]


@pytest.fixture
def encryptor(settings: Settings) -> FieldEncryptor:
    return FieldEncryptor(settings.encryption_keys)


@pytest.fixture
def pg_session(db_session: Session) -> Session:
    if db_session.get_bind().dialect.name != "postgresql":
        pytest.skip("the one-statement write is PostgreSQL's; SQLite keeps two INSERTs")
    return db_session


@contextmanager
def recorded_statements(session: Session) -> Iterator[list[str]]:
    """The SQL text of every statement the session's connection sends while the block runs."""
    connection = session.connection()
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(connection, "before_cursor_execute", record)


def writes(statements: list[str]) -> list[str]:
    return [s for s in statements if "INSERT" in s.upper() or "DELETE" in s.upper()]


def test_new_people_are_written_with_the_rows_built_for_them(
    db_session: Session, encryptor: FieldEncryptor, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One lookup and one write on PostgreSQL (the lookup and two INSERTs on SQLite); on both, every column of
    every row is the one ``_new_person`` built, which the SQLite path inserts as given."""
    built: list[services._NewPerson] = []
    real_new_person = services._new_person

    def new_person(*args: Any, **kwargs: Any) -> services._NewPerson:
        person = real_new_person(*args, **kwargs)
        built.append(person)
        return person

    monkeypatch.setattr(services, "_new_person", new_person)
    items = [prepare_identity(user, region=region, settings=settings) for user, region in NEW_PEOPLE]
    with recorded_statements(db_session) as statements:
        results = resolve_many(db_session, encryptor, items, source="batch", settings=settings, now=T0)

    postgresql = db_session.get_bind().dialect.name == "postgresql"
    assert len(statements) == (2 if postgresql else 3), statements
    if postgresql:
        [write] = writes(statements)
        assert write.lstrip().startswith("WITH created_profiles AS"), write
        assert "INSERT INTO profiles" in write, write
        assert "INSERT INTO identities" in write, write
    assert [r.created for r in results] == [True] * len(NEW_PEOPLE)
    assert [r.profile_id for r in results] == [person.profile["id"] for person in built]
    assert [r.region for r in results] == ["NO", "US-CA", None, None]
    assert results[3].attached == ("phone",)  # the blocked email is noted, not stored
    assert results[3].notes

    ids = [person.profile["id"] for person in built]
    db_session.expire_all()
    profiles = {
        row["id"]: dict(row)
        for row in db_session.execute(select(Profile.__table__).where(Profile.id.in_(ids))).mappings()
    }
    assert profiles == {
        person.profile["id"]: {**person.profile, "merged_into_id": None, "erased_at": None} for person in built
    }
    stored = [
        dict(row)
        for row in db_session.execute(
            select(Identity.__table__).where(Identity.profile_id.in_(ids)).order_by(Identity.id)
        ).mappings()
    ]
    expected = sorted(
        (identity for person in built for identity in person.identities),
        key=lambda row: (row["kind"], row["value_hash"]),
    )
    # Ids follow the insertion order: the identities went in sorted by (kind, hash), as concurrent batches expect.
    assert [{key: value for key, value in row.items() if key != "id"} for row in stored] == expected
    assert len(stored) == 7

    # And what the built rows hold (so the comparison above is about real values, not two empty lists).
    nia = profiles[ids[0]]
    assert (nia["created_at"], nia["updated_at"], nia["region"]) == (T0, T0, "NO")
    assert encryptor.decrypt_json(nia["traits_encrypted"]) == {"fn": "nia", "country": "no"}
    assert profiles[ids[2]]["traits_encrypted"] is None
    phone = next(row for row in stored if row["profile_id"] == ids[0] and row["kind"] == "phone")
    assert (phone["value_hash"], phone["created_at"], phone["last_seen_at"]) == (sha256_hex("4791234567"), T0, T0)
    assert encryptor.decrypt(phone["value_encrypted"]) == "4791234567"


def test_new_people_statement_text_is_the_same_for_any_batch(
    pg_session: Session, encryptor: FieldEncryptor, settings: Settings
) -> None:
    """The driver keeps one prepared statement for it, whatever the number of new people."""
    texts = []
    for batch in (NEW_PEOPLE[:1], NEW_PEOPLE[1:]):
        items = [prepare_identity(user, region=region, settings=settings) for user, region in batch]
        with recorded_statements(pg_session) as statements:
            resolve_many(pg_session, encryptor, items, source="batch", settings=settings, now=T0)
        [write] = writes(statements)
        texts.append(write)
    assert texts[0] == texts[1]


def new_people_parameters(profiles: list[str], identities: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "profiles": json_document([{"id": p, "traits_encrypted": None, "region": None} for p in profiles]),
        "identities": json_document(
            [
                {"profile_id": p, "kind": "email", "value_hash": sha256_hex(value), "value_encrypted": None}
                for p, value in identities
            ]
        ),
        "now": T0,
    }


def test_new_people_statement_checks_the_foreign_key_at_its_end(pg_session: Session) -> None:
    """An identity may name a profile the same statement inserts (the check runs when the statement ends), and
    still no other."""
    statement = services._postgresql_new_people_insert()
    params = new_people_parameters(["a" * 32, "b" * 32], [("b" * 32, "b@shop.example"), ("a" * 32, "a@shop.example")])
    rows = pg_session.execute(statement, params).all()
    assert sorted(rows) == sorted([("email", sha256_hex("a@shop.example")), ("email", sha256_hex("b@shop.example"))])
    held = dict(pg_session.execute(select(Identity.value_hash, Identity.profile_id)).all())
    assert held == {sha256_hex("a@shop.example"): "a" * 32, sha256_hex("b@shop.example"): "b" * 32}

    with pytest.raises(IntegrityError, match="fk_identities_profile_id_profiles"), pg_session.begin_nested():
        pg_session.execute(statement, new_people_parameters(["c" * 32], [("d" * 32, "d@shop.example")]))
    assert pg_session.scalar(select(func.count()).select_from(Profile)) == 2


def test_new_people_statement_without_identities_still_creates_the_profiles(pg_session: Session) -> None:
    rows = pg_session.execute(
        services._postgresql_new_people_insert(), new_people_parameters(["a" * 32, "b" * 32], [])
    ).all()
    assert rows == []
    stored = pg_session.execute(select(Profile.id, Profile.created_at, Profile.updated_at).order_by(Profile.id))
    assert stored.all() == [("a" * 32, T0, T0), ("b" * 32, T0, T0)]


def test_batch_losing_a_new_identifier_to_a_concurrent_writer_attaches_to_the_winner(
    fresh_database: TestDatabase, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Another transaction holds the email uncommitted while the batch looks it up: the batch's one write waits for
    it and skips it; the half-created person is removed and resolved again to the winner's profile, attaching its
    phone there, while the batch's other new person is created as usual."""
    if fresh_database.backend != "postgresql":
        pytest.skip("SQLite serializes writers: the batch starts after the other writer has committed")
    encryptor = FieldEncryptor(settings.encryption_keys)
    factory = make_sessionmaker(fresh_database.engine)
    users = [{"email": "race@shop.example", "phone": "+4915100000001"}, {"email": "calm@shop.example"}]
    items = [prepare_identity(user, region=None, settings=settings) for user in users]
    outcome: list[list[Resolution] | BaseException] = []
    sent: list[str] = []

    def batch() -> None:
        try:
            with factory() as session, recorded_statements(session) as statements:
                outcome.append(resolve_many(session, encryptor, items, source="race", settings=settings, now=T0))
                sent.extend(statements)
                session.commit()
        except BaseException as error:  # reported by the main thread
            outcome.append(error)

    caplog.set_level(logging.DEBUG, logger="hub.profiles.services")
    with factory() as winner_session:
        winner = resolve_identity(
            winner_session,
            encryptor,
            {"email": users[0]["email"]},
            region=None,
            source="race",
            settings=settings,
            now=T0,
        )
        thread = threading.Thread(target=batch)
        thread.start()
        with factory() as observer:
            waiting = 0
            deadline = time.monotonic() + 30
            while waiting == 0 and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.02)
                waiting = observer.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND query LIKE '%INSERT INTO identities%'"
                    )
                )
        assert waiting == 1, "the batch never waited on the winner's email"
        winner_session.commit()
        thread.join(timeout=30)
    [results] = outcome
    if isinstance(results, BaseException):
        raise results

    assert (results[0].profile_id, results[0].created, results[0].attached) == (winner.profile_id, False, ("phone",))
    assert (results[1].created, results[1].attached) == (True, ("email",))
    assert "lost a race" in caplog.text
    assert sum(s.lstrip().startswith("WITH created_profiles AS") for s in sent) == 1, sent
    assert not any(s.lstrip().startswith("INSERT INTO profiles") for s in sent), sent
    with factory() as session:
        holders = {
            (row.kind, row.value_hash): row.profile_id
            for row in session.execute(select(Identity.kind, Identity.value_hash, Identity.profile_id))
        }
        assert holders == {
            ("email", sha256_hex("race@shop.example")): winner.profile_id,
            ("phone", sha256_hex("4915100000001")): winner.profile_id,
            ("email", sha256_hex("calm@shop.example")): results[1].profile_id,
        }
        assert set(session.scalars(select(Profile.id))) == {winner.profile_id, results[1].profile_id}
