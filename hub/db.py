"""Database plumbing: the declarative base, column types shared by every domain, engines and sessions.

Services receive a ``Session`` and only ``flush()``; the edges (a request, a worker batch, a CLI command) own
the single commit point.
"""

from __future__ import annotations

import copy
import json
import re
import sqlite3
import uuid
from collections import namedtuple
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from psycopg.adapt import Transformer
from psycopg.pq import ExecStatus, TransactionStatus
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

from hub import libpq_pipeline

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


def json_document(rows: Sequence[Mapping[str, Any]]) -> str:
    """The parameter of a ``json_recordset``: UTF-8 text as sent (``\\u`` escapes would only read back where the
    server's encoding is UTF-8), datetimes as ISO 8601."""
    # Aware datetimes are the only non-JSON values hub stores this way, and PostgreSQL reads ISO 8601 back exactly;
    # the method itself as the fallback (no Python function between) raises TypeError for anything else.
    return json.dumps(rows, separators=(",", ":"), ensure_ascii=False, default=datetime.isoformat)


# ----------------------------------------------------------------------------------------------------------
# PostgreSQL: statements sent together
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One statement of ``pipelined``: a Core statement, its parameters, and whether it is prepared.

    The statement is built once (a module constant, a cached builder): each is compiled on first use and kept for
    the life of the process. A prepared statement is prepared on the connection on its first run and kept there
    (``hub.libpq_pipeline``); none is where psycopg is set to prepare nothing (``prepare_threshold=None``).

    ``prepared=False`` is for statements whose text varies with the length of a list (an expanding IN): each length
    would be prepared, and PostgreSQL then keeps, per connection, a generic plan made while the tables were small
    (and, without statistics, for good), such as a scan of a whole table where an index probe is meant. Planning
    each time costs far less than one such scan."""

    statement: Any
    parameters: Mapping[str, Any]
    prepared: bool = True


@dataclass
class _DriverStatement:
    compiled: Any  # compiled with $n placeholders, the parameters in ``compiled.positiontup`` order
    sql: bytes  # the text, for a statement whose text does not depend on its parameters
    binds: dict[str, Callable[[Any], Any]]  # by parameter name, the column types' bind processing
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]  # result columns with a type's processing
    expanding: bool  # whether the text depends on the parameters (an expanding IN)
    row: Any = None  # the row class, made from the first result's column names


_DRIVER_STATEMENTS: dict[tuple[int, tuple[str, ...]], tuple[Any, _DriverStatement]] = {}
_POSITIONAL_DIALECTS: dict[int, tuple[Any, Any]] = {}


def _positional(dialect: Any) -> Any:
    """``dialect`` rendering libpq's own placeholders ($1, $2, ...): statements go to libpq as they are compiled,
    with nothing for the driver to rewrite."""
    found = _POSITIONAL_DIALECTS.get(id(dialect))
    if found is not None and found[0] is dialect:
        return found[1]
    positional = copy.copy(dialect)
    positional.paramstyle, positional.positional = "numeric_dollar", True
    positional.identifier_preparer = positional.preparer(positional)  # it decides whether % is doubled
    _POSITIONAL_DIALECTS[id(dialect)] = (dialect, positional)
    return positional


def _driver_statement(statement: Any, dialect: Any, names: tuple[str, ...]) -> _DriverStatement:
    # Keyed by identity (the statements given are module-level constants, and SQL expressions compare with ``==``
    # into more SQL) and by the parameters' names, which decide the columns of an INSERT; the statement is kept
    # so its id is never reused.
    key = (id(statement), names)
    found = _DRIVER_STATEMENTS.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    compiled = statement.compile(dialect=_positional(dialect), column_keys=list(names))
    if compiled.insert_prefetch or compiled.update_prefetch:
        # Column defaults computed in Python are the session's work; here every value must be given.
        raise ValueError(f"pipelined statements take every column's value: {statement}")
    binds = {name: bind.type.dialect_impl(dialect).bind_processor(dialect) for name, bind in compiled.binds.items()}
    columns = getattr(statement, "exported_columns", ())
    prepared = _DriverStatement(
        compiled=compiled,
        sql=compiled.string.encode(),
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


def _rows(prepared: _DriverStatement, result: Any, loader: Transformer) -> list[Any]:
    if result is None or result.status != ExecStatus.TUPLES_OK:
        return []
    if prepared.row is None:
        names = [result.fname(index).decode() for index in range(result.nfields)]
        prepared.row = namedtuple("Row", names, rename=True)  # type: ignore[misc]
    make, converters = prepared.row._make, prepared.converters
    loader.set_pgresult(result)
    if not converters:
        return loader.load_rows(0, result.ntuples, make)
    rows = []
    for values in loader.load_rows(0, result.ntuples, list):
        for index, process in converters:
            values[index] = process(values[index])
        rows.append(make(values))
    return rows


class PipelinedCursor:
    """What statement listeners get as the cursor of a pipelined statement (there is no driver cursor): its
    ``rowcount`` and libpq result (``pgresult``), once the result is in."""

    def __init__(self) -> None:
        self.pgresult: Any = None

    @property
    def rowcount(self) -> int:
        tuples = None if self.pgresult is None else self.pgresult.command_tuples
        return -1 if tuples is None else tuples


def pipelined(session: Session, calls: Sequence[Call], *, commit: bool = False) -> list[list[Any]]:
    """PostgreSQL only: run ``calls`` in the session's transaction in one round trip, in order (libpq's pipeline
    mode, ``hub.libpq_pipeline``), and commit after them when ``commit`` is set; each call's rows (named tuples,
    with the column types' result processing), in the calls' order.

    A transaction's BEGIN goes with its first statement, and a commit with its last writes: where every round trip
    waits for the server and then for this process's threads, they are what a short transaction's time goes to.
    Statements wait for those before them on the server as they would one by one (a read after a lock sees what
    the lock waited for). An error stops the rest and is raised as SQLAlchemy raises the driver's errors
    (``IntegrityError``, ``OperationalError``, ...); the caller rolls back, as for any failed statement. Statement
    listeners (``before_cursor_execute``, ``after_cursor_execute``) see each statement with its positional
    parameters and a ``PipelinedCursor``.

    After ``commit`` the session's own commit sends nothing (the driver skips COMMIT outside a transaction);
    nothing may be pending in the session's unit of work then, and the session must have begun the transaction
    (inside a SAVEPOINT nothing is committed here: the session's commit releases it)."""
    if commit and (session.new or session.dirty or session.deleted):
        raise RuntimeError("pipelined(commit=True) with objects pending in the session")
    connection = session.connection()
    dialect = connection.dialect
    fairy = connection.connection
    driver = fairy.driver_connection
    names = _prepared_names(connection, fairy.info, driver)
    # psycopg's own setting: no prepared statements at all (a transaction-pooling proxy in front of the server).
    may_prepare = driver.prepare_threshold is not None
    sent = [_statement(connection, call, may_prepare) for call in calls]
    # One "after" listener is hub's own (``_after_statement``, registered by ``_prepared_names``), which these
    # statements need not be shown: they drop nothing.
    listening = bool(connection.dispatch.before_cursor_execute) or len(connection.dispatch.after_cursor_execute) > 1
    cursors = [PipelinedCursor() for _call in calls] if listening else []
    if connection.dispatch.before_cursor_execute:
        for cursor, (_prepared, command, sql) in zip(cursors, sent, strict=True):
            connection.dispatch.before_cursor_execute(connection, cursor, sql, command.values, None, False)
    begin = not driver.autocommit and driver.info.transaction_status == TransactionStatus.IDLE
    adapters = Transformer(driver)  # the values sent and the rows read back
    try:
        results = libpq_pipeline.run(
            driver,
            [command for _prepared, command, _sql in sent],
            names,
            adapters,
            begin=begin,
            commit=commit and not driver.autocommit and not connection.in_nested_transaction(),
        )
    except dialect.loaded_dbapi.Error as error:
        # Raised as SQLAlchemy raises a driver's errors, so callers' handling (IntegrityError, a lock conflict's
        # retry, a lost connection) is the same as for the session's own statements.
        invalidated = dialect.is_disconnect(error, fairy, None)
        if invalidated:
            connection.invalidate(error)
        raise DBAPIError.instance(
            "; ".join(sql for _prepared, _command, sql in sent),
            None,
            error,
            dialect.loaded_dbapi.Error,
            hide_parameters=True,
            connection_invalidated=invalidated,
            dialect=dialect,
        ) from error
    rows = [_rows(prepared, result, adapters) for (prepared, _command, _sql), result in zip(sent, results, strict=True)]
    for cursor, result, (_prepared, command, sql) in zip(cursors, results, sent, strict=listening):
        cursor.pgresult = result
        if connection.dispatch.after_cursor_execute:
            connection.dispatch.after_cursor_execute(connection, cursor, sql, command.values, None, False)
    return rows


_PREPARED = "hub.prepared"  # the key of a connection's ``PreparedNames`` in its SQLAlchemy ``info``


def _prepared_names(connection: Any, info: dict[Any, Any], driver: Any) -> libpq_pipeline.PreparedNames:
    """The statements ``pipelined`` has prepared on the connection (kept with the driver connection they belong to;
    SQLAlchemy drops ``info`` with the connection)."""
    kept = info.get(_PREPARED)
    if kept is None or kept[0] is not driver:
        engine = connection.engine
        if not event.contains(engine, "rollback", _before_rollback):
            event.listen(engine, "rollback", _before_rollback)
            event.listen(engine, "reset", _before_reset)
            event.listen(engine, "after_cursor_execute", _after_statement)
        kept = info[_PREPARED] = (driver, libpq_pipeline.PreparedNames())
    return kept[1]


# psycopg deallocates every prepared statement of the connection when it holds some of its own and rolls back a
# transaction, or runs a statement that may have dropped what a plan refers to (its own test: a result's command
# status starts with one of these words). The connection's names are then marked stale, to be checked by its next
# pipeline; here by the statement's text: its first word, or any word of a text of several statements (a search of
# every statement's whole text would cost more than the statements it watches over).
_DISCARD_WORDS = ("DROP", "ALTER", "ROLLBACK", "DISCARD", "DEALLOCATE")
_DISCARDS = re.compile(r"\b(?:DROP|ALTER|ROLLBACK|DISCARD|DEALLOCATE)\b", re.IGNORECASE).search


def _mark_stale(info: dict[Any, Any], driver: Any) -> None:
    kept = info.get(_PREPARED)
    if kept is not None and kept[0] is driver:
        kept[1].stale = True


def _before_rollback(connection: Any) -> None:
    # SQLAlchemy's rollback event comes before the driver's rollback (an idle connection's rollback sends
    # nothing); an invalidated connection has no driver connection left, and asking for one would reconnect.
    if not connection.invalidated and not connection.closed:
        fairy = connection.connection
        if fairy.driver_connection.info.transaction_status != TransactionStatus.IDLE:
            _mark_stale(fairy.info, fairy.driver_connection)


def _before_reset(dbapi_connection: Any, record: Any, _state: Any) -> None:
    # The pool's reset of a returned connection (a rollback) comes before the driver's rollback too.
    if record is not None and dbapi_connection.info.transaction_status != TransactionStatus.IDLE:
        _mark_stale(record.info, dbapi_connection)


def _after_statement(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if statement[:64].lstrip()[:10].upper().startswith(_DISCARD_WORDS) or (";" in statement and _DISCARDS(statement)):
        fairy = connection.connection
        _mark_stale(fairy.info, fairy.driver_connection)


def _statement(connection: Any, call: Call, may_prepare: bool) -> tuple[_DriverStatement, libpq_pipeline.Command, str]:
    """One call as libpq takes it, with its types' bind processing: its statement, command and text."""
    prepared = _driver_statement(call.statement, connection.dialect, tuple(sorted(call.parameters)))
    if prepared.expanding:
        state = prepared.compiled.construct_expanded_state(dict(call.parameters))
        sql, values, order = state.statement, state.parameters, state.positiontup
        process = {**prepared.binds, **state.processors}  # the latter: an expanded list's items
        text = sql.encode()
    else:
        sql, text, process = prepared.compiled.string, prepared.sql, prepared.binds
        values, order = prepared.compiled.construct_params(call.parameters), prepared.compiled.positiontup
    positional = [process[name](values[name]) if name in process else values[name] for name in order]
    command = libpq_pipeline.Command(text, positional, prepare=call.prepared and may_prepare)
    return prepared, command, sql
