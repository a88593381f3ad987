"""The API's only door to the database: a read-only pool of `databases` connections and the named queries
the loaders run. SQLite (aiosqlite) and PostgreSQL (asyncpg) share the code; `api.sql` spells what differs.

Every statement is assembled here from identifiers of `api.columns` and fragments whose values are bound
parameters; no client string is ever part of the SQL text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from databases import Database as _Databases
from databases import DatabaseURL
from databases.core import Connection

from api.columns import TABLES, Kind, Table
from api.errors import DatabaseUnavailable, UnsupportedDatabaseURL
from api.pagination import PageSpec, after_branches, order_exprs, order_sql
from api.sql import POSTGRES, SQLITE, TRUE, Dialect, Fragment, json_list, q, value_expr

log = logging.getLogger("dicom_api.db")

DATE_PARTS = {"YEAR": 4, "MONTH": 7, "DAY": 10}


def dialect_of(url: str) -> Dialect:
    scheme = DatabaseURL(url).scheme
    if scheme.startswith("sqlite"):
        return SQLITE
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return POSTGRES
    raise UnsupportedDatabaseURL(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://HOST/DB")


class Database:
    """A fixed pool of read-only connections, opened at startup and shared by all requests."""

    def __init__(self, url: str, *, pool_size: int = 4, busy_timeout_ms: int = 5000) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        self.pool_size = pool_size
        self.busy_timeout_ms = busy_timeout_ms
        self.statements = 0  # statements run so far: tests (and later, budgets) read it
        self._database: _Databases | None = None
        self._pool: asyncio.Queue[Connection] | None = None
        self._connections: list[Connection] = []

    # Lifecycle

    async def connect(self) -> None:
        if self.dialect is SQLITE:
            self._database = _Databases(_read_only_sqlite_url(self.url), uri=True, timeout=self.busy_timeout_ms / 1000)
        else:
            # The server refuses writes in every transaction of these sessions.
            settings = {"default_transaction_read_only": "on", "application_name": "dicom-api"}
            self._database = _Databases(self.url, min_size=1, max_size=self.pool_size, server_settings=settings)
        try:
            await self._database.connect()
            # `databases` binds a connection to the task that asks for it: open each in a task of its own so the
            # pool holds distinct connections, kept open for the life of the app.
            self._connections = list(await asyncio.gather(*(self._open() for _ in range(self.pool_size))))
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            await self.disconnect()
            raise DatabaseUnavailable(f"cannot open database {_safe_url(self.url)}: {_describe(exc)}") from exc
        self._pool = asyncio.Queue()
        for connection in self._connections:
            self._pool.put_nowait(connection)
        await self._check_schema()

    async def _open(self) -> Connection:
        assert self._database is not None
        connection = self._database.connection()
        await connection.__aenter__()
        if self.dialect is SQLITE:
            raw = connection.raw_connection
            await raw.execute("PRAGMA query_only = ON")
            await raw.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
            # Unicode lower-casing for `match` (SQLite's LIKE folds ASCII only); see api.sql.Dialect.ilike.
            await raw.create_function("dicom_lower", 1, _lower, deterministic=True)
        return connection

    async def disconnect(self) -> None:
        for connection in self._connections:
            try:
                await connection.__aexit__(None, None, None)
            except Exception as exc:  # closing is best effort: report, keep closing the others
                log.warning("closing a database connection failed: %s", _describe(exc))
        self._connections = []
        self._pool = None
        if self._database is not None and self._database.is_connected:
            await self._database.disconnect()

    async def _check_schema(self) -> None:
        for table in TABLES.values():
            cols = ", ".join(q(c) for c in table.select)
            try:
                await self.fetch(f"SELECT {cols} FROM {q(table.name)} WHERE 1 = 0")
            except Exception as exc:
                await self.disconnect()
                raise DatabaseUnavailable(
                    f"{_safe_url(self.url)} does not hold the dicom-db tables (run dicom-ingest first): "
                    f"{_describe(exc)}"
                ) from exc

    async def ping(self) -> None:
        await self.fetch("SELECT 1")

    async def fetch(self, sql: str, values: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on a free connection of the pool; rows as plain tuples."""
        if self._pool is None:
            raise DatabaseUnavailable("the database is not connected")
        connection = await self._pool.get()
        log.debug("SQL %s %s", sql, values)
        try:
            self.statements += 1
            records = await connection.fetch_all(sql, values or {})
        finally:
            self._pool.put_nowait(connection)
        return [tuple(r._mapping) for r in records]

    # Named queries. Rows come back as tuples: the table's `select` columns first, extras after.

    async def rows_by_keys(self, table: Table, column: str, keys: Sequence[Any]) -> list[tuple[Any, ...]]:
        kind = Kind.INT if table.by_name[column].kind is Kind.INT else Kind.STRING
        member = self.dialect.in_values(f"t0.{q(column)}", ":keys", kind)
        sql = f"SELECT {_select(table)} FROM {q(table.name)} t0 WHERE {member}"
        return await self.fetch(sql, {"keys": json_list(keys)})

    async def page(self, spec: PageSpec) -> list[tuple[Any, ...]]:
        """One page of a root connection: select columns, then the ordering values."""
        table = TABLES[spec.table]
        exprs = order_exprs(table, spec.order, "t0", self.dialect)
        order = order_sql(table, spec.order, "t0", self.dialect)
        select = f"SELECT {_select(table)}, {', '.join(exprs)} FROM {q(table.name)} t0"
        values = {**spec.where.values, "limit": spec.limit + 1}
        branches = self._after(table, spec)
        if len(branches) <= 1:
            where = _and(spec.where.sql, branches[0].sql if branches else TRUE)
            values.update(branches[0].values if branches else {})
            return await self.fetch(f"{select} WHERE {where} ORDER BY {order} LIMIT :limit", values)
        # After a cursor: each branch is a page of its own (an index seek), then the first `limit` of both.
        parts = []
        for branch in branches:
            values.update(branch.values)
            parts.append(
                f"SELECT * FROM ({select} WHERE {_and(spec.where.sql, branch.sql)} ORDER BY {order} LIMIT :limit) _b"
            )
        width = len(table.select)
        outer = ", ".join(
            f"{width + i + 1} {'DESC' if key.descending else 'ASC'} NULLS LAST" for i, key in enumerate(spec.order)
        )
        sql = f"SELECT * FROM ({' UNION ALL '.join(parts)}) _u ORDER BY {outer} LIMIT :limit"
        return await self.fetch(sql, values)

    async def pages(self, spec: PageSpec, fk: str, parents: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The first `limit + 1` rows per parent, for all parents in one statement: select columns, then the
        ordering values, then the parent key; sorted by parent and position."""
        table = TABLES[spec.table]
        where, values = self._where_after(table, spec)
        member = self.dialect.in_values(f"t0.{q(fk)}", ":parents", Kind.STRING)
        exprs = order_exprs(table, spec.order, "t0", self.dialect)
        extra = ", ".join(f"{e} AS _o{i}" for i, e in enumerate(exprs))
        inner = (
            f"SELECT {_select(table)}, {extra}, t0.{q(fk)} AS _parent, ROW_NUMBER() OVER "
            f"(PARTITION BY t0.{q(fk)} ORDER BY {order_sql(table, spec.order, 't0', self.dialect)}) AS _rn "
            f"FROM {q(table.name)} t0 WHERE {member} AND {where}"
        )
        outer = ", ".join([*(f"_page.{q(c)}" for c in table.select), *(f"_page._o{i}" for i in range(len(exprs)))])
        sql = (
            f"SELECT {outer}, _page._parent FROM ({inner}) _page "
            "WHERE _page._rn <= :limit ORDER BY _page._parent, _page._rn"
        )
        return await self.fetch(sql, {**values, "parents": json_list(parents), "limit": spec.limit + 1})

    async def count(self, table: Table, where: Fragment) -> int:
        rows = await self.fetch(f"SELECT COUNT(*) FROM {q(table.name)} t0 WHERE {where.sql}", where.values)
        return int(rows[0][0])

    async def counts(self, table: Table, where: Fragment, fk: str, parents: Sequence[Any]) -> dict[Any, int]:
        member = self.dialect.in_values(f"t0.{q(fk)}", ":parents", Kind.STRING)
        sql = f"SELECT t0.{q(fk)}, COUNT(*) FROM {q(table.name)} t0 WHERE {member} AND {where.sql} GROUP BY t0.{q(fk)}"
        rows = await self.fetch(sql, {**where.values, "parents": json_list(parents)})
        return {parent: int(n) for parent, n in rows}

    async def groups(
        self, table: Table, where: Fragment, column: str, date_part: str | None, limit: int
    ) -> list[tuple[Any, int]]:
        """(value, count) over the filtered set, most frequent first, then by value (nulls last)."""
        value = self._group_expr(table, column, date_part)
        sql = (
            f"SELECT {value}, COUNT(*) FROM {q(table.name)} t0 WHERE {where.sql} GROUP BY 1 "
            f"ORDER BY COUNT(*) DESC, ({value}) IS NULL, {value} LIMIT :limit"
        )
        rows = await self.fetch(sql, {**where.values, "limit": limit})
        return [(v, int(n)) for v, n in rows]

    async def groups_by_parent(
        self, table: Table, where: Fragment, column: str, date_part: str | None, fk: str, parents: Sequence[Any]
    ) -> list[tuple[Any, Any, int]]:
        """(parent, value, count) for all parents, each parent's groups in the order of `groups`."""
        value = self._group_expr(table, column, date_part)
        member = self.dialect.in_values(f"t0.{q(fk)}", ":parents", Kind.STRING)
        sql = (
            f"SELECT t0.{q(fk)}, {value}, COUNT(*) FROM {q(table.name)} t0 WHERE {member} AND {where.sql} "
            f"GROUP BY 1, 2 ORDER BY 1, COUNT(*) DESC, ({value}) IS NULL, {value}"
        )
        rows = await self.fetch(sql, {**where.values, "parents": json_list(parents)})
        return [(p, v, int(n)) for p, v, n in rows]

    def _group_expr(self, table: Table, column: str, date_part: str | None) -> str:
        expr = value_expr(table.by_name[column], "t0", self.dialect)
        if date_part is None:
            return expr
        return f"(CASE WHEN {self.dialect.is_iso_date(expr)} THEN substr({expr}, 1, {DATE_PARTS[date_part]}) END)"

    def _after(self, table: Table, spec: PageSpec) -> list[Fragment]:
        return [] if spec.after is None else after_branches(table, spec.order, spec.after, "t0", self.dialect)

    def _where_after(self, table: Table, spec: PageSpec) -> tuple[str, dict[str, Any]]:
        """`where` and "after the cursor" as one condition (nested pages: their window needs one statement)."""
        values = spec.where.values
        branches = self._after(table, spec)
        if not branches:
            return spec.where.sql, values
        for branch in branches:
            values.update(branch.values)
        after = " OR ".join(f"({b.sql})" for b in branches)
        return _and(spec.where.sql, f"({after})"), values


def _and(a: str, b: str) -> str:
    if a == TRUE:
        return b
    return a if b == TRUE else f"({a}) AND ({b})"


def _select(table: Table) -> str:
    return ", ".join(f"t0.{q(c)}" for c in table.select)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _read_only_sqlite_url(url: str) -> str:
    """`sqlite:///FILE` as a `databases` URL opening FILE read-only through an SQLite URI filename."""
    path = Path(DatabaseURL(url).database)
    if not str(path) or str(path) == ":memory:":
        raise DatabaseUnavailable(f"bad database URL {url!r}: name a database file (sqlite:///path/to/file.db)")
    if not path.is_file():
        raise DatabaseUnavailable(f"no database file {path}: run dicom-ingest first or pass --db")
    # Quoted twice: `databases` unquotes the URL path once, SQLite decodes the URI filename once more.
    return "sqlite:///" + quote("file:" + quote(str(path.resolve())), safe="/:") + "?mode=ro"


def _safe_url(url: str) -> str:
    return str(DatabaseURL(url).obscure_password)


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
