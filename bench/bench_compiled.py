"""Compare the API's two execution paths (`--execution resolvers` and `--execution compiled`) in one run, on SQLite
and PostgreSQL, beside a plain-SQL + JSON floor, /healthz and Orthanc.

Usage (from the repository root, with the project's venv; databases and corpora live outside the repository):

    .venv/bin/python bench/bench_compiled.py \\
        --db sqlite=sqlite:////tmp/b12/bench10k.db \\
        --db postgresql=postgresql://postgres@127.0.0.1:5432/b12_10k \\
        --real sqlite=sqlite:////tmp/b12/real.db \\
        --real postgresql=postgresql://postgres@127.0.0.1:5432/b12_real \\
        --orthanc /work/shared/data/dcm_qa_nih/In \\
        [--reps 30] [--wrk-seconds 5] [--rounds 2] [--workers 1,2,2+nodelay] [--real-workers 1,2+nodelay] \\
        [--json FILE]
    .venv/bin/python bench/bench_compiled.py --tables FILE       # print the tables of an earlier --json FILE

Results, commands and the preparation of the databases: docs/benchmarks.md#compiled-execution-issue-12.

`--db` databases (a generated corpus, `bench/gen_corpus.py`, ingested by `dicom-ingest`) give the latency of the
tree query (bench_api.py's: one patient, exactly `--tree-slices` slices with 10 fields) and of a whole-patient walk
(the patient with the most slices, every column at every level), and wrk's requests/s for five shapes:

  healthz  GET /healthz (no database);
  lookup   `patient(patientId:)` with four fields;
  page     `allSeries(where: {modality: {eq: M}}, first: 5)` with totalCount and four fields (M: the most common);
  facet    `allSeries { totalCount groupBy(field: MODALITY) { value count } }`;
  nested   10 patients > 10 studies > 10 series > 3 slices (`first` at every level).

`--real` databases (real scanner files ingested) give the walk of their largest patient and two finds, beside
Orthanc (Debian's `orthanc` package; `--orthanc DIR` uploads DIR's files into a fresh Orthanc with a temporary
configuration and storage, on port 8142, and stops it at the end):

  walk        ours: the whole patient, every column; Orthanc: POST /tools/bulk-content of the patient, level Instance;
  series      ours: `allSeries(where: {modality: {eq: M}}, first: 5)` with every series column; Orthanc: POST
              /tools/find level Series, Modality M, Expand, Limit 5;
  study       ours: `study(studyInstanceUid:)` with every study column; Orthanc: POST /tools/find level Study by
              StudyInstanceUID, Expand.

For each database: a real `dicom-api` per path (uvicorn, 127.0.0.1, `--workers 1` for latency) is started; every
benchmark query is first sent to both and the responses compared byte for byte (status, content type, body), and
sent in-process to an app with `execution="compiled"` to check from `app.state.compiled.outcomes` that the
compiled path answered it itself. Latency: `--reps` repetitions after warm-up, the variants of a repetition back
to back in a rotating order (resolvers, compiled, the floor, Orthanc), one keep-alive connection per server;
medians, p90 and medians of per-repetition ratios. The floor is plain SQL (sqlite3 on a read-only connection, or
asyncpg) fetching the same rows (4 statements: patient, studies, series, slices), then dicts with the same keys
and values, then `json.dumps`; its SQL part alone is reported too. Throughput: for each worker count and
`--rounds` rounds, one server per path in a rotating order, each shape under `wrk -t2 -c8 --latency` for
`--wrk-seconds` in a rotating order; medians over rounds, ratios to /healthz of the same server. The load average
is recorded around every wrk run.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from starlette.testclient import TestClient

from dicom_db.api.app import create_app
from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, Column, Kind, Table
from dicom_db.api.settings import Settings

sys.path.insert(0, str(Path(__file__).parent))
from bench_api import TREE, tree_with  # noqa: E402  (the tree query of docs/benchmarks.md#api, its choice)

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PATHS = ("resolvers", "compiled")
JSONDict = dict[str, Any]
ORTHANC_PORT = 8142


# Plain SQL: one fetch function for both dialects (`?` placeholders; asyncpg gets `$n`).


class Floor:
    """A plain connection to the database, outside the API: sqlite3 (read-only) or asyncpg."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1]
            self.sqlite: sqlite3.Connection | None = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            self.pg: asyncpg.Connection | None = None
        else:
            self.sqlite = None
            self.pg = self.loop.run_until_complete(asyncpg.connect(url))

    def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[Sequence[Any]]:
        if self.sqlite is not None:
            return self.sqlite.execute(sql, params).fetchall()
        assert self.pg is not None
        counter = iter(range(1, len(params) + 1))
        text = re.sub(r"\?", lambda _: f"${next(counter)}", sql)
        return self.loop.run_until_complete(self.pg.fetch(text, *params))

    def close(self) -> None:
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            self.loop.run_until_complete(self.pg.close())
        self.loop.close()


def _floats(text: str) -> list[float] | None:
    try:
        return [float(v) for v in text.split("\\")]
    except ValueError:
        return None


def _int(text: str) -> int | None:
    try:
        return int(text.strip())
    except ValueError:
        return None


CONVERT: dict[Kind, Callable[[Any], Any]] = {
    Kind.BOOL: bool,
    Kind.FLOAT_LIST: _floats,
    Kind.STRING_LIST: lambda v: v.split("\\"),
    Kind.INT_TEXT: _int,
}


@dataclass(frozen=True)
class Levels:
    """The columns asked at each level of a patient's tree, in GraphQL order."""

    patient: tuple[Column, ...]
    study: tuple[Column, ...]
    series: tuple[Column, ...]
    slice: tuple[Column, ...]


def _pick(table: Table, names: str) -> tuple[Column, ...]:
    by_field = {c.field_name: c for c in table.columns}
    return tuple(by_field[n] for n in names.split())


TREE_LEVELS = Levels(
    _pick(PATIENT, "patientId patientName patientSex patientBirthDate"),
    _pick(STUDY, "studyInstanceUid studyDate studyDescription"),
    _pick(SERIES, "seriesInstanceUid modality seriesDescription sliceThickness"),
    _pick(
        SLICE,
        "sliceId sopInstanceUid sliceNumber sliceLocation sliceThickness acquisitionDate acquisitionTime "
        "rescaleIntercept rescaleSlope imagePositionPatient",
    ),
)
WALK_LEVELS = Levels(PATIENT.columns, STUDY.columns, SERIES.columns, SLICE.columns)


def _select(columns: Sequence[Column]) -> str:
    return ", ".join(f'"{c.value_column or c.name}"' for c in columns)


def _obj(columns: Sequence[Column], row: Sequence[Any], start: int) -> JSONDict:
    out = {}
    for i, c in enumerate(columns, start):
        value = row[i]
        if value is not None and c.kind in CONVERT:
            value = CONVERT[c.kind](value)
        out[c.field_name] = value
    return out


def _marks(n: int) -> str:
    return ", ".join("?" * n)


def floor_tree(db: Floor, levels: Levels, patient_id: str, per_series: int) -> tuple[str, float]:
    """The patient's tree as JSON text, and the seconds its 4 statements took (the database and driver alone)."""
    t0 = time.perf_counter()
    patients = db.fetch(f'SELECT {_select(levels.patient)} FROM "Patient" WHERE "PatientID" = ?', (patient_id,))
    studies = db.fetch(
        f'SELECT "StudyInstanceUID", {_select(levels.study)} FROM "Study" WHERE "PatientID" = ? '
        'ORDER BY "StudyInstanceUID"',
        (patient_id,),
    )
    study_uids = [s[0] for s in studies]
    series = db.fetch(
        f'SELECT "StudyInstanceUID", "SeriesInstanceUID", {_select(levels.series)} FROM "Series" '
        f'WHERE "StudyInstanceUID" IN ({_marks(len(study_uids))}) ORDER BY "SeriesInstanceUID"',
        study_uids,
    )
    series_uids = [s[1] for s in series]
    slices = db.fetch(
        f'SELECT "SeriesInstanceUID", {_select(levels.slice)} FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY '
        '"SeriesInstanceUID" ORDER BY "SliceNumber" NULLS LAST, "SliceID") AS rn FROM "SliceMetadata" '
        f'WHERE "SeriesInstanceUID" IN ({_marks(len(series_uids))})) AS t WHERE rn <= ? '
        'ORDER BY "SeriesInstanceUID", rn',
        [*series_uids, per_series],
    )
    sql_seconds = time.perf_counter() - t0
    by_series: dict[str, list[JSONDict]] = {uid: [] for uid in series_uids}
    for row in slices:
        by_series[row[0]].append(_obj(levels.slice, row, 1))
    by_study: dict[str, list[JSONDict]] = {uid: [] for uid in study_uids}
    for row in series:
        node = _obj(levels.series, row, 2)
        node["slices"] = {"nodes": by_series[row[1]]}
        by_study[row[0]].append(node)
    study_nodes = []
    for row in studies:
        node = _obj(levels.study, row, 1)
        node["series"] = {"nodes": by_study[row[0]]}
        study_nodes.append(node)
    patient = _obj(levels.patient, patients[0], 0)
    patient["studies"] = {"nodes": study_nodes}
    return json.dumps({"data": {"patient": patient}}), sql_seconds


def tree_query(levels: Levels, studies: int, series: int, slices: int) -> str:
    def names(columns: Sequence[Column]) -> str:
        return " ".join(c.field_name for c in columns)

    return (
        f"query Walk($patientId: String!) {{ patient(patientId: $patientId) {{ {names(levels.patient)} "
        f"studies(first: {studies}) {{ nodes {{ {names(levels.study)} "
        f"series(first: {series}) {{ nodes {{ {names(levels.series)} "
        f"slices(first: {slices}) {{ nodes {{ {names(levels.slice)} }} }} }} }} }} }} }} }}"
    )


# The cases.


@dataclass
class Case:
    name: str
    query: str
    variables: JSONDict = field(default_factory=dict)
    floor: Callable[[], tuple[str, float]] | None = None  # JSON text, seconds of SQL
    orthanc: tuple[str, str, bytes | None] | None = None  # method, path, body
    rows: str = ""  # what the answer holds, for the report


def _first_row(db: Floor, sql: str, params: Sequence[Any] = ()) -> Sequence[Any]:
    rows = db.fetch(sql, params)
    if not rows:
        raise SystemExit(f"no row for {sql}")
    return rows[0]


def largest_patient(db: Floor) -> tuple[str, int, int, int, int]:
    """The patient with the most slices: id, slices, and the most studies / series / slices under one parent."""
    patient, total = _first_row(
        db,
        'SELECT t."PatientID", COUNT(*) FROM "SliceMetadata" m JOIN "Series" s ON s."SeriesInstanceUID" = '
        'm."SeriesInstanceUID" JOIN "Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" '
        'GROUP BY t."PatientID" ORDER BY 2 DESC, 1 LIMIT 1',
    )
    studies = _first_row(db, 'SELECT COUNT(*) FROM "Study" WHERE "PatientID" = ?', (patient,))[0]
    series = _first_row(
        db,
        'SELECT COUNT(*) FROM "Series" s JOIN "Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" '
        'WHERE t."PatientID" = ? GROUP BY s."StudyInstanceUID" ORDER BY 1 DESC LIMIT 1',
        (patient,),
    )[0]
    slices = _first_row(
        db,
        'SELECT COUNT(*) FROM "SliceMetadata" m JOIN "Series" s ON s."SeriesInstanceUID" = m."SeriesInstanceUID" '
        'JOIN "Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" WHERE t."PatientID" = ? '
        'GROUP BY m."SeriesInstanceUID" ORDER BY 1 DESC LIMIT 1',
        (patient,),
    )[0]
    return patient, total, studies, series, slices


def common_modality(db: Floor) -> str:
    return _first_row(db, 'SELECT "Modality", COUNT(*) FROM "Series" GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1')[0]


def walk_case(db: Floor) -> Case:
    patient, total, studies, series, slices = largest_patient(db)
    return Case(
        "walk",
        tree_query(WALK_LEVELS, studies, series, slices),
        {"patientId": patient},
        lambda: floor_tree(db, WALK_LEVELS, patient, slices),
        rows=f"patient {patient}: {total} slices, every column",
    )


def pick_tree(db: Floor, wanted: int) -> JSONDict:
    """bench_api.py's choice: a patient and a per-series cap whose slices add up to exactly `wanted`, the largest
    cap first, then the smallest PatientID."""
    sizes: dict[str, list[int]] = {}
    for patient, n in db.fetch(
        'SELECT t."PatientID", COUNT(*) FROM "SliceMetadata" m JOIN "Series" s ON s."SeriesInstanceUID" = '
        'm."SeriesInstanceUID" JOIN "Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID" '
        'GROUP BY t."PatientID", s."SeriesInstanceUID" ORDER BY 1'
    ):
        sizes.setdefault(patient, []).append(n)
    return tree_with(sizes, wanted)


def latency_cases(db: Floor, tree_slices: int) -> list[Case]:
    tree = pick_tree(db, tree_slices)
    return [
        Case(
            "tree",
            TREE,
            tree,
            lambda: floor_tree(db, TREE_LEVELS, tree["patientId"], tree["perSeries"]),
            rows=f"patient {tree['patientId']}: {tree_slices} slices, 10 fields",
        ),
        walk_case(db),
    ]


def wrk_cases(db: Floor) -> list[Case]:
    patient = _first_row(db, 'SELECT "PatientID" FROM "Patient" ORDER BY 1 LIMIT 1')[0]
    modality = common_modality(db)
    return [
        Case("healthz", ""),
        Case(
            "lookup",
            f'{{ patient(patientId: "{patient}") {{ patientId patientName patientSex patientBirthDate }} }}',
        ),
        Case(
            "page",
            f'{{ allSeries(where: {{modality: {{eq: "{modality}"}}}}, first: 5) {{ totalCount '
            "nodes { seriesInstanceUid modality seriesDescription sliceThickness } } }",
        ),
        Case("facet", "{ allSeries { totalCount groupBy(field: MODALITY) { value count } } }"),
        Case(
            "nested",
            "{ allPatients(first: 10) { nodes { patientId studies(first: 10) { nodes { studyInstanceUid "
            "series(first: 10) { nodes { seriesInstanceUid modality slices(first: 3) { nodes { sliceId "
            "sopInstanceUid } } } } } } } } }",
        ),
    ]


def orthanc_cases(db: Floor, orthanc_patient: str | None) -> list[Case]:
    walk = walk_case(db)
    if orthanc_patient:
        body = {"Resources": [orthanc_patient], "Level": "Instance"}
        walk.orthanc = ("POST", "/tools/bulk-content", json.dumps(body).encode())
    modality = common_modality(db)
    study = _first_row(db, 'SELECT "StudyInstanceUID" FROM "Study" ORDER BY 1 LIMIT 1')[0]
    series_fields = " ".join(c.field_name for c in SERIES.columns)
    study_fields = " ".join(c.field_name for c in STUDY.columns)
    series = Case(
        "series",
        f'{{ allSeries(where: {{modality: {{eq: "{modality}"}}}}, first: 5) {{ nodes {{ {series_fields} }} }} }}',
        rows=f"5 series of modality {modality}, every column",
    )
    study_case = Case(
        "study", f'{{ study(studyInstanceUid: "{study}") {{ {study_fields} }} }}', rows="1 study, every column"
    )
    if orthanc_patient:
        find = {"Level": "Series", "Query": {"Modality": modality}, "Expand": True, "Limit": 5}
        series.orthanc = ("POST", "/tools/find", json.dumps(find).encode())
        find = {"Level": "Study", "Query": {"StudyInstanceUID": study}, "Expand": True}
        study_case.orthanc = ("POST", "/tools/find", json.dumps(find).encode())
    return [walk, series, study_case]


# Servers.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{url}: the server exited with {process.returncode}; its log: {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {seconds} s; log: {log}")


# Diagnostic: uvicorn's supervisor (`--workers` N > 1) binds the listening socket itself with `proto` 0, so asyncio
# does not set TCP_NODELAY on the accepted connections and every keep-alive request after the first waits for the
# client's delayed ACK (about 40 ms on Linux; Kludex/uvicorn#3149). This runs `dicom-api` unchanged, with uvicorn's
# `Config.bind_socket` giving the same socket back as IPPROTO_TCP, to show what the workers do without that wait.
NODELAY_WRAPPER = """
import socket, sys
import uvicorn.config
bind = uvicorn.config.Config.bind_socket
def bind_tcp(self):
    sock = bind(self)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, fileno=sock.detach())
        sock.set_inheritable(True)
    return sock
uvicorn.config.Config.bind_socket = bind_tcp
from dicom_db.api.cli import main
sys.argv[0] = "dicom-api"
main()
"""


class Server:
    def __init__(self, url: str, execution: str, workers: str, scratch: Path) -> None:
        """`workers`: a count, or a count and "+nodelay" (`dicom-api` started through NODELAY_WRAPPER)."""
        self.port = free_port()
        self.execution, self.workers = execution, workers
        self.log = scratch / f"dicom-api-{execution}-{workers}-{self.port}.log"
        count, _, variant = workers.partition("+")
        start = [sys.executable, "-c", NODELAY_WRAPPER] if variant == "nodelay" else [str(VENV_BIN / "dicom-api")]
        command = [
            *start,
            *("--db", url, "--port", str(self.port), "--workers", count),
            *("--execution", execution, "--log-level", "warning"),
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_API_")}
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        wait_for(f"http://127.0.0.1:{self.port}/healthz", 60, self.process, self.log)
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.reconnects = 0  # keep-alive connections uvicorn closed after its idle timeout (5 s)

    def post(self, case: Case) -> tuple[int, str, bytes]:
        body = json.dumps({"query": case.query, "variables": case.variables}).encode()
        headers = {"Content-Type": "application/json"}
        try:
            self.conn.request("POST", "/graphql", body, headers)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.reconnects += 1
            self.conn.close()
            self.conn.request("POST", "/graphql", body, headers)
            r = self.conn.getresponse()
        return r.status, r.getheader("content-type") or "", r.read()

    def stop(self) -> None:
        self.conn.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Orthanc:
    """A fresh Orthanc (Debian's /usr/sbin/Orthanc) with a temporary configuration and storage."""

    def __init__(self, files: Path, scratch: Path) -> None:
        self.dir = scratch / "orthanc"
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.dir / "storage").mkdir(parents=True)
        config = {
            "Name": "bench",
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "storage"),
            "HttpPort": ORTHANC_PORT,
            "DicomPort": free_port(),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "KeepAlive": True,
            "KeepAliveTimeout": 3600,  # seconds; Orthanc's default (1) would close the timed connection
            "StorageCompression": False,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(config))
        self.log = self.dir / "orthanc.log"
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(
                ["/usr/sbin/Orthanc", str(self.dir / "orthanc.json")], stdout=out, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{ORTHANC_PORT}"
        wait_for(f"{base}/system", 60, self.process, self.log)
        self.version = json.loads(urllib.request.urlopen(f"{base}/system").read())["Version"]
        self.conn = http.client.HTTPConnection("127.0.0.1", ORTHANC_PORT, timeout=60)
        self.reconnects = 0  # keep-alive connections Orthanc closed (a timed request then paid a new connection)
        stored = refused = 0
        for path in sorted(p for p in files.rglob("*") if p.is_file()):
            self.conn.request("POST", "/instances", path.read_bytes(), {"Content-Type": "application/dicom"})
            r = self.conn.getresponse()
            r.read()
            stored, refused = (stored + 1, refused) if r.status == 200 else (stored, refused + 1)
        self.uploaded = (stored, refused)
        self.stats = self.get("/statistics")
        patients = self.get("/patients")
        self.patient = patients[0] if len(patients) == 1 else None

    def get(self, path: str) -> Any:
        self.conn.request("GET", path)
        return json.loads(self.conn.getresponse().read())

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body else {}
        try:
            self.conn.request(method, path, body, headers)
            r = self.conn.getresponse()
        except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
            self.reconnects += 1
            self.conn.close()
            self.conn.request(method, path, body, headers)
            r = self.conn.getresponse()
        return r.status, r.read()

    def stop(self) -> None:
        self.conn.close()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# Checks: the same bytes from both paths, and the compiled path answering itself.


def compare(servers: dict[str, Server], cases: list[Case]) -> dict[str, str]:
    out = {}
    for case in cases:
        if not case.query:
            continue
        answers = {name: s.post(case) for name, s in servers.items()}
        status, _, body = answers["resolvers"]
        ok = status == 200 and b'"errors"' not in body
        same = answers["resolvers"] == answers["compiled"]
        out[case.name] = ("identical" if same else "DIFFERENT") + ("" if ok else f" (status {status}, errors)")
        if not same:
            a, b = answers["resolvers"][2], answers["compiled"][2]
            at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
            out[case.name] += f" at byte {at}: {a[at - 80 : at + 80]!r} vs {b[at - 80 : at + 80]!r}"
    return out


def compiled_outcomes(url: str, cases: list[Case]) -> dict[str, str]:
    out = {}
    with TestClient(create_app(Settings(database_url=url, execution="compiled"))) as client:
        outcomes = client.app.state.compiled.outcomes  # type: ignore[attr-defined]
        for case in cases:
            if not case.query:
                continue
            before = dict(outcomes)
            client.post("/graphql", json={"query": case.query, "variables": case.variables})
            delta = {k: v - before.get(k, 0) for k, v in outcomes.items() if v != before.get(k, 0)}
            out[case.name] = ", ".join(f"{k}: {v}" for k, v in delta.items()) or "not seen by the compiled path"
    return out


# Latency.


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def latency(servers: dict[str, Server], case: Case, reps: int, warmup: int, orthanc: Orthanc | None) -> JSONDict:
    variants: dict[str, Callable[[], float]] = {}
    for name, server in servers.items():

        def run(server: Server = server) -> float:
            t = time.perf_counter()
            status, _, _ = server.post(case)
            assert status == 200
            return time.perf_counter() - t

        variants[name] = run
    sql_times: list[float] = []
    floor_check = None
    if case.floor is not None:
        floor = case.floor

        def run_floor() -> float:
            t = time.perf_counter()
            _, sql_seconds = floor()
            elapsed = time.perf_counter() - t
            sql_times.append(sql_seconds)
            return elapsed

        variants["floor"] = run_floor
        text, _ = floor()
        api = json.loads(servers["resolvers"].post(case)[2])
        floor_check = "same JSON as the API" if json.loads(text) == api else _diff(json.loads(text), api)
    if orthanc is not None and case.orthanc is not None:
        method, path, body = case.orthanc

        def run_orthanc() -> float:
            t = time.perf_counter()
            status, _ = orthanc.request(method, path, body)
            assert status == 200, status
            return time.perf_counter() - t

        variants["orthanc"] = run_orthanc
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    sql_times.clear()
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            samples[name].append(variants[name]())
    out: JSONDict = {"rows": case.rows, "floor_check": floor_check}
    for name in names:
        out[name] = {"median_ms": _ms(statistics.median(samples[name])), "p90_ms": _ms(_p90(samples[name]))}
    if sql_times:
        out["floor_sql"] = {"median_ms": _ms(statistics.median(sql_times)), "p90_ms": _ms(_p90(sql_times))}
    ratios = {}
    for a, b in [("resolvers", "floor"), ("compiled", "floor"), ("compiled", "resolvers"), ("floor_sql", "floor")]:
        if a == "floor_sql" and sql_times:
            ratios[f"{a}/{b}"] = round(statistics.median(x / y for x, y in zip(sql_times, samples[b], strict=True)), 3)
        elif a in samples and b in samples:
            ratios[f"{a}/{b}"] = round(statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True)), 3)
    if "orthanc" in samples:
        for a in PATHS:
            ratios[f"{a}/orthanc"] = round(
                statistics.median(x / y for x, y in zip(samples[a], samples["orthanc"], strict=True)), 3
            )
    out["ratios"] = ratios
    return out


def _diff(a: Any, b: Any, path: str = "") -> str:
    if type(a) is not type(b):
        return f"differs at {path or '/'}: floor {a!r:.80} vs API {b!r:.80}"
    if isinstance(a, dict):
        for k in a.keys() | b.keys():
            if a.get(k, "<missing>") != b.get(k, "<missing>"):
                return _diff(a.get(k, "<missing>"), b.get(k, "<missing>"), f"{path}/{k}")
    if isinstance(a, list):
        if len(a) != len(b):
            return f"differs at {path}: {len(a)} vs {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _diff(x, y, f"{path}/{i}")
    return f"differs at {path}: floor {a!r:.80} vs API {b!r:.80}"


# Throughput.

LUA = """wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""


def loadavg() -> float:
    return os.getloadavg()[0]


def run_wrk(url: str, script: Path | None, seconds: int, connections: int = 8) -> JSONDict:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "30s"]
    if script is not None:
        command += ["-s", str(script)]
    before = loadavg()
    text = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "rps": rps,
        "p50_ms": round(float(p50.group(1)) * scale[p50.group(2)], 2) if p50 else None,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "load": [round(before, 2), round(loadavg(), 2)],
    }


def _cpu_ticks(pid: int) -> int:
    """CPU time (clock ticks) of a process and its descendants: a server with --workers N is a tree."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def wait_idle(pid: int, limit: float = 120.0) -> float:
    """Wait until the server has finished the requests wrk left behind (wrk stops sending, the server goes on
    with what it had queued): at most 2 ticks of CPU in 0.5 s. Returns the seconds waited."""
    start = time.monotonic()
    before = _cpu_ticks(pid)
    while time.monotonic() - start < limit:
        time.sleep(0.5)
        now = _cpu_ticks(pid)
        if now - before <= 2:
            break
        before = now
    return round(time.monotonic() - start, 1)


def lua_script(scratch: Path, name: str, body: bytes) -> Path:
    path = scratch / f"{name}.lua"
    path.write_text(LUA.format(body=json.dumps(body.decode())))
    return path


def throughput(
    url: str, cases: list[Case], scratch: Path, workers: list[str], rounds: int, seconds: int
) -> dict[str, Any]:
    scripts: dict[str, tuple[str, Path | None]] = {}
    for case in cases:
        if case.query:
            body = json.dumps({"query": case.query, "variables": case.variables}).encode()
            scripts[case.name] = ("/graphql", lua_script(scratch, case.name, body))
        else:
            scripts[case.name] = ("/healthz", None)
    runs: dict[str, list[JSONDict]] = {}
    names = list(scripts)
    for n in workers:
        for r in range(rounds):
            paths = PATHS if r % 2 == 0 else PATHS[::-1]
            for execution in paths:
                server = Server(url, execution, n, scratch)
                try:
                    for name in names:  # warm every worker's caches and connections
                        run_wrk(f"http://127.0.0.1:{server.port}{scripts[name][0]}", scripts[name][1], 1)
                        wait_idle(server.process.pid)
                    shift = r % len(names)
                    for name in names[shift:] + names[:shift]:
                        path, script = scripts[name]
                        result = run_wrk(f"http://127.0.0.1:{server.port}{path}", script, seconds)
                        result["drain_s"] = wait_idle(server.process.pid)
                        runs.setdefault(f"{execution}/{n}/{name}", []).append(result)
                        print(f"  wrk {execution} workers={n} {name}: {result}", flush=True)
                finally:
                    server.stop()
    summary: dict[str, Any] = {}
    for n in workers:
        for execution in PATHS:
            health = statistics.median(x["rps"] for x in runs[f"{execution}/{n}/healthz"])
            for name in names:
                results = runs[f"{execution}/{n}/{name}"]
                rps = statistics.median(x["rps"] for x in results)
                summary[f"{execution}/{n}/{name}"] = {
                    "rps": round(rps, 1),
                    "ratio_healthz": round(rps / health, 4),
                    "p50_ms": statistics.median(x["p50_ms"] for x in results if x["p50_ms"] is not None),
                    "non_2xx": sum(x["non_2xx"] for x in results),
                    "socket_errors": [x["socket_errors"] for x in results if x["socket_errors"]],
                    "rounds": [x["rps"] for x in results],
                    "load": [x["load"] for x in results],
                }
    return {"summary": summary, "runs": runs}


def orthanc_throughput(orthanc: Orthanc, cases: list[Case], scratch: Path, rounds: int, seconds: int) -> JSONDict:
    out: JSONDict = {}
    targets: list[tuple[str, str, Path | None]] = [("system", "/system", None)]
    for case in cases:
        if case.orthanc and case.name != "walk":
            method, path, body = case.orthanc
            targets.append((case.name, path, lua_script(scratch, f"orthanc-{case.name}", body or b"")))
    for _, path, script in targets:
        run_wrk(f"http://127.0.0.1:{ORTHANC_PORT}{path}", script, 1)
        wait_idle(orthanc.process.pid)
    for r in range(rounds):
        for name, path, script in targets[r % len(targets) :] + targets[: r % len(targets)]:
            result = run_wrk(f"http://127.0.0.1:{ORTHANC_PORT}{path}", script, seconds)
            result["drain_s"] = wait_idle(orthanc.process.pid)
            out.setdefault(name, []).append(result)
            print(f"  wrk orthanc {name}: {result}", flush=True)
    health = statistics.median(x["rps"] for x in out["system"])
    return {
        name: {
            "rps": round(statistics.median(x["rps"] for x in results), 1),
            "ratio_system": round(statistics.median(x["rps"] for x in results) / health, 4),
            "non_2xx": sum(x["non_2xx"] for x in results),
            "rounds": [x["rps"] for x in results],
        }
        for name, results in out.items()
    }


# The run.


def machine() -> JSONDict:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")

    def version(command: list[str]) -> str:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=10)
            lines = (result.stdout or result.stderr).strip().splitlines()
            return lines[0] if lines else ""
        except (OSError, subprocess.TimeoutExpired):
            return "not found"

    git = ["git", "-C", str(ROOT)]
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "postgresql": version(["psql", "--version"]),
        "wrk": version(["wrk", "-v"]),
        "commit": version([*git, "rev-parse", "--short", "HEAD"]),
        "dirty": version([*git, "status", "--porcelain", "--", "api", "ingest"]) or "clean",
        "load_start": os.getloadavg(),
    }


def parse_named(values: list[str]) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, url = value.partition("=")
        if not sep:
            raise SystemExit(f"expected NAME=URL, got {value!r}")
        out.append((name, url))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", action="append", default=[], help="NAME=URL of a generated database")
    parser.add_argument("--real", action="append", default=[], help="NAME=URL of a database of real files")
    parser.add_argument("--orthanc", type=Path, help="the real files, uploaded into a fresh Orthanc")
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--tree-slices", type=int, default=1000)
    parser.add_argument("--wrk-seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--workers", default="1,2", help='worker counts for wrk; "2+nodelay": 2 with TCP_NODELAY (NODELAY_WRAPPER)'
    )
    parser.add_argument("--real-workers", help="worker counts for wrk on --real databases (default: --workers)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--tables", type=Path, help="only print the tables of an earlier run's --json FILE")
    args = parser.parse_args(argv)
    if args.tables:
        report = json.loads(args.tables.read_text())
        counts = report["args"]["workers"].split(",") + (report["args"].get("real_workers") or "").split(",")
        print_tables(report, [c for c in dict.fromkeys(counts) if c])
        return 0
    # Stopped with SIGTERM (or SIGINT, which a background job ignores): still stop the servers and Orthanc.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workers = args.workers.split(",")
    real_workers = (args.real_workers or args.workers).split(",")
    scratch = Path(tempfile.mkdtemp(prefix="bench_compiled."))
    report: JSONDict = {"machine": machine(), "args": vars(args) | {"orthanc": str(args.orthanc), "json": ""}}
    print(json.dumps(report["machine"]), flush=True)
    with ExitStack() as stack:
        orthanc = None
        if args.orthanc:
            if not Path("/usr/sbin/Orthanc").exists():
                print("Orthanc is not installed (apt-get install orthanc): not measured", flush=True)
            else:
                orthanc = Orthanc(args.orthanc, scratch)
                stack.callback(orthanc.stop)
                report["orthanc"] = {"version": orthanc.version, "uploaded": orthanc.uploaded, **orthanc.stats}
                print("orthanc", report["orthanc"], flush=True)
        for kind, named in (("db", parse_named(args.db)), ("real", parse_named(args.real))):
            for name, url in named:
                print(f"== {kind} {name}: {url}", flush=True)
                floor = Floor(url)
                stack.callback(floor.close)
                if kind == "db":
                    lat_cases, tput_cases = latency_cases(floor, args.tree_slices), wrk_cases(floor)
                else:
                    lat_cases = orthanc_cases(floor, orthanc.patient if orthanc else None)
                    tput_cases = [Case("healthz", ""), *lat_cases[1:]]
                entry: JSONDict = {"url": url, "compiled_outcomes": compiled_outcomes(url, lat_cases + tput_cases)}
                servers = {p: Server(url, p, "1", scratch) for p in PATHS}
                try:
                    entry["byte_compare"] = compare(servers, lat_cases + tput_cases)
                    print(" ", entry["compiled_outcomes"], entry["byte_compare"], flush=True)
                    use_orthanc = orthanc if kind == "real" else None
                    entry["latency"] = {}
                    for case in lat_cases:
                        entry["latency"][case.name] = latency(servers, case, args.reps, args.warmup, use_orthanc)
                        print(f"  {case.name}: {entry['latency'][case.name]}", flush=True)
                finally:
                    for s in servers.values():
                        s.stop()
                counts = workers if kind == "db" else real_workers
                entry["throughput"] = throughput(url, tput_cases, scratch, counts, args.rounds, args.wrk_seconds)
                if kind == "real" and orthanc is not None and name == parse_named(args.real)[0][0]:
                    report["orthanc_throughput"] = orthanc_throughput(
                        orthanc, lat_cases, scratch, args.rounds, args.wrk_seconds
                    )
                report[f"{kind}:{name}"] = entry
        if orthanc is not None:
            report["orthanc"]["reconnects"] = orthanc.reconnects
    report["machine"]["load_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print_tables(report, list(dict.fromkeys(workers + real_workers)))
    shutil.rmtree(scratch, ignore_errors=True)
    return 0


def print_tables(report: JSONDict, workers: list[str]) -> None:
    print(
        "\n| database | query | rows | resolvers ms | compiled ms | floor ms | floor SQL ms | resolvers/floor "
        "| compiled/floor | compiled/resolvers | Orthanc ms | compiled/Orthanc |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, entry in report.items():
        if not key.startswith(("db:", "real:")):
            continue
        for name, lat in entry["latency"].items():
            r = lat["ratios"]

            def cell(variant: str, lat: JSONDict = lat) -> str:
                return f"{lat[variant]['median_ms']} ({lat[variant]['p90_ms']})" if variant in lat else ""

            print(
                f"| {key} | {name} | {lat['rows']} | {cell('resolvers')} | {cell('compiled')} | {cell('floor')} | "
                f"{cell('floor_sql')} | {r.get('resolvers/floor', '')} | {r.get('compiled/floor', '')} | "
                f"{r.get('compiled/resolvers', '')} | {cell('orthanc')} | {r.get('compiled/orthanc', '')} |"
            )
    print(
        "\n| database | workers | shape | resolvers req/s | compiled req/s | compiled/resolvers | resolvers / "
        "healthz | compiled / healthz | p50 ms (res, comp) | non-2xx |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for key, entry in report.items():
        if not key.startswith(("db:", "real:")):
            continue
        summary = entry["throughput"]["summary"]
        for n in workers:
            shapes = [k.split("/")[2] for k in summary if k.startswith(f"resolvers/{n}/")]
            for shape in shapes:
                a, b = summary[f"resolvers/{n}/{shape}"], summary[f"compiled/{n}/{shape}"]
                gain = round(b["rps"] / a["rps"], 2) if a["rps"] else "-"
                print(
                    f"| {key} | {n} | {shape} | {a['rps']} | {b['rps']} | {gain} | "
                    f"{a['ratio_healthz']} | {b['ratio_healthz']} | {round(a['p50_ms'], 1)}, {round(b['p50_ms'], 1)} | "
                    f"{a['non_2xx'] + b['non_2xx']} |"
                )
    if "orthanc_throughput" in report:
        print("\n| Orthanc | req/s | / GET /system | non-2xx |")
        print("| --- | ---: | ---: | ---: |")
        for name, o in report["orthanc_throughput"].items():
            print(f"| {name} | {o['rps']} | {o['ratio_system']} | {o['non_2xx']} |")
    print("\nload average start", report["machine"]["load_start"], "end", report["machine"]["load_end"])


if __name__ == "__main__":
    sys.exit(main())
