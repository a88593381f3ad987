"""Files: `Slice.file { path size url }` and `GET /files/{sopInstanceUid}` over files ingested by the real
`dicom-ingest`: exactly the file's bytes, for full access only, and never a file that is not an ingested
instance."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pydicom
import pytest
from api_helpers import CT_IMAGE, UID_ROOT, Api, api_process, ingest_into, serve, write_instance
from conftest import fresh_postgres_database, run_ingest

from dicom_db.api.auth import parse_tokens
from dicom_db.ingest.paths import from_text, to_text

FULL, DEID = "files-full-token-0123456789ab", "files-deid-token-0123456789ab"
PATIENT = {"PatientID": "FILES-1", "PatientName": "File^Fetcher"}
STUDY = {"StudyInstanceUID": f"{UID_ROOT}.77.1", "StudyDate": "20240102"}
SERIES = [f"{UID_ROOT}.77.1.{n}" for n in (1, 2)]
FILE_FIELDS = "sopInstanceUid file { path size url }"


def sop(series: int, number: int) -> str:
    return f"{SERIES[series]}.{number}"


def write(path: Path, series: int, number: int) -> None:
    attrs = {
        "SOPClassUID": CT_IMAGE,
        **PATIENT,
        **STUDY,
        "SeriesInstanceUID": SERIES[series],
        "Modality": "CT",
        "SOPInstanceUID": sop(series, number),
        "InstanceNumber": number,
        "ImageComments": "x" * (100 * number),  # files of different sizes
    }
    write_instance(path, attrs)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("files")
    out = root / "files"
    for number in (1, 2, 3):
        write(out / "a" / f"{number}.dcm", 0, number)
    write(out / "b" / "1.dcm", 1, 1)
    # A file name that is not UTF-8: stored escaped by the ingest, opened by its bytes.
    write(Path(os.fsdecode(bytes(out) + b"/b/caf\xe9.dcm")), 1, 2)
    # A second copy of instance (0, 1): a duplicate; the instance's file is the one the ingest made its owner.
    shutil.copy(out / "a" / "1.dcm", out / "b" / "copy-of-a1.dcm")
    # A file deleted after the ingest.
    write(out / "b" / "gone.dcm", 1, 3)
    ingest_into(root, root / "files.db", out)
    (out / "b" / "gone.dcm").unlink()
    return root


@pytest.fixture(scope="module")
def api(files: Path) -> Iterator[Api]:
    yield from serve(f"sqlite:///{files / 'files.db'}")


def source_files(db: Path) -> dict[str, list[tuple[str, int, str]]]:
    """SOPInstanceUID -> (stored path, size, status) of each file that holds it, read from the database."""
    found: dict[str, list[tuple[str, int, str]]] = {}
    with sqlite3.connect(db) as conn:
        for sop_uid, path, size, status in conn.execute(
            'SELECT "SOPInstanceUID", "Path", "Size", "Status" FROM "SourceFile" ORDER BY "Path"'
        ):
            found.setdefault(sop_uid, []).append((path, size, status))
    return found


def owner(files: Path, sop_uid: str) -> str:
    [path] = [p for p, _, status in source_files(files / "files.db")[sop_uid] if status == "ingested"]
    return path


def error(response: object, status: int) -> tuple[str, str]:
    assert response.status_code == status, response.text  # type: ignore[attr-defined]
    body = response.json()["errors"][0]  # type: ignore[attr-defined]
    return body["extensions"]["code"], body["message"]


def test_every_slice_names_its_file_as_the_ingest_stored_it(api: Api, files: Path) -> None:
    nodes = api.data(f"{{ allSlices(first: 100) {{ nodes {{ {FILE_FIELDS} }} }} }}")["allSlices"]["nodes"]
    got = {n["sopInstanceUid"]: n["file"] for n in nodes}
    out = files / "files"
    latin1 = to_text(os.fsdecode(bytes(out) + b"/b/caf\xe9.dcm"))
    assert latin1.startswith("bytes:") and latin1.endswith("/b/caf\\xe9.dcm")
    expected_paths = {
        sop(0, 1): owner(files, sop(0, 1)),
        sop(0, 2): str(out / "a" / "2.dcm"),
        sop(0, 3): str(out / "a" / "3.dcm"),
        sop(1, 1): str(out / "b" / "1.dcm"),
        sop(1, 2): latin1,
        sop(1, 3): str(out / "b" / "gone.dcm"),  # gone from disk: the index still names it
    }
    assert {k: v["path"] for k, v in got.items()} == expected_paths
    assert owner(files, sop(0, 1)) in (str(out / "a" / "1.dcm"), str(out / "b" / "copy-of-a1.dcm"))
    for sop_uid, file in got.items():
        assert file["url"] == f"/files/{sop_uid}"
        if sop_uid != sop(1, 3):
            assert file["size"] == os.path.getsize(from_text(file["path"])), sop_uid
    assert len({f["size"] for f in got.values()}) > 1
    # A lookup finds the same; an unknown instance has no slice at all.
    one = api.data(f'{{ slice(sopInstanceUid: "{sop(0, 2)}") {{ {FILE_FIELDS} }} }}')["slice"]
    assert one["file"] == got[sop(0, 2)]


def latin1_bytes(files: Path) -> bytes:
    return bytes(files / "files") + b"/b/caf\xe9.dcm"


def download(api: Api, sop_uid: str, **headers: str) -> bytes:
    response = api.client.get(f"/files/{sop_uid}", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["content-disposition"] == f'attachment; filename="{sop_uid}.dcm"'
    return response.content


def test_the_route_serves_exactly_the_files_bytes(api: Api, files: Path) -> None:
    out = files / "files"
    for sop_uid, path in (
        (sop(0, 2), out / "a" / "2.dcm"),
        (sop(0, 3), out / "a" / "3.dcm"),
        (sop(1, 1), out / "b" / "1.dcm"),
    ):
        body = download(api, sop_uid)
        assert body == path.read_bytes()
        ds = pydicom.dcmread(io.BytesIO(body))
        assert ds.SOPInstanceUID == sop_uid
    # The file whose name is not UTF-8.
    assert download(api, sop(1, 2)) == Path(os.fsdecode(latin1_bytes(files))).read_bytes()
    # The url GraphQL gives is the route.
    url = api.data(f'{{ slice(sopInstanceUid: "{sop(0, 3)}") {{ file {{ url }} }} }}')["slice"]["file"]["url"]
    assert api.client.get(url).content == (out / "a" / "3.dcm").read_bytes()


def test_a_duplicate_never_stands_in_for_the_owner(api: Api, files: Path) -> None:
    """Instance (0, 1) is in two files; the index names one owner, and only the owner's file is served (the
    other is changed on disk here: its bytes must not come back)."""
    holders = source_files(files / "files.db")[sop(0, 1)]
    assert sorted(status for _, _, status in holders) == ["duplicate", "ingested"]
    own = owner(files, sop(0, 1))
    [other] = [p for p, _, status in holders if status == "duplicate"]
    original = Path(own).read_bytes()
    with open(other, "ab") as f:
        f.write(b"not the owner")
    try:
        assert download(api, sop(0, 1)) == original
    finally:
        Path(other).write_bytes(original)


def test_unknown_gone_and_traversal_are_not_found(api: Api, files: Path) -> None:
    assert error(api.client.get("/files/1.2.3.4"), 404)[0] == "NOT_FOUND"
    code, message = error(api.client.get(f"/files/{sop(1, 3)}"), 404)
    assert code == "NOT_FOUND" and "gone" in message
    stored = str(files / "files" / "a" / "2.dcm")
    for attempt in (
        "/files/..%2F..%2F..%2Fetc%2Fpasswd",
        "/files/%2E%2E",
        "/files/.",
        "/files/%2Fetc%2Fpasswd",
        "/files/" + quote(stored, safe=""),  # a stored path is not a SOPInstanceUID
        "/files/" + quote(f"{sop(0, 2)}/../../a/2.dcm", safe=""),
        f"/files/{sop(0, 2)}%00",
        f"/files/{sop(0, 2)}%00.dcm",
        "/files/%ff%fe",
        "/files/",
        "/files",
    ):
        response = api.client.get(attempt)
        assert response.status_code == 404, (attempt, response.text)
        assert response.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND", attempt
        assert b"root:" not in response.content and b"DICM" not in response.content


def test_a_database_without_file_records_has_null_files(api: Api, files: Path, tmp_path: Path) -> None:
    """A database whose file index is empty (the API benchmark's): `file` is null, the route a 404."""
    db = tmp_path / "no-index.db"
    shutil.copy(files / "files.db", db)
    with sqlite3.connect(db) as conn:
        conn.execute('DELETE FROM "SourceFile"')
    for bare in serve(f"sqlite:///{db}"):
        nodes = bare.data("{ allSlices(first: 3) { nodes { file { path } } } }")["allSlices"]["nodes"]
        assert nodes == [{"file": None}] * 3
        assert error(bare.client.get(f"/files/{sop(0, 2)}"), 404)[0] == "NOT_FOUND"


def test_one_statement_per_level_whatever_the_rows(files: Path) -> None:
    # The resolvers' statements (the compiled path answers `file` within the page's own one statement).
    for api in serve(f"sqlite:///{files / 'files.db'}", execution="resolvers"):

        def statements(query: str, api: Api = api) -> int:
            before = api.statements
            api.data(query)
            return api.statements - before

        for first in (1, 2, 100):
            without = statements(f"{{ allSlices(first: {first}) {{ nodes {{ sopInstanceUid }} }} }}")
            with_files = statements(f"{{ allSlices(first: {first}) {{ nodes {{ sopInstanceUid {FILE_FIELDS} }} }} }}")
            assert with_files == without + 1, first
            nested = "{ allSeries { nodes { slices(first: %d) { nodes { %s } } } } }"
            assert statements(nested % (first, FILE_FIELDS)) == statements(nested % (first, "sopInstanceUid")) + 1


def test_file_counts_in_the_node_budget(files: Path) -> None:
    query = "{ allSlices(first: 6) { nodes { %s } } }"
    for limited in serve(f"sqlite:///{files / 'files.db'}", max_nodes=6):
        assert limited.data(query % "sopInstanceUid")
        body = limited.post(query % "file { size }")
        assert body["errors"][0]["extensions"]["code"] == "NODE_LIMIT_EXCEEDED"


def test_full_access_only(files: Path) -> None:
    tokens = tuple(parse_tokens(f"{FULL}:full:alice,{DEID}:deidentified:pipeline"))
    for api in serve(f"sqlite:///{files / 'files.db'}", tokens=tokens):
        path = f"/files/{sop(0, 2)}"
        assert error(api.client.get(path), 401)[0] == "UNAUTHENTICATED"
        assert api.client.get(path, headers={"Authorization": "Bearer not-a-token-of-this-server"}).status_code == 401
        assert error(api.client.get(path, headers={"Authorization": f"Bearer {DEID}"}), 403)[0] == "FORBIDDEN"
        # An unknown instance is refused the same way: a de-identified token learns nothing from the route.
        assert error(api.client.get("/files/1.2.3.4", headers={"Authorization": f"Bearer {DEID}"}), 403)
        full = download(api, sop(0, 2), Authorization=f"Bearer {FULL}")
        assert full == (files / "files" / "a" / "2.dcm").read_bytes()

        def graphql(token: str, api: Api = api) -> dict:
            response = api.client.post(
                "/graphql",
                json={"query": "{ allSlices(first: 2) { nodes { sliceNumber file { path size url } } } }"},
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text
            return response.json()

        refused = graphql(DEID)
        assert [n["file"] for n in refused["data"]["allSlices"]["nodes"]] == [None, None]
        assert {e["extensions"]["code"] for e in refused["errors"]} == {"FORBIDDEN"}
        assert all(e["path"][-1] == "file" for e in refused["errors"])
        assert "files" not in str(refused["data"]) and str(files) not in str(refused)
        allowed = graphql(FULL)
        assert "errors" not in allowed and all(n["file"]["path"] for n in allowed["data"]["allSlices"]["nodes"])


def test_the_same_files_from_postgresql(files: Path, api: Api) -> None:
    with fresh_postgres_database(f"dicom_files_test_{os.getpid()}") as url:
        run_ingest(files / "files", "--db", url, "--jobs", "1", "--quiet", check=0)
        query = f"{{ allSlices(first: 100, orderBy: [{{field: SOP_INSTANCE_UID}}]) {{ nodes {{ {FILE_FIELDS} }} }} }}"
        # Compiled, the files come in the page's own statement; on the resolvers, in one more for the whole page.
        for execution, more in (("compiled", 0), ("resolvers", 1)):
            for pg in serve(url, execution=execution):
                got = pg.data(query)["allSlices"]["nodes"]
                # gone.dcm is gone before this ingest: PostgreSQL holds the other five.
                expected = [n for n in api.data(query)["allSlices"]["nodes"] if n["sopInstanceUid"] != sop(1, 3)]
                assert got == expected
                for node in got:
                    assert pg.client.get(node["file"]["url"]).content == api.client.get(node["file"]["url"]).content
                assert error(pg.client.get("/files/1.2.3.4"), 404)[0] == "NOT_FOUND"
                assert error(pg.client.get(f"/files/{sop(0, 2)}%00"), 404)[0] == "NOT_FOUND"
                counts = []
                for fields in (FILE_FIELDS, "sopInstanceUid"):
                    before = pg.statements
                    pg.data(query.replace(FILE_FIELDS, fields))
                    counts.append(pg.statements - before)
                assert counts[0] == counts[1] + more, execution


def test_a_real_server_streams_the_file_and_takes_raw_paths_literally(files: Path, tmp_path: Path) -> None:
    """Through uvicorn, with request targets sent as written (no client normalizes them): dot segments, encoded
    slashes and NULs find nothing, and a download is the file's bytes with its length."""
    with api_process(f"sqlite:///{files / 'files.db'}", log=tmp_path / "api.log") as server:

        def get(target: str) -> tuple[int, dict[str, str], bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            try:
                conn.putrequest("GET", target, skip_accept_encoding=True)
                conn.endheaders()
                response = conn.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            finally:
                conn.close()

        status, headers, body = get(f"/files/{sop(0, 3)}")
        assert status == 200 and body == (files / "files" / "a" / "3.dcm").read_bytes()
        assert headers["content-type"] == "application/dicom" and headers["content-length"] == str(len(body))
        for target in (
            "/files/../../../../etc/passwd",
            "/files/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
            "/files/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            f"/files/{sop(0, 3)}%00",
            "/files/" + quote(str(files / "files" / "a" / "3.dcm"), safe=""),
        ):
            status, _, body = get(target)
            assert status == 404 and b"root:" not in body and b"DICM" not in body, (target, status, body[:200])
