"""Upgrades in place: a database made by the previous release (tests/data/schema_v1.sql, the schema of the release
before versions were recorded) is upgraded by the current dicom-ingest with every row kept, and the files read
under an older mapping, only those, are read again, until the rows are what a fresh ingest of the same files gives.

The comparisons are by column name, never by position: a column an upgrade adds comes last in its table."""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from api_helpers import api_command, free_port
from conftest import DICOMDIR_TESTS, fresh_postgres_database, ingest_command, rows, run_ingest
from dicom_factory import write_series
from test_ingest import summary

from dicom_db.ingest import migrate
from dicom_db.ingest.db import Store, schema_statements
from dicom_db.ingest.migrate import MAPPING_VERSION, SCHEMA_VERSION, declared
from dicom_db.model import registry

V1_SCHEMA = Path(__file__).parent / "data" / "schema_v1.sql"
PREVIOUS_RELEASE = "4129213"  # the last commit before versions were recorded; its schema.sql is V1_SCHEMA
KEYS = {
    "Patient": "PatientID",
    "Study": "StudyInstanceUID",
    "Series": "SeriesInstanceUID",
    "SliceMetadata": "SOPInstanceUID",
    "SourceFile": "Path",
    "SourceHeader": "Hash",
}
# What schema.sql declared at each version (tables, columns with type, NOT NULL, default and key, indexes):
# a change to schema.sql fails test_each_schema_version_is_recorded until SCHEMA_VERSION is raised and its
# digest added here.
# Version 2 is this release's schema (SchemaInfo, SourceFile.MappingVersion, the registry's new Series and
# SliceMetadata columns); the previous release never had a version number, so all of it is one step.
SCHEMA_DIGESTS = {
    1: "bd09332ef8ab92f9",
    2: "751513061ff41438",
}


def _catalog_digest(path: Path) -> str:
    found = declared(path)
    text = repr((sorted(found.tables.items()), sorted(found.indexes)))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_each_schema_version_is_recorded() -> None:
    assert _catalog_digest(V1_SCHEMA) == SCHEMA_DIGESTS[1]
    assert _catalog_digest(migrate.SCHEMA_PATH) == SCHEMA_DIGESTS[SCHEMA_VERSION], (
        "schema.sql changed: raise ingest/migrate.py SCHEMA_VERSION (and MAPPING_VERSION when the reader fills "
        "a new column) and record the new digest in SCHEMA_DIGESTS"
    )


# ------------------------------------------------------------------------------------------------ helpers
def _tree(root: Path) -> Path:
    """pydicom's DICOMDIR tree (with files that are not DICOM), a written series and a duplicate of one of its
    files; left alone for a moment, so that no file is recorded as changed too recently to be trusted."""
    tree = root / "tree"
    shutil.copytree(DICOMDIR_TESTS, tree)
    paths = write_series(tree / "written", count=4)
    shutil.copy(paths[1], tree / "written" / "zz-copy.dcm")
    time.sleep(0.2)
    return tree


def _columns(schema: Path = migrate.SCHEMA_PATH) -> dict[str, list[str]]:
    """Per table, its columns in `schema`; but SourceFile's MappingVersion, which a file that is not DICOM keeps
    from the run that found it so (`_all_current` checks it for the others)."""
    return {
        table: sorted(c.name for c in columns if (table, c.name) != ("SourceFile", "MappingVersion"))
        for table, columns in declared(schema).tables.items()
    }


def _all_current(db: Path) -> bool:
    found = rows(db, 'SELECT DISTINCT "MappingVersion" FROM "SourceFile" WHERE "Status" <> \'not_dicom\'')
    return found == [(MAPPING_VERSION,)]


def _sqlite_dump(db: Path, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    out = {}
    for table, names in columns.items():
        if table in KEYS:
            selected = ", ".join(f'"{n}"' for n in names)
            out[table] = rows(db, f'SELECT {selected} FROM "{table}" ORDER BY "{KEYS[table]}"')
    return out


def _reread(stdout: str) -> int:
    counts = summary(stdout)
    return counts["ingested"] + counts["duplicates"]


def _holding(db: Path) -> int:
    return rows(db, "SELECT COUNT(*) FROM \"SourceFile\" WHERE \"Status\" IN ('ingested', 'duplicate')")[0][0]


def _previous_release_sqlite(fresh: Path, old: Path) -> None:
    """The database the previous release makes of the same files: its schema, and the columns it has of every
    row of a fresh ingest (SliceIDs included: both number slices in path order)."""
    conn = sqlite3.connect(old, isolation_level=None)
    try:
        conn.executescript(V1_SCHEMA.read_text())
        conn.execute("PRAGMA journal_mode=WAL")  # as dicom-ingest leaves it
        conn.execute("ATTACH DATABASE ? AS fresh", (str(fresh),))
        for table, names in _columns(V1_SCHEMA).items():
            selected = ", ".join(f'"{n}"' for n in names)
            conn.execute(f'INSERT INTO main."{table}" ({selected}) SELECT {selected} FROM fresh."{table}"')
    finally:
        conn.close()


def _previous_release_ingest(tree: Path, url: str, tmp_path: Path) -> None:
    """Ingest with the previous release's own code (from this checkout's history; skips without it)."""
    root = Path(__file__).resolve().parents[1]
    code = tmp_path / "previous-release"
    try:
        archive = subprocess.run(
            ["git", "-C", str(root), "archive", PREVIOUS_RELEASE, "ingest", "schema.sql"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"the previous release ({PREVIOUS_RELEASE}) is not in this checkout's history: {exc}")
    code.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(code, filter="data")
    proc = subprocess.run(
        [sys.executable, "-c", "from ingest.cli import main; main()", str(tree), "--db", url, "--jobs", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=code,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    assert proc.returncode == 0, proc.stderr


def _upgraded(url: str, caplog: pytest.LogCaptureFixture) -> str:
    """Open the database with the current code (what every dicom-ingest does first); what it logged."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dicom_db.ingest.db"):
        store = Store(url)
        store.open()
        store.close()
    return caplog.text


# ------------------------------------------------------------------------------------------------ SQLite
def test_a_previous_release_database_is_upgraded_in_place(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tree = _tree(tmp_path)
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    run_ingest(tree, "--db", f"sqlite:///{fresh}", "--jobs", "2", check=0)
    _previous_release_sqlite(fresh, old)
    before = _sqlite_dump(old, _columns(V1_SCHEMA))
    assert rows(old, "SELECT name FROM sqlite_master WHERE name = 'SchemaInfo'") == []

    logged = _upgraded(f"sqlite:///{old}", caplog)
    assert f"schema version 1 -> {SCHEMA_VERSION}" in logged and "added SourceFile.MappingVersion" in logged
    assert _sqlite_dump(old, _columns(V1_SCHEMA)) == before  # every row, every SliceID, as it was
    assert dict(rows(old, 'SELECT "Key", "Value" FROM "SchemaInfo"')) == {
        "schema": str(SCHEMA_VERSION),
        "mapping": str(MAPPING_VERSION),
    }
    assert rows(old, 'SELECT DISTINCT "MappingVersion" FROM "SourceFile"') == [(1,)]  # read by the previous release
    assert rows(old, "PRAGMA integrity_check") == [("ok",)] and rows(old, "PRAGMA foreign_key_check") == []
    assert _upgraded(f"sqlite:///{old}", caplog) == ""  # a second upgrade finds nothing to do

    # The columns this release's mapping added are there, empty until the files are read again.
    assert _new_values(old) == {}

    # The ingest over the same folder reads again the files read under an older mapping, and only those.
    proc = run_ingest(tree, "--db", f"sqlite:///{old}", "--jobs", "2", check=0)
    stale = _holding(fresh) if MAPPING_VERSION > 1 else 0
    assert _reread(proc.stdout) == stale
    assert _sqlite_dump(old, _columns()) == _sqlite_dump(fresh, _columns()) and _all_current(old)
    filled = _new_values(old)
    assert filled == _new_values(fresh) and {"Series.Manufacturer", "SliceMetadata.TransferSyntaxUID"} <= set(filled)
    again = run_ingest(tree, "--db", f"sqlite:///{old}", check=0)
    assert _reread(again.stdout) == 0 and _sqlite_dump(old, _columns()) == _sqlite_dump(fresh, _columns())


def _new_values(db: Path) -> dict[str, int]:
    """Per column the registry added in the current mapping version: how many rows hold a value (when any)."""
    counts = {}
    for entry in registry.ENTRIES:
        if entry.since == MAPPING_VERSION and entry.since > 1:
            (count,) = rows(db, f'SELECT COUNT("{entry.column}") FROM "{entry.table}"')[0]
            if count:
                counts[f"{entry.table}.{entry.column}"] = count
    return counts


def _age(db: Path, paths: list[str]) -> None:
    """What a mapping change leaves behind: these files were read under an older mapping, which did not fill some
    columns: blanked in the rows they are the source of (their instances' rows when they own them, their series'
    when they hold its representative instance, their studies')."""
    with sqlite3.connect(db) as conn:
        marks = ", ".join("?" * len(paths))
        conn.execute(
            f'UPDATE "SourceFile" SET "MappingVersion" = ? WHERE "Path" IN ({marks})', (MAPPING_VERSION - 1, *paths)
        )
        owned = {
            r[0]
            for r in conn.execute(
                f'SELECT "SOPInstanceUID" FROM "SourceFile" WHERE "Status" = \'ingested\' AND "Path" IN ({marks})',
                paths,
            )
        }
        slices = conn.execute('SELECT "SOPInstanceUID", "SeriesInstanceUID" FROM "SliceMetadata"').fetchall()
        series = conn.execute('SELECT "SeriesInstanceUID", "StudyInstanceUID", "RepresentativeKey" FROM "Series"')
        series = series.fetchall()
        touched = {uid for sop, uid in slices if sop in owned}
        conn.executemany(
            'UPDATE "SliceMetadata" SET "AcquisitionDate" = NULL WHERE "SOPInstanceUID" = ?', [(s,) for s in owned]
        )
        for uid, study, key in series:
            if key.split("|", 1)[1] in owned:
                conn.execute('UPDATE "Series" SET "Modality" = NULL WHERE "SeriesInstanceUID" = ?', (uid,))
            if uid in touched:
                conn.execute('UPDATE "Study" SET "StudyDescription" = NULL WHERE "StudyInstanceUID" = ?', (study,))


def test_a_database_the_previous_release_wrote_itself_is_upgraded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = _tree(tmp_path)
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    _previous_release_ingest(tree, f"sqlite:///{old}", tmp_path)
    assert rows(old, "SELECT name FROM sqlite_master WHERE name = 'SchemaInfo'") == []
    before = _sqlite_dump(old, _columns(V1_SCHEMA))
    assert f"schema version 1 -> {SCHEMA_VERSION}" in _upgraded(f"sqlite:///{old}", caplog)
    assert _sqlite_dump(old, _columns(V1_SCHEMA)) == before
    run_ingest(tree, "--db", f"sqlite:///{fresh}", "--jobs", "2", check=0)
    proc = run_ingest(tree, "--db", f"sqlite:///{old}", "--jobs", "2", check=0)
    assert _reread(proc.stdout) == (_holding(fresh) if MAPPING_VERSION > 1 else 0)
    assert _sqlite_dump(old, _columns()) == _sqlite_dump(fresh, _columns()) and _all_current(old)


@pytest.mark.parametrize("how", ["folder", "upgrade"])
def test_only_files_read_under_an_older_mapping_are_read_again(tmp_path: Path, how: str) -> None:
    tree = _tree(tmp_path)
    db = tmp_path / "dicom.db"
    run_ingest(tree, "--db", f"sqlite:///{db}", "--jobs", "2", check=0)
    expected = _sqlite_dump(db, _columns())
    # A whole series with its duplicate, and some files of studies whose other files stay current.
    holding = [
        r[0]
        for r in rows(
            db, 'SELECT "Path" FROM "SourceFile" WHERE "Status" IN (\'ingested\', \'duplicate\') ORDER BY "Path"'
        )
    ]
    aged = [p for p in holding if "/written/" in p] + holding[::7]
    aged = sorted(set(aged))
    _age(db, aged)
    assert _sqlite_dump(db, _columns()) != expected
    args = [tree] if how == "folder" else ["--upgrade"]
    proc = run_ingest(*args, "--db", f"sqlite:///{db}", "--jobs", "2", check=0)
    assert _reread(proc.stdout) == len(aged)
    if how == "folder":
        assert summary(proc.stdout)["unchanged"] == len(holding) - len(aged)
    assert "conflict" not in proc.stderr
    assert _sqlite_dump(db, _columns()) == expected
    assert _all_current(db)
    assert _reread(run_ingest(*args, "--db", f"sqlite:///{db}", check=0).stdout) == 0


def test_upgrade_keeps_the_rows_of_a_stale_file_that_is_gone(tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in", count=3)
    time.sleep(0.2)
    db = tmp_path / "dicom.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    _age(db, [str(p) for p in paths[:2]])
    paths[0].unlink()
    proc = run_ingest("--upgrade", "--db", f"sqlite:///{db}", check=1)
    assert f"failed: {paths[0]}: cannot be read again: No such file or directory" in proc.stderr
    assert summary(proc.stdout)["ingested"] == 1 and summary(proc.stdout)["failed"] == 1
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(3,)]  # released only by an ingest over its folder
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    assert rows(db, 'SELECT COUNT(*) FROM "SliceMetadata"') == [(2,)]


def test_concurrent_upgrades_of_a_previous_release_database(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    run_ingest(tree, "--db", f"sqlite:///{fresh}", "--jobs", "2", check=0)
    _previous_release_sqlite(fresh, old)
    _concurrently(tree, f"sqlite:///{old}")
    assert _sqlite_dump(old, _columns()) == _sqlite_dump(fresh, _columns())
    assert rows(old, 'SELECT COUNT(*) FROM "SchemaInfo"') == [(2,)]


def _concurrently(tree: Path, url: str) -> None:
    runs = [
        subprocess.Popen(
            [*ingest_command(), str(tree), "--db", url, "--jobs", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, f"stdout: {out}\nstderr: {err}"


# ------------------------------------------------------------------------------------------------ refusals
def test_a_newer_database_is_refused_by_both_commands(tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=2)
    db = tmp_path / "dicom.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=0)
    with sqlite3.connect(db) as conn:
        conn.execute('UPDATE "SchemaInfo" SET "Value" = ? WHERE "Key" = \'schema\'', (str(SCHEMA_VERSION + 1),))
    before = _sqlite_dump(db, _columns())
    proc = run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", check=3)
    assert f"has schema version {SCHEMA_VERSION + 1}, newer than this dicom-ingest's {SCHEMA_VERSION}" in proc.stderr
    api = _api_start(f"sqlite:///{db}")
    assert api.returncode == 3 and "was made by a newer dicom-ingest" in api.stderr
    assert _sqlite_dump(db, _columns()) == before


def _api_start(url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*api_command(), "--db", url, "--port", str(free_port())], capture_output=True, text=True, timeout=60
    )


def test_the_api_names_the_command_that_upgrades_an_older_database(tmp_path: Path) -> None:
    tree = _tree(tmp_path)
    fresh, old = tmp_path / "fresh.db", tmp_path / "old.db"
    run_ingest(tree, "--db", f"sqlite:///{fresh}", "--jobs", "2", check=0)
    _previous_release_sqlite(fresh, old)
    proc = _api_start(f"sqlite:///{old}")
    assert proc.returncode == 3, proc.stderr
    command = f"dicom-ingest --upgrade --db sqlite:///{old}"
    assert (
        f"was made by an earlier dicom-ingest (schema version 1, this dicom-api reads version {SCHEMA_VERSION})"
        in proc.stderr
    )
    assert f"upgrade it in place with `{command}`" in proc.stderr
    run_ingest(*command.split()[1:], check=0)  # the command as printed
    assert _sqlite_dump(old, _columns()) == _sqlite_dump(fresh, _columns())
    with subprocess.Popen(
        [*api_command(), "--db", f"sqlite:///{old}", "--port", str(free_port()), "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as api:
        try:
            for line in api.stdout:  # type: ignore[union-attr]
                if "Application startup complete" in line or "error" in line.lower():
                    break
            assert "Application startup complete" in line
        finally:
            api.terminate()


# ------------------------------------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def pg_urls() -> Iterator[tuple[str, str]]:
    """Two fresh, empty PostgreSQL databases: one for a fresh ingest, one for the previous release's."""
    tag = uuid.uuid4().hex[:10]
    with fresh_postgres_database(f"dicomdb_fresh_{tag}") as fresh, fresh_postgres_database(f"dicomdb_old_{tag}") as old:
        yield fresh, old


async def _pg_previous_release(fresh: str, old: str) -> None:
    src, dst = await asyncpg.connect(fresh), await asyncpg.connect(old)
    try:
        for statement in schema_statements("postgresql", V1_SCHEMA):
            await dst.execute(statement)
        for table, names in _columns(V1_SCHEMA).items():  # parents first: the order schema_v1.sql declares them
            selected = ", ".join(f'"{n}"' for n in names)
            marks = ", ".join(f"${i + 1}" for i in range(len(names)))
            records = await src.fetch(f'SELECT {selected} FROM "{table}"')
            await dst.executemany(f'INSERT INTO "{table}" ({selected}) VALUES ({marks})', [tuple(r) for r in records])
        # As its own inserts would have left it: the next new slice gets the next SliceID.
        await dst.execute(
            "SELECT setval(pg_get_serial_sequence('\"SliceMetadata\"', 'SliceID'), "
            '(SELECT MAX("SliceID") FROM "SliceMetadata"))'
        )
    finally:
        await src.close()
        await dst.close()


async def _pg_dump(url: str, columns: dict[str, list[str]]) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for table, names in columns.items():
            if table in KEYS:
                selected = ", ".join(f'"{n}"' for n in names)
                records = await conn.fetch(f'SELECT {selected} FROM "{table}" ORDER BY "{KEYS[table]}" COLLATE "C"')
                out[table] = [tuple(r) for r in records]
        return out
    finally:
        await conn.close()


async def _pg_fetch(url: str, sql: str) -> list[tuple]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def test_postgres_previous_release_database_is_upgraded_in_place(
    pg_urls: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh, old = pg_urls
    tree = _tree(tmp_path)
    first = run_ingest(tree, "--db", fresh, "--jobs", "2", check=0)
    asyncio.run(_pg_previous_release(fresh, old))
    before = asyncio.run(_pg_dump(old, _columns(V1_SCHEMA)))

    logged = _upgraded(old, caplog)
    assert f"schema version 1 -> {SCHEMA_VERSION}" in logged and "added SourceFile.MappingVersion" in logged
    assert asyncio.run(_pg_dump(old, _columns(V1_SCHEMA))) == before
    assert sorted(asyncio.run(_pg_fetch(old, 'SELECT "Key", "Value" FROM "SchemaInfo"'))) == [
        ("mapping", str(MAPPING_VERSION)),
        ("schema", str(SCHEMA_VERSION)),
    ]
    assert _upgraded(old, caplog) == ""

    # Here the stale files are read again by their stored paths, without the folder.
    proc = run_ingest("--upgrade", "--db", old, "--jobs", "2", check=0)
    assert _reread(proc.stdout) == (_reread(first.stdout) if MAPPING_VERSION > 1 else 0)
    assert asyncio.run(_pg_dump(old, _columns())) == asyncio.run(_pg_dump(fresh, _columns()))
    assert _reread(run_ingest(tree, "--db", old, check=0).stdout) == 0


def test_postgres_database_the_previous_release_wrote_itself_is_upgraded(
    pg_urls: tuple[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fresh, old = pg_urls
    tree = _tree(tmp_path)
    _previous_release_ingest(tree, old, tmp_path)
    before = asyncio.run(_pg_dump(old, _columns(V1_SCHEMA)))
    assert f"schema version 1 -> {SCHEMA_VERSION}" in _upgraded(old, caplog)
    assert asyncio.run(_pg_dump(old, _columns(V1_SCHEMA))) == before
    first = run_ingest(tree, "--db", fresh, "--jobs", "2", check=0)
    proc = run_ingest(tree, "--db", old, "--jobs", "2", check=0)
    assert _reread(proc.stdout) == (_reread(first.stdout) if MAPPING_VERSION > 1 else 0)
    assert asyncio.run(_pg_dump(old, _columns())) == asyncio.run(_pg_dump(fresh, _columns()))


def test_postgres_concurrent_upgrades_of_a_previous_release_database(pg_urls: tuple[str, str], tmp_path: Path) -> None:
    fresh, old = pg_urls
    tree = _tree(tmp_path)
    run_ingest(tree, "--db", fresh, "--jobs", "2", check=0)
    asyncio.run(_pg_previous_release(fresh, old))
    _concurrently(tree, old)
    assert asyncio.run(_pg_dump(old, _columns())) == asyncio.run(_pg_dump(fresh, _columns()))
    assert asyncio.run(_pg_fetch(old, 'SELECT COUNT(*) FROM "SchemaInfo"')) == [(2,)]
