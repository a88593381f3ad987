"""Fuzz the whole GraphQL schema with schemathesis against the real app over a real database.

    .venv/bin/pytest tests/test_api_fuzz.py -s          # prints how many queries ran and what they answered
    DICOM_DB_FUZZ_SEED=7 .venv/bin/pytest tests/test_api_fuzz.py -s    # explore with another seed

The database is filled by the real `dicom-ingest` from pydicom's dicomdirtests files and a CT series written
with pydicom. The schema is loaded by introspection from the app (in-process ASGI, lifespan and all), and every
root field (`patient`, `study`, `series`, `slice`, `allPatients`, ...) gets queries generated from it by
schemathesis (hypothesis-graphql underneath): valid documents with arbitrary nesting, arguments, filters,
orderings, facets and values (positive mode), and documents that break the schema (negative mode). String
arguments are often values of the database (IDs, UIDs, names, modalities), SQL and wildcard metacharacters, and
`after` is often dropped or a real cursor, so that queries reach deep into the data instead of stopping at the
first bad argument.

Every response must be a GraphQL response, never a server error: HTTP 200 (or 400 for a refused request), JSON
with `data` and/or a non-empty `errors` list, no `"Unexpected error."` (the masked message of an exception the API
did not expect), no execution error without an error code (every error the API raises on purpose has one), no
non-null field resolved to null (schemathesis' response_schema_conformance check), and no stack trace or SQL in
any message.

Hypothesis runs with a fixed seed and no example database, so CI generates the same queries every time; the tests
count the queries actually sent. Three runs:

- SQLite, as a client of a server without tokens: 1,120 queries (asserted: at least 1,000);
- PostgreSQL, filled from the same files, 400 queries, when a server answers at 127.0.0.1:5432 (user postgres,
  trust auth; skipped otherwise);
- SQLite as a de-identified client (a `deidentified` token), 400 queries, and as a level a tokens file declares
  (`level basic`: PS3.15's Basic Profile without options), 200 queries: removed fields are refused in filters,
  orderings and facets (FORBIDDEN), and no response may hold a value the level hides (PatientID, names, birth
  date, accession number, StudyID, descriptions, Study/Series/SOP Instance UIDs, unshifted dates), wherever in the
  response (`raw`, cursors' text and error messages included). UIDs are sent as pseudonyms, so lookups find rows.

The PostgreSQL run found that a NUL character (U+0000) in a string argument failed there, as PostgreSQL text
cannot hold it ('Unexpected error.'); the API now refuses such an argument as bad input on both databases, which
`test_nul_character_in_a_string_argument_is_refused` keeps.
"""

from __future__ import annotations

import collections
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import graphql
import pytest
from conftest import DICOMDIR_TESTS, fresh_postgres_database, run_ingest
from dicom_factory import uid, write_series

schemathesis = pytest.importorskip("schemathesis")  # the `dev` extra installs it
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.graphql import nodes  # noqa: E402
from schemathesis.python import asgi  # noqa: E402
from schemathesis.specs.openapi.checks import response_schema_conformance  # noqa: E402

from dicom_db.api.app import create_app  # noqa: E402
from dicom_db.api.auth import AccessLevel  # noqa: E402
from dicom_db.api.columns import TABLES  # noqa: E402
from dicom_db.api.masking import Pseudonyms, Treatment, treatment  # noqa: E402
from dicom_db.api.settings import Settings  # noqa: E402

FUZZ_SEED = int(os.environ.get("DICOM_DB_FUZZ_SEED", "20260604"))
# Per root field (8 of them): at least 1,000 queries in all, in about a minute on a 2-core machine.
POSITIVE_EXAMPLES = 110
NEGATIVE_EXAMPLES = 30
MIN_QUERIES = 1000
# The PostgreSQL run (skipped without a server at 127.0.0.1:5432) is shorter: 400 queries.
PG_POSITIVE_EXAMPLES = 40
PG_NEGATIVE_EXAMPLES = 10
# The run as a de-identified client (skipped while the API has no authentication): 400 queries.
DEID_POSITIVE_EXAMPLES = 40
DEID_NEGATIVE_EXAMPLES = 10
# The run as a level declared in a tokens file (the Basic Profile alone): 200 queries.
LEVEL_POSITIVE_EXAMPLES = 20
LEVEL_NEGATIVE_EXAMPLES = 5

# Connections and the binding keys (`<Type>.<field>.<argument>`) of their `after` argument.
CURSOR_QUERIES = {
    "Query.allPatients.after": "{ allPatients(first: 3) { edges { cursor } } }",
    "Query.allStudies.after": "{ allStudies(first: 3) { edges { cursor } } }",
    "Query.allSeries.after": "{ allSeries(first: 3) { edges { cursor } } }",
    "Query.allSlices.after": "{ allSlices(first: 3) { edges { cursor } } }",
    "Patient.studies.after": "{ allPatients(first: 3) { nodes { studies(first: 1) { edges { cursor } } } } }",
    "Study.series.after": "{ allStudies(first: 3) { nodes { series(first: 1) { edges { cursor } } } } }",
    "Series.slices.after": "{ allSeries(first: 3) { nodes { slices(first: 2) { edges { cursor } } } } }",
}
# Text that has broken query builders before: SQL and LIKE metacharacters, DICOM wildcards, quotes, a NUL.
NASTY_STRINGS = [
    "",
    " ",
    "*",
    "?",
    "%",
    "_",
    "\\",
    "'",
    '"',
    "CT*",
    "*^*",
    "doe^p*",
    "%' OR '1'='1",
    "'; DROP TABLE Patient; --",
    "1.2.840.10008.%",
    "\x00",
    "\u00e4rger^\u00e9lodie",
    "NOID-",
]
# Fragments of a leaked traceback or SQL statement, none of which a fuzzed value contains.
LEAKS = ("Traceback", 'File "', "sqlite3.", "asyncpg", "OperationalError", "SELECT ", ' FROM "')


@pytest.fixture(scope="module")
def fuzz_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fuzz")
    write_series(root / "written", count=6, patient_id="FUZZ-1", patient_name="Fuzz^Written")
    db = root / "fuzz.db"
    run_ingest(DICOMDIR_TESTS, root / "written", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0, cwd=root)
    return db


def database_values(db: Path) -> set[str]:
    """Values stored in the database, for filters and lookups that find something."""
    columns = {
        "Patient": ["PatientID", "PatientName", "PatientSex"],
        "Study": ["StudyInstanceUID", "StudyDescription", "StudyID", "StudyDate", "ReferringPhysicianName"],
        "Series": ["SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined", "ImageType"],
        "SliceMetadata": ["SOPInstanceUID", "AccessionNumber"],
    }
    values: set[str] = set()
    with sqlite3.connect(db) as conn:
        for table, names in columns.items():
            existing = {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}
            assert set(names) <= existing, f"{table} has no column {set(names) - existing}"
            for name in names:
                sql = f'SELECT DISTINCT "{name}" FROM "{table}" WHERE "{name}" IS NOT NULL ORDER BY 1 LIMIT 6'
                values.update(str(row[0]) for row in conn.execute(sql))
    return values


def identifying_values(db: Path, level: AccessLevel, keys: Pseudonyms) -> set[str]:
    """The stored values a level hides (PS3.15: removed, replaced by a pseudonym or a pseudonymous UID, or dates
    shifted), as stored and, for dates, as ISO dates: none may reach a client of that level. Left out: a value
    also stored in a column the level shows as stored (pydicom's files have AccessionNumber 134 and StudyID 134),
    one equal to some shifted date, and values of fewer than 3 characters."""
    identifying: set[str] = set()
    other: set[str] = set()
    hidden = (Treatment.NULL, Treatment.PSEUDONYM, Treatment.UID, Treatment.SHIFTED)
    with sqlite3.connect(db) as conn:
        for table in TABLES.values():
            for column in table.columns:
                sql = f'SELECT DISTINCT "{column.value_column or column.name}" FROM "{table.name}"'
                values = {str(row[0]) for row in conn.execute(sql)}
                if treatment(column, level.options)[0] in hidden:
                    identifying |= values
                elif treatment(column, level.options)[0] is Treatment.STORED:
                    other |= values | {part for value in values for part in value.split("\\")}
        patients = [row[0] for row in conn.execute('SELECT "PatientID" FROM "Patient"')]
    identifying |= {f"{v[:4]}-{v[4:6]}-{v[6:]}" for v in identifying if len(v) == 8 and v.isdigit()}  # ISO dates
    dates = [v for v in identifying if len(v) == 10 and v[4] == "-"]
    shifted = {keys.shift_date(d, p) for d in dates for p in patients}  # what any patient's date may become
    return {v for v in identifying - other - shifted if len(v) >= 3 and v != "None"}


def string_leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from string_leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from string_leaves(item)


def harvest_cursors(app: Any, headers: dict[str, str]) -> dict[str, list[str]]:
    """Real cursors of each connection in its default order, read through the API."""
    cursors: dict[str, list[str]] = {}
    with asgi.get_client(app) as client:
        for key, query in CURSOR_QUERIES.items():
            body = client.post("/graphql", json={"query": query}, headers=headers).json()
            assert "errors" not in body, body
            cursors[key] = sorted(set(_find_cursors(body["data"])))
            assert cursors[key], f"no cursor for {key}: {body}"
    return cursors


def _find_cursors(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "cursor" and isinstance(item, str):
                yield item
            else:
                yield from _find_cursors(item)
    elif isinstance(value, list):
        for item in value:
            yield from _find_cursors(item)


class _DropAfter(graphql.Visitor):
    def enter_argument(self, node: graphql.ArgumentNode, *_: Any) -> Any:
        return graphql.REMOVE if node.name.value == "after" else None


def drop_after_mostly(_context: Any, body: graphql.DocumentNode) -> st.SearchStrategy[graphql.DocumentNode]:
    """A random `after` fails its whole connection; keep it in a quarter of the documents only."""
    stripped = graphql.visit(body, _DropAfter())
    return st.sampled_from([stripped, stripped, stripped, body])


DATE_STRATEGY = st.one_of(
    st.dates().map(lambda d: nodes.String(d.isoformat())),
    st.sampled_from(["2021-13-01", "19700101", "2021-02-30", "", "0000-00-00", "9999-12-31T00:00"]).map(nodes.String),
)


@dataclass
class Tally:
    queries: int = 0
    by_mode: collections.Counter[str] = field(default_factory=collections.Counter)
    answered: int = 0  # responses with data and no error
    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        modes = ", ".join(f"{mode} {n}" for mode, n in sorted(self.by_mode.items()))
        codes = ", ".join(f"{code} {n}" for code, n in self.codes.most_common())
        return (
            f"fuzz: {self.queries} queries (seed {FUZZ_SEED}; {modes}); {self.answered} answered without error; "
            f"errors by code: {codes}"
        )


def problems_of(status: int, content_type: str, text: str) -> list[str]:
    """What is wrong with one response, as a server error; empty when it is a proper GraphQL response."""
    if status not in (200, 400):
        return [f"HTTP {status}"]
    if "json" not in content_type:
        return [f"content-type {content_type!r}"]
    try:
        body = json.loads(text)
    except ValueError:
        return ["body is not JSON"]
    if not isinstance(body, dict) or not body.keys() <= {"data", "errors", "extensions"}:
        return ["body is not a GraphQL response object"]
    if "data" not in body and "errors" not in body:
        return ["neither data nor errors"]
    errors = body.get("errors")
    if errors is None:
        return [] if isinstance(body.get("data"), dict) else ["no errors and no data object"]
    if not isinstance(errors, list) or not errors:
        return ["errors is not a non-empty list"]
    problems = []
    for error in errors:
        if not isinstance(error, dict) or not isinstance(error.get("message"), str):
            problems.append(f"malformed error {error!r}")
            continue
        message = error["message"]
        code = (error.get("extensions") or {}).get("code")
        if message == "Unexpected error." or code == "INTERNAL_SERVER_ERROR":
            problems.append(f"unexpected error: {error}")
        elif "path" in error and not code:
            # Every error this API raises on purpose while executing has a code (BAD_USER_INPUT, FORBIDDEN, a
            # limit's, ...); one without is graphql-core failing on a value a resolver returned.
            problems.append(f"execution error without a code: {error}")
        problems.extend(f"leak {leak!r} in {message!r}" for leak in LEAKS if leak in message)
    return problems


def test_fuzz_whole_schema(fuzz_db: Path) -> None:
    app = create_app(Settings(database_url=f"sqlite:///{fuzz_db}"))
    try:
        tally = fuzz(app, database_values(fuzz_db), POSITIVE_EXAMPLES, NEGATIVE_EXAMPLES)
    finally:
        asgi.shutdown_lifespans()  # close the app's database connections
    assert tally.queries >= MIN_QUERIES, tally.summary()
    # Not a fuzz of error paths only: a good share of the generated queries run to the end and answer data.
    assert tally.answered >= tally.queries // 5, tally.summary()


@pytest.fixture(scope="module")
def postgres_fuzz_url(fuzz_db: Path) -> Iterator[str]:
    """A PostgreSQL database of its own, filled from the same files as `fuzz_db`; skips when no server answers."""
    with fresh_postgres_database(f"dicom_api_fuzz_{os.getpid()}") as url:
        run_ingest(DICOMDIR_TESTS, fuzz_db.parent / "written", "--db", url, "--jobs", "1", "--quiet", check=0)
        yield url


def test_fuzz_whole_schema_on_postgres(postgres_fuzz_url: str, fuzz_db: Path) -> None:
    """The same fuzz, shorter, on PostgreSQL: its SQL phrases (api/sql.py) and its stricter text type."""
    app = create_app(Settings(database_url=postgres_fuzz_url))
    try:
        tally = fuzz(app, database_values(fuzz_db), PG_POSITIVE_EXAMPLES, PG_NEGATIVE_EXAMPLES)
    finally:
        asgi.shutdown_lifespans()
    assert tally.queries >= 8 * (PG_POSITIVE_EXAMPLES + PG_NEGATIVE_EXAMPLES) * 9 // 10, tally.summary()
    assert tally.answered >= tally.queries // 5, tally.summary()


@pytest.mark.parametrize(
    ("level", "positive", "negative"),
    [
        ("deidentified", DEID_POSITIVE_EXAMPLES, DEID_NEGATIVE_EXAMPLES),
        ("basic", LEVEL_POSITIVE_EXAMPLES, LEVEL_NEGATIVE_EXAMPLES),  # declared in the tokens file: no option
    ],
)
def test_fuzz_whole_schema_as_deidentified_client(
    fuzz_db: Path, tmp_path: Path, level: str, positive: int, negative: int
) -> None:
    """The fuzz with a token of a de-identifying level: removed fields refused in filters, orders and facets
    (FORBIDDEN), and no value the level hides (identifiers, UIDs, unshifted dates, descriptions) in any response,
    `raw` and error messages included. UIDs are sent as the pseudonyms the client sees, so lookups find rows."""
    token = secrets.token_urlsafe(24)
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text(f"level basic\n{token} {level} fuzz\n")
    key = "a pseudonym key of the fuzz run"
    environ = {"DICOM_API_TOKENS_FILE": str(tokens_file), "DICOM_API_PSEUDONYM_KEY": key}
    settings = Settings.from_env(environ, database_url=f"sqlite:///{fuzz_db}")
    app = create_app(settings)
    try:
        with asgi.get_client(app) as client:
            if client.post("/graphql", json={"query": "{ __typename }"}).status_code != 401:
                pytest.skip("this API has no authentication: DICOM_API_TOKENS is ignored")
        keys = Pseudonyms(key.encode())
        secret = frozenset(identifying_values(fuzz_db, settings.tokens[0].level, keys))
        assert {"Fuzz^Written", "FUZZ-1", "1976-01-02", "CT CHEST", uid("study-1")} <= secret
        stored = database_values(fuzz_db)
        shown = (stored - secret) | {keys.uid(v) for v in stored if v.startswith(("1.", "2."))}
        headers = {"Authorization": f"Bearer {token}"}
        tally = fuzz(app, shown, positive, negative, headers=headers, secret_values=secret)
    finally:
        asgi.shutdown_lifespans()
    assert tally.queries >= 8 * (positive + negative) * 9 // 10, tally.summary()
    assert tally.answered >= tally.queries // 5, tally.summary()
    assert tally.codes["FORBIDDEN"] > 0, tally.summary()


NUL_QUERIES = [
    '{ patient(patientId: "a\\u0000b") { patientId } }',
    '{ allPatients(where: {patientName: {contains: "\\u0000"}}) { totalCount } }',
    '{ allStudies(where: {studyDescription: {match: "*\\u0000*"}}) { totalCount } }',
    '{ allSeries(where: {modality: {in: ["CT", "\\u0000"]}}) { totalCount } }',
]


@pytest.mark.parametrize("query", NUL_QUERIES)
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_nul_character_in_a_string_argument_is_refused(
    backend: str, fuzz_db: Path, request: pytest.FixtureRequest, query: str
) -> None:
    """Found by the PostgreSQL fuzz (text there cannot hold U+0000: asyncpg raised, the API answered 'Unexpected
    error.'); now refused as bad input on both databases, before any SQL."""
    url = f"sqlite:///{fuzz_db}" if backend == "sqlite" else request.getfixturevalue("postgres_fuzz_url")
    app = create_app(Settings(database_url=url))
    try:
        with asgi.get_client(app) as client:
            response = client.post("/graphql", json={"query": query})
    finally:
        asgi.shutdown_lifespans()
    assert problems_of(response.status_code, response.headers.get("content-type", ""), response.text) == []
    errors = response.json()["errors"]
    assert [error["extensions"]["code"] for error in errors] == ["BAD_USER_INPUT"], errors
    assert "U+0000" in errors[0]["message"], errors


def fuzz(
    app: Any,
    stored: set[str],
    positive: int,
    negative: int,
    *,
    headers: dict[str, str] | None = None,
    secret_values: frozenset[str] = frozenset(),
) -> Tally:
    """Run `positive` + `negative` generated queries per root field against `app`, sending `headers`; fails on
    any server error, and on any string in a response that is one of `secret_values`."""
    headers = headers or {}
    cursors = harvest_cursors(app, headers)  # starts the app's lifespan, which schemathesis keeps running
    values = sorted((stored | set(NASTY_STRINGS)) - secret_values)
    config = SchemathesisConfig.from_dict(
        {
            "dictionaries": {
                "values": {"values": values},
                **{f"cursors-{i}": {"values": cursors[key]} for i, key in enumerate(CURSOR_QUERIES)},
            },
            "generation": {
                # Half of the String arguments (filters, lookups) get a stored value or a nasty string.
                "dictionaries": {"string": {"dictionary": "values", "probability": 0.5}},
            },
            # A kept `after` is a real cursor of its connection more often than not.
            "parameters": {
                key: {"dictionary": f"cursors-{i}", "probability": 0.6} for i, key in enumerate(CURSOR_QUERIES)
            },
        }
    )
    schemathesis.graphql.scalar("Date", DATE_STRATEGY)
    schema = schemathesis.graphql.from_asgi("/graphql", app, config=config, headers=headers)
    schema.hook("flatmap_body")(drop_after_mostly)
    operations = [result.ok() for result in schema.get_all_operations()]
    root_fields = {operation.label for operation in operations}
    assert root_fields >= {"Query.patient", "Query.slice", "Query.allPatients", "Query.allSlices"}, root_fields

    tally = Tally()
    for operation in operations:
        for mode, examples in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):

            @settings(
                max_examples=examples,
                database=None,
                deadline=None,
                phases=[Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck),
                print_blob=True,
            )
            @seed(FUZZ_SEED)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz_one(case: Any) -> None:
                response = case.call(headers=headers, timeout=30)
                tally.queries += 1
                tally.by_mode[case.meta.generation.mode.value] += 1
                content_type = " ".join(response.headers.get("content-type", []))  # name -> list of values
                problems = problems_of(response.status_code, content_type, response.text)
                assert not problems, f"{problems}\nquery:\n{case.body}\nresponse: {response.text[:2000]}"
                case.validate_response(response, checks=[response_schema_conformance])  # non-null fields hold
                body = response.json()
                leaked = sorted({leaf for leaf in string_leaves(body) if leaf in secret_values})
                assert not leaked, f"identifying values {leaked} reached the client\nquery:\n{case.body}"
                for error in body.get("errors") or []:
                    tally.codes[(error.get("extensions") or {}).get("code") or "validation"] += 1
                if not body.get("errors") and body.get("data") is not None:
                    tally.answered += 1

            fuzz_one()

    print(tally.summary())
    return tally
