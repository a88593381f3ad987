"""The column registry: every column of the four tables, once.

An entry says where a column's value comes from (a DICOM keyword, tag and VR, or the ingest itself), how it is
stored (its SQL type in schema.sql), how the API types it (`Kind`), its GraphQL name, and what DICOM PS3.15
asks of it under de-identification (`Ps315`). From these entries come the reader's attribute list and typing
(ingest/reader.py), the writer's statements (ingest/db.py), the API's tables, fields, filter inputs and
order/group enums (api/columns.py, api/types.py) and the mapping table in docs/ingest.md. tests/test_registry.py
fails when schema.sql and the registry disagree.

Adding an attribute is one entry here, a column in schema.sql, and `MAPPING_VERSION` raised when files already
ingested should be read again to fill it (ingest/migrate.py re-reads only the files read under an older mapping).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

# Raised whenever an entry is added or the reading of an attribute changes: files ingested under an older
# mapping are read again by the next run (their rows lack what the new entries fill).
MAPPING_VERSION = 2


class Kind(enum.Enum):
    """How a stored value is typed in GraphQL, filtered and ordered."""

    STRING = "string"
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"  # stored as ISO text when the DICOM date was valid, else as the raw text
    INT_TEXT = "int_text"  # a TEXT column holding a DICOM IS value, exposed as Int
    FLOAT_LIST = "float_list"  # backslash-joined DS values, exposed as [Float!]
    STRING_LIST = "string_list"  # backslash-joined CS/LO values, exposed as [String!]


class Origin(enum.Enum):
    """Who fills a column."""

    DICOM = "dicom"  # the reader, from the attribute `keyword`
    INGEST = "ingest"  # the reader, derived from other values (documented in `note`)
    DIGEST = "digest"  # the writer: a digest of the row's UID (ingest/db.py uid_hash)
    KEY = "key"  # the database: an autoincrement key


class Option(enum.Enum):
    """Options of PS3.15's Basic Profile (the option columns of Table E.1-1), as named in a tokens file; `code`
    is the option's code in DICOM CID 7050."""

    RETAIN_UIDS = "retain-uids"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    CLEAN_DESCRIPTORS = "clean-descriptors"

    @property
    def code(self) -> str:
        return _OPTION_CODES[self]


_OPTION_CODES = {
    Option.CLEAN_DESCRIPTORS: "113105",
    Option.RETAIN_LONGITUDINAL_FULL_DATES: "113106",
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "113107",
    Option.RETAIN_PATIENT_CHARACTERISTICS: "113108",
    Option.RETAIN_DEVICE_IDENTITY: "113109",
    Option.RETAIN_UIDS: "113110",
    Option.RETAIN_INSTITUTION_IDENTITY: "113112",
}
BASIC_PROFILE_CODE = "113100"


@dataclass(frozen=True, slots=True)
class Ps315:
    """A column's entry in DICOM PS3.15 Annex E.

    `basic` is the action of Table E.1-1 under the Basic Profile: K keep, X remove, Z empty (or a dummy), D a
    dummy, U a new UID, C clean, and the combined codes (X/Z, X/D, Z/D) of attributes whose type varies by IOD.
    `options` are the options with an entry for the attribute, in precedence order, and their action. Attributes
    the table does not list are kept (K). Three attributes are set rather than listed (PS3.15 E.1.1 and E.3.6):
    `=YES` (Patient Identity Removed), `=METHOD` (De-identification Method: the level's profile and options) and
    `=MODIFIED` (Longitudinal Temporal Information Modified, when dates are modified). None of our columns is
    one of the attributes Retain Device Identity or Retain Institution Identity keep (station name, serial
    numbers, institution name...): those options change nothing here."""

    tag: str  # "(gggg,eeee)"; empty for a column that is no DICOM attribute
    basic: str = "K"
    options: tuple[tuple[Option, str], ...] = ()

    def action(self, options: frozenset[Option]) -> str:
        """The action under the Basic Profile with `options`: the first listed option the level has, else basic."""
        for option, action in self.options:
            if option in options:
                return action
        return self.basic


_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z]|\d|$)|[A-Z]?[a-z]+|\d+")


def snake_case(column: str) -> str:
    """`SOPInstanceUID` -> `sop_instance_uid` (Strawberry then shows it as `sopInstanceUid`)."""
    return "_".join(w.lower() for w in _WORDS.findall(column))


def camel_case(attr: str) -> str:
    """`patient_name` -> `patientName`: how Strawberry shows a Python attribute in the schema."""
    head, *rest = attr.split("_")
    return head + "".join(word.capitalize() for word in rest)


@dataclass(frozen=True, slots=True)
class Entry:
    """One column of one table."""

    table: str  # as in schema.sql
    column: str  # as in schema.sql
    sql_type: str  # as in schema.sql: TEXT, INTEGER, REAL
    kind: Kind | None  # how the API types it; None: not exposed as a field of its own
    origin: Origin = Origin.DICOM
    keyword: str = ""  # the DICOM keyword read (Origin.DICOM); the column name unless it says otherwise
    tag: str = ""  # "(gggg,eeee)" of `keyword`
    vr: str = ""  # the VR of `keyword` in the DICOM dictionary
    ps315: Ps315 = Ps315("")
    value_column: str | None = None  # numeric twin of a TEXT column: the API types, filters and orders by it
    required: bool = False  # never null (a key, or NOT NULL in schema.sql)
    since: int = 1  # the MAPPING_VERSION that added the entry
    description: str = ""  # the GraphQL field's description, when the name is not enough
    note: str = ""  # for the mapping table in docs/ingest.md

    @property
    def attr(self) -> str:
        return snake_case(self.column)

    @property
    def field_name(self) -> str:
        return camel_case(self.attr)


S, INT, F, B, D = Kind.STRING, Kind.INT, Kind.FLOAT, Kind.BOOL, Kind.DATE
IT, FL, SL = Kind.INT_TEXT, Kind.FLOAT_LIST, Kind.STRING_LIST
TEXT, INTEGER, REAL = "TEXT", "INTEGER", "REAL"

_FULL, _MODIF = Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES
_DATES = ((_FULL, "K"), (_MODIF, "C"))  # dates and times under the longitudinal options
_CHARS = ((Option.RETAIN_PATIENT_CHARACTERISTICS, "K"),)
_UIDS = ((Option.RETAIN_UIDS, "K"),)
_DESC = ((Option.CLEAN_DESCRIPTORS, "C"),)


def _dicom(
    table: str,
    column: str,
    sql_type: str,
    kind: Kind,
    tag: str,
    vr: str,
    action: str = "K",
    options: tuple[tuple[Option, str], ...] = (),
    *,
    keyword: str = "",
    **more: object,
) -> Entry:
    """An entry read from a DICOM attribute (the keyword is the column's name unless given)."""
    return Entry(
        table,
        column,
        sql_type,
        kind,
        Origin.DICOM,
        keyword or column,
        tag,
        vr,
        Ps315(tag, action, options),
        **more,  # type: ignore[arg-type]
    )


def _ours(
    table: str, column: str, sql_type: str, kind: Kind | None, origin: Origin, note: str, **more: object
) -> Entry:
    """An entry the ingest or the database fills."""
    return Entry(table, column, sql_type, kind, origin, note=note, **more)  # type: ignore[arg-type]


_SERIES_FROM = "of the series' representative instance"

# The order within a table is the order of the API's fields and of the writer's statements. The Patient and Study
# orders are also the order of the values the ingest keeps per file (SourceHeader): add to their end.
ENTRIES: tuple[Entry, ...] = (
    # Patient
    _dicom(
        "Patient", "PatientID", TEXT, S, "(0010,0020)", "LO", "Z/D", required=True,
        note="`NOID-<StudyInstanceUID>` when absent",
    ),
    _dicom(
        "Patient", "PatientName", TEXT, S, "(0010,0010)", "PN", "Z",
        description="DICOM PersonName, with its '=' component groups.", note="Unicode, `=` groups kept",
    ),
    _dicom("Patient", "PatientSex", TEXT, S, "(0010,0040)", "CS", "Z", _CHARS),
    _dicom("Patient", "PatientAge", TEXT, S, "(0010,1010)", "AS", "X", _CHARS, note="as text (`045Y`)"),
    _dicom("Patient", "PatientBirthDate", TEXT, D, "(0010,0030)", "DA", "Z"),
    _dicom("Patient", "PatientIdentityRemoved", TEXT, S, "(0012,0062)", "CS", "=YES", note="`YES`/`NO`"),
    _dicom(
        "Patient", "DeIdentificationMethod", TEXT, S, "(0012,0063)", "LO", "=METHOD",
        keyword="DeidentificationMethod",
    ),
    _dicom("Patient", "LastMenstrualDate", TEXT, D, "(0010,21D0)", "DA", "X", _DATES),
    _ours(
        "Patient", "PatientIDGenerated", INTEGER, B, Origin.INGEST, "1 when the files had no PatientID",
        required=True, description="True when the files had no PatientID: the ID is 'NOID-' + the StudyInstanceUID.",
    ),
    # Study
    _dicom("Study", "StudyInstanceUID", TEXT, S, "(0020,000D)", "UI", "U", _UIDS, required=True),
    _dicom("Study", "PatientID", TEXT, S, "(0010,0020)", "LO", "Z/D", note="the patient's key, as Patient.PatientID"),
    _dicom("Study", "StudyDescription", TEXT, S, "(0008,1030)", "LO", "X", _DESC),
    _dicom("Study", "StudyDate", TEXT, D, "(0008,0020)", "DA", "Z", _DATES),
    _dicom(
        "Study", "StudyTime", TEXT, S, "(0008,0030)", "TM", "Z", _DATES,
        description="ISO time text, HH:MM:SS with optional fraction.",
    ),
    _dicom("Study", "StudyID", TEXT, S, "(0020,0010)", "SH", "Z"),
    _dicom(
        "Study", "SeriesDate", TEXT, D, "(0008,0021)", "DA", "X/D", _DATES,
        note="of the file that last wrote the study row; Series.SeriesDate has each series' own",
    ),
    _dicom("Study", "ReferringPhysicianName", TEXT, S, "(0008,0090)", "PN", "Z"),
    _ours("Study", "StudyInstanceUIDHash", TEXT, None, Origin.DIGEST, "digest of the UID (see below)"),
    # Series: the per-image values are the representative instance's (docs/ingest.md)
    _dicom("Series", "SeriesInstanceUID", TEXT, S, "(0020,000E)", "UI", "U", _UIDS, required=True),
    _dicom(
        "Series", "StudyInstanceUID", TEXT, S, "(0020,000D)", "UI", "U", _UIDS,
        note="the study's key, from the representative instance",
    ),
    _dicom("Series", "SeriesDescription", TEXT, S, "(0008,103E)", "LO", "X", _DESC),
    _dicom("Series", "Modality", TEXT, S, "(0008,0060)", "CS"),
    _dicom(
        "Series", "SliceThickness", TEXT, F, "(0018,0050)", "DS", value_column="SliceThicknessValue",
        description="Stored as text in the Series table; this is its numeric value (the text is in `raw`).",
        note="TEXT as in the user's schema; `SliceThicknessValue` holds it as a number for filters",
    ),
    _dicom("Series", "PixelSpacing", TEXT, FL, "(0028,0030)", "DS", note="backslash-joined"),
    _dicom("Series", "ImagePositionPatient", TEXT, FL, "(0020,0032)", "DS", note="backslash-joined"),
    _dicom("Series", "ImageOrientationPatient", TEXT, FL, "(0020,0037)", "DS", note="backslash-joined"),
    _dicom("Series", "Rows", INTEGER, INT, "(0028,0010)", "US"),
    _dicom("Series", "Columns", INTEGER, INT, "(0028,0011)", "US"),
    _dicom("Series", "ImageType", TEXT, SL, "(0008,0008)", "CS", note="backslash-joined"),
    _dicom("Series", "AcquisitionNumber", TEXT, IT, "(0020,0012)", "IS"),
    _dicom("Series", "InstanceNumber", TEXT, IT, "(0020,0013)", "IS"),
    _dicom("Series", "PatientPosition", TEXT, S, "(0018,5100)", "CS"),
    _dicom("Series", "ExposureTime", INTEGER, INT, "(0018,1150)", "IS"),
    _dicom("Series", "KVP", REAL, F, "(0018,0060)", "DS"),
    _dicom("Series", "TableHeight", REAL, F, "(0018,1130)", "DS"),
    _dicom("Series", "SliceLocation", REAL, F, "(0020,1041)", "DS"),
    _dicom("Series", "BodyPartExamined", TEXT, S, "(0018,0015)", "CS"),
    _dicom("Series", "ScanOptions", TEXT, S, "(0018,0022)", "CS"),
    _dicom("Series", "ReconstructionDiameter", REAL, F, "(0018,1100)", "DS"),
    _dicom("Series", "DistanceSourceToPatient", REAL, F, "(0018,1111)", "DS"),
    _dicom("Series", "GantryDetectorTilt", REAL, F, "(0018,1120)", "DS"),
    _dicom("Series", "RotationDirection", TEXT, S, "(0018,1140)", "CS"),
    _dicom("Series", "ConvolutionKernel", TEXT, SL, "(0018,1210)", "SH", note="backslash-joined"),
    _ours(
        "Series", "RepresentativeKey", TEXT, None, Origin.INGEST,
        "`InstanceNumber` rank and SOPInstanceUID of the representative",
    ),
    _ours("Series", "SliceThicknessValue", REAL, None, Origin.INGEST, "SliceThickness as a number"),
    _ours("Series", "SeriesInstanceUIDHash", TEXT, None, Origin.DIGEST, "digest of the UID (see below)"),
    _dicom("Series", "SeriesNumber", INTEGER, INT, "(0020,0011)", "IS", since=2),
    _dicom("Series", "SeriesDate", TEXT, D, "(0008,0021)", "DA", "X/D", _DATES, since=2),
    _dicom(
        "Series", "SeriesTime", TEXT, S, "(0008,0031)", "TM", "X/D", _DATES, since=2,
        description="ISO time text, HH:MM:SS with optional fraction.",
    ),
    _dicom("Series", "ProtocolName", TEXT, S, "(0018,1030)", "LO", "X/D", _DESC, since=2),
    _dicom("Series", "Manufacturer", TEXT, S, "(0008,0070)", "LO", since=2),
    _dicom("Series", "ManufacturerModelName", TEXT, S, "(0008,1090)", "LO", since=2),
    # SliceMetadata: one row per DICOM instance
    _ours("SliceMetadata", "SliceID", INTEGER, INT, Origin.KEY, "autoincrement; kept across runs", required=True),
    _dicom("SliceMetadata", "SOPInstanceUID", TEXT, S, "(0008,0018)", "UI", "U", _UIDS, required=True),
    _dicom("SliceMetadata", "SeriesInstanceUID", TEXT, S, "(0020,000E)", "UI", "U", _UIDS, note="the series' key"),
    _dicom("SliceMetadata", "SOPClassUID", TEXT, S, "(0008,0016)", "UI"),
    _dicom("SliceMetadata", "AcquisitionDate", TEXT, D, "(0008,0022)", "DA", "X/Z", _DATES),
    _dicom("SliceMetadata", "AcquisitionTime", TEXT, S, "(0008,0032)", "TM", "X/Z", _DATES),
    _dicom("SliceMetadata", "ContrastBolusAgent", TEXT, S, "(0018,0010)", "LO", "Z/D", _DESC),
    _dicom("SliceMetadata", "AccessionNumber", TEXT, S, "(0008,0050)", "SH", "Z"),
    _dicom(
        "SliceMetadata", "SliceNumber", INTEGER, INT, "(0020,0013)", "IS", keyword="InstanceNumber",
        description="The instance's InstanceNumber (0020,0013).", note="no attribute is called SliceNumber",
    ),
    _dicom("SliceMetadata", "SliceLocation", REAL, F, "(0020,1041)", "DS"),
    _dicom("SliceMetadata", "SliceThickness", REAL, F, "(0018,0050)", "DS"),
    _dicom(
        "SliceMetadata", "PixelPaddingValue", INTEGER, INT, "(0028,0120)", "US or SS",
        note="signed or unsigned per PixelRepresentation",
    ),
    _dicom("SliceMetadata", "RescaleIntercept", REAL, F, "(0028,1052)", "DS"),
    _dicom("SliceMetadata", "RescaleSlope", REAL, F, "(0028,1053)", "DS"),
    _dicom(
        "SliceMetadata", "LongitudinalTemporalInfo", TEXT, S, "(0028,0303)", "CS", "K", ((_MODIF, "=MODIFIED"),),
        keyword="LongitudinalTemporalInformationModified",
        note="the de-identification flag (`UNMODIFIED`, `MODIFIED`, `REMOVED`)",
    ),
    _dicom("SliceMetadata", "ImagePositionPatient", TEXT, FL, "(0020,0032)", "DS", note="backslash-joined"),
    _ours("SliceMetadata", "SOPInstanceUIDHash", TEXT, None, Origin.DIGEST, "digest of the UID (see below)"),
    _dicom(
        "SliceMetadata", "TransferSyntaxUID", TEXT, S, "(0002,0010)", "UI", since=2,
        note="from the file meta information",
    ),
    _dicom(
        "SliceMetadata", "NumberOfFrames", INTEGER, INT, "(0028,0008)", "IS", since=2,
        description="Frames in the instance (null for a single-frame image).",
    ),
    _dicom("SliceMetadata", "ImageOrientationPatient", TEXT, FL, "(0020,0037)", "DS", since=2),
    _dicom("SliceMetadata", "PixelSpacing", TEXT, FL, "(0028,0030)", "DS", since=2),
    _dicom("SliceMetadata", "SpacingBetweenSlices", REAL, F, "(0018,0088)", "DS", since=2),
    _dicom("SliceMetadata", "EchoTime", REAL, F, "(0018,0081)", "DS", since=2, note="ms"),
    _dicom("SliceMetadata", "RepetitionTime", REAL, F, "(0018,0080)", "DS", since=2, note="ms"),
    _dicom("SliceMetadata", "InversionTime", REAL, F, "(0018,0082)", "DS", since=2, note="ms"),
    _dicom("SliceMetadata", "FlipAngle", REAL, F, "(0018,1314)", "DS", since=2, note="degrees"),
    _dicom("SliceMetadata", "MagneticFieldStrength", REAL, F, "(0018,0087)", "DS", since=2, note="tesla"),
    _dicom("SliceMetadata", "EchoTrainLength", INTEGER, INT, "(0018,0091)", "IS", since=2),
    _dicom("SliceMetadata", "XRayTubeCurrent", INTEGER, INT, "(0018,1151)", "IS", since=2, note="mA"),
    _dicom("SliceMetadata", "Exposure", INTEGER, INT, "(0018,1152)", "IS", since=2, note="mAs"),
)  # fmt: skip

TABLE_NAMES: tuple[str, ...] = ("Patient", "Study", "Series", "SliceMetadata")


def entries(table: str) -> tuple[Entry, ...]:
    """A table's entries, in registry order."""
    return tuple(e for e in ENTRIES if e.table == table)


def written(table: str, since: int | None = None) -> tuple[str, ...]:
    """The columns the ingest's reader fills (what the writer's statements carry), in registry order; with
    `since`, only those added in that mapping version."""
    return tuple(
        e.column
        for e in entries(table)
        if e.origin in (Origin.DICOM, Origin.INGEST) and (since is None or e.since == since)
    )


def read_keywords(table: str) -> dict[str, str]:
    """Column -> DICOM keyword of a table's columns read from DICOM."""
    return {e.column: e.keyword for e in entries(table) if e.origin is Origin.DICOM}


def mapping_table() -> str:
    """The column mapping of docs/ingest.md, as Markdown."""
    lines = [
        "| Table.Column | API field | DICOM attribute (tag, VR) | Stored as | Since | Notes |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for e in ENTRIES:
        source = f"{e.keyword} {e.tag} {e.vr}" if e.origin is Origin.DICOM else f"({e.origin.value})"
        if e.origin is Origin.DICOM and e.keyword != e.column:
            source = f"**{source}**"
        field = f"`{e.field_name}`" if e.kind is not None else ""
        lines.append(f"| {e.table}.{e.column} | {field} | {source} | {e.sql_type} | {e.since} | {e.note} |")
    return "\n".join(lines) + "\n"
