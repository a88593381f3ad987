"""The API's only door to the database: a read-only pool of `databases` connections and the named queries
the loaders run. SQLite (aiosqlite) and PostgreSQL (asyncpg) share the code; `api.sql` spells what differs.

Every statement is assembled here from identifiers of `api.columns` and fragments whose values are bound
parameters; no client string is ever part of the SQL text.

A request runs all its statements on one connection, in one read transaction (`Database.request`): it sees one
snapshot of the database, whatever an ingest commits meanwhile (SQLite in WAL mode: readers never wait for the
writer; PostgreSQL: REPEATABLE READ READ ONLY). A connection that fails is closed and replaced, so the pool
survives a database server restart.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any
from urllib.parse import quote

from databases import Database as _Databases
from databases import DatabaseURL
from databases.core import Connection

from dicom_db.api.columns import TABLES, Kind, Table
from dicom_db.api.errors import (
    DatabaseBusy,
    DatabaseUnavailable,
    QueryTooComplex,
    TimeLimitExceeded,
    UnsupportedDatabaseURL,
)
from dicom_db.api.masking import UID_HASHES, Pseudonyms, uid_hash
from dicom_db.api.pagination import PageSpec, after_branches, order_exprs, order_sql
from dicom_db.api.sql import (
    POSTGRES,
    SQLITE,
    TRUE,
    Dialect,
    Fragment,
    json_list,
    patient_expr,
    q,
    shifted_expr,
    value_expr,
)
from dicom_db.ingest.migrate import INFO_TABLE, MAPPING_VERSION, SCHEMA_VERSION, upgrade_command

log = logging.getLogger("dicom_api.db")

DATE_PARTS = {"YEAR": 4, "MONTH": 7, "DAY": 10}
RELEASE_TIMEOUT = 10.0  # seconds to end a request's transaction before the connection is given up
READ_TRANSACTION = {"sqlite": "BEGIN", "postgresql": "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"}

# The session of the request being served. A context variable, because the statements of a request are issued
# from the tasks DataLoaders create for their batches, and those tasks inherit the request's context.
_SESSION: ContextVar[Session | None] = ContextVar("dicom_api_session", default=None)


def dialect_of(url: str) -> Dialect:
    scheme = DatabaseURL(url).scheme
    if scheme.startswith("sqlite"):
        return SQLITE
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return POSTGRES
    raise UnsupportedDatabaseURL(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://HOST/DB")


class Database:
    """A fixed pool of read-only connections, opened at startup and shared by all requests."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 4,
        busy_timeout_ms: int = 5000,
        pool_timeout: float = 2.0,
        pseudonyms: Pseudonyms | None = None,
    ) -> None:
        self.url = url
        self.dialect = dialect_of(url)
        self.pool_size = pool_size
        self.pool_timeout = pool_timeout  # seconds a statement waits for a free connection before DatabaseBusy
        self.busy_timeout_ms = busy_timeout_ms
        self.pseudonyms = pseudonyms or Pseudonyms()
        self.statements = 0  # statements run for requests so far: tests read it
        # Rows per table, counted at startup and refreshed by the app (api.app): the node budget's caps.
        self.table_rows: dict[str, int] | None = None
        self._database: _Databases | None = None
        # Free connections; None is a slot whose connection failed, reopened when next taken.
        self._pool: asyncio.Queue[Connection | None] | None = None
        self._open_connections: set[Connection] = set()

    # Lifecycle

    @property
    def connected(self) -> bool:
        return self._pool is not None

    async def connect(self) -> None:
        if self.dialect is SQLITE:
            self._database = _Databases(_read_only_sqlite_url(self.url), uri=True, timeout=self.busy_timeout_ms / 1000)
        else:
            # The server refuses writes in every transaction of these sessions.
            settings = {"default_transaction_read_only": "on", "application_name": "dicom-api"}
            self._database = _Databases(self.url, min_size=1, max_size=self.pool_size, server_settings=settings)
        try:
            await self._database.connect()
            connections = await asyncio.gather(*(self._open() for _ in range(self.pool_size)))
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            await self.disconnect()
            raise DatabaseUnavailable(f"cannot open database {_safe_url(self.url)}: {_describe(exc)}") from exc
        self._pool = asyncio.Queue()
        for connection in connections:
            self._pool.put_nowait(connection)
        await self._check_schema()
        await self.count_rows()

    async def _open(self) -> Connection:
        assert self._database is not None
        # A Connection of its own, not `databases`' per-task one: pool connections outlive the task that opens
        # them and serve many others.
        connection = Connection(self._database, self._database._backend)
        await connection.__aenter__()
        self._open_connections.add(connection)
        try:
            raw = connection.raw_connection
            if self.dialect is SQLITE:
                await raw.execute("PRAGMA query_only = ON")
                await raw.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
                # Unicode lower-casing for `match` (SQLite's LIKE folds ASCII only); see api.sql.Dialect.ilike.
                await raw.create_function("dicom_lower", 1, _lower, deterministic=True)
                await raw.create_function("dicom_pseudonym", 1, self.pseudonyms, deterministic=True)
                await raw.create_function("dicom_shift_date", 2, self.pseudonyms.shift_date, deterministic=True)
                await raw.create_function("dicom_uid_hash", 1, uid_hash, deterministic=True)
                await raw.set_authorizer(_no_attach)
            else:
                ipad, opad = self.pseudonyms.pads()
                date_ipad, date_opad = self.pseudonyms.date_pads()
                await raw.execute(
                    "SELECT set_config('dicom_api.hmac_ipad', $1, false), "
                    "set_config('dicom_api.hmac_opad', $2, false), "
                    "set_config('dicom_api.date_ipad', $3, false), set_config('dicom_api.date_opad', $4, false)",
                    ipad.hex(),
                    opad.hex(),
                    date_ipad.hex(),
                    date_opad.hex(),
                )
        except BaseException:
            await self._close(connection)
            raise
        return connection

    async def _close(self, connection: Connection) -> None:
        self._open_connections.discard(connection)
        try:
            await asyncio.wait_for(connection.__aexit__(None, None, None), RELEASE_TIMEOUT)
        except Exception as exc:  # closing is best effort: report, keep going
            log.warning("closing a database connection failed: %s", _describe(exc))

    async def disconnect(self) -> None:
        for connection in list(self._open_connections):
            await self._close(connection)
        self._pool = None
        if self._database is not None and self._database.is_connected:
            await self._database.disconnect()

    async def _check_schema(self) -> None:
        await self._check_version()
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
        await self._check_uid_hashes()

    async def _check_version(self) -> None:
        """Refuse a dicom-db database of another schema version, naming the command that upgrades an older one
        (this API only reads); warn about files read under an older mapping (their new columns are empty)."""
        if self.dialect is SQLITE:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        else:
            sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        tables = {row[0] for row in await self._one_off(sql, None, counted=False)}
        if not tables & {table.name for table in TABLES.values()}:
            return  # not a dicom-db database: the check of the tables says so
        stored = {}
        if INFO_TABLE in tables:
            stored = dict(await self._one_off(f'SELECT "Key", "Value" FROM {q(INFO_TABLE)}', None, counted=False))
        version = int(stored.get("schema", 1))
        if version != SCHEMA_VERSION:
            await self.disconnect()
            url = _safe_url(self.url)
            if version < SCHEMA_VERSION:
                raise DatabaseUnavailable(
                    f"{url} was made by an earlier dicom-ingest (schema version {version}, this dicom-api reads "
                    f"version {SCHEMA_VERSION}): upgrade it in place with `{upgrade_command(url)}`"
                )
            raise DatabaseUnavailable(
                f"{url} was made by a newer dicom-ingest (schema version {version}, this dicom-api reads version "
                f"{SCHEMA_VERSION}): serve it with the dicom-api of that release"
            )
        stale = await self._one_off(
            'SELECT COUNT(*) FROM "SourceFile" WHERE "MappingVersion" < :mapping '
            "AND \"Status\" IN ('ingested', 'duplicate')",
            {"mapping": MAPPING_VERSION},
            counted=False,
        )
        if stale[0][0]:
            log.warning(
                "%s: %d files were read by an earlier dicom-ingest, and their rows lack what this one reads: "
                "`%s` reads them again",
                _safe_url(self.url),
                stale[0][0],
                upgrade_command(_safe_url(self.url)),
            )

    async def _check_uid_hashes(self) -> None:
        """Whether the UID digests are stored (a database ingested before they were is served without them)."""
        if self.dialect is SQLITE:
            sql = "SELECT name FROM pragma_table_info(:t)"
        else:
            sql = (
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = :t"
            )
        stored = True
        for table, (_, digest) in UID_HASHES.items():
            names = {row[0] for row in await self._one_off(sql, {"t": table}, counted=False)}
            stored = stored and digest in names
        self.pseudonyms.stored_digests = stored
        if not stored:
            log.warning(
                "%s has no UID digests (ingested by an earlier dicom-ingest): de-identified lookups by UID scan "
                "whole tables until dicom-ingest runs on it again",
                _safe_url(self.url),
            )

    async def ping(self) -> None:
        await self.fetch("SELECT 1")

    async def count_rows(self) -> None:
        """Count the rows of each table, for the node budget (api.limits). Not a request's statements: not
        counted in `statements`."""
        counts = {}
        for table in TABLES.values():
            rows = await self._one_off(f"SELECT COUNT(*) FROM {q(table.name)}", None, counted=False)
            counts[table.name] = int(rows[0][0])
        self.table_rows = counts

    # Connections

    @asynccontextmanager
    async def request(self, deadline: float = math.inf) -> AsyncIterator[Session]:
        """Serve one request: its statements (`fetch`, wherever called from within) share one connection and
        one read transaction, taken at the first statement (a request refused before it runs SQL takes none).
        Past `deadline` (event-loop time) no statement starts."""
        session = Session(self, deadline)
        token = _SESSION.set(session)
        try:
            yield session
        finally:
            _SESSION.reset(token)
            await session.close()

    async def fetch(
        self, sql: str, values: dict[str, Any] | None = None, *, alone: bool = False
    ) -> list[tuple[Any, ...]]:
        """Run one statement: on the request's connection when serving one, else on a free connection of the
        pool. Rows as plain tuples. `alone`: the statement is all the request will run (a compiled operation of
        one root field): one statement reads one snapshot by itself, so it needs no read transaction, and it goes
        to the driver directly, on SQLite in one trip to its thread, without `databases`' compilation of the SQL
        text (together about a third of a small query's time)."""
        session = _SESSION.get()
        if session is not None and session.db is self:
            return await session.fetch(sql, values, alone=alone)
        return await self._one_off(sql, values)

    async def recover(self) -> None:
        """After a statement of the request being served failed, and what the request read so far is dropped:
        on PostgreSQL the failure aborted the request's transaction, and every later statement would fail too,
        so it is rolled back and begun again (a fresh snapshot, which is all the request will read). SQLite's
        transaction survives a failed statement. Costs nothing while statements succeed (unlike a SAVEPOINT
        before each)."""
        session = _SESSION.get()
        if session is not None and session.db is self and self.dialect is not SQLITE:
            await session.restart()

    async def _one_off(self, sql: str, values: dict[str, Any] | None, counted: bool = True) -> list[tuple[Any, ...]]:
        connection = await self._checkout(begin=False)
        try:
            return await self._run(connection, sql, values, counted)
        finally:
            await self._checkin(connection)

    async def _run(
        self,
        connection: Connection,
        sql: str,
        values: dict[str, Any] | None,
        counted: bool = True,
        direct: bool = False,
    ) -> list[tuple[Any, ...]]:
        """One statement on `connection`; `direct`: on the driver's own connection, not through `databases`."""
        log.debug("SQL %s %s", sql, values)
        self.statements += counted
        try:
            if not direct:
                records = await connection.fetch_all(sql, values or {})
                return [tuple(r._mapping) for r in records]
            raw = connection.raw_connection
            if self.dialect is SQLITE:
                # sqlite3 binds `:name` parameters from a dict itself, as `databases` would after compiling the text.
                rows = await raw.execute_fetchall(sql, values or {})
            else:
                text, names = _numbered(sql)
                rows = await raw.fetch(text, *((values or {})[name] for name in names))
            return [tuple(r) for r in rows]
        except Exception as exc:
            if _too_complex(exc):
                log.info("the database refused a statement as too complex: %s", _describe(exc))
                raise QueryTooComplex() from exc
            raise

    async def _checkout(self, *, begin: bool) -> Connection:
        """A free connection (opening one for an empty slot), in a read transaction if `begin`. A connection that
        fails here is replaced once: after a server restart every pooled connection is dead, and the first
        request should not be the one to notice."""
        if self._pool is None:
            raise DatabaseUnavailable("the database is not connected")
        try:
            # Every connection busy this long (slow requests hold them all): say so at once rather than let the
            # request wait out its whole time limit.
            async with asyncio.timeout(self.pool_timeout):
                slot = await self._pool.get()
        except TimeoutError:
            log.warning("no free database connection within %g s (pool size %d)", self.pool_timeout, self.pool_size)
            raise DatabaseBusy() from None
        taken = False
        try:
            for attempt in (1, 2):
                try:
                    if slot is None:
                        slot = await self._open()
                    await self._reset(slot)
                    if begin:
                        await _execute(slot, READ_TRANSACTION[self.dialect.name])
                    taken = True
                    return slot
                except Exception as exc:
                    if slot is not None:
                        await self._close(slot)
                        slot = None
                    if attempt == 2:
                        log.error("the database is unavailable: %s", _describe(exc))
                        raise DatabaseBusy() from exc
                    log.warning("a database connection failed (%s); opening a new one", _describe(exc))
            raise AssertionError("unreachable")
        finally:
            if not taken:
                self._pool.put_nowait(slot)

    async def _checkin(self, connection: Connection) -> None:
        """End the connection's transaction and give it back; a connection that cannot is replaced."""
        slot: Connection | None = connection
        try:
            async with asyncio.timeout(RELEASE_TIMEOUT):  # not wait_for: no task of its own for each request
                await self._reset(connection)
        except BaseException as exc:
            log.warning("a database connection could not end its transaction (%s); replacing it", _describe(exc))
            await self._close(connection)
            slot = None
            if not isinstance(exc, Exception):
                raise
        finally:
            if self._pool is not None:
                self._pool.put_nowait(slot)

    async def _reset(self, connection: Connection) -> None:
        """Roll back whatever transaction the connection is in; raise if it is not usable."""
        raw = connection.raw_connection
        if self.dialect is SQLITE:
            if raw.in_transaction:
                await _execute(connection, "ROLLBACK")
        else:
            if raw.is_closed():
                raise DatabaseUnavailable("the connection was closed")
            if raw.is_in_transaction():
                await _execute(connection, "ROLLBACK")

    def _interrupt(self, connection: Connection) -> None:
        """Stop the statement running on `connection`, from the event loop's thread. SQLite runs statements in
        aiosqlite's thread, which a cancelled task does not stop: sqlite3's interrupt() is the thread-safe way.
        On PostgreSQL, cancelling the task that awaits asyncpg sends the server a cancel request."""
        if self.dialect is SQLITE:
            try:
                connection.raw_connection._conn.interrupt()
            except Exception as exc:  # already closed: nothing runs
                log.debug("interrupt: %s", _describe(exc))

    # Named queries. Rows come back as tuples: the table's `select` columns first, extras after.

    async def rows_by_keys(
        self, table: Table, column: str, keys: Sequence[Any], *, mode: str = "", with_patient: bool = False
    ) -> list[tuple[Any, ...]]:
        """Rows whose `column` is in `keys`; `mode` "pseudonym": whose pseudonym is (a scan, not an index seek),
        "digest": whose UID digest is (an index seek on the stored digest). With `with_patient` each row also
        holds its patient's ID, after the columns."""
        kind = Kind.INT if column in table.by_name and table.by_name[column].kind is Kind.INT else Kind.STRING
        expr = f"t0.{q(column)}"
        if mode == "pseudonym":
            expr = self.dialect.pseudonym(expr)
        elif mode == "digest":
            uid, digest = UID_HASHES[table.name]
            expr = f"t0.{q(digest)}" if self.pseudonyms.stored_digests else self.dialect.uid_hash(f"t0.{q(uid)}")
        member = self.dialect.in_values(expr, ":keys", kind)
        sql = f"SELECT {_select(table, with_patient)} FROM {q(table.name)} t0 WHERE {member}"
        return await self.fetch(sql, {"keys": json_list(keys)})

    async def page(self, spec: PageSpec) -> list[tuple[Any, ...]]:
        """One page of a root connection: select columns, then the ordering values."""
        table = TABLES[spec.table]
        exprs = order_exprs(table, spec.order, "t0", self.dialect)
        order = order_sql(table, spec.order, "t0", self.dialect)
        select = f"SELECT {_select(table, spec.with_patient)}, {', '.join(exprs)} FROM {q(table.name)} t0"
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
        width = len(table.select) + spec.with_patient
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
            f"SELECT {_select(table, spec.with_patient)}, {extra}, t0.{q(fk)} AS _parent, ROW_NUMBER() OVER "
            f"(PARTITION BY t0.{q(fk)} ORDER BY {order_sql(table, spec.order, 't0', self.dialect)}) AS _rn "
            f"FROM {q(table.name)} t0 WHERE {member} AND {where}"
        )
        columns = [*(f"_page.{q(c)}" for c in table.select), *(["_page._patient"] if spec.with_patient else [])]
        outer = ", ".join([*columns, *(f"_page._o{i}" for i in range(len(exprs)))])
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

    async def frame_counts(self, series: Sequence[Any]) -> dict[Any, int]:
        """Per series: its images, an instance of several frames counting its frames (NumberOfFrames)."""
        member = self.dialect.in_values('t0."SeriesInstanceUID"', ":parents", Kind.STRING)
        sql = (
            f'SELECT t0."SeriesInstanceUID", SUM({frames_expr("t0")}) '
            f'FROM "SliceMetadata" t0 WHERE {member} GROUP BY t0."SeriesInstanceUID"'
        )
        rows = await self.fetch(sql, {"parents": json_list(series)})
        return {parent: int(n) for parent, n in rows}

    async def groups(
        self, table: Table, where: Fragment, column: str, date_part: str | None, limit: int, view: str = ""
    ) -> list[tuple[Any, int]]:
        """(value, count) over the filtered set, most frequent first, then by value (nulls last). `view`:
        "shifted" groups dates as shifted, "keyed" breaks ties by a keyed hash of the value (for values the
        client sees as pseudonyms, whose stored order must not show)."""
        value = self._group_expr(table, column, date_part, view)
        tie = self.dialect.pseudonym(value) if view == "keyed" else value
        sql = (
            f"SELECT {value}, COUNT(*) FROM {q(table.name)} t0 WHERE {where.sql} GROUP BY 1 "
            f"ORDER BY COUNT(*) DESC, ({value}) IS NULL, {tie} LIMIT :limit"
        )
        rows = await self.fetch(sql, {**where.values, "limit": limit})
        return [(v, int(n)) for v, n in rows]

    async def groups_by_parent(
        self,
        table: Table,
        where: Fragment,
        column: str,
        date_part: str | None,
        fk: str,
        parents: Sequence[Any],
        view: str = "",
    ) -> list[tuple[Any, Any, int]]:
        """(parent, value, count) for all parents, each parent's groups in the order of `groups`."""
        value = self._group_expr(table, column, date_part, view)
        tie = self.dialect.pseudonym(value) if view == "keyed" else value
        member = self.dialect.in_values(f"t0.{q(fk)}", ":parents", Kind.STRING)
        sql = (
            f"SELECT t0.{q(fk)}, {value}, COUNT(*) FROM {q(table.name)} t0 WHERE {member} AND {where.sql} "
            f"GROUP BY 1, 2 ORDER BY 1, COUNT(*) DESC, ({value}) IS NULL, {tie}"
        )
        rows = await self.fetch(sql, {**where.values, "parents": json_list(parents)})
        return [(p, v, int(n)) for p, v, n in rows]

    async def middle_instance_file(self, series_uid: str) -> str | None:
        """The file of the series' middle instance, in InstanceNumber order (instances without one last, ties by
        SOPInstanceUID), from the ingest's file index; None for an unknown series or one without a file."""
        source = (
            'FROM "SliceMetadata" s JOIN "SourceFile" f ON f."SOPInstanceUID" = s."SOPInstanceUID" '
            """AND f."Status" = 'ingested' WHERE s."SeriesInstanceUID" = :series"""
        )
        count = int((await self.fetch(f"SELECT COUNT(*) {source}", {"series": series_uid}))[0][0])
        if not count:
            return None
        order = 's."SliceNumber" IS NULL, s."SliceNumber", s."SOPInstanceUID"'
        sql = f'SELECT f."Path" {source} ORDER BY {order} LIMIT 1 OFFSET :middle'
        rows = await self.fetch(sql, {"series": series_uid, "middle": count // 2})
        return rows[0][0] if rows else None

    async def instance_files(self, sop_uids: Sequence[str]) -> dict[str, tuple[str, int]]:
        """The file each instance's row comes from, from the ingest's file index (status 'ingested': a duplicate
        file holding the same instance is never it): (path as stored, size in bytes) by SOPInstanceUID, in one
        statement; an instance without such a file (an unknown UID, a database not made by dicom-ingest) is
        absent. Paths of names that are not UTF-8 are in their stored `bytes:` form (ingest.paths)."""
        if not sop_uids:
            return {}
        member = self.dialect.in_values('f."SOPInstanceUID"', ":sops", Kind.STRING)
        sql = (
            'SELECT f."SOPInstanceUID", f."Path", f."Size" FROM "SourceFile" f '
            f"WHERE f.\"Status\" = 'ingested' AND {member}"
        )
        rows = await self.fetch(sql, {"sops": json_list(sop_uids)})
        return {sop: (path, int(size)) for sop, path, size in rows}

    def _group_expr(self, table: Table, column: str, date_part: str | None, view: str = "") -> str:
        if view == "shifted":
            expr = shifted_expr(table, table.by_name[column], "t0", self.dialect)
        else:
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


class Session:
    """One request's hold on the database: a connection taken at its first statement, in a read transaction,
    given back when the request ends (`Database.request`)."""

    def __init__(self, db: Database, deadline: float = math.inf) -> None:
        self.db = db
        self.deadline = deadline
        self._connection: Connection | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._running: set[asyncio.Task[Any]] = set()  # tasks with a statement of this request under way
        self._alone: Connection | None = None  # the connection of a statement run alone (`fetch(alone=True)`)

    async def fetch(self, sql: str, values: dict[str, Any] | None, alone: bool = False) -> list[tuple[Any, ...]]:
        """A statement on the request's connection, taken in a read transaction at its first statement; `alone`
        (`Database.fetch`): a connection without a transaction, given back at once, unless the request already
        holds one. Statements the request runs after it (the resolvers, when the compiled answer could not be
        used) take a connection in a transaction of their own."""
        if asyncio.get_running_loop().time() > self.deadline:
            raise TimeLimitExceeded()
        task = asyncio.current_task()
        assert task is not None
        self._running.add(task)
        try:
            async with self._lock:  # the first statements of a request may start side by side
                if self._closed:
                    raise DatabaseUnavailable("the request is over")
                if self._connection is None and not alone:
                    self._connection = await self.db._checkout(begin=True)
                connection = self._connection
                if connection is None:
                    connection = self._alone = await self.db._checkout(begin=False)
            try:
                return await self.db._run(connection, sql, values, direct=connection is self._alone)
            finally:
                if connection is self._alone:
                    self._alone = None
                    await self.db._checkin(connection)
        finally:
            self._running.discard(task)

    async def restart(self) -> None:
        """Roll back the request's transaction and begin it again (`Database.recover`); a connection that cannot
        is given back to be replaced, and the next statement takes another."""
        async with self._lock:
            connection = self._connection
            if connection is None or self._closed:
                return
            try:
                await self.db._reset(connection)
                await _execute(connection, READ_TRANSACTION[self.db.dialect.name])
            except Exception as exc:
                log.warning("a database connection could not begin again (%s); replacing it", _describe(exc))
                self._connection = None
                await self.db._checkin(connection)

    def interrupt(self) -> None:
        """Stop the statements under way (the request ran out of time)."""
        for task in self._running:
            task.cancel()
        for connection in (self._connection, self._alone):
            if connection is not None:
                self.db._interrupt(connection)

    async def close(self) -> None:
        async with self._lock:
            self._closed = True
        # Statements still under way (batches of an interrupted request) end before the connection is reused.
        current = asyncio.current_task()
        running = [t for t in self._running if t is not current]
        if running:
            await asyncio.wait(running, timeout=RELEASE_TIMEOUT)
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await self.db._checkin(connection)


async def _execute(connection: Connection, sql: str) -> None:
    """A transaction-control statement on the driver's connection: not a query, not counted, not logged."""
    raw = connection.raw_connection
    result = await raw.execute(sql)
    if hasattr(result, "close"):  # aiosqlite returns a cursor
        await result.close()


# What SQLite says of a statement past its compile-time limits; PostgreSQL's class 54 is "program limit exceeded"
# (54001: statement too complex, stack depth).
_SQLITE_TOO_COMPLEX = (
    "parser stack overflow",
    "Expression tree is too large",
    "too many SQL variables",
    "too many terms",
)


def _too_complex(exc: Exception) -> bool:
    if isinstance(exc, sqlite3.OperationalError):
        return any(phrase in str(exc) for phrase in _SQLITE_TOO_COMPLEX)
    return str(getattr(exc, "sqlstate", "") or "").startswith("54")


def frames_expr(alias: str) -> str:
    """The images of one SliceMetadata row: its frames when it has several (enhanced multi-frame), else 1."""
    return f'CASE WHEN {alias}."NumberOfFrames" > 1 THEN {alias}."NumberOfFrames" ELSE 1 END'


# A `:name` parameter as SQLAlchemy's text() finds it (`databases` compiles statements with it): not a `::` cast.
_PARAMETER = re.compile(r"(?<![:\w\\]):(\w+)(?![:\w])")


@functools.lru_cache(maxsize=1024)
def _numbered(sql: str) -> tuple[str, tuple[str, ...]]:
    """`sql` with asyncpg's `$n` for its `:name` parameters, and the names in their order (plans are cached, so
    the same texts come back)."""
    names: dict[str, int] = {}

    def number(match: re.Match[str]) -> str:
        return f"${names.setdefault(match.group(1), len(names) + 1)}"

    return _PARAMETER.sub(number, sql), tuple(names)


def _and(a: str, b: str) -> str:
    if a == TRUE:
        return b
    return a if b == TRUE else f"({a}) AND ({b})"


def _select(table: Table, with_patient: bool = False) -> str:
    columns = ", ".join(f"t0.{q(c)}" for c in table.select)
    return f"{columns}, {patient_expr(table, 't0')} AS _patient" if with_patient else columns


def _no_attach(action: int, arg1: str | None, arg2: str | None, db_name: str | None, source: str | None) -> int:
    # ATTACH (and VACUUM INTO, which attaches its target) creates the file it names before query_only and
    # mode=ro refuse to write to it: refused here, before anything touches the disk.
    return sqlite3.SQLITE_DENY if action == sqlite3.SQLITE_ATTACH else sqlite3.SQLITE_OK


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
