"""Hot statements of the mail path, run by the driver itself: pysqlite on SQLite, psycopg on
PostgreSQL (store/pg/driver.py), SQLAlchemy's execution for any other driver.

A new case is about ten statements. Through SQLAlchemy's execution layer (parameter
processing, execution context, result objects) each costs several times what pysqlite
needs to run it; here SQLAlchemy compiles each statement once, with the parameter converters
of its column types, and pysqlite runs the SQL on the transaction's own connection (same
transaction, same BEGIN-at-first-write). Every other driver (asyncpg, aiosqlite in memory)
runs the statement through SQLAlchemy as before, but psycopg on PostgreSQL
(store/pg/driver.py: the same, prepared on the server, and `later` for writes nobody reads at
once). `store.sqlite.writer.DriverInsert` does the same for the inbox's INSERTs.

SELECTs too: an `IN` over a fixed list becomes its own `?`s once; an `IN` over a parameter
(`email IN :emails`) gets as many `?`s as the call has values, its SQL kept per length. Rows
are the driver's tuples (by position), with no result processing: the queries that use this
read columns that need none.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.dml import Insert
from sqlalchemy.sql.expression import Executable

from store.pg import driver as pg

Converter = Callable[[Any], Any] | None


class DriverStatement:
    """One statement: `columns`, the keys of the INSERT's or UPDATE's values; `binds`, the names
    of its other bound parameters (a WHERE's). Each call passes all of them."""

    def __init__(self, statement: Executable, columns: Sequence[str], binds: Sequence[str] = (),
                 leaf: bool = False) -> None:
        """`leaf`: an INSERT whose rows no other write of the transaction depends on (nothing
        references them, no later write touches them): on psycopg its waiting rows go together,
        after the other waiting statements (store/pg/driver.py, `LeafRows`)."""
        self._statement = statement
        self._columns = list(columns)
        self._names = {*columns, *binds}
        self._constants: dict[str, Any] = {}
        self._sqlite: tuple[str, list[tuple[str, Converter]]] | None = None
        self._expanding: set[str] = set()  # parameters that are lists (IN :name)
        self._by_length: dict[tuple[int, ...], str] = {}
        self._pg = pg.PgStatement(statement, columns, self._names)
        self._leaf = pg.insert_rows(statement, columns) if leaf and isinstance(statement, Insert) else None

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """A cursor: `.fetchone()`, `.rowcount` (SQLAlchemy's result on other drivers has both)."""
        driver = conn.dialect.driver
        if driver == "psycopg":
            return pg.run(conn, *self._pg.sql_and_params(conn.dialect, params))
        if driver != "pysqlite":
            return conn.execute(self._statement, dict(params))
        sql, order = self._sqlite or self._prepare(conn.dialect)
        given = {**self._constants, **params} if self._constants else params
        if self._expanding:
            if not all(params[key] for key in self._expanding):
                return conn.execute(self._statement, dict(params))  # SQLAlchemy's empty IN
            return self._execute_expanding(conn, sql, order, given)
        return conn.connection.driver_connection.execute(  # type: ignore[union-attr]
            sql, [fn(given[key]) if fn else given[key] for key, fn in order])

    def _execute_expanding(self, conn: Connection, sql: str, order: list[tuple[str, Converter]],
                           given: Mapping[str, Any]) -> Any:
        values: list[Any] = []
        lengths: list[int] = []
        for key, fn in order:
            if key in self._expanding:
                items = list(given[key])
                values.extend([fn(v) for v in items] if fn else items)
                lengths.append(len(items))
            else:
                values.append(fn(given[key]) if fn else given[key])
        shape = tuple(lengths)
        text = self._by_length.get(shape)
        if text is None:
            text = sql
            for key, count in zip([k for k, _ in order if k in self._expanding], lengths, strict=True):
                text = text.replace(f"__[POSTCOMPILE_{key}]", ", ".join(["?"] * count), 1)
            if len(self._by_length) < 64:
                self._by_length[shape] = text
        return conn.connection.driver_connection.execute(text, values)  # type: ignore[union-attr]

    def later(self, conn: Connection, params: Mapping[str, Any], check: Callable[[Any], None] | None = None) -> None:
        """`execute` for a write whose result nobody reads now: on psycopg it goes to the server
        with the next statement that reads, or the commit (one round trip for all of them).
        `check(cursor)` then sees its result (`.rowcount`); elsewhere, now."""
        if conn.dialect.driver == "psycopg":
            if self._leaf is not None and check is None:
                pg.later_rows(conn, self._leaf, params)
            else:
                pg.later(conn, *self._pg.sql_and_params(conn.dialect, params), check=check)
            return
        cursor = self.execute(conn, params)
        if check is not None:
            check(cursor)

    def later_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if conn.dialect.driver != "psycopg":
            self.execute_many(conn, rows)
            return
        for row in rows:
            self.later(conn, row)

    def execute_many(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        if conn.dialect.driver == "psycopg":
            sql, _ = self._pg.sql_and_params(conn.dialect, rows[0])
            pg.run_many(conn, sql, [self._pg.sql_and_params(conn.dialect, row)[1] for row in rows])
            return
        if conn.dialect.driver != "pysqlite":
            conn.execute(self._statement, [dict(r) for r in rows])
            return
        sql, order = self._sqlite or self._prepare(conn.dialect)
        if self._expanding:
            raise TypeError("execute_many takes no list parameters")
        given = [{**self._constants, **row} for row in rows] if self._constants else rows
        conn.connection.driver_connection.executemany(  # type: ignore[union-attr]
            sql, [[fn(row[key]) if fn else row[key] for key, fn in order] for row in given])

    def scalar(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row (an INSERT's or UPDATE's RETURNING), or None."""
        row = self.execute(conn, params).fetchone()
        return row[0] if row is not None else None

    def rows(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Every row, as tuples in the order of the SELECT's columns."""
        return [tuple(row) for row in self.execute(conn, params)]

    def _prepare(self, dialect: Dialect) -> tuple[str, list[tuple[str, Converter]]]:
        compiled = self._statement.compile(dialect=dialect, column_keys=self._columns)  # type: ignore[attr-defined]
        sql = str(compiled)
        order: list[tuple[str, Converter]] = []
        for key in compiled.positiontup or ():
            bind = compiled.binds[key]
            convert = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if bind.expanding and key in self._names:
                self._expanding.add(key)
            elif bind.expanding:  # IN over a fixed list: a ? for each of its values
                sql = sql.replace(f"__[POSTCOMPILE_{key}]", ", ".join(["?"] * len(bind.value)), 1)
                for i, value in enumerate(bind.value):
                    self._constants[f"{key}[{i}]"] = convert(value) if convert else value
                    order.append((f"{key}[{i}]", None))
                continue
            if key not in self._names:  # a literal of the statement ("name = 'case'"): fixed
                if bind.callable is not None or bind.value is None:  # a default SQLAlchemy computes
                    raise TypeError(f"{self._statement}: parameter {key} is not among {sorted(self._names)}")
                value = convert(bind.value) if convert else bind.value
                self._constants[key] = value
                convert = None
            order.append((key, convert))
        self._sqlite = (sql, order)
        return self._sqlite


def flush_waiting(conn: Connection) -> None:
    """The writes waiting on this connection (psycopg's `later`) sent now; elsewhere none wait."""
    if conn.dialect.driver == "psycopg":
        pg.flush(conn)


def rows_together(conn: Connection, calls: Sequence[tuple[DriverStatement, Mapping[str, Any]]]) -> list[
        list[tuple[Any, ...]]]:
    """The rows of several independent reads: on psycopg in one round trip (a pipeline),
    elsewhere one after the other."""
    if not calls:
        return []
    if conn.dialect.driver != "psycopg":
        return [stmt.rows(conn, params) for stmt, params in calls]
    cursors = pg.run_all(conn, [stmt._pg.sql_and_params(conn.dialect, params) for stmt, params in calls])
    return [[tuple(row) for row in cursor.fetchall()] for cursor in cursors]
