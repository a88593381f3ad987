"""Types and relations: what the API returns is what the DICOM files hold, typed."""

from __future__ import annotations

from typing import Any

import pydicom
import pytest
from api_helpers import UID_ROOT, Api
from conftest import DICOMDIR_TESTS
from pydicom.errors import InvalidDicomError

from dicom_db.api.columns import PATIENT, SERIES, SLICE, STUDY, Table

pytest_plugins = ["api_fixtures"]

TREE = """{
  allPatients(first: 1000) { nodes { patientId patientName
    studies(first: 1000) { nodes { studyInstanceUid studyDate studyTime
      series(first: 1000) { nodes { seriesInstanceUid modality
        slices(first: 1000) { nodes { sopInstanceUid sliceNumber sliceLocation } } } } } } } }
}"""


def _files_tree() -> dict[str, Any]:
    """patient -> (name, study -> (date, series -> (modality, sop -> (number, location)))) read with pydicom."""
    tree: dict[str, Any] = {}
    for path in sorted(DICOMDIR_TESTS.rglob("*")):
        if not path.is_file():
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue
        if "DirectoryRecordSequence" in ds:
            continue
        patient = tree.setdefault(ds.PatientID, (str(ds.PatientName), {}))
        study_date = ds.get("StudyDate") or None
        iso = f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}" if study_date else None
        study = patient[1].setdefault(ds.StudyInstanceUID, (iso, {}))
        series = study[1].setdefault(ds.SeriesInstanceUID, (ds.Modality, {}))
        location = ds.get("SliceLocation")
        number = ds.get("InstanceNumber")
        series[1][ds.SOPInstanceUID] = (
            int(number) if number is not None else None,
            float(location) if location is not None else None,
        )
    return tree


def _api_tree(data: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for p in data["allPatients"]["nodes"]:
        studies: dict[str, Any] = {}
        for st in p["studies"]["nodes"]:
            series = {}
            for se in st["series"]["nodes"]:
                slices = {
                    sl["sopInstanceUid"]: (sl["sliceNumber"], sl["sliceLocation"]) for sl in se["slices"]["nodes"]
                }
                series[se["seriesInstanceUid"]] = (se["modality"], slices)
            studies[st["studyInstanceUid"]] = (st["studyDate"], series)
        tree[p["patientId"]] = (p["patientName"], studies)
    return tree


def test_nested_tree_equals_the_files(dicomdir: Api) -> None:
    expected = _files_tree()
    assert len(expected) == 3 and sum(len(s) for _, s in expected.values()) == 7
    assert _api_tree(dicomdir.data(TREE)) == expected


def test_nested_slices_come_in_slice_number_order(dicomdir: Api) -> None:
    data = dicomdir.data(TREE)
    for patient in data["allPatients"]["nodes"]:
        for study in patient["studies"]["nodes"]:
            for series in study["series"]["nodes"]:
                numbers = [s["sliceNumber"] for s in series["slices"]["nodes"]]
                assert numbers == sorted(numbers)


def test_typed_values_of_a_ct_series(synthetic: Api) -> None:
    data = synthetic.data(
        """query($uid: String!) { series(seriesInstanceUid: $uid) {
            seriesInstanceUid studyInstanceUid seriesDescription modality sliceThickness pixelSpacing
            imagePositionPatient imageOrientationPatient rows columns imageType acquisitionNumber instanceNumber
            kvp bodyPartExamined convolutionKernel tableHeight sliceCount
            slices(first: 3) { nodes { sliceNumber sliceLocation sliceThickness imagePositionPatient
                                       acquisitionDate accessionNumber sopClassUid sopInstanceUid } }
        } }""",
        uid=f"{UID_ROOT}.1.1",
    )
    series = data["series"]
    slices = series.pop("slices")["nodes"]
    assert series == {
        "seriesInstanceUid": f"{UID_ROOT}.1.1",
        "studyInstanceUid": f"{UID_ROOT}.1",
        "seriesDescription": "Thin chest",
        "modality": "CT",
        "sliceThickness": 0.625,
        "pixelSpacing": [0.7, 0.7],
        "imagePositionPatient": [-125.0, -125.0, -100.0],  # the representative (first) instance's
        "imageOrientationPatient": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "rows": 512,
        "columns": 512,
        "imageType": ["ORIGINAL", "PRIMARY", "AXIAL"],
        "acquisitionNumber": 1,
        "instanceNumber": 1,
        "kvp": 120.0,
        "bodyPartExamined": "CHEST",
        "convolutionKernel": ["B30f"],
        "tableHeight": None,
        "sliceCount": 40,
    }
    assert slices == [
        {
            "sliceNumber": i + 1,
            "sliceLocation": -100.0 + i * 0.625,
            "sliceThickness": 0.625,
            "imagePositionPatient": [-125.0, -125.0, -100.0 + i * 0.625],
            "acquisitionDate": "2021-03-04",
            "accessionNumber": "ACC-1",
            "sopClassUid": "1.2.840.10008.5.1.4.1.1.2",
            "sopInstanceUid": f"{UID_ROOT}.1.1.{i + 1}",
        }
        for i in range(3)
    ]


def test_patient_and_study_values(synthetic: Api) -> None:
    data = synthetic.data(
        """{ patient(patientId: "PAT001") {
            patientId patientName patientSex patientBirthDate patientIdGenerated studyCount
            studies(orderBy: [{field: STUDY_DATE}]) { nodes {
                studyInstanceUid patientId studyDate studyTime studyId studyDescription referringPhysicianName
                seriesCount modalities } } } }"""
    )
    patient = data["patient"]
    assert patient.pop("studies")["nodes"] == [
        {
            "studyInstanceUid": f"{UID_ROOT}.2",
            "patientId": "PAT001",
            "studyDate": "2019-06-15",
            "studyTime": None,
            "studyId": "2",
            "studyDescription": "Head",
            "referringPhysicianName": None,
            "seriesCount": 1,
            "modalities": ["CT"],
        },
        {
            "studyInstanceUid": f"{UID_ROOT}.1",
            "patientId": "PAT001",
            "studyDate": "2021-03-04",
            "studyTime": "10:15:00",
            "studyId": "1",
            "studyDescription": "CT Chest 100% dose_test!",
            "referringPhysicianName": "Who^Doctor",
            "seriesCount": 2,
            "modalities": ["CT", "MR"],
        },
    ]
    assert patient == {
        "patientId": "PAT001",
        "patientName": "Alpha^Anna",
        "patientSex": "F",
        "patientBirthDate": "1970-01-01",
        "patientIdGenerated": False,
        "studyCount": 2,
    }


def test_unparseable_values_are_null_and_stay_reachable_in_raw(synthetic: Api) -> None:
    data = synthetic.data(
        f"""{{ patient(patientId: "PAT002") {{ patientBirthDate raw }}
              series(seriesInstanceUid: "{UID_ROOT}.4.1") {{ sliceThickness pixelSpacing raw }} }}"""
    )
    assert data["patient"]["patientBirthDate"] is None
    assert data["patient"]["raw"]["PatientBirthDate"] == "19801345"
    assert data["patient"]["raw"]["PatientID"] == "PAT002"
    assert data["series"]["sliceThickness"] is None
    assert data["series"]["raw"]["SliceThickness"] == "abc"
    assert data["series"]["pixelSpacing"] == [0.7, 0.7]
    assert data["series"]["raw"]["PixelSpacing"] == "0.7\\0.7"
    assert "SliceThicknessValue" not in data["series"]["raw"]  # raw shows the user's columns, not helpers


def test_raw_holds_every_column_of_the_row(synthetic: Api) -> None:
    data = synthetic.data(f'{{ slice(sopInstanceUid: "{UID_ROOT}.1.1.2") {{ sliceId raw }} }}')
    raw = data["slice"]["raw"]
    assert raw["SOPInstanceUID"] == f"{UID_ROOT}.1.1.2"
    assert raw["SliceID"] == data["slice"]["sliceId"]
    assert raw["SliceLocation"] == -99.375
    assert raw["ImagePositionPatient"] == "-125.0\\-125.0\\-99.375"
    # every exposed column of the registry, none of the ingest's helpers (digests)
    assert set(raw) == {c.name for c in SLICE.columns}
    assert "SOPInstanceUIDHash" not in raw


def test_patient_without_id_is_generated(synthetic: Api) -> None:
    data = synthetic.data(
        "{ allPatients(where: {patientIdGenerated: {eq: true}}) "
        "{ nodes { patientId patientName patientIdGenerated } } }"
    )
    assert data["allPatients"]["nodes"] == [
        {"patientId": f"NOID-{UID_ROOT}.5", "patientName": "Nobody^Known", "patientIdGenerated": True}
    ]


def test_relations_upwards_and_lookups(synthetic: Api) -> None:
    data = synthetic.data(
        f"""{{ slice(sopInstanceUid: "{UID_ROOT}.3.1.2") {{
                sliceNumber series {{ modality study {{ studyDate patient {{ patientId patientName }} }} }} }}
              study(studyInstanceUid: "{UID_ROOT}.3") {{ patient {{ patientId }} }}
              missing: patient(patientId: "nobody") {{ patientId }}
              noSeries: series(seriesInstanceUid: "1.2.3") {{ modality }}
              noSlice: slice(sopInstanceUid: "1.2.3") {{ sliceId }} }}"""
    )
    assert data == {
        "slice": {
            "sliceNumber": 2,
            "series": {
                "modality": "CT",
                "study": {"studyDate": "2022-01-01", "patient": {"patientId": "PAT002", "patientName": "Bravo^Bob"}},
            },
        },
        "study": {"patient": {"patientId": "PAT002"}},
        "missing": None,
        "noSeries": None,
        "noSlice": None,
    }


def test_edges_carry_the_nodes_and_their_cursors(synthetic: Api) -> None:
    data = synthetic.data(
        "{ allStudies(first: 3) { nodes { studyInstanceUid } edges { cursor node { studyInstanceUid } } "
        "pageInfo { startCursor endCursor } } }"
    )
    conn = data["allStudies"]
    assert [e["node"] for e in conn["edges"]] == conn["nodes"]
    assert conn["pageInfo"]["startCursor"] == conn["edges"][0]["cursor"]
    assert conn["pageInfo"]["endCursor"] == conn["edges"][-1]["cursor"]
    assert len({e["cursor"] for e in conn["edges"]}) == 3


def test_person_names_in_other_character_sets(charset: Api) -> None:
    data = charset.data("{ allPatients(first: 100) { nodes { patientId patientName } } }")
    names = {p["patientId"]: p["patientName"] for p in data["allPatients"]["nodes"]}
    assert names["H31EXAMPLE"] == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    assert names["SCSGREEK"] == "Διονυσιος"
    assert names["SCSRUSS"] == "Люкceмбypг"
    assert names["SCSGERM"] == "Äneas^Rüdiger"
    assert len(names) == 13


def test_same_arguments_in_two_places_give_the_same_answer(synthetic: Api) -> None:
    # The root connection and a nested one with equal arguments share a loader batch: each keeps its own rows.
    data = synthetic.data(
        """{ allStudies(first: 2, orderBy: [{field: STUDY_DATE}]) { nodes { studyDate } totalCount }
             patient(patientId: "PAT001") { studies(first: 2, orderBy: [{field: STUDY_DATE}]) {
                nodes { studyDate } totalCount } } }"""
    )
    assert data["allStudies"] == {"nodes": [{"studyDate": "2019-06-15"}, {"studyDate": "2020-01-01"}], "totalCount": 5}
    assert data["patient"]["studies"] == {
        "nodes": [{"studyDate": "2019-06-15"}, {"studyDate": "2021-03-04"}],
        "totalCount": 2,
    }


def _all_fields(table: Table) -> str:
    names = []
    for column in table.columns:
        head, *rest = column.attr.split("_")
        names.append(head + "".join(w.capitalize() for w in rest))
    return " ".join(names) + " raw"


@pytest.mark.parametrize("connection", ["allPatients", "allStudies", "allSeries", "allSlices"])
def test_every_field_of_every_row_of_pydicom_data_is_served(pydicom_data: Api, connection: str) -> None:
    table = {"allPatients": PATIENT, "allStudies": STUDY, "allSeries": SERIES, "allSlices": SLICE}[connection]
    query = f"""query($after: String) {{ {connection}(first: 50, after: $after) {{
        totalCount pageInfo {{ hasNextPage endCursor }} nodes {{ {_all_fields(table)} }} }} }}"""
    seen, after = 0, None
    while True:
        page = pydicom_data.data(query, after=after)[connection]
        seen += len(page["nodes"])
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == page["totalCount"] > 0
    facets = " ".join(f"{c.attr}: groupBy(field: {c.enum}) {{ count }}" for c in table.columns)
    for facet in pydicom_data.data(f"{{ {connection} {{ {facets} }} }}")[connection].values():
        assert sum(g["count"] for g in facet) == seen
