"""libpq's pipeline mode, driven directly through psycopg's ``pq`` layer: statements sent together, results read
back together, in one round trip (``hub.db.pipelined`` builds on it).

psycopg's own pipeline (``Connection.pipeline``) runs each statement through its cursor machinery and polls the
socket after every one; for the ten or so short statements of a webhook batch that cost over a millisecond of
interpreter time per round trip, which request threads then wait for. Here the statements are queued in libpq's
buffer, sent with one flush and read back with as few waits as the server's answers need, with psycopg's own
adapters (``Transformer``) for the values both ways and psycopg's errors for failures.

Prepared statements are named by this module (``_hub_<n>``, never psycopg's ``_pg3_<n>``) and kept per connection
in a ``PreparedNames`` the caller holds for the connection's life (``hub.db`` keeps it in SQLAlchemy's connection
``info``, which is dropped with the connection). A statement is prepared on its first run: PostgreSQL's plan cache
chooses between custom and generic plans the same way whenever that happens. It is recorded only once the server
has accepted it, so a pipeline that fails before the server got to it leaves nothing wrong behind. psycopg may
drop them all: it sends ``DEALLOCATE ALL`` when it holds prepared statements of its own and rolls back, or runs a
statement that may have dropped what a plan refers to (DROP, ALTER, ROLLBACK TO SAVEPOINT, ...). The caller marks
the names ``stale`` then, and the next pipeline runs its statements unprepared and reads back which of the
connection's statements the server still has.
"""

from __future__ import annotations

import itertools
import select
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import Connection, errors, pq
from psycopg.adapt import PyFormat, Transformer

__all__ = ["Command", "PreparedNames", "run"]

_SYNC = pq.ExecStatus.PIPELINE_SYNC
_FAILED = pq.ExecStatus.FATAL_ERROR


@dataclass(frozen=True)
class Command:
    """One statement: its text with ``$n`` placeholders, its values in that order, and whether to prepare it."""

    sql: bytes
    values: Sequence[Any]
    prepare: bool = True


_Key = tuple[bytes, tuple[int, ...]]  # a statement's text and its parameters' types


@dataclass
class PreparedNames:
    """A connection's prepared statements, by text and parameter types; kept for the connection's life.
    ``stale``: the server may have dropped some (``hub.db`` marks it); the next pipeline finds out which."""

    names: dict[_Key, bytes] = field(default_factory=dict)
    stale: bool = False
    keys: dict[bytes, _Key] = field(default_factory=dict)  # the names the server may still have
    counter: Iterator[int] = field(default_factory=itertools.count)

    def confirm(self, key: _Key, name: bytes) -> None:
        self.names[key] = name
        self.keys[name] = key

    def resync(self, present: Iterable[bytes]) -> None:
        self.keys = {name: self.keys[name] for name in present if name in self.keys}
        self.names = {key: name for name, key in self.keys.items()}
        self.stale = False


# The connection's own statements the server still has (a stale connection's names are checked against them).
_OWN_STATEMENTS = b"SELECT name FROM pg_prepared_statements WHERE left(name, 5) = '_hub_'"


def run(
    driver: Connection[Any],
    commands: Sequence[Command],
    prepared: PreparedNames,
    adapters: Transformer,
    *,
    begin: bool,
    commit: bool,
) -> list[pq.abc.PGresult | None]:
    """Send ``commands`` in one pipeline (``begin``: a BEGIN first, as psycopg would start the transaction;
    ``commit``: a COMMIT last) and return each command's result; ``adapters`` (the driver's, which the caller then
    reads the results with) turn the values into what libpq sends. The first failure is raised as psycopg raises it
    (the statements after it are skipped by the server), once the pipeline is over; a pipeline cut short (the
    connection lost, an interrupt) closes the connection."""
    pgconn = driver.pgconn
    with driver.lock:
        if pgconn.status != pq.ConnStatus.OK:
            raise errors.OperationalError("the connection is closed")
        # Every value is adapted before anything is queued: a value psycopg cannot adapt fails here, with nothing
        # sent.
        dumped = []
        for command in commands:
            values = adapters.dump_sequence(command.values, [PyFormat.AUTO] * len(command.values))
            dumped.append((command, values, adapters.types, adapters.formats))
        parses: list[tuple[int, _Key, bytes]] = []  # (slot, key, name) of the statements prepared here
        pending: dict[_Key, bytes] = {}  # prepared in this pipeline, not yet confirmed
        stale = prepared.stale
        slots: list[int] = []  # each command's slot among the pipeline's results
        sent = 0
        pgconn.enter_pipeline_mode()
        try:
            if begin:
                pgconn.send_query_params(_begin_command(driver), None)
                sent += 1
            for command, values, types, formats in dumped:
                if command.prepare and not stale:
                    key = (command.sql, types)
                    name = prepared.names.get(key) or pending.get(key)
                    if name is None:
                        name = pending[key] = b"_hub_%d" % next(prepared.counter)
                        pgconn.send_prepare(name, command.sql, param_types=types)
                        parses.append((sent, key, name))
                        sent += 1
                    pgconn.send_query_prepared(name, values, param_formats=formats)
                else:
                    pgconn.send_query_params(command.sql, values, param_types=types, param_formats=formats)
                slots.append(sent)
                sent += 1
            if commit:
                pgconn.send_query_params(b"COMMIT", None)
                sent += 1
            if stale:
                pgconn.send_query_params(_OWN_STATEMENTS, None)
                sent += 1
            pgconn.pipeline_sync()
            _flush(pgconn)
            results = _read(pgconn)
        except BaseException:
            _abandon(pgconn)
            raise
        pgconn.exit_pipeline_mode()
    if len(results) != sent:
        raise errors.InternalError(f"the pipeline returned {len(results)} results for {sent} commands")
    for slot, key, name in parses:
        result = results[slot]
        if result is not None and result.status == pq.ExecStatus.COMMAND_OK:
            prepared.confirm(key, name)
    own = results[-1] if stale else None
    if own is not None and own.status == pq.ExecStatus.TUPLES_OK:
        prepared.resync(own.get_value(row, 0) or b"" for row in range(own.ntuples))
    for result in results:
        if result is not None and result.status == _FAILED:
            raise errors.error_from_result(result, encoding=driver.info.encoding)
    return [results[slot] for slot in slots]


def _begin_command(driver: Connection[Any]) -> bytes:
    # What psycopg sends to start a transaction, from the connection's public settings.
    parts = [b"BEGIN"]
    if driver.isolation_level is not None:
        parts.append(b"ISOLATION LEVEL " + driver.isolation_level.name.replace("_", " ").encode())
    if driver.read_only is not None:
        parts.append(b"READ ONLY" if driver.read_only else b"READ WRITE")
    if driver.deferrable is not None:
        parts.append(b"DEFERRABLE" if driver.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


def _wait(pgconn: pq.abc.PGconn, *, write: bool) -> None:
    # The interpreter lock is released while waiting; poll where there is one (select's descriptors are limited).
    fd = pgconn.socket
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | (select.POLLOUT if write else 0))
        poller.poll()
    else:  # pragma: no cover (Windows)
        select.select([fd], [fd] if write else [], [])


def _flush(pgconn: pq.abc.PGconn) -> None:
    # Nonblocking: libpq sends what the socket takes. Reading meanwhile keeps the server from blocking on its
    # answers to the first statements while the last ones are still being sent.
    while pgconn.flush():
        _wait(pgconn, write=True)
        pgconn.consume_input()


def _read(pgconn: pq.abc.PGconn) -> list[pq.abc.PGresult | None]:
    """Every command's result up to the pipeline's sync point: libpq ends each command's results with None."""
    results: list[pq.abc.PGresult | None] = []
    current: pq.abc.PGresult | None = None
    while True:
        while pgconn.is_busy():
            _wait(pgconn, write=False)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            results.append(current)
            current = None
        elif result.status == _SYNC:
            return results
        elif current is None:
            current = result  # one result per command: a command's text holds one statement


def _abandon(pgconn: pq.abc.PGconn) -> None:
    """A pipeline cut short (the connection lost, an interrupt while waiting for the server) leaves the protocol
    where nothing can take it up again: the connection is closed, so that its owner finds it lost (SQLAlchemy then
    replaces it) instead of sending more on it."""
    if pgconn.status == pq.ConnStatus.OK and pgconn.pipeline_status != pq.PipelineStatus.OFF:
        pgconn.finish()
