"""Build SQLite databases of a chosen size for the API benchmark from one database filled by `dicom-ingest`.

Usage (from the repository root, with the project's venv):

    .venv/bin/dicom-ingest corpus/100k --db sqlite:///$TMP/bench100k.db --quiet
    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench10k.db --slices 10000
    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench1m.db --slices 1000000

Generating and ingesting a million DICOM files is too heavy for a benchmark, so bigger (and smaller) databases
are made with SQL from an ingested one, never by hand-writing rows:

* smaller than the source: whole patients of the source, in PatientID order, until `--slices` slices are
  reached (each patient comes with all of its studies, series and slices, so trees stay complete);
* larger than the source: the source itself (copy 0, same UIDs), then copies 1, 2, ... of every Patient, Study,
  Series and SliceMetadata row, where every identifier (PatientID, StudyInstanceUID, SeriesInstanceUID,
  SOPInstanceUID, AccessionNumber) gets the suffix ".<copy>" and every other value is kept, until `--slices` is
  reached (whole copies: 1,000,000 from a 100,000-slice source is ten copies). Value distributions are those of
  the source, so a filter on values (a modality, a date range) matches `copies` times as many rows, while a
  filter that names one series still matches the same rows.

The tables and indexes come from the project's schema.sql (`ingest.db.schema_statements`), as `dicom-ingest`
creates them; the indexes are built after the rows are copied (faster than maintaining them row by row, and
the result is a little more compact than an ingest's). SliceIDs are assigned anew by AUTOINCREMENT in source
order. The SourceFile table (the ingest's file records; the API reads it only for thumbnails and file
downloads, which then answer 404 or null) is left empty. The database ends in WAL mode, as an ingest leaves
it, and with no ANALYZE statistics, as an ingest leaves it.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import time
from pathlib import Path

from dicom_db.ingest.db import (
    PATIENT_FIELDS,
    SERIES_FIELDS,
    SLICE_FIELDS,
    STUDY_FIELDS,
    UID_HASHES,
    schema_statements,
    uid_hash,
)
from dicom_db.ingest.migrate import MAPPING_VERSION, SCHEMA_VERSION

# Identifier columns that get the copy suffix, per table.
RENAMED = {
    "Patient": {"PatientID"},
    "Study": {"StudyInstanceUID", "PatientID"},
    "Series": {"SeriesInstanceUID", "StudyInstanceUID"},
    "SliceMetadata": {"SOPInstanceUID", "SeriesInstanceUID", "AccessionNumber"},
}
FIELDS = {"Patient": PATIENT_FIELDS, "Study": STUDY_FIELDS, "Series": SERIES_FIELDS, "SliceMetadata": SLICE_FIELDS}


def q(name: str) -> str:
    return '"' + name + '"'


def copy_sql(table: str, where: str, suffix: str | None) -> str:
    """INSERT ... SELECT of `table` from the attached source, identifiers suffixed when `suffix` is given."""
    fields = FIELDS[table]
    exprs = [
        f"CASE WHEN src.{q(f)} IS NULL THEN NULL ELSE src.{q(f)} || '{suffix}' END"
        if suffix is not None and f in RENAMED[table]
        else f"src.{q(f)}"
        for f in fields
    ]
    if table in UID_HASHES:  # the digest of the (suffixed) UID, as the ingest writes it
        uid, digest = UID_HASHES[table]
        fields = (*fields, digest)
        exprs.append(f"dicom_uid_hash({exprs[fields.index(uid)]})")
    order = ' ORDER BY src."SliceID"' if table == "SliceMetadata" else ""
    return (
        f"INSERT INTO main.{q(table)} ({', '.join(q(f) for f in fields)}) "
        f"SELECT {', '.join(exprs)} FROM source.{q(table)} src WHERE {where}{order}"
    )


# Rows of the chosen patients (subset mode), by table.
SUBSET_WHERE = {
    "Patient": 'src."PatientID" IN (SELECT "PatientID" FROM temp.chosen)',
    "Study": 'src."PatientID" IN (SELECT "PatientID" FROM temp.chosen)',
    "Series": 'src."StudyInstanceUID" IN (SELECT "StudyInstanceUID" FROM source."Study" '
    'WHERE "PatientID" IN (SELECT "PatientID" FROM temp.chosen))',
    "SliceMetadata": 'src."SeriesInstanceUID" IN (SELECT s."SeriesInstanceUID" FROM source."Series" s '
    'JOIN source."Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" '
    'WHERE t."PatientID" IN (SELECT "PatientID" FROM temp.chosen))',
}


def build(source: Path, out: Path, slices: int) -> dict[str, int]:
    if out.exists():
        raise SystemExit(f"{out} exists: remove it first")
    db = sqlite3.connect(f"file:{out}", uri=True, isolation_level=None)
    db.create_function("dicom_uid_hash", 1, uid_hash, deterministic=True)
    try:
        statements = schema_statements("sqlite")
        tables = [s for s in statements if not s.upper().startswith("CREATE INDEX")]
        indexes = [s for s in statements if s.upper().startswith("CREATE INDEX")]
        for statement in tables:
            db.execute(statement)
        db.execute("ATTACH DATABASE ? AS source", (f"file:{source}?mode=ro",))
        total = db.execute('SELECT COUNT(*) FROM source."SliceMetadata"').fetchone()[0]
        db.execute("BEGIN")
        if slices <= total:
            # Whole patients in PatientID order until `slices` slices.
            db.execute('CREATE TEMP TABLE chosen ("PatientID" TEXT PRIMARY KEY)')
            per_patient = db.execute(
                'SELECT t."PatientID", COUNT(*) FROM source."SliceMetadata" m '
                'JOIN source."Series" s ON s."SeriesInstanceUID" = m."SeriesInstanceUID" '
                'JOIN source."Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" '
                'GROUP BY t."PatientID" ORDER BY t."PatientID"'
            ).fetchall()
            taken = 0
            for patient, count in per_patient:
                if taken >= slices:
                    break
                db.execute("INSERT INTO temp.chosen VALUES (?)", (patient,))
                taken += count
            for table in ("Patient", "Study", "Series", "SliceMetadata"):
                db.execute(copy_sql(table, SUBSET_WHERE[table], None))
        else:
            copies = -(-slices // total)
            for copy in range(copies):
                suffix = None if copy == 0 else f".{copy}"
                for table in ("Patient", "Study", "Series", "SliceMetadata"):
                    db.execute(copy_sql(table, "1 = 1", suffix))
        db.execute("COMMIT")
        db.execute("DETACH DATABASE source")
        for statement in indexes:
            db.execute(statement)
        # The version dicom-ingest records (the API refuses a database of another schema version).
        for key, value in (("schema", SCHEMA_VERSION), ("mapping", MAPPING_VERSION)):
            db.execute('INSERT INTO "SchemaInfo" ("Key", "Value") VALUES (?, ?)', (key, str(value)))
        db.execute("PRAGMA journal_mode=WAL")
        counts = {
            table: db.execute(f"SELECT COUNT(*) FROM {q(table)}").fetchone()[0]
            for table in ("Patient", "Study", "Series", "SliceMetadata")
        }
    finally:
        db.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a SQLite database filled by dicom-ingest")
    parser.add_argument("out", type=Path, help="the database to create (must not exist)")
    parser.add_argument("--slices", type=int, required=True, help="slices wanted (whole patients or whole copies)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    counts = build(args.source.resolve(), args.out, args.slices)
    size = args.out.stat().st_size / 1e6
    print(
        f"{args.out}: {counts['Patient']} patients, {counts['Study']} studies, {counts['Series']} series, "
        f"{counts['SliceMetadata']} slices, {size:.0f} MB in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
