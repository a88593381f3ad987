"""The column registry (model/registry.py) is the one list of columns: schema.sql, the DICOM dictionary and the
docs agree with it, and every entry reaches the database, the API's fields, filters, orders and groups.

The end-to-end test is generic on purpose: it writes one file holding every attribute the registry reads, with a
value made from the attribute's VR, ingests it with the real CLI and asks the real API for each entry. An entry
added to the registry (and its column to schema.sql) is covered without an edit here.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from api_helpers import serve as serving
from api_helpers import write_instance
from conftest import rows, run_ingest
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import ExplicitVRLittleEndian

from dicom_db.api.columns import TABLES
from dicom_db.model import docs, registry
from dicom_db.model.registry import ENTRIES, Entry, Kind, Origin

ROOT = Path(__file__).resolve().parents[1]
serve = contextlib.contextmanager(serving)
ROOT_FIELDS = {"Patient": "allPatients", "Study": "allStudies", "Series": "allSeries", "SliceMetadata": "allSlices"}


def schema_columns() -> dict[tuple[str, str], str]:
    """(table, column) -> declared type of the four tables, as SQLite reads schema.sql."""
    db = sqlite3.connect(":memory:")
    db.executescript((ROOT / "schema.sql").read_text())
    found = {}
    for table in registry.TABLE_NAMES:
        for _, name, sql_type, *_ in db.execute(f'PRAGMA table_info("{table}")'):
            found[table, name] = sql_type
    return found


def test_schema_sql_and_registry_have_the_same_columns_and_types() -> None:
    declared = schema_columns()
    listed = {(e.table, e.column): e.sql_type for e in ENTRIES}
    assert sorted(set(declared) - set(listed)) == [], "columns of schema.sql missing from the registry"
    assert sorted(set(listed) - set(declared)) == [], "registry entries missing from schema.sql"
    assert {k: v for k, v in declared.items() if listed[k] != v} == {}, "types differ"


def test_seed_columns_keep_their_names_and_types() -> None:
    seed = ROOT.parent / "shared" / "seed-schema.sql"
    if not seed.exists():
        pytest.skip(f"{seed} is not here (the user's original tables)")
    db = sqlite3.connect(":memory:")
    db.executescript(seed.read_text())
    ours = schema_columns()
    for table in registry.TABLE_NAMES:
        for _, name, sql_type, *_ in db.execute(f'PRAGMA table_info("{table}")'):
            assert ours.get((table, name)) == sql_type, (table, name)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.origin is Origin.DICOM], ids=lambda e: e.column)
def test_entries_agree_with_the_dicom_dictionary(entry: Entry) -> None:
    tag = tag_for_keyword(entry.keyword)
    assert tag is not None, f"{entry.keyword} is no DICOM keyword"
    assert entry.tag == f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    assert entry.vr == dictionary_VR(tag)
    assert entry.ps315.tag == entry.tag


def test_entries_are_unique_and_versions_known() -> None:
    keys = [(e.table, e.column) for e in ENTRIES]
    assert len(keys) == len(set(keys))
    assert {e.since for e in ENTRIES} <= set(range(1, registry.MAPPING_VERSION + 1))
    assert max(e.since for e in ENTRIES) == registry.MAPPING_VERSION


def test_docs_mapping_table_is_current() -> None:
    text = docs.DOC_PATH.read_text()
    assert docs.with_table(text) == text, "docs/ingest.md is stale: run `python -m dicom_db.model.docs --write`"
    for entry in ENTRIES:
        assert f"| {entry.table}.{entry.column} |" in text


# ----------------------------------------------------------------------------------- every entry, end to end

UIDS = {"StudyInstanceUID": "1.2.826.0.1.3680043.8.498.1", "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.1.2"}


def file_value(entry: Entry) -> Any:
    """A value of the entry's attribute as written into the file, made from its VR."""
    if entry.keyword in UIDS:
        return UIDS[entry.keyword]
    if entry.vr == "UI":
        return "1.2.826.0.1.3680043.8.498." + str(tag_for_keyword(entry.keyword))
    if entry.vr == "DS":
        return ["1.5", "2.5"] if entry.kind is Kind.FLOAT_LIST else "2.5"
    if entry.vr in ("IS", "US", "US or SS"):
        return "7" if entry.vr == "IS" else 7
    if entry.vr == "DA":
        return "20200102"
    if entry.vr == "TM":
        return "101112"
    if entry.vr == "AS":
        return "045Y"
    if entry.kind is Kind.STRING_LIST:
        return ["ORIGINAL", "PRIMARY"]
    if entry.vr == "CS":
        return "YES"
    return "Some^Text" if entry.vr == "PN" else "TEXT-" + entry.keyword[:8].upper()


def api_value(entry: Entry) -> Any:
    """What the API gives for `file_value(entry)`."""
    if entry.tag.startswith("(0002,"):
        return {"TransferSyntaxUID": ExplicitVRLittleEndian}[entry.keyword]
    written = file_value(entry)
    if entry.kind is Kind.FLOAT_LIST:
        return [float(v) for v in written]
    if entry.kind in (Kind.INT, Kind.INT_TEXT):
        return int(written)
    if entry.kind is Kind.FLOAT:
        return float(written)
    if entry.kind is Kind.DATE:
        return "2020-01-02"
    if entry.vr == "TM":
        return "10:11:12"
    return written


def filter_value(entry: Entry, value: Any) -> Any:
    """An `eq` operand matching the stored value (lists compare as their stored, backslash-joined text)."""
    if entry.kind is Kind.FLOAT_LIST:
        return "\\".join(file_value(entry))
    if entry.kind is Kind.STRING_LIST:
        return "\\".join(value)
    return value


@pytest.fixture(scope="module")
def every_attribute(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("registry")
    attrs: dict[str, Any] = {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4", "PixelRepresentation": 0}
    for entry in ENTRIES:
        if entry.origin is Origin.DICOM and not entry.tag.startswith("(0002,"):
            attrs[entry.keyword] = file_value(entry)
    write_instance(folder / "in" / "one.dcm", attrs)
    db = folder / "every.db"
    run_ingest(folder / "in", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0)
    return db


def test_every_read_entry_is_stored(every_attribute: Path) -> None:
    for table in registry.TABLE_NAMES:
        columns = [e.column for e in registry.entries(table)]
        (row,) = rows(every_attribute, f'SELECT {", ".join(f"{chr(34)}{c}{chr(34)}" for c in columns)} FROM "{table}"')
        stored = dict(zip(columns, row, strict=True))
        for entry in registry.entries(table):
            if entry.origin is Origin.DICOM:
                assert stored[entry.column] is not None, f"{table}.{entry.column} was not written"


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.kind is not None], ids=lambda e: f"{e.table}.{e.column}")
def test_every_entry_is_a_field_a_filter_an_order_and_a_group(every_attribute: Path, entry: Entry) -> None:
    table = TABLES[entry.table]
    column = table.by_name[entry.column]
    root = ROOT_FIELDS[entry.table]
    field, enum = column.field_name, column.enum
    with serve(f"sqlite:///{every_attribute}") as api:
        nodes = api.data(f"{{ {root} {{ nodes {{ {field} }} }} }}")[root]["nodes"]
        assert len(nodes) == 1
        value = nodes[0][field]
        if entry.origin is Origin.DICOM:
            expected = api_value(entry)
            if entry.kind is Kind.BOOL:
                expected = True
            assert value == expected, (entry.column, value)
        if value is None:
            return
        if entry.kind is Kind.BOOL:
            where = f"{{ {field}: {{ eq: {str(value).lower()} }} }}"
        elif entry.kind is Kind.DATE:
            where = f'{{ {field}: {{ eq: "{value}" }} }}'
        else:
            operand = filter_value(entry, value)
            literal = f'"{operand}"'.replace("\\", "\\\\") if isinstance(operand, str) else str(operand)
            where = f"{{ {field}: {{ eq: {literal} }} }}"
        query = f"""{{
            hit: {root}(where: {where}, orderBy: [{{ field: {enum}, direction: DESC }}]) {{
                totalCount groupBy(field: {enum}) {{ value count }} }}
            miss: {root}(where: {{ {field}: {{ isNull: true }} }}) {{ totalCount }}
        }}"""
        data = api.data(query)
        assert data["hit"]["totalCount"] == 1, (entry.column, where)
        assert data["miss"]["totalCount"] == 0
        assert [g["count"] for g in data["hit"]["groupBy"]] == [1]


def test_new_attributes_answer_the_questions_users_ask(tmp_path: Path) -> None:
    """The idc-index-style questions: by scanner, protocol, echo time, frames; on two written series."""
    base = {"PatientID": "P1", "StudyInstanceUID": "1.2.3.1", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}
    mr = {"Modality": "MR", "Manufacturer": "SIEMENS", "ManufacturerModelName": "Prisma", "ProtocolName": "t1_mprage"}
    ct = {"Modality": "CT", "Manufacturer": "GE MEDICAL SYSTEMS", "ProtocolName": "CHEST"}
    for i in range(3):
        write_instance(
            tmp_path / "in" / f"mr{i}.dcm",
            {**base, **mr, "SeriesInstanceUID": "1.2.3.1.1", "SOPInstanceUID": f"1.2.3.1.1.{i}", "SeriesNumber": "4",
             "EchoTime": "2.98", "RepetitionTime": "2300", "MagneticFieldStrength": "3", "InstanceNumber": str(i)},
        )  # fmt: skip
    for i in range(2):
        write_instance(
            tmp_path / "in" / f"ct{i}.dcm",
            {**base, **ct, "SeriesInstanceUID": "1.2.3.1.2", "SOPInstanceUID": f"1.2.3.1.2.{i}", "SeriesNumber": "2",
             "Exposure": "120", "XRayTubeCurrent": "300", "NumberOfFrames": "1", "InstanceNumber": str(i)},
        )  # fmt: skip
    db = tmp_path / "q.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0)
    with serve(f"sqlite:///{db}") as api:
        data = api.data(
            """{
            scanners: allSeries { groupBy(field: MANUFACTURER) { value count } }
            siemens: allSeries(where: { manufacturer: { match: "siem*" }, seriesNumber: { gte: 3 } }) {
                nodes { protocolName manufacturerModelName seriesNumber sliceCount } }
            shortTe: allSlices(where: { echoTime: { lt: 5 }, magneticFieldStrength: { eq: 3 } }) { totalCount }
            ct: allSlices(where: { exposure: { gte: 100 } }, orderBy: [{ field: X_RAY_TUBE_CURRENT }]) {
                nodes { xRayTubeCurrent numberOfFrames transferSyntaxUid } }
        }"""
        )
    assert data["scanners"]["groupBy"] == [
        {"value": "GE MEDICAL SYSTEMS", "count": 1},
        {"value": "SIEMENS", "count": 1},
    ]
    assert data["siemens"]["nodes"] == [
        {"protocolName": "t1_mprage", "manufacturerModelName": "Prisma", "seriesNumber": 4, "sliceCount": 3}
    ]
    assert data["shortTe"]["totalCount"] == 3
    assert (
        data["ct"]["nodes"]
        == [{"xRayTubeCurrent": 300, "numberOfFrames": 1, "transferSyntaxUid": ExplicitVRLittleEndian}] * 2
    )


def test_dates_of_a_series_are_its_own(tmp_path: Path) -> None:
    """Series.SeriesDate is each series' own, where Study.SeriesDate is one file's (the user's column)."""
    base = {"PatientID": "P1", "StudyInstanceUID": "1.2.3.9", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2"}
    for n, day in ((1, "20200101"), (2, "20200315")):
        write_instance(
            tmp_path / "in" / f"{n}.dcm",
            {**base, "SeriesInstanceUID": f"1.2.3.9.{n}", "SOPInstanceUID": f"1.2.3.9.{n}.1", "SeriesDate": day,
             "SeriesTime": "0931"},
        )  # fmt: skip
    db = tmp_path / "d.db"
    run_ingest(tmp_path / "in", "--db", f"sqlite:///{db}", "--jobs", "1", "--quiet", check=0)
    with serve(f"sqlite:///{db}") as api:
        data = api.data(
            '{ allSeries(where: { seriesDate: { gte: "2020-03-01" } }) { nodes { seriesDate seriesTime } } }'
        )
    assert data["allSeries"]["nodes"] == [{"seriesDate": dt.date(2020, 3, 15).isoformat(), "seriesTime": "09:31:00"}]
