"""De-identified against full access: the same questions asked by a `full` and a `deidentified` token.

Usage (from the repository root, with the project's venv; databases from make_api_db.py, see bench/README.md):

    .venv/bin/python bench/bench_deid.py $TMP/bench1m.db --reps 30 --json /tmp/deid.json

The app runs in-process (Starlette's TestClient: the whole HTTP, GraphQL and SQL path, no network) with two
tokens and a pseudonym key. Each case is one question in two spellings: the full token names rows by their
UIDs and real dates, the de-identified token by the pseudonymous UIDs and shifted dates it was shown (read
through the API first). Both answer the same rows, which the script checks (same counts) before timing, except
where they cannot: a date filter (each patient's dates move by its own offset, so "from this date on" is
another set) and the default order of a page (a keyed hash for de-identified access, the UID for full). Runs are
interleaved (full, de-identified, full, ...) so that machine noise hits both sides alike; each case reports
medians and the ratio of medians. A lookup rotates over `--keys` different rows so that one row's cached pages do
not flatter either side.
"""

from __future__ import annotations

import argparse
import json
import platform
import sqlite3
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dicom_db.api.app import create_app
from dicom_db.api.auth import AccessLevel, Token
from dicom_db.api.masking import Pseudonyms
from dicom_db.api.settings import Settings

FULL_TOKEN = "bench-full-token-0123456789abcdef"
DEID_TOKEN = "bench-deid-token-0123456789abcdef"
KEY = b"the benchmark's pseudonym key, 32b"


@dataclass
class Case:
    name: str
    query: str
    full_vars: list[dict[str, Any]]  # one variables object per key of the rotation
    deid_vars: list[dict[str, Any]]
    same_rows: bool = True  # both spellings find the same rows (not so for dates: each patient moves by its own)
    samples: dict[str, list[float]] = field(default_factory=lambda: {"full": [], "deid": []})


def post(client: TestClient, token: str, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = client.post(
        "/graphql", json={"query": query, "variables": variables}, headers={"Authorization": f"Bearer {token}"}
    )
    body = response.json()
    if response.status_code != 200 or "errors" in body:
        raise SystemExit(f"query failed: {body}")
    return body["data"]


def pick(db: Path, keys: int) -> dict[str, list[Any]]:
    """Rows spread over the database: SOP Instance UIDs, Study UIDs (with their study dates), Series UIDs."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        total = conn.execute('SELECT MAX("SliceID") FROM "SliceMetadata"').fetchone()[0]
        step = max(total // keys, 1)
        sops = [
            r[0]
            for r in conn.execute(
                'SELECT "SOPInstanceUID" FROM "SliceMetadata" WHERE "SliceID" % ? = 1 LIMIT ?', (step, keys)
            )
        ]
        studies = conn.execute(
            'SELECT t."StudyInstanceUID", t."StudyDate", COUNT(*) FROM "Study" t JOIN "Series" s '
            'ON s."StudyInstanceUID" = t."StudyInstanceUID" JOIN "SliceMetadata" m '
            'ON m."SeriesInstanceUID" = s."SeriesInstanceUID" WHERE t."StudyDate" IS NOT NULL '
            'GROUP BY t."StudyInstanceUID" HAVING COUNT(*) BETWEEN 200 AND 2000 ORDER BY t."StudyInstanceUID" LIMIT ?',
            (keys,),
        ).fetchall()
        patients = [
            r[0] for r in conn.execute('SELECT "PatientID" FROM "Patient" ORDER BY "PatientID" LIMIT ?', (keys,))
        ]
        series = [
            r[0]
            for r in conn.execute(
                'SELECT "SeriesInstanceUID" FROM "Series" WHERE "Modality" = \'CT\' ORDER BY "SeriesInstanceUID" '
                "LIMIT ?",
                (keys,),
            )
        ]
    finally:
        conn.close()
    return {"sops": sops, "studies": studies, "series": series, "patients": patients}


SLICE_LOOKUP = """query($uid: String!) { slice(sopInstanceUid: $uid) { sopInstanceUid sliceNumber acquisitionDate
  series { seriesInstanceUid modality study { studyInstanceUid studyDate patient { patientId } } } } }"""
PATIENT_LOOKUP = "query($id: String!) { patient(patientId: $id) { patientId patientSex studyCount } }"
STUDY_LOOKUP = "query($uid: String!) { study(studyInstanceUid: $uid) { studyInstanceUid studyDate seriesCount } }"
SLICES_OF_SERIES = """query($uid: String!) { allSlices(where: {seriesInstanceUid: {eq: $uid}}, first: 100) {
  totalCount nodes { sopInstanceUid sliceNumber sliceLocation acquisitionDate } } }"""
STUDIES_AFTER = """query($date: Date!) { allStudies(where: {studyDate: {gte: $date}}, first: 50) {
  totalCount nodes { studyInstanceUid studyDate } } }"""
SLICES_AFTER = """query($date: Date!) { allSlices(where: {acquisitionDate: {gte: $date}}, first: 100) {
  nodes { sopInstanceUid acquisitionDate } } }"""
SLICES_AFTER_COUNT = "query($date: Date!) { allSlices(where: {acquisitionDate: {gte: $date}}) { totalCount } }"
SERIES_PAGE = "{ allSeries(first: 100) { nodes { seriesInstanceUid modality sliceThickness } } }"
TREE = """query($uid: String!) { study(studyInstanceUid: $uid) { studyDate patient { patientId }
  series { nodes { seriesInstanceUid modality sliceCount
    slices(first: 1000) { nodes { sopInstanceUid sliceNumber sliceLocation acquisitionDate imagePositionPatient } }
  } } } }"""


def cases(client: TestClient, db: Path, keys: int) -> list[Case]:
    picked = pick(db, keys)
    uid = Pseudonyms(KEY).uid

    def shown_date(study: str) -> str:
        data = post(client, DEID_TOKEN, STUDY_LOOKUP, {"uid": uid(study)})
        return data["study"]["studyDate"]

    studies = picked["studies"]
    pseudonym = Pseudonyms(KEY)
    return [
        Case(
            "lookup: a patient by PatientID (de-identified: its pseudonym)",
            PATIENT_LOOKUP,
            [{"id": p} for p in picked["patients"]],
            [{"id": pseudonym(p)} for p in picked["patients"]],
        ),
        Case(
            "lookup: a slice by SOP Instance UID, up to its patient",
            SLICE_LOOKUP,
            [{"uid": s} for s in picked["sops"]],
            [{"uid": uid(s)} for s in picked["sops"]],
        ),
        Case(
            "lookup: a study by Study Instance UID",
            STUDY_LOOKUP,
            [{"uid": s} for s, _, _ in studies],
            [{"uid": uid(s)} for s, _, _ in studies],
        ),
        Case(
            "filtered page: a series' slices by SeriesInstanceUID (first 100)",
            SLICES_OF_SERIES,
            [{"uid": s} for s in picked["series"]],
            [{"uid": uid(s)} for s in picked["series"]],
        ),
        Case(
            "filtered page: studies from a date on (first 50; de-identified: the shifted date)",
            STUDIES_AFTER,
            [{"date": d} for _, d, _ in studies],
            [{"date": shown_date(s)} for s, _, _ in studies],
            same_rows=False,
        ),
        Case(
            "filtered page: slices acquired from a date on (first 100; de-identified: the shifted date)",
            SLICES_AFTER,
            [{"date": d} for _, d, _ in studies],
            [{"date": shown_date(s)} for s, _, _ in studies],
            same_rows=False,
        ),
        Case(
            "count: slices acquired from a date on (totalCount over 1M rows)",
            SLICES_AFTER_COUNT,
            [{"date": d} for _, d, _ in studies[:3]],
            [{"date": shown_date(s)} for s, _, _ in studies[:3]],
            same_rows=False,
        ),
        Case("page: allSeries in default order (first 100)", SERIES_PAGE, [{}], [{}], same_rows=False),
        Case(
            "nested tree: a study, its series, up to 1000 slices each",
            TREE,
            [{"uid": s} for s, _, _ in studies],
            [{"uid": uid(s)} for s, _, _ in studies],
        ),
    ]


def size(data: Any) -> int:
    """Rows in an answer (counts and list lengths): both spellings of a question must agree on it."""
    if isinstance(data, dict):
        return sum(size(v) for v in data.values()) + (data.get("totalCount") or 0)
    if isinstance(data, list):
        return len(data) + sum(size(v) for v in data)
    return 0


def run(db: Path, reps: int, warmup: int, keys: int) -> list[Case]:
    settings = Settings(
        database_url=f"sqlite:///{db}",
        tokens=(Token(FULL_TOKEN, AccessLevel.FULL, "full"), Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "deid")),
        pseudonym_key=KEY,
        max_nodes=100_000_000,
    )
    with TestClient(create_app(settings)) as client:
        todo = cases(client, db, keys)
        for case in todo:
            for full_vars, deid_vars in zip(case.full_vars, case.deid_vars, strict=True):
                a = post(client, FULL_TOKEN, case.query, full_vars)
                b = post(client, DEID_TOKEN, case.query, deid_vars)
                if case.same_rows and size(a) != size(b):
                    raise SystemExit(f"{case.name}: the two spellings disagree ({size(a)} vs {size(b)} rows)")
        sides: list[tuple[str, str, Callable[[Case], list[dict[str, Any]]]]] = [
            ("full", FULL_TOKEN, lambda c: c.full_vars),
            ("deid", DEID_TOKEN, lambda c: c.deid_vars),
        ]
        for rep in range(warmup + reps):
            for case in todo:
                for side, token, variables in sides:
                    chosen = variables(case)[rep % len(variables(case))]
                    start = time.perf_counter()
                    post(client, token, case.query, chosen)
                    elapsed = time.perf_counter() - start
                    if rep >= warmup:
                        case.samples[side].append(elapsed)
    return todo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("db", type=Path, help="SQLite database filled by dicom-ingest or make_api_db.py")
    parser.add_argument("--reps", type=int, default=30, help="timed runs of each case and side (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--keys", type=int, default=20, help="rows a lookup rotates over (default 20)")
    parser.add_argument("--json", type=Path, help="also write every sample here")
    args = parser.parse_args(argv)
    started = time.time()
    results = run(args.db, args.reps, args.warmup, args.keys)
    print(f"{args.db} ({args.db.stat().st_size / 1e6:.0f} MB), {args.reps} runs per side, interleaved")
    print("| case | full median ms | de-identified median ms | de-identified / full |")
    print("| --- | ---: | ---: | ---: |")
    for case in results:
        full, deid = statistics.median(case.samples["full"]), statistics.median(case.samples["deid"])
        print(f"| {case.name} | {full * 1e3:.1f} | {deid * 1e3:.1f} | {deid / full:.2f}x |")
    if args.json:
        report = {
            "db": str(args.db),
            "python": platform.python_version(),
            "started": started,
            "cases": {c.name: c.samples for c in results},
        }
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
