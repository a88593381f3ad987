"""HTTP surface: POST and GET /graphql, GraphiQL, /healthz, CORS, read-only database, error masking,
settings, and the real `dicom-api` command serving the example client."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from api_helpers import Api, TestClient, serve

from dicom_db.api.app import DEFAULT_QUERY, create_app
from dicom_db.api.errors import DatabaseUnavailable
from dicom_db.api.settings import Settings, SettingsError

pytest_plugins = ["api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_post_with_variables(synthetic: Api) -> None:
    response = synthetic.client.post(
        "/graphql",
        json={
            "query": "query($id: String!) { patient(patientId: $id) { patientName } }",
            "variables": {"id": "PAT001"},
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"data": {"patient": {"patientName": "Alpha^Anna"}}}


def test_get_with_query_returns_json(synthetic: Api) -> None:
    response = synthetic.client.get("/graphql", params={"query": "{ allPatients { totalCount } }"})
    assert response.status_code == 200
    assert response.json() == {"data": {"allPatients": {"totalCount": 4}}}


def test_get_in_a_browser_serves_graphiql_with_a_default_query(synthetic: Api) -> None:
    response = synthetic.client.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert "graphiql" in response.text.lower()
    assert json.dumps(DEFAULT_QUERY) in response.text  # the page's example query (tests/test_graphiql.py)
    assert "Welcome to GraphiQL" not in response.text
    # The default query is a valid query over this schema.
    assert "errors" not in synthetic.post(DEFAULT_QUERY)
    assert "/static/browser/browser.js" in synthetic.client.get("/").text  # the study browser (test_browser*.py)


def test_malformed_requests_get_clear_answers_never_a_server_error(synthetic: Api) -> None:
    client = synthetic.client
    bad_json = client.post("/graphql", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bad_json.json()["errors"][0]["message"].startswith("The request body is not valid JSON")
    assert bad_json.json()["errors"][0]["extensions"] == {"code": "BAD_REQUEST"}
    no_query = client.post("/graphql", json={})
    assert no_query.status_code == 400
    assert no_query.json()["errors"][0] == {
        "message": "No GraphQL query found in the request.",
        "extensions": {"code": "BAD_REQUEST"},
    }
    put = client.put("/graphql", json={"query": "{ allSeries { totalCount } }"})
    assert put.status_code == 405 and put.json()["errors"][0]["extensions"]["code"] == "METHOD_NOT_ALLOWED"
    missing = client.get("/no/such/page")
    assert missing.status_code == 404 and missing.json()["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    syntax = client.post("/graphql", json={"query": "{ allPatients { "}).json()
    assert syntax["errors"][0]["message"].startswith("Syntax Error")
    mutation = client.post("/graphql", json={"query": "mutation { x }"}).json()
    assert mutation["errors"][0]["message"] == "The mutation operation is not supported by the schema."
    huge = client.post("/graphql", json={"query": "{ allPatients(first: 99999999999) { totalCount } }"}).json()
    assert "32-bit" in huge["errors"][0]["message"]


def test_healthz_and_readyz(synthetic: Api) -> None:
    statements = synthetic.statements
    response = synthetic.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert synthetic.statements == statements  # liveness never asks the database
    ready = synthetic.client.get("/readyz")
    assert (ready.status_code, ready.json()) == (200, {"status": "ok"})


def test_cors_is_off_unless_configured(synthetic: Api, synthetic_db: Path) -> None:
    preflight = {"origin": "http://localhost:3000", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in synthetic.client.options("/graphql", headers=preflight).headers
    for api in serve(f"sqlite:///{synthetic_db}", cors_origins=("http://localhost:3000",)):
        response = api.client.options(
            "/graphql", headers={**preflight, "access-control-request-headers": "content-type"}
        )
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        response = api.client.post(
            "/graphql", json={"query": "{ allSeries { totalCount } }"}, headers={"origin": "http://localhost:3000"}
        )
        assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
        other = api.client.options("/graphql", headers={**preflight, "origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") != "http://evil.example"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_database_connection_cannot_write(synthetic: Api, synthetic_db: Path) -> None:
    before = _digest(synthetic_db)
    portal = synthetic.client.portal
    assert portal is not None
    for statement in ('DELETE FROM "SliceMetadata"', 'CREATE TABLE "x" ("y" INTEGER)', 'DROP TABLE "Patient"'):
        with pytest.raises(Exception, match="readonly|read-only"):
            portal.call(synthetic.database.fetch, statement)
    assert synthetic.data("{ allSlices { totalCount } }")["allSlices"]["totalCount"] == 55
    assert _digest(synthetic_db) == before


def test_unexpected_errors_are_masked_and_logged(synthetic_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    for api in serve(f"sqlite:///{synthetic_db}"):

        async def broken(sql: str, values: dict[str, Any] | None = None, alone: bool = False) -> list[Any]:
            raise RuntimeError(f"disk I/O error in {sql} at /secret/path")

        api.database.fetch = broken
        with caplog.at_level(logging.ERROR):
            body = api.post("{ allSeries { totalCount } }")
        assert body["errors"][0]["message"] == "Unexpected error."
        assert "secret" not in str(body) and "SELECT" not in str(body)
        assert "disk I/O error" in caplog.text
        assert api.client.get("/healthz").status_code == 200  # the process is alive
        ready = api.client.get("/readyz")  # the database is not
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["errors"][0]["extensions"] == {"code": "UNAVAILABLE"}


def test_client_errors_are_not_logged_as_server_errors(synthetic: Api, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert synthetic.error("{ allSeries(first: -5) { totalCount } }").startswith("`first` must be")
    assert caplog.text == ""


def test_introspection_and_graphiql_can_be_switched_off(synthetic_db: Path, synthetic: Api) -> None:
    query = "{ __schema { queryType { name } } }"
    assert synthetic.data(query) == {"__schema": {"queryType": {"name": "Query"}}}
    for api in serve(f"sqlite:///{synthetic_db}", introspection=False, graphiql=False):
        assert "introspection has been disabled" in api.post(query)["errors"][0]["message"]
        page = api.client.get("/graphql", headers={"accept": "text/html"})
        assert "graphiql" not in page.text.lower()


def test_a_missing_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'none.db'}"))
    with pytest.raises(DatabaseUnavailable, match="no database file .*none.db: run dicom-ingest"), TestClient(app):
        pass


def test_a_database_without_the_tables_is_a_clear_startup_error(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    app = create_app(Settings(database_url=f"sqlite:///{db}"))
    with pytest.raises(DatabaseUnavailable, match="does not hold the dicom-db tables"), TestClient(app):
        pass


def test_a_path_with_url_special_characters_opens(synthetic_db: Path, tmp_path: Path) -> None:
    odd = tmp_path / "a dir#1?x%20y" / "dé b.db"
    odd.parent.mkdir()
    shutil.copyfile(synthetic_db, odd)
    for api in serve("sqlite:///" + quote(str(odd))):  # a URL: the path percent-encoded, as for dicom-ingest
        assert api.data("{ allSeries { totalCount } }") == {"allSeries": {"totalCount": 6}}


def test_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "sqlite:///x.db",
            "DICOM_API_PORT": "9000",
            "DICOM_API_CORS_ORIGINS": "http://a.test, http://b.test",
            "DICOM_API_MAX_PAGE_SIZE": "50",
            "DICOM_API_PAGE_SIZE": "20",
            "DICOM_API_GRAPHIQL": "off",
        },
        port=9001,
    )
    assert settings.database_url == "sqlite:///x.db"
    assert settings.port == 9001  # command-line options win over the environment
    assert settings.cors_origins == ("http://a.test", "http://b.test")
    assert (settings.default_page_size, settings.max_page_size, settings.graphiql) == (20, 50, False)
    assert Settings.from_env({}) == Settings()
    with pytest.raises(SettingsError, match="DICOM_API_PORT='http'"):
        Settings.from_env({"DICOM_API_PORT": "http"})
    with pytest.raises(SettingsError, match="page sizes"):
        Settings.from_env({"DICOM_API_PAGE_SIZE": "5000"})


def test_page_size_settings_apply(synthetic_db: Path) -> None:
    for api in serve(f"sqlite:///{synthetic_db}", default_page_size=2, max_page_size=3):
        data = api.data("{ allSlices { nodes { sliceId } } }")
        assert len(data["allSlices"]["nodes"]) == 2
        assert api.error("{ allSlices(first: 4) { totalCount } }") == "`first` must be between 0 and 3, got 4"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _api_command() -> list[str]:
    exe = BIN / "dicom-api"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from dicom_db.api.cli import main; main()"]


def test_cli_help_describes_every_option() -> None:
    proc = subprocess.run([*_api_command(), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--db", "--host", "--port", "--cors-origin", "--log-level", "DATABASE_URL", "read-only"):
        assert option in proc.stdout


def test_cli_refuses_a_missing_database(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*_api_command(), "--db", f"sqlite:///{tmp_path / 'nope.db'}"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3
    assert "no database file" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([*_api_command(), "--db", "mysql://x/y"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unsupported database URL" in proc.stderr


def test_cli_serves_the_example_client(synthetic_db: Path, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{synthetic_db}"}
    server = subprocess.Popen(
        [*_api_command(), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(200):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise AssertionError("dicom-api did not start")
        example = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "list_series.py"), "--url", f"{url}/graphql"]
            + ["--modality", "CT", "--thinner-than", "1", "--page-size", "1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert example.returncode == 0, example.stderr
        lines = example.stdout.splitlines()
        assert lines[0].split() == ["patient", "study", "date", "modality", "thickness", "slices", "description"] + [
            "series",
            "UID",
        ]
        assert lines[2].split()[:5] == ["PAT002", "2022-01-01", "CT", "0.5", "4"]
        assert lines[3].split()[:5] == ["PAT001", "2021-03-04", "CT", "0.625", "40"]
        assert lines[-1] == "2 of 2 series"
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_graphql_response_json_is_answered_with_its_status_codes(synthetic: Api) -> None:
    client = synthetic.client
    new = {"accept": "application/graphql-response+json"}
    ok = client.post("/graphql", json={"query": "{ allSeries { totalCount } }"}, headers=new)
    assert ok.status_code == 200 and ok.headers["content-type"] == "application/graphql-response+json"
    assert ok.json() == {"data": {"allSeries": {"totalCount": 6}}}
    for query, variables in (
        ("{ allSeries { ", {}),  # does not parse
        ("{ allSeries { nope } }", {}),  # does not validate
        ("query($n: Int) { allSeries(first: $n) { totalCount } }", {"n": "x"}),  # variables do not coerce
    ):
        failed = client.post("/graphql", json={"query": query, "variables": variables}, headers=new)
        assert failed.status_code == 400, failed.text
        assert failed.headers["content-type"] == "application/graphql-response+json"
        assert "data" not in failed.json() and failed.json()["errors"]
    # An error during execution keeps `data` and 200.
    partial = client.post("/graphql", json={"query": "{ allSeries(first: -1) { totalCount } }"}, headers=new)
    assert partial.status_code == 200 and partial.json()["data"] is None
    # application/json (and no preference) keep the old answers: 200, with `data`.
    legacy = client.post("/graphql", json={"query": "{ allSeries { nope } }"})
    assert legacy.status_code == 200 and legacy.headers["content-type"] == "application/json"
    assert legacy.json()["data"] is None
    both = {"accept": "application/json;q=0.9, application/graphql-response+json"}
    assert client.post("/graphql", json={"query": "{ x }"}, headers=both).status_code == 400
    prefers_json = {"accept": "application/json, application/graphql-response+json;q=0.5"}
    assert client.post("/graphql", json={"query": "{ x }"}, headers=prefers_json).status_code == 200
