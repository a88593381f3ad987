"""The same ingest into PostgreSQL: same tables, same rows as SQLite. Skips when no server answers."""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import DICOMDIR_TESTS, dump_tables, dumped_at, fresh_postgres_database, run_ingest
from dicom_factory import write_series
from test_ingest import summary

from dicom_db.ingest.db import DatabaseError, Store


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with fresh_postgres_database(f"dicomdb_test_{uuid.uuid4().hex[:12]}") as url:
        yield url


async def _pg_dump(url: str) -> dict[str, list[tuple]]:
    conn = await asyncpg.connect(url)
    try:
        out = {}
        for table, key in (
            ("Patient", "PatientID"),
            ("Study", "StudyInstanceUID"),
            ("Series", "SeriesInstanceUID"),
            ("SliceMetadata", "SOPInstanceUID"),
        ):
            records = await conn.fetch(f'SELECT * FROM "{table}" ORDER BY "{key}" COLLATE "C"')
            out[table] = [tuple(r[name] for name in sorted(r.keys())) for r in records]  # as dump_tables
        return out
    finally:
        await conn.close()


def test_postgres_gets_the_same_rows_as_sqlite(pg_url: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(DICOMDIR_TESTS, tree)
    write_series(tree / "written", count=30)
    first = run_ingest(tree, "--db", pg_url, "--batch-size", "20", check=0)
    second = run_ingest(tree, "--db", pg_url, check=0)
    assert summary(second.stdout)["unchanged"] == summary(first.stdout)["ingested"] == 111
    sqlite_db = tmp_path / "same.db"
    run_ingest(tree, "--db", f"sqlite:///{sqlite_db}", "--batch-size", "20", check=0)
    assert asyncio.run(_pg_dump(pg_url)) == dump_tables(sqlite_db)


def test_postgres_duplicates_and_changes(pg_url: str, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "in" / "a", count=3)
    shutil.copy(paths[0], tmp_path / "in" / "copy.dcm")
    proc = run_ingest(tmp_path / "in", "--db", pg_url, check=0)
    assert summary(proc.stdout)["duplicates"] == 1
    # The same paths now hold another patient's series; the copy is removed.
    shutil.rmtree(tmp_path / "in")
    write_series(tmp_path / "in" / "a", count=3, patient_id="PAT-9", study="s9", series="se9")
    run_ingest(tmp_path / "in", "--db", pg_url, check=0)
    dump = asyncio.run(_pg_dump(pg_url))
    assert [r[dumped_at("Patient", "PatientID")] for r in dump["Patient"]] == ["PAT-9"]
    assert len(dump["SliceMetadata"]) == 3


def test_postgres_url_options_and_numbers_beyond_its_integer(pg_url: str, tmp_path: Path) -> None:
    # The options `databases` (the API) accepts in the same $DATABASE_URL; and an InstanceNumber past DICOM's
    # 32-bit range for IS, which PostgreSQL's INTEGER cannot hold: stored as NULL, not a stopped run.
    write_series(tmp_path / "in", count=2)
    write_series(tmp_path / "in" / "big", count=1, series="series-big", InstanceNumber=3_000_000_000)
    proc = run_ingest(tmp_path / "in", "--db", f"{pg_url}?min_size=1&max_size=5&ssl=false", check=0)
    assert summary(proc.stdout)["ingested"] == 3
    sqlite_db = tmp_path / "same.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{sqlite_db}", check=0)
    dump = asyncio.run(_pg_dump(pg_url))
    assert dump == dump_tables(sqlite_db)
    number = dumped_at("SliceMetadata", "SliceNumber")
    assert sorted((r[number] is None) for r in dump["SliceMetadata"]) == [False, False, True]


def test_a_dropped_connection_is_a_database_error(pg_url: str) -> None:
    store = Store(pg_url)
    store.open()
    try:
        asyncio.run(_pg_terminate_others(pg_url))
        with pytest.raises(DatabaseError, match="cannot read from"):
            store.file_index()
    finally:
        store.close()


async def _pg_terminate_others(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await conn.close()


def test_postgres_uid_digests_are_written_and_added_to_an_older_database(pg_url: str, tmp_path: Path) -> None:
    write_series(tmp_path / "in", count=3)
    run_ingest(tmp_path / "in", "--db", pg_url, check=0)
    columns = {"Study": "StudyInstanceUID", "Series": "SeriesInstanceUID", "SliceMetadata": "SOPInstanceUID"}

    async def digests(drop: bool) -> dict[str, list[tuple[str, str]]]:
        conn = await asyncpg.connect(pg_url)
        try:
            found = {}
            for table, uid in columns.items():
                found[table] = sorted(tuple(r) for r in await conn.fetch(f'SELECT "{uid}", "{uid}Hash" FROM "{table}"'))
                if drop:  # the database as an earlier schema.sql made it (the column's index goes with it)
                    await conn.execute(f'ALTER TABLE "{table}" DROP COLUMN "{uid}Hash"')
            return found
        finally:
            await conn.close()

    before = asyncio.run(digests(drop=True))
    for pairs in before.values():
        assert pairs and all(h == hashlib.sha256(u.encode()).hexdigest()[:32] for u, h in pairs)
    proc = run_ingest(tmp_path / "in", "--db", pg_url, check=0)
    assert summary(proc.stdout)["unchanged"] == 3
    assert asyncio.run(digests(drop=False)) == before
