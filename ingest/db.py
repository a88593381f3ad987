"""The ingest side of the database: schema creation, the file index and batched upserts.

All SQL the ingest runs lives here. Connections go through `databases` (SQLite via aiosqlite, PostgreSQL via
asyncpg); bulk writes use the driver's own `executemany` on the same connection, one round trip per
statement and batch instead of one per row.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from databases import Database, DatabaseURL

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema.sql"

SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",  # readers (the API) never block on the writer
    "PRAGMA synchronous=NORMAL",  # with WAL: durable at checkpoints, never corrupt on a crash
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=30000",
)


class DatabaseError(Exception):
    """The database URL is unusable or the database cannot be opened or written."""


@dataclass(frozen=True, slots=True)
class IndexedFile:
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


def _upsert(table: str, fields: Sequence[str], key: str, update: str, where: str = "") -> str:
    cols = ", ".join(f'"{f}"' for f in fields)
    params = ", ".join(f":{f}" for f in fields)
    sets = ", ".join(update.format(f=f, table=table) for f in fields if f != key)
    return f'INSERT INTO "{table}" ({cols}) VALUES ({params}) ON CONFLICT ("{key}") DO UPDATE SET {sets}{where}'


# Patient and study attributes repeat in every file: a value a later file lacks does not erase one already
# stored, so the order in which files of a study arrive does not matter for what is kept.
UPSERT_PATIENT = _upsert("Patient", PATIENT_FIELDS, "PatientID", '"{f}" = COALESCE(excluded."{f}", "{table}"."{f}")')
UPSERT_STUDY = _upsert("Study", STUDY_FIELDS, "StudyInstanceUID", '"{f}" = COALESCE(excluded."{f}", "{table}"."{f}")')
# A series row holds the values of its representative instance: only a candidate that sorts at or before the
# current one replaces it (at: the representative file itself changed).
UPSERT_SERIES = _upsert(
    "Series",
    SERIES_FIELDS,
    "SeriesInstanceUID",
    '"{f}" = excluded."{f}"',
    ' WHERE excluded."RepresentativeKey" <= "Series"."RepresentativeKey" OR "Series"."RepresentativeKey" IS NULL',
)
UPSERT_SLICE = _upsert("SliceMetadata", SLICE_FIELDS, "SOPInstanceUID", '"{f}" = excluded."{f}"')
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


def normalise_url(url: str) -> str:
    """Check the scheme; relative SQLite paths stay relative to the working directory."""
    try:
        parsed = DatabaseURL(url)
        scheme = parsed.scheme
    except Exception as exc:
        raise DatabaseError(f"bad database URL {url!r}: {exc}") from None
    if scheme.startswith("sqlite"):
        if not parsed.database:
            raise DatabaseError(f"bad database URL {url!r}: no file name (use sqlite:///path/to/file.db)")
        return url
    if scheme.split("+")[0] in ("postgresql", "postgres"):
        return url
    raise DatabaseError(f"unsupported database URL {url!r}: use sqlite:///FILE or postgresql://HOST/DB")


class Store:
    """One writer connection to the database."""

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.dialect = "sqlite" if DatabaseURL(self.url).scheme.startswith("sqlite") else "postgresql"
        self._database = Database(self.url)
        self._conn: Any = None
        self._raw: Any = None

    async def open(self) -> None:
        try:
            await self._database.connect()
            self._conn = self._database.connection()
            await self._conn.__aenter__()
            self._raw = self._conn.raw_connection
            if self.dialect == "sqlite":
                for pragma in SQLITE_PRAGMAS:
                    await self._conn.execute(pragma)
            await self._create_schema()
        except Exception as exc:
            await self.close()
            # After a failed connect aiosqlite queues its thread's stop without awaiting it; give the thread a
            # moment to finish, or it reports "Event loop is closed" on stderr once asyncio.run() returns.
            await asyncio.sleep(0.1)
            if isinstance(exc, DatabaseError):
                raise
            raise DatabaseError(f"cannot open database {self.url}: {_describe(exc)}") from exc

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        raw, self._raw = self._raw, None
        steps = [conn.__aexit__(None, None, None)] if conn is not None else []
        if raw is not None and self.dialect == "sqlite":
            # After a failed transaction (disk full) `databases` may keep the connection counted as in use and
            # never release it; closing aiosqlite's connection stops its thread, which would block exit.
            steps.append(raw.close())
        steps.append(self._database.disconnect())
        for step in steps:
            try:
                await step
            except Exception:  # closing after a failure: the failure is what gets reported
                logging.getLogger(__name__).debug("error while closing %s", self.url, exc_info=True)

    async def _create_schema(self) -> None:
        for statement in schema_statements(self.dialect):
            await self._conn.execute(statement)

    async def file_index(self) -> dict[str, IndexedFile]:
        rows = await self._conn.fetch_all(SELECT_FILE_INDEX)
        return {r[0]: IndexedFile(r[1], r[2], r[3], r[4]) for r in rows}

    async def sop_owners(self, sops: Sequence[str]) -> dict[str, str]:
        """SOPInstanceUID -> path of the file already ingested for it, for the given UIDs."""
        return {sop: path for sop, path in await self._fetch_in(SELECT_SOP_OWNERS, sops)}

    async def duplicate_holders(self, sops: Sequence[str]) -> dict[str, list[str]]:
        """SOPInstanceUID -> paths of the files recorded as duplicates of it, sorted."""
        holders: dict[str, list[str]] = {}
        for sop, path in await self._fetch_in(SELECT_DUPLICATE_HOLDERS, sops):
            holders.setdefault(sop, []).append(path)
        return holders

    async def _fetch_in(self, template: str, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """Run a `... IN ({keys})` query over `keys`, 500 bound parameters at a time."""
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), 500):
            params = {f"k{i}": key for i, key in enumerate(keys[start : start + 500])}
            sql = template.format(keys=", ".join(f":{k}" for k in params))
            out.extend(tuple(row.values()) for row in await self._conn.fetch_all(sql, params))
        return out

    async def write_batch(
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
        try:
            async with self._conn.transaction():
                await self._bulk(UPSERT_PATIENT, PATIENT_FIELDS, patients)
                await self._bulk(UPSERT_STUDY, STUDY_FIELDS, studies)
                await self._bulk(UPSERT_SERIES, SERIES_FIELDS, series)
                await self._bulk(UPSERT_SLICE, SLICE_FIELDS, slices)
                await self._bulk(DELETE_SOURCE, ("path",), ({"path": p} for p in vanished_paths))
                await self._bulk(UPSERT_SOURCE, SOURCE_FIELDS, sources)
                if released_sops:
                    # A changed file now holds another instance (or none): a duplicate file of that instance
                    # takes over if there is one, else the instance goes, then any series, study or patient
                    # left empty.
                    await self._bulk(PROMOTE_DUPLICATE, ("path",), ({"path": p} for p in promoted_paths))
                    await self._bulk(DELETE_ORPHAN_SLICE, ("sop",), ({"sop": s} for s in released_sops))
                    for statement in (DELETE_EMPTY_SERIES, DELETE_EMPTY_STUDIES, DELETE_EMPTY_PATIENTS):
                        await self._conn.execute(statement)
        except Exception as exc:
            raise DatabaseError(f"cannot write to {self.url}: {_describe(exc)}") from exc

    async def _bulk(self, sql: str, fields: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
        rows = list(rows)
        if not rows:
            return
        if self.dialect == "sqlite":
            await self._raw.executemany(sql, rows)
        else:
            positional, order = _to_positional(sql)
            await self._raw.executemany(positional, [tuple(r[name] for name in order) for r in rows])


def schema_statements(dialect: str) -> list[str]:
    """schema.sql split into statements, adapted to the dialect."""
    text = SCHEMA_PATH.read_text()
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))
    if dialect == "postgresql":
        text = text.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
        text = text.replace(" REAL", " DOUBLE PRECISION")
    return [s.strip() for s in text.split(";") if s.strip()]


_NAMED = re.compile(r"(?<![:\w]):(\w+)")


def _to_positional(sql: str) -> tuple[str, list[str]]:
    """`:name` parameters to asyncpg's `$n`, reusing the number of a repeated name."""
    order: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in order:
            order.append(name)
        return f"${order.index(name) + 1}"

    return _NAMED.sub(number, sql), order


def _describe(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
