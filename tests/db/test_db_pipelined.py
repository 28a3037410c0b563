"""PostgreSQL: ``hub.db.pipelined`` sends a transaction's statements together and reads back what the session's
own ``execute`` reads, in order, with the same errors and the same transaction."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import String, bindparam, event, insert, select, text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from hub.cmp.models import CmpSource
from hub.db import Call, create_db_engine, is_lock_conflict, make_sessionmaker, pipelined
from hub.profiles.models import Profile
from tests.support.databases import TestDatabase

_SOURCES = CmpSource.__table__
_PROFILES = Profile.__table__

BY_NAMES = select(_SOURCES.c.id, _SOURCES.c.name, _SOURCES.c.settings, _SOURCES.c.enabled).where(
    _SOURCES.c.name.in_(bindparam("names", expanding=True))
)
ADD_SOURCE = insert(_SOURCES).returning(_SOURCES.c.id)
PROFILE = select(_PROFILES.c.id, _PROFILES.c.created_at, _PROFILES.c.erased_at).where(_PROFILES.c.id == bindparam("id"))
ADD_PROFILE = insert(_PROFILES)
COUNT_SOURCES = select(text("count(*) AS sources")).select_from(_SOURCES)


NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def source(name: str, **settings: object) -> dict[str, object]:
    return {
        "name": name,
        "adapter": "generic",
        "authenticator": "hmac",
        "settings": settings,
        "enabled": True,
        "created_at": NOW,
        "updated_at": NOW,
    }


def driver_status(session: Session) -> TransactionStatus:
    return session.connection().connection.driver_connection.info.transaction_status


@pytest.fixture
def postgresql_engine(fresh_database: TestDatabase) -> TestDatabase:
    if fresh_database.backend != "postgresql":
        pytest.skip("libpq's pipeline mode is PostgreSQL's")
    return fresh_database


def test_rows_read_back_as_the_session_reads_them(postgresql_session: Session) -> None:
    session = postgresql_session
    tricky = {"purpose_map": {'ünïcode \\ "quoted"': "ad_storage"}, "ip_allow_list": ["10.0.0.0/8"], "n": None}
    session.execute(insert(_SOURCES), [source("pipe-a", **tricky), source("pipe-b")])
    # An aware time in another zone: the column type's own processing gives it back in UTC, as the session does.
    created = datetime(2026, 11, 28, 23, 30, tzinfo=timezone(timedelta(hours=-5)))
    session.execute(ADD_PROFILE, {"id": "p-pipe", "created_at": created, "updated_at": created})

    names = {"names": ["pipe-a", "pipe-b", "missing"]}
    by_names, profile = pipelined(session, [Call(BY_NAMES, names, prepared=False), Call(PROFILE, {"id": "p-pipe"})])

    assert sorted(tuple(row) for row in by_names) == sorted(tuple(row) for row in session.execute(BY_NAMES, names))
    row = next(row for row in by_names if row.name == "pipe-a")
    assert row.settings == tricky
    assert row.enabled is True
    [person] = profile
    assert tuple(person) == tuple(session.execute(PROFILE, {"id": "p-pipe"}).one())
    assert person.created_at == created
    assert person.created_at.tzinfo == UTC
    assert person.erased_at is None


def test_statements_run_in_order_in_the_session_transaction(postgresql_session: Session) -> None:
    session = postgresql_session
    before = session.execute(COUNT_SOURCES).scalar_one()
    added, counted, listed = pipelined(
        session,
        [
            Call(ADD_SOURCE, source("pipe-order")),
            Call(COUNT_SOURCES, {}),
            Call(BY_NAMES, {"names": ["pipe-order"]}, prepared=False),
        ],
    )
    [(new_id,)] = added
    assert counted[0].sources == before + 1  # the count ran after the insert
    assert [row.id for row in listed] == [new_id]
    # The session sees the pipeline's writes: one transaction.
    assert session.execute(BY_NAMES, {"names": ["pipe-order"]}).one().id == new_id


def test_an_error_stops_the_rest_and_the_session_rolls_back(postgresql_engine: TestDatabase) -> None:
    sessions = make_sessionmaker(postgresql_engine.engine)
    with sessions() as session:
        session.execute(insert(_SOURCES), [source("pipe-taken")])
        session.commit()
    with sessions() as session:
        with pytest.raises(IntegrityError, match=r"duplicate key"):  # as the session's own statements raise it
            pipelined(
                session,
                [
                    Call(ADD_SOURCE, source("pipe-first")),
                    Call(ADD_SOURCE, source("pipe-taken")),  # unique name: fails
                    Call(ADD_SOURCE, source("pipe-never")),
                ],
                commit=True,
            )
        session.rollback()
        # Nothing of the failed transaction is kept, and the session works on.
        names = {"names": ["pipe-first", "pipe-taken", "pipe-never"]}
        assert [row.name for row in session.execute(BY_NAMES, names)] == ["pipe-taken"]


def test_commit_is_sent_with_the_statements(postgresql_engine: TestDatabase) -> None:
    sessions = make_sessionmaker(postgresql_engine.engine)
    other = create_db_engine(postgresql_engine.url)
    try:
        with sessions() as session:
            session.execute(BY_NAMES, {"names": ["x"]})  # the transaction has begun
            assert driver_status(session) == TransactionStatus.INTRANS
            pipelined(session, [Call(ADD_SOURCE, source("pipe-committed"))], commit=True)
            # Committed already: another connection sees the row before the session's own commit...
            assert driver_status(session) == TransactionStatus.IDLE
            with other.connect() as connection:
                assert connection.execute(BY_NAMES, {"names": ["pipe-committed"]}).one().name == "pipe-committed"
            # ... which then sends nothing.
            sent: list[str] = []
            event.listen(postgresql_engine.engine, "before_cursor_execute", lambda *args: sent.append(args[2]))
            session.commit()
            assert sent == []
    finally:
        other.dispose()


def test_commit_refuses_objects_pending_in_the_session(postgresql_engine: TestDatabase) -> None:
    sessions = make_sessionmaker(postgresql_engine.engine)
    with sessions() as session:
        now = datetime.now(UTC)
        session.add(Profile(id="p-pending", created_at=now, updated_at=now))
        with pytest.raises(RuntimeError, match="pending"):
            pipelined(session, [Call(COUNT_SOURCES, {})], commit=True)


def test_inside_a_savepoint_nothing_is_committed(postgresql_session: Session) -> None:
    # The test harness runs each session in a SAVEPOINT of an outer transaction: committing at the driver would
    # commit that outer transaction; the session's commit releases the SAVEPOINT instead.
    session = postgresql_session
    session.execute(COUNT_SOURCES)
    pipelined(session, [Call(ADD_SOURCE, source("pipe-nested"))], commit=True)
    assert driver_status(session) == TransactionStatus.INTRANS
    assert session.connection().in_nested_transaction()


def test_statement_events_see_the_statements(postgresql_session: Session) -> None:
    session = postgresql_session
    seen: list[str] = []

    def before(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        seen.append("before " + statement.split()[0])

    def after(_conn: object, cursor: Any, statement: str, *_args: object) -> None:
        seen.append(f"after {statement.split()[0]} {cursor.rowcount}")

    connection = session.connection()
    event.listen(connection, "before_cursor_execute", before)
    event.listen(connection, "after_cursor_execute", after)
    try:
        pipelined(session, [Call(ADD_SOURCE, source("pipe-events")), Call(COUNT_SOURCES, {})])
    finally:
        event.remove(connection, "before_cursor_execute", before)
        event.remove(connection, "after_cursor_execute", after)
    # Both sent before either result came back; each "after" once its result is in.
    assert seen == ["before INSERT", "before SELECT", "after INSERT 1", "after SELECT 1"]


def test_python_side_defaults_are_refused(postgresql_session: Session) -> None:
    # The session computes those; a pipelined statement without them would write NULL or fail on the server.
    values = source("pipe-defaults")
    del values["created_at"]
    with pytest.raises(ValueError, match="every column"):
        pipelined(postgresql_session, [Call(ADD_SOURCE, values)])


def test_only_calls_marked_prepared_are_prepared(postgresql_session: Session) -> None:
    # A marked call is prepared on its first run and kept; an unprepared call is planned for its values every time.
    session = postgresql_session
    for _run in range(8):
        pipelined(
            session,
            [Call(BY_NAMES, {"names": ["a", "b", "c"]}, prepared=False), Call(PROFILE, {"id": "p-none"})],
        )
    prepared = session.execute(text("SELECT statement FROM pg_prepared_statements")).scalars().all()
    assert any("FROM profiles" in statement for statement in prepared), prepared
    assert not any("FROM cmp_sources" in statement for statement in prepared), prepared


def test_a_lock_conflict_is_one_as_callers_know_it(postgresql_engine: TestDatabase) -> None:
    # Ingestion retries a batch after a lock conflict and the web layer answers 503 busy_retry: both read
    # SQLAlchemy's OperationalError and its SQLSTATE.
    sessions = make_sessionmaker(postgresql_engine.engine)
    with sessions() as session:
        session.execute(insert(_SOURCES), [source("pipe-locked")])
        session.commit()
    lock = select(_SOURCES.c.id).where(_SOURCES.c.name == bindparam("name")).with_for_update(nowait=True)
    with sessions() as holder, sessions() as session:
        holder.execute(lock, {"name": "pipe-locked"})
        with pytest.raises(OperationalError) as raised:
            pipelined(session, [Call(COUNT_SOURCES, {}), Call(lock, {"name": "pipe-locked"})])
        assert is_lock_conflict(raised.value)
        session.rollback()
        holder.rollback()


# -- prepared statements: hub's own, on a connection psycopg also prepares on ------------------------------------

OWN_PREPARED = text("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE '\\_hub\\_%'")
OWN_RUNS = text(
    "SELECT coalesce(sum(generic_plans + custom_plans), 0) FROM pg_prepared_statements WHERE name LIKE '\\_hub\\_%'"
)
SOURCE_BY_ID = select(_SOURCES.c.name).where(_SOURCES.c.id == bindparam("id"))


def psycopg_prepares_its_own(session: Session) -> None:
    # psycopg prepares a statement on its sixth run; holding prepared statements of its own is what makes it
    # deallocate all of them (hub's too) on a rollback or after a DROP or ALTER.
    for _run in range(6):
        session.execute(PROFILE, {"id": "p-none"})


def pipeline_works(session: Session) -> None:
    [[(count,)]] = pipelined(session, [Call(COUNT_SOURCES, {})])
    [found] = pipelined(session, [Call(PROFILE, {"id": "p-none"})])
    assert found == []
    assert isinstance(count, int)


@pytest.fixture
def one_connection(postgresql_engine: TestDatabase) -> Any:
    engine = create_db_engine(postgresql_engine.url, pool_size=1, max_overflow=0)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    "discard",
    [
        pytest.param(lambda session: session.rollback(), id="rollback"),
        pytest.param(lambda session: session.begin_nested().rollback(), id="rollback-to-savepoint"),
        pytest.param(
            lambda session: session.execute(text("CREATE TEMP TABLE t (a int); DROP TABLE t")), id="drop-table"
        ),
    ],
)
def test_prepared_statements_survive_what_makes_psycopg_deallocate(one_connection: Any, discard: Any) -> None:
    with Session(one_connection) as session:
        pipeline_works(session)  # hub's statements are prepared
        session.commit()
        psycopg_prepares_its_own(session)
        discard(session)  # psycopg deallocates everything
        pipeline_works(session)  # the names are checked, the statements run unprepared...
        session.commit()
        runs = session.execute(OWN_RUNS).scalar_one()
        pipeline_works(session)  # ... and are prepared again
        assert session.execute(OWN_PREPARED).scalar_one() == 2
        assert session.execute(OWN_RUNS).scalar_one() == runs + 2


def test_prepared_statements_survive_a_returned_connection_reset(one_connection: Any) -> None:
    with Session(one_connection) as session:
        pipeline_works(session)
        session.commit()
        psycopg_prepares_its_own(session)
    # The session ended with its transaction open: the pool rolled the connection back as it took it back.
    with Session(one_connection) as session:
        pipeline_works(session)
        pipeline_works(session)
        assert session.execute(OWN_PREPARED).scalar_one() == 2


def test_an_idle_rollback_keeps_the_names(one_connection: Any) -> None:
    with Session(one_connection) as session:
        pipeline_works(session)
        session.commit()
        psycopg_prepares_its_own(session)
        runs = session.execute(OWN_RUNS).scalar_one()
        session.commit()
        session.rollback()  # nothing to roll back: psycopg sends nothing, and hub's names stay in use
        pipeline_works(session)
        assert session.execute(OWN_RUNS).scalar_one() == runs + 2


def test_each_statement_is_prepared_once_per_parameter_types(one_connection: Any) -> None:
    with Session(one_connection) as session:
        # psycopg sends small and large integers as different types: each gets its own prepared statement.
        for value in (1, 2, 70_000, 2**40, 3):
            assert pipelined(session, [Call(SOURCE_BY_ID, {"id": value})]) == [[]]
        assert session.execute(OWN_PREPARED).scalar_one() == 3


def test_nothing_is_prepared_where_psycopg_prepares_nothing(postgresql_engine: TestDatabase) -> None:
    # prepare_threshold=None: the setting for a transaction-pooling proxy, where prepared statements do not last.
    engine = create_db_engine(postgresql_engine.url, connect_args={"prepare_threshold": None})
    try:
        with Session(engine) as session:
            for _run in range(3):
                pipeline_works(session)
            assert session.execute(OWN_PREPARED).scalar_one() == 0
    finally:
        engine.dispose()


def test_a_pipeline_larger_than_the_socket_buffers(postgresql_session: Session) -> None:
    # Several megabytes each way: libpq cannot send it all at once, and the server answers the first statements
    # while the last are still being sent; reading meanwhile keeps both sides moving.
    echo = select(bindparam("blob", type_=String).label("blob"))
    blobs = [f"{index:06d}" + "x" * 250_000 for index in range(24)]
    results = pipelined(postgresql_session, [Call(echo, {"blob": blob}) for blob in blobs])
    assert [row.blob for [row] in results] == blobs


def test_a_lost_connection_is_invalidated(postgresql_engine: TestDatabase) -> None:
    sessions = make_sessionmaker(postgresql_engine.engine)
    with sessions() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with postgresql_engine.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        with pytest.raises(OperationalError) as raised:
            pipelined(session, [Call(COUNT_SOURCES, {})])
        assert raised.value.connection_invalidated
        session.rollback()
        # The session goes on, on a new connection.
        assert session.execute(COUNT_SOURCES).scalar_one() >= 0


def test_an_after_listener_alone_sees_the_statements(postgresql_session: Session) -> None:
    # hub keeps an "after" listener of its own on the engine; one more is somebody's, and is shown every statement.
    session = postgresql_session
    seen: list[str] = []
    connection = session.connection()

    def after(_conn: object, cursor: Any, statement: str, *_args: object) -> None:
        seen.append(f"{statement.split()[0]} {cursor.rowcount}")

    event.listen(connection, "after_cursor_execute", after)
    try:
        pipelined(session, [Call(COUNT_SOURCES, {}), Call(ADD_SOURCE, source("pipe-after"))])
    finally:
        event.remove(connection, "after_cursor_execute", after)
    assert seen == ["SELECT 1", "INSERT 1"]


def test_on_an_autocommit_connection_nothing_is_begun_or_committed(postgresql_engine: TestDatabase) -> None:
    engine = create_db_engine(postgresql_engine.url, isolation_level="AUTOCOMMIT")
    notices: list[str] = []
    try:
        with Session(engine) as session:
            driver = session.connection().connection.driver_connection
            driver.add_notice_handler(lambda diagnostic: notices.append(diagnostic.message_primary or ""))
            pipelined(session, [Call(ADD_SOURCE, source("pipe-autocommit"))], commit=True)
            assert driver_status(session) == TransactionStatus.IDLE
        with engine.connect() as other:
            assert other.execute(BY_NAMES, {"names": ["pipe-autocommit"]}).one().name == "pipe-autocommit"
        assert notices == []  # no "there is no transaction in progress"
    finally:
        engine.dispose()


def test_a_pipeline_cut_short_closes_its_connection(
    postgresql_engine: TestDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interrupt while waiting for the server leaves results nobody will read: the connection must not be used
    # again as if nothing had happened.
    from hub import libpq_pipeline

    def interrupted(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt

    sessions = make_sessionmaker(postgresql_engine.engine)
    with sessions() as session:
        driver = session.connection().connection.driver_connection
        monkeypatch.setattr(libpq_pipeline, "_wait", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipelined(session, [Call(text("SELECT pg_sleep(0.2)"), {})])
        monkeypatch.undo()
        assert driver.closed
        with contextlib.suppress(OperationalError):  # rolling back a closed connection may say so
            session.rollback()
    # The pool hands out a working connection next.
    with sessions() as session:
        assert session.execute(COUNT_SOURCES).scalar_one() >= 0


def test_names_the_server_dropped_are_forgotten(one_connection: Any) -> None:
    # Each time psycopg deallocates everything, hub's statements are prepared again under new names; the old ones
    # must not pile up for the life of the connection.
    with Session(one_connection) as session:
        for _cycle in range(5):
            pipeline_works(session)
            session.commit()
            psycopg_prepares_its_own(session)
            session.rollback()
            pipeline_works(session)  # stale: checked against the server
            session.commit()
        kept = session.connection().connection.info["hub.prepared"][1]
        assert len(kept.keys) <= 2, kept.keys
