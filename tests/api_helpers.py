"""Helpers for the API tests: DICOM files written with pydicom, databases filled by the real `dicom-ingest`,
the app served in-process over HTTP. Fixtures built from them are in api_fixtures.py.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom.config
from conftest import run_ingest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

with warnings.catch_warnings():  # Starlette 1.x suggests httpx2 for its TestClient; httpx works as well
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dicom_db.api.app import create_app
from dicom_db.api.settings import Settings

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.10.543"  # a private root for test UIDs

# Tokens of every access level the tests use: the built-in full and deidentified, and levels declared in a tokens
# file (other option sets), with the suite's pseudonym key.
FULL_TOKEN = "full-token-0123456789abcdefXYZ"
DEID_TOKEN = "deid-token-0123456789abcdefXYZ"
KEY = b"a pseudonym key of the test suite"
LEVELS_FILE = f"""# levels beside the built-in full and deidentified
level basic
level descriptions retain-longitudinal-modified-dates, retain-patient-characteristics clean-descriptors
level research retain-uids retain-longitudinal-full-dates retain-patient-characteristics
{FULL_TOKEN} full alice
{DEID_TOKEN} deidentified bob
basic-token-0123456789abcdefXYZ basic carol
desc-token-0123456789abcdefXYZZ descriptions dave
research-token-0123456789abcdefX research erin
"""
LEVEL_TOKENS = {
    "full": FULL_TOKEN,
    "deidentified": DEID_TOKEN,
    "basic": "basic-token-0123456789abcdefXYZ",
    "descriptions": "desc-token-0123456789abcdefXYZZ",
    "research": "research-token-0123456789abcdefX",
}


class Invalid:
    """A value its attribute's VR does not allow, stored as text (as a real-world malformed file would)."""

    def __init__(self, text: str) -> None:
        self.text = text


def write_instance(path: Path, attrs: dict[str, Any]) -> None:
    """One DICOM file holding `attrs` (DICOM keywords) and a file meta header, no pixels."""
    ds = Dataset()
    for keyword, value in attrs.items():
        if isinstance(value, Invalid):  # written with another VR, so pydicom does not convert it
            ds.add_new(keyword, "LO", value.text)
        else:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    # Some test values are deliberately invalid (a date that is not a date, a thickness that is not a number).
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds.save_as(path, enforce_file_format=True)


def write_series(
    folder: Path,
    patient: dict[str, Any],
    study: dict[str, Any],
    series: dict[str, Any],
    count: int,
    per_slice: Callable[[int], dict[str, Any]] = lambda i: {},
) -> list[str]:
    """`count` instances of one series; returns their SOPInstanceUIDs in instance order."""
    sops = []
    for i in range(count):
        sop = f"{series['SeriesInstanceUID']}.{i + 1}"
        attrs = {"SOPClassUID": CT_IMAGE, **patient, **study, **series, "SOPInstanceUID": sop, "InstanceNumber": i + 1}
        attrs.update(per_slice(i))
        write_instance(folder / f"{sop}.dcm", attrs)
        sops.append(sop)
    return sops


def ct_slices(start: float, step: float) -> Callable[[int], dict[str, Any]]:
    """Per-slice attributes of an axial CT stack: location and position move by `step` mm per slice."""

    def attrs(i: int) -> dict[str, Any]:
        z = round(start + i * step, 4)
        return {"SliceLocation": z, "ImagePositionPatient": [-125.0, -125.0, z]}

    return attrs


# The synthetic corpus: values chosen so that every filter, order and facet has something to find.
P1 = {"PatientID": "PAT001", "PatientName": "Alpha^Anna", "PatientSex": "F", "PatientBirthDate": "19700101"}
P2 = {"PatientID": "PAT002", "PatientName": "Bravo^Bob", "PatientSex": "M", "PatientBirthDate": Invalid("19801345")}
P3 = {"PatientID": "PAT003", "PatientName": "ÄRGER^Élodie", "PatientSex": "O", "SpecificCharacterSet": "ISO_IR 192"}
NOID: dict[str, Any] = {"PatientName": "Nobody^Known"}  # no PatientID: the ingest makes one

S1 = {
    "StudyInstanceUID": f"{UID_ROOT}.1",
    "StudyDate": "20210304",
    "StudyTime": "101500",
    "StudyDescription": "CT Chest 100% dose_test!",
    "AccessionNumber": "ACC-1",
    "ReferringPhysicianName": "Who^Doctor",
    "StudyID": "1",
}
S2 = {"StudyInstanceUID": f"{UID_ROOT}.2", "StudyDate": "20190615", "StudyDescription": "Head", "StudyID": "2"}
S3 = {"StudyInstanceUID": f"{UID_ROOT}.3", "StudyDate": "20220101", "StudyDescription": "Head", "StudyID": "3"}
S4 = {"StudyInstanceUID": f"{UID_ROOT}.4", "StudyDescription": "Undated"}
S5 = {"StudyInstanceUID": f"{UID_ROOT}.5", "StudyDate": "20200101", "StudyDescription": "Other"}

CT_BASE = {
    "Modality": "CT",
    "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
    "PixelSpacing": [0.7, 0.7],
    "ImageOrientationPatient": [1, 0, 0, 0, 1, 0],
    "Rows": 512,
    "Columns": 512,
    "KVP": 120,
    "ConvolutionKernel": "B30f",
    "AcquisitionNumber": 1,
}
SE11 = {
    **CT_BASE,
    "SeriesInstanceUID": f"{UID_ROOT}.1.1",
    "SeriesDescription": "Thin chest",
    "SliceThickness": 0.625,
    "BodyPartExamined": "CHEST",
    "AcquisitionDate": "20210304",
}
SE12 = {
    "SOPClassUID": MR_IMAGE,
    "SeriesInstanceUID": f"{UID_ROOT}.1.2",
    "SeriesDescription": "MR localiser",
    "Modality": "MR",
    "SliceThickness": 5,
    "ImageType": ["ORIGINAL", "PRIMARY", "OTHER"],
    "Rows": 256,
    "Columns": 256,
}
SE21 = {**CT_BASE, "SeriesInstanceUID": f"{UID_ROOT}.2.1", "SliceThickness": 2.5, "BodyPartExamined": "HEAD"}
SE31 = {
    **CT_BASE,
    "SeriesInstanceUID": f"{UID_ROOT}.3.1",
    "SliceThickness": 0.5,
    "BodyPartExamined": "HEAD",
    "KVP": 100,
}
SE41 = {
    **CT_BASE,
    "SeriesInstanceUID": f"{UID_ROOT}.4.1",
    "SliceThickness": Invalid("abc"),
    "BodyPartExamined": "ABDOMEN",
}
SE51 = {"SeriesInstanceUID": f"{UID_ROOT}.5.1", "Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}


def write_synthetic(root: Path) -> None:
    """5 patients' worth of studies: 7 series, 55 slices (see the constants above)."""
    write_series(root / "p1", P1, S1, SE11, 40, ct_slices(-100.0, 0.625))
    write_series(root / "p1", P1, S1, SE12, 3, lambda i: {"SliceLocation": 10.0 * i})
    write_series(root / "p1", P1, S2, SE21, 5, ct_slices(0.0, 2.5))
    write_series(root / "p2", P2, S3, SE31, 4, ct_slices(50.0, -0.5))
    # Slice 2 of this series has no location: nulls must sort last and page correctly.
    write_series(root / "p3", P3, S4, SE41, 2, lambda i: {"SliceLocation": 7.5} if i == 0 else {})
    write_series(root / "noid", NOID, S5, SE51, 1)


def write_scaled(root: Path, patients: int, studies: int, series: int, slices: int) -> None:
    """A regular corpus of the given shape, for tests that compare small and large databases."""
    counter = itertools.count(1)
    for p in range(patients):
        patient = {"PatientID": f"SC{p:03d}", "PatientName": f"Scale^{p}"}
        for s in range(studies):
            study = {"StudyInstanceUID": f"{UID_ROOT}.9.{p}.{s}", "StudyDate": f"20{10 + s:02d}0101"}
            for e in range(series):
                attrs = {**CT_BASE, "SeriesInstanceUID": f"{UID_ROOT}.9.{p}.{s}.{e}.{next(counter)}"}
                attrs["SliceThickness"] = [0.5, 1.0, 2.5][e % 3]
                write_series(root / f"sc{p}", patient, study, attrs, slices, ct_slices(0.0, 1.0))


def ingest_into(folder: Path, db: Path, *sources: Path, exit_code: int = 0) -> Path:
    run_ingest(*sources, "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=exit_code, cwd=folder)
    return db


class Api:
    """GraphQL over HTTP against one app; `statements` counts the SQL statements the app ran."""

    def __init__(self, client: TestClient) -> None:
        self.client = client

    @property
    def database(self) -> Any:
        return self.client.app.state.database  # type: ignore[attr-defined]

    @property
    def statements(self) -> int:
        return self.database.statements

    def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}})
        assert response.status_code == 200, response.text
        return response.json()

    def data(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, variables)
        assert "errors" not in body, body["errors"]
        return body["data"]

    def error(self, query: str, **variables: Any) -> str:
        """The message of the request's only error."""
        body = self.post(query, variables)
        assert body.get("errors"), body
        assert len(body["errors"]) == 1, body["errors"]
        return body["errors"][0]["message"]


class TokenClient:
    """GraphQL over HTTP with a token (or none); `statements` counts the app's SQL statements."""

    def __init__(self, http: TestClient, token: str | None) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    @property
    def statements(self) -> int:
        return self.http.app.state.database.statements  # type: ignore[attr-defined]

    def post(self, query: str, **variables: Any) -> dict[str, Any]:
        response = self.http.post("/graphql", json={"query": query, "variables": variables}, headers=self.headers)
        assert response.status_code == 200, response.text
        return response.json()

    def data(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, **variables)
        assert "errors" not in body, body["errors"]
        return body["data"]


def serve(db_url: str, **settings: Any) -> Iterator[Api]:
    app = create_app(Settings(database_url=db_url, **settings))
    with TestClient(app) as client:
        yield Api(client)


# A real `dicom-api` process (uvicorn, its workers) on a free port of 127.0.0.1, for tests that need real sockets.


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def api_command() -> list[str]:
    exe = Path(sys.executable).parent / "dicom-api"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dicom_db.api.cli import main; main()"]


class ApiProcess:
    """`dicom-api --db URL ARGS...` serving on `url`; its output (uvicorn's and the API's log) goes to `log`."""

    def __init__(self, db_url: str, *args: str, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DICOM_", "DATABASE_URL"))}
        with log.open("w") as out:
            self.proc = subprocess.Popen(
                [*api_command(), "--db", db_url, "--host", "127.0.0.1", "--port", str(self.port), *args],
                env={**base, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dicom-api exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"dicom-api did not become ready within {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text()


@contextlib.contextmanager
def api_process(db_url: str, *args: str, log: Path, env: dict[str, str] | None = None) -> Iterator[ApiProcess]:
    server = ApiProcess(db_url, *args, log=log, env=env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
