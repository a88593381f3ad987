"""The compiled execution path (api.compiled) answers byte for byte as the resolvers do.

Two apps over the same database, one per execution path, get the same requests over HTTP: every GraphQL query of
the test suite and of the docs, hand-written shapes (variables, aliases, fragments, nested connections, pages
followed with `after`, facets, counts), on SQLite and PostgreSQL, with full and de-identified tokens. Status,
media type and body must be identical bytes, data and errors alike. A last test lists which shapes compile and
that the others run on the resolvers.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import sqlite3
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import graphql
import pytest
from api_helpers import FULL_TOKEN, KEY, LEVEL_TOKENS, LEVELS_FILE
from conftest import fresh_postgres_database, run_ingest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from dicom_db.api import compiled as compiled_module
from dicom_db.api.app import create_app
from dicom_db.api.auth import AccessLevel, Token, read_tokens_file
from dicom_db.api.compiler import Compiler, Plan, RootField
from dicom_db.api.masking import FULL, Access, Pseudonyms
from dicom_db.api.schema import sdl
from dicom_db.api.settings import Settings

pytest_plugins = ["api_fixtures"]

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = graphql.build_schema(sdl())
# Every de-identifying level of the suite's tokens file: the built-in one and levels with other options.
DEIDENTIFIED_LEVELS = [level for level in LEVEL_TOKENS if level != "full"]


def _is_query(text: str) -> bool:
    try:
        document = graphql.parse(text)
    except graphql.GraphQLError:
        return False
    query = SCHEMA.query_type
    assert query is not None
    for definition in document.definitions:
        if isinstance(definition, graphql.OperationDefinitionNode):
            for node in definition.selection_set.selections:
                if isinstance(node, graphql.FieldNode) and node.name.value in query.fields:
                    return True
    return False


def _doc_queries() -> list[str]:
    block = re.compile(r"^```graphql\n(.*?)^```", re.S | re.M)
    return [
        m.group(1) for doc in (ROOT / "README.md", ROOT / "docs" / "api.md") for m in block.finditer(doc.read_text())
    ]


def _suite_queries() -> list[str]:
    """Every string constant of the API tests that is a query of this schema (f-strings and variables aside)."""
    found: list[str] = []
    for path in sorted((ROOT / "tests").glob("test_api_*.py")):
        if path.name == Path(__file__).name:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and "{" in text and text not in found and _is_query(text):
                found.append(text)
    return found


# Shapes written for this test, with their variables: every kind of field and argument the compiler knows, and a
# few it does not.
SHAPES: list[tuple[str, dict[str, Any]]] = [
    (
        "{ allPatients { totalCount nodes { patientId patientName patientSex patientAge patientBirthDate "
        "patientIdentityRemoved deIdentificationMethod lastMenstrualDate patientIdGenerated id raw studyCount } } }",
        {},
    ),
    (
        "{ allStudies { nodes { __typename id studyInstanceUid patientId studyDescription studyDate studyTime studyId "
        "seriesDate referringPhysicianName raw seriesCount modalities patient { patientId } } } }",
        {},
    ),
    (
        "{ allSeries { nodes { seriesInstanceUid studyInstanceUid seriesDescription modality sliceThickness "
        "pixelSpacing imagePositionPatient imageOrientationPatient rows columns imageType acquisitionNumber "
        "instanceNumber patientPosition exposureTime kvp tableHeight sliceLocation bodyPartExamined scanOptions "
        "reconstructionDiameter distanceSourceToPatient gantryDetectorTilt rotationDirection convolutionKernel raw "
        "sliceCount id } } }",
        {},
    ),
    (
        "{ allSlices(first: 1000) { nodes { sliceId sopInstanceUid seriesInstanceUid sopClassUid acquisitionDate "
        "acquisitionTime contrastBolusAgent accessionNumber sliceNumber sliceLocation sliceThickness pixelPaddingValue "
        "rescaleIntercept rescaleSlope longitudinalTemporalInfo imagePositionPatient raw id } } }",
        {},
    ),
    (
        "query Q($n: Int, $w: SeriesWhere) { __typename a: allSeries(first: $n, where: $w) { __typename totalCount "
        "b: nodes { m: modality } pageInfo { __typename hasNextPage hasPreviousPage startCursor endCursor } "
        "edges { __typename cursor node { __typename seriesInstanceUid } } } }",
        {"n": 2, "w": {"modality": {"in": ["CT", "MR"]}}},
    ),
    (
        "query($first: Int!) { allPatients(first: $first, orderBy: [{field: PATIENT_NAME, direction: DESC}]) { "
        "nodes { patientName studies(orderBy: [{field: STUDY_DATE}]) { totalCount nodes { studyDate "
        "series(where: {sliceThickness: {lt: 3}}, first: 1) { totalCount pageInfo { hasNextPage endCursor } "
        "nodes { sliceThickness slices(first: 2, orderBy: [{field: SLICE_LOCATION, direction: DESC}]) { "
        "edges { cursor node { sliceLocation } } } } } } } } } }",
        {"first": 3},
    ),
    (
        "fragment S on Series { modality ...T } fragment T on Series { sliceThickness study { studyDate } } "
        "{ allSeries { nodes { ...S ... on Series { rows } seriesInstanceUid } nodes { columns } } }",
        {},
    ),
    ("{ allSlices(first: 3) { nodes { series { study { patient { patientName studies { totalCount } } } } } } }", {}),
    (
        '{ patient(patientId: "PAT001") { patientName } study(studyInstanceUid: "1.2.826.0.1.3680043.10.543.1") '
        '{ studyDate series { nodes { modality } } } series(seriesInstanceUid: "nope") { modality } '
        'slice(sopInstanceUid: "1.2.826.0.1.3680043.10.543.1.1.1") { sliceNumber series { modality } } }',
        {},
    ),
    (
        "{ allSeries { groupBy(field: MODALITY) { value count } g2: groupBy(field: SLICE_THICKNESS, first: 2) { count "
        "value __typename } } allSlices { groupBy(field: SLICE_LOCATION) { value count } } "
        "allStudies { groupBy(field: STUDY_DATE, datePart: MONTH) { value count } } "
        "allPatients { groupBy(field: PATIENT_ID_GENERATED) { value count } } }",
        {},
    ),
    ("{ allStudies { nodes { series { groupBy(field: BODY_PART_EXAMINED) { value count } } } } }", {}),
    (
        '{ allSeries(where: {or: [{modality: {eq: "MR"}}, {study: {studyDate: {gt: "2020-01-01"}}}], '
        "not: {slices: {none: {sliceNumber: {gt: 1}}}}}) { totalCount nodes { seriesInstanceUid } } }",
        {},
    ),
    ('{ allPatients(where: {studies: {some: {series: {some: {modality: {eq: "CT"}}}}}}) { nodes { patientId } } }', {}),
    ("{ allSeries(first: 0) { totalCount pageInfo { hasNextPage startCursor endCursor } nodes { modality } } }", {}),
    ("{ allSeries { nodes { seriesInstanceUid sliceCount frameCount } } }", {}),
    ('{ study(studyInstanceUid: "none") { series { nodes { frameCount } } } }', {}),
    (
        "{ allSlices(orderBy: [{field: ACQUISITION_DATE}, {field: IMAGE_POSITION_PATIENT, direction: DESC}], first: 4) "
        "{ edges { cursor } } }",
        {},
    ),
    ("{ allSlices(where: {sliceLocation: {isNull: true}}) { nodes { sliceId sliceLocation } } }", {}),
    # Fall back: errors, directives, a field that is not compiled, introspection.
    ("{ allSeries(first: 5000) { nodes { modality } } }", {}),
    ('{ allSeries(after: "bogus") { nodes { modality } } }', {}),
    ("{ allStudies { groupBy(field: STUDY_DESCRIPTION, datePart: YEAR) { value } } }", {}),
    ("query($s: Boolean!) { allSeries { nodes { modality @skip(if: $s) } } }", {"s": True}),
    ("query($s: Boolean!) { allSeries { nodes { modality @skip(if: $s) kvp @include(if: $s) } } }", {"s": False}),
    (
        "query($s: Boolean = true) { allSeries { nodes { ... on Series @include(if: $s) { rows } } "
        "...F @skip(if: $s) } } fragment F on SeriesConnection { totalCount }",
        {},
    ),
    ("{ allSlices(first: 2) { nodes { file { path size url } } } }", {}),
    ("{ __schema { queryType { name } } }", {}),
    ("{ allSeries { nodes { nope } } }", {}),
    ("query($n: Int) { allSeries(first: $n) { totalCount } }", {"n": "x"}),
    ("{ allPatients(first: 1) { nodes { studies(first: -1) { totalCount } } } }", {}),
]

# Connections paged to the end with `after`, each page through both paths.
WALKS = [
    ("allSlices", "orderBy: [{field: SLICE_LOCATION, direction: DESC}]", "sliceLocation"),
    ("allSlices", "orderBy: [{field: ACQUISITION_TIME}, {field: SLICE_NUMBER, direction: DESC}]", "sliceNumber"),
    ("allSeries", "orderBy: [{field: SLICE_THICKNESS}]", "sliceThickness"),
    ("allSeries", "orderBy: [{field: INSTANCE_NUMBER, direction: DESC}]", "instanceNumber"),
    ("allStudies", "orderBy: [{field: STUDY_DATE, direction: DESC}]", "studyDate"),
    ("allPatients", "", "patientId"),
]


# Walks that order by what de-identified access computes: pseudonymous UIDs (a keyed hash) and shifted dates.
DEIDENTIFIED_WALKS = [
    *WALKS,
    ("allSeries", "orderBy: [{field: SERIES_INSTANCE_UID, direction: DESC}]", "seriesInstanceUid"),
    ("allSlices", "orderBy: [{field: ACQUISITION_DATE}, {field: SOP_INSTANCE_UID}]", "acquisitionDate id"),
    ("allStudies", "orderBy: [{field: SERIES_DATE, direction: DESC}]", "seriesDate patientId"),
]


def corpus() -> list[tuple[str, dict[str, Any]]]:
    return [(q, {}) for q in _doc_queries() + _suite_queries()] + SHAPES


def _first_difference(reference: tuple[Any, ...], compiled: tuple[Any, ...]) -> str:
    if reference[:2] != compiled[:2]:
        return f"status and type: resolvers {reference[:2]}, compiled {compiled[:2]}"
    a, b = reference[2], compiled[2]
    at = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return (
        f"at byte {at}:\nresolvers: {a[max(0, at - 300) : at + 200]!r}\ncompiled:  {b[max(0, at - 300) : at + 200]!r}"
    )


class Pair:
    """The same database served twice, through the resolvers and through the compiled path."""

    def __init__(self, url: str, stack: contextlib.ExitStack, **settings: Any) -> None:
        def app(execution: str) -> TestClient:
            return stack.enter_context(
                TestClient(create_app(Settings(database_url=url, execution=execution, **settings)))
            )

        self.resolvers = app("resolvers")
        self.compiled = app("compiled")

    @property
    def outcomes(self) -> Counter[str]:
        return self.compiled.app.state.compiled.outcomes  # type: ignore[attr-defined]

    def both(self, query: str, variables: dict[str, Any], token: str | None = None) -> tuple[Any, Any]:
        body = {"query": query, "variables": variables}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        answers = []
        for client in (self.resolvers, self.compiled):
            response = client.post("/graphql", json=body, headers=headers)
            answers.append((response.status_code, response.headers.get("content-type"), response.content))
        return answers[0], answers[1]

    def differences(self, queries: list[tuple[str, dict[str, Any]]], token: str | None = None) -> list[str]:
        found = []
        for query, variables in queries:
            reference, compiled = self.both(query, variables, token)
            if reference != compiled:
                found.append(f"{query}\n{variables}\n{_first_difference(reference, compiled)}")
        return found

    def walk(self, field: str, order: str, leaf: str, token: str | None = None) -> int:
        after, pages = None, 0
        while True:
            args = ", ".join(a for a in (order, "first: 3", f'after: "{after}"' if after else "") if a)
            query = f"{{ {field}({args}) {{ pageInfo {{ hasNextPage endCursor }} nodes {{ {leaf} }} }} }}"
            reference, compiled = self.both(query, {}, token)
            assert reference == compiled, query
            page = (json.loads(reference[2])["data"] or {}).get(field)
            pages += 1
            if page is None or not page["pageInfo"]["hasNextPage"]:  # an error (NaN stored in a Float field)
                return pages
            after = page["pageInfo"]["endCursor"]


@pytest.fixture(scope="module")
def sqlite_pairs(synthetic_db: Path, dicomdir_db: Path) -> Iterator[dict[str, Pair]]:
    with contextlib.ExitStack() as stack:
        yield {
            name: Pair(f"sqlite:///{db}", stack)
            for name, db in (("synthetic", synthetic_db), ("dicomdir", dicomdir_db))
        }


@pytest.fixture(scope="module")
def postgres_url(synthetic_db: Path) -> Iterator[str]:
    with fresh_postgres_database(f"dicom_api_compiled_{os.getpid()}") as url:
        run_ingest(synthetic_db.parent / "files", "--db", url, "--jobs", "1", "--quiet", check=0)
        yield url


@pytest.fixture(scope="module")
def postgres_pair(postgres_url: str) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(postgres_url, stack)


# Stored values that test every typed field's edges: floats whose text is long, tiny, huge or negative zero;
# integers beyond GraphQL's 32 bits; dates that are not dates, or that Python reads and SQL might not; IS text
# with spaces, signs and other scripts' digits; DS lists with NaN, infinities and empty values; text that JSON
# escapes. (table, column): values given to the table's rows in turn, in key order.
ODD_VALUES: dict[tuple[str, str], list[Any]] = {
    ("Series", "KVP"): [0.1 + 0.2, 1e-05, 1e-40, 123456789.123, -0.0, 1e300, "abc", None, 120],
    ("Series", "SliceThicknessValue"): [0.30000000000000004, 2.5e-7, None, 5.0],
    ("Series", "SliceThickness"): ["0.30000000000000004", " 2.5", None],
    ("Series", "Rows"): [2**31, -(2**31), 7, None, 2**40, 2.5],
    ("Series", "PixelSpacing"): ["0.1\\0.2", "nan\\1", "1e400", "", " 1 \\ 2 ", "1_0\\5", "0.70\\-0", None],
    ("Series", "ImageType"): ["", "A\\\\B", 'Q"\\x', "\\", None, "ORIGINAL"],
    ("Series", "AcquisitionNumber"): [" 12 ", "+7", "\uff11\uff12", "99999999999", "abc", "-0", "", None, "2147483648"],
    ("Series", "InstanceNumber"): ["\t5", "0012", "1e3", "-2147483648", "12 34"],
    ("Series", "SeriesDescription"): ['quote" back\\ ctl\x01\x7f tab\t', "emoji \U0001f600 \u00e9", None],
    ("Study", "StudyDate"): [
        "2021-02-30",
        "2021-W09-4",
        "0000-01-01",
        "\uff12\uff10\uff12\uff11-03-04",
        "2020-02-29",
        "20210304",
        None,
    ],
    ("Study", "SeriesDate"): ["1900-02-29", "2000-02-29", "9999-12-31", "2021-13-01", "2021-04-31", "2021-04-00"],
    ("SliceMetadata", "AcquisitionDate"): ["2021-02-29", "1900-02-28", "2000-02-29", "0001-01-01"],
    ("SliceMetadata", "SliceLocation"): [0.1, -0.0, 1 / 3, 2.0**53 + 2, 1e-30, None, -1e-29],
    ("SliceMetadata", "RescaleSlope"): [1.0, 1e29, 1e31, 2.5],
    ("SliceMetadata", "PixelPaddingValue"): [-(2**31) - 1, 5, None],
    ("Patient", "PatientIDGenerated"): [0, 1, 2],
    # Series.frameCount sums them (an instance of several frames counts its frames): text, zero, negative, big.
    ("SliceMetadata", "NumberOfFrames"): [None, 1, 5, 0, -3, "7", "x", 2.5, 2**31 - 10, 2**40],
}
KEYS = {"Patient": "PatientID", "Study": "StudyInstanceUID", "Series": "SeriesInstanceUID", "SliceMetadata": "SliceID"}


def _odd_sqlite(db: Path) -> None:
    with sqlite3.connect(db) as connection:
        for (table, column), values in ODD_VALUES.items():
            keys = [k for (k,) in connection.execute(f'SELECT "{KEYS[table]}" FROM "{table}" ORDER BY 1')]
            for i, key in enumerate(keys):
                value = values[i % len(values)]
                connection.execute(f'UPDATE "{table}" SET "{column}" = ? WHERE "{KEYS[table]}" = ?', (value, key))


async def _odd_postgres(url: str) -> None:
    """The same on PostgreSQL, as far as its types hold them, and NaN and infinities, which they do."""
    connection = await asyncpg.connect(url)
    try:
        for (table, column), values in ODD_VALUES.items():
            kind = await connection.fetchval(
                "SELECT data_type FROM information_schema.columns WHERE table_name = $1 AND column_name = $2",
                table,
                column,
            )
            if kind == "double precision":
                fitting = [float(v) for v in values if isinstance(v, int | float)] + [math.nan, math.inf, None]
            elif kind == "integer":
                fitting = [v for v in values if isinstance(v, int) and -(2**31) <= v < 2**31] + [None]
            else:
                fitting = [v for v in values if v is None or isinstance(v, str)]
            keys = [r[0] for r in await connection.fetch(f'SELECT "{KEYS[table]}" FROM "{table}" ORDER BY 1')]
            for i, key in enumerate(keys):
                value = fitting[i % len(fitting)]
                if column == "PatientIDGenerated" and value is None:
                    value = 0
                await connection.execute(f'UPDATE "{table}" SET "{column}" = $1 WHERE "{KEYS[table]}" = $2', value, key)
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def odd_db(synthetic_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("odd") / "odd.db"
    shutil.copy(synthetic_db, db)
    _odd_sqlite(db)
    return db


@pytest.fixture(scope="module")
def odd_pair(odd_db: Path) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(f"sqlite:///{odd_db}", stack)


@pytest.fixture(scope="module")
def odd_postgres_url(synthetic_db: Path) -> Iterator[str]:
    with fresh_postgres_database(f"dicom_api_compiled_odd_{os.getpid()}") as url:
        run_ingest(synthetic_db.parent / "files", "--db", url, "--jobs", "1", "--quiet", check=0)
        asyncio.run(_odd_postgres(url))
        yield url


@pytest.fixture(scope="module")
def odd_postgres_pair(odd_postgres_url: str) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(odd_postgres_url, stack)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Token, ...]:
    path = tmp_path_factory.mktemp("tokens") / "tokens"
    path.write_text(LEVELS_FILE)
    return tuple(read_tokens_file(path))


@pytest.fixture(scope="module")
def token_pair(synthetic_db: Path, tokens: tuple[Token, ...]) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(f"sqlite:///{synthetic_db}", stack, tokens=tokens, pseudonym_key=KEY)


@pytest.fixture(scope="module")
def odd_token_pair(odd_db: Path, tokens: tuple[Token, ...]) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(f"sqlite:///{odd_db}", stack, tokens=tokens, pseudonym_key=KEY)


@pytest.fixture(scope="module")
def postgres_token_pair(postgres_url: str, tokens: tuple[Token, ...]) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(postgres_url, stack, tokens=tokens, pseudonym_key=KEY)


@pytest.fixture(scope="module")
def odd_postgres_token_pair(odd_postgres_url: str, tokens: tuple[Token, ...]) -> Iterator[Pair]:
    with contextlib.ExitStack() as stack:
        yield Pair(odd_postgres_url, stack, tokens=tokens, pseudonym_key=KEY)


def test_the_corpus_holds_the_suites_and_the_docs_queries() -> None:
    assert len(_doc_queries()) >= 8
    assert len(_suite_queries()) >= 100


@pytest.mark.parametrize("name", ["synthetic", "dicomdir"])
def test_compiled_answers_as_the_resolvers_on_sqlite(sqlite_pairs: dict[str, Pair], name: str) -> None:
    pair = sqlite_pairs[name]
    pair.outcomes.clear()
    assert not (found := pair.differences(corpus())), "\n\n".join(found)
    print(name, dict(pair.outcomes))
    assert pair.outcomes["compiled"] >= len(corpus()) // 2, pair.outcomes  # most of the corpus compiles


def test_odd_stored_values_on_sqlite(odd_pair: Pair) -> None:
    odd_pair.outcomes.clear()
    assert not (found := odd_pair.differences(corpus())), "\n\n".join(found)
    for walk in WALKS:
        odd_pair.walk(*walk)
    print("odd values", dict(odd_pair.outcomes))
    assert odd_pair.outcomes["compiled"] >= len(corpus()) // 3, odd_pair.outcomes


def test_odd_stored_values_on_postgres(odd_postgres_pair: Pair) -> None:
    odd_postgres_pair.outcomes.clear()
    assert not (found := odd_postgres_pair.differences(corpus())), "\n\n".join(found)
    for walk in WALKS:
        odd_postgres_pair.walk(*walk)
    print("odd values on postgres", dict(odd_postgres_pair.outcomes))
    assert odd_postgres_pair.outcomes["compiled"] >= len(corpus()) // 3, odd_postgres_pair.outcomes


def test_pages_followed_with_after_on_sqlite(sqlite_pairs: dict[str, Pair]) -> None:
    for walk in WALKS:
        assert sqlite_pairs["synthetic"].walk(*walk) > 1


def test_compiled_answers_as_the_resolvers_on_postgres(postgres_pair: Pair) -> None:
    postgres_pair.outcomes.clear()
    assert not (found := postgres_pair.differences(corpus())), "\n\n".join(found)
    print("postgres", dict(postgres_pair.outcomes))
    assert postgres_pair.outcomes["compiled"] >= len(corpus()) // 2, postgres_pair.outcomes
    for walk in WALKS:
        assert postgres_pair.walk(*walk) > 1


def test_compiled_answers_as_the_resolvers_with_tokens(token_pair: Pair) -> None:
    token_pair.outcomes.clear()
    queries = corpus()
    assert not (found := token_pair.differences(queries, FULL_TOKEN)), "\n\n".join(found)
    assert not (found := token_pair.differences(queries[:5], None)), "\n\n".join(found)  # no token: 401, both ways
    assert token_pair.outcomes["compiled"] >= len(queries) // 2


def _deidentified(pair: Pair, level: str, walks: list[tuple[str, str, str]]) -> Counter[str]:
    """Every query of the corpus and every walk with `level`'s token, both ways; what the compiled path did."""
    token = LEVEL_TOKENS[level]
    queries = corpus()
    pair.outcomes.clear()
    assert not (found := pair.differences(queries, token)), "\n\n".join(found)
    walked = [pair.walk(*walk, token=token) for walk in walks]
    print(level, walked, dict(pair.outcomes))
    # Masking compiles: much of the corpus is answered by the compiled path (the rest is refused by a check, a
    # third of it for `basic`, which removes most fields, or holds a field or a value the compiler leaves to the
    # resolvers), as for full access with odd values.
    assert pair.outcomes["compiled"] >= len(queries) // 3, pair.outcomes
    assert "de-identified access" not in pair.outcomes
    return pair.outcomes


@pytest.mark.parametrize("level", DEIDENTIFIED_LEVELS)
def test_deidentified_access_on_sqlite(token_pair: Pair, level: str) -> None:
    outcomes = _deidentified(token_pair, level, DEIDENTIFIED_WALKS)
    assert outcomes["a query the limits refuse"] > 0  # masked fields as keys: FORBIDDEN, from the resolvers


@pytest.mark.parametrize("level", DEIDENTIFIED_LEVELS)
def test_deidentified_access_with_odd_stored_values_on_sqlite(odd_token_pair: Pair, level: str) -> None:
    _deidentified(odd_token_pair, level, DEIDENTIFIED_WALKS)


@pytest.mark.parametrize("level", DEIDENTIFIED_LEVELS)
def test_deidentified_access_on_postgres(postgres_token_pair: Pair, level: str) -> None:
    _deidentified(postgres_token_pair, level, DEIDENTIFIED_WALKS)


@pytest.mark.parametrize("level", DEIDENTIFIED_LEVELS)
def test_deidentified_access_with_odd_stored_values_on_postgres(odd_postgres_token_pair: Pair, level: str) -> None:
    _deidentified(odd_postgres_token_pair, level, DEIDENTIFIED_WALKS)


def test_shifted_dates_of_stored_non_dates_on_postgres(odd_token_pair: Pair, odd_postgres_token_pair: Pair) -> None:
    """Stored dates that are no calendar date ('2021-02-30') or that a shift moves past year 1 or 9999 are null
    when shifted, and filtering or ordering by them works: PostgreSQL's CAST failed on them (an error for every
    de-identified query that ordered, filtered or grouped by such a date, on both paths). The same answers as
    SQLite, whose shift is Python's own (api.masking)."""
    token = LEVEL_TOKENS["deidentified"]
    queries = [
        "{ allStudies(orderBy: [{field: STUDY_DATE}, {field: STUDY_INSTANCE_UID}]) { nodes { studyDate } } }",
        '{ allStudies(where: {studyDate: {gte: "1900-01-01"}}) { totalCount } }',
        "{ allStudies { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } } }",
        "{ allSeries(orderBy: [{field: SERIES_DATE, direction: DESC}]) { nodes { seriesDate } } }",
    ]
    for query in queries:
        on_sqlite = odd_token_pair.both(query, {}, token)
        on_postgres = odd_postgres_token_pair.both(query, {}, token)
        assert on_postgres[0] == on_sqlite[0], query
        answer = json.loads(on_postgres[0][2])
        assert "errors" not in answer and answer["data"], (query, answer)
        assert answer == json.loads(on_sqlite[0][2]), query


# Which shapes compile, and why the others run on the resolvers.
COMPILES = {
    "lookup": '{ series(seriesInstanceUid: "x") { modality } }',
    "connection": "{ allSeries(first: 2) { nodes { modality } } }",
    "where, orderBy": '{ allSeries(where: {modality: {eq: "CT"}}, orderBy: [{field: KVP}]) { nodes { kvp } } }',
    "after": "{ allSeries(after: $after) { edges { cursor } pageInfo { endCursor } } }",
    "nested connection": "{ allPatients { nodes { studies(first: 1) { totalCount nodes { studyDate } } } } }",
    "parent": "{ allSlices { nodes { series { study { patient { patientId } } } } } }",
    "count": "{ allStudies { totalCount nodes { seriesCount modalities } } }",
    "frame count": "{ allSeries { nodes { sliceCount frameCount } } }",
    "groupBy": "{ allStudies { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } } }",
    "fragment": "fragment F on Study { studyDate } { allStudies { nodes { ...F ... on Study { studyId } } } }",
    "raw": "{ allSlices { nodes { raw id __typename } } }",
    "@skip/@include": "{ allSlices { nodes { sliceId @include(if: false) sliceNumber @skip(if: false) } } }",
    "file": "{ allSlices(first: 3) { nodes { file { path size url __typename } } } }",
}
FALLS_BACK = {
    "Query.__schema": "{ __schema { types { name } } }",
    "arguments the resolvers refuse": "{ allSlices(first: 1001) { totalCount } }",
    "a document that does not validate": "{ allSlices { nodes { nope } } }",
    "a document that does not parse": "{ allSlices ",
}
# De-identified access compiles too (a UID lookup by pseudonym, dates shifted, keyed order); a masked field used as
# a key is refused by the limits before planning, so that the resolvers give FORBIDDEN.
DEIDENTIFIED_COMPILES = {
    "pseudonymous UID lookup": "{ study(studyInstanceUid: $uid) { id studyDate patientId raw } }",
    "shifted date": "{ allSlices(orderBy: [{field: ACQUISITION_DATE}]) { edges { cursor node { acquisitionDate } } } }",
    "keyed order": "{ allSeries(orderBy: [{field: SERIES_INSTANCE_UID}]) { pageInfo { endCursor } } }",
    "keyed groups": "{ allSlices { groupBy(field: SERIES_INSTANCE_UID) { value count } } }",
}
DEIDENTIFIED_FALLS_BACK = {
    "a query the limits refuse": "{ allPatients(orderBy: [{field: PATIENT_NAME}]) { totalCount } }",
    "Slice.file without full access": "{ allSlices { nodes { file { path } } } }",  # FORBIDDEN, from the resolvers
}


def _plan(pair: Pair, query: str, variables: dict[str, Any] | None = None, access: Access = FULL) -> Plan | str:
    request = SimpleNamespace(query=query, variables=variables or {}, operation_name=None, protocol="http")
    return pair.compiled.app.state.compiled.plan_for(request, SimpleNamespace(access=access))  # type: ignore[attr-defined]


def test_which_shapes_compile_and_which_fall_back(sqlite_pairs: dict[str, Pair]) -> None:
    pair = sqlite_pairs["synthetic"]
    end_cursor = json.loads(pair.both("{ allSeries(first: 1) { pageInfo { endCursor } } }", {})[1][2])
    after = end_cursor["data"]["allSeries"]["pageInfo"]["endCursor"]
    shapes: set[str] = set()
    for name, query in COMPILES.items():
        variables = {"after": after} if "$after" in query else {}
        if variables:
            query = "query($after: String) " + query
        plan = _plan(pair, query, variables)
        assert isinstance(plan, Plan), (name, plan)
        assert [f.sql is not None for f in plan.fields] == [True] * len(plan.fields)  # one statement per root field
        shapes |= plan.shapes
    assert shapes >= {
        "lookup",
        "connection",
        "where",
        "orderBy",
        "after",
        "nested connection",
        "parent",
        "count",
        "frame count",
        "groupBy",
        "fragment",
        "inline fragment",
        "raw",
        "edges",
        "pageInfo",
        "totalCount",
        "value list",
        "__typename",
        "@skip/@include",
        "file",
    }
    for reason, query in FALLS_BACK.items():
        assert _plan(pair, query) == reason
    pseudonyms = pair.compiled.app.state.database.pseudonyms
    deidentified = Access(AccessLevel.DEIDENTIFIED, pseudonyms)
    shapes = set()
    for name, query in DEIDENTIFIED_COMPILES.items():
        variables = {"uid": pseudonyms.uid("1.2.3")} if "$uid" in query else {}
        if variables:
            query = "query($uid: String!) " + query
        plan = _plan(pair, query, variables, access=deidentified)
        assert isinstance(plan, Plan), (name, plan)
        shapes |= plan.shapes
    assert shapes >= {"pseudonymous UID lookup", "shifted date", "lookup", "orderBy", "groupBy", "raw"}
    for reason, query in DEIDENTIFIED_FALLS_BACK.items():
        assert _plan(pair, query, access=deidentified) == reason


def test_each_request_is_answered_and_counted_once_whichever_door_it_takes(sqlite_pairs: dict[str, Pair]) -> None:
    """A plain JSON POST is answered by the compiled path before Strawberry's view (GraphQLApp._answer_compiled);
    one it declines goes on to the view and the resolvers, without being planned or counted again; any other
    request (another content type, a GET) goes through the view, compiled there."""
    pair = sqlite_pairs["synthetic"]
    compiles = "{ allSeries(first: 2) { totalCount nodes { seriesInstanceUid modality } } }"
    requests: list[tuple[str, dict[str, Any]]] = [
        (compiles, {"json": {"query": compiles}}),  # the compiled path's own door
        (FALLS_BACK["Query.__schema"], {"json": {"query": FALLS_BACK["Query.__schema"]}}),  # declined: to the view
        (  # the view's door, compiled there
            compiles,
            {
                "content": json.dumps({"query": compiles}),
                "headers": {"Content-Type": "application/json; charset=utf-8"},
            },
        ),
    ]
    for query, how in requests:
        before = sum(pair.outcomes.values())
        compiled = pair.compiled.post("/graphql", **how)
        reference = pair.resolvers.post("/graphql", **how)
        assert (compiled.status_code, compiled.headers["content-type"], compiled.content) == (
            reference.status_code,
            reference.headers["content-type"],
            reference.content,
        ), query
        assert "errors" not in compiled.json(), compiled.json()
        assert sum(pair.outcomes.values()) == before + 1, dict(pair.outcomes)
    get = pair.compiled.get("/graphql", params={"query": compiles}, headers={"Accept": "application/json"})
    assert get.status_code == 200 and get.content == pair.resolvers.post("/graphql", json={"query": compiles}).content


def test_plans_are_kept_per_access_level(sqlite_pairs: dict[str, Pair]) -> None:
    pair = sqlite_pairs["synthetic"]
    pseudonyms = pair.compiled.app.state.database.pseudonyms
    query = "{ allStudies(first: 2) { nodes { id studyDate studyDescription } } }"
    plans = [
        _plan(pair, query, access=access)
        for access in (FULL, Access(AccessLevel.DEIDENTIFIED, pseudonyms), Access(AccessLevel("basic"), pseudonyms))
    ]
    assert all(isinstance(p, Plan) for p in plans)
    assert len({id(p) for p in plans}) == 3  # a plan for one level never serves another
    assert _plan(pair, query, access=Access(AccessLevel.DEIDENTIFIED, pseudonyms)) is plans[1]
    # Another server's pseudonyms (another key): another plan, whose pseudonyms are that server's.
    assert _plan(pair, query, access=Access(AccessLevel.DEIDENTIFIED, Pseudonyms(KEY))) is not plans[1]


def test_a_statement_that_fails_on_postgres_falls_back(
    postgres_token_pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed statement aborts PostgreSQL's transaction: the resolvers must still answer in the same request."""

    class Failing(Compiler):
        def operation(self, operation: Any) -> Plan:
            plan = super().operation(operation)
            first = plan.fields[0]
            failing = RootField(first.key, "SELECT CAST(CAST(1 / 0 AS text) AS json)", {}, None)
            return Plan((failing, *plan.fields[1:]), plan.shapes)

    monkeypatch.setattr(compiled_module, "Compiler", Failing)
    pair = postgres_token_pair
    pair.outcomes.clear()
    for level in ("full", "deidentified"):
        query = f"{{ {level}: allStudies(first: 2) {{ nodes {{ id studyDate }} }} allSeries {{ totalCount }} }}"
        reference, compiled = pair.both(query, {}, LEVEL_TOKENS[level])
        assert reference == compiled, _first_difference(reference, compiled)
        assert b'"errors"' not in compiled[2]
    assert pair.outcomes == Counter({"a statement that failed": 2}), pair.outcomes
    monkeypatch.undo()
    pair.compiled.app.state.compiled.plans.clear()


def test_a_repeated_query_is_planned_once(sqlite_pairs: dict[str, Pair]) -> None:
    pair = sqlite_pairs["synthetic"]
    query = "query($n: Int) { allSeries(first: $n) { nodes { modality } } }"
    first = _plan(pair, query, {"n": 2})
    assert _plan(pair, query, {"n": 2}) is first
    assert _plan(pair, query, {"n": 3}) is not first  # the page size is in the statement


def test_statements_per_request(sqlite_pairs: dict[str, Pair]) -> None:
    pair = sqlite_pairs["synthetic"]
    database = pair.compiled.app.state.database
    before = database.statements
    pair.both(
        "{ a: allPatients { nodes { studies { nodes { series { nodes { slices { totalCount } } } } } } } "
        "b: allSeries { groupBy(field: MODALITY) { value count } } __typename }",
        {},
    )
    assert database.statements - before == 2  # one per root field that reads the database


def test_timing_of_a_nested_query(sqlite_pairs: dict[str, Pair]) -> None:
    """Not a benchmark (bench/ has those): the compiled path must not be slower on a nested query."""
    pair = sqlite_pairs["dicomdir"]
    query = (
        "{ allPatients { nodes { patientId patientName studies { nodes { studyDate studyDescription "
        "series { nodes { modality seriesDescription sliceThickness pixelSpacing imageType "
        "slices(first: 50) { nodes { sliceNumber sliceLocation imagePositionPatient acquisitionDate } } } } } } } } }"
    )
    pair.outcomes.clear()
    times: dict[str, float] = {"resolvers": math.inf, "compiled": math.inf}
    for _ in range(7):  # interleaved, best of 7: the machine's other work counts less
        for name, client in (("resolvers", pair.resolvers), ("compiled", pair.compiled)):
            start = time.perf_counter()
            response = client.post("/graphql", json={"query": query})
            times[name] = min(times[name], time.perf_counter() - start)
            assert response.status_code == 200
    print(
        f"nested query: resolvers {times['resolvers'] * 1000:.1f} ms, compiled {times['compiled'] * 1000:.1f} ms, "
        f"{times['resolvers'] / times['compiled']:.1f}x"
    )
    assert pair.outcomes["compiled"] == 7, pair.outcomes  # four nested connections fit SQLite's parser
    assert times["compiled"] < times["resolvers"]


# Queries schemathesis generates from the schema (hypothesis-graphql underneath): arbitrary nesting, arguments and
# aliases, with valid ("positive") and invalid ("negative") inputs.
GENERATED_SEED = 20261130


def generated_queries(positive: int, negative: int) -> list[tuple[str, dict[str, Any]]]:
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode
    from schemathesis.graphql import nodes

    schemathesis.graphql.scalar(
        "Date",
        st.one_of(
            st.dates().map(lambda d: nodes.String(d.isoformat())),
            st.sampled_from(["2021-13-01", "19700101", "2021-02-30", ""]).map(nodes.String),
        ),
    )
    schema = schemathesis.graphql.from_file(sdl())
    found: list[tuple[str, dict[str, Any]]] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode, examples in ((GenerationMode.POSITIVE, positive), (GenerationMode.NEGATIVE, negative)):

            @settings(
                max_examples=examples,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @seed(GENERATED_SEED)
            @given(case=operation.as_strategy(generation_mode=mode))
            def collect(case: Any) -> None:
                body = case.body
                found.append((body["query"] if isinstance(body, dict) else str(body), {}))

            collect()
    return found


def test_generated_queries_on_sqlite(sqlite_pairs: dict[str, Pair], odd_pair: Pair) -> None:
    queries = generated_queries(25, 5)
    assert len(queries) >= 200
    for pair in (sqlite_pairs["synthetic"], odd_pair):
        pair.outcomes.clear()
        assert not (found := pair.differences(queries)), "\n\n".join(found)
        print("generated", dict(pair.outcomes))
        assert pair.outcomes["compiled"] >= len(queries) // 4, pair.outcomes


def test_generated_queries_on_postgres(postgres_pair: Pair, odd_postgres_pair: Pair) -> None:
    queries = generated_queries(10, 3)
    for pair in (postgres_pair, odd_postgres_pair):
        pair.outcomes.clear()
        assert not (found := pair.differences(queries)), "\n\n".join(found)
        print("generated on postgres", dict(pair.outcomes))


def test_fragments_spread_again_are_planned_once(sqlite_pairs: dict[str, Pair]) -> None:
    """Each fragment spreading the next one twice: 2^40 fields written out, a few fields planned."""
    depth = 40
    fragments = " ".join(f"fragment F{i} on Series {{ ...F{i + 1} ...F{i + 1} }}" for i in range(depth))
    query = f"{{ allSeries {{ nodes {{ ...F0 }} }} }} {fragments} fragment F{depth} on Series {{ modality }}"
    started = time.perf_counter()
    reference, compiled = sqlite_pairs["synthetic"].both(query, {})
    assert time.perf_counter() - started < 5
    assert reference == compiled
    assert isinstance(_plan(sqlite_pairs["synthetic"], query), Plan)


def test_large_documents_are_not_kept(sqlite_pairs: dict[str, Pair]) -> None:
    pair = sqlite_pairs["synthetic"]
    compiled = pair.compiled.app.state.compiled
    query = "{ allSeries { totalCount } }" + " " * 100_000
    reference, answer = pair.both(query, {})
    assert reference == answer
    assert query not in compiled.documents
    assert not any(key[0] == query for key in compiled.plans)
