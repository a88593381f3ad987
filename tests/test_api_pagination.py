"""Ordering and keyset pagination: exact orders, nulls last, paging to the end with nothing lost or repeated,
and clear errors for bad arguments."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from api_helpers import UID_ROOT, Api

pytest_plugins = ["api_fixtures"]


def _short(uid: str) -> str:
    return uid.removeprefix(UID_ROOT + ".")


def test_multi_key_order_with_nulls_last(synthetic: Api) -> None:
    data = synthetic.data(
        "{ allSeries(orderBy: [{field: MODALITY}, {field: SLICE_THICKNESS, direction: DESC}]) "
        "{ nodes { seriesInstanceUid } } }"
    )
    order = [_short(n["seriesInstanceUid"]) for n in data["allSeries"]["nodes"]]
    assert order == ["2.1", "1.1", "3.1", "4.1", "1.2", "5.1"]


@pytest.mark.parametrize(
    ("direction", "expected"),
    [("ASC", ["2", "5", "1", "3", "4"]), ("DESC", ["3", "1", "5", "2", "4"])],  # undated study 4 last both ways
)
def test_date_order_puts_nulls_last(synthetic: Api, direction: str, expected: list[str]) -> None:
    data = synthetic.data(
        f"{{ allStudies(orderBy: [{{field: STUDY_DATE, direction: {direction}}}]) {{ nodes {{ studyInstanceUid }} }} }}"
    )
    assert [_short(n["studyInstanceUid"]) for n in data["allStudies"]["nodes"]] == expected


def test_null_direction_is_ascending(synthetic: Api) -> None:
    data = synthetic.data("{ allStudies(orderBy: [{field: STUDY_DATE, direction: null}]) { nodes { studyDate } } }")
    assert [n["studyDate"] for n in data["allStudies"]["nodes"]] == [
        "2019-06-15",
        "2020-01-01",
        "2021-03-04",
        "2022-01-01",
        None,
    ]


def test_primary_key_breaks_ties(synthetic: Api) -> None:
    data = synthetic.data("{ allStudies(orderBy: [{field: STUDY_DESCRIPTION}]) { nodes { studyInstanceUid } } }")
    order = [_short(n["studyInstanceUid"]) for n in data["allStudies"]["nodes"]]
    assert order == ["1", "2", "3", "5", "4"]  # "Head" twice: study 2 before study 3
    data = synthetic.data(
        "{ allStudies(orderBy: [{field: STUDY_DESCRIPTION}, {field: STUDY_INSTANCE_UID, direction: DESC}]) "
        "{ nodes { studyInstanceUid } } }"
    )
    assert [_short(n["studyInstanceUid"]) for n in data["allStudies"]["nodes"]] == ["1", "3", "2", "5", "4"]


def test_default_orders(synthetic: Api) -> None:
    data = synthetic.data(
        f"""{{ allSlices(first: 3) {{ nodes {{ sliceId }} }}
              series(seriesInstanceUid: "{UID_ROOT}.3.1") {{ slices {{ nodes {{ sliceNumber }} }} }} }}"""
    )
    ids = [n["sliceId"] for n in data["allSlices"]["nodes"]]
    assert ids == sorted(ids)
    assert [n["sliceNumber"] for n in data["series"]["slices"]["nodes"]] == [1, 2, 3, 4]


SLICE_FIELDS = "sliceId sliceNumber sliceLocation sliceThickness acquisitionDate sopInstanceUid"
ORDERS = [
    "[]",
    "[{field: SLICE_LOCATION}]",
    "[{field: SLICE_LOCATION, direction: DESC}]",
    "[{field: SLICE_THICKNESS, direction: DESC}, {field: SLICE_NUMBER}]",
    "[{field: ACQUISITION_DATE}, {field: SLICE_LOCATION, direction: DESC}]",
    "[{field: SOP_INSTANCE_UID, direction: DESC}]",
    "[{field: SLICE_ID, direction: DESC}, {field: SLICE_NUMBER}]",
]
KEYS = {
    "SLICE_LOCATION": "sliceLocation",
    "SLICE_THICKNESS": "sliceThickness",
    "SLICE_NUMBER": "sliceNumber",
    "ACQUISITION_DATE": "acquisitionDate",
    "SOP_INSTANCE_UID": "sopInstanceUid",
    "SLICE_ID": "sliceId",
}


def _pages(api: Api, order: str, size: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after = None
    for _ in range(100):
        data = api.data(
            f"""query($after: String) {{ allSlices(orderBy: {order}, first: {size}, after: $after) {{
                totalCount nodes {{ {SLICE_FIELDS} }} pageInfo {{ hasNextPage hasPreviousPage endCursor }} }} }}""",
            after=after,
        )["allSlices"]
        assert data["pageInfo"]["hasPreviousPage"] is (after is not None)
        rows.extend(data["nodes"])
        if not data["pageInfo"]["hasNextPage"]:
            assert len(rows) == data["totalCount"]
            return rows
        after = data["pageInfo"]["endCursor"]
    raise AssertionError("paging did not end")


def _sorted_by(rows: list[dict[str, Any]], order: str) -> list[dict[str, Any]]:
    """The expected order computed in Python: requested keys (nulls last either way), then sliceId."""
    keys = []
    for item in order.strip("[]").split("}, {"):
        if "field:" in item:
            name = item.split("field: ")[1].split(",")[0].strip("{} ")
            keys.append((KEYS[name], "DESC" in item))
    if not keys or keys[-1][0] != "sliceId":
        keys.append(("sliceId", False))
    out = list(rows)
    for key, descending in reversed(keys):  # stable sorts, least significant key first
        present = sorted((r for r in out if r[key] is not None), key=lambda r: r[key], reverse=descending)
        out = present + [r for r in out if r[key] is None]
    return out


@pytest.mark.parametrize("order", ORDERS)
def test_paging_to_the_end_loses_and_repeats_nothing(synthetic: Api, order: str) -> None:
    everything = synthetic.data(f"{{ allSlices(orderBy: {order}, first: 1000) {{ nodes {{ {SLICE_FIELDS} }} }} }}")
    whole = everything["allSlices"]["nodes"]
    assert len(whole) == 55
    assert whole == _sorted_by(whole, order)
    for size in (1, 7, 55):
        paged = _pages(synthetic, order, size)
        assert paged == whole


def test_nested_paging_per_parent(synthetic: Api) -> None:
    query = """query($after: String) { allSeries(where: {modality: {eq: "CT"}}) { nodes { seriesInstanceUid
        slices(first: 3, after: $after, orderBy: [{field: SLICE_NUMBER}]) {
          nodes { sliceNumber } pageInfo { hasNextPage hasPreviousPage endCursor } } } } }"""
    first = synthetic.data(query, after=None)["allSeries"]["nodes"]
    assert [n["slices"]["nodes"] for n in first] == [
        [{"sliceNumber": 1}, {"sliceNumber": 2}, {"sliceNumber": 3}],
        [{"sliceNumber": 1}, {"sliceNumber": 2}, {"sliceNumber": 3}],
        [{"sliceNumber": 1}, {"sliceNumber": 2}, {"sliceNumber": 3}],
        [{"sliceNumber": 1}, {"sliceNumber": 2}],
    ]
    assert [n["slices"]["pageInfo"]["hasNextPage"] for n in first] == [True, True, True, False]
    # A cursor from one series continues every series from the same ordering values.
    cursor = first[2]["slices"]["pageInfo"]["endCursor"]
    second = synthetic.data(query, after=cursor)["allSeries"]["nodes"]
    series_31 = next(n for n in second if n["seriesInstanceUid"].endswith(".3.1"))
    assert series_31["slices"]["nodes"] == [{"sliceNumber": 4}]
    assert series_31["slices"]["pageInfo"]["hasNextPage"] is False
    assert series_31["slices"]["pageInfo"]["hasPreviousPage"] is True


def test_first_zero_counts_without_rows(synthetic: Api) -> None:
    data = synthetic.data(
        "{ allSeries(first: 0) { totalCount nodes { modality } pageInfo { hasNextPage startCursor endCursor } } }"
    )
    assert data["allSeries"] == {
        "totalCount": 6,
        "nodes": [],
        # No page, so no next page: a client that pages until hasNextPage is false stops (there is no
        # endCursor to go on from).
        "pageInfo": {"hasNextPage": False, "startCursor": None, "endCursor": None},
    }


def test_default_page_size(synthetic: Api) -> None:
    data = synthetic.data("{ allSlices { nodes { sliceId } pageInfo { hasNextPage } } }")
    assert len(data["allSlices"]["nodes"]) == 55  # under the default of 100
    assert data["allSlices"]["pageInfo"]["hasNextPage"] is False


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("first: -1", "`first` must be between 0 and 1000, got -1"),
        ("first: 1001", "`first` must be between 0 and 1000, got 1001"),
        ('after: "not a cursor"', "`after` is not a cursor returned by this API for this query"),
        ('after: ""', "`after` is not a cursor returned by this API for this query"),
        (f'after: "{_cursor(["c1", "+SliceID", ["x"]])}"', "`after` is not a cursor returned by this API"),
        (f'after: "{_cursor(["c1", "+SliceID", [None]])}"', "`after` is not a cursor returned by this API"),
        (f'after: "{_cursor(["c1", "+SliceID", [1, 2]])}"', "`after` is not a cursor returned by this API"),
        (f'after: "{_cursor(["c0", "+SliceID", [1]])}"', "`after` is not a cursor returned by this API"),
        (f'after: "{_cursor({"a": 1})}"', "`after` is not a cursor returned by this API"),
        (f'after: "{_cursor(["c1", "-SliceID", [1]])}"', "`after` is a cursor for another `orderBy`"),
    ],
)
def test_bad_paging_arguments_are_clear_errors(synthetic: Api, arguments: str, message: str) -> None:
    body = synthetic.post(f"{{ allSlices({arguments}) {{ totalCount nodes {{ sliceId }} }} }}")
    assert body["data"] is None
    [error] = body["errors"]
    assert error["message"].startswith(message)
    assert error["path"] == ["allSlices"]
    assert error["extensions"] == {"code": "BAD_USER_INPUT"}


def test_cursor_from_another_ordering_is_refused(synthetic: Api) -> None:
    data = synthetic.data("{ allSlices(first: 2) { pageInfo { endCursor } } }")
    cursor = data["allSlices"]["pageInfo"]["endCursor"]
    message = synthetic.error(
        "query($c: String) { allSlices(after: $c, orderBy: [{field: SLICE_LOCATION}]) { totalCount } }", c=cursor
    )
    assert message == "`after` is a cursor for another `orderBy`: use a cursor from the same ordering"


def test_nested_bad_argument_fails_only_its_field(synthetic: Api) -> None:
    body = synthetic.post(
        '{ study: allStudies(first: 1) { totalCount } patient(patientId: "PAT001") '
        "{ studies(first: 5000) { totalCount } } }"
    )
    assert body["data"] == {"study": {"totalCount": 5}, "patient": None}
    assert body["errors"][0]["message"] == "`first` must be between 0 and 1000, got 5000"
    assert body["errors"][0]["path"] == ["patient", "studies"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ('{ allStudies(where: {studyDate: {gt: "2020-13-01"}}) { totalCount } }', "Date"),
        ('{ allStudies(where: {studyDate: {gt: "yesterday"}}) { totalCount } }', "Date"),
        ("{ allSeries(orderBy: [{field: NOT_A_COLUMN}]) { totalCount } }", "NOT_A_COLUMN"),
        ('{ allSeries(where: {modality: {like: "CT"}}) { totalCount } }', "like"),
        ('{ allSeries(where: {sliceThickness: {gt: "thin"}}) { totalCount } }', "Float"),
        ("{ allSeries { nodes { notAField } } }", "notAField"),
    ],
)
def test_invalid_input_is_a_validation_error(synthetic: Api, query: str, message: str) -> None:
    body = synthetic.post(query)
    assert body.get("data") is None
    assert message in body["errors"][0]["message"]


def test_bad_date_variable_is_a_clear_error(synthetic: Api) -> None:
    body = synthetic.post(
        "query($d: Date!) { allStudies(where: {studyDate: {gt: $d}}) { totalCount } }", {"d": "2020-02-30"}
    )
    [error] = body["errors"]
    assert "$d" in error["message"] and "2020-02-30" in error["message"]


@pytest.mark.parametrize(("direction", "bound"), [("ASC", ">"), ("DESC", "<")])
def test_a_page_after_a_cursor_seeks_the_index(
    synthetic: Api, synthetic_db: Path, caplog: pytest.LogCaptureFixture, direction: str, bound: str
) -> None:
    query = f"""query($after: String) {{ allSlices(first: 5, after: $after,
        orderBy: [{{field: SLICE_LOCATION, direction: {direction}}}]) {{ pageInfo {{ endCursor }} }} }}"""
    cursor = synthetic.data(query, after=None)["allSlices"]["pageInfo"]["endCursor"]
    with caplog.at_level(logging.DEBUG, logger="dicom_api.db"):
        synthetic.data(query, after=cursor)
    [(sql, values)] = [r.args for r in caplog.records if r.args and "LIMIT" in r.args[0]]
    with sqlite3.connect(synthetic_db) as conn:
        plan = [row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", values)]
    # "USING INDEX" on the resolvers' path, "USING COVERING INDEX" on the compiled one (its page reads keys only).
    assert any(f"INDEX idx_slice_location (SliceLocation{bound}" in step for step in plan), plan
    assert not any(step.startswith(("SCAN t0", "SCAN c0")) for step in plan), plan
