"""The API and an ingest on the same SQLite file at once: the real `dicom-ingest` writes a few hundred files,
one patient folder per run and in small batches, while clients query the app over HTTP in a loop. Every answer
must come without an error (no reader waits out a busy writer), be one consistent snapshot (counts, pages and
relations agree with one another), and never go back in time (counts never decrease).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from api_helpers import CT_BASE, UID_ROOT, Api, ct_slices, serve, write_series
from conftest import dump_tables, ingest_command, run_ingest

PATIENTS, STUDIES, SERIES, SLICES = 6, 2, 3, 12  # 432 files
CLIENTS = 4

QUERY = """{
  patients: allPatients(first: 1000) { totalCount nodes { patientId studyCount } }
  studies: allStudies(first: 1000) { totalCount nodes { studyInstanceUid seriesCount patient { patientId } } }
  series: allSeries(first: 1000) {
    totalCount
    nodes { seriesInstanceUid sliceCount slices(first: 1000) { totalCount nodes { sliceNumber } } }
  }
  slices: allSlices(first: 1000) {
    totalCount
    nodes { sopInstanceUid sliceNumber series { seriesInstanceUid study { studyInstanceUid patient { patientId } } } }
  }
  modalities: allSeries(first: 0) { groupBy(field: MODALITY) { value count } }
}"""


def write_corpus(root: Path) -> int:
    count = 0
    for p in range(PATIENTS):
        patient = {"PatientID": f"CONC{p:02d}", "PatientName": f"Concurrent^{p}"}
        for s in range(STUDIES):
            study = {"StudyInstanceUID": f"{UID_ROOT}.7.{p}.{s}", "StudyDate": f"2020010{s + 1}"}
            for e in range(SERIES):
                series = {**CT_BASE, "SeriesInstanceUID": f"{UID_ROOT}.7.{p}.{s}.{e}", "SliceThickness": 1.0}
                write_series(root / f"p{p}" / f"s{s}", patient, study, series, SLICES, ct_slices(0.0, 1.0))
                count += SLICES
    return count


def check(data: dict[str, Any]) -> tuple[int, int, int, int]:
    """The invariants of one answer, which hold only if all of it comes from one snapshot; its counts."""
    patients, studies, series, slices = (data[k] for k in ("patients", "studies", "series", "slices"))
    for connection in (patients, studies, series, slices):
        assert connection["totalCount"] == len(connection["nodes"])  # count and page agree
    # Every slice's series, study and patient exist (non-null relations answered without an error).
    series_ids = {s["seriesInstanceUid"] for s in series["nodes"]}
    study_ids = {s["studyInstanceUid"] for s in studies["nodes"]}
    patient_ids = {p["patientId"] for p in patients["nodes"]}
    for node in slices["nodes"]:
        assert node["series"]["seriesInstanceUid"] in series_ids
        assert node["series"]["study"]["studyInstanceUid"] in study_ids
        assert node["series"]["study"]["patient"]["patientId"] in patient_ids
    # Files land whole: no parent without children, counts add up at every level.
    assert all(s["sliceCount"] == s["slices"]["totalCount"] == len(s["slices"]["nodes"]) > 0 for s in series["nodes"])
    assert sum(s["sliceCount"] for s in series["nodes"]) == slices["totalCount"]
    assert all(s["seriesCount"] > 0 for s in studies["nodes"])
    assert sum(s["seriesCount"] for s in studies["nodes"]) == series["totalCount"]
    assert all(p["studyCount"] > 0 for p in patients["nodes"])
    assert sum(p["studyCount"] for p in patients["nodes"]) == studies["totalCount"]
    assert sum(g["count"] for g in data["modalities"]["groupBy"]) == series["totalCount"]
    return patients["totalCount"], studies["totalCount"], series["totalCount"], slices["totalCount"]


def test_queries_during_an_ingest_see_whole_files_and_never_fail(tmp_path: Path) -> None:
    files = tmp_path / "files"
    expected_slices = write_corpus(files)
    db = tmp_path / "concurrent.db"
    # The database exists (with one patient) before the API starts; the rest arrives while it serves.
    run_ingest(files / "p0", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0, cwd=tmp_path)
    answers: list[tuple[int, int, int, int]] = []
    failures: list[str] = []
    lock = threading.Lock()

    # One run per remaining patient folder, one after the other: an ingest of a few hundred files is over in well
    # under a second, and each run's start-up leaves the database in a state between the first and the last for
    # the clients to see (they also query while each run commits its batches of 4 files).
    runs: list[subprocess.CompletedProcess[str]] = []

    def ingest_the_rest() -> None:
        for p in range(1, PATIENTS):
            command = [*ingest_command(), str(files / f"p{p}"), "--db", f"sqlite:///{db}", "--jobs", "1"]
            runs.append(
                subprocess.run([*command, "--batch-size", "4", "--quiet"], capture_output=True, text=True, cwd=tmp_path)
            )

    for api in serve(f"sqlite:///{db}"):
        ingest = threading.Thread(target=ingest_the_rest)
        ingest.start()

        def client(api: Api = api, ingest: threading.Thread = ingest) -> None:
            last = (0, 0, 0, 0)
            while True:
                running = ingest.is_alive()
                try:
                    body = api.post(QUERY)
                    assert "errors" not in body, body["errors"]
                    counts = check(body["data"])
                    assert all(now >= before for now, before in zip(counts, last, strict=True)), (last, counts)
                    assert api.client.get("/healthz").status_code == 200
                except AssertionError as exc:
                    with lock:
                        failures.append(str(exc)[:2000])
                    return
                last = counts
                with lock:
                    answers.append(counts)
                if not running:  # one more answer after the ingest ended: the final state
                    return

        started = time.monotonic()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        ingest.join(timeout=300)
        elapsed = time.monotonic() - started

    assert [run.returncode for run in runs] == [0] * (PATIENTS - 1), [run.stdout + run.stderr for run in runs]
    assert failures == []
    final = (PATIENTS, PATIENTS * STUDIES, PATIENTS * STUDIES * SERIES, expected_slices)
    assert answers[-1] == final
    # The answers saw the database grow: the queries ran while the ingest wrote.
    between = {a for a in answers if a[3] not in (STUDIES * SERIES * SLICES, expected_slices)}
    assert len(between) >= 2, (len(answers), elapsed, sorted(answers))
    # And the readers changed nothing for the writer: the same rows as an ingest without them.
    alone = tmp_path / "alone.db"
    run_ingest(files / "p0", "--db", f"sqlite:///{alone}", "--jobs", "1", "--quiet", check=0, cwd=tmp_path)
    run_ingest(
        files, "--db", f"sqlite:///{alone}", "--jobs", "1", "--batch-size", "4", "--quiet", check=0, cwd=tmp_path
    )
    assert dump_tables(db) == dump_tables(alone)
