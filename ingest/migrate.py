"""Versions of the database and upgrades in place: what an older dicom-db database lacks is derived from
schema.sql and the database's catalog, never from a list of what changed.

Two numbers describe a database, kept in its `SchemaInfo` table:

- `schema`: the schema it was made or upgraded to (`SCHEMA_VERSION`). A database with dicom-db's tables but no
  `SchemaInfo` predates versions: schema 1. Opening an older one adds, in one transaction, every table, column
  and index schema.sql declares that it lacks (columns with their declared type and default, so no row is
  rewritten and every SliceID stays), fills the columns derived from others (the UID digests), then records the
  version. A newer one is refused: this code does not know what its columns mean.
- `mapping`: the newest version of the mapping from DICOM attributes to columns (`MAPPING_VERSION`) files were
  read under. Each `SourceFile` row records its own (`MappingVersion`, 1 for rows from before it was recorded);
  an ingest reads a file recorded under an older mapping again, as if it had changed, so new columns get filled
  from the files that hold them and files already read under the current mapping are not read again.

The dicom-db API does not upgrade (it opens the database read-only): it refuses an out-of-date database and
names the command that upgrades it (`upgrade_command`).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from dicom_db.ingest.db import SCHEMA_PATH, UID_HASHES, DatabaseError, schema_statements
from dicom_db.model import registry

# Raise with every change to schema.sql (tests/test_migrations.py holds each version's catalog digest).
SCHEMA_VERSION = 2
# The registry's: raised there with every change to what a file's rows hold (a new column the reader fills, a value
# read differently): files read under an older mapping are read again by the next ingest over them, or by
# `dicom-ingest --upgrade`.
MAPPING_VERSION = registry.MAPPING_VERSION
INFO_TABLE = "SchemaInfo"
LEGACY_SCHEMA = 1  # a dicom-db database without SchemaInfo

READ_INFO = 'SELECT "Key", "Value" FROM "SchemaInfo"'
WRITE_INFO = (
    'INSERT INTO "SchemaInfo" ("Key", "Value") VALUES ({values}) '
    'ON CONFLICT ("Key") DO UPDATE SET "Value" = excluded."Value"'
)
INDEX_NAMES = {
    "sqlite": "SELECT name FROM sqlite_master WHERE type = 'index'",
    "postgresql": "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()",
}


class Driver(Protocol):  # ingest/db.py's _SQLite and _PostgreSQL
    def tables(self) -> dict[str, set[str]]: ...
    def execute(self, sql: str) -> None: ...
    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]: ...
    def uid_hash_sql(self, expr: str) -> str: ...
    @staticmethod
    def placeholders(count: int) -> str: ...


class Column(NamedTuple):
    name: str
    type: str
    not_null: bool
    default: str | None  # the default's SQL text
    addable: bool  # ALTER TABLE ADD COLUMN can add it: not a key, not UNIQUE, not NOT NULL without a default


class Declared(NamedTuple):
    """What schema.sql declares, read by running it into an empty in-memory SQLite database."""

    tables: dict[str, tuple[Column, ...]]  # in declaration order
    indexes: frozenset[str]


class Catalog(NamedTuple):
    tables: dict[str, set[str]]  # table -> its columns
    indexes: set[str]


@functools.cache
def declared(path: Path = SCHEMA_PATH) -> Declared:
    conn = sqlite3.connect(":memory:")
    try:
        conn.executescript(path.read_text())
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        tables = {}
        for table in names:
            if table.startswith("sqlite_"):
                continue
            unique = set()
            for _, index, is_unique, *_ in conn.execute(f'PRAGMA index_list("{table}")'):
                if is_unique:
                    unique.update(r[2] for r in conn.execute(f'PRAGMA index_info("{index}")'))
            foreign = {r[3] for r in conn.execute(f'PRAGMA foreign_key_list("{table}")')}
            tables[table] = tuple(
                Column(
                    name,
                    kind,
                    bool(not_null),
                    default,
                    not pk and name not in unique and name not in foreign and not (not_null and default is None),
                )
                for _, name, kind, not_null, default, pk in conn.execute(f'PRAGMA table_info("{table}")')
            )
        indexes = frozenset(
            r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")
        )
        return Declared(tables, indexes)
    finally:
        conn.close()


def read_catalog(db: Driver, dialect: str) -> Catalog:
    return Catalog(db.tables(), {r[0] for r in db.fetch(INDEX_NAMES[dialect])})


def check_ours(url: str, tables: dict[str, set[str]]) -> None:
    """Refuse, before changing anything, a database that belongs to another application, or whose tables named
    as ours lack what an upgrade cannot add (keys, unique and required columns)."""
    names = {t for t in tables if not t.startswith("sqlite_")}
    if names and not names & declared().tables.keys():
        listed = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise DatabaseError(
            f"{url} holds another application's tables ({listed}) and none of dicom-db's: "
            "refusing to add tables to it; give a new database"
        )
    for table, columns in declared().tables.items():
        missing = [c.name for c in columns if table in tables and not c.addable and c.name not in tables[table]]
        if missing:
            raise DatabaseError(
                f"{url} has a table {table} without the columns {', '.join(missing)}: "
                "not a dicom-db database (or one this version cannot upgrade)"
            )


def stored_versions(db: Driver, tables: dict[str, set[str]]) -> dict[str, int]:
    """{"schema": N, "mapping": N} as recorded; {} for a new, empty database."""
    if INFO_TABLE in tables:
        found = {key: int(value) for key, value in db.fetch(READ_INFO)}
        return {"schema": found.get("schema", LEGACY_SCHEMA), "mapping": found.get("mapping", 1)}
    if tables.keys() & declared().tables.keys():
        return {"schema": LEGACY_SCHEMA, "mapping": 1}
    return {}


def _missing(catalog: Catalog) -> tuple[list[str], list[tuple[str, Column]], list[str]]:
    """The tables, columns and indexes schema.sql declares that the database lacks."""
    want = declared()
    tables = [t for t in want.tables if t not in catalog.tables]
    have = catalog.tables
    columns = [(t, c) for t, cols in want.tables.items() if t in have for c in cols if c.name not in have[t]]
    return tables, columns, sorted(want.indexes - catalog.indexes)


def _refuse_newer(url: str, versions: dict[str, int]) -> None:
    if versions.get("schema", 0) > SCHEMA_VERSION:
        raise DatabaseError(
            f"{url} has schema version {versions['schema']}, newer than this dicom-ingest's "
            f"{SCHEMA_VERSION}: use the dicom-ingest that wrote it (or a newer one)"
        )


def upgrade(db: Driver, dialect: str, url: str, catalog: Catalog) -> list[str]:
    """Bring the database to schema.sql and the current versions; what was done, for the log ([] if nothing).

    Called with the catalog read on open and, for PostgreSQL, under the session's advisory lock; the changes are
    one transaction (SQLite: BEGIN IMMEDIATE, so concurrent runs take turns and the later ones find nothing left
    to do, as they read the catalog again inside it)."""
    versions = stored_versions(db, catalog.tables)
    _refuse_newer(url, versions)
    if (
        versions.get("schema") == SCHEMA_VERSION
        and versions.get("mapping", 0) >= MAPPING_VERSION
        and not any(_missing(catalog))
    ):
        return []
    db.execute("BEGIN IMMEDIATE" if dialect == "sqlite" else "BEGIN")
    try:
        catalog = read_catalog(db, dialect)
        versions = stored_versions(db, catalog.tables)
        _refuse_newer(url, versions)
        done = _apply(db, dialect, catalog, versions)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):  # the failure that made us roll back is what gets reported
            db.execute("ROLLBACK")
        raise
    return done


def _apply(db: Driver, dialect: str, catalog: Catalog, versions: dict[str, int]) -> list[str]:
    new_tables, new_columns, new_indexes = _missing(catalog)
    statements = schema_statements(dialect)
    for statement in statements:
        if not statement.upper().startswith("CREATE INDEX"):
            db.execute(statement)  # CREATE TABLE IF NOT EXISTS: only the missing ones are made
    existing = bool(catalog.tables.keys() & declared().tables.keys())  # not a new database: say what changed
    done = [f"created {', '.join(new_tables)}"] if new_tables and existing else []
    digests = {(table, digest): uid for table, (uid, digest) in UID_HASHES.items()}
    for table, column in new_columns:
        db.execute(f'ALTER TABLE "{table}" ADD COLUMN {_definition(column, dialect)}')
        uid = digests.get((table, column.name))
        if uid is not None:  # derived from the row's own UID: filled now, no file needs reading for it
            value = db.uid_hash_sql(f'"{uid}"')
            db.execute(f'UPDATE "{table}" SET "{column.name}" = {value}')
        done.append(f"added {table}.{column.name}")
    for statement in statements:  # after the columns: some index columns just added
        if statement.upper().startswith("CREATE INDEX"):
            db.execute(statement)
    if new_indexes and existing:
        done.append(f"created the indexes {', '.join(new_indexes)}")
    wanted = {"schema": SCHEMA_VERSION, "mapping": max(versions.get("mapping", MAPPING_VERSION), MAPPING_VERSION)}
    stored = {key: int(value) for key, value in db.fetch(READ_INFO)}
    for key, value in wanted.items():
        if stored.get(key) != value:
            db.fetch(WRITE_INFO.replace("{values}", db.placeholders(2)), (key, str(value)))
    if versions and versions.get("schema") != SCHEMA_VERSION:
        done.append(f"schema version {versions['schema']} -> {SCHEMA_VERSION}")
    return done


def _definition(column: Column, dialect: str) -> str:
    kind = column.type
    if dialect == "postgresql" and kind.upper() == "REAL":
        kind = "DOUBLE PRECISION"  # as schema_statements adapts it: SQLite's REAL is 8 bytes
    text = f'"{column.name}" {kind}'
    if column.not_null:
        text += " NOT NULL"
    if column.default is not None:
        text += f" DEFAULT {column.default}"
    return text


def upgrade_command(url: str) -> str:
    """The command that upgrades the database at `url` in place and reads its stale files again."""
    return f"dicom-ingest --upgrade --db {url}"
