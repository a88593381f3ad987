"""Filters: every operator of every filter type, and/or/not, parent and children filters.

The synthetic corpus (api_helpers.write_synthetic), by series (UID suffix):
  1.1 CT 0.625 mm CHEST "Thin chest", 40 slices at -100 .. -75.625     study 1 2021-03-04 patient PAT001 F
  1.2 MR 5 mm, 256 rows, 3 slices at 0, 10, 20                          study 1
  2.1 CT 2.5 mm HEAD, 5 slices at 0 .. 10                               study 2 2019-06-15 patient PAT001
  3.1 CT 0.5 mm HEAD, KVP 100, 4 slices at 50 .. 48.5                    study 3 2022-01-01 patient PAT002 M
  4.1 CT thickness "abc" ABDOMEN, 2 slices at 7.5 and none               study 4 undated    patient PAT003 O
  5.1 OT, 1 slice                                                        study 5 2020-01-01 patient NOID-...
"""

from __future__ import annotations

import pytest
from api_helpers import UID_ROOT, Api

pytest_plugins = ["api_fixtures"]

ALL_SERIES = {"1.1", "1.2", "2.1", "3.1", "4.1", "5.1"}
ALL_STUDIES = {"1", "2", "3", "4", "5"}


def _ids(api: Api, connection: str, key: str, where: str) -> set[str]:
    data = api.data(f"{{ {connection}(where: {where}, first: 1000) {{ totalCount nodes {{ {key} }} }} }}")[connection]
    ids = {n[key].removeprefix(UID_ROOT + ".") for n in data["nodes"]}
    assert data["totalCount"] == len(data["nodes"]) == len(ids)
    return ids


def series(api: Api, where: str) -> set[str]:
    return _ids(api, "allSeries", "seriesInstanceUid", where)


def studies(api: Api, where: str) -> set[str]:
    return _ids(api, "allStudies", "studyInstanceUid", where)


def patients(api: Api, where: str) -> set[str]:
    return _ids(api, "allPatients", "patientId", where)


def slice_count(api: Api, where: str) -> int:
    return api.data(f"{{ allSlices(where: {where}) {{ totalCount }} }}")["allSlices"]["totalCount"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('{modality: {eq: "CT"}}', {"1.1", "2.1", "3.1", "4.1"}),
        ('{modality: {ne: "CT"}}', {"1.2", "5.1"}),
        ('{bodyPartExamined: {ne: "CHEST"}}', {"1.2", "2.1", "3.1", "4.1", "5.1"}),  # ne matches null
        ('{modality: {in: ["MR", "OT"]}}', {"1.2", "5.1"}),
        ("{modality: {in: []}}", set()),
        ('{bodyPartExamined: {notIn: ["HEAD", "ABDOMEN"]}}', {"1.1", "1.2", "5.1"}),  # notIn matches null
        ("{bodyPartExamined: {notIn: []}}", ALL_SERIES),
        ("{bodyPartExamined: {isNull: true}}", {"1.2", "5.1"}),
        ("{bodyPartExamined: {isNull: false}}", {"1.1", "2.1", "3.1", "4.1"}),
        ('{seriesDescription: {contains: "chest"}}', {"1.1"}),
        ('{seriesDescription: {contains: "Chest"}}', set()),  # contains is case-sensitive
        ('{seriesDescription: {startsWith: "MR "}}', {"1.2"}),
        ('{seriesDescription: {startsWith: "mr "}}', set()),
        (f'{{seriesInstanceUid: {{startsWith: "{UID_ROOT}.1."}}}}', {"1.1", "1.2"}),
        ('{seriesDescription: {match: "thin*"}}', {"1.1"}),  # match is case-insensitive
        ('{seriesDescription: {match: "*LOCALI?ER"}}', {"1.2"}),
        ('{seriesDescription: {match: "thin"}}', set()),  # match is the whole value, not a substring
        ('{modality: {eq: "CT"}, bodyPartExamined: {eq: "HEAD"}}', {"2.1", "3.1"}),  # entries: AND
        ('{bodyPartExamined: {startsWith: "H", contains: "AD", ne: "HEADS"}}', {"2.1", "3.1"}),  # operators: AND
        ("{modality: {}}", ALL_SERIES),
        ("{modality: {eq: null}}", ALL_SERIES),  # an explicit null is no filter
        # Multi-valued attributes filter on their stored DICOM text.
        ('{imageType: {contains: "AXIAL"}}', {"1.1", "2.1", "3.1", "4.1"}),
        ('{imageType: {eq: "ORIGINAL\\\\PRIMARY\\\\OTHER"}}', {"1.2"}),
        ('{convolutionKernel: {match: "b30*"}}', {"1.1", "2.1", "3.1", "4.1"}),
    ],
)
def test_string_filter(synthetic: Api, where: str, expected: set[str]) -> None:
    assert series(synthetic, where) == expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('{studyDescription: {match: "*100%*"}}', {"1"}),  # LIKE's % is a literal character in match
        ('{studyDescription: {match: "*%*"}}', {"1"}),
        ('{studyDescription: {match: "*_*"}}', {"1"}),  # and so is _
        ('{studyDescription: {match: "*dose?test!"}}', {"1"}),  # ? is one character, ! is literal
        ('{studyDescription: {match: "*dose%test*"}}', set()),
        ('{studyDescription: {match: "ct chest*"}}', {"1"}),
        ('{studyDescription: {match: "HEAD"}}', {"2", "3"}),
        ('{studyDescription: {match: "*"}}', ALL_STUDIES),
        ('{studyDescription: {contains: "100% dose_"}}', {"1"}),
        ('{studyDescription: {contains: "%"}}', {"1"}),
        ('{studyDescription: {startsWith: "_"}}', set()),
        ("{studyDescription: {eq: \"x' OR '1'='1\"}}", set()),  # values are bound, never SQL
    ],
)
def test_match_escapes_like_wildcards(synthetic: Api, where: str, expected: set[str]) -> None:
    assert studies(synthetic, where) == expected


def test_match_folds_case_beyond_ascii(synthetic: Api, charset: Api) -> None:
    assert patients(synthetic, '{patientName: {match: "ärger^é*"}}') == {"PAT003"}
    assert patients(charset, '{patientName: {match: "люк*"}}') == {"SCSRUSS"}
    assert patients(charset, '{patientName: {match: "διονυσιος"}}') == {"SCSGREEK"}
    assert patients(charset, '{patientName: {match: "*^rüdiger"}}') == {"SCSGERM"}
    # A name's ideographic and phonetic groups ("=") are part of its value.
    assert patients(charset, '{patientName: {match: "*=山田^太郎=*"}}') == {"H31EXAMPLE", "H32EXAMPLE"}
    assert patients(charset, '{patientName: {match: "yamada*"}}') == {"H31EXAMPLE"}


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("{sliceThickness: {eq: 0.625}}", {"1.1"}),
        ("{sliceThickness: {ne: 0.625}}", {"1.2", "2.1", "3.1", "4.1", "5.1"}),
        ("{sliceThickness: {gt: 2.5}}", {"1.2"}),
        ("{sliceThickness: {gte: 2.5}}", {"1.2", "2.1"}),
        ("{sliceThickness: {lt: 0.625}}", {"3.1"}),
        ("{sliceThickness: {lte: 0.625}}", {"1.1", "3.1"}),
        ("{sliceThickness: {in: [0.5, 5]}}", {"1.2", "3.1"}),
        ("{sliceThickness: {isNull: true}}", {"4.1", "5.1"}),  # 4.1 holds the text "abc"
        ("{sliceThickness: {isNull: false}}", {"1.1", "1.2", "2.1", "3.1"}),
        ("{sliceThickness: {gt: 0.5, lt: 5}}", {"1.1", "2.1"}),
        ("{kvp: {eq: 100}}", {"3.1"}),
        ("{kvp: {gte: 100, lt: 120}}", {"3.1"}),
    ],
)
def test_float_filter(synthetic: Api, where: str, expected: set[str]) -> None:
    assert series(synthetic, where) == expected


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("{rows: {eq: 256}}", {"1.2"}),
        ("{rows: {ne: 512}}", {"1.2", "5.1"}),
        ("{rows: {gt: 256}}", {"1.1", "2.1", "3.1", "4.1"}),
        ("{rows: {gte: 256}}", {"1.1", "1.2", "2.1", "3.1", "4.1"}),
        ("{rows: {lt: 512}}", {"1.2"}),
        ("{rows: {lte: 512}}", {"1.1", "1.2", "2.1", "3.1", "4.1"}),
        ("{rows: {in: [256, 1024]}}", {"1.2"}),
        ("{rows: {isNull: true}}", {"5.1"}),
        # AcquisitionNumber is a TEXT column holding an IS value: it filters as a number.
        ("{acquisitionNumber: {eq: 1}}", {"1.1", "2.1", "3.1", "4.1"}),
        ("{acquisitionNumber: {isNull: true}}", {"1.2", "5.1"}),
        ("{instanceNumber: {lte: 1}}", ALL_SERIES),
    ],
)
def test_int_filter(synthetic: Api, where: str, expected: set[str]) -> None:
    assert series(synthetic, where) == expected


def test_int_filter_on_slices(synthetic: Api) -> None:
    assert slice_count(synthetic, "{sliceNumber: {gt: 38}}") == 2
    assert slice_count(synthetic, "{sliceNumber: {in: [1, 2]}}") == 11
    assert slice_count(synthetic, "{sliceId: {lte: 3}}") == 3
    assert slice_count(synthetic, "{sliceLocation: {gte: -1, lte: 1}}") == 2
    assert slice_count(synthetic, "{sliceLocation: {isNull: true}}") == 2


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('{studyDate: {eq: "2021-03-04"}}', {"1"}),
        ('{studyDate: {gt: "2020-01-01"}}', {"1", "3"}),
        ('{studyDate: {gte: "2020-01-01"}}', {"1", "3", "5"}),
        ('{studyDate: {lt: "2020-01-01"}}', {"2"}),
        ('{studyDate: {lte: "2020-01-01"}}', {"2", "5"}),
        ('{studyDate: {gte: "2019-06-15", lt: "2021-03-04"}}', {"2", "5"}),
        ("{studyDate: {isNull: true}}", {"4"}),
        ("{studyDate: {isNull: false}}", {"1", "2", "3", "5"}),
    ],
)
def test_date_filter(synthetic: Api, where: str, expected: set[str]) -> None:
    assert studies(synthetic, where) == expected


def test_date_filter_ignores_text_that_is_not_a_date(synthetic: Api) -> None:
    # PAT002's birth date is stored as the raw text "19801345", which sorts after "1900-01-01" as text.
    assert patients(synthetic, '{patientBirthDate: {gt: "1900-01-01"}}') == {"PAT001"}
    assert patients(synthetic, '{patientBirthDate: {lt: "2100-01-01"}}') == {"PAT001"}
    assert patients(synthetic, "{patientBirthDate: {isNull: false}}") == {"PAT001"}
    assert patients(synthetic, "{patientBirthDate: {isNull: true}}") == {"PAT002", "PAT003", f"NOID-{UID_ROOT}.5"}


def test_boolean_filter(synthetic: Api) -> None:
    assert patients(synthetic, "{patientIdGenerated: {eq: true}}") == {f"NOID-{UID_ROOT}.5"}
    assert patients(synthetic, "{patientIdGenerated: {eq: false}}") == {"PAT001", "PAT002", "PAT003"}
    assert len(patients(synthetic, "{patientIdGenerated: {isNull: false}}")) == 4


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ('{or: [{modality: {eq: "MR"}}, {modality: {eq: "OT"}}]}', {"1.2", "5.1"}),
        ("{or: []}", set()),
        ("{and: []}", ALL_SERIES),
        ('{and: [{modality: {eq: "CT"}}, {sliceThickness: {lt: 1}}]}', {"1.1", "3.1"}),
        ('{not: {bodyPartExamined: {eq: "HEAD"}}}', {"1.1", "1.2", "4.1", "5.1"}),  # nulls are "not HEAD"
        ("{not: {sliceThickness: {gt: 1}}}", {"1.1", "3.1", "4.1", "5.1"}),
        ('{not: {not: {modality: {eq: "MR"}}}}', {"1.2"}),
        (
            '{modality: {eq: "CT"}, or: [{bodyPartExamined: {eq: "CHEST"}}, {sliceThickness: {lt: 0.6}}]}',
            {"1.1", "3.1"},
        ),
        ('{or: [{and: [{modality: {eq: "CT"}}, {kvp: {eq: 100}}]}, {modality: {eq: "OT"}}]}', {"3.1", "5.1"}),
    ],
)
def test_and_or_not(synthetic: Api, where: str, expected: set[str]) -> None:
    assert series(synthetic, where) == expected


def test_not_is_the_complement(synthetic: Api) -> None:
    for condition in ('{bodyPartExamined: {eq: "HEAD"}}', "{sliceThickness: {gte: 1}}", '{modality: {match: "c*"}}'):
        matched = series(synthetic, condition)
        assert series(synthetic, f"{{not: {condition}}}") == ALL_SERIES - matched


def test_parent_filters(synthetic: Api) -> None:
    assert series(synthetic, '{study: {studyDate: {gt: "2020-01-01"}}}') == {"1.1", "1.2", "3.1"}
    assert studies(synthetic, '{patient: {patientSex: {eq: "M"}}}') == {"3"}
    assert slice_count(synthetic, '{series: {modality: {eq: "MR"}}}') == 3
    assert slice_count(synthetic, '{series: {study: {patient: {patientId: {eq: "PAT002"}}}}}') == 4
    assert series(synthetic, '{study: {patient: {patientName: {match: "alpha*"}}}, modality: {eq: "CT"}}') == {
        "1.1",
        "2.1",
    }


def test_children_filters(synthetic: Api) -> None:
    assert patients(synthetic, '{studies: {some: {studyDate: {gt: "2021-01-01"}}}}') == {"PAT001", "PAT002"}
    assert patients(synthetic, '{studies: {none: {studyDate: {gt: "2021-01-01"}}}}') == {
        "PAT003",
        f"NOID-{UID_ROOT}.5",
    }
    assert studies(synthetic, '{series: {some: {modality: {eq: "MR"}}}}') == {"1"}
    assert studies(synthetic, '{series: {none: {modality: {eq: "CT"}}}}') == {"5"}
    assert studies(synthetic, '{series: {some: {modality: {eq: "CT"}}, none: {modality: {eq: "MR"}}}}') == {
        "2",
        "3",
        "4",
    }
    assert series(synthetic, "{slices: {some: {sliceLocation: {isNull: true}}}}") == {"4.1", "5.1"}
    assert series(synthetic, "{slices: {none: {sliceLocation: {lt: 0}}}}") == {"1.2", "2.1", "3.1", "4.1", "5.1"}


def test_one_query_patients_with_a_thin_ct_series_in_a_recent_study(synthetic: Api) -> None:
    query = """query($after: Date!, $mm: Float!) {
      allPatients(where: {studies: {some: {
        studyDate: {gt: $after},
        series: {some: {modality: {eq: "CT"}, sliceThickness: {lt: $mm}}}}}}) {
        nodes { patientId } } }"""
    found = synthetic.data(query, after="2020-01-01", mm=1.0)["allPatients"]["nodes"]
    assert found == [{"patientId": "PAT001"}, {"patientId": "PAT002"}]
    found = synthetic.data(query, after="2021-06-01", mm=1.0)["allPatients"]["nodes"]
    assert found == [{"patientId": "PAT002"}]
    found = synthetic.data(query, after="2020-01-01", mm=0.6)["allPatients"]["nodes"]
    assert found == [{"patientId": "PAT002"}]


def test_filters_on_nested_connections(synthetic: Api) -> None:
    data = synthetic.data(
        """{ patient(patientId: "PAT001") {
            ct: studies(where: {series: {some: {modality: {eq: "CT"}}}}) { totalCount }
            recent: studies(where: {studyDate: {gt: "2020-01-01"}}) { nodes {
              series(where: {modality: {eq: "CT"}}) { nodes {
                slices(where: {sliceLocation: {gt: -90}}, first: 2) { totalCount nodes { sliceNumber } } } } } } } }"""
    )
    patient = data["patient"]
    assert patient["ct"]["totalCount"] == 2
    slices = patient["recent"]["nodes"][0]["series"]["nodes"][0]["slices"]
    # Locations run -100 + 0.625 * (n - 1): above -90 from slice 18 on.
    assert slices == {"totalCount": 23, "nodes": [{"sliceNumber": 18}, {"sliceNumber": 19}]}


def test_filter_injection_attempts_find_nothing_and_change_nothing(synthetic: Api) -> None:
    before = slice_count(synthetic, "{}")
    for text in ['\'; DROP TABLE "SliceMetadata"; --', '" OR 1=1 --', "%", "\\", "*' OR '1'='1"]:
        variables = {"text": text}
        data = synthetic.data(
            """query($text: String!) {
                a: allSeries(where: {modality: {eq: $text}}) { totalCount }
                b: allSeries(where: {modality: {contains: $text}}) { totalCount }
                c: allSeries(where: {modality: {in: [$text]}}) { totalCount } }""",
            **variables,
        )
        assert {v["totalCount"] for v in data.values()} == {0}
    assert slice_count(synthetic, "{}") == before == 55
