"""Facets: `groupBy` counts values over the whole filtered set, on every connection and field."""

from __future__ import annotations

import pytest
from api_helpers import UID_ROOT, Api

from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, Table

pytest_plugins = ["api_fixtures"]

CONNECTIONS = [("allPatients", PATIENT), ("allStudies", STUDY), ("allSeries", SERIES), ("allSlices", SLICE)]


def groups(api: Api, connection: str, args: str, where: str = "{}") -> list[tuple[str | None, int]]:
    data = api.data(f"{{ {connection}(where: {where}) {{ groupBy({args}) {{ value count }} }} }}")
    return [(g["value"], g["count"]) for g in data[connection]["groupBy"]]


def test_series_per_modality(synthetic: Api) -> None:
    assert groups(synthetic, "allSeries", "field: MODALITY") == [("CT", 4), ("MR", 1), ("OT", 1)]


def test_groups_follow_the_filter_not_the_page(synthetic: Api) -> None:
    data = synthetic.data(
        '{ allSeries(where: {modality: {eq: "CT"}}, first: 1) { totalCount nodes { modality } '
        "groupBy(field: BODY_PART_EXAMINED) { value count } } }"
    )["allSeries"]
    assert len(data["nodes"]) == 1
    assert data["groupBy"] == [
        {"value": "HEAD", "count": 2},
        {"value": "ABDOMEN", "count": 1},
        {"value": "CHEST", "count": 1},
    ]
    assert sum(g["count"] for g in data["groupBy"]) == data["totalCount"] == 4


def test_most_frequent_first_then_by_value_with_null_last(synthetic: Api) -> None:
    assert groups(synthetic, "allSeries", "field: BODY_PART_EXAMINED") == [
        ("HEAD", 2),
        (None, 2),
        ("ABDOMEN", 1),
        ("CHEST", 1),
    ]


def test_values_are_rendered_as_text(synthetic: Api) -> None:
    assert groups(synthetic, "allSeries", "field: SLICE_THICKNESS") == [
        (None, 2),
        ("0.5", 1),
        ("0.625", 1),
        ("2.5", 1),
        ("5.0", 1),
    ]
    assert groups(synthetic, "allSeries", "field: ROWS") == [("512", 4), ("256", 1), (None, 1)]
    assert groups(synthetic, "allPatients", "field: PATIENT_ID_GENERATED") == [("false", 3), ("true", 1)]
    assert groups(synthetic, "allSeries", "field: IMAGE_TYPE", '{modality: {ne: "OT"}}') == [
        ("ORIGINAL\\PRIMARY\\AXIAL", 4),
        ("ORIGINAL\\PRIMARY\\OTHER", 1),
    ]


def test_dates_by_year_month_and_day(synthetic: Api) -> None:
    by_year = groups(synthetic, "allStudies", "field: STUDY_DATE, datePart: YEAR")
    assert by_year == [("2019", 1), ("2020", 1), ("2021", 1), ("2022", 1), (None, 1)]
    by_month = groups(synthetic, "allStudies", "field: STUDY_DATE, datePart: MONTH", "{studyDate: {isNull: false}}")
    assert by_month == [("2019-06", 1), ("2020-01", 1), ("2021-03", 1), ("2022-01", 1)]
    assert groups(synthetic, "allSlices", "field: ACQUISITION_DATE, datePart: DAY") == [("2021-03-04", 40), (None, 15)]
    # A date stored as raw text counts as unknown when grouped by part, as itself when grouped by value.
    assert groups(synthetic, "allPatients", "field: PATIENT_BIRTH_DATE, datePart: YEAR") == [(None, 3), ("1970", 1)]
    assert ("19801345", 1) in groups(synthetic, "allPatients", "field: PATIENT_BIRTH_DATE")


def test_first_caps_the_number_of_groups(synthetic: Api) -> None:
    assert groups(synthetic, "allSlices", "field: SERIES_INSTANCE_UID, first: 2") == [
        (f"{UID_ROOT}.1.1", 40),
        (f"{UID_ROOT}.2.1", 5),
    ]


@pytest.mark.parametrize(("connection", "table"), CONNECTIONS)
def test_every_field_facets_add_up_to_total_count(synthetic: Api, connection: str, table: Table) -> None:
    fields = " ".join(f"{c.attr}: groupBy(field: {c.enum}) {{ count }}" for c in table.columns)
    data = synthetic.data(f"{{ {connection} {{ totalCount {fields} }} }}")[connection]
    total = data.pop("totalCount")
    assert total > 0
    for name, facet in data.items():
        assert sum(g["count"] for g in facet) == total, name


def test_facets_add_up_under_a_filter_and_on_other_databases(dicomdir: Api, charset: Api) -> None:
    cases = (
        (dicomdir, '{modality: {in: ["CT", "MR"]}}'),
        (charset, '{study: {patient: {patientName: {match: "*^*"}}}}'),
    )
    for api, where in cases:
        data = api.data(
            f"{{ allSeries(where: {where}) {{ totalCount groupBy(field: MODALITY) {{ count }} }} "
            "allSlices { totalCount groupBy(field: SERIES_INSTANCE_UID) { count } } }"
        )
        for conn in data.values():
            assert sum(g["count"] for g in conn["groupBy"]) == conn["totalCount"] > 0


def test_nested_facets_per_parent(synthetic: Api) -> None:
    data = synthetic.data(
        '{ patient(patientId: "PAT001") { studies(orderBy: [{field: STUDY_DATE}]) { nodes { '
        "series { groupBy(field: MODALITY) { value count } } } "
        "groupBy(field: STUDY_DESCRIPTION) { value count } } } }"
    )
    studies = data["patient"]["studies"]
    assert [n["series"]["groupBy"] for n in studies["nodes"]] == [
        [{"value": "CT", "count": 1}],
        [{"value": "CT", "count": 1}, {"value": "MR", "count": 1}],
    ]
    assert studies["groupBy"] == [{"value": "CT Chest 100% dose_test!", "count": 1}, {"value": "Head", "count": 1}]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("field: MODALITY, datePart: YEAR", "`datePart` applies to date fields only, not MODALITY"),
        ("field: MODALITY, first: -1", "`first` must be between 0 and 1000, got -1"),
        ("field: MODALITY, first: 100000", "`first` must be between 0 and 1000, got 100000"),
    ],
)
def test_bad_facet_arguments(synthetic: Api, args: str, message: str) -> None:
    assert synthetic.error(f"{{ allSeries {{ groupBy({args}) {{ value }} }} }}") == message
