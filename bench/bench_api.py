"""Measure the GraphQL API against two floors, side by side, on databases filled by `dicom-ingest`.

Usage (from the repository root, with the project's venv; TMP is any scratch folder, never the repository):

    .venv/bin/dicom-ingest corpus/100k --db sqlite:///$TMP/bench100k.db --quiet
    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench10k.db --slices 10000
    .venv/bin/python bench/make_api_db.py $TMP/bench100k.db $TMP/bench1m.db --slices 1000000
    .venv/bin/python bench/bench_api.py $TMP/bench100k.db \\
        --scale 10k=$TMP/bench10k.db --scale 100k=$TMP/bench100k.db --scale 1M=$TMP/bench1m.db \\
        [--reps 100] [--warmup 5] [--tree-slices 1000] [--json FILE] [--profile DIR]

It measures the `api` package that Python imports: the working tree's, or a given commit's with
`git archive COMMIT api ingest schema.sql | tar -x -C $TMP/snap` and `PYTHONPATH=$TMP/snap` (the report
prints the package's path and a digest of its files).

Three queries (parameters are picked from the smallest database given, so that they exist in all of them):

  tree       one patient, its studies, their series and exactly 1,000 slices with 10 fields each (the patient
             and per-series `first` whose slices add up to exactly 1,000; `first: 10` on studies and series,
             which holds all of them, as the API's node limit wants a `first` at every level);
  selective  `allSlices` of one series (the largest) with sliceLocation in a narrow range (50 slices),
             totalCount and the nodes with 10 fields: an index seek (idx_slice_series), whatever the table size;
  facets     series per modality over the series of studies since a date, and studies per year over the
             studies since that date, with their totalCounts (groupBy over filtered connections).

Each query is run, in the same process and event loop, interleaved in a rotating order, `--reps` times, as:

  api        the schema of `create_app(settings)` executing the query in-process: `schema.execute` with the
             context that the app's view builds for a POST (`GraphQLApp.get_context`: fresh `Loaders` over
             `app.state.database`), the result dumped to JSON;
  http       the same through httpx's ASGITransport (POST /graphql), for reference;
  sql        floor (a): the same rows fetched with plain, hand-written SQL on a read-only sqlite3 connection
             and serialised to the same JSON (checked equal to the API's answer before timing);
  aiosqlite  floor (a'): the same statements through one aiosqlite connection (the API's driver);
  memory     floor (b): the same query executed by the same schema over the objects already in memory: the
             request's DataLoaders are primed with the values (pages of nodes, rows, counts, facets) that an
             API run produced, so no SQL runs (checked: `db.statements` does not move);
  rows       diagnostic: the same schema and loaders over a database stub that replays the rows an API run
             fetched: the loaders and `make_node` run, SQL and the driver do not. `api - rows` is the time of
             SQL + `databases` + aiosqlite, `rows - memory` the time of the loaders and of making the nodes.

Every sample is one request, from the query text to the JSON text, after a `gc.collect()`, timed by the wall
clock and by the process's CPU time (all threads: aiosqlite runs SQL in a thread of its own); CPU time is what
stays meaningful when other processes compete for the cores. Reported: median and p90 of the samples, SQL
statements per request, and ratios to the floors computed per repetition (the variants of one repetition ran
back to back) and summarised by their median. With `--scale NAME=DB`, the api and sql variants of every query
are also run on each database, interleaved, for the growth from the first database to the last; the query
plans of the API's statements on the last one are printed. `--profile DIR` writes a cProfile of 20 api
requests of each query.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import json
import os
import platform
import pstats
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aiosqlite
import httpx
from starlette.requests import Request
from starlette.responses import Response
from strawberry.dataloader import DataLoader
from strawberry.schema import BaseSchema

import dicom_db.api as api
from dicom_db.api.app import GraphQLApp, create_app
from dicom_db.api.db import Database
from dicom_db.api.loaders import Context, Loaders
from dicom_db.api.settings import Settings

Fetch = Callable[[str, Sequence[Any]], Awaitable[list[tuple[Any, ...]]]]
JSONDict = dict[str, Any]

SLICE_FIELDS_GQL = (
    "sliceId sopInstanceUid sliceNumber sliceLocation sliceThickness acquisitionDate acquisitionTime "
    "rescaleIntercept rescaleSlope imagePositionPatient"
)
# The same ten fields as stored columns, in the same order.
SLICE_COLUMNS = (
    ("sliceId", "SliceID"),
    ("sopInstanceUid", "SOPInstanceUID"),
    ("sliceNumber", "SliceNumber"),
    ("sliceLocation", "SliceLocation"),
    ("sliceThickness", "SliceThickness"),
    ("acquisitionDate", "AcquisitionDate"),
    ("acquisitionTime", "AcquisitionTime"),
    ("rescaleIntercept", "RescaleIntercept"),
    ("rescaleSlope", "RescaleSlope"),
    ("imagePositionPatient", "ImagePositionPatient"),
)
SLICE_SELECT = ", ".join(f'"{c}"' for _, c in SLICE_COLUMNS)

TREE = f"""query Tree($patientId: String!, $perSeries: Int!) {{
  patient(patientId: $patientId) {{
    patientId patientName patientSex patientBirthDate
    studies(first: 10) {{ nodes {{
      studyInstanceUid studyDate studyDescription
      series(first: 10) {{ nodes {{
        seriesInstanceUid modality seriesDescription sliceThickness
        slices(first: $perSeries) {{ nodes {{ {SLICE_FIELDS_GQL} }} }}
      }} }}
    }} }}
  }}
}}"""

SELECTIVE = f"""query Selective($series: String!, $low: Float!, $high: Float!) {{
  allSlices(where: {{seriesInstanceUid: {{eq: $series}}, sliceLocation: {{gte: $low, lte: $high}}}}, first: 100) {{
    totalCount
    nodes {{ {SLICE_FIELDS_GQL} }}
  }}
}}"""

FACETS = """query Facets($since: Date!) {
  series: allSeries(where: {study: {studyDate: {gte: $since}}}, first: 0) {
    totalCount
    groupBy(field: MODALITY) { value count }
  }
  studies: allStudies(where: {studyDate: {gte: $since}}, first: 0) {
    totalCount
    groupBy(field: STUDY_DATE, datePart: YEAR) { value count }
  }
}"""


# Floor (a): plain SQL, rows to the same JSON. `fetch` is sqlite3 or aiosqlite.


def _float_list(text: str | None) -> list[float] | None:
    return None if text is None else [float(v) for v in text.split("\\")]


def _slice(row: Sequence[Any]) -> JSONDict:
    out = {name: row[i] for i, (name, _) in enumerate(SLICE_COLUMNS)}
    out["imagePositionPatient"] = _float_list(out["imagePositionPatient"])
    return out


def _marks(values: Sequence[Any]) -> str:
    return ", ".join("?" * len(values))


async def floor_tree(fetch: Fetch, v: JSONDict) -> JSONDict:
    pid = v["patientId"]
    patient = await fetch(
        'SELECT "PatientID", "PatientName", "PatientSex", "PatientBirthDate" FROM "Patient" WHERE "PatientID" = ?',
        (pid,),
    )
    studies = await fetch(
        'SELECT "StudyInstanceUID", "StudyDate", "StudyDescription" FROM "Study" WHERE "PatientID" = ? '
        'ORDER BY "StudyInstanceUID"',
        (pid,),
    )
    study_uids = [s[0] for s in studies]
    series = await fetch(
        'SELECT "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "SliceThicknessValue" '
        f'FROM "Series" WHERE "StudyInstanceUID" IN ({_marks(study_uids)}) ORDER BY "SeriesInstanceUID"',
        study_uids,
    )
    series_uids = [s[1] for s in series]
    slices = await fetch(
        f'SELECT "SeriesInstanceUID", {SLICE_SELECT} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY '
        '"SeriesInstanceUID" ORDER BY "SliceNumber" NULLS LAST, "SliceID") AS rn FROM "SliceMetadata" '
        f'WHERE "SeriesInstanceUID" IN ({_marks(series_uids)})) WHERE rn <= ? ORDER BY "SeriesInstanceUID", rn',
        [*series_uids, v["perSeries"]],
    )
    by_series: dict[str, list[JSONDict]] = {uid: [] for uid in series_uids}
    for row in slices:
        by_series[row[0]].append(_slice(row[1:]))
    by_study: dict[str, list[JSONDict]] = {uid: [] for uid in study_uids}
    for study_uid, uid, modality, description, thickness in series:
        by_study[study_uid].append(
            {
                "seriesInstanceUid": uid,
                "modality": modality,
                "seriesDescription": description,
                "sliceThickness": thickness,
                "slices": {"nodes": by_series[uid]},
            }
        )
    p = patient[0]
    return {
        "patient": {
            "patientId": p[0],
            "patientName": p[1],
            "patientSex": p[2],
            "patientBirthDate": p[3],
            "studies": {
                "nodes": [
                    {
                        "studyInstanceUid": s[0],
                        "studyDate": s[1],
                        "studyDescription": s[2],
                        "series": {"nodes": by_study[s[0]]},
                    }
                    for s in studies
                ]
            },
        }
    }


SELECTIVE_WHERE = '"SeriesInstanceUID" = ? AND "SliceLocation" >= ? AND "SliceLocation" <= ?'


async def floor_selective(fetch: Fetch, v: JSONDict) -> JSONDict:
    params = (v["series"], v["low"], v["high"])
    total = await fetch(f'SELECT COUNT(*) FROM "SliceMetadata" WHERE {SELECTIVE_WHERE}', params)
    rows = await fetch(
        f'SELECT {SLICE_SELECT} FROM "SliceMetadata" WHERE {SELECTIVE_WHERE} ORDER BY "SliceID" LIMIT 100', params
    )
    return {"allSlices": {"totalCount": total[0][0], "nodes": [_slice(r) for r in rows]}}


async def floor_facets(fetch: Fetch, v: JSONDict) -> JSONDict:
    since = (v["since"],)
    in_studies = '"StudyInstanceUID" IN (SELECT "StudyInstanceUID" FROM "Study" WHERE "StudyDate" >= ?)'
    series_total = await fetch(f'SELECT COUNT(*) FROM "Series" WHERE {in_studies}', since)
    modalities = await fetch(
        f'SELECT "Modality", COUNT(*) FROM "Series" WHERE {in_studies} GROUP BY 1 '
        "ORDER BY 2 DESC, 1 IS NULL, 1 LIMIT 1000",
        since,
    )
    studies_total = await fetch('SELECT COUNT(*) FROM "Study" WHERE "StudyDate" >= ?', since)
    years = await fetch(
        'SELECT substr("StudyDate", 1, 4), COUNT(*) FROM "Study" WHERE "StudyDate" >= ? GROUP BY 1 '
        "ORDER BY 2 DESC, 1 IS NULL, 1 LIMIT 1000",
        since,
    )
    return {
        "series": {"totalCount": series_total[0][0], "groupBy": [{"value": m, "count": n} for m, n in modalities]},
        "studies": {"totalCount": studies_total[0][0], "groupBy": [{"value": y, "count": n} for y, n in years]},
    }


@dataclass(frozen=True)
class Case:
    name: str
    query: str
    variables: JSONDict
    floor: Callable[[Fetch, JSONDict], Awaitable[JSONDict]]


# Choosing the parameters (plain sqlite3 on the smallest database).


def pick_cases(path: Path, tree_slices: int = 1000, window: int = 50) -> list[Case]:
    db = _ro_sqlite(path)
    try:
        tree = _pick_tree(db, tree_slices)
        # The biggest series of the database (ties: the smallest UID), and `window` slices in its middle.
        series, count = db.execute(
            'SELECT "SeriesInstanceUID", COUNT(*) FROM "SliceMetadata" WHERE "SliceLocation" IS NOT NULL '
            "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchone()
        locations = [
            r[0]
            for r in db.execute(
                'SELECT "SliceLocation" FROM "SliceMetadata" WHERE "SeriesInstanceUID" = ? AND "SliceLocation" IS NOT '
                'NULL ORDER BY "SliceLocation"',
                (series,),
            )
        ]
        start = max(0, (count - window) // 2)
        low, high = locations[start], locations[min(count, start + window) - 1]
        # Since the first day of the last quarter of the study dates (by count).
        dates = [r[0] for r in db.execute('SELECT "StudyDate" FROM "Study" WHERE "StudyDate" IS NOT NULL ORDER BY 1')]
        since = dates[len(dates) * 3 // 4]
    finally:
        db.close()
    return [
        Case("tree", TREE, tree, floor_tree),
        Case("selective", SELECTIVE, {"series": series, "low": low, "high": high}, floor_selective),
        Case("facets", FACETS, {"since": since}, floor_facets),
    ]


def _pick_tree(db: sqlite3.Connection, wanted: int) -> JSONDict:
    """A patient and a per-series cap (`first` of Series.slices) whose slices add up to exactly `wanted`: of the
    patients that have one, the one with the largest cap (the fewest slices cut), then the smallest PatientID."""
    sizes: dict[str, list[int]] = {}
    for patient, n in db.execute(
        'SELECT t."PatientID", COUNT(*) FROM "SliceMetadata" m JOIN "Series" s USING ("SeriesInstanceUID") '
        'JOIN "Study" t USING ("StudyInstanceUID") GROUP BY s."SeriesInstanceUID" ORDER BY 1'
    ):
        sizes.setdefault(patient, []).append(n)
    return tree_with(sizes, wanted)


def tree_with(sizes: dict[str, list[int]], wanted: int) -> JSONDict:
    """From each patient's series sizes (patients in PatientID order): the patient and per-series cap whose
    slices add up to exactly `wanted`, the largest cap (fewest slices cut) first, then the first patient."""
    best: tuple[int, str] | None = None
    for patient, counts in sizes.items():
        for cap in range(max(counts), 0, -1):
            total = sum(min(c, cap) for c in counts)
            if total < wanted:
                break
            if total == wanted:
                if best is None or cap > best[0]:
                    best = (cap, patient)
                break
    if best is None:
        raise SystemExit(f"no patient has a tree of exactly {wanted} slices under a per-series cap")
    return {"patientId": best[1], "perSeries": best[0]}


def _ro_sqlite(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)


# The variants.


class Target:
    """One database served by the app: the API, its schema, and the floors' own connections."""

    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path
        self.app = create_app(Settings(database_url=f"sqlite:///{path.resolve()}"))
        self.db: Database = self.app.state.database
        self.settings: Settings = self.app.state.settings
        endpoint = next(r.endpoint for r in self.app.routes if getattr(r, "path", None) == "/graphql")
        assert isinstance(endpoint, GraphQLApp)
        self.view = endpoint
        self.schema: BaseSchema = endpoint.schema
        self.sqlite = _ro_sqlite(path)
        self.aiosqlite: aiosqlite.Connection | None = None
        self.http: httpx.AsyncClient | None = None

    async def open(self) -> None:
        await self.db.connect()
        self.aiosqlite = await aiosqlite.connect(f"file:{self.path.resolve()}?mode=ro", uri=True)
        transport = httpx.ASGITransport(app=self.app)
        self.http = httpx.AsyncClient(transport=transport, base_url="http://bench")

    async def close(self) -> None:
        if self.http is not None:
            await self.http.aclose()
        if self.aiosqlite is not None:
            await self.aiosqlite.close()
        self.sqlite.close()
        await self.db.disconnect()

    async def context(self, db: Database | None = None, primed: dict[str, dict[Any, Any]] | None = None) -> Context:
        """The context the app's view builds for a POST /graphql (`GraphQLApp.get_context`), with its loaders
        over `db` instead of the app's database when given, and primed with `primed` values when given."""
        request = Request(
            {
                "type": "http",
                "method": "POST",
                "path": "/graphql",
                "headers": [(b"content-type", b"application/json")],
                "query_string": b"",
                "client": ("127.0.0.1", 50000),
                "server": ("127.0.0.1", 8000),
                "scheme": "http",
                "root_path": "",
                "app": self.app,
            }
        )
        context = await self.view.get_context(request, Response())
        if db is not None:
            context.db = db
            context.loaders = Loaders(db, context.loaders.make_node)
        if primed is not None:
            for name, loader in _data_loaders(context.loaders).items():
                loader.prime_many(primed[name])
        return context

    async def execute(self, case: Case, context: Context) -> str:
        """Execute as the app's view does (`GraphQLApp.execute_operation`): in one database session per request
        (one connection and read transaction, taken at the first statement) and under the time limit, where the
        API has them."""
        async with _session(self.db), asyncio.timeout(getattr(self.settings, "timeout", None)):
            result = await self.schema.execute(case.query, variable_values=case.variables, context_value=context)
        if result.errors:
            raise RuntimeError(f"{case.name}: {result.errors}")
        return json.dumps({"data": result.data})

    # Variants: each returns the response's JSON text.

    async def api(self, case: Case) -> str:
        return await self.execute(case, await self.context())

    async def over_http(self, case: Case) -> str:
        assert self.http is not None
        response = await self.http.post("/graphql", json={"query": case.query, "variables": case.variables})
        response.raise_for_status()
        return response.text

    async def sql(self, case: Case) -> str:
        async def fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            return self.sqlite.execute(sql, params).fetchall()

        return json.dumps({"data": await case.floor(fetch, case.variables)})

    async def async_sql(self, case: Case) -> str:
        connection = self.aiosqlite
        assert connection is not None

        async def fetch(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
            return list(await connection.execute_fetchall(sql, params))

        return json.dumps({"data": await case.floor(fetch, case.variables)})


def _session(db: Database) -> AbstractAsyncContextManager[Any]:
    request = getattr(db, "request", None)  # api.db.Database.request, since the API has one
    return request() if request is not None else nullcontext()


@dataclass
class Recording:
    """What one API run of a query loaded: loader values by key, and fetched rows by statement."""

    loaded: dict[str, dict[Any, Any]]
    rows: dict[tuple[str, str], list[tuple[Any, ...]]]
    statements: int
    answer: str


class RecordingDatabase(Database):
    """The real database, noting the rows of every statement."""

    def __init__(self, real: Database) -> None:
        super().__init__(real.url)
        self.real = real
        self.rows: dict[tuple[str, str], list[tuple[Any, ...]]] = {}

    async def fetch(self, sql: str, values: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        rows = await self.real.fetch(sql, values)
        self.statements += 1
        self.rows[(sql, _values_key(values))] = rows
        return rows


class ReplayDatabase(Database):
    """Answers each statement with the rows recorded for it: no SQL, no driver."""

    def __init__(self, real: Database, rows: dict[tuple[str, str], list[tuple[Any, ...]]]) -> None:
        super().__init__(real.url)
        self.recorded = rows

    async def fetch(self, sql: str, values: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        self.statements += 1
        return self.recorded[(sql, _values_key(values))]


def _values_key(values: dict[str, Any] | None) -> str:
    return json.dumps(values or {}, sort_keys=True)


def _data_loaders(loaders: Loaders) -> dict[str, DataLoader[Any, Any]]:
    return {name: value for name, value in vars(loaders).items() if isinstance(value, DataLoader)}


async def record(target: Target, case: Case) -> Recording:
    recording_db = RecordingDatabase(target.db)
    context = await target.context(recording_db)
    answer = await target.execute(case, context)
    loaded = {
        name: {key: future.result() for key, future in loader.cache_map.cache_map.items()}  # type: ignore[attr-defined]
        for name, loader in _data_loaders(context.loaders).items()
    }
    return Recording(loaded, recording_db.rows, recording_db.statements, answer)


def memory_variant(target: Target, recording: Recording) -> Callable[[Case], Awaitable[str]]:
    async def run(case: Case) -> str:
        return await target.execute(case, await target.context(primed=recording.loaded))

    return run


def rows_variant(target: Target, recording: Recording) -> Callable[[Case], Awaitable[str]]:
    replay = ReplayDatabase(target.db, recording.rows)

    async def run(case: Case) -> str:
        return await target.execute(case, await target.context(replay))

    return run


# Timing.


@dataclass
class Samples:
    samples: list[float] = field(default_factory=list)  # wall-clock seconds per request
    cpu: list[float] = field(default_factory=list)  # CPU seconds of the process (all threads) per request

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.samples, n=10, method="inclusive")[8]

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu)


async def timed(run: Callable[[Case], Awaitable[str]], case: Case, into: Samples) -> None:
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    await run(case)
    into.samples.append(time.perf_counter() - start)
    into.cpu.append(time.process_time() - cpu)


async def interleave(
    plan: dict[str, tuple[Callable[[Case], Awaitable[str]], Case]], reps: int, warmup: int
) -> dict[str, Samples]:
    """Run every entry of `plan` `reps` times, one repetition of each after the other, rotating the order."""
    names = list(plan)
    for _ in range(warmup):
        for name in names:
            run, case = plan[name]
            await run(case)
    results = {name: Samples() for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            run, case = plan[name]
            await timed(run, case, results[name])
    return results


def ratio(results: dict[str, Samples], a: str, b: str, cpu: bool = False) -> float:
    """Median over repetitions of a/b (the two ran in the same repetition), of wall-clock or CPU times."""
    xs, ys = (results[a].cpu, results[b].cpu) if cpu else (results[a].samples, results[b].samples)
    return statistics.median(x / y for x, y in zip(xs, ys, strict=True))


def summary(results: dict[str, Samples], name: str) -> JSONDict:
    s = results[name]
    return {"median_ms": s.median * 1000, "p90_ms": s.p90 * 1000, "cpu_median_ms": s.cpu_median * 1000}


# Reporting.


def machine() -> JSONDict:
    def sh(cmd: str) -> str:
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    mem_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    api_dir = Path(api.__file__).resolve().parent
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(api_dir.glob("*.py")))).hexdigest()[:12]
    repo = Path(__file__).resolve().parent.parent
    packages = ("strawberry-graphql", "graphql-core", "databases", "aiosqlite", "SQLAlchemy", "starlette", "httpx")
    return {
        "nproc": os.cpu_count(),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip(),
        "ram_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
        "load_before": os.getloadavg(),
        "packages": {p: metadata.version(p) for p in packages},
        "api": {"path": str(api_dir), "sha256_of_py_files": digest},
        "repo_head": sh(f"git -C {repo} rev-parse --short HEAD"),
        "repo_api_changes": sh(f"git -C {repo} status --porcelain -- api"),
    }


def describe_db(path: Path) -> str:
    db = _ro_sqlite(path)
    try:
        counts = [
            db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
            for t in ("Patient", "Study", "Series", "SliceMetadata")
        ]
    finally:
        db.close()
    size = path.stat().st_size / 1e6
    return f"{counts[0]:,} patients, {counts[1]:,} studies, {counts[2]:,} series, {counts[3]:,} slices ({size:.0f} MB)"


def query_plans(path: Path, recording: Recording) -> list[list[str]]:
    """EXPLAIN QUERY PLAN of every statement the API ran for a query, in its order."""
    db = _ro_sqlite(path)
    try:
        return [
            [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", json.loads(values))]
            for sql, values in recording.rows
        ]
    finally:
        db.close()


Plan = dict[str, tuple[Callable[[Case], Awaitable[str]], Case]]
VARIANTS = ("api", "http", "sql", "aiosqlite", "memory", "rows")
FLOORS = ("memory", "sql", "aiosqlite", "rows")


async def bench_main(path: Path, cases: list[Case], reps: int, warmup: int) -> JSONDict:
    """Every variant of every query on one database, interleaved."""
    target = Target("main", path)
    await target.open()
    try:
        plan: Plan = {}
        statements: dict[str, int] = {}
        plans: dict[str, list[list[str]]] = {}
        for case in cases:
            recording = await record(target, case)
            statements[case.name] = recording.statements
            plans[case.name] = query_plans(path, recording)
            expected = json.loads(recording.answer)
            runs = {
                "api": target.api,
                "http": target.over_http,
                "sql": target.sql,
                "aiosqlite": target.async_sql,
                "memory": memory_variant(target, recording),
                "rows": rows_variant(target, recording),
            }
            for name, run in runs.items():
                before = target.db.statements
                if json.loads(await run(case)) != expected:
                    raise SystemExit(f"{case.name}: the {name} variant does not answer what the API answers")
                if name in ("memory", "rows") and target.db.statements != before:
                    raise SystemExit(f"{case.name}: the {name} variant ran SQL")
                plan[f"{case.name}/{name}"] = (run, case)
        results = await interleave(plan, reps, warmup)
    finally:
        await target.close()
    table = []
    for case in cases:
        row: JSONDict = {"query": case.name, "statements": statements[case.name]}
        for variant in VARIANTS:
            row[variant] = summary(results, f"{case.name}/{variant}")
        for floor in FLOORS:
            row[f"api/{floor}"] = ratio(results, f"{case.name}/api", f"{case.name}/{floor}")
            row[f"api/{floor} cpu"] = ratio(results, f"{case.name}/api", f"{case.name}/{floor}", cpu=True)
        row["http/api"] = ratio(results, f"{case.name}/http", f"{case.name}/api")
        table.append(row)
    return {
        "statements": statements,
        "plans": plans,
        "table": table,
        "samples": {name: {"wall": s.samples, "cpu": s.cpu} for name, s in results.items()},
    }


async def bench_scales(scales: list[tuple[str, Path]], cases: list[Case], reps: int, warmup: int) -> JSONDict:
    """The api and sql variants of every query on every database, interleaved."""
    targets = [Target(n, p) for n, p in scales]
    for t in targets:
        await t.open()
    plans: dict[str, dict[str, list[list[str]]]] = {}
    try:
        plan: Plan = {}
        for case in cases:
            for t in targets:
                recording = await record(t, case)
                if json.loads(await t.sql(case)) != json.loads(recording.answer):
                    raise SystemExit(f"{case.name} on {t.name}: the sql floor does not answer what the API answers")
                plans.setdefault(t.name, {})[case.name] = query_plans(t.path, recording)
                plan[f"{case.name}/{t.name}/api"] = (t.api, case)
                plan[f"{case.name}/{t.name}/sql"] = (t.sql, case)
        results = await interleave(plan, reps, warmup)
    finally:
        for t in targets:
            await t.close()
    first, last = scales[0][0], scales[-1][0]
    table = []
    for case in cases:
        row: JSONDict = {"query": case.name}
        for n, _ in scales:
            for variant in ("api", "sql"):
                row[f"{n}/{variant}"] = summary(results, f"{case.name}/{n}/{variant}")
        for variant in ("api", "sql"):
            row[f"growth {variant}"] = ratio(results, f"{case.name}/{last}/{variant}", f"{case.name}/{first}/{variant}")
            row[f"growth {variant} cpu"] = ratio(
                results, f"{case.name}/{last}/{variant}", f"{case.name}/{first}/{variant}", cpu=True
            )
        table.append(row)
    return {
        "databases": {n: {"path": str(p), "rows": describe_db(p)} for n, p in scales},
        "plans": plans,
        "table": table,
        "samples": {name: {"wall": s.samples, "cpu": s.cpu} for name, s in results.items()},
    }


async def profile(path: Path, cases: list[Case], folder: Path, runs: int = 20) -> None:
    """cProfile of `runs` api requests of every query: FOLDER/<query>.prof, and the top of it in .txt."""
    folder.mkdir(parents=True, exist_ok=True)
    target = Target("profile", path)
    await target.open()
    try:
        for case in cases:
            for _ in range(3):
                await target.api(case)
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(runs):
                await target.api(case)
            profiler.disable()
            profiler.dump_stats(folder / f"{case.name}.prof")
            with open(folder / f"{case.name}.txt", "w") as out:
                stats = pstats.Stats(profiler, stream=out)
                stats.sort_stats("tottime").print_stats(40)
                stats.sort_stats("cumulative").print_stats(60)
    finally:
        await target.close()


async def main_async(args: argparse.Namespace) -> JSONDict:
    main_db = Path(args.db)
    scales = [(n, Path(p)) for n, p in (s.split("=", 1) for s in args.scale)]
    smallest = min([main_db, *(p for _, p in scales)], key=lambda p: p.stat().st_size)
    cases = pick_cases(smallest, args.tree_slices)
    report: JSONDict = {
        "command": " ".join(sys.argv),
        "machine": machine(),
        "database": {"path": str(main_db), "rows": describe_db(main_db)},
        "parameters": {c.name: c.variables for c in cases},
        "queries": {c.name: c.query for c in cases},
        "reps": args.reps,
        "warmup": args.warmup,
    }
    started = time.perf_counter()
    report["main"] = await bench_main(main_db, cases, args.reps, args.warmup)
    if scales:
        report["scales"] = await bench_scales(scales, cases, args.reps, args.warmup)
    report["seconds"] = time.perf_counter() - started
    if args.profile:
        await profile(main_db, cases, args.profile)
    report["machine"]["load_after"] = os.getloadavg()
    return report


def print_report(report: JSONDict) -> None:
    m = report["machine"]
    print(f"machine: {m['nproc']} cpus, {m['cpu']}, {m['ram_gib']} GiB, Python {m['python']}, SQLite {m['sqlite']}")
    print(
        f"api: {m['api']['path']} (sha256 of its .py files {m['api']['sha256_of_py_files']}); "
        f"repo HEAD {m['repo_head']}"
    )
    print(f"load average before {m['load_before']}, after {m['load_after']}; {report['seconds']:.0f} s")
    print(f"database: {report['database']['rows']}; {report['reps']} reps after {report['warmup']} warm-up runs")
    print(f"parameters: {json.dumps(report['parameters'])}")
    print()
    print("Wall-clock ms per request, median (p90); ratios are medians of per-repetition ratios (CPU-time ratio):")
    print()
    print(
        "| query | SQL statements | api | http | sql floor | aiosqlite floor | memory floor | rows replay "
        "| api/memory | api/sql | api/aiosqlite | api/rows |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for r in report["main"]["table"]:
        cells = [f"{r[v]['median_ms']:.2f} ({r[v]['p90_ms']:.2f})" for v in VARIANTS]
        ratios = [f"{r[f'api/{f}']:.2f} ({r[f'api/{f} cpu']:.2f})" for f in FLOORS]
        print(f"| {r['query']} | {r['statements']} | " + " | ".join(cells + ratios) + " |")
    print()
    print("CPU ms per request (process time, all threads), median:")
    print()
    print("| query | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "--:|" * len(VARIANTS))
    for r in report["main"]["table"]:
        print(f"| {r['query']} | " + " | ".join(f"{r[v]['cpu_median_ms']:.2f}" for v in VARIANTS) + " |")
    if "scales" in report:
        sc = report["scales"]
        names = list(sc["databases"])
        print()
        for n, d in sc["databases"].items():
            print(f"{n}: {d['rows']}")
        print()
        print("Wall-clock ms per request, median (p90); growth from the first to the last (CPU-time growth):")
        print()
        header = " | ".join(f"{n} api | {n} sql" for n in names)
        print(f"| query | {header} | growth api | growth sql |")
        print("|---|" + "--:|" * (2 * len(names) + 2))
        for r in sc["table"]:
            cells = [
                f"{r[f'{n}/{v}']['median_ms']:.2f} ({r[f'{n}/{v}']['p90_ms']:.2f})"
                for n in names
                for v in ("api", "sql")
            ]
            growth = [f"{r[f'growth {v}']:.2f}x ({r[f'growth {v} cpu']:.2f}x)" for v in ("api", "sql")]
            print(f"| {r['query']} | " + " | ".join(cells + growth) + " |")
        print()
        print("CPU ms per request, median:")
        print()
        print(f"| query | {header} |")
        print("|---|" + "--:|" * (2 * len(names)))
        for r in sc["table"]:
            cells = [f"{r[f'{n}/{v}']['cpu_median_ms']:.2f}" for n in names for v in ("api", "sql")]
            print(f"| {r['query']} | " + " | ".join(cells) + " |")
        last = names[-1]
        print()
        for query, plans in sc["plans"][last].items():
            print(f"query plans on {last}, {query}:")
            for i, lines in enumerate(plans):
                print(f"  statement {i + 1}: " + "; ".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", help="SQLite database filled by dicom-ingest (at least 100k slices)")
    parser.add_argument("--scale", action="append", default=[], metavar="NAME=DB", help="databases for the growth")
    parser.add_argument("--reps", type=int, default=50, help="timed repetitions of every variant (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs of every variant first (default 5)")
    parser.add_argument("--tree-slices", type=int, default=1000, help="slices in the tree query (default 1000)")
    parser.add_argument("--profile", type=Path, metavar="DIR", help="also write cProfile stats of api requests here")
    parser.add_argument("--json", type=Path, help="also write every sample and the tables to this file")
    args = parser.parse_args(argv)
    report = asyncio.run(main_async(args))
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
