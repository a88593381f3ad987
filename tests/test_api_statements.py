"""No N+1: the number of SQL statements a request runs depends on the query's shape, never on the row count.

These count the resolvers' statements (their loaders' batching), so the apps run on the resolvers; the compiled
path runs one statement per root field (tests/test_api_compiled.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_helpers import Api, ingest_into, serve, write_scaled

pytest_plugins = ["api_fixtures"]

# Every kind of relation at every level: connections with totalCount, pageInfo, edges and facets, counts,
# derived lists, parent relations. (One branch: loads of two branches may or may not meet in one batch,
# depending on which statement returns first.)
NESTED = """{
  allPatients(first: 100) {
    totalCount
    pageInfo { hasNextPage endCursor }
    groupBy(field: PATIENT_NAME) { value count }
    nodes {
      patientId studyCount
      studies(orderBy: [{field: STUDY_DATE, direction: DESC}]) {
        totalCount
        nodes {
          studyDate modalities seriesCount
          patient { patientId }
          series(where: {sliceThickness: {lt: 2}}, first: 2) {
            totalCount
            groupBy(field: SLICE_THICKNESS) { value count }
            edges { cursor node {
              modality sliceCount
              study { studyInstanceUid }
              slices(first: 3) { totalCount nodes { sliceNumber series { modality } } }
            } }
          }
        }
      }
    }
  }
}"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("small")
    write_scaled(root / "files", patients=2, studies=2, series=2, slices=2)
    yield from serve(f"sqlite:///{ingest_into(root, root / 'small.db', root / 'files')}", execution="resolvers")


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("large")
    write_scaled(root / "files", patients=5, studies=3, series=4, slices=9)
    yield from serve(f"sqlite:///{ingest_into(Path(root), root / 'large.db', root / 'files')}", execution="resolvers")


def _run(api: Api, query: str) -> tuple[int, dict]:
    before = api.statements
    data = api.data(query)
    return api.statements - before, data


def test_statements_do_not_grow_with_rows(small: Api, large: Api) -> None:
    small_count, small_data = _run(small, NESTED)
    large_count, large_data = _run(large, NESTED)
    assert small_data["allPatients"]["totalCount"] == 2
    assert large_data["allPatients"]["totalCount"] == 5
    large_series = [
        e for p in large_data["allPatients"]["nodes"] for s in p["studies"]["nodes"] for e in s["series"]["edges"]
    ]
    assert len(large_series) == 5 * 3 * 2 and all(len(e["node"]["slices"]["nodes"]) == 3 for e in large_series)
    assert small_count == large_count
    # One statement per relation per level; fields asking the same thing (studyCount and studies.totalCount,
    # nodes and edges and pageInfo of one connection) share theirs.
    assert large_count == 15


def test_equal_arguments_share_a_statement_and_different_ones_do_not(large: Api) -> None:
    one, _ = _run(large, "{ allSeries { nodes { slices(first: 2) { nodes { sliceId } } } } }")
    assert one == 2
    two, _ = _run(
        large,
        "{ allSeries { nodes { a: slices(first: 2) { nodes { sliceId } } b: slices(first: 2) { nodes { sliceId } } "
        "c: slices(first: 3) { nodes { sliceId } } } } }",
    )
    assert two == 3


def test_upward_relations_are_one_statement_per_level(small: Api, large: Api) -> None:
    query = "{ allSlices(first: 1000) { nodes { series { study { patient { patientId } } } } } }"
    assert _run(small, query)[0] == _run(large, query)[0] == 4


def test_lookups_of_many_keys_are_one_statement(large: Api) -> None:
    aliases = " ".join(f'p{i}: patient(patientId: "SC{i:03d}") {{ patientName }}' for i in range(5))
    count, data = _run(large, f"{{ {aliases} }}")
    assert count == 1
    assert [data[f"p{i}"]["patientName"] for i in range(5)] == [f"Scale^{i}" for i in range(5)]
