"""Fixtures for the API tests: databases filled by the real `dicom-ingest` from pydicom's files and from files
the tests write, and the app serving each of them in-process.

Test modules load this file with `pytest_plugins = ["api_fixtures"]` and import helpers from api_helpers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import Api, ingest_into, serve, write_synthetic
from conftest import CHARSET_FILES, DICOMDIR_TESTS


@pytest.fixture(scope="session")
def synthetic_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic(root / "files")
    return ingest_into(root, root / "synthetic.db", root / "files")


@pytest.fixture(scope="session")
def dicomdir_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dicomdir")
    return ingest_into(root, root / "dicomdir.db", DICOMDIR_TESTS)


@pytest.fixture(scope="session")
def charset_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("charset")
    # Exit 1: two of pydicom's charset files lack the UIDs a row needs (the ingest lists them as failed).
    return ingest_into(root, root / "charset.db", CHARSET_FILES, exit_code=1)


@pytest.fixture(scope="session")
def synthetic(synthetic_db: Path) -> Iterator[Api]:
    yield from serve(f"sqlite:///{synthetic_db}")


@pytest.fixture(scope="session")
def dicomdir(dicomdir_db: Path) -> Iterator[Api]:
    yield from serve(f"sqlite:///{dicomdir_db}")


@pytest.fixture(scope="session")
def charset(charset_db: Path) -> Iterator[Api]:
    yield from serve(f"sqlite:///{charset_db}")


@pytest.fixture(scope="session")
def pydicom_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """Everything pydicom ships (odd files included), served: exit 1 as some of its files are not ingestible."""
    root = tmp_path_factory.mktemp("pydicom_data")
    db = ingest_into(root, root / "all.db", DICOMDIR_TESTS.parents[1], exit_code=1)
    yield from serve(f"sqlite:///{db}")
