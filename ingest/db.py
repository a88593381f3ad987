"""The ingest side of the database: schema creation, the file index and batched upserts.

All SQL the ingest runs lives here. The one writer connection talks to the driver itself, synchronously:
the standard library's sqlite3 for SQLite, asyncpg (imported only then) on a private event loop for PostgreSQL.
Bulk writes are the driver's `executemany`, one round trip per statement and batch; reads come back as plain
tuples. The API reads through `databases` and aiosqlite; the ingest does not: it is one writer that waits for
every statement anyway, and importing SQLAlchemy and asyncio took longer than a whole re-run over an
unchanged tree of 10,000 files.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

if TYPE_CHECKING:
    import logging

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers (the API) never block on the writer
    "PRAGMA synchronous=NORMAL",  # with WAL: durable at checkpoints, never corrupt on a crash
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)


class DatabaseError(Exception):
    """The database URL is unusable or the database cannot be opened or written."""


class IndexedFile(NamedTuple):  # a tuple: the index of a large tree is read whole on every run
    size: int
    mtime_ns: int
    status: str
    sop_uid: str | None


PATIENT_FIELDS = (
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientAge",
    "PatientBirthDate",
    "PatientIdentityRemoved",
    "DeIdentificationMethod",
    "LastMenstrualDate",
    "PatientIDGenerated",
)
STUDY_FIELDS = (
    "StudyInstanceUID",
    "PatientID",
    "StudyDescription",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "SeriesDate",
    "ReferringPhysicianName",
)
SERIES_FIELDS = (
    "SeriesInstanceUID",
    "StudyInstanceUID",
    "SeriesDescription",
    "Modality",
    "SliceThickness",
    "PixelSpacing",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "Rows",
    "Columns",
    "ImageType",
    "AcquisitionNumber",
    "InstanceNumber",
    "PatientPosition",
    "ExposureTime",
    "KVP",
    "TableHeight",
    "SliceLocation",
    "BodyPartExamined",
    "ScanOptions",
    "ReconstructionDiameter",
    "DistanceSourceToPatient",
    "GantryDetectorTilt",
    "RotationDirection",
    "ConvolutionKernel",
    "RepresentativeKey",
    "SliceThicknessValue",
)
SLICE_FIELDS = (
    "SOPInstanceUID",
    "SeriesInstanceUID",
    "SOPClassUID",
    "AcquisitionDate",
    "AcquisitionTime",
    "ContrastBolusAgent",
    "AccessionNumber",
    "SliceNumber",
    "SliceLocation",
    "SliceThickness",
    "PixelPaddingValue",
    "RescaleIntercept",
    "RescaleSlope",
    "LongitudinalTemporalInfo",
    "ImagePositionPatient",
)
SOURCE_FIELDS = ("Path", "Size", "MtimeNs", "Status", "SOPInstanceUID", "Reason")

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


def _upsert(table: str, fields: Sequence[str], key: str, update: str, where: str = "") -> str:
    cols = ", ".join(f'"{f}"' for f in fields)
    params = ", ".join(f":{f}" for f in fields)
    sets = ", ".join(update.format(f=f, table=table) for f in fields if f != key)
    return f'INSERT INTO "{table}" ({cols}) VALUES ({params}) ON CONFLICT ("{key}") DO UPDATE SET {sets}{where}'


# Patient and study attributes repeat in every file: a value a later file lacks does not erase one already
# stored, so the order in which files of a study arrive does not matter for what is kept.
UPSERT_PATIENT = _upsert("Patient", PATIENT_FIELDS, "PatientID", '"{f}" = COALESCE(excluded."{f}", "{table}"."{f}")')
UPSERT_STUDY = _upsert(
    "Study",
    (*STUDY_FIELDS, "StudyInstanceUIDHash"),
    "StudyInstanceUID",
    '"{f}" = COALESCE(excluded."{f}", "{table}"."{f}")',
)
# A series row holds the values of its representative instance: only a candidate that sorts at or before the
# current one replaces it (at: the representative file itself changed).
UPSERT_SERIES = _upsert(
    "Series",
    (*SERIES_FIELDS, "SeriesInstanceUIDHash"),
    "SeriesInstanceUID",
    '"{f}" = excluded."{f}"',
    ' WHERE excluded."RepresentativeKey" <= "Series"."RepresentativeKey" OR "Series"."RepresentativeKey" IS NULL',
)
UPSERT_SLICE = _upsert(
    "SliceMetadata", (*SLICE_FIELDS, "SOPInstanceUIDHash"), "SOPInstanceUID", '"{f}" = excluded."{f}"'
)
UPSERT_SOURCE = _upsert("SourceFile", SOURCE_FIELDS, "Path", '"{f}" = excluded."{f}"')

SELECT_FILE_INDEX = 'SELECT "Path", "Size", "MtimeNs", "Status", "SOPInstanceUID" FROM "SourceFile"'
SELECT_SOP_OWNERS = (
    'SELECT "SOPInstanceUID", "Path" FROM "SourceFile" WHERE "Status" = \'ingested\' AND "SOPInstanceUID" IN ({keys})'
)
SELECT_DUPLICATE_HOLDERS = (
    'SELECT "SOPInstanceUID", "Path" FROM "SourceFile" WHERE "Status" = \'duplicate\' AND "SOPInstanceUID" IN ({keys}) '
    'ORDER BY "Path"'
)
PROMOTE_DUPLICATE = 'UPDATE "SourceFile" SET "Status" = \'ingested\', "Reason" = NULL WHERE "Path" = :path'
DELETE_SOURCE = 'DELETE FROM "SourceFile" WHERE "Path" = :path'
DELETE_ORPHAN_SLICE = (
    'DELETE FROM "SliceMetadata" WHERE "SOPInstanceUID" = :sop AND NOT EXISTS '
    '(SELECT 1 FROM "SourceFile" WHERE "SOPInstanceUID" = :sop AND "Status" = \'ingested\')'
)
DELETE_EMPTY_SERIES = (
    'DELETE FROM "Series" WHERE NOT EXISTS '
    '(SELECT 1 FROM "SliceMetadata" s WHERE s."SeriesInstanceUID" = "Series"."SeriesInstanceUID")'
)
DELETE_EMPTY_STUDIES = (
    'DELETE FROM "Study" WHERE NOT EXISTS '
    '(SELECT 1 FROM "Series" s WHERE s."StudyInstanceUID" = "Study"."StudyInstanceUID")'
)
DELETE_EMPTY_PATIENTS = (
    'DELETE FROM "Patient" WHERE NOT EXISTS (SELECT 1 FROM "Study" s WHERE s."PatientID" = "Patient"."PatientID")'
)


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
    """The standard library's sqlite3, in autocommit mode: transactions are write_batch's BEGIN/COMMIT."""

    def __init__(self, address: str) -> None:
        self._conn = sqlite3.connect(address, isolation_level=None, uri=address.startswith("file:"))
        for pragma in SQLITE_PRAGMAS:
            self._conn.execute(pragma)
        self._conn.create_function("dicom_uid_hash", 1, uid_hash, deterministic=True)

    @staticmethod
    def uid_hash_sql(expr: str) -> str:
        return f"dicom_uid_hash({expr})"

    def columns(self, table: str) -> set[str]:
        return {row[1] for row in self._conn.execute("SELECT * FROM pragma_table_info(?)", (table,))}

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

    @staticmethod
    def uid_hash_sql(expr: str) -> str:
        return f"substr(encode(sha256(convert_to({expr}, 'UTF8')), 'hex'), 1, 32)"

    def columns(self, table: str) -> set[str]:
        sql = (
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = $1"
        )
        return {row[0] for row in self.fetch(sql, (table,))}

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
        self._address = target.address
        self._db: _SQLite | _PostgreSQL | None = None

    def open(self) -> None:
        try:
            self._db = _SQLite(self._address) if self.dialect == "sqlite" else _PostgreSQL(self._address)
            statements = schema_statements(self.dialect)
            for statement in statements:
                if not statement.upper().startswith("CREATE INDEX"):
                    self._db.execute(statement)
            self._add_uid_hashes()  # before the indexes: some index the columns it may add
            for statement in statements:
                if statement.upper().startswith("CREATE INDEX"):
                    self._db.execute(statement)
        except Exception as exc:
            self.close()
            raise DatabaseError(f"cannot open database {self.url}: {_describe(exc)}") from exc

    def _add_uid_hashes(self) -> None:
        """A database made before the UID digest columns existed gets them, filled, in one transaction."""
        db = self.db
        missing = []
        for table, (uid, digest) in UID_HASHES.items():
            # Not `SELECT "column"`: SQLite reads an unknown double-quoted name as a string.
            if digest not in db.columns(table):
                missing.append((table, uid, digest))
        if not missing:
            return
        db.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
        try:
            for table, uid, digest in missing:
                db.execute(f'ALTER TABLE "{table}" ADD COLUMN "{digest}" TEXT')
                column = f'"{uid}"'
                db.execute(f'UPDATE "{table}" SET "{digest}" = {db.uid_hash_sql(column)}')
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        _log().info("added the UID digest columns to %s", ", ".join(t for t, _, _ in missing))

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

    def file_index(self) -> dict[str, IndexedFile]:
        return {r[0]: IndexedFile(r[1], r[2], r[3], r[4]) for r in self._fetch(SELECT_FILE_INDEX)}

    def sop_owners(self, sops: Sequence[str]) -> dict[str, str]:
        """SOPInstanceUID -> path of the file already ingested for it, for the given UIDs."""
        return {sop: path for sop, path in self._fetch_in(SELECT_SOP_OWNERS, sops)}

    def duplicate_holders(self, sops: Sequence[str]) -> dict[str, list[str]]:
        """SOPInstanceUID -> paths of the files recorded as duplicates of it, sorted."""
        holders: dict[str, list[str]] = {}
        for sop, path in self._fetch_in(SELECT_DUPLICATE_HOLDERS, sops):
            holders.setdefault(sop, []).append(path)
        return holders

    def _fetch_in(self, template: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """Run a `... IN ({keys})` query over `keys`, 500 bound parameters at a time."""
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), 500):
            chunk = keys[start : start + 500]
            out.extend(self._fetch(template.format(keys=self.db.placeholders(len(chunk))), chunk))
        return out

    def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.db.fetch(sql, params)
        except DatabaseError:
            raise
        except Exception as exc:  # a dropped connection, a locked or damaged file: exit 3, not a traceback
            raise DatabaseError(f"cannot read from {self.url}: {_describe(exc)}") from exc

    def write_batch(
        self,
        patients: Iterable[dict[str, Any]],
        studies: Iterable[dict[str, Any]],
        series: Iterable[dict[str, Any]],
        slices: Iterable[dict[str, Any]],
        sources: Iterable[dict[str, Any]],
        released_sops: Sequence[str],
        vanished_paths: Sequence[str] = (),
        promoted_paths: Sequence[str] = (),
    ) -> None:
        """Write one batch in one transaction: all of it lands, or none of it."""
        db = self.db
        try:
            # SQLite: IMMEDIATE takes the write lock now, not halfway through the batch.
            db.execute("BEGIN IMMEDIATE" if self.dialect == "sqlite" else "BEGIN")
            try:
                self._bulk(UPSERT_PATIENT, patients)
                self._bulk(UPSERT_STUDY, _with_hash(studies, "Study"))
                self._bulk(UPSERT_SERIES, _with_hash(series, "Series"))
                self._bulk(UPSERT_SLICE, _with_hash(slices, "SliceMetadata"))
                self._bulk(DELETE_SOURCE, ({"path": p} for p in vanished_paths))
                self._bulk(UPSERT_SOURCE, sources)
                if released_sops:
                    # A changed file now holds another instance (or none): a duplicate file of that instance
                    # takes over if there is one, else the instance goes, then any series, study or patient
                    # left empty.
                    self._bulk(PROMOTE_DUPLICATE, ({"path": p} for p in promoted_paths))
                    self._bulk(DELETE_ORPHAN_SLICE, ({"sop": s} for s in released_sops))
                    for statement in (DELETE_EMPTY_SERIES, DELETE_EMPTY_STUDIES, DELETE_EMPTY_PATIENTS):
                        db.execute(statement)
                db.execute("COMMIT")
            except BaseException:  # a failed COMMIT too: nothing of the batch stays pending on the connection
                self._rollback()
                raise
        except Exception as exc:
            raise DatabaseError(f"cannot write to {self.url}: {_describe(exc)}") from exc

    def _rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except Exception:  # SQLite may have rolled back already (disk full): the write error is what counts
            _log().debug("rollback after a failed write", exc_info=True)

    def _bulk(self, sql: str, rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if rows:
            self.db.executemany(sql, rows)


def _with_hash(rows: Iterable[dict[str, Any]], table: str) -> Iterator[dict[str, Any]]:
    uid, digest = UID_HASHES[table]
    for row in rows:
        yield {**row, digest: uid_hash(row[uid])}


def schema_statements(dialect: str) -> list[str]:
    """schema.sql split into statements, adapted to the dialect."""
    text = SCHEMA_PATH.read_text()
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
