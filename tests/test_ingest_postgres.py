"""The same ingest into PostgreSQL: same tables, same rows as SQLite. Skips when no server answers."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from conftest import DICOMDIR_TESTS, dump_tables, fresh_postgres_database, run_ingest
from dicom_factory import write_series
from test_ingest import summary


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
            out[table] = [tuple(r.values()) for r in records]
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
    assert [r[0] for r in dump["Patient"]] == ["PAT-9"]
    assert len(dump["SliceMetadata"]) == 3
