"""Database plumbing: the declarative base, column types shared by every domain, engines and sessions.

Services receive a ``Session`` and only ``flush()``; the edges (a request, a worker batch, a CLI command) own
the single commit point.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from psycopg.pq import ExecStatus
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Text,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

# Stable constraint names so Alembic can alter/drop them on both databases.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


# PostgreSQL SQLSTATEs that only say "another transaction was in the way": deadlock_detected (this transaction
# was chosen as the victim), serialization_failure, lock_not_available (lock_timeout or NOWAIT).
LOCK_CONFLICT_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
# SQLite's SQLITE_BUSY / SQLITE_LOCKED as pysqlite reports them once busy_timeout has run out.
_SQLITE_BUSY_MESSAGES = ("database is locked", "database table is locked")


def is_lock_conflict(error: BaseException) -> bool:
    """Whether a database error means "a concurrent transaction held what this one needed": a deadlock victim, a
    serialization failure, a lock timeout, SQLite's busy database. Running the same unit of work again succeeds;
    it is never the caller's fault (the web layer answers 503 ``busy_retry``, ingestion retries the batch).

    Only the driver error's SQLSTATE or SQLite message is read.
    """
    original = getattr(error, "orig", None) or error
    if getattr(original, "sqlstate", None) in LOCK_CONFLICT_SQLSTATES:
        return True
    if isinstance(original, sqlite3.OperationalError):
        message = str(original).lower()
        return any(text in message for text in _SQLITE_BUSY_MESSAGES)
    return False


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset, so it is normalised here)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column; hub only stores timezone-aware times")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


BigId = BigInteger().with_variant(Integer(), "sqlite")
JSONType = JSON().with_variant(JSONB(), "postgresql")

intpk = Annotated[int, mapped_column(BigId, primary_key=True, autoincrement=True)]
strpk = Annotated[str, mapped_column(String(32), primary_key=True, default=new_id)]
created_at = Annotated[datetime, mapped_column(UTCDateTime(), default=utcnow, nullable=False)]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSONType, list[Any]: JSONType}


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine with hub's per-backend settings (SQLite: WAL, foreign keys, real transactions)."""
    parsed = make_url(url)
    # Statement parameters carry identifiers and tokens: keep them out of exception messages and logs.
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        kwargs.setdefault("connect_args", {})
        kwargs["connect_args"].setdefault("timeout", 30)
        # One shared connection pool per file; check_same_thread off because the scheduler thread and the
        # request threads each take their own connection from the pool, never share one.
        kwargs["connect_args"].setdefault("check_same_thread", False)
        engine = create_engine(url, **kwargs)
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling defers BEGIN and breaks SAVEPOINT; take control of it
        # (SQLAlchemy docs, "Serializable isolation / Savepoints / Transactional DDL").
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return  # read-only probes (readiness, metrics) must never queue behind a writer
        # IMMEDIATE takes the write lock up front: concurrent writers queue on busy_timeout instead of
        # failing later with SQLITE_BUSY when a read transaction tries to upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def read_only_connection(engine: Engine) -> Any:
    """A connection for short reads outside any unit of work (no transaction, so no SQLite write lock)."""
    return engine.connect().execution_options(isolation_level="AUTOCOMMIT")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work for CLI commands and worker batches: commit on success, roll back on error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def json_recordset(name: str, columns: Sequence[tuple[str, Any]], parameter: str = "rows") -> Any:
    """PostgreSQL's ``json_to_recordset(:parameter) AS name(column type, ...)``: a batch's rows as one JSON
    document (see ``json_document``), read back in the document's order. The statement text is the same for any
    number of rows, so the driver's parse cache and the server's prepared statement serve it; and the rows are
    serialized by the json module's C encoder, where one array per column made the driver convert every element
    in Python (more client CPU than the rest of the batch's storage)."""
    return (
        func.json_to_recordset(cast(bindparam(parameter, type_=Text()), postgresql.JSON))
        .table_valued(*(column(column_name, kind) for column_name, kind in columns))
        .render_derived(name=name, with_types=True)
    )


def json_insert(table: Any, names: Sequence[str], *, name: str, parameter: str = "rows") -> Any:
    """PostgreSQL's ``INSERT INTO table (names) SELECT names FROM json_to_recordset(:parameter)``: rows given as
    one JSON document (``json_document``), each column read as the table declares it (see ``json_recordset``)."""
    rows = json_recordset(name, [(column_name, table.c[column_name].type) for column_name in names], parameter)
    return postgresql.insert(table).from_select(list(names), select(*(rows.c[column_name] for column_name in names)))


def _json_default(value: Any) -> Any:
    # Aware datetimes are the only non-JSON values hub stores this way; PostgreSQL reads ISO 8601 back exactly.
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def json_document(rows: Sequence[Mapping[str, Any]]) -> str:
    """The parameter of a ``json_recordset``: UTF-8 text as sent (``\\u`` escapes would only read back where the
    server's encoding is UTF-8), datetimes as ISO 8601."""
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False, default=_json_default)


# ----------------------------------------------------------------------------------------------------------
# PostgreSQL: statements sent together
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One statement of ``pipelined``: a Core statement, its parameters, and whether the driver may prepare it.

    The statement is built once (a module constant, a cached builder): each is compiled on first use and kept for
    the life of the process.

    ``prepared=False`` is for statements whose text varies with the length of a list (an expanding IN): psycopg
    would prepare each length after a few runs, and PostgreSQL then keeps, per connection, a generic plan made
    while the tables were small (and, without statistics, for good), such as a scan of a whole table where an
    index probe is meant. Planning each time costs far less than one such scan."""

    statement: Any
    parameters: Mapping[str, Any]
    prepared: bool = True


@dataclass
class _DriverStatement:
    compiled: Any
    binds: dict[str, Callable[[Any], Any]]  # by parameter name, the column types' bind processing
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # result columns with a type's processing
    expanding: bool  # whether the text depends on the parameters (an expanding IN)
    row: Any = None  # the row class, made from the first result's column names


_DRIVER_STATEMENTS: dict[tuple[int, tuple[str, ...]], tuple[Any, _DriverStatement]] = {}


def _driver_statement(statement: Any, dialect: Any, names: tuple[str, ...]) -> _DriverStatement:
    # Keyed by identity (the statements given are module-level constants, and SQL expressions compare with ``==``
    # into more SQL) and by the parameters' names, which decide the columns of an INSERT; the statement is kept
    # so its id is never reused.
    key = (id(statement), names)
    found = _DRIVER_STATEMENTS.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    compiled = statement.compile(dialect=dialect, column_keys=list(names))
    if compiled.insert_prefetch or compiled.update_prefetch:
        # Column defaults computed in Python are the session's work; here every value must be given.
        raise ValueError(f"pipelined statements take every column's value: {statement}")
    binds = {name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in compiled.binds.items()}
    columns = getattr(statement, "exported_columns", ())
    prepared = _DriverStatement(
        compiled=compiled,
        binds={name: process for name, process in binds.items() if process is not None},
        converters=tuple(
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type.dialect_impl(dialect).result_processor(dialect, None)) is not None
        ),
        expanding=bool(compiled.post_compile_params or compiled.literal_execute_params),
    )
    _DRIVER_STATEMENTS[key] = (statement, prepared)
    return prepared


def _rows(prepared: _DriverStatement, cursor: Any) -> list[Any]:
    # Read off the result itself: the cursor's description builds an object per column at every access.
    result = cursor.pgresult
    if result is None or result.status != ExecStatus.TUPLES_OK:
        return []
    if prepared.row is None:
        names = [result.fname(index).decode() for index in range(result.nfields)]
        prepared.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
    make, converters = prepared.row._make, prepared.converters
    if not converters:
        return [make(values) for values in cursor.fetchall()]
    rows = []
    for values in cursor.fetchall():
        converted = list(values)
        for index, process in converters:
            converted[index] = process(converted[index])
        rows.append(make(converted))
    return rows


def pipelined(session: Session, calls: Sequence[Call], *, commit: bool = False) -> list[list[Any]]:
    """PostgreSQL only: run ``calls`` in the session's transaction in one round trip, in order (libpq's pipeline
    mode), and commit after them when ``commit`` is set; each call's rows (named tuples, with the column types'
    result processing), in the calls' order.

    A transaction's BEGIN goes with its first statement, and a commit with its last writes: where every round trip
    waits for the server and then for this process's threads, they are what a short transaction's time goes to.
    Statements wait for those before them on the server as they would one by one (a read after a lock sees what
    the lock waited for). An error stops the rest and is raised as SQLAlchemy raises the driver's errors
    (``IntegrityError``, ``OperationalError``, ...); the caller rolls back, as for any failed statement.

    After ``commit`` the session's own commit sends nothing (the driver skips COMMIT outside a transaction);
    nothing may be pending in the session's unit of work then, and the session must have begun the transaction
    (inside a SAVEPOINT nothing is committed here: the session's commit releases it)."""
    if commit and (session.new or session.dirty or session.deleted):
        raise RuntimeError("pipelined(commit=True) with objects pending in the session")
    connection = session.connection()
    dialect = connection.dialect
    driver = connection.connection.driver_connection
    sent: list[tuple[_DriverStatement, Any, str, dict[str, Any]]] = []
    try:
        with driver.pipeline():
            for call in calls:
                sent.append(_send(connection, driver, call))
            if commit and not connection.in_nested_transaction():
                driver.commit()
    except dialect.loaded_dbapi.Error as error:
        # Raised as SQLAlchemy raises a driver's errors, so callers' handling (IntegrityError, a lock conflict's
        # retry, a lost connection) is the same as for the session's own statements.
        invalidated = dialect.is_disconnect(error, connection.connection, None)
        if invalidated:
            connection.invalidate(error)
        statements = "; ".join(sql for _prepared, _cursor, sql, _parameters in sent)
        raise DBAPIError.instance(
            statements,
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from error
    results = []
    for prepared, cursor, sql, parameters in sent:
        results.append(_rows(prepared, cursor))
        if connection.dispatch.after_cursor_execute:
            connection.dispatch.after_cursor_execute(connection, cursor, sql, parameters, None, False)
        cursor.close()
    return results


def _send(connection: Any, driver: Any, call: Call) -> tuple[_DriverStatement, Any, str, dict[str, Any]]:
    """Queue one call in the driver's pipeline, with its types' bind processing; its statement, cursor and text."""
    prepared = _driver_statement(call.statement, connection.dialect, tuple(sorted(call.parameters)))
    if prepared.expanding:
        state = prepared.compiled.construct_expanded_state(dict(call.parameters))
        sql, values = state.statement, state.parameters
        process = {**prepared.binds, **state.processors}  # the latter: an expanded list's items
    else:
        sql, process = prepared.compiled.string, prepared.binds
        values = prepared.compiled.construct_params(call.parameters)
    parameters = {name: (process[name](value) if name in process else value) for name, value in values.items()}
    cursor = driver.cursor()
    if connection.dispatch.before_cursor_execute:  # statement listeners see these too (after: once results are in)
        connection.dispatch.before_cursor_execute(connection, cursor, sql, parameters, None, False)
    cursor.execute(sql, parameters, prepare=None if call.prepared else False)
    return prepared, cursor, sql, parameters
