"""De-identified access as DICOM PS3.15 Annex E has it, applied at query time.

- The PS3.15 Table E.1-1 actions of every column of the four tables (transcribed here independently of
  api/columns.py), what each level does with them, and what the API returns for every field, side by side;
  docs/api.md carries the same table.
- Pseudonymous UIDs: valid UIDs of at most 64 characters, the same on every path, found by lookups, filters,
  cursors and facets; the real UIDs find nothing.
- Dates shifted by a per-patient offset: never zero, the same across the patient's tree; filters, ordering and
  facets see the shifted dates.
- Levels declared in a tokens file (other option sets); file access for `full` only.
- A leak test: databases built by the real dicom-ingest from pydicom's files and from series written with
  identifiers in StudyID, descriptions and UIDs; a de-identified token pages through every field of every type,
  filters, orders, facets, cursors and errors, and no stored identifier nor unshifted date reaches it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import html
import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_helpers import (
    DEID_TOKEN,
    FULL_TOKEN,
    KEY,
    LEVEL_TOKENS,
    LEVELS_FILE,
    UID_ROOT,
    TestClient,
    TokenClient,
    ingest_into,
    write_series,
)
from conftest import DICOMDIR_TESTS, SHARED_DATA, rows

from dicom_db.api.app import create_app
from dicom_db.api.auth import AccessLevel, Token, read_tokens_file
from dicom_db.api.columns import TABLES, Kind, Option
from dicom_db.api.masking import Pseudonyms, Treatment, ps315_table, treatment
from dicom_db.api.settings import Settings

pytest_plugins = ["api_fixtures"]

UID_PSEUDONYM = re.compile(r"2\.25\.(0|[1-9][0-9]*)")

# PS3.15 Table E.1-1 (2024b) for the attributes our columns hold: tag, the Basic Profile's action, and the
# actions of the options that list the attribute. Attributes the table does not list are kept: "K", no options.
# Checked against innolitics/dicom-standard standard/confidentiality_profile_attributes.json at 8670abdd
# ("Update standard to rev2024b"), which that repository generates from the standard's Table E.1-1.
FD, MD = "retain-longitudinal-full-dates", "retain-longitudinal-modified-dates"
E11: dict[str, tuple[str, str, dict[str, str]]] = {
    "PatientID": ("(0010,0020)", "Z/D", {}),  # Z until 2024a, Z/D since 2024b
    "PatientName": ("(0010,0010)", "Z", {}),
    "PatientSex": ("(0010,0040)", "Z", {"retain-patient-characteristics": "K"}),
    "PatientAge": ("(0010,1010)", "X", {"retain-patient-characteristics": "K"}),
    "PatientBirthDate": ("(0010,0030)", "Z", {}),
    "PatientIdentityRemoved": ("(0012,0062)", "=YES", {}),  # E.1.1: set to YES
    "DeIdentificationMethod": ("(0012,0063)", "=METHOD", {}),  # E.1.1: the method applied
    "LastMenstrualDate": ("(0010,21D0)", "X", {FD: "K", MD: "C"}),
    "StudyInstanceUID": ("(0020,000D)", "U", {"retain-uids": "K"}),
    "StudyDescription": ("(0008,1030)", "X", {"clean-descriptors": "C"}),
    "StudyDate": ("(0008,0020)", "Z", {FD: "K", MD: "C"}),
    "StudyTime": ("(0008,0030)", "Z", {FD: "K", MD: "C"}),
    "StudyID": ("(0020,0010)", "Z", {}),
    "SeriesDate": ("(0008,0021)", "X/D", {FD: "K", MD: "C"}),
    "SeriesTime": ("(0008,0031)", "X/D", {FD: "K", MD: "C"}),
    "ProtocolName": ("(0018,1030)", "X/D", {"clean-descriptors": "C"}),
    "ReferringPhysicianName": ("(0008,0090)", "Z", {}),
    "SeriesInstanceUID": ("(0020,000E)", "U", {"retain-uids": "K"}),
    "SeriesDescription": ("(0008,103E)", "X", {"clean-descriptors": "C"}),
    "SOPInstanceUID": ("(0008,0018)", "U", {"retain-uids": "K"}),
    "AcquisitionDate": ("(0008,0022)", "X/Z", {FD: "K", MD: "C"}),
    "AcquisitionTime": ("(0008,0032)", "X/Z", {FD: "K", MD: "C"}),
    "ContrastBolusAgent": ("(0018,0010)", "Z/D", {"clean-descriptors": "C"}),
    "AccessionNumber": ("(0008,0050)", "Z", {}),
    "LongitudinalTemporalInfo": ("(0028,0303)", "K", {MD: "=MODIFIED"}),  # E.3.6: MODIFIED when modified
}
NOT_DICOM = {"PatientIDGenerated", "SliceID"}  # columns of ours that are no DICOM attribute: kept


class Client(TokenClient):
    """A token's client that keeps every body it receives, for the leak test."""

    def __init__(self, http: TestClient, token: str) -> None:
        super().__init__(http, token)
        self.responses: list[Any] = []

    def post(self, query: str, **variables: Any) -> dict[str, Any]:
        body = super().post(query, **variables)
        self.responses.append(body)
        return body

    def error(self, query: str, **variables: Any) -> dict[str, Any]:
        body = self.post(query, **variables)
        assert body.get("errors"), body
        return body["errors"][0]


# The corpus: pydicom's dicomdirtests and series written with identifiers where research collections put them.
LEAKY_PATIENT = {
    "PatientID": "H31EXAMPLE",
    "PatientName": "Leakwell^Lena^Quincy",
    "PatientBirthDate": "19620514",
    "PatientSex": "F",
    "PatientAge": "057Y",
    "LastMenstrualDate": "20191220",
    "PatientIdentityRemoved": "NO",
}
LEAKY_STUDY = {
    "StudyInstanceUID": f"{UID_ROOT}.31.20200102",  # a UID that holds a date
    "StudyID": "H31EXAMPLE",  # StudyID = PatientID, as in many research collections
    "StudyDate": "20200102",
    "StudyTime": "101500",
    "SeriesDate": "20200103",
    "StudyDescription": "CT thorax Leakwell H31EXAMPLE",
    "ReferringPhysicianName": "Referrer^Rita",
    "AccessionNumber": "ACC-H31-0001",
}
LEAKY_SERIES = {
    "SeriesInstanceUID": f"{UID_ROOT}.31.20200102.7",
    "SeriesDescription": "Leakwell chest ACC-H31-0001",
    "Modality": "CT",
    "SliceThickness": 1.0,
    "AcquisitionDate": "20200104",
    "AcquisitionTime": "101600",
    "ContrastBolusAgent": "Omnipaque for Leakwell",
    "LongitudinalTemporalInformationModified": "UNMODIFIED",
}
OTHER_PATIENT = {"PatientID": "ACC-77-0002", "PatientName": "Otherly^Oscar", "PatientBirthDate": "19450101"}
OTHER_STUDY = {
    "StudyInstanceUID": f"{UID_ROOT}.32.1",
    "StudyID": "ACC-77-0002",  # StudyID = AccessionNumber
    "StudyDate": "19991231",
    "AccessionNumber": "ACC-77-0002",
    "StudyDescription": "MR head Otherly",
}
OTHER_SERIES = {"SeriesInstanceUID": f"{UID_ROOT}.32.1.1", "Modality": "MR", "AcquisitionDate": "20000101"}


@pytest.fixture(scope="module")
def leaky_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("leaky")
    write_series(root / "files" / "h31", LEAKY_PATIENT, LEAKY_STUDY, LEAKY_SERIES, 4)
    write_series(root / "files" / "other", OTHER_PATIENT, OTHER_STUDY, OTHER_SERIES, 2)
    return ingest_into(root, root / "leaky.db", root / "files", DICOMDIR_TESTS)


@pytest.fixture(scope="module")
def http(leaky_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    tokens_file = tmp_path_factory.mktemp("tokens") / "tokens"
    tokens_file.write_text(LEVELS_FILE)
    settings = Settings(
        database_url=f"sqlite:///{leaky_db}", tokens=tuple(read_tokens_file(tokens_file)), pseudonym_key=KEY
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def clients(http: TestClient) -> dict[str, Client]:
    return {level: Client(http, token) for level, token in LEVEL_TOKENS.items()}


def fields_of(table_name: str) -> str:
    return " ".join(c.field_name for c in TABLES[table_name].columns) + " raw"


# The PS3.15 table: transcription, code and docs agree.


def test_every_column_carries_its_table_e11_actions() -> None:
    for table in TABLES.values():
        for column in table.columns:
            tag, basic, options = E11.get(column.name, (column.ps315.tag, "K", {}))
            if column.name in NOT_DICOM:
                assert column.ps315.tag == "", column.name
            else:
                assert re.fullmatch(r"\([0-9A-F]{4},[0-9A-F]{4}\)", column.ps315.tag), column.name
            assert (column.ps315.tag, column.ps315.basic) == (tag, basic), column.name
            assert {o.value: a for o, a in column.ps315.options} == options, column.name


def test_docs_carry_the_table() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    table = ps315_table()
    assert table in docs
    assert table.count("\n") == sum(len(t.columns) for t in TABLES.values()) + 2  # header, rule, a row per column


def _level_options(name: str, http: TestClient) -> frozenset[Option]:
    token = LEVEL_TOKENS[name]
    settings = http.app.state.settings  # type: ignore[attr-defined]
    return next(t.level for t in settings.tokens if t.secret == token).options


@pytest.mark.parametrize("level", ["deidentified", "basic", "descriptions", "research"])
def test_every_field_of_every_type_as_each_level_sees_it(level: str, clients: dict[str, Client], http: TestClient):
    """Side by side, for every column of the four tables: the stored value (full access), the action PS3.15
    gives it under the level's options, and what the API returns, field and `raw`."""
    options = _level_options(level, http)
    keys = Pseudonyms(KEY)
    full, client = clients["full"], clients[level]
    uid = LEAKY_SERIES["SeriesInstanceUID"]
    shown_uid = keys.uid(uid) if Option.RETAIN_UIDS not in options else uid
    series, study, patient, slices = (fields_of(t) for t in ("Series", "Study", "Patient", "SliceMetadata"))
    query = f"""query($uid: String!) {{ series(seriesInstanceUid: $uid) {{ {series}
        study {{ {study} patient {{ {patient} }} }} slices(first: 1) {{ nodes {{ {slices} }} }} }} }}"""
    stored, shown = full.data(query, uid=uid)["series"], client.data(query, uid=shown_uid)["series"]
    assert shown is not None
    pairs = {
        "Series": (stored, shown),
        "Study": (stored["study"], shown["study"]),
        "Patient": (stored["study"]["patient"], shown["study"]["patient"]),
        "SliceMetadata": (stored["slices"]["nodes"][0], shown["slices"]["nodes"][0]),
    }
    offsets = set()
    side_by_side = []
    for table_name, (was, got) in pairs.items():
        table = TABLES[table_name]
        for column in table.columns:
            how, constant = treatment(column, options)
            before, after = was[column.field_name], got[column.field_name]
            raw_before, raw_after = was["raw"][column.name], got["raw"][column.name]
            side_by_side.append((table.type_name, column.field_name, column.ps315.action(options), before, after))
            if how is Treatment.STORED:
                assert (after, raw_after) == (before, raw_before), column.name
            elif how is Treatment.NULL:
                assert (after, raw_after) == (None, None), column.name
            elif how is Treatment.CONSTANT:
                assert after == raw_after == constant, column.name
            elif how is Treatment.PSEUDONYM:
                assert re.fullmatch(r"anon-[0-9a-f]{16}", after) and after == raw_after == keys(before), column.name
            elif how is Treatment.UID:
                assert after == raw_after == keys.uid(before), column.name
                assert UID_PSEUDONYM.fullmatch(after) and len(after) <= 64
                assert keys.uid_digest(after) == hashlib.sha256(before.encode()).hexdigest()[:32]
            elif how is Treatment.SHIFTED:
                assert column.kind is Kind.DATE and before is not None and after == raw_after
                offsets.add((dt.date.fromisoformat(after) - dt.date.fromisoformat(before)).days)
    assert side_by_side  # every column went through one branch above
    if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options:
        [offset] = offsets  # one offset for the patient's whole tree: patient, study, slice dates
        assert offset != 0 and abs(offset) <= 3652
    else:
        assert not offsets


# Pseudonymous UIDs


def test_uid_pseudonyms_are_valid_stable_keyed_and_reversible_only_with_the_key() -> None:
    keys, other = Pseudonyms(KEY), Pseudonyms(b"another key of the test suite!")
    uids = [f"{UID_ROOT}.{i}" for i in range(200)] + ["1." + "2" * 62]
    seen = set()
    for uid in uids:
        p = keys.uid(uid)
        assert UID_PSEUDONYM.fullmatch(p) and len(p) <= 64
        assert p == Pseudonyms(KEY).uid(uid) != other.uid(uid)
        assert keys.uid_digest(p) == hashlib.sha256(uid.encode()).hexdigest()[:32]
        assert other.uid_digest(p) != keys.uid_digest(p)
        seen.add(p)
    assert len(seen) == len(uids)
    for junk in ("", "2.25.", "2.25.01", "2.25." + str(1 << 128), "1.2.3", "2.25.1.2", "anon-0123"):
        assert keys.uid_digest(junk) is None


def test_lookups_by_pseudonymous_uid(clients: dict[str, Client], leaky_db: Path) -> None:
    keys, deid = Pseudonyms(KEY), clients["deidentified"]
    study, series = LEAKY_STUDY["StudyInstanceUID"], LEAKY_SERIES["SeriesInstanceUID"]
    sop = rows(leaky_db, 'SELECT "SOPInstanceUID" FROM "SliceMetadata" WHERE "SeriesInstanceUID" = ?', (series,))[0][0]
    query = """query($st: String!, $se: String!, $sop: String!) {
        study(studyInstanceUid: $st) { studyInstanceUid }
        series(seriesInstanceUid: $se) { seriesInstanceUid studyInstanceUid study { studyInstanceUid } }
        slice(sopInstanceUid: $sop) { sopInstanceUid seriesInstanceUid series { seriesInstanceUid } } }"""
    data = deid.data(query, st=keys.uid(study), se=keys.uid(series), sop=keys.uid(sop))
    assert data == {
        "study": {"studyInstanceUid": keys.uid(study)},
        "series": {
            "seriesInstanceUid": keys.uid(series),
            "studyInstanceUid": keys.uid(study),
            "study": {"studyInstanceUid": keys.uid(study)},
        },
        "slice": {
            "sopInstanceUid": keys.uid(sop),
            "seriesInstanceUid": keys.uid(series),
            "series": {"seriesInstanceUid": keys.uid(series)},
        },
    }
    # The real UIDs find nothing for a de-identified token, the pseudonyms nothing for a full one.
    assert deid.data(query, st=study, se=series, sop=sop) == {"study": None, "series": None, "slice": None}
    assert clients["full"].data(query, st=keys.uid(study), se=keys.uid(series), sop=keys.uid(sop)) == {
        "study": None,
        "series": None,
        "slice": None,
    }


def test_filters_on_pseudonymous_uids(clients: dict[str, Client]) -> None:
    keys, deid = Pseudonyms(KEY), clients["deidentified"]
    study, series = keys.uid(LEAKY_STUDY["StudyInstanceUID"]), keys.uid(LEAKY_SERIES["SeriesInstanceUID"])
    other = keys.uid(OTHER_STUDY["StudyInstanceUID"])
    total = deid.data("{ allSlices { totalCount } allSeries { totalCount } }")

    def count(connection: str, where: str) -> int:
        return deid.data(f"{{ {connection}(where: {where}) {{ totalCount }} }}")[connection]["totalCount"]

    assert count("allSeries", f'{{studyInstanceUid: {{eq: "{study}"}}}}') == 1
    assert count("allSeries", f'{{seriesInstanceUid: {{in: ["{series}", "2.25.1", "junk"]}}}}') == 1
    assert count("allSlices", f'{{seriesInstanceUid: {{eq: "{series}"}}}}') == 4
    assert count("allSlices", f'{{series: {{studyInstanceUid: {{in: ["{study}", "{other}"]}}}}}}') == 6
    assert count("allSlices", f'{{seriesInstanceUid: {{ne: "{series}"}}}}') == total["allSlices"]["totalCount"] - 4
    assert count("allSeries", f'{{studyInstanceUid: {{notIn: ["{study}"]}}}}') == total["allSeries"]["totalCount"] - 1
    assert count("allStudies", f'{{studyInstanceUid: {{eq: "{LEAKY_STUDY["StudyInstanceUID"]}"}}}}') == 0  # real
    assert count("allSeries", "{seriesInstanceUid: {isNull: false}}") == total["allSeries"]["totalCount"]
    # Substring operators would compare the real UIDs: refused before any SQL runs.
    for op in ('startsWith: "1.2"', 'contains: "31"', 'match: "*20200102*"'):
        before = deid.statements
        error = deid.error(f"{{ allStudies(where: {{studyInstanceUid: {{{op}}}}}) {{ totalCount }} }}")
        assert error["extensions"]["code"] == "FORBIDDEN" and "pseudonymous UID" in error["message"]
        assert deid.statements == before


def test_paging_ordering_and_facets_on_pseudonymous_uids(clients: dict[str, Client]) -> None:
    keys, deid, full = Pseudonyms(KEY), clients["deidentified"], clients["full"]
    stored = [
        n["seriesInstanceUid"]
        for n in full.data("{ allSeries(first: 1000) { nodes { seriesInstanceUid } } }")["allSeries"]["nodes"]
    ]
    for order in (
        "",
        "orderBy: [{field: SERIES_INSTANCE_UID, direction: DESC}]",
        "orderBy: [{field: STUDY_INSTANCE_UID}]",
    ):
        seen, after = [], None
        while True:
            page = deid.data(
                f"query($after: String) {{ allSeries(first: 3, after: $after {', ' + order if order else ''}) "
                "{ nodes { seriesInstanceUid } pageInfo { hasNextPage endCursor } } }",
                after=after,
            )["allSeries"]
            seen += [n["seriesInstanceUid"] for n in page["nodes"]]
            if not page["pageInfo"]["hasNextPage"]:
                break
            after = page["pageInfo"]["endCursor"]
            assert json.loads(base64.urlsafe_b64decode(after + "==")) and UID_ROOT not in _decoded(after)
        assert sorted(seen) == sorted(keys.uid(u) for u in stored), order  # every series once
    # Facets count per pseudonym: the same counts as per real UID.
    groups = deid.data("{ allSlices { groupBy(field: SERIES_INSTANCE_UID, first: 1000) { value count } } }")
    real = full.data("{ allSlices { groupBy(field: SERIES_INSTANCE_UID, first: 1000) { value count } } }")
    assert sorted((g["value"], g["count"]) for g in groups["allSlices"]["groupBy"]) == sorted(
        (keys.uid(g["value"]), g["count"]) for g in real["allSlices"]["groupBy"]
    )


def _decoded(cursor: str) -> str:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()


# Dates


def test_dates_shift_per_patient_and_filters_orders_facets_see_the_shifted_dates(clients: dict[str, Client]) -> None:
    deid, full, keys = clients["deidentified"], clients["full"], Pseudonyms(KEY)
    # Each study as stored and as shown, paired by its pseudonymous UID; per patient, the days dates moved.
    by_patient: dict[str, set[int]] = {}
    pairs = {}
    query = "{ allStudies(first: 1000) { nodes { studyInstanceUid studyDate seriesDate patient { patientId } } } }"
    for study in full.data(query)["allStudies"]["nodes"]:
        got = deid.data(
            f'{{ study(studyInstanceUid: "{keys.uid(study["studyInstanceUid"])}") {{ studyDate seriesDate }} }}'
        )["study"]
        pairs[study["studyInstanceUid"]] = (study, got)
        for field in ("studyDate", "seriesDate"):
            if study[field] is not None:
                days = (dt.date.fromisoformat(got[field]) - dt.date.fromisoformat(study[field])).days
                by_patient.setdefault(study["patient"]["patientId"], set()).add(days)
            else:
                assert got[field] is None
    assert len(by_patient) >= 3 and all(len(d) == 1 and 0 not in d for d in by_patient.values()), by_patient
    assert len({d for ds in by_patient.values() for d in ds}) > 1  # offsets differ between patients
    # Filters compare the shifted dates: the leaky study's shifted date finds it, its real date does not.
    leaky = pairs[LEAKY_STUDY["StudyInstanceUID"]][1]["studyDate"]
    count = '{ allStudies(where: {studyDate: {eq: "%s"}}) { totalCount } }'
    assert deid.data(count % leaky)["allStudies"]["totalCount"] >= 1
    assert deid.data(count % "2020-01-02")["allStudies"]["totalCount"] == sum(
        1 for _, got in pairs.values() if got["studyDate"] == "2020-01-02"
    )
    # Ordering by the shifted date is the order of the shifted dates.
    ordered = deid.data("{ allStudies(orderBy: [{field: STUDY_DATE}], first: 1000) { nodes { studyDate } } }")
    dates = [n["studyDate"] for n in ordered["allStudies"]["nodes"]]
    present = [d for d in dates if d is not None]
    assert present == sorted(present) and dates[len(present) :] == [None] * (len(dates) - len(present))
    assert sorted(present) == sorted(got["studyDate"] for _, got in pairs.values() if got["studyDate"])
    # Facets group the shifted dates.
    years = deid.data("{ allStudies { groupBy(field: STUDY_DATE, datePart: YEAR) { value count } } }")
    expected: dict[str | None, int] = {}
    for _, got in pairs.values():
        year = got["studyDate"][:4] if got["studyDate"] else None
        expected[year] = expected.get(year, 0) + 1
    assert {g["value"]: g["count"] for g in years["allStudies"]["groupBy"]} == expected
    # Slices: acquisition dates move by their patient's offset too (a patient found through the slice's series).
    slices = deid.data(
        f'{{ series(seriesInstanceUid: "{keys.uid(LEAKY_SERIES["SeriesInstanceUID"])}") '
        "{ slices { nodes { acquisitionDate acquisitionTime longitudinalTemporalInfo } } study { studyDate } } }"
    )["series"]
    [offset] = by_patient["H31EXAMPLE"]
    assert {n["acquisitionDate"] for n in slices["slices"]["nodes"]} == {
        (dt.date(2020, 1, 4) + dt.timedelta(days=offset)).isoformat()
    }
    assert {n["acquisitionTime"] for n in slices["slices"]["nodes"]} == {"10:16:00"}
    assert {n["longitudinalTemporalInfo"] for n in slices["slices"]["nodes"]} == {"MODIFIED"}
    shifted = (dt.date(2020, 1, 4) + dt.timedelta(days=offset)).isoformat()
    filtered = deid.data(
        f'{{ allSlices(where: {{acquisitionDate: {{gte: "{shifted}", lte: "{shifted}"}}}}) {{ totalCount }} }}'
    )
    assert filtered["allSlices"]["totalCount"] >= 4


# Removed attributes: refused as keys, whatever the level that removes them.


@pytest.mark.parametrize(
    ("level", "query", "field"),
    [
        ("deidentified", '{ allStudies(where: {studyId: {eq: "H31EXAMPLE"}}) { totalCount } }', "Study.studyId"),
        (
            "deidentified",
            '{ allStudies(where: {studyDescription: {contains: "H31"}}) { totalCount } }',
            "Study.studyDescription",
        ),
        ("deidentified", "{ allSeries(orderBy: [{field: SERIES_DESCRIPTION}]) { totalCount } }", "SERIES_DESCRIPTION"),
        ("deidentified", "{ allSlices { groupBy(field: CONTRAST_BOLUS_AGENT) { value } } }", "CONTRAST_BOLUS_AGENT"),
        (
            "deidentified",
            "{ allPatients { groupBy(field: PATIENT_IDENTITY_REMOVED) { value } } }",
            "PATIENT_IDENTITY_REMOVED",
        ),
        ("basic", '{ allStudies(where: {studyDate: {gt: "2000-01-01"}}) { totalCount } }', "Study.studyDate"),
        ("basic", "{ allPatients(orderBy: [{field: PATIENT_SEX}]) { totalCount } }", "PATIENT_SEX"),
    ],
)
def test_removed_attributes_are_refused_as_keys(level: str, query: str, field: str, clients: dict[str, Client]):
    client = clients[level]
    before = client.statements
    error = client.error(query)
    assert error["extensions"]["code"] == "FORBIDDEN" and field in error["message"], error
    assert client.statements == before
    assert "errors" not in clients["full"].post(query)


def test_levels_with_other_options(clients: dict[str, Client]) -> None:
    query = (
        '{ allStudies(where: {studyDescription: {contains: "Leakwell"}}) '
        "{ nodes { studyDescription studyDate studyInstanceUid } } }"
    )
    [study] = clients["descriptions"].data(query)["allStudies"]["nodes"]  # Clean Descriptors: kept as stored
    assert study["studyDescription"] == LEAKY_STUDY["StudyDescription"] and study["studyDate"] != "2020-01-02"
    assert UID_PSEUDONYM.fullmatch(study["studyInstanceUid"])
    [study] = clients["full"].data(query)["allStudies"]["nodes"]
    research = clients["research"].data(
        f'{{ study(studyInstanceUid: "{study["studyInstanceUid"]}") '
        "{ studyDate studyDescription studyId patient { patientId patientAge } } }"
    )["study"]
    assert (
        research["studyDate"] == "2020-01-02" and research["studyDescription"] is None and research["studyId"] is None
    )
    assert research["patient"]["patientId"].startswith("anon-") and research["patient"]["patientAge"] == "057Y"
    basic = clients["basic"].data(
        "{ allPatients { nodes { patientSex patientAge lastMenstrualDate deIdentificationMethod "
        "patientIdentityRemoved } } }"
    )["allPatients"]["nodes"]
    assert {(p["patientSex"], p["patientAge"], p["lastMenstrualDate"]) for p in basic} == {(None, None, None)}
    assert {p["deIdentificationMethod"] for p in basic} == {"dicom-db at query time: DCM 113100"}
    assert {p["patientIdentityRemoved"] for p in basic} == {"YES"}
    deid = clients["deidentified"].data("{ allPatients(first: 1) { nodes { deIdentificationMethod } } }")
    assert (
        deid["allPatients"]["nodes"][0]["deIdentificationMethod"]
        == "dicom-db at query time: DCM 113100 113107 113108 113109"
    )


def test_level_declarations_in_a_tokens_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(LEVELS_FILE)
    tokens = {t.name: t.level for t in read_tokens_file(path)}
    assert tokens["alice"] is AccessLevel.FULL and tokens["bob"] is AccessLevel.DEIDENTIFIED
    assert tokens["carol"].options == frozenset() and tokens["carol"].name == "basic"
    assert tokens["dave"].options == {
        Option.RETAIN_LONGITUDINAL_MODIFIED_DATES,
        Option.RETAIN_PATIENT_CHARACTERISTICS,
        Option.CLEAN_DESCRIPTORS,
    }
    for text, message in (
        ("level full retain-uids\n", "already defined"),
        ("level x retain-everything\n", "unknown option 'retain-everything'"),
        ("level X\n", "expected level NAME"),
        (f"{FULL_TOKEN} research\n", "unknown access level 'research'"),
    ):
        path.write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            read_tokens_file(path)


def test_only_full_access_may_read_files() -> None:
    assert AccessLevel.FULL.may_read_files
    assert not AccessLevel.DEIDENTIFIED.may_read_files
    assert not AccessLevel("research", frozenset(Option)).may_read_files  # every option: still not the files
    assert Token("t" * 16, AccessLevel.DEIDENTIFIED, "x").level.may_read_files is False


# The leak test


def secrets_of(db: Path, keys: Pseudonyms) -> set[str]:
    """Every stored identifier (PatientID, name parts, birth date, accession number, StudyID, referring physician,
    descriptions, contrast agent, Study/Series/SOP Instance UIDs) and every stored date, as stored and as an ISO
    date. Left out: values a de-identified client may see elsewhere (stored in a column it gets as stored, or
    equal to some shifted date) and values shorter than 4 characters, which appear anywhere by chance."""
    identifying = {
        "Patient": ("PatientID", "PatientName", "PatientBirthDate", "LastMenstrualDate"),
        "Study": (
            "StudyInstanceUID",
            "PatientID",
            "StudyID",
            "StudyDescription",
            "StudyDate",
            "SeriesDate",
            "ReferringPhysicianName",
        ),
        "Series": ("SeriesInstanceUID", "StudyInstanceUID", "SeriesDescription"),
        "SliceMetadata": (
            "SOPInstanceUID",
            "SeriesInstanceUID",
            "AccessionNumber",
            "ContrastBolusAgent",
            "AcquisitionDate",
        ),
    }
    found: set[str] = set()
    kept: set[str] = set()
    for table_name, columns in identifying.items():
        table = TABLES[table_name]
        for column in table.columns:
            values = {str(r[0]) for r in rows(db, f'SELECT DISTINCT "{column.name}" FROM "{table_name}"')}
            values.discard("None")
            if column.name in columns:
                found |= values
                if column.name.endswith("Name"):  # each part of a person's name
                    found |= {part for value in values for part in re.split(r"[\^= ]", value) if len(part) >= 4}
            elif treatment(column, AccessLevel.DEIDENTIFIED.options)[0] is Treatment.STORED:
                kept |= values | {part for value in values for part in value.split("\\")}  # lists: each value
    found |= {f"{v[:4]}-{v[4:6]}-{v[6:]}" for v in found if len(v) == 8 and v.isdigit()}
    found |= {v.replace("-", "") for v in found if re.fullmatch(r"\d{4}-\d{2}-\d{2}", v)}
    shifted = set()
    for sql in (
        'SELECT "PatientID", "LastMenstrualDate" FROM "Patient"',
        'SELECT "PatientID", "StudyDate" FROM "Study"',
        'SELECT "PatientID", "SeriesDate" FROM "Study"',
        'SELECT t."PatientID", m."AcquisitionDate" FROM "SliceMetadata" m JOIN "Series" s USING ("SeriesInstanceUID") '
        'JOIN "Study" t ON t."StudyInstanceUID" = s."StudyInstanceUID"',
    ):
        for patient, date in rows(db, sql):
            moved = keys.shift_date(date, patient)
            if moved:
                shifted |= {moved, moved.replace("-", "")}
    return {v for v in found - kept - shifted if len(v) >= 4}


def _leaves(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
        if re.fullmatch(r"[A-Za-z0-9_-]{16,}", value):  # perhaps a cursor: what it holds counts too
            with contextlib.suppress(ValueError):
                yield from _leaves(json.loads(_decoded(value)))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)


PSEUDONYM = re.compile(r"2\.25\.\d+|anon-[0-9a-f]{16}")


def assert_no_leak(responses: list[Any], secrets: set[str]) -> int:
    """No secret equals a string the client received, nor is part of one (digits-only secrets: of one that is
    not a pseudonym, whose digits are random). Returns how many strings were checked."""
    textual = [s for s in secrets if not re.fullmatch(r"[\d.]+", s)]
    numeric = [s for s in secrets if re.fullmatch(r"[\d.]+", s)]
    checked = 0
    for body in responses:
        for leaf in _leaves(body):
            checked += 1
            assert leaf not in secrets, leaf
            leaked = [s for s in textual if s in leaf]
            if not PSEUDONYM.fullmatch(leaf):
                leaked += [s for s in numeric if s in leaf]
            assert not leaked, (leaf, leaked)
    return checked


CONNECTIONS = {"allPatients": "Patient", "allStudies": "Study", "allSeries": "Series", "allSlices": "SliceMetadata"}
RELATIONS = {
    "Patient": "studyCount studies(first: 2) { nodes { studyInstanceUid } "
    "groupBy(field: STUDY_INSTANCE_UID) { value count } }",
    "Study": f"seriesCount modalities patient {{ {fields_of('Patient')} }}",
    "Series": f"sliceCount study {{ {fields_of('Study')} }}",
    "SliceMetadata": f"series {{ {fields_of('Series')} }}",
}


@pytest.mark.parametrize("level", ["deidentified", "basic"])
def test_no_identifier_reaches_a_deidentified_token(level: str, http: TestClient, leaky_db: Path) -> None:
    client = Client(http, LEVEL_TOKENS[level])
    secrets = secrets_of(leaky_db, Pseudonyms(KEY))
    # The corpus holds what the issue describes: StudyID = PatientID, IDs in descriptions, dates in UIDs.
    assert {"H31EXAMPLE", "Leakwell", "ACC-H31-0001", "ACC-77-0002", LEAKY_STUDY["StudyInstanceUID"]} <= secrets
    assert {"1962-05-14", "2020-01-02", "20200102", "Referrer"} <= secrets
    crawl(client, _level_options(level, http), page=7, every_order=True)
    checked = assert_no_leak(client.responses, secrets)
    assert len(client.responses) > 100 and checked > 10_000, (len(client.responses), checked)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no scanner series at {SHARED_DATA}")
def test_no_identifier_of_real_scanner_series_reaches_a_deidentified_token(tmp_path: Path) -> None:
    """The same crawl over real scanner series (../shared/data/dcm_qa_nih, where the checkout sits beside it),
    in the default order of each connection, in pages of 100."""
    db = ingest_into(tmp_path, tmp_path / "scanner.db", SHARED_DATA)
    secrets = secrets_of(db, Pseudonyms(KEY))
    assert len(secrets) > 100
    settings = Settings(
        database_url=f"sqlite:///{db}", tokens=(Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "bob"),), pseudonym_key=KEY
    )
    with TestClient(create_app(settings)) as http:
        client = Client(http, DEID_TOKEN)
        crawl(client, AccessLevel.DEIDENTIFIED.options, page=100, every_order=False)
    checked = assert_no_leak(client.responses, secrets)
    assert checked > 10_000, checked


def crawl(client: Client, options: frozenset[Option], *, page: int, every_order: bool) -> None:
    """Every field of every type through every connection, paged to the end with cursors (in every allowed
    order, or the default one), facets on every allowed field, filters on values seen, refused filters, lookups
    of every study, series and slice by pseudonym, a whole tree with nested facets, and errors."""
    seen: dict[str, list[str]] = {}
    for connection, table_name in CONNECTIONS.items():
        table = TABLES[table_name]
        allowed = [
            c
            for c in table.columns
            if treatment(c, options)[0] not in (Treatment.NULL, Treatment.CONSTANT, Treatment.PSEUDONYM)
        ]
        orders = [""] + [f"orderBy: [{{field: {c.enum}, direction: DESC}}]" for c in allowed if every_order]
        for order in orders:  # every allowed ordering, paged to the end with cursors
            after = None
            while True:
                arguments = f"first: {page}, after: $after" + (f", {order}" if order else "")
                body = client.data(
                    f"query($after: String) {{ {connection}({arguments}) "
                    f"{{ totalCount edges {{ cursor node {{ {fields_of(table_name)} {RELATIONS[table_name]} }} }} "
                    "pageInfo { hasNextPage endCursor } } }",
                    after=after,
                )[connection]
                for edge in body["edges"]:
                    for column in allowed:
                        value = edge["node"][column.field_name]
                        if isinstance(value, str):
                            seen.setdefault(f"{table_name}.{column.name}", []).append(value)
                if not body["pageInfo"]["hasNextPage"]:
                    break
                after = body["pageInfo"]["endCursor"]
        for column in allowed:  # facets on every allowed field, dates by every part
            parts = (
                ["", ", datePart: YEAR", ", datePart: MONTH", ", datePart: DAY"] if column.kind is Kind.DATE else [""]
            )
            for part in parts:
                client.data(f"{{ {connection} {{ groupBy(field: {column.enum}{part}) {{ value count }} }} }}")
            values = seen.get(f"{table_name}.{column.name}", [])[:2]
            if values and column.kind in (Kind.STRING, Kind.DATE):  # filters on values the client saw
                op = "eq" if column.kind is Kind.DATE else "in"
                value = json.dumps(values[0]) if op == "eq" else json.dumps(values)
                where = f"{{{column.field_name}: {{{op}: {value}}}}}"
                client.data(f"{{ {connection}(where: {where}) {{ totalCount edges {{ cursor }} }} }}")
        # Forbidden keys: refused, and the refusal does not echo the value sent.
        for column in table.columns:
            if treatment(column, options)[0] in (Treatment.NULL, Treatment.CONSTANT, Treatment.PSEUDONYM):
                value = "19620514" if column.kind is Kind.DATE else "H31EXAMPLE"
                op = '{eq: "1962-05-14"}' if column.kind is Kind.DATE else f'{{eq: "{value}"}}'
                if column.kind in (Kind.INT, Kind.BOOL, Kind.FLOAT, Kind.INT_TEXT):
                    continue
                error = client.error(f"{{ {connection}(where: {{{column.field_name}: {op}}}) {{ totalCount }} }}")
                assert error["extensions"]["code"] == "FORBIDDEN"
    # Lookups of every study, series and slice by its pseudonym, and a whole tree with nested facets.
    for table_name, column, root, arg in (
        ("Study", "StudyInstanceUID", "study", "studyInstanceUid"),
        ("Series", "SeriesInstanceUID", "series", "seriesInstanceUid"),
        ("SliceMetadata", "SOPInstanceUID", "slice", "sopInstanceUid"),
    ):
        for pseudonym in sorted(set(seen.get(f"{table_name}.{column}", []))):
            assert client.data(f'{{ {root}({arg}: "{pseudonym}") {{ {fields_of(table_name)} }} }}')[root] is not None
    patient, study, series, slices = (fields_of(t) for t in ("Patient", "Study", "Series", "SliceMetadata"))
    client.data(
        f"{{ allPatients {{ nodes {{ {patient} studies {{ nodes {{ {study} series {{ groupBy(field: MODALITY) "
        f"{{ value count }} nodes {{ {series} slices {{ groupBy(field: SOP_INSTANCE_UID) {{ value count }} "
        f"nodes {{ {slices} }} }} }} }} }} }} }} }} }}"
    )
    # Files (paths, contents): refused on the field, whose value is null; and on the route, for any instance.
    body = client.post(f"{{ allSlices(first: {page}) {{ nodes {{ sopInstanceUid file {{ path size url }} }} }} }}")
    assert {e["extensions"]["code"] for e in body["errors"]} == {"FORBIDDEN"}
    assert all(e["path"][-1] == "file" for e in body["errors"])
    assert all(n["file"] is None for n in body["data"]["allSlices"]["nodes"])
    for pseudonym in sorted(set(seen.get("SliceMetadata.SOPInstanceUID", [])))[:3] + ["1.2.3.4"]:
        response = client.http.get(f"/files/{pseudonym}", headers=client.headers)
        assert response.status_code == 403 and response.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        client.responses.append(response.json())
    # Errors: a bad cursor, a cursor of another ordering, an unknown pseudonym.
    client.error('{ allSlices(after: "bm90IGEgY3Vyc29y") { totalCount } }')
    cursor = client.data("{ allSeries(first: 1) { pageInfo { endCursor } } }")["allSeries"]["pageInfo"]["endCursor"]
    client.error(f'{{ allSeries(after: "{cursor}", orderBy: [{{field: MODALITY}}]) {{ totalCount }} }}')
    assert client.data('{ study(studyInstanceUid: "2.25.12345") { studyInstanceUid } }') == {"study": None}


def test_a_database_ingested_before_the_uid_digests_is_served(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """Without the digest columns (an older dicom-ingest made the database) lookups and filters by pseudonymous
    UID still find their rows, by computing the digests (a scan), and the server says so."""
    write_series(tmp_path / "files", LEAKY_PATIENT, LEAKY_STUDY, LEAKY_SERIES, 2)
    db = ingest_into(tmp_path, tmp_path / "old.db", tmp_path / "files")
    with sqlite3.connect(db) as conn:
        for table, digest, index in (
            ("Study", "StudyInstanceUIDHash", "idx_study_uid_hash"),
            ("Series", "SeriesInstanceUIDHash", "idx_series_uid_hash"),
            ("SliceMetadata", "SOPInstanceUIDHash", "idx_slice_uid_hash"),
        ):
            conn.execute(f'DROP INDEX "{index}"')
            conn.execute(f'ALTER TABLE "{table}" DROP COLUMN "{digest}"')
    keys = Pseudonyms(KEY)
    settings = Settings(
        database_url=f"sqlite:///{db}", tokens=(Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "bob"),), pseudonym_key=KEY
    )
    with caplog.at_level("WARNING", logger="dicom_api.db"), TestClient(create_app(settings)) as http:
        deid = Client(http, DEID_TOKEN)
        study, series = keys.uid(LEAKY_STUDY["StudyInstanceUID"]), keys.uid(LEAKY_SERIES["SeriesInstanceUID"])
        data = deid.data(
            f'{{ study(studyInstanceUid: "{study}") {{ studyInstanceUid }} '
            f'allSlices(where: {{seriesInstanceUid: {{eq: "{series}"}}}}) {{ totalCount }} }}'
        )
    assert data == {"study": {"studyInstanceUid": study}, "allSlices": {"totalCount": 2}}
    assert "has no UID digests" in caplog.text


ID_TREE = """{ allPatients(first: 100) { nodes { id patientId studies { nodes { id studyInstanceUid
  series { nodes { id seriesInstanceUid slices(first: 500) { nodes { id sopInstanceUid } } } } } } } } }"""


def _ids(node: Any, out: list[tuple[str, str]]) -> None:
    """(id, the key it should hold) of every node of a response."""
    if isinstance(node, dict):
        for field, prefix in (
            ("patientId", "Patient"),
            ("studyInstanceUid", "Study"),
            ("seriesInstanceUid", "Series"),
            ("sopInstanceUid", "Slice"),
        ):
            if "id" in node and field in node:
                out.append((node["id"], f"{prefix}:{node[field]}"))
        for value in node.values():
            _ids(value, out)
    elif isinstance(node, list):
        for value in node:
            _ids(value, out)


def test_every_type_has_an_id_for_client_caches_that_leaks_nothing(tmp_path: Path) -> None:
    db = ingest_into(tmp_path, tmp_path / "ids.db", DICOMDIR_TESTS)
    secrets = secrets_of(db, Pseudonyms(KEY))
    full_token = "full-token-0123456789abcdefXYZ"
    tokens = (Token(DEID_TOKEN, AccessLevel.DEIDENTIFIED, "bob"), Token(full_token, AccessLevel.FULL, "alice"))
    settings = Settings(database_url=f"sqlite:///{db}", tokens=tokens, pseudonym_key=KEY)
    with TestClient(create_app(settings)) as http:
        for token in (full_token, DEID_TOKEN):
            client = Client(http, token)
            ids: list[tuple[str, str]] = []
            _ids(client.data(ID_TREE), ids)
            assert len(ids) > 100
            assert all(got == expected for got, expected in ids)  # the type and the key the token sees
            assert len({got for got, _ in ids}) == len(ids)  # unique across types and rows
        assert assert_no_leak(client.responses, secrets) > 100  # the de-identified token's ids hold no identifier


def test_graphiql_default_query_runs_for_every_declared_level(http: TestClient, clients: dict[str, Client]) -> None:
    """The page's example query is the one each level may run: a level that removes dates does not order by them."""
    for level, client in clients.items():
        page = http.get("/graphql", headers={**client.headers, "accept": "text/html"})
        assert page.status_code == 200, level
        served = next(
            json.loads(html.unescape(m.group(1))) for m in re.finditer(r'("# dicom-db\..*?")', page.text, re.S)
        )
        assert ("STUDY_DATE" in served) is (level != "basic"), level
        body = client.post(served)
        assert "errors" not in body, (level, body.get("errors"))
