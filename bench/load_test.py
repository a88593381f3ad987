"""Load test: concurrent GraphQL clients on loopback while `dicom-ingest` writes a new batch into the same database.

Usage (from the repository root, with the project's venv; corpora under corpus/ are git-ignored):

    .venv/bin/python bench/gen_corpus.py --files 10000 --out corpus/10k
    .venv/bin/python bench/gen_corpus.py --files 2000 --seed 2 --out corpus/load-2k    # other patients and UIDs
    .venv/bin/python bench/load_test.py --base corpus/10k --batch corpus/load-2k [--clients 50] [--duration 60]

What it does, all on 127.0.0.1 and bounded in time:

1. ingests BASE into a fresh SQLite file with the real `dicom-ingest` (kept in --workdir for the next run unless
   --fresh), and copies it twice: `load.db`, served under load, and `reference.db`;
2. ingests BATCH into `reference.db` with nothing else running (the result to compare with, and the ingest time
   without load);
3. starts a real `dicom-api` (uvicorn) on a free port over `load.db`, with a bearer token of the --access level
   (DICOM_API_TOKENS; `full`, or `deidentified`, whose queries then order patients by sex instead of name), and
   waits for /healthz;
4. checks that a request without the token is refused (401) and one with it served, runs one client alone for
   --baseline seconds (what each query costs when nothing waits), then --clients concurrent clients
   (httpx.AsyncClient, one connection each) for --duration seconds, each sending a seeded mix of
   nested, filtered, facet, lookup and paging queries; --ingest-after seconds in, it starts `dicom-ingest BATCH`
   into `load.db` (the same file the server reads) and records when it ends;
5. stops the server and compares the four tables of `load.db` with `reference.db` (every row, sorted).

It prints the requests, failures (HTTP status other than 200, a response with GraphQL errors, a transport error
or timeout), p50/p90/p99/max latency and requests/s, overall and per kind of query, the CPU the server and the
clients used and the machine's load average (the machine may be shared), and per client checks that the number of
slices never went down between two of its requests (a reader never sees a batch disappear). Exit
status: 0 when there was no failure, the counts never went down, the ingest exited 0 and the tables are identical;
1 otherwise; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TABLE_KEYS = {
    "Patient": "PatientID",
    "Study": "StudyInstanceUID",
    "Series": "SeriesInstanceUID",
    "SliceMetadata": "SOPInstanceUID",
}


# ---------------------------------------------------------------------------------------------------------------
# databases


def ingest(paths: list[Path], db: Path, *, jobs: int, batch_size: int) -> tuple[float, subprocess.CompletedProcess]:
    command = [str(BIN / "dicom-ingest"), *map(str, paths), "--db", f"sqlite:///{db}", "--quiet"]
    command += ["--jobs", str(jobs), "--batch-size", str(batch_size)]
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    return time.perf_counter() - start, proc


def copy_db(source: Path, dest: Path) -> None:
    """A consistent copy through SQLite's backup API (whatever the WAL holds), with no -wal/-shm left over."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{dest}{suffix}").unlink(missing_ok=True)
    with sqlite3.connect(source) as src, sqlite3.connect(dest) as dst:
        src.backup(dst)


def dump_tables(db: Path) -> dict[str, list[tuple]]:
    """Every row of the four tables, sorted by key: two databases are equal when their dumps are."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY "{k}"').fetchall() for t, k in TABLE_KEYS.items()}


def compare(load_db: Path, reference_db: Path) -> tuple[bool, str]:
    got, want = dump_tables(load_db), dump_tables(reference_db)
    lines, same = [], True
    for table in TABLE_KEYS:
        equal = got[table] == want[table]
        same &= equal
        detail = "identical" if equal else f"DIFFER (load {len(got[table])} rows, reference {len(want[table])})"
        lines.append(f"{table} {len(want[table])} rows {detail}")
    return same, "; ".join(lines)


@dataclass
class Samples:
    """Values of the base database that queries ask for."""

    patient_ids: list[str]
    study_uids: list[str]
    series_uids: list[str]
    modalities: list[str]
    body_parts: list[str]
    dates: list[str]
    patient_order: str  # PATIENT_NAME; a de-identified token may not order by it (nor by PATIENT_ID)


def samples(db: Path, rng: random.Random, access: str) -> Samples:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:

        def column(sql: str) -> list[str]:
            return [str(row[0]) for row in conn.execute(sql) if row[0] is not None]

        patients = column('SELECT "PatientID" FROM "Patient" ORDER BY 1')
        studies = column('SELECT "StudyInstanceUID" FROM "Study" ORDER BY 1')
        series = column('SELECT "SeriesInstanceUID" FROM "Series" ORDER BY 1')
        return Samples(
            patient_ids=rng.sample(patients, min(200, len(patients))),
            study_uids=rng.sample(studies, min(200, len(studies))),
            series_uids=rng.sample(series, min(200, len(series))),
            modalities=column('SELECT DISTINCT "Modality" FROM "Series" ORDER BY 1'),
            body_parts=column('SELECT DISTINCT "BodyPartExamined" FROM "Series" ORDER BY 1'),
            dates=["2015-06-01", "2017-01-01", "2019-01-01", "2021-06-30"],
            patient_order="PATIENT_NAME" if access == "full" else "PATIENT_SEX",
        )


# ---------------------------------------------------------------------------------------------------------------
# the query mix: (kind, weight, builder); a builder returns (query, variables)

NESTED = """query Nested($first: Int!, $after: String, $order: PatientOrderField!) {
  allPatients(first: $first, after: $after, orderBy: [{field: $order}]) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes {
      patientId patientName patientSex studyCount
      studies(first: 10, orderBy: [{field: STUDY_DATE, direction: DESC}]) {
        nodes {
          studyDate studyDescription modalities seriesCount
          series(first: 10) {
            nodes {
              modality seriesDescription sliceThickness sliceCount
              slices(first: 3) { nodes { sliceNumber sliceLocation imagePositionPatient } }
            }
          }
        }
      }
    }
  }
}"""

PATIENT = """query Patient($id: String!) {
  patient(patientId: $id) {
    patientId patientName studyCount
    studies {
      nodes {
        studyInstanceUid studyDate modalities
        series { nodes { seriesInstanceUid modality sliceCount slices(first: 5) { nodes { sopInstanceUid } } } }
      }
    }
  }
}"""

STUDY = """query Study($uid: String!) {
  study(studyInstanceUid: $uid) {
    studyDate studyDescription patient { patientId }
    series { groupBy(field: MODALITY) { value count } nodes { seriesInstanceUid sliceCount } }
  }
}"""

SERIES_FILTER = """query SeriesFilter($modality: String!, $thickness: Float!, $after: Date!) {
  allSeries(
    where: {modality: {eq: $modality}, sliceThickness: {lte: $thickness}, study: {studyDate: {gt: $after}}}
    orderBy: [{field: SLICE_THICKNESS}]
    first: 20
  ) {
    totalCount
    nodes { seriesInstanceUid modality sliceThickness sliceCount study { studyDate patient { patientId } } }
  }
}"""

PATIENTS_WITH = """query PatientsWith($modality: String!, $after: Date!) {
  allPatients(
    where: {studies: {some: {studyDate: {gt: $after}, series: {some: {modality: {eq: $modality}}}}}}
    first: 50
  ) {
    totalCount
    nodes { patientId patientName }
  }
}"""

STUDY_MATCH = """query StudyMatch($pattern: String!) {
  allStudies(where: {or: [{studyDescription: {match: $pattern}}, {studyDescription: {contains: "CT"}}]}, first: 25) {
    totalCount
    nodes { studyInstanceUid studyDescription studyDate }
  }
}"""

SLICE_FILTER = """query SliceFilter($modality: String!, $uid: String!) {
  allSlices(
    where: {series: {modality: {eq: $modality}}, sliceLocation: {gt: -50, lt: 50}, seriesInstanceUid: {ne: $uid}}
    orderBy: [{field: SLICE_LOCATION}]
    first: 50
  ) {
    totalCount
    nodes { sopInstanceUid sliceLocation series { modality } }
  }
}"""

FACETS = """query Facets($body: String!) {
  allSlices(first: 0) { totalCount }
  allSeries(first: 0) { totalCount groupBy(field: MODALITY) { value count } }
  bodyParts: allSeries(where: {bodyPartExamined: {ne: $body}}, first: 0) {
    groupBy(field: BODY_PART_EXAMINED) { value count }
  }
  allStudies(first: 0) { totalCount byYear: groupBy(field: STUDY_DATE, datePart: YEAR) { value count } }
  allPatients(first: 0) { totalCount groupBy(field: PATIENT_SEX) { value count } }
}"""

PAGE = """query Page($after: String) {
  allSlices(first: 100, after: $after, orderBy: [{field: SLICE_LOCATION, direction: DESC}]) {
    pageInfo { hasNextPage endCursor }
    nodes { sopInstanceUid sliceLocation sliceNumber }
  }
}"""


@dataclass
class ClientState:
    rng: random.Random
    cursor: str | None = None  # where this client's scroll through allSlices is
    slices_seen: int = 0  # the largest allSlices.totalCount this client has seen
    decreases: int = 0


Builder = Callable[[Samples, ClientState], tuple[str, dict[str, Any]]]


def mix() -> list[tuple[str, int, Builder]]:
    def nested(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return NESTED, {"first": c.rng.choice((5, 10, 20)), "after": None, "order": s.patient_order}

    def patient(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return PATIENT, {"id": c.rng.choice(s.patient_ids)}

    def study(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return STUDY, {"uid": c.rng.choice(s.study_uids)}

    def series_filter(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        variables = {"modality": c.rng.choice(s.modalities), "thickness": c.rng.choice((1.0, 2.5, 5.0))}
        return SERIES_FILTER, {**variables, "after": c.rng.choice(s.dates)}

    def patients_with(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return PATIENTS_WITH, {"modality": c.rng.choice(s.modalities), "after": c.rng.choice(s.dates)}

    def study_match(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return STUDY_MATCH, {"pattern": c.rng.choice(("*CHEST*", "MR*", "*HEAD*", "PET?CT*", "*"))}

    def slice_filter(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return SLICE_FILTER, {"modality": c.rng.choice(s.modalities), "uid": c.rng.choice(s.series_uids)}

    def facets(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return FACETS, {"body": c.rng.choice(s.body_parts or ["CHEST"])}

    def page(s: Samples, c: ClientState) -> tuple[str, dict[str, Any]]:
        return PAGE, {"after": c.cursor}

    return [
        ("nested", 15, nested),
        ("patient", 10, patient),
        ("study", 10, study),
        ("series-filter", 15, series_filter),
        ("patients-with", 10, patients_with),
        ("study-match", 5, study_match),
        ("slice-filter", 10, slice_filter),
        ("facets", 15, facets),
        ("page", 10, page),
    ]


# ---------------------------------------------------------------------------------------------------------------
# the load


@dataclass
class Results:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)  # one example per failure reason
    requests: int = 0
    decreases: int = 0

    def fail(self, reason: str, example: str) -> None:
        self.failures[reason] += 1
        self.examples.setdefault(reason, example[:500])


async def client_loop(
    number: int,
    client: httpx.AsyncClient,
    url: str,
    samples_: Samples,
    seed: int,
    deadline: float,
    results: Results,
) -> None:
    state = ClientState(rng=random.Random(seed * 1000 + number))
    kinds = mix()
    weights = [weight for _, weight, _ in kinds]
    while time.perf_counter() < deadline:
        kind, _, build = state.rng.choices(kinds, weights)[0]
        query, variables = build(samples_, state)
        start = time.perf_counter()
        try:
            response = await client.post(url, json={"query": query, "variables": variables})
        except httpx.HTTPError as exc:
            results.requests += 1
            results.fail(f"{kind}: {type(exc).__name__}", repr(exc))
            continue
        elapsed = time.perf_counter() - start
        results.requests += 1
        results.latencies[kind].append(elapsed)
        if response.status_code != 200:
            results.fail(f"{kind}: HTTP {response.status_code}", response.text)
            continue
        try:
            body = response.json()
        except ValueError:
            results.fail(f"{kind}: not JSON", response.text)
            continue
        if body.get("errors") or not isinstance(body.get("data"), dict):
            message = (body.get("errors") or [{}])[0].get("message", "no data")
            results.fail(f"{kind}: GraphQL error {message[:80]!r}", json.dumps(body))
            continue
        data = body["data"]
        if kind == "page":
            info = data["allSlices"]["pageInfo"]
            state.cursor = info["endCursor"] if info["hasNextPage"] else None
        elif kind == "facets":
            count = data["allSlices"]["totalCount"]
            if count < state.slices_seen:
                results.decreases += 1
                results.fail("facets: slice count went down", f"{state.slices_seen} -> {count}")
            state.slices_seen = max(state.slices_seen, count)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))
    return ordered[index]


def latency_row(name: str, values: list[float], seconds: float) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"| {name} | {len(ms)} | {len(ms) / seconds:.1f} | {statistics.median(ms):.1f} | {percentile(ms, 90):.1f} | "
        f"{percentile(ms, 99):.1f} | {max(ms):.1f} |"
    )


async def wait_healthy(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.perf_counter() + timeout
    async with httpx.AsyncClient() as client:
        while time.perf_counter() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"load_test: dicom-api exited with {proc.returncode} before answering")
            try:
                if (await client.get(f"{base}/healthz", timeout=2)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"load_test: dicom-api did not answer {base}/healthz within {timeout} s")


async def run_load(args: argparse.Namespace, load_db: Path, samples_: Samples, token: str) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_API_", "DATABASE_URL"))}
    env["DICOM_API_TOKENS"] = f"{token}:{args.access}:loadtest"
    log = load_db.with_name("dicom-api.log")
    with log.open("w") as out:
        server = subprocess.Popen(
            [str(BIN / "dicom-api"), "--db", f"sqlite:///{load_db}", "--host", "127.0.0.1", "--port", str(port)]
            + ["--log-level", "warning"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    ingest_info: dict[str, Any] = {}
    try:
        await wait_healthy(base, server)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(timeout=args.timeout) as probe:
            anonymous = await probe.post(f"{base}/graphql", json={"query": "{ __typename }"})
            authenticated = await probe.post(f"{base}/graphql", json={"query": "{ __typename }"}, headers=headers)
        auth = {"without token": anonymous.status_code, "with token": authenticated.status_code}

        # One client alone first: what each query costs when nothing waits.
        baseline = Results()
        if args.baseline > 0:
            async with httpx.AsyncClient(timeout=args.timeout, headers=headers) as client:
                deadline = time.perf_counter() + args.baseline
                await client_loop(-1, client, f"{base}/graphql", samples_, args.seed, deadline, baseline)

        results = Results()
        limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with httpx.AsyncClient(limits=limits, timeout=args.timeout, headers=headers) as client:
            load_before = os.getloadavg()[0]
            server_cpu, client_cpu = process_cpu(server.pid), time.process_time()
            start = time.perf_counter()
            deadline = start + args.duration

            async def writer() -> None:
                await asyncio.sleep(args.ingest_after)
                command = [str(BIN / "dicom-ingest"), *map(str, args.batch), "--db", f"sqlite:///{load_db}"]
                command += ["--quiet", "--jobs", str(args.jobs), "--batch-size", str(args.batch_size)]
                ingest_info["started"] = time.perf_counter() - start
                proc = await asyncio.create_subprocess_exec(
                    *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
                )
                output, _ = await asyncio.wait_for(proc.communicate(), timeout=3600)
                ingest_info["ended"] = time.perf_counter() - start
                ingest_info["exit"] = proc.returncode
                ingest_info["output"] = output.decode(errors="replace").strip()

            writer_task = asyncio.create_task(writer())
            await asyncio.gather(
                *(
                    client_loop(i, client, f"{base}/graphql", samples_, args.seed, deadline, results)
                    for i in range(args.clients)
                )
            )
            seconds = time.perf_counter() - start
            cpu = {
                "server": (process_cpu(server.pid) - server_cpu) / seconds,
                "clients": (time.process_time() - client_cpu) / seconds,
                "load average": (load_before, os.getloadavg()[0]),
            }
            await writer_task  # an ingest longer than the load finishes without it (reported)
        return {
            "results": results,
            "baseline": baseline,
            "seconds": seconds,
            "ingest": ingest_info,
            "auth": auth,
            "cpu": cpu,
        }
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, nargs="+", default=[Path("corpus/10k")], help="corpus the API serves")
    parser.add_argument("--batch", type=Path, nargs="+", required=True, help="corpus ingested during the load")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (default: %(default)s)")
    parser.add_argument("--ingest-after", type=float, default=5.0, help="seconds into the load (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="dicom-ingest --jobs (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="dicom-ingest --batch-size (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout in seconds")
    parser.add_argument(
        "--baseline",
        type=float,
        default=10.0,
        help="seconds of one client alone before the load (default: %(default)s)",
    )
    parser.add_argument(
        "--access", default="full", choices=["full", "deidentified"], help="the load's token (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out" / "load")
    parser.add_argument("--fresh", action="store_true", help="ingest the base corpus again even if kept")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    for path in [*args.base, *args.batch]:
        if not path.exists():
            parser.error(f"{path} does not exist (generate it with bench/gen_corpus.py, see --help)")
    if args.clients < 1 or args.duration <= 0:
        parser.error("--clients and --duration must be positive")
    args.base = [p.resolve() for p in args.base]
    args.batch = [p.resolve() for p in args.batch]
    args.workdir.mkdir(parents=True, exist_ok=True)

    base_db = args.workdir / "base.db"
    marker = args.workdir / "base.json"
    wanted = {"base": [str(p) for p in args.base], "batch_size": args.batch_size}
    if args.fresh or not base_db.exists() or not marker.exists() or json.loads(marker.read_text()) != wanted:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{base_db}{suffix}").unlink(missing_ok=True)
        print(f"load_test: ingesting the base corpus {' '.join(map(str, args.base))} ...", flush=True)
        seconds, proc = ingest(args.base, base_db, jobs=os.cpu_count() or 1, batch_size=1000)
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return 1
        print(f"load_test: base ingested in {seconds:.1f} s: {proc.stdout.strip()}", flush=True)
        marker.write_text(json.dumps(wanted))

    load_db, reference_db = args.workdir / "load.db", args.workdir / "reference.db"
    copy_db(base_db, load_db)
    copy_db(base_db, reference_db)
    print("load_test: ingesting the batch into the reference copy, without load ...", flush=True)
    quiet_seconds, proc = ingest(args.batch, reference_db, jobs=args.jobs, batch_size=args.batch_size)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return 1
    print(f"load_test: batch ingested without load in {quiet_seconds:.1f} s: {proc.stdout.strip()}", flush=True)

    samples_ = samples(base_db, random.Random(args.seed), args.access)
    token = secrets.token_urlsafe(24)
    print(
        f"load_test: {args.clients} clients for {args.duration:.0f} s on 127.0.0.1, dicom-ingest of the batch "
        f"{args.ingest_after:.0f} s in ...",
        flush=True,
    )
    outcome = asyncio.run(run_load(args, load_db, samples_, token))
    results: Results = outcome["results"]
    baseline: Results = outcome["baseline"]
    seconds: float = outcome["seconds"]
    ingest_info = outcome["ingest"]
    cpu = outcome["cpu"]
    same, comparison = compare(load_db, reference_db)

    every = [v for values in results.latencies.values() for v in values]
    failed = sum(results.failures.values()) + sum(baseline.failures.values())
    print()
    machine = f"{os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"
    print(f"machine: {machine}")
    print(f"authentication: {outcome['auth']} (HTTP status of one request)")
    if baseline.requests:
        print(f"one client alone for {args.baseline:.0f} s, before the load: {baseline.requests} requests")
        print("| query | requests | per s | p50 ms | p90 ms | p99 ms | max ms |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for kind in sorted(baseline.latencies):
            print(latency_row(kind, baseline.latencies[kind], args.baseline))
        print()
    print(
        f"{args.clients} clients: {results.requests} requests in {seconds:.1f} s = {results.requests / seconds:.1f}/s; "
        f"failed: {failed}"
    )
    print("| query | requests | per s | p50 ms | p90 ms | p99 ms | max ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in sorted(results.latencies):
        print(latency_row(kind, results.latencies[kind], seconds))
    if every:
        print(latency_row("**all**", every, seconds))
    for result in (baseline, results):
        for reason, count in result.failures.most_common():
            print(f"FAILED {count}x {reason}: {result.examples[reason]}")
    print(
        f"CPU during the load: dicom-api {cpu['server']:.0%} of a core, the clients {cpu['clients']:.0%}; "
        f"load average {cpu['load average'][0]:.1f} before, {cpu['load average'][1]:.1f} after"
    )
    if "ended" in ingest_info:
        print(
            f"ingest under load: {ingest_info['started']:.1f} s to {ingest_info['ended']:.1f} s of the run "
            f"({ingest_info['ended'] - ingest_info['started']:.1f} s; without load {quiet_seconds:.1f} s), "
            f"exit {ingest_info['exit']}: {ingest_info['output']}"
        )
    print(f"slice count went down for a client: {results.decreases} times")
    print(f"tables after the load vs ingested without load: {comparison}")

    ok = failed == 0 and results.decreases == 0 and ingest_info.get("exit") == 0 and same
    print("load_test: PASS" if ok else "load_test: FAIL")
    if args.json:
        figures = {
            "requests": results.requests,
            "seconds": seconds,
            "rps": results.requests / seconds,
            "failed": failed,
            "failures": dict(results.failures + baseline.failures),
            "p50_ms": statistics.median(every) * 1000 if every else None,
            "p99_ms": percentile(every, 99) * 1000 if every else None,
            "per_kind": {k: {"n": len(v), "p50_ms": statistics.median(v) * 1000} for k, v in results.latencies.items()},
            "baseline_p50_ms": {k: statistics.median(v) * 1000 for k, v in baseline.latencies.items()},
            "auth": outcome["auth"],
            "cpu": cpu,
            "ingest": ingest_info,
            "ingest_without_load_s": quiet_seconds,
            "identical": same,
            "comparison": comparison,
        }
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
