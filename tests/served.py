"""A real `dicom-api` process on a free port of 127.0.0.1 for a SQLite file, yielding its base URL: for the
browser tests and bench/bench_browser.py. It is api_helpers.api_process (which the availability tests use too)
with the file's URL made for them; the app-in-process tests use api_helpers.serve instead."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from api_helpers import api_process


@contextmanager
def running_api(db: Path, log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`dicom-api --db sqlite:///DB` with only `env` as its own settings; yields its base URL once it is ready."""
    with api_process(f"sqlite:///{db}", log=log, env=env) as server:
        yield server.url
