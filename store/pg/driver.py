"""Hot statements of the mail transaction, run by psycopg itself on PostgreSQL.

The PostgreSQL twin of `store.driver`: SQLAlchemy compiles each statement once, with
the parameter converters of its column types, and psycopg runs the SQL on the transaction's
own connection as a server-side prepared statement. An `IN` over a list parameter becomes
`= ANY(%(name)s)`: one statement text (and one prepared statement) whatever the list's length.

Statements whose results nobody reads at once (history rows, index rows, outbox rows, the
inbox row's outcome) can be run `later`: they wait on the connection and go to the server
together, in one pipeline (one round trip), right before the next statement that reads
(through this module or through SQLAlchemy: `before_cursor_execute`) and before the commit.
A check on such a statement's result (the claim still held: one row updated) runs when its
pipeline is answered, so a `LostClaim` still rolls the whole transaction back.

An INSERT of rows no other waiting statement depends on (`LeafRows`: history, comments without
files, index and outbox rows) goes last in that round trip, several of its waiting rows to a
statement: the client converts and the server plans and runs fewer statements.

psycopg's errors come out as SQLAlchemy's (`DBAPIError.instance`), as they would through
SQLAlchemy's execution, so `store.faults` sees one kind of error whichever way a statement ran.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, bindparam, event, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.expression import Executable

Converter = Callable[[Any], Any] | None
Check = Callable[[Any], None]

_LATER = "pg_later"  # the connection's `info`: statements waiting for the next round trip
_NAMED = re.compile(r"%\((\w+)\)s")


class PgStatement:
    """One statement compiled for psycopg: `columns`, the keys of an INSERT's or UPDATE's
    values; `names`, every parameter a call passes (the others are the statement's literals)."""

    def __init__(self, statement: Executable, columns: Sequence[str], names: set[str]) -> None:
        self._statement = statement
        self._columns = list(columns)
        self._names = names
        self._sql = ""
        self._convert: list[tuple[str, Callable[[Any], Any]]] = []
        self._constants: dict[str, Any] = {}

    def sql_and_params(self, dialect: Dialect, params: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self._sql:
            self._prepare(dialect)
        given = {**self._constants, **params}
        for key, fn in self._convert:
            value = given[key]
            given[key] = [fn(v) for v in value] if isinstance(value, list | tuple) else fn(value)
        return self._sql, given

    def _prepare(self, dialect: Dialect) -> None:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._columns)  # type: ignore[attr-defined]
        sql = str(compiled)
        for bind, key in compiled.bind_names.items():
            if bind.expanding:  # IN (…) over a list: one array parameter
                sql = sql.replace(f"NOT IN (__[POSTCOMPILE_{key}])", f"<> ALL(%({key})s)")
                sql = sql.replace(f"IN (__[POSTCOMPILE_{key}])", f"= ANY(%({key})s)")
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if key not in self._names:  # a literal of the statement ("name = 'case'"): fixed
                if bind.callable is not None or (bind.value is None and f"%({key})s" in sql):
                    raise TypeError(f"{self._statement}: parameter {key} is not among {sorted(self._names)}")
                value = bind.value
                self._constants[key] = ([convert(v) for v in value] if isinstance(value, list) else convert(value)) \
                    if convert else value
            elif convert is not None:
                self._convert.append((key, convert))
        if "__[POSTCOMPILE" in sql:
            raise TypeError(f"{self._statement}: an IN this module does not rewrite")
        used = set(_NAMED.findall(sql))
        self._constants = {k: v for k, v in self._constants.items() if k in used}
        self._sql = sql


class LeafRows:
    """The rows of one leaf INSERT, several to a statement, in chunks of a power of two: a few
    prepared texts whatever the count. `build(size)` is the statement of `size` rows, whose
    parameters are `<column>_<i>` (`insert_rows`: `VALUES (…), (…)`; `insert_select_rows`).

    A chunk stays within what psycopg caches the conversion of (`psycopg._queries`: 50
    parameters, 4096 characters); a longer text is parsed again at every call, and then 32 rows
    of a comment in one statement cost more client CPU than 32 statements (an idle measurement
    of 32 rows a pipeline: a 3-column index row 37 µs alone, 10 µs in chunks of 16, 15 µs in one
    of 32). Over arrays (`unnest`) it cost 4× more: psycopg dumps an array's elements in Python."""

    PARAMETERS = 50  # psycopg's MAX_CACHED_STATEMENT_PARAMS

    def __init__(self, columns: Sequence[str], build: Callable[[int], Executable]) -> None:
        self._columns = list(columns)
        self._build = build
        self._most = 1 << (max(1, self.PARAMETERS // max(1, len(self._columns))).bit_length() - 1)
        self._by_size: dict[int, PgStatement] = {}

    def statements(self, dialect: Dialect, rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
        done, calls = 0, []
        for size in self.chunks(len(rows)):
            params = {f"{key}_{i}": row[key] for i, row in enumerate(rows[done:done + size]) for key in self._columns}
            calls.append(self._of_size(size).sql_and_params(dialect, params))
            done += size
        return calls

    def chunks(self, count: int) -> list[int]:
        """The rows to each statement: the largest power of two that fits, then the rest."""
        sizes: list[int] = []
        while (left := count - sum(sizes)) > 0:
            sizes.append(1 << (min(self._most, left).bit_length() - 1))
        return sizes

    def _of_size(self, size: int) -> PgStatement:
        if size not in self._by_size:
            names = {f"{key}_{i}" for i in range(size) for key in self._columns}
            self._by_size[size] = PgStatement(self._build(size), [], names)
        return self._by_size[size]


def insert_rows(statement: Insert, columns: Sequence[str]) -> LeafRows:
    """`LeafRows` of a plain INSERT (`DriverStatement(..., leaf=True)`): `VALUES (…), (…)`."""
    table = statement.table

    def build(size: int) -> Executable:
        return statement.values([{key: bindparam(f"{key}_{i}", type_=table.c[key].type) for key in columns}
                                 for i in range(size)])

    return LeafRows(columns, build)


def insert_select_rows(table: str, columns: Sequence[tuple[str, Any, str]], into: Sequence[str], select: str,
                       source: str = "(VALUES {rows}) AS v({names})", returning: str = "") -> LeafRows:
    """`LeafRows` of an `INSERT … SELECT` over the rows' values: `select`, the select list over
    `v.<column>`, may read rows written before it in the transaction (a scalar subquery by
    primary key); `into` names the table's columns it fills; `source` is what `v` is, over
    `{rows}` (the VALUES) and `{names}`. `columns`: each row's values, their SQLAlchemy types
    (their converters) and PostgreSQL types."""
    names = ", ".join(name for name, _, _ in columns)

    def build(size: int) -> Executable:
        rows = ", ".join("(" + ", ".join(f"CAST(:{name}_{i} AS {kind})" for name, _, kind in columns) + ")"
                         for i in range(size))
        sql = (f"INSERT INTO {table} ({', '.join(into)}) SELECT {select} "
               f"FROM {source.format(rows=rows, names=names)}" + (f" RETURNING {returning}" if returning else ""))
        return text(sql).bindparams(*(bindparam(f"{name}_{i}", type_=sa_type)
                                      for i in range(size) for name, sa_type, _ in columns))

    return LeafRows([name for name, _, _ in columns], build)


Answer = Callable[[Any], None]


class GatheredRows:
    """The rows of an `INSERT … RETURNING` that later waiting statements depend on (a new case:
    its outcome, its parties): several to a statement (`rows`, an `insert_select_rows` that returns
    `key` first), sent at the place of the first of them, so every statement waiting after any of
    them follows them all. Each row's `answer` gets its returned row once the round trip is
    answered (a row the statement did not return is an error: it inserts every row or fails)."""

    def __init__(self, rows: LeafRows, key: str) -> None:
        self._rows, self._key = rows, key

    def statements(self, dialect: Dialect, rows: Sequence[tuple[Mapping[str, Any], Answer]]) -> list[
            tuple[str, dict[str, Any], Check]]:
        calls, done = [], 0
        sizes = self._rows.chunks(len(rows))
        for (sql, params), size in zip(self._rows.statements(dialect, [values for values, _ in rows]), sizes,
                                       strict=True):
            calls.append((sql, params, self._answer(rows[done:done + size])))
            done += size
        return calls

    def _answer(self, rows: Sequence[tuple[Mapping[str, Any], Answer]]) -> Check:
        def answered(cursor: Any) -> None:
            returned = {row[0]: row for row in cursor.fetchall()}
            for values, answer in rows:
                answer(returned[values[self._key]])
        return answered


_Item = (tuple[str, dict[str, Any], Check | None] | tuple[LeafRows, Mapping[str, Any]]
         | tuple[GatheredRows, Mapping[str, Any], Answer])


def raw(conn: Connection) -> psycopg.Connection[Any]:
    return conn.connection.driver_connection  # type: ignore[return-value]


def run(conn: Connection, sql: str, params: dict[str, Any]) -> Any:
    """The statement now, after (and in one round trip with) the statements waiting: its cursor."""
    waiting = conn.info.pop(_LATER, None)
    if not waiting:
        with driver_errors(conn, sql):
            return raw(conn).execute(sql, params, prepare=True)
    return _pipeline(conn, waiting, [(sql, params)])[-1]


def run_all(conn: Connection, calls: list[tuple[str, dict[str, Any]]]) -> list[Any]:
    """Several statements (reads) in one round trip, after the statements waiting: their cursors."""
    return _pipeline(conn, conn.info.pop(_LATER, None) or [], calls)


def run_many(conn: Connection, sql: str, rows: list[dict[str, Any]]) -> None:
    flush(conn)
    with driver_errors(conn, sql):
        raw(conn).cursor().executemany(sql, rows)  # psycopg pipelines the rows itself


def later(conn: Connection, sql: str, params: dict[str, Any], check: Check | None = None) -> None:
    conn.info.setdefault(_LATER, []).append((sql, params, check))


def later_rows(conn: Connection, rows: LeafRows, params: Mapping[str, Any]) -> None:
    """A leaf INSERT's row: sent with the others of its statement, after every other waiting one."""
    conn.info.setdefault(_LATER, []).append((rows, params))


def later_gathered(conn: Connection, rows: GatheredRows, params: Mapping[str, Any], answer: Answer) -> None:
    """A row of a gathered INSERT (`GatheredRows`): sent with the others of its statement, at the
    place of the first of them."""
    conn.info.setdefault(_LATER, []).append((rows, params, answer))


def flush(conn: Connection) -> None:
    """Send the statements waiting on this connection, in one round trip."""
    waiting = conn.info.pop(_LATER, None)
    if waiting:
        _pipeline(conn, waiting, [])


def _pipeline(conn: Connection, waiting: list[_Item], reads: Sequence[tuple[str, dict[str, Any]]]) -> list[Any]:
    """The waiting statements in their order (the leaf INSERTs' rows last, a statement for many),
    then the reads, in one round trip: the reads' cursors."""
    placed: list[tuple[str, dict[str, Any], Check | None] | GatheredRows] = []
    leaves: dict[LeafRows, list[Mapping[str, Any]]] = {}
    gathered: dict[GatheredRows, list[tuple[Mapping[str, Any], Answer]]] = {}
    for item in waiting:
        if isinstance(item[0], LeafRows):
            leaves.setdefault(item[0], []).append(item[1])
        elif isinstance(item[0], GatheredRows):
            if item[0] not in gathered:
                gathered[item[0]] = []
                placed.append(item[0])  # where the first of its rows waited
            gathered[item[0]].append((item[1], item[2]))  # type: ignore[misc]
        else:
            placed.append(item)  # type: ignore[arg-type]
    items: list[tuple[str, dict[str, Any], Check | None]] = []
    for entry in placed:
        if isinstance(entry, GatheredRows):
            items.extend(entry.statements(conn.dialect, gathered[entry]))
        else:
            items.append(entry)
    for leaf, rows in leaves.items():
        items.extend((sql, values, None) for sql, values in leaf.statements(conn.dialect, rows))
    items.extend((sql, values, None) for sql, values in reads)
    driver = raw(conn)
    with driver_errors(conn, items[0][0]), driver.pipeline():
        cursors = []
        for sql, params, _ in items:
            cursors.append(driver.execute(sql, params, prepare=True))
        # the pipeline's end waited for every answer: each cursor has its rows and rowcount
    for cursor, (_, _, check) in zip(cursors, items, strict=True):
        if check is not None:
            check(cursor)
    return cursors[len(cursors) - len(reads):]


class driver_errors:  # noqa: N801 - a context manager, used like a function
    """psycopg's error as SQLAlchemy's, without the statement's parameters (a mail's text). A
    connection that broke is invalidated, as SQLAlchemy does with one that broke in its hands:
    the pool opens a new one for the next transaction."""

    def __init__(self, conn: Connection, sql: str) -> None:
        self._conn = conn
        self._sql = sql

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, psycopg.Error):
            broken = raw(self._conn).broken
            if broken:
                self._conn.invalidate(exc)
            raise DBAPIError.instance(self._sql, None, exc, psycopg.Error, hide_parameters=True,  # type: ignore[arg-type]
                                      connection_invalidated=broken) from exc


def install(engine: Engine) -> None:
    """Statements waiting on a connection go before any other statement and before the commit;
    a rollback drops them."""

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, *_args: Any) -> None:
        if conn.info.get(_LATER):
            flush(conn)

    @event.listens_for(engine, "commit")
    def _commit(conn: Connection) -> None:
        flush(conn)

    @event.listens_for(engine, "rollback")
    def _rollback(conn: Connection) -> None:
        conn.info.pop(_LATER, None)

    @event.listens_for(engine, "checkin")
    def _checkin(_dbapi_conn: Any, record: Any) -> None:
        record.info.pop(_LATER, None)
