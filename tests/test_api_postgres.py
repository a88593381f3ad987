"""The API on PostgreSQL: the real `dicom-ingest` fills a fresh database, and the same queries answer exactly as
they do on SQLite. Skipped, saying why, when no server answers at 127.0.0.1:5432 (user postgres, trust auth)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import UID_ROOT, Api, serve
from conftest import fresh_postgres_database, run_ingest

from dicom_db.api.auth import AccessLevel, Token
from dicom_db.api.masking import Pseudonyms

pytest_plugins = ["api_fixtures"]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A database of its own for this run, dropped afterwards."""
    with fresh_postgres_database(f"dicom_api_test_{os.getpid()}") as url:
        yield url


@pytest.fixture(scope="module")
def pg(postgres_url: str, synthetic_db: Path) -> Iterator[Api]:
    files = synthetic_db.parent / "files"  # the files the SQLite fixture was ingested from
    run_ingest(files, "--db", postgres_url, "--jobs", "1", "--quiet", check=0)
    yield from serve(postgres_url, pool_size=4)  # the server is shared: a few connections are enough here


QUERIES = [
    # The whole tree, typed values and raw text (slice IDs are left out: they number rows in ingest order).
    """{ allPatients { nodes { patientId patientName patientBirthDate patientIdGenerated studyCount raw
        studies { nodes { studyInstanceUid studyDate studyTime modalities seriesCount
          series { nodes { seriesInstanceUid modality sliceThickness pixelSpacing imageType acquisitionNumber kvp
            rows sliceCount raw
            slices(first: 5) { pageInfo { hasNextPage } nodes { sopInstanceUid sliceNumber sliceLocation
              imagePositionPatient acquisitionDate accessionNumber } } } } } } } } }""",
    # Filters of every kind.
    '{ allSeries(where: {modality: {in: ["MR", "OT"]}}) { nodes { seriesInstanceUid } } }',
    '{ allSeries(where: {bodyPartExamined: {notIn: ["HEAD"]}}) { nodes { seriesInstanceUid } } }',
    "{ allSeries(where: {sliceThickness: {in: [0.5, 5]}}) { nodes { seriesInstanceUid } } }",
    "{ allSeries(where: {rows: {in: [256]}, acquisitionNumber: {isNull: true}}) { nodes { seriesInstanceUid } } }",
    "{ allSeries(where: {acquisitionNumber: {gte: 1}}) { totalCount } }",
    '{ allSeries(where: {not: {bodyPartExamined: {eq: "HEAD"}}}) { nodes { seriesInstanceUid } } }',
    '{ allStudies(where: {studyDescription: {match: "*100%*"}}) { nodes { studyInstanceUid } } }',
    '{ allStudies(where: {studyDescription: {match: "*_*"}}) { nodes { studyInstanceUid } } }',
    '{ allStudies(where: {studyDescription: {contains: "Chest", startsWith: "CT"}}) { totalCount } }',
    '{ allPatients(where: {patientName: {match: "ärger^é*"}}) { nodes { patientId } } }',
    '{ allPatients(where: {patientBirthDate: {gt: "1900-01-01"}}) { nodes { patientId } } }',
    "{ allPatients(where: {patientBirthDate: {isNull: true}}) { nodes { patientId } } }",
    "{ allPatients(where: {patientIdGenerated: {eq: true}}) { nodes { patientId } } }",
    """{ allPatients(where: {studies: {some: {studyDate: {gt: "2020-01-01"},
          series: {some: {modality: {eq: "CT"}, sliceThickness: {lt: 1}}}}}}) { nodes { patientId } } }""",
    '{ allStudies(where: {series: {none: {modality: {eq: "CT"}}}}) { nodes { studyInstanceUid } } }',
    '{ allSlices(where: {series: {study: {patient: {patientId: {eq: "PAT002"}}}}}) { totalCount } }',
    # Ordering with nulls, facets, nested facets.
    "{ allSeries(orderBy: [{field: MODALITY}, {field: SLICE_THICKNESS, direction: DESC}]) "
    "{ nodes { seriesInstanceUid } } }",
    "{ allStudies(orderBy: [{field: STUDY_DATE, direction: DESC}]) { nodes { studyInstanceUid } } }",
    "{ allSeries { groupBy(field: BODY_PART_EXAMINED) { value count } } }",
    "{ allSeries { groupBy(field: SLICE_THICKNESS) { value count } } }",
    "{ allStudies { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } } }",
    "{ allPatients { groupBy(field: PATIENT_ID_GENERATED) { value count } } }",
    "{ allStudies { nodes { series { groupBy(field: MODALITY) { value count } } } } }",
]


def _without_slice_ids(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_slice_ids(v) for k, v in value.items() if k != "SliceID"}
    if isinstance(value, list):
        return [_without_slice_ids(v) for v in value]
    return value


@pytest.mark.parametrize("query", QUERIES)
def test_postgres_answers_as_sqlite_does(pg: Api, synthetic: Api, query: str) -> None:
    expected = synthetic.data(query)
    assert _without_slice_ids(pg.data(query)) == _without_slice_ids(expected)


def test_paging_to_the_end_on_postgres(pg: Api, synthetic: Api) -> None:
    def pages(api: Api) -> list[str]:
        uids: list[str] = []
        after = None
        while True:
            data = api.data(
                """query($after: String) { allSlices(first: 4, after: $after,
                    orderBy: [{field: SLICE_LOCATION, direction: DESC}, {field: SOP_INSTANCE_UID}]) {
                    nodes { sopInstanceUid } pageInfo { hasNextPage endCursor } } }""",
                after=after,
            )["allSlices"]
            uids.extend(n["sopInstanceUid"] for n in data["nodes"])
            if not data["pageInfo"]["hasNextPage"]:
                return uids
            after = data["pageInfo"]["endCursor"]

    paged = pages(pg)
    assert len(paged) == len(set(paged)) == 55
    assert paged == pages(synthetic)


def test_bad_arguments_on_postgres(pg: Api) -> None:
    assert pg.error('{ allSlices(after: "x") { totalCount } }').startswith("`after` is not a cursor")
    assert pg.error("{ allSlices(first: 1001) { totalCount } }") == "`first` must be between 0 and 1000, got 1001"


def test_postgres_sessions_are_read_only(pg: Api) -> None:
    portal = pg.client.portal
    assert portal is not None
    with pytest.raises(Exception, match="read-only transaction"):
        portal.call(pg.database.fetch, f'DELETE FROM "Series" WHERE "SeriesInstanceUID" = \'{UID_ROOT}.1.1\'')
    assert pg.data("{ allSeries { totalCount } }")["allSeries"]["totalCount"] == 6


# De-identified access on PostgreSQL: the database computes the shifted dates and the keyed order itself (SQL's
# sha256 where SQLite calls Python), so every answer must be SQLite's.
DEID_TOKEN = "deid-token-0123456789abcdefXYZ"
KEY = b"a pseudonym key of the test suite"


class DeidApi(Api):
    def post(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {DEID_TOKEN}"}
        response = self.client.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
        assert response.status_code == 200, response.text
        return response.json()


def _deid(url: str) -> Iterator[DeidApi]:
    tokens = (Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "deid"),)
    for api in serve(url, tokens=tokens, pseudonym_key=KEY):
        yield DeidApi(api.client)


@pytest.fixture(scope="module")
def pg_deid(pg: Api, postgres_url: str) -> Iterator[DeidApi]:
    yield from _deid(postgres_url)


@pytest.fixture(scope="module")
def sqlite_deid(synthetic_db: Path) -> Iterator[DeidApi]:
    yield from _deid(f"sqlite:///{synthetic_db}")


DEID_QUERIES = [
    """{ allPatients { nodes { patientId lastMenstrualDate raw studies { nodes { studyInstanceUid studyDate
        seriesDate raw series { nodes { seriesInstanceUid studyInstanceUid raw
          slices(first: 3) { nodes { sopInstanceUid acquisitionDate raw } } } } } } } } }""",
    '{ allStudies(where: {studyDate: {gte: "2015-01-01", lt: "2030-01-01"}}) { nodes { studyDate } } }',
    "{ allSlices(where: {acquisitionDate: {isNull: false}}) { totalCount nodes { acquisitionDate } } }",
    "{ allStudies(orderBy: [{field: STUDY_DATE, direction: DESC}]) { nodes { studyInstanceUid studyDate } } }",
    "{ allStudies { groupBy(field: STUDY_DATE, datePart: MONTH) { value count } } }",
    "{ allSlices { groupBy(field: SERIES_INSTANCE_UID) { value count } } }",
    "{ allSeries(first: 3) { edges { cursor node { seriesInstanceUid } } } }",
    "{ allSlices(orderBy: [{field: SOP_INSTANCE_UID}], first: 5) { edges { cursor node { sopInstanceUid } } } }",
]


@pytest.mark.parametrize("query", DEID_QUERIES)
def test_postgres_deidentifies_as_sqlite_does(pg_deid: DeidApi, sqlite_deid: DeidApi, query: str) -> None:
    expected = sqlite_deid.data(query)
    assert _without_slice_ids(pg_deid.data(query)) == _without_slice_ids(expected)


def test_postgres_finds_pseudonymous_uids(pg_deid: DeidApi) -> None:
    keys = Pseudonyms(KEY)
    study = keys.uid(f"{UID_ROOT}.1")
    data = pg_deid.data(
        f'{{ study(studyInstanceUid: "{study}") {{ studyInstanceUid series {{ totalCount }} }} '
        f'allSeries(where: {{studyInstanceUid: {{eq: "{study}"}}}}) {{ totalCount }} }}'
    )
    assert data == {"study": {"studyInstanceUid": study, "series": {"totalCount": 2}}, "allSeries": {"totalCount": 2}}
