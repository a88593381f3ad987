"""Shared fixtures: the real `dicom-ingest` command, pydicom's bundled DICOM files, real databases."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pydicom
import pytest

from dicom_db.model import registry

PYDICOM_DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = PYDICOM_DATA / "test_files"
DICOMDIR_TESTS = TEST_FILES / "dicomdirtests"
CHARSET_FILES = PYDICOM_DATA / "charset_files"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcm_qa_nih" / "In"
BIN = Path(sys.executable).parent
PG_SERVER = "postgresql://postgres@127.0.0.1:5432"
PG_ADMIN_DB = "test"  # the machine's PostgreSQL: trust auth, user postgres, database test


def ingest_command() -> list[str]:
    """The installed console script, falling back to the module (same code) when not on PATH."""
    exe = BIN / "dicom-ingest"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dicom_db.ingest.cli import main; main()"]


def run_ingest(*args: str | os.PathLike[str], check: int | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess; `check` asserts the exit code."""
    proc = subprocess.run([*ingest_command(), *map(str, args)], capture_output=True, text=True, timeout=600, **kwargs)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc


def rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql, params).fetchall()


def dumped_at(table: str, column: str) -> int:
    """The position of `column` in a dumped row (dump_tables and the PostgreSQL dumps order columns by name)."""
    return sorted(e.column for e in registry.entries(table)).index(column)


def dump_tables(db: Path) -> dict[str, list[tuple]]:
    """Every row of the user's four tables, sorted, columns by name (an upgraded database has its added columns
    at the end): two databases are equal when their dumps are."""
    keys = {
        "Patient": "PatientID",
        "Study": "StudyInstanceUID",
        "Series": "SeriesInstanceUID",
        "SliceMetadata": "SOPInstanceUID",
    }
    out = {}
    for table, key in keys.items():
        names = sorted(r[1] for r in rows(db, f'PRAGMA table_info("{table}")'))
        columns = ", ".join(f'"{n}"' for n in names)
        out[table] = rows(db, f'SELECT {columns} FROM "{table}" ORDER BY "{key}"')
    return out


# Under pytest-xdist (`make test` runs `-n 2 --dist loadfile`) each test file stays on one worker, so that its
# module-scoped fixtures (ingested databases, running servers) are built once and its servers never run twice at
# once. The files named here have no such fixtures and long tests of their own, which are spread over both workers.
# (xdist's `loadgroup` and its xdist_group marks would say the same, but xdist 3.8 cannot regroup pytest 9's tests.)
SPREAD_OVER_WORKERS = {"test_ingest_integrity.py"}


@pytest.hookimpl(optionalhook=True)  # an xdist hook: a venv without xdist runs the suite on one process
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    if config.getoption("dist") != "loadfile":
        return None  # xdist's own choice
    from xdist.scheduler import LoadScopeScheduling

    class FileScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPREAD_OVER_WORKERS else path

    return FileScheduling(config, log)


@pytest.fixture
def ingest() -> Callable[..., subprocess.CompletedProcess]:
    return run_ingest


@pytest.fixture
def dicomdir_copy(tmp_path: Path) -> Path:
    """A writable copy of pydicom's dicomdirtests tree (3 patients, 6 studies, DICOMDIR files)."""
    dest = tmp_path / "dicomdirtests"
    shutil.copytree(DICOMDIR_TESTS, dest)
    return dest


async def _pg_admin(*statements: str) -> None:
    connection = await asyncpg.connect(f"{PG_SERVER}/{PG_ADMIN_DB}", timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@contextlib.contextmanager
def fresh_postgres_database(name: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for a test (its URL), dropped afterwards; skips when no server answers."""
    try:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"no usable PostgreSQL server at {PG_SERVER}/{PG_ADMIN_DB} (user postgres, trust auth): {exc}")
    try:
        yield f"{PG_SERVER}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
