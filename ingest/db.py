"""The ingest side of the database: schema creation, the file index and batched upserts.

All SQL the ingest runs lives here. The one writer connection talks to the driver itself, synchronously:
the standard library's sqlite3 for SQLite, asyncpg (imported only then) on a private event loop for PostgreSQL.
Bulk writes are the driver's `executemany`, one round trip per statement and batch; reads come back as plain
tuples. The API reads through `databases` and aiosqlite; the ingest does not: it is one writer that waits for
every statement anyway, and importing SQLAlchemy and asyncio took longer than a whole re-run over an
unchanged tree of 10,000 files.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

from dicom_db.model import registry

if TYPE_CHECKING:
    import logging

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"

BUSY_TIMEOUT_MS = 60000
# Run after the check that the file is ours (sqlite_master), so another application's database is left as it
# was; the busy timeout is set before anything else, so that concurrent runs wait for each other's locks.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers (the API) never block on the writer
    "PRAGMA synchronous=NORMAL",  # with WAL: durable at checkpoints, never corrupt on a crash
    "PRAGMA foreign_keys=ON",
)


class DatabaseError(Exception):
    """The database URL is unusable or the database cannot be opened or written."""


class IndexedFile(NamedTuple):  # a tuple: the index of a large tree is read whole on every run
    size: int
    mtime_ns: int
    inode: int | None
    ctime_ns: int | None
    status: str
    mapping: int  # the mapping version it was read under (ingest/migrate.py)


# The columns the reader fills, per table, in the registry's order (model/registry.py). The Patient and Study
# orders are also the order of the values kept per file in SourceHeader.
PATIENT_FIELDS = registry.written("Patient")
STUDY_FIELDS = registry.written("Study")
SERIES_FIELDS = registry.written("Series")
SLICE_FIELDS = registry.written("SliceMetadata")
SOURCE_FIELDS = (
    "Path",
    "Size",
    "MtimeNs",
    "Inode",
    "CtimeNs",
    "Status",
    "SOPInstanceUID",
    "Reason",
    "Header",
    "ContentHash",
    "MappingVersion",
)
HEADER_FIELDS = ("Hash", "PatientID", "StudyInstanceUID", "Patient", "Study")

# Per table: the UID column and the column holding its digest (`uid_hash`), indexed, so that the API can find a
# row by the pseudonym a de-identified client sees (api/masking.py turns a pseudonym back into this digest).
UID_HASHES = {
    "Study": ("StudyInstanceUID", "StudyInstanceUIDHash"),
    "Series": ("SeriesInstanceUID", "SeriesInstanceUIDHash"),
    "SliceMetadata": ("SOPInstanceUID", "SOPInstanceUIDHash"),
}


def uid_hash(uid: str | None) -> str | None:
    """The first 128 bits of SHA-256 of the UID, as 32 hex digits (the same as api.masking.uid_hash)."""
    return None if uid is None else hashlib.sha256(uid.encode("utf-8")).hexdigest()[:32]


def _upsert(table: str, fields: Sequence[str], key: str) -> str:
    cols = ", ".join(f'"{f}"' for f in fields)
    params = ", ".join(f":{f}" for f in fields)
    sets = ", ".join(f'"{f}" = excluded."{f}"' for f in fields if f != key)
    return f'INSERT INTO "{table}" ({cols}) VALUES ({params}) ON CONFLICT ("{key}") DO UPDATE SET {sets}'


# Every row is derived in full by ingest/derive.py from the files that hold it, so an upsert replaces it;
# ON CONFLICT keeps a slice's SliceID. Study, Series and SliceMetadata rows carry their UID's digest (with_hash).
UPSERT_PATIENT = _upsert("Patient", PATIENT_FIELDS, "PatientID")
UPSERT_STUDY = _upsert("Study", (*STUDY_FIELDS, "StudyInstanceUIDHash"), "StudyInstanceUID")
UPSERT_SERIES = _upsert("Series", (*SERIES_FIELDS, "SeriesInstanceUIDHash"), "SeriesInstanceUID")
UPSERT_SLICE = _upsert("SliceMetadata", (*SLICE_FIELDS, "SOPInstanceUIDHash"), "SOPInstanceUID")
UPSERT_SOURCE = _upsert("SourceFile", SOURCE_FIELDS, "Path")
INSERT_HEADER = (
    'INSERT INTO "SourceHeader" ("Hash", "PatientID", "StudyInstanceUID", "Patient", "Study") '
    'VALUES (:Hash, :PatientID, :StudyInstanceUID, :Patient, :Study) ON CONFLICT ("Hash") DO NOTHING'
)
SET_SOURCE_STATUS = 'UPDATE "SourceFile" SET "Status" = :status, "Reason" = :reason WHERE "Path" = :path'
DELETE_SOURCE = 'DELETE FROM "SourceFile" WHERE "Path" = :path'
DELETE_SLICE = 'DELETE FROM "SliceMetadata" WHERE "SOPInstanceUID" = :key'
DELETE_SERIES_IF_EMPTY = (
    'DELETE FROM "Series" WHERE "SeriesInstanceUID" = :key AND NOT EXISTS '
    '(SELECT 1 FROM "SliceMetadata" s WHERE s."SeriesInstanceUID" = :key)'
)
DELETE_STUDY_IF_EMPTY = (
    'DELETE FROM "Study" WHERE "StudyInstanceUID" = :key AND NOT EXISTS '
    '(SELECT 1 FROM "Series" s WHERE s."StudyInstanceUID" = :key)'
)
DELETE_PATIENT_IF_EMPTY = (
    'DELETE FROM "Patient" WHERE "PatientID" = :key AND NOT EXISTS (SELECT 1 FROM "Study" s WHERE s."PatientID" = :key)'
)
DELETE_UNUSED_HEADERS = (
    'DELETE FROM "SourceHeader" WHERE NOT EXISTS '
    '(SELECT 1 FROM "SourceFile" f WHERE f."Header" = "SourceHeader"."Hash")'
)

SELECT_FILE_INDEX = 'SELECT "Path", "Size", "MtimeNs", "Inode", "CtimeNs", "Status", "MappingVersion" FROM "SourceFile"'
# Files holding an instance that were read under an older mapping than the current one (`dicom-ingest --upgrade`)
SELECT_STALE = (
    'SELECT "Path" FROM "SourceFile" WHERE "Status" IN (\'ingested\', \'duplicate\') AND "MappingVersion" < {mapping}'
)
SELECT_SOURCES = 'SELECT "Path", "Status", "SOPInstanceUID", "Header" FROM "SourceFile" WHERE "Path" IN ({keys})'
SELECT_HOLDERS = (
    'SELECT "SOPInstanceUID", "Path", "Status", "Reason", "Header", "ContentHash", "MappingVersion", '
    '"Size", "MtimeNs", "Inode", "CtimeNs" '
    'FROM "SourceFile" WHERE "Status" IN (\'ingested\', \'duplicate\') AND "SOPInstanceUID" IN ({keys})'
)
SELECT_SLICE_SERIES = (
    'SELECT "SOPInstanceUID", "SeriesInstanceUID" FROM "SliceMetadata" WHERE "SOPInstanceUID" IN ({keys})'
)
SELECT_SERIES_SLICES = (
    'SELECT "SeriesInstanceUID", "SOPInstanceUID", "SliceNumber" FROM "SliceMetadata" '
    'WHERE "SeriesInstanceUID" IN ({keys})'
)
SELECT_SERIES_ROWS = (
    'SELECT "SeriesInstanceUID", "StudyInstanceUID", "RepresentativeKey" FROM "Series" '
    'WHERE "SeriesInstanceUID" IN ({keys})'
)
SELECT_STUDY_PATIENTS = 'SELECT "StudyInstanceUID", "PatientID" FROM "Study" WHERE "StudyInstanceUID" IN ({keys})'
SELECT_HEADERS = 'SELECT "Hash", "PatientID", "StudyInstanceUID" FROM "SourceHeader" WHERE "Hash" IN ({keys})'
# The distinct sets of values the files of a study (patient) carry, each with the last path in byte order
# holding it: enough to merge them as a walk in path order would, without reading every file's row. Only files
# read under the current mapping count: an older one's values may be in another order, or fewer.
SELECT_STUDY_VARIANTS = (
    'SELECT h."StudyInstanceUID", h."Patient", h."Study", MAX(f."Path"{collate}) FROM "SourceHeader" h '
    'JOIN "SourceFile" f ON f."Header" = h."Hash" AND f."Status" = \'ingested\' AND f."MappingVersion" >= {mapping} '
    'WHERE h."StudyInstanceUID" IN ({keys}) GROUP BY h."Hash", h."StudyInstanceUID", h."Patient", h."Study"'
)
SELECT_PATIENT_VARIANTS = (
    'SELECT h."PatientID", h."Patient", h."Study", MAX(f."Path"{collate}) FROM "SourceHeader" h '
    'JOIN "SourceFile" f ON f."Header" = h."Hash" AND f."Status" = \'ingested\' AND f."MappingVersion" >= {mapping} '
    'WHERE h."PatientID" IN ({keys}) GROUP BY h."Hash", h."PatientID", h."Patient", h."Study"'
)
# Sort orders must be byte orders on both databases: PostgreSQL's default collation follows the locale.
COLLATE = {"sqlite": "", "postgresql": ' COLLATE "C"'}
# Writers to one PostgreSQL database take this advisory lock per transaction (and while creating the schema):
# concurrent runs then decide ownership one batch at a time, as SQLite's BEGIN IMMEDIATE makes them do.
PG_LOCK_KEY = 0x44494344  # "DICD"


class Target(NamedTuple):
    """Where a database URL points: the dialect and what its driver connects to."""

    dialect: str  # "sqlite" | "postgresql"
    address: str  # SQLite: the file name (with URI options); PostgreSQL: the URL


def parse_url(url: str) -> Target:
    """Check a database URL; relative SQLite paths stay relative to the working directory."""
    try:
        parts = urlsplit(url)
        scheme = parts.scheme.split("+")[0]
    except ValueError as exc:
        raise DatabaseError(f"bad database URL {url!r}: {exc}") from None
    if scheme == "sqlite":
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy and `databases` read them
        name = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not name:
            raise DatabaseError(f"bad database URL {url!r}: no file name (use sqlite:///path/to/file.db)")
        return Target("sqlite", name + (f"?{parts.query}" if parts.query else ""))
    if scheme in ("postgresql", "postgres"):
        return Target("postgresql", url)
    raise DatabaseError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://HOST/DB")


class _SQLite:
    """The standard library's sqlite3, in autocommit mode: transactions are Store.transaction()'s BEGIN/COMMIT."""

    def __init__(self, address: str) -> None:
        self._conn = sqlite3.connect(
            address, isolation_level=None, uri=address.startswith("file:"), timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")

    def tables(self) -> dict[str, set[str]]:
        names = [r[0] for r in self.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {n: {r[1] for r in self.fetch(f'PRAGMA table_info("{n}")')} for n in names}

    def prepare(self) -> None:
        for pragma in SQLITE_PRAGMAS:
            self._conn.execute(pragma)
        self._conn.create_function("dicom_uid_hash", 1, uid_hash, deterministic=True)

    @staticmethod
    def uid_hash_sql(expr: str) -> str:
        return f"dicom_uid_hash({expr})"

    @staticmethod
    def placeholders(count: int) -> str:
        return ", ".join("?" * count)

    def execute(self, sql: str) -> None:
        self._conn.execute(sql)

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return self._conn.execute(sql, params).fetchall()

    def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        self._conn.executemany(sql, rows)

    def close(self) -> None:
        self._conn.close()


def asyncpg_arguments(url: str) -> dict[str, Any]:
    """What `databases` gives asyncpg for the same URL (the API reads $DATABASE_URL too): host (or the `host`
    option, for a socket directory), port, user, password, database and the `ssl` option; the pool sizes mean
    nothing to one connection and, as there, other options are ignored."""
    parts = urlsplit(url)
    options = dict(parse_qsl(parts.query))
    arguments: dict[str, Any] = {
        "host": parts.hostname or options.get("host"),
        "port": parts.port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password else None,
        "database": unquote(parts.path[1:]) or None,
    }
    if "ssl" in options:
        ssl = options["ssl"].lower()
        arguments["ssl"] = {"true": True, "false": False}.get(ssl, ssl)
    return arguments


class _PostgreSQL:
    """asyncpg (the API's PostgreSQL driver too), driven from this synchronous writer by a private loop."""

    def __init__(self, url: str) -> None:
        import asyncio

        import asyncpg

        self._loop = asyncio.new_event_loop()
        try:
            self._conn = self._loop.run_until_complete(asyncpg.connect(**asyncpg_arguments(url)))
        except BaseException:
            self._loop.close()
            raise

    @staticmethod
    def placeholders(count: int) -> str:
        return ", ".join(f"${i + 1}" for i in range(count))

    def tables(self) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for table, column in self.fetch(
            "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
        ):
            found.setdefault(table, set()).add(column)
        return found

    def prepare(self) -> None:
        pass

    @staticmethod
    def uid_hash_sql(expr: str) -> str:
        return f"substr(encode(sha256(convert_to({expr}, 'UTF8')), 'hex'), 1, 32)"

    def execute(self, sql: str) -> None:
        self._loop.run_until_complete(self._conn.execute(sql))

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self._loop.run_until_complete(self._conn.fetch(sql, *params))]

    def executemany(self, sql: str, rows: list[dict[str, Any]]) -> None:
        positional, order = _to_positional(sql)
        args = [tuple(r[name] for name in order) for r in rows]
        self._loop.run_until_complete(self._conn.executemany(positional, args))

    def close(self) -> None:
        try:
            self._loop.run_until_complete(self._conn.close())
        finally:
            self._loop.close()


class Store:
    """One writer connection to the database."""

    def __init__(self, url: str) -> None:
        self.url = url
        target = parse_url(url)
        self.dialect = target.dialect
        self.collate = COLLATE[self.dialect]
        self._address = target.address
        self._db: _SQLite | _PostgreSQL | None = None

    def open(self) -> None:
        from dicom_db.ingest import migrate  # it builds on this module

        try:
            self._db = _SQLite(self._address) if self.dialect == "sqlite" else _PostgreSQL(self._address)
            locked = self.dialect == "postgresql"
            if locked:  # concurrent first runs (and upgrades) would race to create the same tables and columns
                self._db.execute(f"SELECT pg_advisory_lock({PG_LOCK_KEY})")
            try:
                catalog = migrate.read_catalog(self._db, self.dialect)
                migrate.check_ours(self.url, catalog.tables)
                self._db.prepare()
                done = migrate.upgrade(self._db, self.dialect, self.url, catalog)
            finally:
                if locked:
                    self._db.execute(f"SELECT pg_advisory_unlock({PG_LOCK_KEY})")
        except DatabaseError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise DatabaseError(f"cannot open database {self.url}: {_describe(exc)}") from exc
        if done:
            _log().info("upgraded %s: %s", self.url, "; ".join(done))

    def close(self) -> None:
        db, self._db = self._db, None
        if db is None:
            return
        try:
            db.close()
        except Exception:  # closing after a failure: the failure is what gets reported
            _log().debug("error while closing %s", self.url, exc_info=True)

    @property
    def db(self) -> _SQLite | _PostgreSQL:
        if self._db is None:
            raise DatabaseError(f"{self.url} is not open")
        return self._db

    # ------------------------------------------------------------------ reads
    def file_index(self) -> dict[str, IndexedFile]:
        return {r[0]: IndexedFile(*r[1:]) for r in self._fetch(SELECT_FILE_INDEX)}

    def sources(self, paths: Sequence[str]) -> list[tuple[str, str, str | None, str | None]]:
        """(path, status, SOPInstanceUID, header) of the files recorded under these paths."""
        return self._fetch_in(SELECT_SOURCES, paths)  # type: ignore[return-value]

    def holders(self, sops: Sequence[str]) -> list[tuple[Any, ...]]:
        """(SOPInstanceUID, path, status, reason, header, content hash, size, mtime, inode, ctime) of every file
        holding one of these instances."""
        return self._fetch_in(SELECT_HOLDERS, sops)  # type: ignore[return-value]

    def slice_series(self, sops: Sequence[str]) -> dict[str, str]:
        return dict(self._fetch_in(SELECT_SLICE_SERIES, sops))  # type: ignore[arg-type]

    def series_slices(self, series: Sequence[str]) -> list[tuple[str, str, int | None]]:
        return self._fetch_in(SELECT_SERIES_SLICES, series)  # type: ignore[return-value]

    def series_rows(self, series: Sequence[str]) -> dict[str, tuple[str, str]]:
        """SeriesInstanceUID -> (StudyInstanceUID, RepresentativeKey) as stored."""
        return {r[0]: (r[1], r[2]) for r in self._fetch_in(SELECT_SERIES_ROWS, series)}

    def study_patients(self, studies: Sequence[str]) -> dict[str, str]:
        return dict(self._fetch_in(SELECT_STUDY_PATIENTS, studies))  # type: ignore[arg-type]

    def headers(self, hashes: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Header hash -> (PatientID, StudyInstanceUID)."""
        return {r[0]: (r[1], r[2]) for r in self._fetch_in(SELECT_HEADERS, hashes)}

    def study_variants(self, studies: Sequence[str], mapping: int) -> list[tuple[str, str, str, str]]:
        """(StudyInstanceUID, patient JSON, study JSON, last path) per distinct header of the studies' owner files
        read under `mapping` or a later one."""
        return self._fetch_in(self._variants(SELECT_STUDY_VARIANTS, mapping), studies)  # type: ignore[return-value]

    def patient_variants(self, patients: Sequence[str], mapping: int) -> list[tuple[str, str, str, str]]:
        return self._fetch_in(self._variants(SELECT_PATIENT_VARIANTS, mapping), patients)  # type: ignore[return-value]

    def _variants(self, template: str, mapping: int) -> str:
        return template.replace("{collate}", self.collate).replace("{mapping}", str(int(mapping)))

    def stale_paths(self, mapping: int) -> list[str]:
        """Stored paths of the files holding an instance that were read under an older mapping."""
        return [r[0] for r in self._fetch(SELECT_STALE.replace("{mapping}", str(int(mapping))))]

    def _fetch_in(self, template: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """Run a `... IN ({keys})` query over `keys`, 500 bound parameters at a time."""
        keys = list(keys)
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            out.extend(self._fetch(template.replace("{keys}", self.db.placeholders(len(chunk))), chunk))
        return out

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.fetch(sql, params)
        except DatabaseError:
            raise
        except Exception as exc:  # a dropped connection, a locked or damaged file: exit 3, not a traceback
            raise DatabaseError(f"cannot read from {self.url}: {_describe(exc)}") from exc

    # ------------------------------------------------------------------ writes
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction: all of it lands, or none of it. Reads inside it see a state no other run changes."""
        db = self.db
        try:
            # SQLite: IMMEDIATE takes the write lock now (waiting for another run's), not halfway through.
            db.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                if self.dialect == "postgresql":
                    db.execute(f"SELECT pg_advisory_xact_lock({PG_LOCK_KEY})")
                yield
                db.execute("COMMIT")
            except BaseException:  # a failed COMMIT too: nothing of the batch stays pending on the connection
                self._rollback()
                raise
        except DatabaseError:
            raise
        except Exception as exc:
            raise DatabaseError(f"cannot write to {self.url}: {_describe(exc)}") from exc

    def write(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        """One of the statements above over many rows, inside `transaction()`."""
        rows = list(rows)
        if rows:
            self.db.executemany(sql, rows)

    def execute(self, sql: str) -> None:
        self.db.execute(sql)

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except Exception:  # SQLite may have rolled back already (disk full): the write error is what counts
            _log().debug("rollback after a failed write", exc_info=True)


def with_hash(rows: Iterable[dict[str, Any]], table: str) -> Iterator[dict[str, Any]]:
    uid, digest = UID_HASHES[table]
    for row in rows:
        yield {**row, digest: uid_hash(row[uid])}


def schema_statements(dialect: str, path: Path = SCHEMA_PATH) -> list[str]:
    """schema.sql (or another version of it) split into statements, adapted to the dialect."""
    text = path.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    if dialect == "postgresql":
        text = text.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        text = text.replace(" REAL", " DOUBLE PRECISION")
    return [s.strip() for s in text.split(";") if s.strip()]


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


@functools.cache  # a handful of statements, converted once each instead of once per batch
def _to_positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters to asyncpg's `$n`, reusing the number of a repeated name."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(order)


def _log() -> logging.Logger:
    import logging  # only on these error paths: its import is a tenth of a re-run over 10,000 unchanged files

    return logging.getLogger(__name__)


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
