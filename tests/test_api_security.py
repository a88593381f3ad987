"""Production posture: SQL injection through every string filter finds exactly what Python finds and leaves the
database as it was; every error path answers without SQL, paths or stack traces; no field suggestions; the
database connection cannot write; a request sees one snapshot; PostgreSQL: the same, plus pseudonyms computed
by the server, a lost connection replaced, a timed-out statement cancelled on the server.

PostgreSQL tests skip, saying why, when no server answers at 127.0.0.1:5432 (user postgres, trust auth).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from api_helpers import UID_ROOT, Api, TestClient, serve
from conftest import PG_SERVER, dump_tables, fresh_postgres_database, run_ingest

from dicom_db.api import db as api_db
from dicom_db.api import limits
from dicom_db.api.app import GraphQLApp, create_app
from dicom_db.api.auth import AccessLevel, Token
from dicom_db.api.filters import MAX_MATCH_LENGTH
from dicom_db.api.masking import Pseudonyms
from dicom_db.api.settings import Settings

pytest_plugins = ["api_fixtures"]

LEAKS = ("Traceback", 'File "', "sqlite3", "asyncpg", "OperationalError", "SELECT", ' FROM "', "/secret", "Did you")


def _no_leaks(text: str) -> None:
    for leak in LEAKS:
        assert leak not in text, (leak, text)


@contextmanager
def served(db_url: str, **settings: Any) -> Iterator[Api]:
    running = serve(db_url, **settings)
    try:
        yield next(running)
    finally:
        running.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# SQL injection through every string filter: the answer is the one Python computes from the stored values.

NASTY = [
    "'",
    "''",
    '"',
    "%",
    "_",
    "\\",
    "!",
    "*",
    "?",
    "--",
    ";",
    "' OR '1'='1",
    "' OR 1=1 --",
    '" OR ""="',
    '\'; DROP TABLE "Patient"; --',
    '\'); DELETE FROM "SliceMetadata"; --',
    "1; ATTACH DATABASE '/tmp/x.db' AS x; --",
    "%' --",
    "_%_",
    "\\%",
    "!%",
    "[a-z]*",
    "$1",
    ":w0",
    "?1",
    "CT",
    "ct",
    "Alpha^Anna",
    "alpha^*",
    "*^*",
    "ÄRGER^Élodie",
    "ärger^é*",
    "ärger?élodie",
    "CT Chest 100% dose_test!",
    "100%",
    "dose_test",
    "*100%*",
    "*dose?test!",
    "ct chest 100% dose_test!",
    "ORIGINAL\\PRIMARY\\AXIAL",
    "*\\AXIAL",
    "\U0001f600 emoji",
    "\u200b",
    "ﬁ ligature",
    "x" * 10_000,
    "'" * 5_000 + "%" * 5_000,
    "a" * 100_000,
]

# (connection, key field, table, key column, string columns with their filter entries)
TARGETS = [
    (
        "allPatients",
        "patientId",
        "Patient",
        "PatientID",
        [("patientName", "PatientName"), ("patientSex", "PatientSex")],
    ),
    ("allStudies", "studyInstanceUid", "Study", "StudyInstanceUID", [("studyDescription", "StudyDescription")]),
    (
        "allSeries",
        "seriesInstanceUid",
        "Series",
        "SeriesInstanceUID",
        [("modality", "Modality"), ("imageType", "ImageType")],
    ),
    ("allSlices", "sopInstanceUid", "SliceMetadata", "SOPInstanceUID", [("sopInstanceUid", "SOPInstanceUID")]),
]
OPERATORS = ["eq", "ne", "in", "notIn", "contains", "startsWith", "match"]


def _expected(op: str, text: str, stored: str | None) -> bool:
    if op == "eq":
        return stored == text
    if op == "ne":
        return stored is None or stored != text
    if op == "in":
        return stored in (text, "no such value")
    if op == "notIn":
        return stored is None or stored not in (text, "no such value")
    if stored is None:
        return False
    if op == "contains":
        return text in stored
    if op == "startsWith":
        return stored.startswith(text)
    return _wildcards(text).fullmatch(stored.lower()) is not None  # match: DICOM wildcards, case-insensitive


@functools.cache
def _wildcards(text: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in text.lower()), re.S)


def _filter(op: str) -> str:
    return f'{{{op}: ["no such value", $v]}}' if op in ("in", "notIn") else f"{{{op}: $v}}"


def test_injection_through_every_string_filter_finds_what_python_finds(synthetic: Api, synthetic_db: Path) -> None:
    before = (dump_tables(synthetic_db), _digest(synthetic_db))
    stored = {
        table: sqlite3.connect(synthetic_db)
        .execute(f'SELECT "{key}", {", ".join(f"{chr(34)}{c}{chr(34)}" for _, c in columns)} FROM "{table}"')
        .fetchall()
        for _, _, table, key, columns in TARGETS
    }
    checked = 0
    for connection, key_field, table, _, columns in TARGETS:
        for text in NASTY:
            # One request per table and value: every operator on every column, aliased. A `match` pattern over
            # 10,000 characters is refused (SQLite's LIKE stops at 50,000 bytes; no stored value comes near).
            ops = [op for op in OPERATORS if op != "match" or len(text) <= MAX_MATCH_LENGTH]
            body = " ".join(
                f"{op}_{field}: {connection}(where: {{{field}: {_filter(op)}}}, first: 1000) "
                f"{{ nodes {{ {key_field} }} }}"
                for field, _ in columns
                for op in ops
            )
            data = synthetic.data(f"query($v: String!) {{ {body} }}", v=text)
            for index, (field, _column) in enumerate(columns, start=1):
                for op in ops:
                    got = sorted(n[key_field] for n in data[f"{op}_{field}"]["nodes"])
                    want = sorted(row[0] for row in stored[table] if _expected(op, text, row[index]))
                    assert got == want, (connection, field, op, text[:40])
                    checked += 1
                if len(ops) < len(OPERATORS):
                    message = synthetic.error(
                        f"query($v: String!) {{ {connection}(where: {{{field}: {{match: $v}}}}) {{ totalCount }} }}",
                        v=text,
                    )
                    assert message == f"`match` takes at most 10000 characters, got {len(text)}"
                    checked += 1
    assert checked == len(NASTY) * len(OPERATORS) * sum(len(c) for *_, c in TARGETS)
    assert (dump_tables(synthetic_db), _digest(synthetic_db)) == before


def test_injection_in_string_literals_too(synthetic: Api, synthetic_db: Path) -> None:
    before = _digest(synthetic_db)
    for text in NASTY[:-3]:
        literal = json.dumps(text, ensure_ascii=False)  # a valid GraphQL string literal
        data = synthetic.data(
            f"{{ a: allStudies(where: {{studyDescription: {{eq: {literal}}}}}) {{ totalCount }} "
            f"b: allStudies(where: {{studyDescription: {{match: {literal}}}}}) {{ totalCount }} "
            f"c: allStudies(where: {{studyDescription: {{notIn: [{literal}]}}}}) {{ totalCount }} }}"
        )
        hit = text in ("CT Chest 100% dose_test!",)
        assert data["a"]["totalCount"] == (1 if hit else 0), text
        assert data["c"]["totalCount"] == (4 if hit else 5), text
    assert _digest(synthetic_db) == before


@pytest.mark.parametrize("op", OPERATORS)
def test_a_nul_character_is_refused_before_any_sql(synthetic: Api, op: str) -> None:
    before = synthetic.statements
    body = synthetic.post(
        f"query($v: String!) {{ allPatients(where: {{patientName: {_filter(op)}}}) {{ totalCount }} }}", {"v": "a\0b"}
    )
    assert synthetic.statements == before
    assert body["data"] is None
    [error] = body["errors"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}
    assert "NUL character" in error["message"]


def test_a_lone_surrogate_is_refused_before_any_sql(synthetic: Api) -> None:
    before = synthetic.statements
    raw = b'{"query": "query($v: String!) { patient(patientId: $v) { patientId } }", "variables": {"v": "\\ud800"}}'
    response = synthetic.client.post("/graphql", content=raw, headers={"content-type": "application/json"})
    assert synthetic.statements == before
    assert response.json()["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}


# Errors: masked on every path, details in the server's log only.


@pytest.fixture
def scratch_db(synthetic_db: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "scratch.db"
    shutil.copyfile(synthetic_db, copy)
    return copy


def test_a_database_error_is_masked_and_logged(scratch_db: Path, caplog: pytest.LogCaptureFixture) -> None:
    for api in serve(f"sqlite:///{scratch_db}"):
        # Another process changes the schema under the running API: its next statement fails in SQLite.
        with sqlite3.connect(scratch_db) as writer:
            writer.execute('ALTER TABLE "Series" RENAME TO "SeriesGone"')
        with caplog.at_level(logging.ERROR):
            body = api.post("{ allSeries { totalCount nodes { modality } } }")
        assert body["data"] is None
        assert {e["message"] for e in body["errors"]} == {"Unexpected error."}
        _no_leaks(json.dumps(body))
        assert "no such table" in caplog.text  # the details are in the log


def test_a_failing_connection_is_a_clear_error_and_logged(synthetic: Api, caplog: pytest.LogCaptureFixture) -> None:
    async def broken(connection: Any, sql: str) -> None:
        raise sqlite3.OperationalError("disk I/O error at /secret/path")

    real = api_db._execute
    api_db._execute = broken  # BEGIN fails, on a fresh connection too
    try:
        with caplog.at_level(logging.WARNING):
            # Two statements: a read transaction (a compiled request of one statement runs without one).
            body = synthetic.post("{ allSeries { totalCount } allStudies { totalCount } }")
    finally:
        api_db._execute = real
    assert body["data"] is None
    assert body["errors"][0]["message"] == "The database is not available right now; try again."
    assert body["errors"][0]["extensions"] == {"code": "UNAVAILABLE"}
    _no_leaks(json.dumps(body))
    assert "disk I/O error at /secret/path" in caplog.text
    # The slots of the failed connections are reopened by the next requests.
    for _ in range(2 * synthetic.database.pool_size):
        assert synthetic.data("{ allSeries { totalCount } }") == {"allSeries": {"totalCount": 6}}


def test_a_bug_in_the_query_checks_is_masked(synthetic: Api, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("bug with SELECT * FROM secret at /secret/path")

    real = limits.Budget.selection_set
    limits.Budget.selection_set = broken  # type: ignore[method-assign]
    try:
        with caplog.at_level(logging.ERROR):
            # A query no other test sends: the compiled path keeps the plans it checked.
            body = synthetic.post("{ allSeries { totalCount __typename } }")
    finally:
        limits.Budget.selection_set = real  # type: ignore[method-assign]
    assert body == {"data": None, "errors": [{"message": "Unexpected error."}]}
    assert "bug with SELECT" in caplog.text


def test_a_failure_outside_graphql_is_a_json_500_without_details(
    synthetic_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Any, request: Any, response: Any) -> Any:
        raise RuntimeError("context failure at /secret/path")

    monkeypatch.setattr(GraphQLApp, "get_context", broken)
    with TestClient(create_app(Settings(database_url=f"sqlite:///{synthetic_db}")), raise_server_exceptions=False) as c:
        response = c.post("/graphql", json={"query": "{ allSeries { totalCount } }"})
        assert response.status_code == 500
        assert response.json() == {
            "errors": [{"message": "Unexpected error.", "extensions": {"code": "INTERNAL_SERVER_ERROR"}}]
        }


def test_a_missing_parent_names_no_key(scratch_db: Path) -> None:
    for api in serve(f"sqlite:///{scratch_db}"):
        with sqlite3.connect(scratch_db) as writer:
            writer.execute('DELETE FROM "Patient" WHERE "PatientID" = ?', ("PAT002",))
        body = api.post(f'{{ study(studyInstanceUid: "{UID_ROOT}.3") {{ patient {{ patientSex }} }} }}')
        [error] = body["errors"]
        assert error["extensions"] == {"code": "NOT_FOUND"}
        assert "PAT002" not in error["message"]


TYPOS = [
    ("{ allPatient { totalCount } }", "allPatient"),
    ("{ allPatients { totalCont } }", "totalCont"),
    ("{ allPatients(frist: 1) { totalCount } }", "frist"),
    ('{ allPatients(where: {patientNam: {eq: "x"}}) { totalCount } }', "patientNam"),
    ('{ allPatients(where: {patientName: {equals: "x"}}) { totalCount } }', "equals"),
    ("{ allSeries(orderBy: [{field: MODALTY}]) { totalCount } }", "MODALTY"),
    ("{ allSeries { groupBy(field: MODALTIES) { value } } }", "MODALTIES"),
    ("query($w: SeriesWher) { allSeries(where: $w) { totalCount } }", "SeriesWher"),
    ("{ ...F } fragment F on Quer { allSeries { totalCount } }", "Quer"),
    ("{ allSeries @skp(if: true) { totalCount } }", "skp"),
]


@pytest.mark.parametrize(("query", "name"), TYPOS, ids=[n for _, n in TYPOS])
def test_no_field_suggestions(synthetic: Api, query: str, name: str) -> None:
    body = synthetic.post(query)
    messages = " ".join(e["message"] for e in body["errors"])
    assert name in messages
    assert "Did you mean" not in messages and "did you mean" not in messages.lower()


def test_no_suggestions_for_variable_values(synthetic: Api) -> None:
    cases = [
        ("query($o: [SeriesOrderBy!]) { allSeries(orderBy: $o) { totalCount } }", {"o": [{"field": "MODALTY"}]}),
        ("query($w: SeriesWhere) { allSeries(where: $w) { totalCount } }", {"w": {"modalty": {"eq": "CT"}}}),
        ("query($f: SeriesGroupField!) { allSeries { groupBy(field: $f) { value } } }", {"f": "MODALIT"}),
    ]
    for query, variables in cases:
        before = synthetic.statements
        body = synthetic.post(query, variables)
        assert synthetic.statements == before
        assert body["data"] is None and body["errors"], body
        assert "Did you mean" not in json.dumps(body)


def test_introspection_and_graphiql_off(synthetic_db: Path) -> None:
    for api in serve(f"sqlite:///{synthetic_db}", introspection=False, graphiql=False):
        for query in (
            "{ __schema { types { name } } }",
            '{ __type(name: "Patient") { fields { name } } }',
            "{ ...F } fragment F on Query { __schema { queryType { name } } }",
        ):
            body = api.post(query)
            assert body["data"] is None and "introspection" in body["errors"][0]["message"].lower()
        assert api.data("{ __typename allSeries { totalCount } }") == {
            "__typename": "Query",
            "allSeries": {"totalCount": 6},
        }
        page = api.client.get("/graphql", headers={"accept": "text/html"})
        assert "graphiql" not in page.text.lower()


# The API's connections cannot write, whatever SQL they are given.

WRITES = [
    'DELETE FROM "SliceMetadata"',
    'UPDATE "Patient" SET "PatientName" = \'x\'',
    'INSERT INTO "Patient" ("PatientID") VALUES (\'EVIL\')',
    'DROP TABLE "Patient"',
    'CREATE TABLE "x" ("y" INTEGER)',
    "PRAGMA journal_mode = DELETE",
    "VACUUM",
]


def test_the_request_connection_cannot_write(synthetic: Api, synthetic_db: Path, tmp_path: Path) -> None:
    before = (dump_tables(synthetic_db), _digest(synthetic_db))
    database = synthetic.database
    attached = tmp_path / "attached.db"

    async def attempt(sql: str) -> str:
        async with database.request():
            try:
                await database.fetch(sql)
            except Exception as exc:
                return str(exc)
            return "wrote"

    portal = synthetic.client.portal
    assert portal is not None
    for sql in [*WRITES, f"ATTACH DATABASE '{attached}' AS x", f"VACUUM INTO '{attached}'"]:
        outcome = portal.call(attempt, sql)
        # Refused by mode=ro / query_only ("readonly database"), the authorizer, or the read transaction.
        assert re.search(r"readonly database|not authorized|cannot (change|VACUUM)", outcome), (sql, outcome)
    assert not attached.exists()  # ATTACH and VACUUM INTO would create it before failing to write: refused first
    assert (dump_tables(synthetic_db), _digest(synthetic_db)) == before
    assert synthetic.data("{ allSlices { totalCount } }") == {"allSlices": {"totalCount": 55}}


def test_read_only_even_without_query_only(scratch_db: Path) -> None:
    """query_only is one guard; the file is also opened read-only (mode=ro): with the pragma off, writes still
    fail."""
    before = _digest(scratch_db)
    with served(f"sqlite:///{scratch_db}", pool_size=1) as api:
        database = api.database

        async def attempt(sql: str) -> str:
            connection = await database._checkout(begin=False)
            try:
                await connection.raw_connection.execute("PRAGMA query_only = OFF")
                await connection.raw_connection.execute(sql)
            except Exception as exc:
                return str(exc)
            finally:
                await connection.raw_connection.execute("PRAGMA query_only = ON")
                await database._checkin(connection)
            return "wrote"

        portal = api.client.portal
        assert portal is not None
        for sql in WRITES[:5]:
            assert portal.call(attempt, sql) == "attempt to write a readonly database", sql
    assert _digest(scratch_db) == before


# One snapshot per request.


def test_a_request_sees_one_snapshot(scratch_db: Path) -> None:
    with served(f"sqlite:///{scratch_db}") as api:
        database = api.database

        def write() -> None:
            with sqlite3.connect(scratch_db) as writer:
                writer.execute('INSERT INTO "Patient" ("PatientID", "PatientName") VALUES (\'NEW\', \'New^Patient\')')

        async def run() -> tuple[int, int, int]:
            count = 'SELECT COUNT(*) FROM "Patient"'
            async with database.request():
                first = (await database.fetch(count))[0][0]
                await asyncio.to_thread(write)
                again = (await database.fetch(count))[0][0]
            async with database.request():
                after = (await database.fetch(count))[0][0]
            return first, again, after

        portal = api.client.portal
        assert portal is not None
        assert portal.call(run) == (4, 4, 5)
        assert api.data("{ allPatients { totalCount } }") == {"allPatients": {"totalCount": 5}}


# PostgreSQL.


async def _pg(sql: str, *args: Any, database: str = "test") -> list[Any]:
    connection = await asyncpg.connect(f"{PG_SERVER}/{database}", timeout=5)
    try:
        return await connection.fetch(sql, *args)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def pg_url(synthetic_db: Path) -> Iterator[str]:
    with fresh_postgres_database(f"dicom_api_security_{os.getpid()}") as url:
        run_ingest(synthetic_db.parent / "files", "--db", url, "--jobs", "1", "--quiet", check=0)
        yield url


KEY = b"a pseudonym key of the test suite"
DEID = "deid-token-0123456789abcdefXYZ"


@pytest.fixture(scope="module")
def pg(pg_url: str) -> Iterator[Api]:
    yield from serve(pg_url, tokens=(Token(DEID, AccessLevel.DEIDENTIFIED, "bob"),), pseudonym_key=KEY)


def _post(api: Api, query: str, token: str | None = None, **variables: Any) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = api.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_postgres_pseudonyms_are_computed_as_python_does(pg: Api) -> None:
    pseudonyms = Pseudonyms(KEY)
    shown = _post(pg, "{ allPatients { nodes { patientId patientIdGenerated } } }", DEID)["data"]["allPatients"]
    ids = [row["PatientID"] for row in asyncio.run(_pg('SELECT "PatientID" FROM "Patient"', database=_db(pg)))]
    # Paged in pseudonym order (computed by the server), each the pseudonym Python computes.
    assert [n["patientId"] for n in shown["nodes"]] == sorted(pseudonyms(i) for i in ids)
    for real in ids:
        found = _post(pg, f'{{ patient(patientId: "{pseudonyms(real)}") {{ patientId }} }}', DEID)["data"]
        assert found == {"patient": {"patientId": pseudonyms(real)}}
    assert _post(pg, '{ patient(patientId: "PAT001") { patientId } }', DEID)["data"] == {"patient": None}


def _db(api: Api) -> str:
    return api.database.url.rsplit("/", 1)[1]


def test_postgres_refuses_nul_before_any_sql(pg: Api) -> None:
    before = pg.statements
    body = _post(pg, '{ allPatients(where: {patientSex: {contains: "\\u0000"}}) { totalCount } }', DEID)
    assert pg.statements == before and body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT"}


def test_postgres_injection_attempts_find_what_they_should(pg: Api, synthetic: Api) -> None:
    query = (
        "query($v: String!) { "
        # BodyPartExamined: a text column de-identified access keeps (PS3.15 removes the descriptions).
        + " ".join(f"{op}: allSeries(where: {{bodyPartExamined: {_filter(op)}}}) {{ totalCount }}" for op in OPERATORS)
        + " }"
    )
    for text in NASTY:
        assert _post(pg, query, DEID, v=text) == synthetic.post(query, {"v": text}), text[:40]


def test_postgres_request_sees_one_snapshot_and_cannot_write(pg: Api, pg_url: str) -> None:
    database = pg.database

    async def run() -> tuple[int, int, int, str]:
        count = 'SELECT COUNT(*) FROM "Patient"'
        async with database.request():
            first = (await database.fetch(count))[0][0]
            await _pg('INSERT INTO "Patient" ("PatientID") VALUES (\'NEW\')', database=_db(pg))
            again = (await database.fetch(count))[0][0]
            try:
                await database.fetch('DELETE FROM "Patient"')
                outcome = "wrote"
            except Exception as exc:
                outcome = str(exc)
        async with database.request():
            after = (await database.fetch(count))[0][0]
        await _pg('DELETE FROM "Patient" WHERE "PatientID" = \'NEW\'', database=_db(pg))
        return first, again, after, outcome

    portal = pg.client.portal
    assert portal is not None
    first, again, after, outcome = portal.call(run)
    assert (first, again, after) == (4, 4, 5)
    assert "read-only transaction" in outcome


def test_postgres_lost_connections_are_replaced(pg: Api) -> None:
    """A server restart, as the pool sees it: every connection of the API killed by the server."""
    query = "{ allSeries { totalCount } }"
    assert _post(pg, query, DEID)["data"] == {"allSeries": {"totalCount": 6}}
    killed = asyncio.run(
        _pg(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND application_name = 'dicom-api'",
            _db(pg),
        )
    )
    assert len(killed) >= 1
    time.sleep(0.2)
    for _ in range(2 * pg.database.pool_size):
        assert _post(pg, query, DEID) == {"data": {"allSeries": {"totalCount": 6}}}
    assert pg.client.get("/healthz").json() == {"status": "ok"}


def test_postgres_interrupted_statement_is_cancelled_on_the_server(pg: Api) -> None:
    database = pg.database

    async def run() -> float:
        async with database.request() as session:
            task = asyncio.create_task(database.fetch("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.5)
            started = time.perf_counter()
            session.interrupt()
            with pytest.raises(BaseException):  # noqa: B017 (cancelled, or the server's cancel error)
                await task
        return time.perf_counter() - started

    portal = pg.client.portal
    assert portal is not None
    assert portal.call(run) < 5
    active = asyncio.run(
        _pg(
            "SELECT query FROM pg_stat_activity WHERE datname = $1 AND query LIKE '%pg_sleep(30)%' "
            "AND state = 'active' AND pid <> pg_backend_pid()",
            _db(pg),
        )
    )
    assert active == []
    assert _post(pg, "{ allSeries { totalCount } }", DEID)["data"] == {"allSeries": {"totalCount": 6}}
